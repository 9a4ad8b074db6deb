//! `lumind eval`: multiple-choice accuracy (C-Eval format), perplexity,
//! chat answers against references, and preference pairs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::args::{one_of, CompileArgs, ModelArgs};
use crate::chat_template::ChatTemplate;
use crate::eval::agreement::{greedy_agreement, prompts_from};
use crate::eval::chat::{read_chat_cases, ChatScorer};
use crate::eval::pairs::{pair_log_probs, summarize};
use crate::eval::{answer, letter_ids, perplexity, read_choice_files};
use crate::generate::Generator;
use crate::model::builder::ForwardOptions;
use crate::model::Precision;
use crate::progress;
use crate::tokenizer::Tokenizer;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Accuracy on C-Eval-format CSV files (`id,question,A,B,C,D,answer`)
    Choice {
        #[command(flatten)]
        model: ModelArgs,
        /// A .csv file or a directory of them
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        /// Plain text after a bos token instead of the chat template (base models)
        #[arg(long)]
        raw: bool,
    },
    /// Perplexity over `{"text": ...}` lines
    Ppl {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        max_seq_len: usize,
        /// Only the first N texts
        #[arg(long)]
        limit: Option<usize>,
        /// Also run the model at this precision (usually fp32) and report its perplexity, the mean per-token KL divergence from it and how often both rank the same token first
        #[arg(long, value_parser = one_of::<Precision>("precision"))]
        kl_vs: Option<Precision>,
        /// With --kl-vs: also continue the first 16 tokens of the first 16 texts greedily for this many tokens at both precisions and count how many continuations agree (0: skip)
        #[arg(long, default_value_t = 32)]
        greedy_tokens: usize,
    },
    /// Greedy answers to held-out conversations (`{"conversations": [...]}`)
    /// against their last assistant reply: exact match, containment, word F1
    /// and the reference reply's log-likelihood
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 96)]
        max_new_tokens: usize,
        /// Count an answer as containing the reference when it contains this
        /// string instead (e.g. a name the answer must mention)
        #[arg(long)]
        expect: Option<String>,
        /// Print the first N questions with both answers
        #[arg(long, default_value_t = 3)]
        show: usize,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Preference pairs (`{"chosen", "rejected"}`): how often the model gives
    /// the chosen reply the higher log-probability and, against a reference
    /// model, DPO's reward accuracy and margin
    Pairs {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        data: PathBuf,
        /// Weights of the reference model (usually the DPO starting point)
        #[arg(long)]
        reference: Option<PathBuf>,
        #[arg(long, default_value_t = 0.1)]
        beta: f64,
        #[arg(long)]
        tokenizer: Option<PathBuf>,
        #[arg(long, default_value_t = 256)]
        max_seq_len: usize,
        #[arg(long)]
        limit: Option<usize>,
    },
}

pub fn run(a: Args) -> Result<()> {
    match a.cmd {
        Cmd::Choice { mut model, data, tokenizer, raw } => {
            let (def, w) = model.load()?;
            let tok = Tokenizer::load_or_default(tokenizer.as_deref())?;
            let template = if raw { None } else { Some(ChatTemplate::for_tokenizer(&tok)?) };
            let letters = letter_ids(&tok)?;
            let files = read_choice_files(&data)?;
            let longest = files
                .iter()
                .flat_map(|f| f.1.iter())
                .map(|q| q.question.len() + q.options.iter().map(|o| o.len()).sum::<usize>())
                .max()
                .unwrap_or(0);
            let ctx = (longest + 64).min(def.max_position_embeddings);
            let mut s = model.compile.session(&def, w, ForwardOptions::generation(ctx))?;
            println!("{:<28} {:>9} {:>9} {:>9}", "subject", "questions", "correct", "accuracy");
            let (mut all, mut right) = (0, 0);
            let bar = progress::bar(files.iter().map(|f| f.1.len() as u64).sum(), 0);
            for (subject, qs) in &files {
                let mut ok = 0;
                for q in qs {
                    s.exec.reset_state();
                    ok += (answer(&mut s, &tok, template.as_ref(), q, &letters)? == q.answer) as usize;
                    bar.inc(1);
                }
                bar.suspend(|| println!("{:<28} {:>9} {:>9} {:>8.1}%", subject, qs.len(), ok, 100.0 * ok as f64 / qs.len().max(1) as f64));
                all += qs.len();
                right += ok;
            }
            bar.finish_and_clear();
            println!("{:<28} {:>9} {:>9} {:>8.1}%   (chance: 25%)", "total", all, right, 100.0 * right as f64 / all.max(1) as f64);
        }
        Cmd::Ppl { mut model, data, tokenizer, max_seq_len, limit, kl_vs, greedy_tokens } => {
            let (def, w) = model.load()?;
            let tok = Tokenizer::load_or_default(tokenizer.as_deref())?;
            let opts = ForwardOptions::full(max_seq_len);
            let mut reference = match kl_vs {
                Some(p) => Some(CompileArgs { precision: Some(p), ..model.compile }.session(&def, w.clone(), opts)?),
                None => None,
            };
            let weights = (kl_vs.is_some() && greedy_tokens > 0).then(|| w.clone());
            let mut s = model.compile.session(&def, w, opts)?;
            let bar = progress::bar(0, 0);
            let p = perplexity(&mut s, reference.as_mut(), &tok, &data, max_seq_len, limit, &bar)?;
            bar.finish_and_clear();
            let mean = p.nll / p.tokens.max(1) as f64;
            println!(
                "{} perplexity {:.4} (mean NLL {mean:.5} over {} tokens of {} texts)",
                model.compile.precision(),
                p.value(),
                p.tokens,
                p.texts
            );
            if let (Some(r), Some((nll, d))) = (kl_vs, &p.reference) {
                let ref_ppl = (nll / p.tokens.max(1) as f64).exp();
                println!("{r} perplexity {ref_ppl:.4}: {} is {:+.3}%", model.compile.precision(), 100.0 * (p.value() / ref_ppl - 1.0));
                println!(
                    "KL({r} || {}) per token: mean {:.6}, max {:.6} over {} positions; same top token {:.2}%",
                    model.compile.precision(),
                    d.mean_kl(),
                    d.max_kl,
                    d.positions,
                    d.same_top_percent()
                );
            }
            if let (Some(r), Some(w)) = (kl_vs, weights) {
                let prompts = prompts_from(&tok, &data, 16, limit.unwrap_or(16).min(16))?;
                let opts = ForwardOptions::generation(16 + greedy_tokens);
                let mut a = model.compile.session(&def, w.clone(), opts)?;
                let mut b = CompileArgs { precision: Some(r), ..model.compile }.session(&def, w, opts)?;
                let g = greedy_agreement(&mut a, &mut b, &prompts, greedy_tokens)?;
                println!(
                    "greedy continuations of {} prompts: {}/{} agree with {r} on all {} tokens; mean agreeing start {:.1} tokens",
                    model.compile.precision(),
                    g.whole,
                    g.prompts,
                    g.tokens,
                    g.mean_leading()
                );
            }
        }
        Cmd::Chat { mut model, data, tokenizer, max_new_tokens, expect, show, limit } => {
            let (def, w) = model.load()?;
            let tok = Tokenizer::load_or_default(tokenizer.as_deref())?;
            let cases = read_chat_cases(&data, limit)?;
            let ctx = def.max_position_embeddings.min(1024);
            let opts = ForwardOptions { last_only: false, ..ForwardOptions::generation(ctx) };
            let mut scorer = ChatScorer::new(Generator::new(model.compile.session(&def, w, opts)?), tok, max_new_tokens)?;
            let bar = progress::bar(cases.len() as u64, 0);
            let (mut exact, mut contains, mut f1, mut log_prob, mut tokens) = (0, 0, 0f64, 0f64, 0);
            for (i, case) in cases.iter().enumerate() {
                let o = scorer.score(case, expect.as_deref()).with_context(|| format!("{} case {}", data.display(), i + 1))?;
                if i < show {
                    let question = case.messages.last().map_or("", |m| m.content.as_str());
                    bar.suspend(|| println!("--- {question}\nreference: {}\nanswer:    {}", case.reference.trim(), o.answer.trim()));
                }
                exact += o.exact as usize;
                contains += o.contains as usize;
                f1 += o.f1;
                log_prob += o.log_prob;
                tokens += o.tokens;
                bar.inc(1);
            }
            bar.finish_and_clear();
            let pct = |k: usize| 100.0 * k as f64 / cases.len().max(1) as f64;
            let what = expect.as_ref().map_or("the reference".to_string(), |e| format!("`{e}`"));
            let what = format!("contains {what}");
            println!("{} conversations of {}", cases.len(), data.display());
            println!("{:<24} {:>6.1}%", "exact match", pct(exact));
            println!("{what:<24} {:>6.1}%", pct(contains));
            println!("{:<24} {:>6.1}%", "word F1", 100.0 * f1 / cases.len().max(1) as f64);
            println!("{:<24} {:>7.3} per token ({tokens} tokens)", "reference NLL", -log_prob / tokens.max(1) as f64);
        }
        Cmd::Pairs { mut model, data, reference, beta, tokenizer, max_seq_len, limit } => {
            let (def, w) = model.load()?;
            let tok = Tokenizer::load_or_default(tokenizer.as_deref())?;
            let mut s = model.compile.session(&def, w, ForwardOptions::full(max_seq_len))?;
            let bar = progress::bar(0, 0);
            let policy = pair_log_probs(&mut s, &tok, &data, max_seq_len, limit, &bar)?;
            let reference = match &reference {
                Some(path) => {
                    let mut r = model.compile.session(&def, crate::weights_file::load(&def, path)?, ForwardOptions::full(max_seq_len))?;
                    bar.set_position(0);
                    Some(pair_log_probs(&mut r, &tok, &data, max_seq_len, limit, &bar)?)
                }
                None => None,
            };
            bar.finish_and_clear();
            let sum = summarize(&policy, reference.as_deref(), beta);
            let pct = |k: usize| 100.0 * k as f64 / sum.pairs.max(1) as f64;
            println!("{} pairs of {}", sum.pairs, data.display());
            println!(
                "policy prefers chosen {:>6.1}%   (mean log-prob margin {:.3})",
                pct(sum.policy_prefers_chosen),
                sum.mean_policy_margin
            );
            if let (Some(wins), Some(ties), Some(m)) = (sum.reward_wins, sum.reward_ties, sum.mean_reward_margin) {
                println!("reward accuracy       {:>6.1}%   (margin above the reference's; {ties} ties; mean reward margin {m:.4} at beta {beta})", pct(wins));
            }
        }
    }
    Ok(())
}

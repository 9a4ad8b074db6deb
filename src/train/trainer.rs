//! The training loop: batches in a seeded order, one compiled graph run per
//! micro-step (forward, loss, backward, AdamW in place), metrics and a plot,
//! atomic checkpoints, exact resumption, Ctrl-C and NaN handling.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Result};
use lumind_compilers::optim::AdamWConfig;
use lumind_compilers::{Backend, Fusion};

use super::checkpoint::{self, RunState};
use super::config::TrainConfig;
use super::graph::Update;
use super::lock::RunLock;
use super::metrics::{self, Metrics};
use super::schedule::lr_at;
use super::session::{TrainCompile, TrainSession};
use crate::data::chat::{ChatData, Kind};
use crate::data::pretrain::{Position, PretrainData};
use crate::model::{ModelDef, Precision, Weights};
use crate::tokenizer::Tokenizer;
use crate::train::config::StageName;
use crate::train::Batch;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Where a stage's batches come from.
pub enum Data {
    Text(PretrainData),
    Chat(Box<ChatData>),
}

impl Data {
    pub fn open(cfg: &TrainConfig, tok: &Tokenizer) -> Result<Data> {
        let d = &cfg.data;
        Ok(match cfg.stage {
            StageName::Pretrain => Data::Text(PretrainData::open(&d.train, d.max_seq_len, d.pad_to, d.on_bad_line, cfg.seed)?),
            StageName::Sft | StageName::Lora => {
                Data::Chat(Box::new(ChatData::open(&d.train, Kind::Sft, tok, d.max_seq_len, cfg.sft.loss_on, d.on_bad_line, cfg.seed)?))
            }
            StageName::Dpo => {
                Data::Chat(Box::new(ChatData::open(&d.train, Kind::Pairs, tok, d.max_seq_len, cfg.sft.loss_on, d.on_bad_line, cfg.seed)?))
            }
        })
    }
    pub fn len(&self) -> usize {
        match self {
            Data::Text(d) => d.len(),
            Data::Chat(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn skipped(&self) -> usize {
        match self {
            Data::Text(d) => d.index.skipped,
            Data::Chat(d) => d.index.skipped,
        }
    }
    /// Records skipped so far because nothing in them is scored.
    pub fn unscored(&self) -> usize {
        match self {
            Data::Text(_) => 0,
            Data::Chat(d) => d.unscored_count(),
        }
    }
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        match self {
            Data::Text(d) => d.order(epoch),
            Data::Chat(d) => d.order(epoch),
        }
    }
    pub fn batch(&self, tok: &Tokenizer, order: &[usize], pos: Position, n: usize) -> Result<(Batch, Position)> {
        match self {
            Data::Text(d) => d.batch(tok, order, pos, n),
            Data::Chat(d) => d.batch(tok, order, pos, n),
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub state: RunState,
    pub interrupted: bool,
    pub last: Option<Metrics>,
}

fn install_ctrl_c() {
    // a second install (tests, or a second run in one process) is harmless
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to quit now)");
    });
}

/// Optimizer steps the run will take.
pub fn total_steps(cfg: &TrainConfig, records: usize) -> u64 {
    let o = &cfg.optim;
    let all = batches(cfg, records).div_ceil(o.accumulation_steps as u64);
    o.max_steps.map_or(all, |m| (m as u64).min(all)).max(1)
}

/// Batches in all the run's epochs.
fn batches(cfg: &TrainConfig, records: usize) -> u64 {
    (records.div_ceil(cfg.optim.batch_size) as u64).saturating_mul(cfg.optim.epochs as u64)
}

/// The training session a config asks for: its model's weights (or a
/// seeded init), the stage's graph with `update`, and DPO's reference from
/// `[dpo] reference`. `lumind train` and `lumind grad` both build theirs
/// here, so they run the same graph with the same inputs.
pub fn session_for(cfg: &TrainConfig, def: &ModelDef, update: Update, device: Backend, fusion: Fusion) -> Result<TrainSession> {
    let weights = match &cfg.weights {
        Some(p) => crate::weights_file::load(def, p)?,
        None => Weights::random(def, cfg.seed, None)?,
    };
    let how = TrainCompile { fusion, precision: cfg.precision };
    let mut session = TrainSession::on(device, def, weights, cfg.data.max_seq_len, cfg.stage(), update, how)?;
    if let Some(r) = &cfg.dpo.reference {
        session.set_reference(&crate::weights_file::load(def, r)?)?;
    }
    Ok(session)
}

/// Run (or resume) the training job of `cfg`.
pub fn train(cfg: &TrainConfig, resume: bool, device: Backend) -> Result<Summary> {
    let out = cfg.out.as_path();
    let def = ModelDef::load(&cfg.model)?;
    let tok = Tokenizer::load_or_default(cfg.tokenizer.as_deref())?;
    if tok.vocab_size() > def.vocab_size {
        bail!("the tokenizer has {} tokens but model `{}` only {} (vocab_size)", tok.vocab_size(), def.name, def.vocab_size);
    }
    let _lock = RunLock::acquire(out)?;
    let stale = crate::io::remove_stale_temps(out, None);
    if stale > 0 {
        eprintln!("removed {stale} temporary files that killed runs left in {}", out.display());
    }
    let data = Data::open(cfg, &tok)?;
    cfg.check_against(&def, data.len()).map_err(|e| anyhow::anyhow!("{e:#} (model {})", cfg.model.display()))?;
    let fusion = cfg.fusion;
    let adamw = AdamWConfig { max_grad_norm: cfg.optim.grad_clip, weight_decay: cfg.optim.weight_decay, ..AdamWConfig::default() };
    let ckpt_path = checkpoint::path(out);

    let t_compile = Instant::now();
    let mut session = session_for(cfg, &def, Update::AdamW(adamw), device, fusion)?;
    let compile_ms = t_compile.elapsed().as_secs_f64() * 1e3;
    let mut state = if resume {
        if !ckpt_path.exists() {
            bail!("--resume: no checkpoint at {}", ckpt_path.display());
        }
        let c = checkpoint::load(out, &session.trainable)?;
        if c.state.fingerprint != cfg.fingerprint() {
            bail!(
                "--resume: {} was made with a different config (model, data, stage, optimizer or seed changed); \
                 restore that config or train into another `out`",
                ckpt_path.display()
            );
        }
        metrics::truncate_after(out, c.state.micro_step)?;
        session.set_trained(&c.trained)?;
        session.set_optimizer_state(&c.optimizer)?;
        eprintln!(
            "resuming {} at step {} (epoch {}, record {})",
            out.display(),
            c.state.step,
            c.state.position.epoch,
            c.state.position.index
        );
        c.state
    } else {
        if ckpt_path.exists() {
            bail!("{} already holds a checkpoint: pass --resume to continue it, or set another `out`", out.display());
        }
        let _ = std::fs::remove_file(out.join("metrics.jsonl"));
        RunState { seed: cfg.seed, fingerprint: cfg.fingerprint(), ..Default::default() }
    };
    crate::io::write_atomic(&out.join("config.toml"), toml::to_string(cfg)?.as_bytes())?;

    eprintln!(
        "{:?} `{}` on {} ({} records{}), {} steps of {} x {} {}; {} trained tensors; graph compiled in {:.0} ms",
        cfg.stage,
        def.name,
        cfg.data.train.display(),
        data.len(),
        if data.skipped() > 0 { format!(", {} bad lines skipped", data.skipped()) } else { String::new() },
        total_steps(cfg, data.len()),
        cfg.optim.accumulation_steps,
        cfg.optim.batch_size,
        if cfg.stage == StageName::Dpo { "pairs" } else { "sequences" },
        session.trainable.len(),
        compile_ms
    );
    if cfg.precision == Precision::Bf16 {
        let cpu = lumind_compilers::kernels::bf16_gemm::available();
        eprintln!(
            "mixed precision: {}; weights, gradients, optimizer state and checkpoints in f32",
            if cpu { "matrix products in bf16 (AVX512-BF16)" } else { "this CPU has no AVX512-BF16, so matrix products run in f32" }
        );
    }
    install_ctrl_c();
    INTERRUPTED.store(false, Ordering::SeqCst);
    let summary = run_loop(cfg, &def, &tok, &data, &mut session, &mut state)?;
    metrics::plot(out, &format!("{} {:?} loss", def.name, cfg.stage))?;
    Ok(summary)
}

fn run_loop(
    cfg: &TrainConfig,
    def: &ModelDef,
    tok: &Tokenizer,
    data: &Data,
    session: &mut TrainSession,
    state: &mut RunState,
) -> Result<Summary> {
    let out = cfg.out.as_path();
    let o = &cfg.optim;
    let accum = o.accumulation_steps as u64;
    let total = total_steps(cfg, data.len());
    let total_micro = total * accum;
    let bar = crate::progress::bar(total, state.step);
    let crash_after: Option<u64> = std::env::var("LUMIND_TEST_ABORT_AFTER_STEP").ok().and_then(|v| v.parse().ok());
    // test hook: as if Ctrl-C came during this micro-step
    let interrupt_at: Option<u64> = std::env::var("LUMIND_TEST_INTERRUPT_AT_MICRO_STEP").ok().and_then(|v| v.parse().ok());
    let mut order = data.order(state.position.epoch);
    let mut window_start = Instant::now();
    let mut last = None;
    let mut interrupted = false;
    while state.micro_step < total_micro {
        if state.position.index >= order.len() {
            state.position = Position { epoch: state.position.epoch + 1, index: 0 };
            order = data.order(state.position.epoch);
        }
        let (batch, next) = data.batch(tok, &order, state.position, o.batch_size)?;
        let t = Instant::now();
        let micro = state.micro_step + 1;
        if interrupt_at == Some(micro) {
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
        let apply = micro.is_multiple_of(accum) || micro == total_micro;
        let step = micro.div_ceil(accum);
        let lr = lr_at(o.learning_rate, micro, total_micro, o.warmup_steps as u64 * accum);
        let l = session.step(&batch, lr, step, apply, 1.0 / accum as f32)?;
        // (AdamW skips an update whose gradient norm is not finite, so the
        // weights in memory stay good too)
        let bad = if !l.loss.is_finite() {
            Some(format!("the loss is {}", l.loss))
        } else {
            l.grad_norm.filter(|g| !g.is_finite()).map(|g| format!("the gradient norm is {g}"))
        };
        if let Some(what) = bad {
            bar.abandon();
            bail!(
                "{what} at step {step} (micro-step {micro}); stopping. The last good checkpoint (step {}) is in {}",
                last_checkpoint_step(out)?,
                out.display()
            );
        }
        state.elapsed += t.elapsed().as_secs_f64();
        state.micro_step = micro;
        state.position = next;
        let n_tokens = (batch.batch * batch.seq) as u64;
        state.tokens += n_tokens;
        // (the sums live in the run state, so a checkpoint taken in the
        // middle of an accumulation carries the micro-steps already done)
        let w = &mut state.window;
        w.micro_steps += 1;
        w.loss += l.loss;
        w.ce += l.ce;
        w.aux += l.aux;
        if let Some((acc, margin)) = l.dpo {
            w.reward_acc += acc;
            w.reward_margin += margin;
        }
        w.tokens += n_tokens;
        if apply {
            state.step = step;
            let w = std::mem::take(&mut state.window);
            let n = w.micro_steps as f32;
            let m = Metrics {
                step,
                micro_step: micro,
                epoch: state.position.epoch,
                loss: w.loss / n,
                ce: w.ce / n,
                aux: w.aux / n,
                lr,
                grad_norm: l.grad_norm.unwrap_or(0.0),
                tokens: state.tokens,
                tokens_per_s: w.tokens as f64 / window_start.elapsed().as_secs_f64().max(1e-9),
                elapsed_s: state.elapsed,
                reward_acc: l.dpo.map(|_| w.reward_acc / n),
                reward_margin: l.dpo.map(|_| w.reward_margin / n),
            };
            if step.is_multiple_of(cfg.log.every as u64) || step == total {
                metrics::append(out, &m)?;
            }
            bar.set_position(step);
            let dpo = m.reward_acc.map_or(String::new(), |a| format!("  acc {a:.2} margin {:.3}", m.reward_margin.unwrap_or(0.0)));
            bar.set_message(format!("loss {:.4}{dpo}  lr {:.2e}  {:.0} tok/s", m.loss, lr, m.tokens_per_s));
            // without a terminal the bar is hidden: print a line every tenth of the run
            if bar.is_hidden() && (step.is_multiple_of((total / 10).max(1)) || step == total) {
                eprintln!("step {step}/{total}  loss {:.4}{dpo}  lr {:.2e}  {:.0} tok/s", m.loss, lr, m.tokens_per_s);
            }
            last = Some(m);
            window_start = Instant::now();
            if step.is_multiple_of(cfg.checkpoint.every as u64) && step < total {
                save(out, state, session, def)?;
            }
            if crash_after == Some(step) {
                // test hook: die like a killed process, without cleanup
                std::process::abort();
            }
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
    }
    save(out, state, session, def)?;
    bar.finish_and_clear();
    let result =
        if matches!(session.stage, crate::train::graph::Stage::Lora(_)) { out.join("adapter") } else { out.join("model.safetensors") };
    if data.unscored() > 0 {
        eprintln!(
            "warning: {} records had no assistant token within max_seq_len ({}) and were skipped",
            data.unscored(),
            cfg.data.max_seq_len
        );
    }
    if interrupted {
        eprintln!(
            "interrupted at step {} (micro-step {}); checkpoint saved in {}; continue with --resume",
            state.step,
            state.micro_step,
            out.display()
        );
    } else {
        eprintln!(
            "done: {} steps, {} tokens in {:.1}s ({:.0} tokens/s); final loss {:.4}; {}",
            state.step,
            state.tokens,
            state.elapsed,
            state.tokens as f64 / state.elapsed.max(1e-9),
            last.as_ref().map_or(f32::NAN, |m| m.loss),
            result.display()
        );
    }
    Ok(Summary { state: state.clone(), interrupted, last })
}

fn save(out: &Path, state: &RunState, session: &TrainSession, def: &ModelDef) -> Result<()> {
    let trained = session.trained();
    checkpoint::save(out, state, &trained, &session.optimizer_state())?;
    match &session.stage {
        crate::train::graph::Stage::Lora(cfg) => crate::lora::save_adapter(&out.join("adapter"), cfg, &trained)?,
        _ => trained.save(&out.join("model.safetensors"))?,
    }
    metrics::plot(out, &format!("{} loss", def.name))
}

fn last_checkpoint_step(out: &Path) -> Result<String> {
    let p = checkpoint::path(out);
    if !p.exists() {
        return Ok("none".into());
    }
    let meta = crate::model::weights::Tensors::load_metadata(&p)?;
    let st: Option<RunState> = meta.get("lumind_run_state").and_then(|s| serde_json::from_str(s).ok());
    Ok(st.map_or("unknown".into(), |s| s.step.to_string()))
}

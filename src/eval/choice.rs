//! Multiple choice in C-Eval's format: the option letter the model's next
//! token favours.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::chat_template::{ChatTemplate, Message, Role};
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// One multiple-choice question.
#[derive(Clone, Debug, PartialEq)]
pub struct Question {
    pub question: String,
    pub options: [String; 4],
    /// 0..4
    pub answer: usize,
}

/// C-Eval CSV files (`id,question,A,B,C,D,answer`): one file, or every
/// `*.csv` in a directory. Returns (subject, questions) per file; the subject
/// is the file name without `_val`/`_test`/`_dev` and `.csv`.
pub fn read_choice_files(path: &Path) -> Result<Vec<(String, Vec<Question>)>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    };
    if files.is_empty() {
        bail!("{} holds no .csv files", path.display());
    }
    let mut out = vec![];
    for f in files {
        let mut r = csv::Reader::from_path(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let headers = r.headers().with_context(|| format!("{}: no header row", f.display()))?.clone();
        let col =
            |name: &str| headers.iter().position(|h| h.trim() == name).with_context(|| format!("{}: no column `{name}`", f.display()));
        let (q, a, b, c, d, ans) = (col("question")?, col("A")?, col("B")?, col("C")?, col("D")?, col("answer")?);
        let mut qs = vec![];
        for (i, rec) in r.records().enumerate() {
            let rec = rec.with_context(|| format!("{}:{}", f.display(), i + 2))?;
            let answer = match rec.get(ans).map(str::trim) {
                Some("A") => 0,
                Some("B") => 1,
                Some("C") => 2,
                Some("D") => 3,
                other => bail!("{}:{}: answer {other:?} is not A, B, C or D", f.display(), i + 2),
            };
            let get = |c: usize| rec.get(c).unwrap_or_default().to_string();
            qs.push(Question { question: get(q), options: [get(a), get(b), get(c), get(d)], answer });
        }
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let subject = ["_val", "_test", "_dev"].iter().fold(stem, |s, suf| s.strip_suffix(suf).map(String::from).unwrap_or(s));
        out.push((subject, qs));
    }
    Ok(out)
}

/// The fixed prompt: the question, the four options, then `答案：` (C-Eval's
/// "answer:"), as the user message of a chat (or raw text after a bos token).
pub fn choice_prompt(q: &Question) -> String {
    format!("{}\nA. {}\nB. {}\nC. {}\nD. {}\n答案：", q.question, q.options[0], q.options[1], q.options[2], q.options[3])
}

/// Which option the model's next-token probabilities favour.
pub fn answer(s: &mut Session, tok: &Tokenizer, template: Option<&ChatTemplate>, q: &Question, letters: &[u32; 4]) -> Result<usize> {
    let text = choice_prompt(q);
    let ids = match template {
        Some(t) => t.encode(tok, &[Message::new(Role::User, &text)], true)?,
        None => [vec![tok.bos], tok.encode(&text)?].concat(),
    };
    let l = s.run(&ids, 1, 0)?;
    let last = l.last();
    let best = (0..4).max_by(|&a, &b| last[letters[a] as usize].total_cmp(&last[letters[b] as usize])).unwrap();
    s.recycle(l);
    Ok(best)
}

/// The token ids of `A`..`D`.
pub fn letter_ids(tok: &Tokenizer) -> Result<[u32; 4]> {
    let mut ids = [0; 4];
    for (i, l) in ["A", "B", "C", "D"].iter().enumerate() {
        match tok.encode(l)?.as_slice() {
            [id] => ids[i] = *id,
            other => bail!("`{l}` is not a single token for this tokenizer ({other:?})"),
        }
    }
    Ok(ids)
}

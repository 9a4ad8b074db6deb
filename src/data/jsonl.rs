//! JSON Lines files read by line offsets: one pass builds an index of the
//! lines that hold a valid record (bad ones are reported with file:line and
//! skipped, or stop the run), then records are read one at a time, in any
//! order, so a multi-GB file is never loaded whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::rng::Rng;

/// What to do with a line that is not a valid record.
#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnBadLine {
    /// report it and go on without it
    #[default]
    Skip,
    /// stop with an error naming it
    Fail,
}

/// The longest line a record may have (64 MiB): longer ones are bad lines,
/// and are never held in memory whole.
pub const MAX_LINE: usize = 64 << 20;

/// Read one line (with its newline) into `buf`, keeping at most
/// [`MAX_LINE`] + 1 of its bytes; returns its full length (0 at the end).
fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(total);
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        r.consume(take);
        total += take;
        if done {
            return Ok(total);
        }
    }
}

/// An indexed JSONL file.
pub struct JsonlIndex {
    pub path: PathBuf,
    /// (byte offset, length, 1-based line number) of each valid record
    pub records: Vec<(u64, u32, u32)>,
    /// lines reported as bad
    pub skipped: usize,
}

impl JsonlIndex {
    /// Index `path`; `check` validates one parsed line (Err = why it is bad).
    /// A line that is not UTF-8, not JSON, fails `check` or is longer than
    /// [`MAX_LINE`] is bad.
    pub fn build(path: &Path, on_bad: OnBadLine, check: impl Fn(&serde_json::Value) -> Result<(), String>) -> Result<JsonlIndex> {
        let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        let mut line = Vec::new();
        let (mut off, mut no) = (0u64, 0u32);
        let mut idx = JsonlIndex { path: path.to_path_buf(), records: vec![], skipped: 0 };
        loop {
            line.clear();
            let n = read_line(&mut r, &mut line).with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            no = no.checked_add(1).with_context(|| format!("{} has more than {} lines", path.display(), u32::MAX))?;
            let why = if n > MAX_LINE {
                Some(format!("the line is {n} bytes long, over the {MAX_LINE} a record may have"))
            } else {
                match std::str::from_utf8(&line) {
                    Err(e) => Some(format!("not valid UTF-8 (byte {} of the line)", e.valid_up_to() + 1)),
                    Ok(text) if text.trim().is_empty() => {
                        off += n as u64;
                        continue;
                    }
                    Ok(text) => match serde_json::from_str::<serde_json::Value>(text.trim()) {
                        Ok(v) => check(&v).err(),
                        Err(e) => Some(format!("not valid JSON ({e})")),
                    },
                }
            };
            match (why, on_bad) {
                (None, _) => idx.records.push((off, n as u32, no)),
                (Some(w), OnBadLine::Fail) => bail!("{}:{no}: {w}", path.display()),
                (Some(w), OnBadLine::Skip) => {
                    idx.skipped += 1;
                    eprintln!("warning: {}:{no}: {w}; skipped", path.display());
                }
            }
            off += n as u64;
        }
        if idx.records.is_empty() {
            bail!("{} has no valid records", path.display());
        }
        Ok(idx)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record order of an epoch: a shuffle seeded by `seed` and `epoch`
    /// (the same on every run, so a resumed run reads what it would have).
    pub fn order(&self, seed: u64, epoch: u64) -> Vec<usize> {
        let mut o: Vec<usize> = (0..self.len()).collect();
        let mut rng = Rng::new(seed.wrapping_mul(0x9E37_79B9).wrapping_add(epoch));
        for i in (1..o.len()).rev() {
            o.swap(i, rng.below(i + 1));
        }
        o
    }

    /// The records `order[start..]`, at most `n` of them (one batch).
    pub fn read(&self, order: &[usize], start: usize, n: usize) -> Result<Vec<serde_json::Value>> {
        let mut reader = self.reader()?;
        order[start..(start + n).min(order.len())].iter().map(|&i| Ok(reader.get(i)?.0)).collect()
    }

    /// Open a reader over the records.
    pub fn reader(&self) -> Result<JsonlReader<'_>> {
        let f = File::open(&self.path).with_context(|| format!("cannot open {}", self.path.display()))?;
        Ok(JsonlReader { index: self, file: f, buf: vec![] })
    }
}

pub struct JsonlReader<'a> {
    index: &'a JsonlIndex,
    file: File,
    buf: Vec<u8>,
}

impl JsonlReader<'_> {
    /// Record `i` (0-based among valid records) and its line number.
    pub fn get(&mut self, i: usize) -> Result<(serde_json::Value, u32)> {
        let (off, len, line) = self.index.records[i];
        self.buf.resize(len as usize, 0);
        self.file.seek(SeekFrom::Start(off))?;
        self.file.read_exact(&mut self.buf)?;
        let v =
            serde_json::from_slice(&self.buf).with_context(|| format!("{}:{line} changed while training", self.index.path.display()))?;
        Ok((v, line))
    }
}

/// A line is a pretraining record: an object with a string `text`.
pub fn check_text(v: &serde_json::Value) -> Result<(), String> {
    match v.get("text") {
        Some(serde_json::Value::String(_)) => Ok(()),
        Some(_) => Err("field `text` is not a string".into()),
        None => Err("no field `text`".into()),
    }
}

//! Tokenizers (Hugging Face `tokenizer.json` via the `tokenizers` crate) and
//! their special tokens. The MiniMind tokenizer is built into the binary, so
//! commands work from any directory; `--tokenizer DIR` picks another.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

/// The shipped MiniMind tokenizer (minimind-3 version, vocab 6400).
pub const DEFAULT_TOKENIZER_JSON: &[u8] = include_bytes!("../data/tokenizer/tokenizer.json");
pub const DEFAULT_TOKENIZER_CONFIG: &str = include_str!("../data/tokenizer/tokenizer_config.json");

pub struct Tokenizer {
    pub inner: tokenizers::Tokenizer,
    /// the same tokenizer reading special-token strings as plain text
    plain: tokenizers::Tokenizer,
    /// the special (control) tokens' strings, longest first
    pub specials: Vec<String>,
    /// `tokenizer_config.json` (chat template, special token names)
    pub config: serde_json::Value,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
}

impl Tokenizer {
    /// The built-in MiniMind tokenizer.
    pub fn default_minimind() -> Tokenizer {
        let inner = tokenizers::Tokenizer::from_bytes(DEFAULT_TOKENIZER_JSON).expect("built-in tokenizer.json parses");
        let config = serde_json::from_str(DEFAULT_TOKENIZER_CONFIG).expect("built-in tokenizer_config.json parses");
        Tokenizer::from_parts(inner, config).expect("built-in tokenizer has its special tokens")
    }

    /// Load `DIR/tokenizer.json` (and `DIR/tokenizer_config.json` if present).
    pub fn load(dir: &Path) -> Result<Tokenizer> {
        let file = if dir.is_file() { dir.to_path_buf() } else { dir.join("tokenizer.json") };
        let inner = tokenizers::Tokenizer::from_file(&file).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", file.display()))?;
        let cfg_path = file.with_file_name("tokenizer_config.json");
        let config = if cfg_path.exists() {
            let text = std::fs::read_to_string(&cfg_path).with_context(|| format!("cannot read {}", cfg_path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", cfg_path.display()))?
        } else {
            serde_json::json!({})
        };
        Tokenizer::from_parts(inner, config).with_context(|| format!("tokenizer {}", file.display()))
    }

    /// `--tokenizer DIR` if given, else the built-in one.
    pub fn load_or_default(dir: Option<&Path>) -> Result<Tokenizer> {
        match dir {
            Some(d) => Tokenizer::load(d),
            None => Ok(Tokenizer::default_minimind()),
        }
    }

    pub fn from_parts(inner: tokenizers::Tokenizer, config: serde_json::Value) -> Result<Tokenizer> {
        let id = |key: &str, default: &str| -> Result<u32> {
            let name = config.get(key).and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str())).unwrap_or(default);
            inner.token_to_id(name).ok_or_else(|| anyhow!("special token `{name}` ({key}) is not in the vocabulary"))
        };
        let (bos, eos, pad) = (id("bos_token", "<|im_start|>")?, id("eos_token", "<|im_end|>")?, id("pad_token", "<|endoftext|>")?);
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        let mut specials: Vec<String> = inner.get_added_tokens_decoder().into_values().filter(|t| t.special).map(|t| t.content).collect();
        specials.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        Ok(Tokenizer { inner, plain, specials, config, bos, eos, pad })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`, no special tokens added; special-token strings
    /// in it become those tokens (text made by a template or the user's own
    /// raw prompt).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The first token ids of `text`: at least its first `need` tokens as
    /// [`Self::encode`] gives them (all of them if it has fewer), without
    /// tokenizing the rest of a long text (see [`with_budget`]).
    pub fn encode_prefix(&self, text: &str, need: usize) -> Result<Vec<u32>> {
        with_budget(need, text.len(), |budget| self.encode(&text[..floor_char_boundary(text, budget)]))
    }

    /// Token ids of `text` read as plain text: a special-token string in it
    /// is spelled out in ordinary tokens, never a control token (message
    /// content).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.plain.encode(text, false).map_err(|e| anyhow!("tokenizing failed: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("decoding failed: {e}"))
    }
}

/// Tokens past the cut a budget must leave, so that the cut (which can only
/// change the last pre-token's merges) is far from the ones kept.
const CUT_MARGIN: usize = 64;

/// Tokenize a text of `len` bytes cut to a budget of bytes, `encode(budget)`,
/// growing the budget until the cut leaves `need` tokens and a margin before
/// it (or nothing is cut). A record of 10 MB then costs what its first
/// `need` tokens do, not gigabytes of tokenizer state. The budget starts
/// far above what `need` tokens take (64 bytes a token, plus 64 KiB), so
/// only records much longer than `need` are cut at all; a chat template
/// that looks at the whole of a message (MiniMind's splits at `</think>`)
/// could render such a cut message differently.
pub fn with_budget(need: usize, len: usize, encode: impl Fn(usize) -> Result<Vec<u32>>) -> Result<Vec<u32>> {
    let mut budget = need.saturating_mul(64).saturating_add(64 << 10);
    loop {
        if budget >= len {
            return encode(len);
        }
        let ids = encode(budget)?;
        if ids.len() >= need.saturating_add(CUT_MARGIN) {
            return Ok(ids);
        }
        budget = budget.saturating_mul(4);
    }
}

/// The largest char boundary of `s` at or below `i`.
pub fn floor_char_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Turns a growing list of tokens into text pieces as they arrive, holding
/// back a piece while it ends inside a multi-byte character.
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    printed: usize,
}

impl TextStream {
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let text = tok.decode(&self.ids)?;
        if text.ends_with('\u{FFFD}') || text.len() < self.printed || !text.is_char_boundary(self.printed) {
            return Ok(String::new());
        }
        let piece = text[self.printed..].to_string();
        self.printed = text.len();
        Ok(piece)
    }
}

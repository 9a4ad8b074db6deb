//! Training a tokenizer as MiniMind does: byte-level BPE over the corpus,
//! with `<|endoftext|>` = 0 (pad/unk), `<|im_start|>` = 1 (bos) and
//! `<|im_end|>` = 2 (eos), and a `tokenizer_config.json` with a ChatML chat
//! template, readable by lumind and by Python `tokenizers`/`transformers`.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder};

use crate::data::jsonl::{check_text, JsonlIndex, OnBadLine};

pub const SPECIAL: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per message, then the
/// assistant header when a reply is wanted.
pub const CHATML_TEMPLATE: &str = "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}";

pub fn train(input: &Path, vocab_size: usize, out: &Path) -> Result<()> {
    if vocab_size < 256 + SPECIAL.len() || vocab_size > 1 << 22 {
        bail!("--vocab-size must be between {} (256 bytes + 3 special tokens) and {}, got {vocab_size}", 256 + SPECIAL.len(), 1 << 22);
    }
    let index = JsonlIndex::build(input, OnBadLine::Skip, check_text)?;
    let mut reader = index.reader()?;
    let mut texts = Vec::with_capacity(index.len());
    for i in 0..index.len() {
        texts.push(reader.get(i)?.0["text"].as_str().unwrap_or_default().to_string());
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(true)
        .special_tokens(SPECIAL.iter().map(|s| AddedToken::from(s.to_string(), true)).collect())
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tok = TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
        .with_model(BPE::default())
        .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
        .with_decoder(Some(ByteLevel::default().into()))
        .build()
        .map_err(|e| anyhow!("{e}"))?;
    tok.train(&mut trainer, texts.iter()).map_err(|e| anyhow!("training the tokenizer: {e}"))?;
    for (i, s) in SPECIAL.iter().enumerate() {
        if tok.token_to_id(s) != Some(i as u32) {
            bail!("special token {s} did not get id {i}");
        }
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = tok.to_string(true).map_err(|e| anyhow!("{e}"))?;
    crate::io::write_atomic(&out.join("tokenizer.json"), json.as_bytes())?;
    let decoder: serde_json::Map<String, serde_json::Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, s)| {
            (i.to_string(), serde_json::json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false, "special": true}))
        })
        .collect();
    let config = serde_json::json!({
        "add_bos_token": false,
        "add_eos_token": false,
        "add_prefix_space": false,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [],
        "bos_token": SPECIAL[1],
        "eos_token": SPECIAL[2],
        "pad_token": SPECIAL[0],
        "unk_token": SPECIAL[0],
        "clean_up_tokenization_spaces": false,
        "model_max_length": 32768,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHATML_TEMPLATE,
    });
    crate::io::write_atomic(&out.join("tokenizer_config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    eprintln!(
        "trained a {}-token tokenizer on {} records of {}; wrote {}",
        tok.get_vocab_size(true),
        index.len(),
        input.display(),
        out.display()
    );
    Ok(())
}

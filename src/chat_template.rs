//! Chat templates: the Jinja template of a tokenizer's `tokenizer_config.json`
//! (`chat_template`) rendered with minijinja, with Python string methods
//! (`startswith`, `split`, `strip`, ...) as transformers' templates use them.

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::tokenizer::Tokenizer;
use crate::tokenizer_train::CHATML_TEMPLATE;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
}

impl ChatTemplate {
    pub fn new(source: &str) -> Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string()).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
        Ok(ChatTemplate { env })
    }

    /// The tokenizer's template, or plain ChatML when it has none.
    pub fn for_tokenizer(tok: &Tokenizer) -> Result<ChatTemplate> {
        let src = tok.config.get("chat_template").and_then(|t| t.as_str()).unwrap_or(CHATML_TEMPLATE);
        ChatTemplate::new(src).context("the tokenizer's chat_template")
    }

    /// The conversation as text; with `add_generation_prompt` it ends where
    /// the assistant's reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").expect("added above");
        t.render(minijinja::context! {
            messages => minijinja::value::Serde(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => "<|im_start|>",
            eos_token => "<|im_end|>",
        })
        .map_err(|e| anyhow!("rendering the chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimind_template_renders_chatml_with_an_empty_think_block() {
        let tok = Tokenizer::default_minimind();
        let t = ChatTemplate::for_tokenizer(&tok).unwrap();
        let msgs = [
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello."),
            Message::new("user", "2+2?"),
        ];
        let s = t.render(&msgs, true).unwrap();
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        let plain = ChatTemplate::new(CHATML_TEMPLATE).unwrap().render(&msgs[1..2], true).unwrap();
        assert_eq!(plain, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }
}

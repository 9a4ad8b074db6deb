//! Scoring a model: multiple choice (C-Eval), perplexity, chat answers
//! against references, and preference pairs.

pub mod agreement;
pub mod chat;
pub mod choice;
pub mod divergence;
pub mod pairs;
pub mod perplexity;

pub use choice::{answer, choice_prompt, letter_ids, read_choice_files, Question};
pub use perplexity::{perplexity, scored_log_prob};

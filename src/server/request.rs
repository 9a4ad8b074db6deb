//! OpenAI chat-completion requests: parsed from raw JSON with checks that
//! name the field at fault, and errors in OpenAI's JSON shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::chat_template::{Message, Role};
use crate::sampling::SamplingParams;

/// An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param.into()),
            code: None,
        }
    }
    /// 401, as OpenAI answers a missing or wrong key.
    pub fn unauthorized(message: &str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "invalid_request_error", Some("invalid_api_key"), message)
    }
    pub fn new(status: StatusCode, kind: &'static str, code: Option<&'static str>, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code }
    }
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
}

fn number(v: &Value, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or(f64::NAN);
            if x >= lo && x <= hi {
                Ok(Some(x))
            } else {
                Err(ApiError::invalid(key, format!("`{key}` must be between {lo} and {hi}, got {x}")))
            }
        }
        Some(other) => Err(ApiError::invalid(key, format!("`{key}` must be a number, got {}", kind(other)))),
    }
}

fn integer(v: &Value, key: &str) -> Result<Option<u64>, ApiError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(other) => Err(ApiError::invalid(key, format!("`{key}` must be a non-negative integer, got {other}"))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ChatRequest {
    /// Parse and check a request body. `model` is the served model's id;
    /// `context` bounds `max_tokens`.
    pub fn parse(body: &[u8], model: &str, context: usize) -> Result<ChatRequest, ApiError> {
        let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::invalid("body", format!("the body must be a JSON object, got {}", kind(&v))));
        }
        match v.get("model") {
            None | Some(Value::Null) => {}
            Some(Value::String(m)) if m == model => {}
            Some(Value::String(m)) => {
                return Err(ApiError {
                    status: StatusCode::NOT_FOUND,
                    message: format!("the model `{m}` does not exist; this server serves `{model}`"),
                    kind: "invalid_request_error",
                    param: Some("model".into()),
                    code: Some("model_not_found"),
                })
            }
            Some(other) => return Err(ApiError::invalid("model", format!("`model` must be a string, got {}", kind(other)))),
        }
        let msgs = match v.get("messages") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::Array(_)) => return Err(ApiError::invalid("messages", "`messages` must not be empty")),
            None | Some(Value::Null) => return Err(ApiError::invalid("messages", "`messages` is required")),
            Some(other) => return Err(ApiError::invalid("messages", format!("`messages` must be an array, got {}", kind(other)))),
        };
        let mut messages = vec![];
        for (i, m) in msgs.iter().enumerate() {
            let p = format!("messages[{i}]");
            let role = match m.get("role") {
                Some(Value::String(r)) => r
                    .parse::<Role>()
                    .map_err(|_| ApiError::invalid(&format!("{p}.role"), format!("`{p}.role` is `{r}`; expected {}", Role::expected())))?,
                _ => return Err(ApiError::invalid(&format!("{p}.role"), format!("`{p}.role` must be a string"))),
            };
            let content = match m.get("content") {
                Some(Value::String(c)) => c.clone(),
                // OpenAI's list of parts: text parts only
                Some(Value::Array(parts)) => {
                    let mut s = String::new();
                    for (j, part) in parts.iter().enumerate() {
                        match (part.get("type").and_then(|t| t.as_str()), part.get("text").and_then(|t| t.as_str())) {
                            (Some("text"), Some(t)) => s.push_str(t),
                            _ => return Err(ApiError::invalid(&format!("{p}.content[{j}]"), "only text content parts are supported")),
                        }
                    }
                    s
                }
                _ => return Err(ApiError::invalid(&format!("{p}.content"), format!("`{p}.content` must be a string"))),
            };
            messages.push(Message { role, content });
        }
        if messages.last().map(|m| m.role) == Some(Role::Assistant) {
            return Err(ApiError::invalid("messages", "the last message must not be the assistant's"));
        }
        if let Some(n) = integer(&v, "n")? {
            if n != 1 {
                return Err(ApiError::invalid("n", format!("only `n` = 1 is supported, got {n}")));
            }
        }
        let max_tokens = match integer(&v, "max_completion_tokens")?.or(integer(&v, "max_tokens")?) {
            Some(0) => return Err(ApiError::invalid("max_tokens", "`max_tokens` must be at least 1")),
            Some(n) if n as usize > context => {
                return Err(ApiError::invalid("max_tokens", format!("`max_tokens` is {n} but the context holds {context} tokens")))
            }
            n => n.map(|n| n as usize),
        };
        let stop = match v.get("stop") {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) if a.len() <= 4 => a
                .iter()
                .map(|s| s.as_str().map(String::from).ok_or_else(|| ApiError::invalid("stop", "`stop` must hold strings")))
                .collect::<Result<_, _>>()?,
            Some(Value::Array(_)) => return Err(ApiError::invalid("stop", "`stop` holds at most 4 sequences")),
            Some(other) => return Err(ApiError::invalid("stop", format!("`stop` must be a string or an array, got {}", kind(other)))),
        };
        if stop.iter().any(|s| s.is_empty()) {
            return Err(ApiError::invalid("stop", "`stop` sequences must not be empty"));
        }
        let stream = match v.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(ApiError::invalid("stream", format!("`stream` must be a boolean, got {}", kind(other)))),
        };
        let sampling = SamplingParams {
            temperature: number(&v, "temperature", 0.0, 2.0)?.unwrap_or(1.0) as f32,
            top_p: match number(&v, "top_p", 0.0, 1.0)? {
                Some(p) if p <= 0.0 => return Err(ApiError::invalid("top_p", "`top_p` must be above 0")),
                p => p.unwrap_or(1.0) as f32,
            },
            top_k: integer(&v, "top_k")?.unwrap_or(0) as usize,
            repetition_penalty: number(&v, "repetition_penalty", 0.01, 10.0)?.unwrap_or(1.0) as f32,
            seed: integer(&v, "seed")?
                .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)),
        };
        Ok(ChatRequest { messages, sampling, max_tokens, stop, stream })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        ChatRequest::parse(body.as_bytes(), "m", 100).unwrap_err()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stop":"x","seed":3}"#,
            "m",
            100,
        )
        .unwrap();
        assert_eq!((ok.sampling.temperature, ok.stop.clone(), ok.sampling.seed), (0.0, vec!["x".to_string()], 3));
        assert_eq!(err("{").param.as_deref(), Some("body"));
        assert_eq!(err(r#"{"messages":"hi"}"#).message, "`messages` must be an array, got a string");
        assert_eq!(err(r#"{"messages":[{"role":"robot","content":"x"}]}"#).param.as_deref(), Some("messages[0].role"));
        assert_eq!(err(r#"{"messages":[{"role":"user","content":5}]}"#).param.as_deref(), Some("messages[0].content"));
        assert_eq!(err(r#"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#).status, StatusCode::NOT_FOUND);
        assert!(err(r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":500}"#).message.contains("context holds 100"));
        assert!(err(r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#).message.contains("must be a number"));
        assert!(err(r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#).message.contains("n` = 1"));
    }
}

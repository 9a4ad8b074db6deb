//! `lumind serve`: an OpenAI-compatible HTTP server (axum on tokio) with a
//! web chat page at `/`.
//!
//! `POST /v1/chat/completions` (plain or streamed as server-sent events),
//! `GET /v1/models`, `GET /health`. Requests go to the generation worker,
//! which decodes several together (bounded queue: a full queue answers
//! 503); a client that disconnects or stops reading loses its generation;
//! with an API key, `/v1` needs `Authorization: Bearer KEY`; SIGTERM or
//! Ctrl-C stops accepting connections, lets the running ones finish (for a
//! grace period), then exits.

pub mod listen;
pub mod request;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream, StreamExt};
use serde_json::json;

use self::listen::Limits;
use self::request::{ApiError, ChatRequest};
use self::worker::{Event, Job, Worker};
use crate::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;

/// The web chat page (self-contained: no CDN).
pub const PAGE: &str = include_str!("page.html");

/// Largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

pub struct App {
    pub model_id: String,
    pub context: usize,
    pub tok: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub worker: Worker,
    /// `/v1` requests must carry `Authorization: Bearer KEY`
    pub api_key: Option<String>,
    pub limits: Limits,
}

pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route_layer(middleware::from_fn_with_state(app.clone(), authorize));
    Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/health", get(health))
        .merge(v1)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", None, "no such endpoint") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

/// Serve until SIGTERM or Ctrl-C.
pub fn serve(app: App, addr: SocketAddr) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        if app.api_key.is_none() && !addr.ip().is_loopback() {
            eprintln!(
                "warning: listening on {} without an API key: anyone who can reach it can use the model (set --api-key or LUMIND_API_KEY)",
                addr.ip()
            );
        }
        eprintln!("serving `{}` on http://{} (chat page at /, API at /v1/chat/completions)", app.model_id, listener.local_addr()?);
        eprintln!(
            "{} requests are decoded together, up to {} more wait; Ctrl-C or SIGTERM drains and stops",
            app.worker.parallel, app.worker.capacity
        );
        let limits = app.limits;
        listen::serve(listener, router(Arc::new(app)), limits, shutdown()).await;
        eprintln!("stopped");
        Ok(())
    })
}

/// With an API key, a `/v1` request must carry it as a bearer token.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else { return next.run(req).await };
    let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if equal_in_constant_time(g.trim().as_bytes(), key.as_bytes()) => next.run(req).await,
        Some(_) => ApiError::unauthorized("Incorrect API key provided.").into_response(),
        None => ApiError::unauthorized("You didn't provide an API key: send it as `Authorization: Bearer KEY`.").into_response(),
    }
}

/// (so how long a comparison takes does not tell how much of a key was right)
fn equal_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn shutdown() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    eprintln!("shutting down: finishing the requests in flight");
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn health(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    let w = &app.worker;
    Json(json!({
        "status": "ok", "model": app.model_id, "slots": w.parallel,
        "active": w.active.load(Ordering::SeqCst), "queued": w.queued.load(Ordering::SeqCst),
    }))
}

async fn models(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [{"id": app.model_id, "object": "model", "created": now(), "owned_by": "lumind"}]}))
}

async fn chat(State(app): State<Arc<App>>, req: Request) -> Response {
    match start(&app, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn start(app: &Arc<App>, req: Request) -> Result<Response, ApiError> {
    let limit = app.limits.body;
    let body = match tokio::time::timeout(limit, Bytes::from_request(req, &())).await {
        Err(_) => {
            let msg = format!("the request body did not arrive within {} s", limit.as_secs_f64());
            return Err(ApiError {
                param: Some("body".into()),
                ..ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", None, msg)
            });
        }
        Ok(body) => body,
    };
    let body = body.map_err(|e| {
        let status = e.status();
        let msg =
            if status == StatusCode::PAYLOAD_TOO_LARGE { format!("the request body exceeds {MAX_BODY} bytes") } else { e.body_text() };
        ApiError { status, message: msg, kind: "invalid_request_error", param: Some("body".into()), code: None }
    })?;
    let req = ChatRequest::parse(&body, &app.model_id, app.context)?;
    let prompt = app.template.encode(&app.tok, &req.messages, true).map_err(|e| ApiError::invalid("messages", format!("{e:#}")))?;
    let room = app.context.saturating_sub(prompt.len());
    if room == 0 {
        return Err(ApiError {
            code: Some("context_length_exceeded"),
            ..ApiError::invalid("messages", format!("the prompt has {} tokens; the context holds {}", prompt.len(), app.context))
        });
    }
    let max_tokens = match req.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError {
                code: Some("context_length_exceeded"),
                ..ApiError::invalid(
                    "max_tokens",
                    format!("the prompt ({} tokens) plus max_tokens ({m}) exceed the context of {}", prompt.len(), app.context),
                )
            })
        }
        Some(m) => m,
        None => room,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(worker::EVENTS);
    let job = Job { prompt, sampling: req.sampling.clone(), max_tokens, stop: req.stop.clone(), events: tx };
    if app.worker.submit(job).is_err() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            Some("overloaded"),
            format!("the server is busy ({} requests queued); retry later", app.worker.capacity),
        ));
    }
    let id = format!("chatcmpl-{:x}", SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    if req.stream {
        Ok(Sse::new(sse_stream(rx, id, app.model_id.clone())).keep_alive(KeepAlive::default()).into_response())
    } else {
        collect(rx, id, &app.model_id).await
    }
}

async fn collect(mut rx: tokio::sync::mpsc::Receiver<Event>, id: String, model: &str) -> Result<Response, ApiError> {
    let mut content = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => content.push_str(&t),
            Event::Error(e) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, e)),
            Event::Done { finish_reason, prompt_tokens, completion_tokens } => {
                return Ok(Json(json!({
                    "id": id, "object": "chat.completion", "created": now(), "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
                }))
                .into_response())
            }
        }
    }
    Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", None, "the generation worker stopped"))
}

fn sse_stream(
    rx: tokio::sync::mpsc::Receiver<Event>,
    id: String,
    model: String,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let created = now();
    let chunk = move |delta: serde_json::Value, finish: Option<&str>, usage: Option<serde_json::Value>| {
        let mut c = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if let Some(u) = usage {
            c["usage"] = u;
        }
        SseEvent::default().data(c.to_string())
    };
    // state: (receiver, started, finished)
    stream::unfold((rx, false, false), move |(mut rx, started, done)| {
        let chunk = chunk.clone();
        async move {
            if done {
                return None;
            }
            if !started {
                return Some((Ok(chunk(json!({"role": "assistant", "content": ""}), None, None)), (rx, true, false)));
            }
            match rx.recv().await {
                Some(Event::Text(t)) => Some((Ok(chunk(json!({"content": t}), None, None)), (rx, true, false))),
                Some(Event::Done { finish_reason, prompt_tokens, completion_tokens }) => {
                    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens});
                    Some((Ok(chunk(json!({}), Some(finish_reason), Some(usage))), (rx, true, true)))
                }
                Some(Event::Error(e)) => {
                    Some((Ok(SseEvent::default().data(json!({"error": {"message": e, "type": "server_error"}}).to_string())), (rx, true, true)))
                }
                // the worker dropped this request: its client fell too far behind
                None => {
                    let e = format!("generation stopped: the client left more than {} events unread", worker::EVENTS);
                    Some((Ok(SseEvent::default().data(json!({"error": {"message": e, "type": "server_error"}}).to_string())), (rx, true, true)))
                }
            }
        }
    })
    .chain(stream::once(async { Ok(SseEvent::default().data("[DONE]")) }))
}

//! `POST /v1/chat/completions`: one owned upstream exchange (design.md §3).
//!
//! 1. reject on `Content-Length` above the limit, read the body (bounded), parse, rewrite;
//! 2. attempt loop: lease a token, connect through Pingora's `Connector`, send, read the
//!    head, then read until the answer is known to be usable (the first decodable event
//!    for a stream, the whole answer otherwise). Anything that fails before that point
//!    (connect error, timeout, a status in `retry.on_status`, an HTML page, garbage, an
//!    error event) is reported to the pool and retried with another token; the client has
//!    seen nothing yet;
//! 3. commit: write the head and what was decoded so far, then transform chunk by chunk,
//!    flushing each batch as it arrives;
//! 4. end honestly: `[DONE]` only after a clean upstream end; a cut or stalled upstream
//!    ends the client stream with `finish_reason:"error"` and an error event.

//!
//! The exchange in files: `intake` (read, parse, check, rewrite), `attempt` (the attempt
//! loop: identity, signed request, head, first usable event; failures and their
//! classification in `super::failure`), `relay` (commit and stream to the client).

mod attempt;
mod intake;
mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use log::debug;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use super::zai::{Identity, ZaiRuntime};
use super::{respond, App, Ctx, Snapshot};
use crate::config::ModelEntry;
use crate::config::{ReasoningOutput, ThinkingBlocks};
use crate::core::error::ApiError;
use crate::core::request::{Sampling, Turn};
use crate::core::Decoder;
use crate::core::ReasoningMode;
use crate::pipeline::complete::{Completion, CompletionResult};
use crate::pipeline::stream::ChatStream;
use crate::pipeline::tools::ToolSet;
use crate::pool::Lease;
use crate::provider::k2think::Payload;
use crate::secret::Secret;
use crate::surface::chat::request::ChatRequest;
use crate::surface::{Reply, Surface, Wire};

pub use intake::count_tokens;
pub(super) use intake::upstream_payload;
use intake::{hosted_tools, prepare, Prepared};
use relay::unless_client_leaves;

/// Most upstream bytes read before the answer proves usable; past it the answer is junk.
const PRECOMMIT_LIMIT: usize = 1 << 20;
/// After the upstream's end marker (`[DONE]`, `done: true`), how long to wait for the body
/// to end; a stall or cut after the marker is a clean end, not a failure.
const AFTER_DONE_WAIT: Duration = Duration::from_secs(1);
/// How much of an error body is read to explain a failed attempt.
const ERROR_BODY_LIMIT: usize = 4096;
/// How long a wait on the upstream goes on before the client's connection is watched as
/// well. A client that leaves an active stream is found by the next write; only a silent
/// upstream (a long prefill, a pause) needs the watch, and starting it only then keeps its
/// cost (a poll of the client socket per wait) off the per-event path.
const WATCH_CLIENT_AFTER: Duration = Duration::from_millis(50);
/// Status logged (nginx's convention) for a request whose client left before the answer.
const CLIENT_CLOSED: u16 = 499;
/// Most output gathered from already-delivered upstream data before it is written.
const WRITE_BATCH: usize = 32 * 1024;

pub async fn handle(app: &App, snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    // The process-wide cap, then per-key limits: a refused request costs no body read.
    match app.gate.enter(snap.config.limits.max_requests) {
        Some(slot) => ctx.slot = Some(slot),
        None => {
            app.metrics
                .overload_refusals
                .with_label_values(&["max_requests"])
                .inc();
            let err = ApiError::new(
                503,
                "server_error",
                "server_overloaded",
                format!(
                    "The proxy is at its limit of {} requests in flight (limits.max_requests); retry shortly",
                    snap.config.limits.max_requests
                ),
            )
            .with_retry_after(Some(1));
            ctx.outcome = "overloaded";
            return respond::error(session, ctx, &err).await;
        }
    }
    let who = client_key(ctx, session);
    let permit = match app
        .limiter
        .admit(&who, &snap.config.limits.per_key, Instant::now())
    {
        Ok(p) => p,
        Err(denied) => {
            let err = ApiError::new(
                429,
                "rate_limit_error",
                "rate_limit_exceeded",
                denied.message(),
            )
            .with_retry_after(Some(denied.retry_after_secs()));
            ctx.outcome = "rate_limited";
            return respond::error(session, ctx, &err).await;
        }
    };
    let deadline = tokio::time::Instant::from_std(ctx.started) + snap.config.limits.request_timeout;
    let Prepared {
        req,
        echo,
        dialect,
        hosted,
        model,
        tools,
        payload,
        thinking,
    } = match prepare(snap, session, ctx, false).await {
        Ok(p) => p,
        Err(e) => {
            drop(permit);
            return respond::error(session, ctx, &e).await;
        }
    };
    if let Err(e) = hosted_tools(app, snap, ctx, &hosted) {
        drop(permit);
        return respond::error(session, ctx, &e).await;
    }
    let route = match route_for(app, snap, model, &req, &payload) {
        Ok(r) => r,
        Err(e) => {
            drop(permit);
            return respond::error(session, ctx, &e).await;
        }
    };
    ctx.provider = Some(snap.config.model_provider(model).to_string());
    let reasoning = reasoning_mode(snap, model, thinking);
    let input_tokens = if ctx.surface.reports_input_tokens() {
        crate::provider::k2think::estimate_input_tokens(&payload)
    } else {
        0
    };
    let job = Job {
        app,
        snap,
        body: Bytes::from(payload.to_bytes()),
        chat_id: payload.chat_id,
        surface: ctx.surface,
        reply: Reply {
            id: ctx.surface.new_id(),
            created: unix_now(),
            model: req.model.clone(),
            reasoning,
            input_tokens,
            include_usage: req.include_usage(),
            echo,
            dialect,
        },
        stream: req.stream,
        tools,
        deadline,
        route,
        cleanup: std::sync::Mutex::new(Vec::new()),
    };
    // Waiting for the upstream can take long (prefill): a client that leaves meanwhile
    // ends the exchange at once, dropping the upstream connection.
    let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
    // Boxed: the attempts' state (the upstream connect and request, the first events) is
    // freed once the answer is usable, instead of staying in this future's state for as
    // long as the answer streams.
    let waited = {
        let mut exchange = Box::pin(job.exchange(ctx));
        unless_client_leaves(session, limit, exchange.as_mut()).await
    };
    let answer = match waited {
        Ok(Some(a)) => a,
        Ok(None) => Err(ApiError::new(
            504,
            "server_error",
            "request_timeout",
            format!(
                "No usable answer within limits.request_timeout ({}s)",
                snap.config.limits.request_timeout.as_secs()
            ),
        )),
        Err(gone) => {
            debug!(
                "{}: client went away before the answer: {gone}",
                ctx.request_id
            );
            ctx.outcome = "client_abort";
            ctx.status = CLIENT_CLOSED;
            ctx.streamed = job.stream;
            return;
        }
    };
    match answer {
        Ok(Answer::Stream(live)) => job.stream(live, session, ctx, permit).await,
        Ok(Answer::Complete(result, malformed)) => {
            drop(permit);
            ctx.tool_calls = result.tool_calls.len();
            ctx.tool_malformed = malformed;
            let body = job.surface.complete(&result, &job.reply);
            ctx.outcome = "complete";
            ctx.ttft = Some(ctx.started.elapsed());
            if let Err(e) = respond::json(session, ctx, 200, body, &[]).await {
                debug!("{}: client went away: {e}", ctx.request_id);
                ctx.outcome = "client_abort";
            }
        }
        Err(e) => {
            drop(permit);
            ctx.outcome = "upstream_error";
            respond::error(session, ctx, &e).await
        }
    }
    job.clean_up().await;
}

/// Which provider serves `model`, with what it needs per attempt.
fn route_for(
    app: &App,
    snap: &Snapshot,
    model: &ModelEntry,
    req: &ChatRequest,
    payload: &Payload,
) -> Result<Route, ApiError> {
    let provider = snap.config.model_provider(model);
    match snap.config.provider_kind(provider) {
        Some("zai") => {
            let rt = app
                .zai_runtime(snap, provider)
                .map_err(|e| ApiError::new(503, "server_error", "provider_unavailable", e))?;
            Ok(Route::Zai(Box::new(ZaiJob {
                rt,
                model: crate::provider::zai::models::for_entry(
                    &model.id,
                    &model.upstream,
                    model.reasoning,
                    model.images,
                ),
                turns: payload.messages.clone(),
                sampling: payload.params.clone(),
                upstream_model: model.upstream.clone(),
                thinking: model.reasoning,
                effort: req
                    .reasoning_effort
                    .or(snap.config.reasoning.effort)
                    .map(|e| e.as_str()),
            })))
        }
        _ => Ok(Route::K2think),
    }
}

/// Where the answer's reasoning goes: nowhere for a model that does not reason, else as
/// `reasoning.output` says; on Messages (`thinking` known) also as
/// `anthropic.thinking_blocks` says.
fn reasoning_mode(snap: &Snapshot, model: &ModelEntry, thinking: Option<bool>) -> ReasoningMode {
    let shown = match (thinking, snap.config.anthropic.thinking_blocks) {
        (None, _) | (Some(_), ThinkingBlocks::Always) => true,
        (Some(asked), ThinkingBlocks::Auto) => asked,
        (Some(_), ThinkingBlocks::Never) => false,
    };
    if !model.reasoning || !shown {
        return ReasoningMode::Drop;
    }
    match snap.config.reasoning.output {
        ReasoningOutput::ReasoningContent => ReasoningMode::Field,
        ReasoningOutput::Inline => ReasoningMode::Inline,
        ReasoningOutput::Drop => ReasoningMode::Drop,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The provider a request goes to.
enum Route {
    K2think,
    Zai(Box<ZaiJob>),
}

/// What a Z.AI request needs per attempt (the body is signed per attempt).
struct ZaiJob {
    rt: Arc<ZaiRuntime>,
    model: crate::provider::zai::models::ZaiModel,
    turns: Vec<Turn>,
    sampling: Sampling,
    upstream_model: String,
    thinking: bool,
    effort: Option<&'static str>,
}

/// Whose credentials an attempt sends.
enum Who {
    K2think(Option<Lease>),
    Zai(Identity),
}

impl Who {
    fn id(&self) -> Option<u64> {
        match self {
            Who::K2think(l) => l.as_ref().map(|l| l.id),
            Who::Zai(i) => Some(i.id),
        }
    }

    fn token(&self) -> Option<&Secret> {
        match self {
            Who::K2think(l) => l.as_ref().map(|l| &l.token),
            Who::Zai(i) => Some(&i.token),
        }
    }
}

/// One client request on its way upstream.
struct Job<'a> {
    app: &'a App,
    snap: &'a Snapshot,
    body: Bytes,
    chat_id: String,
    /// The API the answer is written for.
    surface: Surface,
    reply: Reply,
    stream: bool,
    tools: Option<Arc<ToolSet>>,
    /// `limits.request_timeout` from the request's arrival.
    deadline: tokio::time::Instant,
    route: Route,
    /// Upstream chats this request created, deleted after the answer (Z.AI's cleanup).
    cleanup: std::sync::Mutex<Vec<(Secret, String)>>,
}

/// A usable upstream answer.
enum Answer {
    /// Streaming: the upstream is still sending; `out` holds what is ready for the client.
    Stream(Box<Live>),
    /// Non-stream: the whole answer, and how many malformed tool blocks it had.
    Complete(CompletionResult, u64),
}

/// Boxed, and kept boxed while it streams: this is what a request holds for the whole
/// answer, so its parts are not copied into the stream's own state.
struct Live {
    up: HttpSession,
    /// Boxed: `HttpPeer` is 672 bytes, and every await of an attempt keeps it.
    peer: Box<HttpPeer>,
    stream: LiveStream,
    out: Vec<u8>,
    /// The upstream body already ended cleanly (the whole answer arrived before commit).
    ended: bool,
}

/// The upstream timeouts of one provider.
#[derive(Debug, Clone, Copy)]
struct Timing {
    connect_timeout: Duration,
    header_timeout: Duration,
    idle_timeout: Duration,
    keepalive: Duration,
}

/// The stream transformer of every provider: its decoder is picked per request.
type LiveStream = ChatStream<Wire, Box<dyn Decoder>>;

enum Sink {
    Stream(LiveStream),
    Collect(Completion<Box<dyn Decoder>>),
}

impl Sink {
    fn done_seen(&self) -> bool {
        match self {
            Sink::Stream(s) => s.decoder().done_seen(),
            Sink::Collect(c) => c.decoder().done_seen(),
        }
    }
}

/// Whom `limits.per_key` counts a request against: its API key's name, or the client
/// address when no keys are configured.
fn client_key(ctx: &Ctx, session: &Session) -> String {
    match (&ctx.key_name, session.client_addr()) {
        (Some(name), _) => format!("key:{name}"),
        (None, Some(addr)) => match addr.as_inet() {
            Some(a) => format!("addr:{}", a.ip()),
            None => format!("addr:{addr}"),
        },
        (None, None) => "anonymous".to_string(),
    }
}

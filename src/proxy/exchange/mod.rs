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
//! classification in `crate::provider::failure`), `relay` (commit and stream to the client).

mod attempt;
mod intake;
mod relay;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use log::debug;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;

use super::conns::Home;
use super::timeouts::{until, within};
use super::{respond, App, Ctx, Snapshot};
use crate::config::ModelEntry;
use crate::config::{ReasoningOutput, ThinkingBlocks};
use crate::core::error::ApiError;
use crate::core::Decoder;
use crate::core::ReasoningMode;
use crate::pipeline::complete::{Completion, CompletionResult};
use crate::pipeline::stream::ChatStream;
use crate::pipeline::tools::ToolSet;
use crate::provider::k2think::runtime::K2think;
use crate::provider::k2think::Payload;
use crate::provider::zai::runtime::ZaiRuntime;
use crate::provider::{Leftover, Provider};
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
    // Boxed: admission, intake and the attempts (the parsed request, the prompt, the
    // attempts' state) are freed once the answer is usable, instead of staying in this
    // future's state, which every open stream holds, for as long as the answer streams.
    let Some((job, answer, permit)) = Box::pin(begin(app, snap, session, ctx)).await else {
        return;
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

/// Everything up to a usable answer: admission, intake, the provider, the attempts. The
/// request's job, its answer (or why there is none) and its `limits.per_key` permit;
/// `None` when the request was answered already (refused, invalid) or its client left.
async fn begin<'a>(
    app: &'a App,
    snap: &'a Snapshot,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Option<(
    Job<'a>,
    Result<Answer, ApiError>,
    crate::proxy::fleet::Admission,
)> {
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
            respond::error(session, ctx, &err).await;
            return None;
        }
    }
    let who = client_key(ctx, session);
    let permit = match super::fleet::admit(app, snap, &who).await {
        Ok(p) => p,
        Err(err) => {
            ctx.outcome = if err.status == 429 {
                "rate_limited"
            } else {
                "overloaded"
            };
            respond::error(session, ctx, &err).await;
            return None;
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
            respond::error(session, ctx, &e).await;
            return None;
        }
    };
    if let Err(e) = hosted_tools(app, snap, ctx, &hosted) {
        drop(permit);
        respond::error(session, ctx, &e).await;
        return None;
    }
    let provider_name = snap.config.model_provider(model);
    let zai = match snap.config.provider_kind(provider_name) {
        Some("zai") => match app.zai_runtime(snap, provider_name) {
            Ok(rt) => Some(rt),
            Err(e) => {
                drop(permit);
                let e = ApiError::new(503, "server_error", "provider_unavailable", e);
                respond::error(session, ctx, &e).await;
                return None;
            }
        },
        _ => None,
    };
    let provider = match zai {
        Some(rt) => Serving::Zai(rt),
        None => Serving::K2think(app.k2think(snap)),
    };
    ctx.provider = Some(provider_name.to_string());
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
        payload,
        model,
        effort: req
            .reasoning_effort
            .or(snap.config.reasoning.effort)
            .map(|e| e.as_str()),
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
        provider,
        leftovers: std::sync::Mutex::new(Vec::new()),
    };
    // Waiting for the upstream can take long (prefill): a client that leaves meanwhile
    // ends the exchange at once, dropping the upstream connection.
    let limit = deadline.saturating_duration_since(tokio::time::Instant::now());
    let waited = {
        let exchange = std::pin::pin!(job.exchange(ctx));
        unless_client_leaves(session, limit, exchange).await
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
            // What the abandoned attempts left upstream goes all the same.
            job.clean_up().await;
            return None;
        }
    };
    Some((job, answer, permit))
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

/// One client request on its way upstream.
struct Job<'a> {
    app: &'a App,
    snap: &'a Snapshot,
    /// The upstream body as built at intake (K2Think's; see [`Ask::body`]).
    body: Bytes,
    /// The prompt as it goes upstream (turns with tool instructions, sampling, chat id).
    payload: Payload,
    model: &'a ModelEntry,
    effort: Option<&'static str>,
    /// The API the answer is written for.
    surface: Surface,
    reply: Reply,
    stream: bool,
    tools: Option<Arc<ToolSet>>,
    /// `limits.request_timeout` from the request's arrival.
    deadline: tokio::time::Instant,
    /// The provider serving the request's model.
    provider: Serving<'a>,
    /// What the attempts left upstream, removed after the answer (Z.AI's chats).
    leftovers: std::sync::Mutex<Vec<Leftover>>,
}

/// The provider serving a request, owned by its job (which outlives the step that picks it).
enum Serving<'a> {
    K2think(K2think<'a>),
    Zai(Arc<ZaiRuntime>),
}

impl<'a> std::ops::Deref for Serving<'a> {
    type Target = dyn Provider + 'a;

    fn deref(&self) -> &Self::Target {
        match self {
            Serving::K2think(k) => k,
            Serving::Zai(z) => &**z,
        }
    }
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
    /// The thread `up` was opened on (see [`crate::proxy::conns::Home`]).
    home: Home,
    /// Boxed: `HttpPeer` is 672 bytes, and every await of an attempt keeps it.
    peer: Box<HttpPeer>,
    stream: LiveStream,
    out: Vec<u8>,
    /// The upstream body already ended cleanly (the whole answer arrived before commit).
    ended: bool,
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

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

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use log::{debug, warn};
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::proxy::Session;
use pingora::upstreams::peer::Peer;
use pingora::ErrorType;

#[cfg(test)]
use super::failure::ceil_secs;
use super::failure::{pool_exhausted, Failure};
use super::zai::{Ask, Identity, NoIdentity, ZaiRuntime};
use super::{respond, routes, upstream, App, Ctx, Snapshot};
use crate::config::ModelEntry;
use crate::config::{
    EffortPlacement, HostedTools, PayloadStyle, ReasoningOutput, ThinkingBlocks, UpstreamMode,
};
use crate::core::error::ApiError;
use crate::core::events;
use crate::core::request::{Sampling, Turn};
use crate::core::Decoder;
use crate::core::ReasoningMode;
use crate::metrics::Metrics;
use crate::pipeline::complete::{Completion, CompletionResult};
use crate::pipeline::stream::ChatStream;
use crate::pipeline::tools::ToolSet;
use crate::pool::{Lease, LeaseError, Outcome};
use crate::provider::k2think;
use crate::provider::k2think::decode::{K2Decoder, UpstreamFormat};
use crate::provider::k2think::request::{to_k2think, RewriteOptions};
use crate::provider::k2think::{BodyStyle, KwargsPlacement, Payload};
use crate::secret::Secret;
use crate::surface::chat::files;
use crate::surface::chat::request::ChatRequest;
use crate::surface::responses::{Dialect, Hosted};
use crate::surface::{Parsed, Reply, Surface, Wire};

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
        k2think::estimate_input_tokens(&payload)
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

/// A request read, parsed (per its surface), checked and rewritten for K2Think.
struct Prepared<'s> {
    req: ChatRequest,
    /// Request fields the answer repeats (see [`Parsed::echo`]).
    echo: serde_json::Map<String, serde_json::Value>,
    /// See [`Parsed::dialect`].
    dialect: Dialect,
    /// See [`Parsed::hosted`].
    hosted: Vec<Hosted>,
    model: &'s ModelEntry,
    tools: Option<Arc<ToolSet>>,
    payload: Payload,
    /// See [`Parsed::thinking`].
    thinking: Option<bool>,
}

/// Read the body (bounded in size and time), parse it as the request's surface wants
/// (`count_tokens`: an Anthropic token count, which needs no `max_tokens`), check the
/// limits, resolve files and images, find the model and rewrite the request.
async fn prepare<'s>(
    snap: &'s Snapshot,
    session: &mut Session,
    ctx: &mut Ctx,
    count_tokens: bool,
) -> Result<Prepared<'s>, ApiError> {
    let body_timeout = snap.config.limits.client_body_timeout;
    let body = match tokio::time::timeout(body_timeout, read_body(snap, session, ctx)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            session.set_keepalive(None);
            return Err(ApiError::new(
                408,
                "invalid_request_error",
                "request_body_timeout",
                format!(
                    "The request body did not arrive within limits.client_body_timeout ({body_timeout:?})"
                ),
            ));
        }
    };
    let Parsed {
        mut req,
        echo,
        origin,
        thinking,
        mut dialect,
        hosted,
    } = ctx.surface.parse(&body, count_tokens)?;
    dialect.summary &= snap.config.responses.reasoning_summary;
    // The checks below see the converted request: `origin` names the client's own field.
    check_limits_and_files(snap, &mut req).map_err(|e| origin.error(e))?;
    ctx.model = Some(req.model.clone());
    let Some(model) = snap.model(&req.model) else {
        return Err(routes::model_not_found(snap, &req.model));
    };
    if !model.images {
        if let Some((i, j)) = files::first_image(&req) {
            return Err(origin.error(ApiError {
                param: Some(format!("messages[{i}].content[{j}]")),
                ..ApiError::new(
                    400,
                    "invalid_request_error",
                    "model_does_not_support_images",
                    format!(
                        "The model `{}` takes text only (models[].images is false for it); remove the image parts or use a model that takes images",
                        req.model
                    ),
                )
            }));
        }
    }
    let tools = ToolSet::from_request(req.tools.as_deref(), req.tool_choice.as_ref())
        .map_err(|(param, message)| origin.error(ApiError::invalid(message, Some(param))))?
        .map(Arc::new);
    let payload = upstream_payload(snap, model, &req, tools.as_deref());
    Ok(Prepared {
        req,
        echo,
        dialect,
        hosted,
        model,
        tools,
        payload,
        thinking,
    })
}

/// `responses.hosted_tools` for the tools of a Responses request that the emulation cannot
/// run: `refuse` answers 400 naming the first; `drop` leaves them out (the request was
/// parsed without them) with one warning naming their types, each counted in
/// `k2proxy_hosted_tools_dropped_total{type}`.
fn hosted_tools(app: &App, snap: &Snapshot, ctx: &Ctx, hosted: &[Hosted]) -> Result<(), ApiError> {
    let Some(first) = hosted.first() else {
        return Ok(());
    };
    match snap.config.responses.hosted_tools {
        HostedTools::Refuse => Err(first.refusal()),
        HostedTools::Drop => {
            let mut list = String::new();
            for h in hosted {
                app.metrics
                    .hosted_tools_dropped
                    .with_label_values(&[h.kind])
                    .inc();
                if !list.is_empty() {
                    list.push_str(", ");
                }
                list.push_str(&format!("{} ({})", h.kind, h.at));
            }
            warn!(
                "{}: dropped tools the emulation cannot run: {list} (responses.hosted_tools: drop)",
                ctx.request_id
            );
            Ok(())
        }
    }
}

/// `limits.max_messages`, and the files and `data:` images of a parsed request inlined or
/// checked; errors name the converted request's fields.
fn check_limits_and_files(snap: &Snapshot, req: &mut ChatRequest) -> Result<(), ApiError> {
    let limits = &snap.config.limits;
    if req.messages.len() > limits.max_messages {
        return Err(ApiError::invalid(
            format!(
                "Too many messages: {} (the limit is {}, limits.max_messages)",
                req.messages.len(),
                limits.max_messages
            ),
            Some("messages".to_string()),
        ));
    }
    let file_limits = files::Limits {
        max_file_bytes: limits.max_file_bytes.0 as usize,
        max_image_bytes: limits.max_image_bytes.0 as usize,
    };
    files::resolve(req, file_limits).map_err(|e| ApiError {
        param: Some(e.param),
        ..ApiError::new(e.status, "invalid_request_error", e.code, e.message)
    })
}

/// The upstream body for a parsed request to `model`, as the config says to build it
/// (also used by `k2proxy probe`, so it checks exactly what requests send).
pub(super) fn upstream_payload(
    snap: &Snapshot,
    model: &ModelEntry,
    req: &ChatRequest,
    tools: Option<&ToolSet>,
) -> Payload {
    let up_cfg = &snap.config.upstream;
    to_k2think(
        req,
        RewriteOptions {
            upstream_model: &model.upstream,
            stream: up_cfg.stream,
            style: match up_cfg.payload {
                PayloadStyle::Minimal => BodyStyle::Minimal,
                PayloadStyle::Webui => BodyStyle::Webui,
            },
            tools,
            template: snap.config.tools.prompt_template.as_deref(),
            thinking_field: crate::provider::k2think::thinking_field(&up_cfg.thinking_field),
            default_effort: snap.config.reasoning.effort,
            effort_placement: match snap.config.reasoning.effort_placement {
                EffortPlacement::ExtraBody => KwargsPlacement::ExtraBody,
                EffortPlacement::TopLevel => KwargsPlacement::TopLevel,
            },
        },
    )
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as K2Think would get them (tool
/// instructions included), estimated, since K2Think's tokenizer is not public.
pub async fn count_tokens(snap: &Snapshot, session: &mut Session, ctx: &mut Ctx) {
    match prepare(snap, session, ctx, true).await {
        Ok(p) => {
            let body =
                serde_json::json!({"input_tokens": k2think::estimate_input_tokens(&p.payload)});
            ctx.outcome = "complete";
            let _ = respond::json(session, ctx, 200, body.to_string().into_bytes(), &[]).await;
        }
        Err(e) => respond::error(session, ctx, &e).await,
    }
}

/// Read the whole request body, refusing more than `limits.max_body_bytes`.
async fn read_body(
    snap: &Snapshot,
    session: &mut Session,
    ctx: &mut Ctx,
) -> Result<Bytes, ApiError> {
    let limit = snap.config.limits.max_body_bytes.0 as usize;
    let too_large = || {
        ApiError::new(
            413,
            "invalid_request_error",
            "request_too_large",
            format!("The request body is larger than the limit of {limit} bytes"),
        )
    };
    let headers = &session.req_header().headers;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let expect_continue = headers
        .get("expect")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if declared.is_some_and(|n| n > limit as u64) {
        // Do not read (or drain) what we refuse: close the connection after answering.
        session.set_keepalive(None);
        return Err(too_large());
    }
    if expect_continue {
        let _ = session.write_continue_response().await;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit as u64) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    session.set_keepalive(None);
                    return Err(too_large());
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                session.set_keepalive(None);
                return Err(ApiError::invalid(
                    format!("could not read the request body: {}", e.etype().as_str()),
                    None,
                ));
            }
        }
    }
    ctx.bytes_in = buf.len();
    Ok(buf.freeze())
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

impl Job<'_> {
    fn new_sink(&self, format: UpstreamFormat) -> Sink {
        let decoder: Box<dyn Decoder> = match &self.route {
            Route::K2think => Box::new(
                K2Decoder::new(format, self.snap.config.reasoning.implicit_think)
                    .with_delivery(self.snap.config.upstream.content_delivery),
            ),
            Route::Zai(_) => Box::new(crate::provider::zai::decode::ZaiDecoder::new()),
        };
        if self.stream {
            let wire = self.surface.encoder(&self.reply);
            Sink::Stream(ChatStream::with_decoder(wire, decoder, self.tools.as_ref()))
        } else {
            Sink::Collect(Completion::with_decoder(decoder).with_tools(self.tools.clone()))
        }
    }

    /// A 200 whose body carried an error or nothing usable: the provider's reading of it.
    fn body_failure(&self, decoder: &dyn Decoder, message: String) -> Failure {
        match &self.route {
            Route::Zai(z) => super::zai::inline_failure(&z.rt, decoder.error_code(), message),
            Route::K2think => Failure::Unusable(message),
        }
    }

    /// The upstream timeouts of this request's provider.
    fn timing(&self) -> Timing {
        match &self.route {
            Route::K2think => {
                let u = &self.snap.config.upstream;
                Timing {
                    connect_timeout: u.connect_timeout,
                    header_timeout: u.header_timeout,
                    idle_timeout: u.idle_timeout,
                    keepalive: u.keepalive,
                }
            }
            Route::Zai(z) => {
                let s = &z.rt.section;
                Timing {
                    connect_timeout: s.connect_timeout,
                    header_timeout: s.header_timeout,
                    idle_timeout: s.idle_timeout,
                    keepalive: Duration::from_secs(60),
                }
            }
        }
    }

    /// The attempt loop: a usable answer, or the error the client gets.
    async fn exchange(&self, ctx: &mut Ctx) -> Result<Answer, ApiError> {
        let cfg = &self.snap.config;
        let user_mode = self.snap.mode == UpstreamMode::User;
        let pool = &self.app.pool;
        let mut tried: Vec<u64> = Vec::new();
        let mut last: Option<Failure> = None;
        let max_attempts = match &self.route {
            Route::K2think => cfg.retry.max_attempts,
            Route::Zai(z) => z.rt.section.max_attempts,
        };
        for attempt in 0..max_attempts {
            let who = match &self.route {
                Route::K2think if user_mode => match pool.lease(&tried, Instant::now()) {
                    Ok(l) => Who::K2think(Some(l)),
                    Err(LeaseError::Empty) => {
                        return Err(ApiError::new(
                            503,
                            "server_error",
                            "no_upstream_tokens",
                            "No upstream token is configured (pool.tokens / pool.tokens_file)"
                                .to_string(),
                        ))
                    }
                    Err(LeaseError::AllTried) => break,
                    Err(LeaseError::Exhausted { retry_after }) => {
                        if last.is_some() {
                            break;
                        }
                        return Err(pool_exhausted(retry_after));
                    }
                },
                Route::K2think => {
                    if attempt > 0 && !cfg.retry.backoff.is_zero() {
                        tokio::time::sleep(cfg.retry.backoff).await;
                    }
                    Who::K2think(None)
                }
                Route::Zai(z) => match z.rt.identity(self.app, &tried).await {
                    Ok(i) => Who::Zai(i),
                    Err(NoIdentity::AllTried) => break,
                    Err(NoIdentity::Exhausted(retry_after)) => {
                        if last.is_some() {
                            break;
                        }
                        return Err(pool_exhausted(retry_after));
                    }
                    Err(NoIdentity::Guest(e)) => {
                        warn!("{}: {}: {e}", ctx.request_id, z.rt.name);
                        last = Some(Failure::Network(e));
                        continue;
                    }
                },
            };
            if let Some(id) = who.id() {
                tried.push(id);
            }
            ctx.attempts += 1;
            if attempt > 0 {
                self.app.metrics.retries.inc();
            }
            let started = Instant::now();
            let result = self.attempt(&who, ctx).await;
            let elapsed = started.elapsed();
            let label = match &result {
                Ok(_) => "200".to_string(),
                Err(f) => f.label(),
            };
            self.app
                .metrics
                .upstream_attempts
                .with_label_values(&[label.as_str()])
                .inc();
            if let Some(p) = ctx.provider.as_deref() {
                self.app
                    .metrics
                    .provider_attempts
                    .with_label_values(&[p, label.as_str()])
                    .inc();
            }
            match result {
                Ok(answer) => {
                    self.report(&who, &Outcome::Success);
                    ctx.token = who.token().map(Secret::masked);
                    return Ok(answer);
                }
                Err(f) => {
                    let token = who.token().map(Secret::masked);
                    warn!(
                        "{}: attempt {} (token {}) failed after {:.0}ms: {}",
                        ctx.request_id,
                        attempt + 1,
                        token.as_deref().unwrap_or("-"),
                        elapsed.as_secs_f64() * 1e3,
                        f.describe()
                    );
                    self.report(&who, &f.outcome());
                    let retry = f.retryable(&cfg.retry.on_status);
                    last = Some(f);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(self.final_error(last))
    }

    /// Tell the provider's pool how an attempt went.
    fn report(&self, who: &Who, outcome: &Outcome) {
        match (who, &self.route) {
            (Who::K2think(Some(l)), _) => {
                self.app
                    .request_refresh(self.app.pool.report(l.id, outcome, Instant::now()));
            }
            (Who::Zai(i), Route::Zai(z)) => z.rt.report(i, outcome),
            _ => {}
        }
    }

    /// Delete the upstream chats this request created (Z.AI's `cleanup: delete`).
    async fn clean_up(&self) {
        let Route::Zai(z) = &self.route else { return };
        let chats = std::mem::take(&mut *self.cleanup.lock().unwrap_or_else(|p| p.into_inner()));
        for (token, chat) in chats {
            z.rt.delete_chat(self.app, &token, &chat).await;
        }
    }

    /// The client's error once no attempt succeeded.
    fn final_error(&self, last: Option<Failure>) -> ApiError {
        let Some(f) = last else {
            return pool_exhausted(None);
        };
        let up = match &self.route {
            Route::K2think => "K2Think",
            Route::Zai(_) => "Z.AI",
        };
        let pool_wait = || match self.app.pool.lease(&[], Instant::now()) {
            Err(LeaseError::Exhausted { retry_after }) => retry_after,
            _ => None,
        };
        f.client_error(up, pool_wait)
    }

    /// One attempt, up to a usable answer.
    async fn attempt(&self, who: &Who, ctx: &mut Ctx) -> Result<Answer, Failure> {
        let snap = self.snap;
        let up_cfg = self.timing();
        let connector = &self.app.connector;
        let (peer, req, body) = match (&self.route, who) {
            (Route::Zai(z), Who::Zai(id)) => {
                let rt = &z.rt;
                let addr = self
                    .app
                    .resolver
                    .resolve(&rt.target.host, rt.target.port)
                    .await
                    .map_err(Failure::Network)?;
                let peer = Box::new(rt.peer(addr));
                let ask = Ask {
                    upstream_model: &z.upstream_model,
                    model: &z.model,
                    turns: &z.turns,
                    sampling: &z.sampling,
                    thinking: z.thinking,
                    effort: z.effort,
                };
                let call = rt
                    .call(self.app, id, &ask)
                    .await
                    .map_err(|e| super::zai::prepare_failure(rt, e))?;
                if let Some(chat) = call.created_chat {
                    if rt.section.cleanup == crate::config::providers::ChatCleanup::Delete {
                        self.cleanup
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id.token.clone(), chat));
                    }
                }
                (peer, Box::new(call.header), call.body)
            }
            (_, who) => {
                let addr = self
                    .app
                    .resolver
                    .resolve(&snap.target.host, snap.target.port)
                    .await
                    .map_err(Failure::Network)?;
                let peer = Box::new(upstream::peer(snap, addr));
                let req = upstream::request_header(
                    snap,
                    who.token(),
                    &self.chat_id,
                    self.body.len(),
                    snap.config.upstream.stream,
                )
                .map(Box::new)
                .map_err(|e| Failure::Network(format!("cannot build the request: {e}")))?;
                (peer, req, self.body.clone())
            }
        };
        let deadline = tokio::time::Instant::now() + up_cfg.header_timeout;

        // A pooled connection may have been closed by the upstream meanwhile: if sending on
        // a reused one fails before any response, try once more on a fresh connection.
        let mut up = loop {
            let idle = self
                .app
                .idle
                .take(peer.reuse_hash(), up_cfg.keepalive)
                .map(|s| HttpSession::H1(Http1Session::new_with_options(s, &*peer)));
            let (mut up, reused) = match idle {
                Some(up) => (up, true),
                // Boxed: Pingora's connect future is the largest part of an attempt's
                // state (~9 KB), and a reused connection does not need it.
                None => Box::pin(connector.get_http_session(&*peer))
                    .await
                    .map_err(|e| connect_failure(&e))?,
            };
            up.set_read_timeout(Some(up_cfg.header_timeout));
            up.set_write_timeout(Some(up_cfg.connect_timeout.max(Duration::from_secs(30))));
            let sent = tokio::time::timeout_at(deadline, async {
                up.write_request_header(req.clone()).await?;
                up.write_request_body(body.clone(), true).await?;
                up.finish_request_body().await?;
                up.read_response_header().await
            })
            .await;
            match sent {
                Err(_) => return Err(Failure::Timeout("the response head")),
                Ok(Ok(())) => break up,
                Ok(Err(e)) if reused => {
                    debug!(
                        "{}: reused upstream connection failed ({e}); reconnecting",
                        ctx.request_id
                    );
                    continue;
                }
                Ok(Err(e)) => {
                    return Err(if is_timeout(e.etype()) {
                        Failure::Timeout("the response head")
                    } else {
                        Failure::Network(format!(
                            "upstream connection failed: {}",
                            e.etype().as_str()
                        ))
                    })
                }
            }
        };

        let head = up
            .response_header()
            .ok_or_else(|| Failure::Network("no response head".to_string()))?;
        let status = head.status.as_u16();
        let content_type = head
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !(200..300).contains(&status) {
            let retry_after = head
                .headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after);
            let body = read_error_body(&mut up).await;
            if let Route::Zai(z) = &self.route {
                return Err(super::zai::status_failure(
                    &z.rt,
                    status,
                    retry_after,
                    &content_type,
                    &body,
                ));
            }
            let detail = crate::provider::k2think::error_detail(&content_type, &body)
                .map(|d| d.chars().take(500).collect())
                .unwrap_or_default();
            return Err(Failure::Status {
                status,
                retry_after,
                detail,
            });
        }
        if content_type.contains("text/html") {
            return Err(Failure::Unusable(
                "an HTML page instead of an answer (bot check or outage page)".to_string(),
            ));
        }

        // Read until the answer is known to be usable.
        let mut seen = 0usize;
        let mut sse = false;
        let mut sink: Option<Sink> = None;
        let mut out = Vec::with_capacity(1024);
        loop {
            let done = sink.as_ref().is_some_and(Sink::done_seen);
            let now = tokio::time::Instant::now();
            let wait = if done {
                now + AFTER_DONE_WAIT
            } else if sink
                .as_ref()
                .is_some_and(|s| matches!(s, Sink::Collect(_)) && seen > 0)
            {
                now + up_cfg.idle_timeout
            } else {
                deadline
            };
            let chunk = match tokio::time::timeout_at(wait, up.read_response_body()).await {
                // The answer is complete; the upstream just did not close the body.
                Err(_) | Ok(Err(_)) if done => None,
                Err(_) => return Err(Failure::Timeout("the answer")),
                Ok(Err(e)) => {
                    return Err(Failure::Cut(format!(
                        "upstream connection lost before the answer completed: {}",
                        e.etype().as_str()
                    )))
                }
                Ok(Ok(c)) => c,
            };
            let Some(chunk) = chunk else {
                // The body ended: the whole answer is here.
                let Some(sink) = sink else {
                    return Err(Failure::Unusable("an empty body".to_string()));
                };
                return match sink {
                    Sink::Collect(mut c) => {
                        let result = match c.finish() {
                            Ok(r) => r,
                            Err(e) => return Err(self.body_failure(c.decoder(), e)),
                        };
                        release(self.app, up, &peer, up_cfg.keepalive).await;
                        Ok(Answer::Complete(result, c.malformed_tool_blocks()))
                    }
                    Sink::Stream(mut stream) => {
                        if let Err(e) = stream.finish(&mut out) {
                            return Err(self.body_failure(stream.decoder(), e));
                        }
                        Ok(Answer::Stream(Box::new(Live {
                            up,
                            peer,
                            stream,
                            out,
                            ended: true,
                        })))
                    }
                };
            };
            if chunk.is_empty() {
                continue;
            }
            if sink.is_none() {
                let format = detect_format(&content_type, &chunk)?;
                sse = format == UpstreamFormat::Sse;
                let mut s = self.new_sink(format);
                if let Sink::Stream(st) = &mut s {
                    st.start(&mut out);
                }
                sink = Some(s);
            }
            seen += chunk.len();
            match sink.as_mut() {
                Some(Sink::Stream(st)) => {
                    st.push(&chunk, &mut out);
                    if st.decoder().usable() {
                        break;
                    }
                    if let Some(e) = st.upstream_error() {
                        return Err(self.body_failure(st.decoder(), format!("an error event: {e}")));
                    }
                }
                Some(Sink::Collect(c)) => c.push(&chunk),
                None => {}
            }
            // A JSON answer is decoded at its end; an event stream must prove itself early.
            if sse && seen > PRECOMMIT_LIMIT && matches!(sink, Some(Sink::Stream(_))) {
                return Err(Failure::Unusable(
                    "more than 1 MiB without a single usable event".to_string(),
                ));
            }
        }
        match sink {
            Some(Sink::Stream(stream)) => Ok(Answer::Stream(Box::new(Live {
                up,
                peer,
                stream,
                out,
                ended: false,
            }))),
            _ => Err(Failure::Unusable("no answer".to_string())),
        }
    }

    /// Commit and relay a streaming answer chunk by chunk.
    /// Relay the answer. `permit` (the request's `limits.per_key` slot) is given back before
    /// the last bytes go out, so a client that sends its next request the moment this one
    /// ends is never refused for it.
    async fn stream(
        &self,
        mut live: Box<Live>,
        session: &mut Session,
        ctx: &mut Ctx,
        permit: crate::limits::Permit,
    ) {
        // `live` stays boxed: taking it apart would copy its parts into this future's
        // state, which every open stream holds.
        let ended = live.ended;
        let idle = self.timing().idle_timeout;
        let head = match sse_head(ctx) {
            Ok(h) => h,
            Err(e) => {
                warn!("{}: cannot build the response head: {e}", ctx.request_id);
                return;
            }
        };
        ctx.status = 200;
        ctx.streamed = true;
        if let Err(e) = session.write_response_header(Box::new(head), false).await {
            debug!("{}: client went away before the head: {e}", ctx.request_id);
            ctx.outcome = "client_abort";
            return;
        }
        let mut first = true;
        let mut clean_end = ended;
        let mut failed = false;
        if !ended {
            loop {
                if !live.out.is_empty() {
                    if first && live.stream.output_started() {
                        ctx.ttft = Some(ctx.started.elapsed());
                        first = false;
                    }
                    if !self.write(session, ctx, &mut live.out).await {
                        return;
                    }
                }
                let wait = if live.stream.decoder().done_seen() {
                    AFTER_DONE_WAIT
                } else {
                    idle
                }
                .min(
                    self.deadline
                        .saturating_duration_since(tokio::time::Instant::now()),
                );
                let waited = {
                    let read = std::pin::pin!(read_into(&mut live.up, |b| live
                        .stream
                        .push(b, &mut live.out)));
                    unless_client_leaves(session, wait, read).await
                };
                let mut step = match waited {
                    Ok(Some(r)) => Step::from(r),
                    Ok(None) => Step::Stalled,
                    // Dropping `up` on return closes the upstream connection.
                    Err(gone) => {
                        debug!("{}: client went away mid-stream: {gone}", ctx.request_id);
                        ctx.outcome = "client_abort";
                        return;
                    }
                };
                // What the upstream already delivered goes out in the same write: one
                // syscall for a burst of events instead of one per event, and no waiting.
                while matches!(step, Step::More) && live.out.len() < WRITE_BATCH {
                    match ready_now(read_into(&mut live.up, |b| {
                        live.stream.push(b, &mut live.out)
                    }))
                    .await
                    {
                        Some(r) => step = Step::from(r),
                        None => break,
                    }
                }
                match step {
                    Step::More => {}
                    Step::End => {
                        clean_end = true;
                        break;
                    }
                    // The answer is complete; the upstream just did not close the body.
                    Step::Lost(_) | Step::Stalled if live.stream.decoder().done_seen() => {
                        clean_end = true;
                        break;
                    }
                    Step::Lost(e) => {
                        warn!(
                            "{}: upstream failed mid-stream: {}",
                            ctx.request_id,
                            e.etype().as_str()
                        );
                        live.stream.fail(
                            events::UPSTREAM_STREAM_ERROR,
                            "The upstream connection was lost mid-stream; the answer is incomplete",
                            &mut live.out,
                        );
                        failed = true;
                        break;
                    }
                    Step::Stalled if tokio::time::Instant::now() >= self.deadline => {
                        let limit = self.snap.config.limits.request_timeout.as_secs();
                        warn!(
                            "{}: request exceeded limits.request_timeout",
                            ctx.request_id
                        );
                        live.stream.fail(
                            events::REQUEST_TIMEOUT,
                            &format!(
                                "The request exceeded limits.request_timeout ({limit}s); the answer is incomplete"
                            ),
                            &mut live.out,
                        );
                        failed = true;
                        break;
                    }
                    Step::Stalled => {
                        warn!(
                            "{}: upstream stalled for {idle:?} mid-stream",
                            ctx.request_id
                        );
                        live.stream.fail(
                            events::UPSTREAM_TIMEOUT,
                            &format!(
                                "The upstream sent nothing for {idle:?} (upstream.idle_timeout); the answer is incomplete"
                            ),
                            &mut live.out,
                        );
                        failed = true;
                        break;
                    }
                }
            }
            if clean_end && live.stream.finish(&mut live.out).is_err() {
                failed = true;
            }
        }
        if first && live.stream.output_started() {
            ctx.ttft = Some(ctx.started.elapsed());
        }
        ctx.outcome = if failed { "upstream_error" } else { "complete" };
        ctx.tool_calls = live.stream.tool_calls_emitted();
        ctx.tool_malformed = live.stream.malformed_tool_blocks();
        if failed {
            ctx.error = live
                .stream
                .upstream_error()
                .map(str::to_string)
                .or(Some("upstream failed mid-stream".into()));
        }
        drop(permit);
        if !self.write(session, ctx, &mut live.out).await {
            return;
        }
        let end = tokio::time::timeout_at(self.deadline, session.write_response_body(None, true));
        if let Ok(Err(e)) | Err(e) = end.await.map_err(|_| too_slow(ctx)) {
            debug!("{}: could not end the response: {e}", ctx.request_id);
            ctx.outcome = "client_abort";
        }
        if clean_end && !failed {
            let Live { up, peer, .. } = *live;
            release(self.app, up, &peer, self.timing().keepalive).await;
        }
    }
}

impl Job<'_> {
    /// [`write`], within `limits.request_timeout`: a client that reads, but too slowly for
    /// the answer to end in time (an HTTP/2 window opened a byte at a time), is cut off
    /// like one that stopped reading.
    async fn write(&self, session: &mut Session, ctx: &mut Ctx, out: &mut Vec<u8>) -> bool {
        let metrics = &self.app.metrics;
        match tokio::time::timeout_at(self.deadline, write(session, ctx, metrics, out)).await {
            Ok(written) => written,
            Err(_) => {
                too_slow(ctx);
                false
            }
        }
    }
}

/// Mark a request whose client did not take its answer within `limits.request_timeout`.
fn too_slow(ctx: &mut Ctx) -> pingora::BError {
    debug!(
        "{}: the client did not read the answer within limits.request_timeout",
        ctx.request_id
    );
    ctx.outcome = "client_abort";
    ctx.error = Some("the client did not read the answer within limits.request_timeout".into());
    pingora::Error::explain(
        ErrorType::WriteTimedout,
        "the client did not read the answer within limits.request_timeout",
    )
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

/// One read of the upstream body while streaming.
enum Step {
    /// A piece arrived (and was transformed).
    More,
    /// The body ended.
    End,
    /// The connection failed.
    Lost(Box<pingora::Error>),
    /// Nothing arrived within the idle timeout.
    Stalled,
}

impl From<pingora::Result<bool>> for Step {
    fn from(r: pingora::Result<bool>) -> Step {
        match r {
            Ok(true) => Step::More,
            Ok(false) => Step::End,
            Err(e) => Step::Lost(e),
        }
    }
}

/// Read the next piece of the upstream body and hand it to `f` (on HTTP/1 straight from
/// Pingora's buffer, without a copy). `Ok(false)` at the end of the body.
async fn read_into(up: &mut HttpSession, f: impl FnOnce(&[u8])) -> pingora::Result<bool> {
    let piece = match up {
        HttpSession::H1(h1) => h1.read_body_ref().await?.map(f),
        other => other.read_response_body().await?.map(|b| f(&b)),
    };
    Ok(piece.is_some())
}

/// Wait up to `limit` for `fut`: `Ok(Some(output))`, `Ok(None)` when `limit` passed first,
/// or `Err` when the client went away meanwhile (`fut` is then dropped). The client is
/// watched only after [`WATCH_CLIENT_AFTER`], so a wait that ends sooner costs one timer,
/// as a plain timeout would.
///
/// `fut` is pinned by the caller: taken by value, it would be stored twice in this
/// function's state (the argument and the pinned copy), and this function's state is part
/// of every waiting request's.
async fn unless_client_leaves<F: Future>(
    session: &mut Session,
    limit: Duration,
    mut fut: std::pin::Pin<&mut F>,
) -> Result<Option<F::Output>, pingora::Error> {
    let short = limit.min(WATCH_CLIENT_AFTER);
    match tokio::time::timeout(short, &mut fut).await {
        Ok(v) => return Ok(Some(v)),
        Err(_) if short == limit => return Ok(None),
        Err(_) => {}
    }
    tokio::select! {
        biased;
        r = tokio::time::timeout(limit - short, &mut fut) => Ok(r.ok()),
        gone = client_gone(session) => Err(gone),
    }
}

/// Resolves when the client has gone away (reset its connection, or an HTTP/2 stream
/// reset) while the proxy is waiting on the upstream; pending otherwise. A client that only
/// half-closed (FIN after its request) still gets its answer (`apply_session_limits`); one
/// that closed for good is found by the next write. Only for use once the request body has
/// been read.
async fn client_gone(session: &mut Session) -> pingora::Error {
    match session.read_body_or_idle(true).await {
        Err(e) => *e,
        Ok(_) => std::future::pending().await,
    }
}

/// Poll `fut` once, in the calling task's context: its output when it is ready right now,
/// `None` (dropping it) otherwise. Pingora's body reads are cancel-safe: a read that is not
/// ready has consumed nothing.
async fn ready_now<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        Poll::Ready(match fut.as_mut().poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// Write and clear `out` (keeping its capacity for the next batch); false when the client
/// is gone.
async fn write(session: &mut Session, ctx: &mut Ctx, metrics: &Metrics, out: &mut Vec<u8>) -> bool {
    if out.is_empty() {
        return true;
    }
    let bytes = Bytes::copy_from_slice(out);
    out.clear();
    ctx.bytes_out += bytes.len();
    let now = Instant::now();
    if let Some(last) = ctx.last_write.replace(now) {
        metrics.chunk_gap.observe((now - last).as_secs_f64());
    }
    match session.write_response_body(Some(bytes), false).await {
        Ok(()) => true,
        Err(e) => {
            debug!("{}: client went away mid-stream: {e}", ctx.request_id);
            ctx.outcome = "client_abort";
            false
        }
    }
}

fn sse_head(ctx: &Ctx) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(6))?;
    h.insert_header("content-type", "text/event-stream; charset=utf-8")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("x-accel-buffering", "no")?;
    h.insert_header("transfer-encoding", "chunked")?;
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    Ok(h)
}

/// Give a finished upstream connection back for reuse: HTTP/1 to our idle list, HTTP/2 to
/// Pingora's connector.
///
/// Boxed: this runs once, at the end of a request, but its state (~4 KB, mostly Pingora's
/// `release_http_session`) would otherwise be part of the attempt's and the stream's state
/// for the whole of every request.
fn release<'a>(
    app: &'a App,
    mut up: HttpSession,
    peer: &'a HttpPeer,
    keepalive: Duration,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        if !up.response_done() {
            return;
        }
        match up {
            HttpSession::H1(mut h1) => {
                h1.respect_keepalive();
                if let Some(stream) = h1.reuse().await {
                    app.idle.put(peer.reuse_hash(), stream);
                }
            }
            other => {
                app.connector
                    .release_http_session(other, peer, Some(keepalive))
                    .await
            }
        }
    })
}

/// SSE or a JSON answer, from the content type or, when that says neither, the first byte.
fn detect_format(content_type: &str, first: &[u8]) -> Result<UpstreamFormat, Failure> {
    let lead = first.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if lead == Some(b'<') {
        return Err(Failure::Unusable("markup instead of an answer".to_string()));
    }
    if content_type.contains("event-stream") {
        return Ok(UpstreamFormat::Sse);
    }
    if content_type.contains("json") || lead == Some(b'{') {
        return Ok(UpstreamFormat::Json);
    }
    Ok(UpstreamFormat::Sse)
}

fn connect_failure(e: &pingora::Error) -> Failure {
    if is_timeout(e.etype()) {
        Failure::Timeout("the connection")
    } else {
        Failure::Network(format!(
            "cannot connect to the upstream: {}",
            e.etype().as_str()
        ))
    }
}

fn is_timeout(t: &ErrorType) -> bool {
    matches!(
        t,
        ErrorType::ConnectTimedout
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::ReadTimedout
            | ErrorType::WriteTimedout
    )
}

/// The start of a failed attempt's error body (up to [`ERROR_BODY_LIMIT`] bytes, read for
/// at most 2 s), for the provider to explain.
async fn read_error_body(up: &mut HttpSession) -> Vec<u8> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        while buf.len() < ERROR_BODY_LIMIT {
            match up.read_response_body().await {
                Ok(Some(c)) => buf.extend_from_slice(&c),
                _ => break,
            }
        }
    })
    .await;
    let _ = read;
    buf
}

/// `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(
            d <= Duration::from_secs(120) && d >= Duration::from_secs(118),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(ceil_secs(Duration::from_millis(1500)), 2);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
    }

    #[test]
    fn format_detection() {
        assert!(matches!(
            detect_format("text/event-stream", b"data: {}"),
            Ok(UpstreamFormat::Sse)
        ));
        assert!(matches!(
            detect_format("application/json", b"{}"),
            Ok(UpstreamFormat::Json)
        ));
        assert!(matches!(
            detect_format("", b"  {\"a\":1}"),
            Ok(UpstreamFormat::Json)
        ));
        assert!(matches!(
            detect_format("text/plain", b"data: x"),
            Ok(UpstreamFormat::Sse)
        ));
        assert!(detect_format("text/event-stream", b"<!DOCTYPE html>").is_err());
    }
}

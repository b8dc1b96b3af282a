//! Relay: commit the head, then transform and write the upstream's answer chunk by chunk,
//! batching what already arrived, and end honestly (an error end when the upstream breaks,
//! stalls or the request runs out of time).

use std::future::Future;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{debug, warn};
use pingora::http::ResponseHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::proxy::Session;
use pingora::ErrorType;

use super::super::Ctx;
use crate::core::events;
use crate::core::Decoder;
use crate::metrics::Metrics;

use super::attempt::release;
use super::*;

impl Job<'_> {
    /// Commit and relay a streaming answer chunk by chunk. `permit` (the request's `limits.per_key` slot) is given back before
    /// the last bytes go out, so a client that sends its next request the moment this one
    /// ends is never refused for it.
    pub(super) async fn stream(
        &self,
        mut live: Box<Live>,
        session: &mut Session,
        ctx: &mut Ctx,
        permit: crate::proxy::fleet::Admission,
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
        // What the upstream delivered with the first event is transformed now, so that it
        // leaves in the first write; when that was the whole answer, the head, the answer
        // and the end leave in one write.
        let mut early = if ended {
            None
        } else {
            ready_batch(&mut live)
                .await
                .filter(|step| !matches!(step, Step::More))
        };
        // The head leaves with the first bytes when they are ready (one write, not two).
        let first_ready = !live.out.is_empty();
        hold_flushes(session, first_ready);
        let wrote = session.write_response_header(Box::new(head), false).await;
        hold_flushes(session, false);
        if let Err(e) = wrote {
            debug!("{}: client went away before the head: {e}", ctx.request_id);
            ctx.outcome = "client_abort";
            return;
        }
        let mut first = true;
        let mut clean_end = ended;
        let mut failed = false;
        if !ended {
            loop {
                // A complete answer already decoded waits for the end, to leave with it.
                let complete = matches!(early, Some(Step::End));
                if !live.out.is_empty() && !complete {
                    if first && live.stream.output_started() {
                        ctx.ttft = Some(ctx.started.elapsed());
                        first = false;
                    }
                    if !self.write(session, ctx, &mut live.out).await {
                        return;
                    }
                }
                let step = if let Some(step) = early.take() {
                    step
                } else {
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
                    let step = match waited {
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
                    // syscall for a burst of events instead of one per event, and no
                    // waiting.
                    match step {
                        Step::More => ready_batch(&mut live).await.unwrap_or(Step::More),
                        other => other,
                    }
                };
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
        // The last bytes leave with the body's end (one write, not two).
        hold_flushes(session, !live.out.is_empty());
        let wrote = self.write(session, ctx, &mut live.out).await;
        hold_flushes(session, false);
        if !wrote {
            return;
        }
        let end = until(self.deadline, session.write_response_body(None, true));
        if let Ok(Err(e)) | Err(e) = end.await.map_err(|_| too_slow(ctx)) {
            debug!("{}: could not end the response: {e}", ctx.request_id);
            ctx.outcome = "client_abort";
        }
        if clean_end && !failed {
            let Live { up, peer, home, .. } = *live;
            release(self.app, up, &peer, self.timing().keepalive, home).await;
        }
    }
}

impl Job<'_> {
    /// [`write`], within `limits.request_timeout`: a client that reads, but too slowly for
    /// the answer to end in time (an HTTP/2 window opened a byte at a time), is cut off
    /// like one that stopped reading.
    pub(super) async fn write(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        out: &mut Vec<u8>,
    ) -> bool {
        let metrics = &self.app.metrics;
        match until(self.deadline, write(session, ctx, metrics, out)).await {
            Ok(written) => written,
            Err(_) => {
                too_slow(ctx);
                false
            }
        }
    }
}

/// Mark a request whose client did not take its answer within `limits.request_timeout`.
pub(super) fn too_slow(ctx: &mut Ctx) -> pingora::BError {
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

/// One read of the upstream body while streaming.
pub(super) enum Step {
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
pub(super) async fn read_into(
    up: &mut HttpSession,
    f: impl FnOnce(&[u8]),
) -> pingora::Result<bool> {
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
pub(super) async fn unless_client_leaves<F: Future>(
    session: &mut Session,
    limit: Duration,
    mut fut: std::pin::Pin<&mut F>,
) -> Result<Option<F::Output>, pingora::Error> {
    let short = limit.min(WATCH_CLIENT_AFTER);
    match within(short, &mut fut).await {
        Ok(v) => return Ok(Some(v)),
        Err(_) if short == limit => return Ok(None),
        Err(_) => {}
    }
    tokio::select! {
        biased;
        r = within(limit - short, &mut fut) => Ok(r.ok()),
        gone = client_gone(session) => Err(gone),
    }
}

/// Resolves when the client has gone away (reset its connection, or an HTTP/2 stream
/// reset) while the proxy is waiting on the upstream; pending otherwise. A client that only
/// half-closed (FIN after its request) still gets its answer (`apply_session_limits`); one
/// that closed for good is found by the next write. Only for use once the request body has
/// been read.
pub(super) async fn client_gone(session: &mut Session) -> pingora::Error {
    match session.read_body_or_idle(true).await {
        Err(e) => *e,
        Ok(_) => std::future::pending().await,
    }
}

/// Transform what the upstream has already delivered, without waiting, up to
/// [`WRITE_BATCH`] bytes of output: the last step taken (`More` when it stopped for want of
/// data or room), or `None` when nothing was ready.
async fn ready_batch(live: &mut Live) -> Option<Step> {
    let mut last = None;
    while live.out.len() < WRITE_BATCH {
        let Live {
            up, stream, out, ..
        } = live;
        match ready_now(read_into(up, |b| stream.push(b, out))).await {
            Some(r) => {
                let step = Step::from(r);
                let more = matches!(step, Step::More);
                last = Some(step);
                if !more {
                    break;
                }
            }
            None => break,
        }
    }
    last
}

/// Poll `fut` once, in the calling task's context: its output when it is ready right now,
/// `None` (dropping it) otherwise. Pingora's body reads are cancel-safe: a read that is not
/// ready has consumed nothing.
pub(super) async fn ready_now<F: Future>(fut: F) -> Option<F::Output> {
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
pub(super) async fn write(
    session: &mut Session,
    ctx: &mut Ctx,
    metrics: &Metrics,
    out: &mut Vec<u8>,
) -> bool {
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

/// Hold (or release) the client connection's flushes, so that the writes in between
/// leave together with the next flush (HTTP/1 connections only; see
/// [`crate::proxy::client::ClientStream::hold`]).
fn hold_flushes(session: &Session, hold: bool) {
    if let Some(c) = crate::proxy::client::client_stream(session) {
        if hold {
            c.hold();
        } else {
            c.release();
        }
    }
}

pub(super) fn sse_head(ctx: &Ctx) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(200, Some(6))?;
    h.insert_header("content-type", "text/event-stream; charset=utf-8")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("x-accel-buffering", "no")?;
    h.insert_header("transfer-encoding", "chunked")?;
    h.insert_header("x-request-id", ctx.request_id.as_str())?;
    Ok(h)
}

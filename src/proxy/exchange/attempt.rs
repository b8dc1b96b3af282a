//! The attempt loop: an identity per attempt (a token, a guest), the provider's request,
//! the head, and reading until the answer proves usable; a failure before that is reported
//! to the pool and tried again with another identity while the client has seen nothing.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, warn};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::HttpSession as Http1Session;
use pingora::upstreams::peer::Peer;
use pingora::ErrorType;

use super::super::failure::{pool_exhausted, Failure};
use super::super::{upstream, App, Ctx};
use crate::config::UpstreamMode;
use crate::core::error::ApiError;
use crate::core::Decoder;
use crate::pipeline::complete::Completion;
use crate::pipeline::stream::ChatStream;
use crate::pool::{LeaseError, Outcome};
use crate::provider::k2think::decode::{K2Decoder, UpstreamFormat};
use crate::proxy::zai::{Ask, NoIdentity};
use crate::secret::Secret;

use super::*;

impl Job<'_> {
    pub(super) fn new_sink(&self, format: UpstreamFormat) -> Sink {
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
    pub(super) fn body_failure(&self, decoder: &dyn Decoder, message: String) -> Failure {
        match &self.route {
            Route::Zai(z) => {
                crate::proxy::zai::inline_failure(&z.rt, decoder.error_code(), message)
            }
            Route::K2think => Failure::Unusable(message),
        }
    }

    /// The upstream timeouts of this request's provider.
    pub(super) fn timing(&self) -> Timing {
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
                    keepalive: crate::proxy::zai::KEEPALIVE,
                }
            }
        }
    }

    /// The attempt loop: a usable answer, or the error the client gets.
    pub(super) async fn exchange(&self, ctx: &mut Ctx) -> Result<Answer, ApiError> {
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
    pub(super) fn report(&self, who: &Who, outcome: &Outcome) {
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
    pub(super) async fn clean_up(&self) {
        let Route::Zai(z) = &self.route else { return };
        let chats = std::mem::take(&mut *self.cleanup.lock().unwrap_or_else(|p| p.into_inner()));
        for (token, chat) in chats {
            z.rt.delete_chat(self.app, &token, &chat).await;
        }
    }

    /// The client's error once no attempt succeeded.
    pub(super) fn final_error(&self, last: Option<Failure>) -> ApiError {
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
    pub(super) async fn attempt(&self, who: &Who, ctx: &mut Ctx) -> Result<Answer, Failure> {
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
                    .map_err(|e| crate::proxy::zai::prepare_failure(rt, e))?;
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
                return Err(crate::proxy::zai::status_failure(
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
}

/// Give a finished upstream connection back for reuse: HTTP/1 to our idle list, HTTP/2 to
/// Pingora's connector.
///
/// Boxed: this runs once, at the end of a request, but its state (~4 KB, mostly Pingora's
/// `release_http_session`) would otherwise be part of the attempt's and the stream's state
/// for the whole of every request.
pub(super) fn release<'a>(
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
pub(super) fn detect_format(content_type: &str, first: &[u8]) -> Result<UpstreamFormat, Failure> {
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

pub(super) fn connect_failure(e: &pingora::Error) -> Failure {
    if is_timeout(e.etype()) {
        Failure::Timeout("the connection")
    } else {
        Failure::Network(format!(
            "cannot connect to the upstream: {}",
            e.etype().as_str()
        ))
    }
}

pub(super) fn is_timeout(t: &ErrorType) -> bool {
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
pub(super) async fn read_error_body(up: &mut HttpSession) -> Vec<u8> {
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
    use crate::proxy::failure::ceil_secs;

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

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

use super::super::{upstream, App, Ctx};
use crate::core::error::ApiError;
use crate::core::Decoder;
use crate::pipeline::complete::Completion;
use crate::pipeline::stream::ChatStream;
use crate::pool::Outcome;
use crate::provider::failure::{pool_exhausted, Failure};
use crate::provider::{Ask, Identity, NoIdentity, Timing, UpstreamFormat};
use crate::secret::Secret;

use super::*;

impl Job<'_> {
    /// What the provider is asked, borrowed from the request.
    pub(super) fn ask(&self) -> Ask<'_> {
        Ask {
            model: &self.model.id,
            upstream_model: &self.model.upstream,
            thinking: self.model.reasoning,
            images: self.model.images,
            effort: self.effort,
            turns: &self.payload.messages,
            sampling: &self.payload.params,
            chat_id: &self.payload.chat_id,
            body: &self.body,
        }
    }

    pub(super) fn new_sink(&self, format: UpstreamFormat) -> Sink {
        let decoder = self.provider.decoder(format);
        if self.stream {
            let wire = self.surface.encoder(&self.reply);
            Sink::Stream(ChatStream::with_decoder(wire, decoder, self.tools.as_ref()))
        } else {
            Sink::Collect(Completion::with_decoder(decoder).with_tools(self.tools.clone()))
        }
    }

    /// A 200 whose body carried an error or nothing usable: the provider's reading of it.
    pub(super) fn body_failure(&self, decoder: &dyn Decoder, message: String) -> Failure {
        self.provider.body_failure(decoder.error_code(), message)
    }

    /// The upstream timeouts of this request's provider.
    pub(super) fn timing(&self) -> Timing {
        self.provider.timing()
    }

    /// The attempt loop: a usable answer, or the error the client gets.
    pub(super) async fn exchange(&self, ctx: &mut Ctx) -> Result<Answer, ApiError> {
        let provider: &dyn Provider = &*self.provider;
        let ask = self.ask();
        let mut tried: Vec<u64> = Vec::new();
        let mut last: Option<Failure> = None;
        for attempt in 0..provider.max_attempts() {
            let who = match provider.identity(self.app, &tried, attempt).await {
                Ok(who) => who,
                Err(NoIdentity::AllTried) => break,
                Err(NoIdentity::Exhausted(retry_after)) => {
                    if last.is_some() {
                        break;
                    }
                    return Err(pool_exhausted(retry_after));
                }
                Err(NoIdentity::Final(e)) => return Err(e),
                Err(NoIdentity::Failed(e)) => {
                    warn!("{}: {}: {e}", ctx.request_id, provider.title());
                    last = Some(Failure::Network(e));
                    continue;
                }
            };
            if let Some(id) = who.id {
                tried.push(id);
            }
            ctx.attempts += 1;
            if attempt > 0 {
                self.app.metrics.retries.inc();
            }
            let started = Instant::now();
            let result = self.attempt(&who, &ask, ctx).await;
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
                    ctx.token = who.token.as_ref().map(Secret::masked);
                    return Ok(answer);
                }
                Err(f) => {
                    let token = who.token.as_ref().map(Secret::masked);
                    warn!(
                        "{}: attempt {} (token {}) failed after {:.0}ms: {}",
                        ctx.request_id,
                        attempt + 1,
                        token.as_deref().unwrap_or("-"),
                        elapsed.as_secs_f64() * 1e3,
                        f.describe()
                    );
                    self.report(&who, &f.outcome());
                    let retry = provider.retries(&f);
                    last = Some(f);
                    if !retry {
                        break;
                    }
                }
            }
        }
        Err(self.final_error(last))
    }

    /// Tell the provider how an attempt went; sign-in work goes to the updater.
    pub(super) fn report(&self, who: &Identity, outcome: &Outcome) {
        let events = self.provider.report(who, outcome);
        if !events.is_empty() {
            self.app.request_refresh(events);
        }
    }

    /// Remove what the attempts left upstream (Z.AI's chats under `cleanup: delete`).
    pub(super) async fn clean_up(&self) {
        let left = std::mem::take(&mut *self.leftovers.lock().unwrap_or_else(|p| p.into_inner()));
        if !left.is_empty() {
            self.provider.clean_up(self.app, left).await;
        }
    }

    /// The client's error once no attempt succeeded.
    pub(super) fn final_error(&self, last: Option<Failure>) -> ApiError {
        let Some(f) = last else {
            return pool_exhausted(None);
        };
        f.client_error(self.provider.title(), || self.provider.pool_wait())
    }

    /// One attempt, up to a usable answer.
    pub(super) async fn attempt(
        &self,
        who: &Identity,
        ask: &Ask<'_>,
        ctx: &mut Ctx,
    ) -> Result<Answer, Failure> {
        let up_cfg = self.timing();
        let connector = &self.app.connector;
        let target = self.provider.target();
        let addr = self
            .app
            .resolver
            .resolve(&target.host, target.port)
            .await
            .map_err(Failure::Network)?;
        let peer = Box::new(upstream::peer(target, &up_cfg, addr));
        let outbound = self.provider.request(self.app, who, ask).await?;
        if let Some(left) = outbound.leftover {
            self.leftovers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(left);
        }
        let req = Box::new(upstream::pingora_head(outbound.head));
        let body = outbound.body;
        let deadline = tokio::time::Instant::now() + up_cfg.header_timeout;

        // A pooled connection may have been closed by the upstream meanwhile: if sending on
        // a reused one fails before any response, try once more on a fresh connection.
        let mut home;
        let mut up = loop {
            let idle = self
                .app
                .idle
                .take(peer.reuse_hash(), up_cfg.keepalive, Home::here())
                .map(|(s, home)| {
                    (
                        HttpSession::H1(Http1Session::new_with_options(s, &*peer)),
                        home,
                    )
                });
            let (up, reused) = match idle {
                Some((up, from)) => {
                    home = from;
                    (up, true)
                }
                // Boxed: Pingora's connect future is the largest part of an attempt's
                // state (~9 KB), and a reused connection does not need it.
                None => {
                    home = Home::here();
                    Box::pin(connector.get_http_session(&*peer))
                        .await
                        .map_err(|e| connect_failure(&e))?
                }
            };
            let sent = until(
                deadline,
                upstream::send_request(
                    up,
                    req.clone(),
                    body.clone(),
                    &peer,
                    Some(up_cfg.header_timeout),
                    Some(up_cfg.connect_timeout.max(Duration::from_secs(30))),
                ),
            )
            .await;
            match sent {
                Err(_) => return Err(Failure::Timeout("the response head")),
                Ok(Ok(up)) => break up,
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
            return Err(self
                .provider
                .status_failure(status, retry_after, &content_type, &body));
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
            let chunk = match until(wait, up.read_response_body()).await {
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
                        release(self.app, up, &peer, up_cfg.keepalive, home).await;
                        Ok(Answer::Complete(result, c.malformed_tool_blocks()))
                    }
                    Sink::Stream(mut stream) => {
                        if let Err(e) = stream.finish(&mut out) {
                            return Err(self.body_failure(stream.decoder(), e));
                        }
                        Ok(Answer::Stream(Box::new(Live {
                            up,
                            home,
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
                home,
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
    home: Home,
) -> Pin<Box<dyn Future<Output = ()> + Send + 'a>> {
    Box::pin(async move {
        if !up.response_done() {
            return;
        }
        match up {
            HttpSession::H1(mut h1) => {
                h1.respect_keepalive();
                if let Some(stream) = h1.reuse().await {
                    app.idle.put(peer.reuse_hash(), stream, home);
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
    let read = within(Duration::from_secs(2), async {
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
    use crate::provider::failure::ceil_secs;

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

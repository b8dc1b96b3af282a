//! The upstream peer: address resolution, connection options, the request head as Pingora
//! writes it, sending a request in one write, and the K2Think provider's settings from the
//! config.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::client::HttpSession;
use pingora::protocols::http::v1::client::{http_req_header_to_wire, HttpSession as Http1Session};
use pingora::protocols::ALPN;
use pingora::ErrorType;
use tokio::io::AsyncWriteExt;

use super::timeouts::within;
use crate::config::{Config, UpstreamMode, UpstreamTarget};
use crate::provider::k2think::runtime::{FixedHead, K2thinkSettings};
use crate::provider::Timing;

const DNS_TTL: Duration = Duration::from_secs(60);

/// Addresses of a host and when they were looked up.
type Resolved = (Vec<SocketAddr>, Instant);

/// Async DNS with a small cache. Pingora's `HttpPeer::new` resolves with blocking calls and
/// panics on failure, so only resolved addresses are handed to it.
#[derive(Default)]
pub struct Resolver {
    cache: Mutex<HashMap<(String, u16), Resolved>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Resolver {
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let key = (host.to_string(), port);
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(&key)
                .filter(|(_, at)| at.elapsed() < DNS_TTL)
                .map(|(a, _)| a.clone())
        };
        let addrs = match cached {
            Some(a) => a,
            None => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| format!("cannot resolve {host}: {e}"))?
                    .collect();
                if found.is_empty() {
                    return Err(format!("{host} has no addresses"));
                }
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                cache.insert(key, (found.clone(), Instant::now()));
                found
            }
        };
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(addrs[i % addrs.len()])
    }
}

/// The peer of a completion attempt to `target`, with every timeout set (Pingora's
/// defaults are "none").
pub fn peer(target: &UpstreamTarget, t: &Timing, addr: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, target.tls, target.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(t.connect_timeout);
    o.total_connection_timeout = Some(t.connect_timeout * 2);
    o.read_timeout = Some(t.idle_timeout.max(t.header_timeout));
    o.write_timeout = Some(t.connect_timeout.max(Duration::from_secs(30)));
    o.idle_timeout = Some(t.keepalive);
    o.verify_cert = t.tls_verify;
    o.verify_hostname = t.tls_verify;
    if target.tls {
        o.alpn = ALPN::H2H1;
        if t.h2_streams > 0 {
            o.max_h2_streams = t.h2_streams;
        }
    }
    peer
}

/// A provider's request head as Pingora writes it.
pub fn pingora_head(parts: http::request::Parts) -> RequestHeader {
    RequestHeader::from(parts)
}

/// The K2Think provider's settings under `config`, worked out once per config.
pub fn k2think_settings(config: &Config, target: &UpstreamTarget) -> K2thinkSettings {
    let up = &config.upstream;
    let h = &up.headers;
    let mut browser: Vec<(String, String)> = [
        ("user-agent", &h.user_agent),
        ("sec-ch-ua", &h.sec_ch_ua),
        ("sec-ch-ua-mobile", &h.sec_ch_ua_mobile),
        ("sec-ch-ua-platform", &h.sec_ch_ua_platform),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(k, v)| (k.to_string(), v.clone()))
    .collect();
    let origin = config.upstream_origin();
    if !origin.is_empty() {
        browser.push(("origin".to_string(), origin));
    }
    let mut after_referer = Vec::new();
    if !h.accept_language.is_empty() {
        after_referer.push(("accept-language".to_string(), h.accept_language.clone()));
    }
    after_referer.extend(h.extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    let user_mode = config.effective_mode() == UpstreamMode::User;
    let path = if user_mode {
        &up.user_path
    } else {
        &up.guest_path
    };
    K2thinkSettings {
        fixed_head: FixedHead::new(path, target, &browser, &after_referer),
        target: target.clone(),
        user_mode,
        stream: up.stream,
        referer: config.upstream_referer(),
        timing: Timing {
            connect_timeout: up.connect_timeout,
            header_timeout: up.header_timeout,
            idle_timeout: up.idle_timeout,
            keepalive: up.keepalive,
            tls_verify: up.tls_verify,
            h2_streams: 100,
        },
        max_attempts: config.retry.max_attempts,
        backoff: config.retry.backoff,
        on_status: config.retry.on_status.clone(),
        implicit_think: config.reasoning.implicit_think,
        delivery: up.content_delivery,
    }
}

/// Send a request and read the response head. Over HTTP/1 the head and the body leave in
/// one write: Pingora's client flushes the head on its own, which costs a second syscall on
/// every request (and on a fresh connection a second packet the upstream waits for). Over
/// HTTP/2, Pingora's client writes the frames. The session's timeouts apply as set; a
/// failed write drops the connection (it was going to be dropped anyway).
pub async fn send_request(
    up: HttpSession,
    req: Box<RequestHeader>,
    body: Bytes,
    peer: &HttpPeer,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
) -> pingora::Result<HttpSession> {
    let mut up = match up {
        HttpSession::H1(h1) => {
            let mut wire = http_req_header_to_wire(&req).ok_or_else(|| {
                pingora::Error::explain(
                    ErrorType::InvalidHTTPHeader,
                    "the request head cannot be written",
                )
            })?;
            wire.extend_from_slice(&body);
            let mut stream = h1.into_inner();
            let write = async {
                stream.write_all(&wire).await?;
                stream.flush().await
            };
            let written = match write_timeout {
                Some(t) => within(t, write).await.map_err(|_| {
                    pingora::Error::explain(ErrorType::WriteTimedout, "while writing the request")
                })?,
                None => write.await,
            };
            written.map_err(|e| {
                pingora::Error::because(ErrorType::WriteError, "while writing the request", e)
            })?;
            HttpSession::H1(Http1Session::new_with_options(stream, peer))
        }
        mut other => {
            other.set_write_timeout(write_timeout);
            other.write_request_header(req).await?;
            other.write_request_body(body, true).await?;
            other.finish_request_body().await?;
            other
        }
    };
    up.set_read_timeout(read_timeout);
    up.read_response_header().await?;
    Ok(up)
}

//! The upstream peer: address resolution, connection options and the request head of one
//! attempt.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;

use super::Snapshot;
use crate::config::UpstreamMode;
use crate::secret::Secret;

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

/// The peer for one attempt, with every timeout set (Pingora's defaults are "none").
pub fn peer(snap: &Snapshot, addr: SocketAddr) -> HttpPeer {
    let up = &snap.config.upstream;
    let mut peer = HttpPeer::new(addr, snap.target.tls, snap.target.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(up.connect_timeout);
    o.total_connection_timeout = Some(up.connect_timeout * 2);
    o.read_timeout = Some(up.idle_timeout.max(up.header_timeout));
    o.write_timeout = Some(up.connect_timeout.max(Duration::from_secs(30)));
    o.idle_timeout = Some(up.keepalive);
    o.verify_cert = up.tls_verify;
    o.verify_hostname = up.tls_verify;
    if snap.target.tls {
        o.alpn = ALPN::H2H1;
        o.max_h2_streams = 100;
    }
    peer
}

/// The request head of one attempt: path per mode, browser-like headers, the bearer of
/// this attempt's token, and the exact body length.
pub fn request_header(
    snap: &Snapshot,
    token: Option<&Secret>,
    chat_id: &str,
    body_len: usize,
    stream: bool,
) -> pingora::Result<RequestHeader> {
    let up = &snap.config.upstream;
    let path = match snap.mode {
        UpstreamMode::User => up.user_path.as_str(),
        _ => up.guest_path.as_str(),
    };
    let mut req = RequestHeader::build("POST", path.as_bytes(), Some(12))?;
    req.insert_header("host", snap.target.authority.as_str())?;
    req.insert_header("content-type", "application/json")?;
    req.insert_header("content-length", body_len.to_string())?;
    req.insert_header(
        "accept",
        if stream {
            "text/event-stream, application/json"
        } else {
            "application/json"
        },
    )?;
    req.insert_header("accept-encoding", "identity")?;
    let h = &up.headers;
    for (name, value) in [
        ("user-agent", &h.user_agent),
        ("sec-ch-ua", &h.sec_ch_ua),
        ("sec-ch-ua-mobile", &h.sec_ch_ua_mobile),
        ("sec-ch-ua-platform", &h.sec_ch_ua_platform),
    ] {
        if !value.is_empty() {
            req.insert_header(name, value.as_str())?;
        }
    }
    if !snap.origin.is_empty() {
        req.insert_header("origin", snap.origin.as_str())?;
    }
    if !snap.referer.is_empty() {
        req.insert_header("referer", snap.referer.replace("{chat_id}", chat_id))?;
    }
    if !h.accept_language.is_empty() {
        req.insert_header("accept-language", h.accept_language.as_str())?;
    }
    for (k, v) in &h.extra {
        req.insert_header(k.clone(), v.as_str())?;
    }
    if let Some(t) = token {
        req.insert_header("authorization", format!("Bearer {}", t.expose()))?;
    }
    Ok(req)
}

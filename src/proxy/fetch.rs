//! Small side calls to an upstream through Pingora's connector (same TLS stack and DNS
//! cache as the chat path): a sign-in, a home page to scrape, a chat to create or delete.
//! The whole answer is read, bounded in size and time.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::ALPN;

use super::App;
use crate::config::UpstreamTarget;
use crate::provider::{Pending, SideAnswer, SideCall, SideCalls};

/// Connection settings of a side call.
#[derive(Debug, Clone, Copy)]
pub struct PeerSettings {
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub tls_verify: bool,
}

/// A finished side call.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// The peer for a call to `target`, with every timeout set.
pub fn peer(target: &UpstreamTarget, addr: std::net::SocketAddr, s: PeerSettings) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, target.tls, target.host.clone());
    let o = &mut peer.options;
    o.connection_timeout = Some(s.connect_timeout);
    o.total_connection_timeout = Some(s.connect_timeout * 2);
    o.read_timeout = Some(s.read_timeout);
    o.write_timeout = Some(s.connect_timeout.max(Duration::from_secs(10)));
    o.verify_cert = s.tls_verify;
    o.verify_hostname = s.tls_verify;
    if target.tls {
        o.alpn = ALPN::H2H1;
    }
    peer
}

/// A request head for `method path` to `target` with the `host` header set.
pub fn head(target: &UpstreamTarget, method: &str, path: &str) -> Result<RequestHeader, String> {
    let mut req = RequestHeader::build(method, path.as_bytes(), Some(12))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    req.insert_header("host", target.authority.as_str())
        .map_err(|e| format!("cannot build the request: {e}"))?;
    req.insert_header("accept-encoding", "identity")
        .map_err(|e| format!("cannot build the request: {e}"))?;
    Ok(req)
}

/// Send `req` (and `body`) to `target` and read the whole answer: at most `limit` bytes of
/// body (more is an error), everything within `timeout`. Errors name the failing step,
/// never a header value.
pub async fn fetch(
    app: &App,
    target: &UpstreamTarget,
    settings: PeerSettings,
    mut req: RequestHeader,
    body: Option<Bytes>,
    limit: usize,
    timeout: Duration,
) -> Result<Fetched, String> {
    let work = async {
        let addr = app.resolver.resolve(&target.host, target.port).await?;
        let peer = peer(target, addr, settings);
        let (mut session, _) = app
            .connector
            .get_http_session(&peer)
            .await
            .map_err(|e| format!("cannot connect: {}", e.etype().as_str()))?;
        let io = |e: Box<pingora::Error>| format!("exchange failed: {}", e.etype().as_str());
        if let Some(b) = &body {
            req.insert_header("content-length", b.len().to_string())
                .map_err(|e| format!("cannot build the request: {e}"))?;
        }
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(io)?;
        if let Some(b) = body {
            session.write_request_body(b, true).await.map_err(io)?;
        }
        session.finish_request_body().await.map_err(io)?;
        session.read_response_header().await.map_err(io)?;
        let (status, headers) = {
            let head = session
                .response_header()
                .ok_or_else(|| "no response head".to_string())?;
            (head.status.as_u16(), head.headers.clone())
        };
        let mut answer = BytesMut::new();
        while let Some(c) = session.read_response_body().await.map_err(io)? {
            if answer.len() + c.len() > limit {
                return Err(format!("the answer is larger than {limit} bytes"));
            }
            answer.extend_from_slice(&c);
        }
        Ok(Fetched {
            status,
            headers,
            body: answer.freeze(),
        })
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

/// Providers' side calls go through Pingora's connector like the chat path.
impl SideCalls for App {
    fn send<'a>(&'a self, call: SideCall<'a>) -> Pending<'a, Result<SideAnswer, String>> {
        Box::pin(async move {
            let mut req = head(call.target, call.method, &call.path)?;
            for (k, v) in call.headers {
                req.insert_header(k, v.as_str())
                    .map_err(|e| format!("cannot build the request: {e}"))?;
            }
            let got = fetch(
                self,
                call.target,
                PeerSettings {
                    connect_timeout: call.connect_timeout,
                    read_timeout: call.read_timeout,
                    tls_verify: call.tls_verify,
                },
                req,
                call.body,
                call.limit,
                call.timeout,
            )
            .await?;
            Ok(SideAnswer {
                status: got.status,
                body: got.body,
            })
        })
    }
}

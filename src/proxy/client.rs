//! Client connections: a deadline on request heads, and a count of open connections.
//!
//! Pingora times each read of a request head separately (60 s), so a client that sends
//! one header byte a minute holds a connection and a task for as long as it likes, and
//! one that connects and says nothing holds them for a minute. [`ClientApp`] wraps every
//! accepted stream in a [`ClientStream`] that fails reads with `TimedOut` once a head has
//! been arriving for longer than `limits.client_header_timeout` (for a fresh connection,
//! counted from the accept). Pingora then drops the connection. The phase bookkeeping is
//! the pure [`HeadClock`].
//!
//! The same wrapper bounds writes: a write or flush that makes no progress for
//! `limits.client_write_timeout` (a client that stopped reading) fails with `TimedOut`, and
//! so does every later write on that connection. Pingora's own write timeout does not
//! cover the end of a response (`finish`), which would otherwise wait on such a client for
//! good; and this one costs nothing while writes complete at once, because its timer is
//! only armed when a write has to wait.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::{App, Held, K2Proxy};

/// What part of an HTTP/1 exchange a connection is in, as seen from its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A request head is arriving; it must be complete by `deadline`.
    Head { deadline: Instant, newlines: u8 },
    /// The head is in: the body and the answer have their own timeouts.
    Busy,
    /// An answer was written: waiting (keep-alive) for the next request's first byte.
    Idle,
    /// Not HTTP/1 (the HTTP/2 preface): no head deadlines.
    Off,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// The head-deadline bookkeeping of one connection, fed with what is read and written.
#[derive(Debug, Clone)]
pub struct HeadClock {
    timeout: Duration,
    phase: Phase,
    /// Bytes of the HTTP/2 preface matched from the start of the connection, while they
    /// still match.
    preface: Option<usize>,
}

impl HeadClock {
    /// A fresh connection, accepted at `now`: its first head is due by `now + timeout`.
    pub fn new(timeout: Duration, now: Instant) -> HeadClock {
        HeadClock {
            timeout,
            phase: Phase::Head {
                deadline: now + timeout,
                newlines: 0,
            },
            preface: Some(0),
        }
    }

    /// When the current head must be complete, if one is arriving.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Head { deadline, .. } => Some(deadline),
            _ => None,
        }
    }

    /// `data` was read at `now`. Returns the new deadline when these bytes started a head.
    pub fn on_read(&mut self, data: &[u8], now: Instant) -> Option<Instant> {
        if data.is_empty() {
            return None;
        }
        if let Some(n) = self.preface {
            let k = (H2_PREFACE.len() - n).min(data.len());
            if data[..k] == H2_PREFACE[n..n + k] {
                self.preface = Some(n + k).filter(|&m| m < H2_PREFACE.len());
                if n + k == H2_PREFACE.len() {
                    self.phase = Phase::Off;
                    return None;
                }
            } else {
                self.preface = None;
            }
        }
        let mut started = None;
        if self.phase == Phase::Idle {
            let deadline = now + self.timeout;
            self.phase = Phase::Head {
                deadline,
                newlines: 0,
            };
            started = Some(deadline);
        }
        if let Phase::Head { newlines, .. } = &mut self.phase {
            // The head ends at an empty line; like httparse, a bare `\n` ends a line too.
            for &b in data {
                match b {
                    b'\n' => {
                        *newlines += 1;
                        if *newlines == 2 {
                            self.phase = Phase::Busy;
                            break;
                        }
                    }
                    b'\r' => {}
                    _ => *newlines = 0,
                }
            }
        }
        started
    }

    /// `data` was written: an answer (other than `100 Continue`) means the next bytes
    /// read start a new request.
    pub fn on_write(&mut self, data: &[u8]) {
        if self.phase == Phase::Off || data.starts_with(b"HTTP/1.1 100 ") {
            return;
        }
        self.phase = Phase::Idle;
    }
}

/// An accepted client stream with a deadline on request heads (see [`HeadClock`]) and a
/// timeout on writes that make no progress.
pub struct ClientStream {
    inner: Stream,
    clock: HeadClock,
    timer: Pin<Box<Sleep>>,
    write_timeout: Duration,
    /// Armed while a write or flush waits; reset by any progress.
    write_timer: Pin<Box<Sleep>>,
    write_armed: bool,
    /// A write timed out: the client is treated as gone for good.
    write_dead: bool,
}

impl ClientStream {
    pub fn new(inner: Stream, header_timeout: Duration, write_timeout: Duration) -> ClientStream {
        let now = Instant::now();
        let clock = HeadClock::new(header_timeout, now);
        let timer = Box::pin(tokio::time::sleep_until((now + header_timeout).into()));
        let write_timer = Box::pin(tokio::time::sleep_until((now + write_timeout).into()));
        ClientStream {
            inner,
            clock,
            timer,
            write_timeout,
            write_timer,
            write_armed: false,
            write_dead: false,
        }
    }

    fn write_timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "the client read nothing for limits.client_write_timeout ({:?})",
                self.write_timeout
            ),
        )
    }

    /// Fail a write once the connection is dead; otherwise poll the write.
    fn guarded<T>(
        &mut self,
        cx: &mut Context<'_>,
        op: impl FnOnce(Pin<&mut Stream>, &mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if self.write_dead {
            return Poll::Ready(Err(self.write_timed_out()));
        }
        match op(Pin::new(&mut self.inner), cx) {
            Poll::Ready(r) => {
                self.write_armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                if !self.write_armed {
                    self.write_armed = true;
                    let deadline = Instant::now() + self.write_timeout;
                    self.write_timer.as_mut().reset(deadline.into());
                }
                if self.write_timer.as_mut().poll(cx).is_ready() {
                    self.write_dead = true;
                    return Poll::Ready(Err(self.write_timed_out()));
                }
                Poll::Pending
            }
        }
    }

    fn timed_out(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request head not complete within limits.client_header_timeout ({:?})",
                self.clock.timeout
            ),
        )
    }
}

impl fmt::Debug for ClientStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStream")
            .field("inner", &self.inner)
            .field("clock", &self.clock)
            .finish()
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let now = Instant::now();
                if let Some(deadline) = this.clock.on_read(&buf.filled()[before..], now) {
                    this.timer.as_mut().reset(deadline.into());
                }
                match this.clock.deadline() {
                    // still in the head, and late: a slow drip of bytes is no excuse
                    Some(d) if now >= d => Poll::Ready(Err(this.timed_out())),
                    _ => Poll::Ready(Ok(())),
                }
            }
            Poll::Pending => {
                if this.clock.deadline().is_some() && this.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Pending
            }
            other => other,
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.guarded(cx, |s, cx| s.poll_write(cx, buf));
        if let Poll::Ready(Ok(n)) = &r {
            this.clock.on_write(&buf[..*n]);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = this.guarded(cx, |s, cx| s.poll_write_vectored(cx, bufs));
        if let (Poll::Ready(Ok(n)), Some(first)) = (&r, bufs.iter().find(|b| !b.is_empty())) {
            this.clock.on_write(&first[..(*n).min(first.len())]);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().guarded(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for ClientStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for ClientStream {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for ClientStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for ClientStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for ClientStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for ClientStream {
    /// Pingora peeks for the HTTP/2 preface before it reads anything: the wait for a fresh
    /// connection's first byte happens here, so the head deadline applies to it too.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let Some(deadline) = self.clock.deadline() else {
            return self.inner.try_peek(buf).await;
        };
        match tokio::time::timeout_at(deadline.into(), self.inner.try_peek(buf)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out()),
        }
    }
}

/// The proxy service's connection handler: counts the connection, wraps its stream in a
/// [`ClientStream`] and hands it to Pingora's HTTP proxy.
pub struct ClientApp {
    pub proxy: Arc<HttpProxy<K2Proxy>>,
    pub app: Arc<App>,
}

#[async_trait]
impl ServerApp for ClientApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let limits = &self.app.snapshot().config.limits;
        let (header, write) = (limits.client_header_timeout, limits.client_write_timeout);
        let _open = Held::new(&self.app.metrics.client_connections);
        let stream: Stream = Box::new(ClientStream::new(stream, header, write));
        ServerApp::process_new(&self.proxy, stream, shutdown).await
    }

    async fn cleanup(&self) {
        ServerApp::cleanup(self.proxy.as_ref()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[test]
    fn a_fresh_connection_owes_its_head_from_the_accept() {
        let t0 = Instant::now();
        let mut c = HeadClock::new(T, t0);
        assert_eq!(c.deadline(), Some(t0 + T));
        // bytes of the head do not move the deadline
        assert_eq!(
            c.on_read(b"POST / HTTP/1.1\r\nHost: x\r\n", t0 + T / 2),
            None
        );
        assert_eq!(c.deadline(), Some(t0 + T));
        c.on_read(b"\r\n{\"body\":1}", t0 + T / 2);
        assert_eq!(c.deadline(), None, "the head is in");
    }

    #[test]
    fn the_end_of_a_head_is_found_at_every_split() {
        let heads: [&[u8]; 3] = [
            b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /v1/models HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nX: \r\r\n\r\n",
        ];
        for head in heads {
            for cut in 0..=head.len() {
                let now = Instant::now();
                let mut c = HeadClock::new(T, now);
                c.on_read(&head[..cut], now);
                if cut < head.len() {
                    assert!(c.deadline().is_some(), "{head:?} at {cut}");
                }
                c.on_read(&head[cut..], now);
                assert_eq!(c.deadline(), None, "{head:?} at {cut}");
            }
        }
        // a line break inside a header is not the end
        let mut c = HeadClock::new(T, Instant::now());
        c.on_read(b"GET / HTTP/1.1\r\nA: b\r\nC: d\r\n", Instant::now());
        assert!(c.deadline().is_some());
    }

    #[test]
    fn keep_alive_waits_have_no_deadline_and_the_next_head_gets_a_new_one() {
        let t0 = Instant::now();
        let mut c = HeadClock::new(T, t0);
        c.on_read(b"GET / HTTP/1.1\r\n\r\n", t0);
        c.on_write(b"HTTP/1.1 200 OK\r\n\r\nhi");
        assert_eq!(c.deadline(), None, "idle between requests");
        assert_eq!(c.on_read(b"", t0 + T * 5), None, "EOF starts nothing");
        let t1 = t0 + T * 6;
        assert_eq!(c.on_read(b"G", t1), Some(t1 + T));
        assert_eq!(c.deadline(), Some(t1 + T));
    }

    #[test]
    fn continue_does_not_end_the_request() {
        let t0 = Instant::now();
        let mut c = HeadClock::new(T, t0);
        c.on_read(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n", t0);
        c.on_write(b"HTTP/1.1 100 Continue\r\n\r\n");
        // the body that follows is not a head
        assert_eq!(c.on_read(b"{\"a\":1}", t0), None);
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn http2_prior_knowledge_turns_the_clock_off() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04";
        for cut in 0..=preface.len() {
            let now = Instant::now();
            let mut c = HeadClock::new(T, now);
            c.on_read(&preface[..cut], now);
            c.on_read(&preface[cut..], now);
            c.on_write(b"\x00\x00\x00\x04\x01");
            c.on_read(b"\x00\x00\x08\x06", now);
            assert_eq!(c.deadline(), None, "at {cut}");
        }
        // a request that merely starts like it is HTTP/1
        let now = Instant::now();
        let mut c = HeadClock::new(T, now);
        c.on_read(b"PRI / HTTP/1.1\r\n\r\n", now);
        c.on_write(b"HTTP/1.1 400 Bad\r\n\r\n");
        assert!(c.on_read(b"G", now).is_some());
    }
}

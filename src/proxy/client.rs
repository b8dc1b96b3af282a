//! Client connections: a deadline on request heads, a count and a cap of open connections,
//! and the per-request connection settings (idle keep-alive, write timeout, pipelining).
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
//!
//! Beyond `limits.max_connections` a new connection is answered 503 and closed before
//! Pingora sees it. The bare error answers Pingora writes itself (400 for a request head it
//! refuses, such as an absolute-form target whose authority differs from `Host`) are given
//! a JSON error body here, like every other error the proxy sends ([`error_body_for`]).

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, ALPN};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use pingora::proxy::HttpProxy;
use pingora::proxy::Session;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::{App, Held, K2Proxy};
use crate::config::LimitsSection;
use crate::core::error::ApiError;

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

/// How long a closed-for-good client has to answer the `100 Continue` probe with a reset
/// (one round trip) before its end of input is taken as a half-close.
const CLOSE_PROBE_WAIT: Duration = Duration::from_millis(500);

/// The head-deadline bookkeeping of one connection, fed with what is read and written.
#[derive(Debug, Clone)]
pub struct HeadClock {
    timeout: Duration,
    phase: Phase,
    /// Bytes of the HTTP/2 preface matched from the start of the connection, while they
    /// still match.
    preface: Option<usize>,
    /// The last bytes of the current head's request line (its version), until the line ends.
    version: [u8; 8],
    line_done: bool,
    /// The current request is HTTP/1.1 (its line ended in `HTTP/1.1`).
    http11: bool,
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
            version: [0; 8],
            line_done: false,
            http11: false,
        }
    }

    /// The request's head is in and no answer has been written, and it is HTTP/1.1: an
    /// interim `100 Continue` may be sent (HTTP/1.0 clients must not get one).
    pub fn may_send_interim(&self) -> bool {
        self.phase == Phase::Busy && self.http11
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
            self.line_done = false;
            self.http11 = false;
            started = Some(deadline);
        }
        if let Phase::Head { newlines, .. } = &mut self.phase {
            // The head ends at an empty line; like httparse, a bare `\n` ends a line too.
            for &b in data {
                if !self.line_done {
                    if b == b'\n' {
                        self.line_done = true;
                        self.http11 = self.version == *b"HTTP/1.1";
                    } else if b != b'\r' {
                        self.version.rotate_left(1);
                        self.version[7] = b;
                    }
                }
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
    /// An end of input met while a request waits for its answer is being told apart: a
    /// `100 Continue` went out, and `timer` runs until the read is tried again.
    probing: bool,
    /// This connection's end of input was probed already.
    probed: bool,
    /// A bare Pingora error answer being written in its place, with a JSON body: the bytes,
    /// how many are out, and the length of the answer it replaces.
    replacing: Option<(Bytes, usize, usize)>,
    /// Flushes are held ([`ClientStream::hold`]): writes gather in `pending`.
    held: AtomicBool,
    /// Bytes written while flushes were held, and how many of them are out.
    pending: Vec<u8>,
    pending_sent: usize,
}

/// Past this many held bytes a hold is ignored (it is meant for a head and one batch).
const MOST_HELD: usize = 256 * 1024;

/// The client stream under `session`, when it is an HTTP/1 connection this module accepted.
pub fn client_stream(session: &Session) -> Option<&ClientStream> {
    session
        .as_downstream()
        .stream()?
        .as_any()
        .downcast_ref::<ClientStream>()
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
            probing: false,
            probed: false,
            replacing: None,
            held: AtomicBool::new(false),
            pending: Vec::new(),
            pending_sent: 0,
        }
    }

    /// Hold flushes until [`ClientStream::release`]: what is written meanwhile leaves with
    /// the next flush after it, in one syscall. Pingora flushes a chunked response's head on
    /// its own, each chunk, and the body's end; the relay holds the head's flush when the
    /// first bytes are ready to follow it, and the last chunk's when the end follows it.
    pub fn hold(&self) {
        self.held.store(true, Ordering::Relaxed);
    }

    pub fn release(&self) {
        self.held.store(false, Ordering::Relaxed);
    }

    fn holding(&self) -> bool {
        self.held.load(Ordering::Relaxed) && self.pending.len() < MOST_HELD
    }

    /// Write out what gathered while flushes were held.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.pending_sent < self.pending.len() {
            let (pending, from) = (std::mem::take(&mut self.pending), self.pending_sent);
            let r = self.guarded(cx, |s, cx| s.poll_write(cx, &pending[from..]));
            self.pending = pending;
            match r {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pending_sent += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.pending.clear();
        self.pending_sent = 0;
        Poll::Ready(Ok(()))
    }

    /// Whether a write goes to `pending`: flushes are held, or bytes wait there already
    /// (they go first).
    fn gathering(&self) -> bool {
        self.holding() || !self.pending.is_empty()
    }

    /// Take `bufs` into `pending`; the bytes taken.
    fn gather<'b>(&mut self, bufs: impl IntoIterator<Item = &'b [u8]>) -> usize {
        let mut n = 0;
        for b in bufs {
            self.clock.on_write(b);
            self.pending.extend_from_slice(b);
            n += b.len();
        }
        n
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

    /// A request is waiting for its answer and its client's input just ended: it either
    /// half-closed (and wants the answer) or closed for good (and the upstream exchange
    /// should stop). Only a write tells them apart.
    fn should_probe(&self) -> bool {
        !self.probed && self.clock.may_send_interim() && !self.write_dead
    }

    /// Write `100 Continue`, an interim answer every HTTP/1.1 client skips (RFC 9110
    /// §15.2): a socket closed for good answers it with a reset, which the next read
    /// reports. False when it could not go out at once.
    fn send_interim(&mut self, cx: &mut Context<'_>) -> bool {
        const INTERIM: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut sent = 0;
        while sent < INTERIM.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &INTERIM[sent..]) {
                Poll::Ready(Ok(n)) if n > 0 => sent += n,
                _ => return false,
            }
        }
        matches!(
            Pin::new(&mut self.inner).poll_flush(cx),
            Poll::Ready(Ok(()))
        )
    }

    /// The socket was reset (its TCP state is `CLOSE`): the client closed it for good.
    /// Reads do not say so once the client's FIN was read; the kernel's TCP state does.
    fn reset_by_peer(&self) -> bool {
        /// `TCP_CLOSE` in the kernel's `tcp_info.tcpi_state`.
        const TCP_CLOSE: u8 = 7;
        self.inner
            .get_socket_digest()
            .and_then(|d| d.tcp_info())
            .is_some_and(|info| info.tcpi_state == TCP_CLOSE)
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
        if this.probing {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.probing = false;
            if this.reset_by_peer() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "the client closed its connection before the answer",
                )));
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && this.should_probe() => {
                this.probed = true;
                if !this.send_interim(cx) {
                    return Poll::Ready(Ok(()));
                }
                this.probing = true;
                this.timer
                    .as_mut()
                    .reset((Instant::now() + CLOSE_PROBE_WAIT).into());
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        this.probing = false;
                        Poll::Ready(Ok(()))
                    }
                }
            }
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
        if this.gathering() {
            return Poll::Ready(Ok(this.gather([buf])));
        }
        if this.replacing.is_none() {
            if let Some(answer) = error_body_for(buf) {
                this.replacing = Some((answer, 0, buf.len()));
            }
        }
        if let Some((answer, done, replaced)) = this.replacing.take() {
            let mut done = done;
            while done < answer.len() {
                match this.guarded(cx, |s, cx| s.poll_write(cx, &answer[done..])) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Poll::Ready(Ok(n)) => done += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        this.replacing = Some((answer, done, replaced));
                        return Poll::Pending;
                    }
                }
            }
            this.clock.on_write(&answer);
            return Poll::Ready(Ok(replaced));
        }
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
        if this.gathering() {
            return Poll::Ready(Ok(this.gather(bufs.iter().map(|b| &b[..]))));
        }
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
        let this = self.get_mut();
        if this.holding() {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(this.poll_pending(cx))?;
        this.guarded(cx, |s, cx| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        this.guarded(cx, |s, cx| s.poll_shutdown(cx))
    }
}

#[async_trait]
impl Shutdown for ClientStream {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
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

/// `head` when it is a whole bodiless error answer that Pingora generated itself (it names
/// itself in `Server` and sends `Content-Length: 0`): the same answer with a JSON error body
/// in the OpenAI shape, the default shape of errors that come before any route.
pub fn error_body_for(head: &[u8]) -> Option<Bytes> {
    const SERVER: &[u8] = b"\r\nServer: Pingora\r\n";
    const EMPTY: &[u8] = b"\r\nContent-Length: 0\r\n";
    if head.len() > 1024
        || !head.starts_with(b"HTTP/1.1 ")
        || !head.ends_with(b"\r\n\r\n")
        || memchr::memmem::find(head, SERVER).is_none()
        || memchr::memmem::find(head, EMPTY).is_none()
    {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let code: u16 = text.get(9..12)?.parse().ok()?;
    if code < 400 {
        return None;
    }
    let error = match code {
        400 => ApiError::new(
            400,
            "invalid_request_error",
            "bad_request",
            "The request line or headers are not valid HTTP/1.1 and were refused before routing \
             (for example an absolute-form target whose host differs from the Host header, or a \
             malformed header)"
                .to_string(),
        ),
        401..=499 => ApiError::new(
            code,
            "invalid_request_error",
            "bad_request",
            format!("The request was refused before routing (HTTP {code})"),
        ),
        _ => ApiError::new(
            code,
            "server_error",
            "internal_error",
            format!("The proxy could not handle the request (HTTP {code})"),
        ),
    };
    let body = String::from_utf8(error.body()).ok()?;
    let head = text
        .replacen(
            "\r\nServer: Pingora\r\n",
            "\r\nContent-Type: application/json\r\n",
            1,
        )
        .replacen(
            "\r\nContent-Length: 0\r\n",
            &format!("\r\nContent-Length: {}\r\n", body.len()),
            1,
        );
    Some(Bytes::from(head + &body))
}

/// Settings of each request's session that Pingora would otherwise leave at its defaults:
/// an HTTP/1.1 connection kept alive after this request is closed once it idles for
/// `client_idle_timeout` (Pingora waits for the next request for ever), HTTP/2 body writes
/// give up after `client_write_timeout` without progress (the h2 flow-control window is
/// the peer's to open), pipelined HTTP/1.1 requests are answered in order, and a client
/// that half-closes after its request still gets its answer (RFC 9112 §9.6; a client that
/// really left is found by the next write).
pub fn apply_session_limits(session: &mut Session, limits: &LimitsSection) {
    if session.get_keepalive().is_some() {
        // `Some(0)` is Pingora's "no limit": at least one second
        let secs = limits.client_idle_timeout.as_secs().max(1);
        session.set_keepalive(Some(secs));
    }
    if session.is_http2() {
        // HTTP/1 writes are bounded by `ClientStream` already, at no cost per write
        session.set_write_timeout(Some(limits.client_write_timeout));
    }
    session.set_pipelining_enabled(true);
    session.set_abort_on_close(false);
}

/// Descriptors kept out of `limits.max_connections`' automatic value: listeners, the
/// upstream pool's idle connections, files, the watcher.
const RESERVED_FDS: u64 = 64;

/// The automatic `limits.max_connections` for an open-files limit: every client connection
/// in a chat request also holds an upstream connection, so half of what is left after a
/// reserve; at least 16.
pub fn connections_for(open_files: u64) -> usize {
    let n = open_files.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(n).unwrap_or(usize::MAX).max(16)
}

/// The process's open-files limit (the soft one).
fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// `limits.max_connections` when the config leaves it `null`.
pub fn auto_max_connections() -> usize {
    connections_for(open_files_limit())
}

/// Raise the soft open-files limit to the hard one (as nginx's `worker_rlimit_nofile` and
/// Go's runtime do): the soft default of 1024 is what let idle connections lock every
/// other client out. Returns the limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Answer a connection beyond `limits.max_connections` with 503 and close it. What the
/// client already sent is read and dropped for a moment first: closing a socket with
/// unread bytes resets it, and the reset can destroy the answer before it is read.
async fn refuse_connection(mut stream: Stream, limit: usize) {
    let body = ApiError::new(
        503,
        "server_error",
        "server_overloaded",
        format!(
            "The proxy has {limit} client connections open (limits.max_connections); retry shortly"
        ),
    )
    .body();
    let body = String::from_utf8_lossy(&body);
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await?;
        let mut sink = [0u8; 4096];
        let mut drained = 0;
        while drained < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// The proxy service's connection handler: counts the connection (refusing it beyond
/// `limits.max_connections`), wraps its stream in a [`ClientStream`] and hands it to
/// Pingora's HTTP proxy.
pub struct ClientApp {
    pub proxy: Arc<HttpProxy<K2Proxy>>,
    pub app: Arc<App>,
    /// Register each connection with the runtime of the thread that serves it
    /// ([`rehome`]); for Pingora's runtime without work stealing.
    pub rehome: bool,
}

/// Register an accepted TCP connection with the runtime of the calling thread, and return
/// it as a stream of that runtime.
///
/// Without work stealing each worker thread runs a runtime of its own. Pingora accepts on
/// one of them and hands each connection to a random one, but the socket stays registered
/// with the accepting runtime: every read that has to wait is then woken by the accepting
/// thread, which wakes the serving one in turn (an eventfd write and a second wake-up per
/// read, for half of all connections on two threads). The socket is duplicated, the
/// duplicate registered here, and the accepted copy dropped (deregistered and closed); the
/// connection itself is untouched, and bytes the client already sent wait in the socket.
/// A stream that is not a TCP connection, or whose duplicate cannot be made, is returned as
/// it is.
pub fn rehome(stream: Stream) -> Stream {
    use pingora::protocols::l4::stream::Stream as L4Stream;
    use std::os::fd::{AsRawFd, FromRawFd};
    let Some(l4) = stream.as_any().downcast_ref::<L4Stream>() else {
        return stream;
    };
    let peer = match l4.get_socket_digest().and_then(|d| d.peer_addr().cloned()) {
        Some(peer @ pingora::protocols::l4::socket::SocketAddr::Inet(_)) => peer,
        _ => return stream,
    };
    // SAFETY: duplicates a descriptor `stream` owns and keeps open for this call; the
    // result is a new descriptor (or -1).
    let fd = unsafe { libc::fcntl(l4.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return stream;
    }
    // SAFETY: `fd` was just made and nothing else owns it. It shares the accepted socket's
    // file status flags, so it is non-blocking already, as tokio requires.
    let dup = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let Ok(dup) = tokio::net::TcpStream::from_std(dup) else {
        return stream;
    };
    drop(stream);
    let mut rehomed = L4Stream::from(dup);
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(peer));
    rehomed.set_socket_digest(digest);
    Box::new(rehomed)
}

#[async_trait]
impl ServerApp for ClientApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let snap = self.app.snapshot();
        let limits = &snap.config.limits;
        let (header, write) = (limits.client_header_timeout, limits.client_write_timeout);
        let _open = Held::new(&self.app.metrics.client_connections);
        let limit = limits
            .max_connections
            .unwrap_or(self.app.auto_max_connections);
        let open = usize::try_from(self.app.metrics.client_connections.get()).unwrap_or(0);
        if open > limit {
            drop(snap);
            self.app
                .metrics
                .overload_refusals
                .with_label_values(&["max_connections"])
                .inc();
            // Boxed: its 4 KiB drain buffer would otherwise sit in every connection's future.
            Box::pin(refuse_connection(stream, limit)).await;
            return None;
        }
        drop(snap);
        let stream = if self.rehome { rehome(stream) } else { stream };
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

    /// A connection accepted on one runtime as Pingora accepts it (an l4 stream with its
    /// peer address), the client's end, and the accepting runtime.
    fn accepted_elsewhere() -> (Stream, std::net::TcpStream, tokio::runtime::Runtime) {
        let accepting = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stream, client) = accepting.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (tcp, peer) = l.accept().await.unwrap();
            let mut s = pingora::protocols::l4::stream::Stream::from(tcp);
            let digest = SocketDigest::from_raw_fd(std::os::fd::AsRawFd::as_raw_fd(&s));
            digest.peer_addr.set(Some(peer.into())).unwrap();
            s.set_socket_digest(digest);
            (Box::new(s) as Stream, client)
        });
        (stream, client, accepting)
    }

    #[test]
    fn a_rehomed_connection_is_served_by_its_new_runtime_alone_and_loses_nothing() {
        use std::io::{Read, Write};
        let (stream, mut client, accepting) = accepted_elsewhere();
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().cloned());
        let old_fd = stream.id();
        // The client speaks before the connection moves.
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let serving = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut moved = serving.block_on(async { rehome(stream) });
        assert_ne!(moved.id(), old_fd, "a new descriptor");
        assert_eq!(
            moved
                .get_socket_digest()
                .and_then(|d| d.peer_addr().cloned()),
            peer,
            "the peer address carries over"
        );
        // Only the new runtime is left: a stream still registered with the accepting one
        // could not wait for input any more.
        drop(accepting);
        serving.block_on(async {
            let mut got = [0u8; 18];
            moved.read_exact(&mut got).await.unwrap();
            assert_eq!(&got, b"GET / HTTP/1.1\r\n\r\n");
            // A read that has to wait is woken by this runtime.
            let later = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                client.write_all(b"more").unwrap();
                client
            });
            let mut more = [0u8; 4];
            tokio::time::timeout(Duration::from_secs(5), moved.read_exact(&mut more))
                .await
                .expect("woken by the serving runtime")
                .unwrap();
            assert_eq!(&more, b"more");
            moved.write_all(b"answer").await.unwrap();
            moved.flush().await.unwrap();
            let mut client = later.join().unwrap();
            let mut answer = [0u8; 6];
            client.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"answer");
        });
    }

    #[test]
    fn a_stream_that_is_not_a_tcp_connection_is_left_as_it_is() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, _b) = tokio::net::UnixStream::pair().unwrap();
            let s: Stream = Box::new(pingora::protocols::l4::stream::Stream::from(a));
            let fd = s.id();
            assert_eq!(rehome(s).id(), fd);
        });
    }

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

    #[test]
    fn bare_pingora_errors_get_a_json_body_and_nothing_else_is_touched() {
        let bare = b"HTTP/1.1 400 Bad Request\r\nServer: Pingora\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Length: 0\r\nCache-Control: private, no-store\r\nConnection: close\r\n\r\n";
        let out = error_body_for(bare).expect("rewritten");
        let text = std::str::from_utf8(&out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Type: application/json\r\n"));
        assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
        assert!(head.contains("\r\nConnection: close"));
        assert!(!head.contains("Pingora"));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let five = String::from_utf8_lossy(bare).replace("400 Bad Request", "502 Bad Gateway");
        let out = error_body_for(five.as_bytes()).unwrap();
        assert!(String::from_utf8_lossy(&out).contains("\"type\":\"server_error\""));
        // the proxy's own answers, bodies and partial heads pass as they are
        for other in [
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"[..],
            &b"HTTP/1.1 200 OK\r\nServer: Pingora\r\nContent-Length: 0\r\n\r\n"[..],
            &bare[..40],
            b"data: {\"x\":1}\n\n",
        ] {
            assert!(error_body_for(other).is_none(), "{other:?}");
        }
    }

    #[test]
    fn the_automatic_connection_cap_follows_the_open_files_limit() {
        assert_eq!(connections_for(1024), 480);
        assert_eq!(connections_for(65_536), 32_736);
        assert_eq!(connections_for(10), 16, "never below a floor");
        assert!(connections_for(u64::MAX) > 1 << 40);
    }

    #[test]
    fn the_request_version_is_read_at_every_split() {
        let cases: [(&[u8], bool); 4] = [
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\n\r\n",
                true,
            ),
            (b"GET / HTTP/1.1\nHost: a\n\n", true),
            (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", false),
            (b"GET /HTTP/1.1x HTTP/1.0\r\nX: HTTP/1.1\r\n\r\n", false),
        ];
        for (head, http11) in cases {
            for cut in 0..=head.len() {
                let now = Instant::now();
                let mut c = HeadClock::new(T, now);
                c.on_read(&head[..cut], now);
                c.on_read(&head[cut..], now);
                assert_eq!(c.may_send_interim(), http11, "{head:?} at {cut}");
                c.on_write(b"HTTP/1.1 200 OK\r\n\r\n");
                assert!(!c.may_send_interim(), "answered");
            }
        }
        // the next request on the connection is judged on its own line
        let now = Instant::now();
        let mut c = HeadClock::new(T, now);
        c.on_read(b"GET / HTTP/1.1\r\n\r\n", now);
        c.on_write(b"HTTP/1.1 200 OK\r\n\r\n");
        c.on_read(b"GET / HTTP/1.0\r\n\r\n", now);
        assert!(!c.may_send_interim());
    }
}

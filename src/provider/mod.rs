//! The upstreams: one folder per web chat (`k2think`, `zai`), each with its request
//! building, stream decoding (a [`crate::core::Decoder`]), error classification and, where
//! the upstream needs them, identities and side calls (guests, chats, captcha proofs). The
//! [`Provider`] trait is all the proxy's exchange knows of an upstream; side calls go
//! through the small [`SideCalls`] seam, so no provider sees Pingora or an HTTP session.
//!
//! Adding a provider: a folder here with its settings (the config kind), codec and a
//! `runtime` implementing [`Provider`]; its mock under `mock/`; one arm where the proxy
//! makes the runtime from its settings.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

pub mod failure;
pub mod k2think;
pub mod target;
pub mod zai;

pub use k2think::decode::UpstreamFormat;

use crate::core::error::ApiError;
use crate::core::request::{Sampling, Turn};
use crate::core::Decoder;
use crate::pool::Outcome;
use crate::secret::Secret;
use failure::Failure;
use target::UpstreamTarget;

/// A current desktop Chrome (156, December 2026) on Windows, as the newest web clients of
/// the upstream send it (k2think-protocol.md §0.5 #10).
pub const CHROME_USER_AGENT: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36";

/// Human message out of an upstream error value: a string, or an object's
/// `message` (looking into `error`/`detail`), or the first array item.
pub fn error_message(v: &Value) -> String {
    fn find(v: &Value, depth: u8) -> Option<String> {
        if depth > 4 {
            return None;
        }
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => ["message", "msg", "error", "detail"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|x| find(x, depth + 1))),
            Value::Array(a) => a.first().and_then(|x| find(x, depth + 1)),
            _ => None,
        }
    }
    let msg = find(v, 0).unwrap_or_else(|| v.to_string());
    if msg.trim().is_empty() {
        "upstream error".to_string()
    } else {
        msg
    }
}

/// The head of a request to `target`: `host`, `content-length` (when there is a body) and
/// `accept-encoding: identity` (answers are read as they come, never decompressed), then
/// `headers` in order.
pub fn request_head<'h>(
    target: &UpstreamTarget,
    method: &str,
    path: &str,
    body_len: usize,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) -> Result<http::request::Parts, String> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", target.authority.as_str());
    if body_len > 0 || method == "POST" {
        b = b.header("content-length", body_len);
    }
    b = b.header("accept-encoding", "identity");
    for (k, v) in headers {
        b = b.header(k, v);
    }
    b.body(())
        .map(|r| r.into_parts().0)
        .map_err(|e| format!("cannot build the request: {e}"))
}

/// A boxed future, so [`Provider`] and [`SideCalls`] can be used as trait objects.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A small HTTP call a provider makes besides the completion itself (a guest sign-in, a
/// home page to scrape, a chat to create or delete, a captcha proof): sent and read whole,
/// bounded in size and time.
#[derive(Debug)]
pub struct SideCall<'a> {
    pub target: &'a UpstreamTarget,
    pub method: &'static str,
    /// Path and query.
    pub path: String,
    /// Besides `host`, `accept-encoding: identity` and `content-length`, which the seam sets.
    pub headers: Vec<(String, String)>,
    pub body: Option<Bytes>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub tls_verify: bool,
    /// Most body bytes read (more is an error).
    pub limit: usize,
    /// The whole call's deadline.
    pub timeout: Duration,
}

/// A side call's answer.
#[derive(Debug)]
pub struct SideAnswer {
    pub status: u16,
    pub body: Bytes,
}

/// Who sends side calls (the proxy, through Pingora's connector; a test, through anything).
/// Errors name the failing step, never a header value.
pub trait SideCalls: Send + Sync {
    fn send<'a>(&'a self, call: SideCall<'a>) -> Pending<'a, Result<SideAnswer, String>>;
}

/// How a provider's upstream connections behave.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub connect_timeout: Duration,
    /// Until the response head (and, before commit, the first usable event).
    pub header_timeout: Duration,
    /// Longest silence inside an answer.
    pub idle_timeout: Duration,
    /// How long an idle connection is kept for reuse.
    pub keepalive: Duration,
    pub tls_verify: bool,
    /// Streams per HTTP/2 connection (0: Pingora's default).
    pub h2_streams: usize,
}

/// Whose credentials one attempt sends.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// Stable id for "tried already" (a pool entry, a guest); `None`: nobody's (guest
    /// access without a token).
    pub id: Option<u64>,
    pub token: Option<Secret>,
    /// The account id the upstream signs with (Z.AI), empty where none is needed.
    pub user_id: String,
    /// The identity is a pool entry (its outcome goes to the pool's rules).
    pub pooled: bool,
}

/// Why no identity could be had for another attempt.
#[derive(Debug)]
pub enum NoIdentity {
    /// Every identity was tried by this request.
    AllTried,
    /// Every token is cooling or disabled (`retry_after`: the earliest end).
    Exhausted(Option<Duration>),
    /// Nothing can be had and nothing will help: the client's error.
    Final(ApiError),
    /// Getting one failed (a guest sign-in, say): counts as a failed attempt.
    Failed(String),
}

/// What one request asks of its provider, in neutral terms.
#[derive(Debug)]
pub struct Ask<'a> {
    /// The client's model id and the upstream's.
    pub model: &'a str,
    pub upstream_model: &'a str,
    /// The model reasons (and the request did not turn it off) / takes images.
    pub thinking: bool,
    pub images: bool,
    pub effort: Option<&'static str>,
    /// The conversation as it goes upstream (tool instructions already in it).
    pub turns: &'a [Turn],
    pub sampling: &'a Sampling,
    /// The request's chat id (K2Think's Referer).
    pub chat_id: &'a str,
    /// The body built at intake for a provider whose body is the same on every attempt
    /// (K2Think, whose body `count_tokens` and `probe` also build); providers that sign or
    /// build per attempt ignore it.
    pub body: &'a Bytes,
}

/// Something an attempt left upstream that is removed after the answer (Z.AI's chat under
/// `cleanup: delete`): its owner's token and its id.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub token: Secret,
    pub id: String,
}

/// The completion request of one attempt.
#[derive(Debug)]
pub struct Outbound {
    /// Method, path and headers (`host` and `content-length` included).
    pub head: http::request::Parts,
    pub body: Bytes,
    pub leftover: Option<Leftover>,
}

/// An upstream web chat, as the exchange sees it. Everything but the I/O of
/// [`Provider::identity`], [`Provider::request`] and [`Provider::clean_up`] (which go
/// through [`SideCalls`]) is pure.
pub trait Provider: Send + Sync {
    /// Its name in errors and logs ("K2Think", "Z.AI").
    fn title(&self) -> &'static str;
    fn target(&self) -> &UpstreamTarget;
    fn timing(&self) -> Timing;
    /// Attempts per request (each with another identity where there is one).
    fn max_attempts(&self) -> u32;
    /// An identity this request has not tried (`tried`: ids already used); `attempt` counts
    /// from 0.
    fn identity<'a>(
        &'a self,
        io: &'a dyn SideCalls,
        tried: &'a [u64],
        attempt: u32,
    ) -> Pending<'a, Result<Identity, NoIdentity>>;
    /// How an attempt went, for the identity's rules; pool events (sign-in work) for the
    /// proxy's updater.
    fn report(&self, who: &Identity, outcome: &Outcome) -> Vec<crate::pool::PoolEvent>;
    /// The completion request of one attempt for `who`.
    fn request<'a>(
        &'a self,
        io: &'a dyn SideCalls,
        who: &'a Identity,
        ask: &'a Ask<'a>,
    ) -> Pending<'a, Result<Outbound, Failure>>;
    /// A non-2xx answer: what it means for the identity, the retry and the client.
    fn status_failure(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        content_type: &str,
        body: &[u8],
    ) -> Failure;
    /// A 2xx answer that carried an error (`code` as the decoder read it) or nothing usable.
    fn body_failure(&self, code: Option<i64>, message: String) -> Failure;
    /// Whether another attempt may help after `failure`.
    fn retries(&self, failure: &Failure) -> bool {
        failure.retryable(&[])
    }
    /// The decoder of one answer.
    fn decoder(&self, format: UpstreamFormat) -> Box<dyn Decoder>;
    /// Remove what the request's attempts left upstream; failures are logged, never the
    /// client's problem.
    fn clean_up<'a>(&'a self, _io: &'a dyn SideCalls, _left: Vec<Leftover>) -> Pending<'a, ()> {
        Box::pin(async {})
    }
    /// When a token of its pool is usable again, for a 429's `Retry-After`.
    fn pool_wait(&self) -> Option<Duration> {
        None
    }
    /// Readiness and counts for `/ready` and `/admin/providers` (`kind`, `ready`, `mode`,
    /// token or guest counts; tokens never shown).
    fn status(&self) -> Value;
}

//! Mock K2Think upstream: an Open WebUI-shaped HTTP server imitating the K2Think web chat,
//! for tests, benches and demos. Two personalities: the old host www.k2think.ai
//! (`k2think-protocol.md` §1–§5, [`MockConfig::default`]) and K2 Horizon on chat.ifm.ai
//! (§0.5, [`MockConfig::horizon`]); `legacy_guest_400` makes the guest path answer 400, as
//! the old host now does.
//!
//! Start it in-process with [`MockServer::start`] or by hand with the `k2mock` binary.
//! [`zai`] is the Z.AI mock; [`MockUpstream`] starts either (one mock per provider behind one
//! harness). Only built with the `mock` feature, which tests and benches get on their own.
//! Every answer is deterministic ([`reply_for`], [`markup_for`]) and shaped by
//! [`Directives`] taken from the config, the last user message (`[[mock: key=value; ...]]`)
//! and the bearer token (`name;key=value;...`), later wins.

mod body;
pub mod directives;
pub mod script;
mod server;
#[cfg(test)]
mod tests;
mod util;
pub mod zai;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use directives::{Delivery, Directives, End, Fault, Form, JsonStyle, RetryAfter};
pub use script::{last_user_text, markup_for, reply_for, DETAIL_EVENT};
pub use server::MockServer;

/// What to start: one mock per provider (see [`MockUpstream::start`]).
#[derive(Debug, Clone)]
pub enum UpstreamConfig {
    /// K2Think / K2 Horizon ([`MockServer`]).
    K2Think(MockConfig),
    /// Z.AI ([`zai::ZaiMock`]).
    Zai(zai::ZaiMockConfig),
}

/// A running mock upstream of either provider. The common part (start, address, shutdown) is
/// here; each mock's own controls (records, gates, front-end version, ...) are on the variant.
pub enum MockUpstream {
    K2Think(MockServer),
    Zai(zai::ZaiMock),
}

impl MockUpstream {
    /// Binds `listen` (port 0 picks one) and serves on the current tokio runtime.
    pub async fn start(listen: SocketAddr, cfg: UpstreamConfig) -> io::Result<MockUpstream> {
        Ok(match cfg {
            UpstreamConfig::K2Think(c) => {
                MockUpstream::K2Think(MockServer::start(listen, c).await?)
            }
            UpstreamConfig::Zai(c) => MockUpstream::Zai(zai::ZaiMock::start(listen, c).await?),
        })
    }

    /// The provider's config name: `k2think` or `zai`.
    pub fn provider(&self) -> &'static str {
        match self {
            MockUpstream::K2Think(_) => "k2think",
            MockUpstream::Zai(_) => "zai",
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            MockUpstream::K2Think(m) => m.addr(),
            MockUpstream::Zai(m) => m.addr(),
        }
    }

    /// `http://IP:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Stops accepting and drops every open connection.
    pub async fn shutdown(self) {
        match self {
            MockUpstream::K2Think(m) => m.shutdown().await,
            MockUpstream::Zai(m) => m.shutdown().await,
        }
    }
}

/// Where sign-in hands out the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// JSON field `token` only.
    Body,
    /// `Set-Cookie: token=...` only.
    Cookie,
    /// Both (what Open WebUI does).
    #[default]
    Both,
}

/// An account accepted by `POST /api/v1/auths/signin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub email: String,
    pub password: String,
    pub token_in: TokenIn,
    /// When set, sign-in with the right password answers this status instead.
    pub fail_status: Option<u16>,
    /// Sleep before answering sign-in.
    pub delay: Duration,
}

impl Account {
    pub fn new(email: &str, password: &str) -> Account {
        Account {
            email: email.to_string(),
            password: password.to_string(),
            token_in: TokenIn::Both,
            fail_status: None,
            delay: Duration::ZERO,
        }
    }
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Directive defaults (layer 1).
    pub defaults: Directives,
    pub accounts: Vec<Account>,
    /// Lifetime of JWTs issued by sign-in (`exp` claim, and strict-token expiry).
    pub token_ttl: Duration,
    /// Keep a [`RecordedRequest`] for every request.
    pub record: bool,
    /// Model ids accepted by the chat endpoints and listed by `/api/models`.
    pub models: Vec<String>,
    /// Accept only unexpired sign-in tokens and `valid_tokens` (by token name).
    pub strict_tokens: bool,
    pub valid_tokens: Vec<String>,
    /// The old host as the newest clients report it: the guest chat endpoint answers 400.
    pub legacy_guest_400: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            defaults: Directives::default(),
            accounts: Vec::new(),
            token_ttl: Duration::from_secs(3600),
            record: true,
            models: vec![
                "MBZUAI-IFM/K2-Think-v2".to_string(),
                "MBZUAI-IFM/K2-Think".to_string(),
            ],
            strict_tokens: false,
            valid_tokens: Vec::new(),
            legacy_guest_400: false,
        }
    }
}

impl MockConfig {
    /// The upstream as it is today: K2 Horizon on chat.ifm.ai (see [`Directives::horizon`]).
    /// `MockConfig::default()` is the old host, www.k2think.ai, as it answered before.
    pub fn horizon() -> MockConfig {
        MockConfig {
            defaults: Directives::horizon(),
            models: vec![crate::provider::k2think::HORIZON_MODEL.to_string()],
            ..MockConfig::default()
        }
    }
}

/// One request the mock received, and what it did with it so far.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The `Authorization: Bearer` value.
    pub bearer: Option<String>,
    /// The `token` cookie value.
    pub cookie: Option<String>,
    pub body: Vec<u8>,
    pub json: Option<serde_json::Value>,
    pub received_at: Instant,
    /// Status the mock chose (0 when it closed the connection without a response).
    pub response_status: u16,
    /// SSE events handed to the connection so far.
    pub events_written: usize,
    /// Whether the whole response was handed over.
    pub completed: bool,
}

impl RecordedRequest {
    /// First header value with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

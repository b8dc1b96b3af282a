//! The operator's YAML configuration: schema, defaults, `${ENV}` expansion and validation.
//!
//! Every section rejects unknown keys, so a typo is an error that names the key instead of a
//! setting that silently does nothing. `Config::load` parses and validates; errors carry the
//! dotted path of the offending key and, where the parser knows it, the line and column.
//! The commented reference for every key is `conf/k2proxy.yaml`.

pub mod diff;
pub mod fleet;
pub mod providers;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::provider::target::UpstreamTarget;
use crate::values::{de_duration, de_opt_string, de_string, de_string_list, de_string_map};
pub use crate::values::{expand_env, ByteSize};

/// A configuration that failed to load: where, which key, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<inline>`) the error comes from.
    pub source: String,
    /// Dotted path of the key at fault (`upstream.mode`, `models[1].id`); empty for the document.
    pub key: String,
    /// What is wrong, in words.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub auth: AuthSection,
    pub upstream: UpstreamSection,
    pub models: Vec<ModelEntry>,
    pub pool: PoolSection,
    pub retry: RetrySection,
    pub reasoning: ReasoningSection,
    pub tools: ToolsSection,
    pub anthropic: AnthropicSection,
    pub responses: ResponsesSection,
    pub limits: LimitsSection,
    pub updater: UpdaterSection,
    pub admin: AdminSection,
    pub metrics: MetricsSection,
    pub logging: LoggingSection,
    /// Upstreams by name (see [`providers`]); the K2Think provider may instead come from
    /// the top-level `upstream`, `pool` and `updater` keys.
    pub providers: providers::Providers,
    /// Fleet mode (several instances sharing state on Redis); absent: this instance alone.
    pub fleet: Option<fleet::FleetSection>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Addresses the OpenAI-compatible API listens on.
    #[serde(deserialize_with = "de_string_list")]
    pub listen: Vec<String>,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle worker threads take over other threads' tasks (Pingora's work stealing).
    /// Off by default: each connection stays on one thread, its socket registered with
    /// that thread's runtime, and idle upstream connections are reused first on the
    /// thread that opened them, so a read wakes only the thread that serves it (faster:
    /// BENCHMARKS.md, issue 20).
    pub work_stealing: bool,
    /// Accept cleartext HTTP/2 (prior knowledge) next to HTTP/1.1 on the same port.
    pub h2c: bool,
    /// On SIGTERM/SIGQUIT, keep serving in-flight streams this long.
    #[serde(deserialize_with = "de_duration")]
    pub grace_period: Duration,
    /// After the grace period, how long the runtimes get to stop.
    #[serde(deserialize_with = "de_duration")]
    pub graceful_shutdown_timeout: Duration,
    /// Pingora pid file (daemon mode).
    #[serde(deserialize_with = "de_opt_string")]
    pub pid_file: Option<String>,
    /// Unix socket used to hand listeners over during a graceful upgrade (`-u`).
    #[serde(deserialize_with = "de_opt_string")]
    pub upgrade_sock: Option<String>,
    /// Where stderr goes in daemon mode.
    #[serde(deserialize_with = "de_opt_string")]
    pub error_log: Option<String>,
    /// CA bundle used to verify the upstream; system roots when unset.
    #[serde(deserialize_with = "de_opt_string")]
    pub ca_file: Option<String>,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive_pool_size: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: vec!["0.0.0.0:8080".to_string()],
            threads: 2,
            work_stealing: false,
            h2c: true,
            grace_period: Duration::from_secs(60),
            graceful_shutdown_timeout: Duration::from_secs(5),
            pid_file: None,
            upgrade_sock: None,
            error_log: None,
            ca_file: None,
            upstream_keepalive_pool_size: 128,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Client API keys; none means the API is open to anyone who can reach it.
    pub api_keys: Vec<ApiKeyEntry>,
}

/// A client key: either a bare string or `{name, key}` (the name goes to logs, never the key).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiKeyEntry {
    pub name: String,
    pub key: String,
}

impl<'de> Deserialize<'de> for ApiKeyEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Named {
            #[serde(deserialize_with = "de_string")]
            name: String,
            #[serde(deserialize_with = "de_string")]
            key: String,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Bare(String),
            Named(Named),
        }
        match Either::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a key string or a map with `name` and `key`")
        })? {
            Either::Bare(key) => {
                let key = expand_env(&key).map_err(serde::de::Error::custom)?;
                Ok(ApiKeyEntry {
                    name: String::new(),
                    key,
                })
            }
            Either::Named(n) => Ok(ApiKeyEntry {
                name: n.name,
                key: n.key,
            }),
        }
    }
}

/// Which K2Think endpoint family to use.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamMode {
    /// `user` when any token is configured, else `guest`.
    #[default]
    Auto,
    /// `/api/chat/completions` with a bearer token from the pool.
    User,
    /// `/api/guest/chat/completions`, no token.
    Guest,
}

/// Shape of the upstream request body.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadStyle {
    /// `stream`, `model`, `messages`, `params`, `features`.
    #[default]
    Minimal,
    /// The full Open WebUI body the ZX proxies send (adds `variables`, `model_item`,
    /// `background_tasks`, and fresh `chat_id`/`id`/`session_id`).
    Webui,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// Scheme, host and optional port of the K2Think web chat.
    #[serde(deserialize_with = "de_string")]
    pub base_url: String,
    pub mode: UpstreamMode,
    /// Path of the authenticated chat endpoint.
    #[serde(deserialize_with = "de_string")]
    pub user_path: String,
    /// Path of the guest chat endpoint.
    #[serde(deserialize_with = "de_string")]
    pub guest_path: String,
    pub payload: PayloadStyle,
    /// Ask the upstream for SSE (`stream: true`); every answer form is accepted either way.
    pub stream: bool,
    /// TCP (and TLS) connect timeout.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// Time allowed until the upstream response head and first body bytes (prefill).
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    /// Longest silence between two upstream body chunks once streaming.
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    #[serde(deserialize_with = "de_duration")]
    pub keepalive: Duration,
    /// Verify the upstream TLS certificate and host name.
    pub tls_verify: bool,
    /// Browser-like headers sent upstream.
    pub headers: HeaderSection,
    /// The thinking field every assistant message sent upstream carries (the client's own
    /// reasoning, else `""`): one of [`crate::provider::k2think::THINKING_FIELDS`], or `""` for none.
    #[serde(deserialize_with = "de_string")]
    pub thinking_field: String,
    /// How the upstream's SSE `content` values relate: each the whole text so far
    /// (`cumulative`, K2Think and K2 Horizon), each a new piece (`incremental`), or guessed
    /// from the text (`auto`, fooled by repetitive text). Applies to new requests on reload.
    pub content_delivery: crate::provider::k2think::decode::ContentDelivery,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            base_url: "https://chat.ifm.ai".to_string(),
            mode: UpstreamMode::Auto,
            user_path: "/api/chat/completions".to_string(),
            guest_path: "/api/guest/chat/completions".to_string(),
            payload: PayloadStyle::Minimal,
            stream: true,
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            keepalive: Duration::from_secs(60),
            tls_verify: true,
            headers: HeaderSection::default(),
            thinking_field: "reasoning".to_string(),
            content_delivery: crate::provider::k2think::decode::ContentDelivery::Cumulative,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderSection {
    #[serde(deserialize_with = "de_string")]
    pub user_agent: String,
    /// Client hints of the same browser as `user_agent` (empty: not sent).
    #[serde(deserialize_with = "de_string")]
    pub sec_ch_ua: String,
    #[serde(deserialize_with = "de_string")]
    pub sec_ch_ua_mobile: String,
    #[serde(deserialize_with = "de_string")]
    pub sec_ch_ua_platform: String,
    /// Origin sent upstream; unset: the base URL.
    #[serde(deserialize_with = "de_opt_string")]
    pub origin: Option<String>,
    /// Referer sent upstream; `{chat_id}` is replaced by the request's chat id (webui
    /// payload). Unset: `<base_url>/guest` in guest mode, `<base_url>/` in user mode.
    #[serde(deserialize_with = "de_opt_string")]
    pub referer: Option<String>,
    #[serde(deserialize_with = "de_string")]
    pub accept_language: String,
    /// More headers, name to value.
    #[serde(deserialize_with = "de_string_map")]
    pub extra: BTreeMap<String, String>,
}

impl Default for HeaderSection {
    fn default() -> Self {
        HeaderSection {
            user_agent: CHROME_USER_AGENT.to_string(),
            sec_ch_ua: CHROME_SEC_CH_UA.to_string(),
            sec_ch_ua_mobile: "?0".to_string(),
            sec_ch_ua_platform: "\"Windows\"".to_string(),
            origin: None,
            referer: None,
            accept_language: "en-US,en;q=0.9".to_string(),
            extra: BTreeMap::new(),
        }
    }
}

pub use crate::provider::CHROME_USER_AGENT;
/// The `sec-ch-ua` brand list of that Chrome.
pub const CHROME_SEC_CH_UA: &str =
    "\"Chromium\";v=\"156\", \"Google Chrome\";v=\"156\", \"Not_A Brand\";v=\"99\"";

/// A model the proxy offers.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Public id clients send.
    #[serde(deserialize_with = "de_string")]
    pub id: String,
    /// Model id sent upstream.
    #[serde(deserialize_with = "de_string")]
    pub upstream: String,
    /// Show reasoning (`true`) or drop it (`false`, the `-nothink` variants).
    #[serde(default = "yes")]
    pub reasoning: bool,
    /// Other names that resolve to this model (not listed by `/v1/models`). A name with
    /// `*` is a pattern (`*` matches any run of characters, `claude-*`): a client name that
    /// is no id or exact alias goes to the model whose matching pattern has the most
    /// literal characters (the earlier model on a tie).
    #[serde(default, deserialize_with = "de_string_list")]
    pub aliases: Vec<String>,
    #[serde(default = "owner", deserialize_with = "de_string")]
    pub owned_by: String,
    /// Whether the model takes images (`image_url` parts); `false`: a request with an image
    /// gets a 400 naming the model instead of an upstream failure.
    #[serde(default = "yes")]
    pub images: bool,
    /// The provider (a name under `providers`) that serves it; empty: the K2Think one.
    #[serde(default, deserialize_with = "de_string")]
    pub provider: String,
}

fn yes() -> bool {
    true
}

/// The model a client's name resolves to: by id or exact alias, else by the alias pattern
/// with the most literal characters (see [`ModelEntry::aliases`]).
pub fn resolve_model<'m>(models: &'m [ModelEntry], name: &str) -> Option<&'m ModelEntry> {
    if let Some(m) = models
        .iter()
        .find(|m| m.id == name || m.aliases.iter().any(|a| a == name && !a.contains('*')))
    {
        return Some(m);
    }
    let mut best: Option<(usize, &ModelEntry)> = None;
    for m in models {
        for a in m.aliases.iter().filter(|a| a.contains('*')) {
            let literal = a.len() - a.matches('*').count();
            if best.is_none_or(|(b, _)| literal > b) && glob_match(a.as_bytes(), name.as_bytes()) {
                best = Some((literal, m));
            }
        }
    }
    best.map(|(_, m)| m)
}

/// `name` matches `pattern`, where `*` stands for any run of bytes (none included).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    // greedy with backtracking to the last star: linear for patterns with few stars
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn owner() -> String {
    "MBZUAI".to_string()
}

/// The models served when the file lists none: K2 Horizon, or with `base_url` on the old
/// host (www.k2think.ai) that host's K2-Think-v2 catalogue.
pub fn default_models(base_url: &str) -> Vec<ModelEntry> {
    let legacy = UpstreamTarget::parse(base_url).is_ok_and(|t| {
        t.host
            .eq_ignore_ascii_case(crate::provider::k2think::LEGACY_HOST)
            || t.host.eq_ignore_ascii_case("k2think.ai")
    });
    if legacy {
        legacy_models()
    } else {
        horizon_models()
    }
}

/// Alias patterns that send an agent's vendor model names (`claude-…`, `gpt-…`) to the
/// reasoning model, and the small fast ones to the `-nothink` one.
const VENDOR_NAMES: [&str; 6] = ["claude-*", "gpt-*", "codex-*", "o1*", "o3*", "o4*"];
const VENDOR_FAST_NAMES: [&str; 3] = ["claude-*haiku*", "gpt-*mini*", "gpt-*nano*"];

fn model_entry(
    id: &str,
    upstream: &str,
    reasoning: bool,
    aliases: &[&str],
    owned_by: &str,
    images: bool,
) -> ModelEntry {
    ModelEntry {
        id: id.to_string(),
        upstream: upstream.to_string(),
        reasoning,
        aliases: aliases.iter().map(|a| a.to_string()).collect(),
        owned_by: owned_by.to_string(),
        images,
        provider: String::new(),
    }
}

/// K2 Horizon (text only), with and without reasoning; the K2-Think ids answer as aliases
/// so that existing clients and configs keep working.
pub fn horizon_models() -> Vec<ModelEntry> {
    let up = crate::provider::k2think::HORIZON_MODEL;
    vec![
        model_entry(
            "IFM/K2-Horizon",
            up,
            true,
            &[
                "K2-Horizon",
                up,
                "MBZUAI-IFM/K2-Think-v2",
                "MBZUAI-IFM/K2-Think",
                "K2-Think",
                "k2-think",
            ]
            .iter()
            .chain(&VENDOR_NAMES)
            .copied()
            .collect::<Vec<_>>(),
            "IFM",
            false,
        ),
        model_entry(
            "IFM/K2-Horizon-nothink",
            up,
            false,
            &[
                "K2-Horizon-nothink",
                "MBZUAI-IFM/K2-Think-v2-nothink",
                "MBZUAI-IFM/K2-Think-nothink",
                "K2-Think-nothink",
            ]
            .iter()
            .chain(&VENDOR_FAST_NAMES)
            .copied()
            .collect::<Vec<_>>(),
            "IFM",
            false,
        ),
    ]
}

/// The old host's catalogue (www.k2think.ai, K2-Think-v2, takes images).
/// The GLM models a Z.AI provider named `provider` offers by default: the provider's
/// catalogue (reasoning shown where the model thinks, images where it sees). Guests get
/// the GLM-4.7 family only (the others answer "not available for current user level").
pub fn zai_models(provider: &str) -> Vec<ModelEntry> {
    crate::provider::zai::models::catalogue()
        .iter()
        .map(|z| {
            let mut m = model_entry(z.id, z.upstream, z.thinking, &[], "zai", z.vision);
            m.provider = provider.to_string();
            m
        })
        .collect()
}

pub fn legacy_models() -> Vec<ModelEntry> {
    let up = crate::provider::k2think::LEGACY_MODEL;
    vec![
        model_entry(
            up,
            up,
            true,
            &["MBZUAI-IFM/K2-Think", "K2-Think", "k2-think"]
                .iter()
                .chain(&VENDOR_NAMES)
                .copied()
                .collect::<Vec<_>>(),
            "MBZUAI",
            true,
        ),
        model_entry(
            "MBZUAI-IFM/K2-Think-v2-nothink",
            up,
            false,
            &["MBZUAI-IFM/K2-Think-nothink", "K2-Think-nothink"]
                .iter()
                .chain(&VENDOR_FAST_NAMES)
                .copied()
                .collect::<Vec<_>>(),
            "MBZUAI",
            true,
        ),
    ]
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSection {
    /// Bearer tokens (JWTs) for user mode.
    #[serde(deserialize_with = "de_string_list")]
    pub tokens: Vec<String>,
    /// File with one token per line (`#` comments and blank lines ignored).
    #[serde(deserialize_with = "de_opt_string")]
    pub tokens_file: Option<String>,
    /// Strikes (401/403/5xx/timeouts) before a token is disabled.
    pub max_failures: u32,
    /// Cooldown after a 429 without `Retry-After`; doubles on each further 429.
    #[serde(deserialize_with = "de_duration")]
    pub cooldown: Duration,
    /// Upper bound of that exponential cooldown.
    #[serde(deserialize_with = "de_duration")]
    pub max_cooldown: Duration,
    /// Failures in a row (any token) that start a background refresh of every account;
    /// only when the pool holds more than 2 tokens.
    pub consecutive_failures: u32,
}

impl Default for PoolSection {
    fn default() -> Self {
        PoolSection {
            tokens: Vec::new(),
            tokens_file: None,
            max_failures: 3,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
            consecutive_failures: 2,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Upstream attempts per client request, all before the client sees a byte.
    pub max_attempts: u32,
    /// Upstream statuses that move on to the next attempt (with another token in user mode).
    pub on_status: Vec<u16>,
    /// Pause before retrying when the same credential is used again (guest mode).
    #[serde(deserialize_with = "de_duration")]
    pub backoff: Duration,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            max_attempts: 3,
            on_status: vec![401, 403, 408, 429, 500, 502, 503, 504],
            backoff: Duration::from_millis(200),
        }
    }
}

/// Where reasoning goes in the output.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningOutput {
    /// `delta.reasoning_content` / `message.reasoning_content`.
    #[default]
    ReasoningContent,
    /// Inline `<think>…</think>` at the start of `content`.
    Inline,
    /// Never shown, for every model.
    Drop,
}

/// Where `chat_template_kwargs.reasoning_effort` goes in the upstream body.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EffortPlacement {
    /// `{"extra_body": {"chat_template_kwargs": {…}}}`, as the newest web clients send it.
    #[default]
    ExtraBody,
    /// `{"chat_template_kwargs": {…}}` at the top level.
    TopLevel,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReasoningSection {
    pub output: ReasoningOutput,
    /// Treat untagged text at the start of an answer as reasoning until `</think>` proves it
    /// (K2-Think-v2 sometimes omits the opening `<think>`). If the answer ends with no closing
    /// tag, that text is delivered as content too, so nothing is lost.
    pub implicit_think: bool,
    /// Reasoning effort sent when the client asks for none (`low`, `medium`, `high`);
    /// `null`: send none then (the upstream's own default applies).
    pub effort: Option<crate::core::request::Effort>,
    /// Where the effort goes in the upstream body.
    pub effort_placement: EffortPlacement,
}

impl Default for ReasoningSection {
    fn default() -> Self {
        ReasoningSection {
            output: ReasoningOutput::ReasoningContent,
            implicit_think: true,
            effort: Some(crate::core::request::Effort::Medium),
            effort_placement: EffortPlacement::ExtraBody,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest request body accepted (413 above it, checked on `Content-Length` first).
    pub max_body_bytes: ByteSize,
    /// Largest text file (decoded) inlined from a `file` content part.
    pub max_file_bytes: ByteSize,
    /// Largest `data:` image (decoded) in an `image_url` part.
    pub max_image_bytes: ByteSize,
    /// Most messages in one request (400 above it).
    pub max_messages: usize,
    /// Longest a chat request may take from arrival to its last byte, retries included:
    /// 504 before the answer started, an error ending after.
    #[serde(deserialize_with = "de_duration")]
    pub request_timeout: Duration,
    /// A request head must arrive whole within this (from the accept on a fresh
    /// connection, from its first byte on a kept-alive one); the connection is closed after.
    /// Read when a connection is accepted, like `client_write_timeout`.
    #[serde(deserialize_with = "de_duration")]
    pub client_header_timeout: Duration,
    /// A chat request body must arrive whole within this: 408 after.
    #[serde(deserialize_with = "de_duration")]
    pub client_body_timeout: Duration,
    /// A write to a client that has stopped reading is given up after this; the stream is
    /// dropped and counted as `client_abort`.
    #[serde(deserialize_with = "de_duration")]
    pub client_write_timeout: Duration,
    /// A kept-alive connection with no request in progress (HTTP/1.1 between requests, an
    /// HTTP/2 connection with no open stream) is closed after this, like nginx's
    /// `keepalive_timeout`. Whole seconds. HTTP/2 connections take a new value at restart.
    #[serde(deserialize_with = "de_duration")]
    pub client_idle_timeout: Duration,
    /// Client connections open at once; a connection beyond it gets 503 and is closed.
    /// `null`: half the process's open-files limit, less a reserve (the limit is raised to
    /// its hard maximum at start).
    pub max_connections: Option<usize>,
    /// Chat requests (all three APIs) in flight at once across all keys: 503
    /// `server_overloaded` with `Retry-After` beyond it. 0 = unlimited.
    pub max_requests: usize,
    /// Per client key (the key's name; the client address when no keys are configured).
    pub per_key: PerKeyLimits,
}

/// Concurrency and request-rate limits per client key; 429 with `Retry-After` above them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PerKeyLimits {
    /// Chat requests in flight at once; 0 = unlimited.
    pub concurrency: u32,
    /// Sustained chat requests per second (token bucket); 0 = unlimited.
    pub rate: f64,
    /// Requests allowed in a burst above the rate; 0 = max(1, rate).
    pub burst: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_body_bytes: ByteSize(10 * 1024 * 1024),
            max_file_bytes: ByteSize(2 * 1024 * 1024),
            max_image_bytes: ByteSize(8 * 1024 * 1024),
            max_messages: 1000,
            request_timeout: Duration::from_secs(600),
            client_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(60),
            client_write_timeout: Duration::from_secs(60),
            client_idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_requests: 1024,
            per_key: PerKeyLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ToolsSection {
    /// Replaces the built-in tool instructions; `{trigger_signal}` and `{tools_list}` are
    /// filled in. Unset: the built-in prompt.
    #[serde(deserialize_with = "de_opt_string")]
    pub prompt_template: Option<String>,
}

/// The Anthropic Messages surface (`/v1/messages`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AnthropicSection {
    /// When answers carry `thinking` blocks (for models that reason, and unless
    /// `reasoning.output` is `drop`).
    pub thinking_blocks: ThinkingBlocks,
}

/// When a Messages answer carries `thinking` blocks.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingBlocks {
    /// Only when the request turned thinking on (`thinking.type` `enabled` or
    /// `adaptive`), as Anthropic does.
    #[default]
    Auto,
    /// Whatever the request says.
    Always,
    /// Never.
    Never,
}

/// What `/v1/responses` does with a tool the emulation cannot run.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HostedTools {
    /// Leave the tool out of the request; a warning names its type and
    /// `k2proxy_hosted_tools_dropped_total{type}` counts it.
    #[default]
    Drop,
    /// Refuse the request with a 400 naming the tool.
    Refuse,
}

/// The OpenAI Responses surface (`POST /v1/responses`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesSection {
    /// Hosted tools (`web_search`, `file_search`, `code_interpreter`, `image_generation`,
    /// `mcp`, `tool_search`, …), which only OpenAI's servers run.
    pub hosted_tools: HostedTools,
    /// When a request asks for `reasoning.summary` (`auto`, `concise`, `detailed`), the
    /// reasoning is also written as the reasoning item's summary, with the summary events.
    pub reasoning_summary: bool,
}

impl Default for ResponsesSection {
    fn default() -> Self {
        ResponsesSection {
            hosted_tools: HostedTools::Drop,
            reasoning_summary: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpdaterSection {
    /// JSON lines `{"email": "...", "k2_password": "..."}` (`password` accepted too).
    /// Unset: no sign-in; the pool holds only configured tokens.
    #[serde(deserialize_with = "de_opt_string")]
    pub accounts_file: Option<String>,
    /// Sign every account in again this often (also at start).
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Refresh a token when this fraction of its JWT lifetime (`exp`) has passed.
    pub refresh_at: f64,
    /// Sign-ins running at once.
    pub max_parallel: usize,
    /// Time allowed for one sign-in request.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for UpdaterSection {
    fn default() -> Self {
        UpdaterSection {
            accounts_file: None,
            interval: Duration::from_secs(24 * 3600),
            refresh_at: 0.8,
            max_parallel: 4,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Bearer key for `/admin/*`. Unset: admin routes answer only to loopback clients.
    #[serde(deserialize_with = "de_opt_string")]
    pub key: Option<String>,
    /// Host names (no scheme, no port) the admin API answers to, besides IP addresses and
    /// `localhost`: the public name when it is reached through a reverse proxy.
    #[serde(deserialize_with = "de_string_list")]
    pub allowed_hosts: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Listener of the Prometheus `/metrics` endpoint; null disables it.
    #[serde(deserialize_with = "de_opt_string")]
    pub listen: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            listen: Some("127.0.0.1:9091".to_string()),
        }
    }
}

/// Access-log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` pairs.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// `error`, `warn`, `info`, `debug` or `trace`; `RUST_LOG` overrides it.
    #[serde(deserialize_with = "de_string")]
    pub level: String,
    /// One line per request on stdout (diagnostics go to stderr).
    pub access_log: bool,
    /// `plain` or `json`.
    pub format: LogFormat,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            level: "info".to_string(),
            access_log: true,
            format: LogFormat::Plain,
        }
    }
}

impl Config {
    /// Read, parse and validate a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_document(path).map(|(c, _)| c)
    }

    /// [`Config::load`], also giving the YAML document itself (which keys the file sets).
    pub fn load_with_document(path: &Path) -> Result<(Config, serde_yaml::Value), ConfigError> {
        let source = path.display().to_string();
        let text = read_config_text(path).map_err(|message| ConfigError {
            source: source.clone(),
            key: String::new(),
            message,
        })?;
        // An empty file (or one of comments only) would serve every default: guest mode, no
        // API keys, no admin key. From a file that is a truncated or half-written edit far
        // more often than an intent, so it is refused; `server: {}` asks for the defaults.
        // Read once as a document: for this check and for which keys the file sets. A
        // syntax error is left to `Config::parse`, which names its line and column.
        let doc = serde_yaml::from_str::<serde_yaml::Value>(&text).ok();
        if doc.as_ref().is_some_and(serde_yaml::Value::is_null) {
            return Err(ConfigError {
                source,
                key: String::new(),
                message: "the file is empty or holds only comments; refusing it (an empty \
                          config would drop every API key and the admin key). Write at least \
                          one section, e.g. `server: {}`, to run on the defaults"
                    .to_string(),
            });
        }
        let mut config = Config::parse(&text, &source)?;
        config.resolve_paths(path.parent());
        Ok((config, doc.unwrap_or_default()))
    }

    /// A reload from `self` (running) to `new` that drops every API key, or the admin key,
    /// is taken only when the file `doc` says so (`auth: {api_keys: []}`,
    /// `admin: {key: null}`): a key section lost to a bad edit must not open the API. `Ok`
    /// gives what an explicit drop removes, to be logged loudly; `Err` says why it is refused.
    pub fn check_dropped_guards(
        &self,
        new: &Config,
        doc: &serde_yaml::Value,
    ) -> Result<Vec<String>, String> {
        let sets = |section: &str, key: &str| {
            doc.get(section)
                .and_then(|s| s.as_mapping())
                .is_some_and(|m| m.contains_key(key))
        };
        let mut dropped = Vec::new();
        if !self.auth.api_keys.is_empty() && new.auth.api_keys.is_empty() {
            if !sets("auth", "api_keys") {
                return Err(format!(
                    "the new file has no auth.api_keys while {} key(s) are in force: refused, so that a lost section cannot open the API to everyone. To serve without keys, write `auth: {{api_keys: []}}`",
                    self.auth.api_keys.len()
                ));
            }
            dropped.push("every API key (auth.api_keys: []): the API is now open".to_string());
        }
        if self.admin.key.is_some() && new.admin.key.is_none() {
            if !sets("admin", "key") {
                return Err("the new file has no admin.key while one is in force: refused. To drop it, write `admin: {key: null}`".to_string());
            }
            dropped.push(
                "the admin key (admin.key: null): admin routes answer loopback only".to_string(),
            );
        }
        Ok(dropped)
    }

    /// Parse and validate configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let fail = |key: String, message: String| ConfigError {
            source: source.to_string(),
            key,
            message,
        };
        let empty = serde_yaml::from_str::<serde_yaml::Value>(text)
            .map(|v| v.is_null())
            .unwrap_or(false);
        let mut config: Config = if empty {
            Config::default()
        } else {
            let de = serde_yaml::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner();
                let mut message = redact_strings(&inner.to_string());
                if let Some(loc) = inner.location() {
                    let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                    if let Some(stripped) = message.strip_suffix(&suffix) {
                        message = stripped.to_string();
                    }
                    message = format!("{message} (line {}, column {})", loc.line(), loc.column());
                }
                let key = if key == "." { String::new() } else { key };
                // serde_yaml prefixes nested errors with its own path; ours is more exact.
                if let Some((head, tail)) = message.split_once(": ") {
                    if !head.contains(' ') && key.starts_with(head) {
                        message = tail.to_string();
                    }
                }
                fail(key, message)
            })?
        };
        config
            .adopt_providers()
            .map_err(|(key, message)| fail(key, message))?;
        config
            .validate()
            .map_err(|(key, message)| fail(key, message))?;
        Ok(config)
    }

    /// The name of the K2Think provider: its key under `providers`, else `k2think` (the
    /// top-level `upstream`, `pool` and `updater` keys).
    pub fn k2think_name(&self) -> &str {
        self.providers
            .iter()
            .find(|(_, p)| matches!(p, providers::ProviderEntry::K2think { .. }))
            .map_or(providers::K2THINK, |(n, _)| n.as_str())
    }

    /// The name of the provider that serves `model`.
    pub fn model_provider<'a>(&'a self, model: &'a ModelEntry) -> &'a str {
        if model.provider.is_empty() {
            self.k2think_name()
        } else {
            &model.provider
        }
    }

    /// The kind of the provider named `name` (`None`: no such provider).
    pub fn provider_kind(&self, name: &str) -> Option<&'static str> {
        if name == self.k2think_name() {
            return Some("k2think");
        }
        self.providers.get(name).map(providers::ProviderEntry::kind)
    }

    /// Fold a `providers` K2Think entry into the sections the K2Think code reads, fill in
    /// the default models (each provider's catalogue) and check that every model's provider
    /// exists.
    fn adopt_providers(&mut self) -> Result<(), (String, String)> {
        let mut k2 = None;
        for (name, p) in &mut self.providers {
            let providers::ProviderEntry::K2think {
                upstream,
                pool,
                updater,
            } = p
            else {
                continue;
            };
            if k2.is_some() {
                return Err((
                    format!("providers.{name}"),
                    "only one provider of kind k2think is supported".to_string(),
                ));
            }
            k2 = Some(name.clone());
            let taken = |top: bool, what: &str| -> Result<(), (String, String)> {
                if top {
                    return Err((
                        format!("providers.{name}.{what}"),
                        format!("`{what}` is also set at the top level; keep one of the two"),
                    ));
                }
                Ok(())
            };
            if let Some(u) = upstream.take() {
                taken(self.upstream != UpstreamSection::default(), "upstream")?;
                self.upstream = *u;
            }
            if let Some(u) = pool.take() {
                taken(self.pool != PoolSection::default(), "pool")?;
                self.pool = *u;
            }
            if let Some(u) = updater.take() {
                taken(self.updater != UpdaterSection::default(), "updater")?;
                self.updater = *u;
            }
        }
        for (name, p) in &self.providers {
            if let providers::ProviderEntry::Zai(z) = p {
                z.validate(&format!("providers.{name}"))?;
            }
        }
        if self.models.is_empty() {
            self.models = default_models(&self.upstream.base_url);
        }
        // A Z.AI provider no model names serves its whole catalogue.
        for (name, p) in &self.providers {
            if let providers::ProviderEntry::Zai(_) = p {
                if !self.models.iter().any(|m| &m.provider == name) {
                    self.models.extend(zai_models(name));
                }
            }
        }
        let k2 = self.k2think_name().to_string();
        for (i, m) in self.models.iter().enumerate() {
            if !m.provider.is_empty()
                && m.provider != k2
                && !self.providers.contains_key(&m.provider)
            {
                return Err((
                    format!("models[{i}].provider"),
                    format!(
                        "no provider is named `{}`; name one under `providers` (or leave it out for the K2Think provider)",
                        m.provider
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Relative file paths in the config are relative to the config file's directory.
    fn resolve_paths(&mut self, base: Option<&Path>) {
        let Some(base) = base else { return };
        for p in [
            self.pool.tokens_file.as_mut(),
            self.updater.accounts_file.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            let path = PathBuf::from(&*p);
            if path.is_relative() {
                *p = base.join(path).display().to_string();
            }
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if let Some(f) = &self.fleet {
            f.validate()?;
        }
        if self.server.listen.is_empty() {
            return err("server.listen", "at least one address is needed");
        }
        for (i, addr) in self.server.listen.iter().enumerate() {
            if addr.parse::<SocketAddr>().is_err() {
                return Err((
                    format!("server.listen[{i}]"),
                    format!("`{addr}` is not an IP:port address"),
                ));
            }
        }
        if self.server.threads == 0 {
            return err("server.threads", "must be at least 1");
        }
        UpstreamTarget::parse(&self.upstream.base_url)
            .map_err(|m| ("upstream.base_url".to_string(), m))?;
        for (key, path) in [
            ("upstream.user_path", &self.upstream.user_path),
            ("upstream.guest_path", &self.upstream.guest_path),
        ] {
            if !path.starts_with('/') {
                return err(key, "must start with `/`");
            }
        }
        for (key, d) in [
            ("upstream.connect_timeout", self.upstream.connect_timeout),
            ("upstream.header_timeout", self.upstream.header_timeout),
            ("upstream.idle_timeout", self.upstream.idle_timeout),
        ] {
            if d.is_zero() {
                return err(key, "must be greater than zero");
            }
        }
        let field = self.upstream.thinking_field.as_str();
        if !field.is_empty() && !crate::provider::k2think::THINKING_FIELDS.contains(&field) {
            return Err((
                "upstream.thinking_field".to_string(),
                format!(
                    "`{field}` is not a thinking field the upstream takes; use one of {} (or \"\" for none)",
                    crate::provider::k2think::THINKING_FIELDS.join(", ")
                ),
            ));
        }
        for (name, value) in &self.upstream.headers.extra {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    format!("upstream.headers.extra.{name}"),
                    "is not a valid header name".to_string(),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err((
                    format!("upstream.headers.extra.{name}"),
                    "is not a valid header value".to_string(),
                ));
            }
        }
        let mut seen = HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.id.trim().is_empty() {
                return Err((format!("models[{i}].id"), "must not be empty".to_string()));
            }
            if m.upstream.trim().is_empty() {
                return Err((
                    format!("models[{i}].upstream"),
                    "must not be empty".to_string(),
                ));
            }
            for name in std::iter::once(&m.id).chain(m.aliases.iter()) {
                if !seen.insert(name.as_str()) {
                    return Err((
                        format!("models[{i}]"),
                        format!("the name `{name}` is used twice"),
                    ));
                }
            }
        }
        for (i, k) in self.auth.api_keys.iter().enumerate() {
            if k.key.is_empty() {
                return Err((
                    format!("auth.api_keys[{i}]"),
                    "an empty key would let anyone in; remove it instead".to_string(),
                ));
            }
        }
        for (i, t) in self.pool.tokens.iter().enumerate() {
            if t.trim().is_empty() || t.chars().any(|c| c.is_whitespace()) {
                return Err((
                    format!("pool.tokens[{i}]"),
                    "a token must be non-empty and contain no whitespace".to_string(),
                ));
            }
        }
        if !(self.updater.refresh_at > 0.0 && self.updater.refresh_at < 1.0) {
            return err("updater.refresh_at", "must be between 0 and 1 (exclusive)");
        }
        if self.updater.max_parallel == 0 {
            return err("updater.max_parallel", "must be at least 1");
        }
        if self.updater.interval < Duration::from_secs(60) {
            return err("updater.interval", "must be at least 1m");
        }
        if self.pool.consecutive_failures == 0 {
            return err("pool.consecutive_failures", "must be at least 1");
        }
        if self.pool.max_failures == 0 {
            return err("pool.max_failures", "must be at least 1");
        }
        if self.retry.max_attempts == 0 {
            return err("retry.max_attempts", "must be at least 1");
        }
        if self.retry.max_attempts > 16 {
            return err("retry.max_attempts", "must be at most 16");
        }
        for (i, s) in self.retry.on_status.iter().enumerate() {
            if !(400..=599).contains(s) {
                return Err((
                    format!("retry.on_status[{i}]"),
                    format!("{s} is not an HTTP error status (400-599)"),
                ));
            }
            if crate::provider::k2think::refuses_request(*s) {
                return Err((
                    format!("retry.on_status[{i}]"),
                    format!("{s} is final: the upstream refused the request itself, and the same request would be refused again"),
                ));
            }
        }
        if let Some(m) = &self.metrics.listen {
            if m.parse::<SocketAddr>().is_err() {
                return Err((
                    "metrics.listen".to_string(),
                    format!("`{m}` is not an IP:port address"),
                ));
            }
            if self.server.listen.iter().any(|l| l == m) {
                return err(
                    "metrics.listen",
                    "must differ from every server.listen address",
                );
            }
        }
        if self.admin.key.as_deref().is_some_and(|k| k.len() < 16) {
            return err("admin.key", "must be at least 16 characters");
        }
        for (i, h) in self.admin.allowed_hosts.iter().enumerate() {
            let h = h.strip_suffix('.').unwrap_or(h);
            let name = !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !name {
                return Err((
                    format!("admin.allowed_hosts[{i}]"),
                    "must be a host name such as admin.example.com (no scheme, port or path)"
                        .to_string(),
                ));
            }
        }
        if let Some(t) = &self.tools.prompt_template {
            if !t.contains("{trigger_signal}") || !t.contains("{tools_list}") {
                return err(
                    "tools.prompt_template",
                    "must contain both {trigger_signal} and {tools_list}",
                );
            }
        }
        if self.limits.max_body_bytes.0 < 1024 {
            return err("limits.max_body_bytes", "must be at least 1 KiB");
        }
        if self.limits.max_messages == 0 {
            return err("limits.max_messages", "must be at least 1");
        }
        if self.limits.request_timeout < Duration::from_secs(1) {
            return err("limits.request_timeout", "must be at least 1s");
        }
        for (key, d) in [
            (
                "limits.client_header_timeout",
                self.limits.client_header_timeout,
            ),
            (
                "limits.client_body_timeout",
                self.limits.client_body_timeout,
            ),
            (
                "limits.client_write_timeout",
                self.limits.client_write_timeout,
            ),
        ] {
            if d.is_zero() {
                return err(key, "must be greater than zero");
            }
        }
        if self.limits.client_idle_timeout < Duration::from_secs(1) {
            return err("limits.client_idle_timeout", "must be at least 1s");
        }
        if self.limits.max_connections == Some(0) {
            return err(
                "limits.max_connections",
                "must be at least 1, or null for a limit derived from the open-files limit",
            );
        }
        let rate = self.limits.per_key.rate;
        if !rate.is_finite() || rate < 0.0 {
            return err(
                "limits.per_key.rate",
                "must be a number of requests per second, 0 or more",
            );
        }
        if self.logging.level.parse::<log::LevelFilter>().is_err() {
            return err(
                "logging.level",
                "must be one of off, error, warn, info, debug, trace",
            );
        }
        Ok(())
    }

    /// `Origin` sent upstream: `upstream.headers.origin`, else the base URL.
    pub fn upstream_origin(&self) -> String {
        match &self.upstream.headers.origin {
            Some(o) => o.clone(),
            None => self.upstream.base_url.trim_end_matches('/').to_string(),
        }
    }

    /// `Referer` sent upstream (before `{chat_id}` is filled in): `upstream.headers.referer`,
    /// else the web chat's page for the mode: `<base>/guest` or `<base>/`.
    pub fn upstream_referer(&self) -> String {
        if let Some(r) = &self.upstream.headers.referer {
            return r.clone();
        }
        let base = self.upstream.base_url.trim_end_matches('/');
        match self.effective_mode() {
            UpstreamMode::User => format!("{base}/"),
            _ => format!("{base}/guest"),
        }
    }

    /// The upstream mode after resolving `auto`.
    pub fn effective_mode(&self) -> UpstreamMode {
        match self.upstream.mode {
            UpstreamMode::Auto => {
                if self.pool.tokens.is_empty()
                    && self.pool.tokens_file.is_none()
                    && self.updater.accounts_file.is_none()
                {
                    UpstreamMode::Guest
                } else {
                    UpstreamMode::User
                }
            }
            m => m,
        }
    }
}

/// A parser error with every quoted string value (`string "…"`) replaced by its length:
/// a value in the wrong place may be a secret, and a file that is not a config at all (a
/// symlink to `/etc/shadow`) would otherwise be echoed in the log and the admin status.
fn redact_strings(msg: &str) -> String {
    const OPEN: &str = "string \"";
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find(OPEN) {
        out.push_str(&rest[..at]);
        let body = &rest[at + OPEN.len()..];
        // The value is written with Rust's escapes: a quote inside is `\"`.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(i);
                    break;
                }
                _ => escaped = false,
            }
        }
        let Some(end) = end else {
            out.push_str("a string");
            return out;
        };
        out.push_str(&format!(
            "a string of {} characters",
            body[..end].chars().count()
        ));
        rest = &body[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The text of a configuration file: a regular file (after symlinks) of at most
/// [`MAX_CONFIG_BYTES`]. A FIFO, a device (`/dev/zero`) or a directory is refused on the
/// opened handle (opened without blocking), so a read can neither block for good nor grow
/// without bound, and the path cannot be swapped between the check and the read.
fn read_config_text(path: &Path) -> Result<String, String> {
    let bytes = crate::files::read_capped(path, MAX_CONFIG_BYTES).map_err(|e| match e {
        crate::files::ReadError::TooLarge(_) => {
            format!("{e}; a config is a few KB")
        }
        e => e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|_| "the file is not UTF-8 text".to_string())
}

#[cfg(test)]
mod tests;

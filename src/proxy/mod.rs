//! The Pingora side: server assembly, the `ProxyHttp` implementation and request routing.
//! This is the only module that imports Pingora.
//!
//! Every route is answered from `request_filter`: the local ones (`/health`, `/v1/models`)
//! directly, and the chat route as one owned upstream exchange through Pingora's
//! `Connector` (design.md §3), so retries work for bodies of any size and a failed stream
//! can still end with an explicit error event. `upstream_peer` is never reached.

mod admin;
mod client;
mod conns;
mod exchange;
mod fetch;
pub(crate) mod fleet;
mod metrics_app;
pub mod probe;
pub mod reload;
mod respond;
mod routes;
mod timeouts;
mod updater;
mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use log::{info, warn};
use pingora::apps::HttpServerOptions;
use pingora::connectors::http::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::listeners::ListenerConfig;
use pingora::prelude::*;
use pingora::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::config::{Config, LogFormat, ModelEntry, UpstreamMode, UpstreamTarget};
use crate::metrics::Metrics;
use crate::pool::{Pool, PoolEvent, PoolSettings, Source};
use crate::provider::k2think::runtime::{K2think, K2thinkSettings};
use crate::provider::zai::runtime::ZaiRuntime;
use crate::provider::Provider;
use crate::secret::Secret;
use crate::tokens_file;

pub use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};

/// Everything read per request, swapped as a whole on reload; a request keeps the snapshot
/// it started with.
pub struct Snapshot {
    pub config: Config,
    pub mode: UpstreamMode,
    pub target: UpstreamTarget,
    /// `Origin` and `Referer` (before `{chat_id}`) of every upstream request, worked out
    /// once per config rather than per attempt.
    pub origin: String,
    pub referer: String,
    /// The K2Think provider's settings under this config.
    pub k2think: K2thinkSettings,
    /// The config's fingerprint in a fleet's heartbeats (see [`config_sha`]), worked out
    /// once per config.
    pub config_sha: String,
    keys: Vec<(String, Secret)>,
}

impl Snapshot {
    pub fn new(config: Config) -> Result<Snapshot, String> {
        let target = UpstreamTarget::parse(&config.upstream.base_url)?;
        let keys = config
            .auth
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let name = if k.name.is_empty() {
                    format!("key-{}", i + 1)
                } else {
                    k.name.clone()
                };
                (name, Secret::new(k.key.as_str()))
            })
            .collect();
        Ok(Snapshot {
            mode: config.effective_mode(),
            k2think: upstream::k2think_settings(&config, &target),
            config_sha: config_sha(&config),
            target,
            origin: config.upstream_origin(),
            referer: config.upstream_referer(),
            keys,
            config,
        })
    }

    /// The model a client name resolves to (by id or alias).
    pub fn model(&self, name: &str) -> Option<&ModelEntry> {
        crate::config::resolve_model(&self.config.models, name)
    }
}

/// Process-wide state shared by all requests.
pub struct App {
    state: ArcSwap<Snapshot>,
    pool: Arc<Pool>,
    connector: Connector,
    /// Idle upstream HTTP/1 connections (see `conns.rs`).
    idle: conns::IdleConns,
    /// Per-client-key concurrency and rate (`limits.per_key`).
    limiter: Arc<crate::limits::Limiter>,
    /// Chat requests in flight across all keys (`limits.max_requests`).
    gate: Arc<crate::limits::Gate>,
    /// `limits.max_connections` when it is `null`: worked out from the open-files limit.
    auto_max_connections: usize,
    resolver: upstream::Resolver,
    metrics: Metrics,
    /// Access-log lines, written off the worker threads.
    pub access_log: crate::access_log::AccessLog,
    /// The file reloads read; `None` for a server built from an in-memory config.
    config_path: Option<PathBuf>,
    reload_status: Mutex<reload::ReloadStatus>,
    /// Serializes reloads (file watcher, SIGHUP and admin may fire together); async and
    /// taken under a deadline (see `reload.rs`), so no one ever blocks on it.
    reload_lock: Arc<tokio::sync::Mutex<()>>,
    /// Refresh work for the updater (sign-ins), sent without waiting.
    refresh_tx: tokio::sync::mpsc::UnboundedSender<PoolEvent>,
    refresh_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<PoolEvent>>>,
    /// Serializes writes of the tokens file.
    tokens_file_lock: Mutex<()>,
    updater: updater::UpdaterState,
    /// Z.AI providers at run time, by name; made on first use and again when their
    /// section changes on reload.
    zai: Mutex<std::collections::HashMap<String, Arc<ZaiRuntime>>>,
    /// Fleet mode's link state (`fleet` section); `None`: this instance alone.
    fleet: Option<Arc<crate::fleet::link::FleetState>>,
}

impl App {
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
        server_conf: &ServerConf,
    ) -> Result<App, String> {
        let snapshot = Snapshot::new(config)?;
        let pool = Arc::new(Pool::new(pool_settings(&snapshot.config)));
        pool.set_tokens(load_tokens(&snapshot.config)?);
        let metrics = Metrics::new(env!("CARGO_PKG_VERSION"))
            .map_err(|e| format!("cannot set up metrics: {e}"))?;
        let now = reload::unix_now();
        metrics.config_loaded_at.set(now as i64);
        let (refresh_tx, refresh_rx) = tokio::sync::mpsc::unbounded_channel();
        let fleet = snapshot.config.fleet.as_ref().map(|f| {
            pool.share();
            let id = if f.instance_id.is_empty() {
                let port = snapshot
                    .config
                    .server
                    .listen
                    .first()
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                    .map(|a| a.port());
                crate::fleet::link::default_instance_id(port)
            } else {
                f.instance_id.clone()
            };
            Arc::new(crate::fleet::link::FleetState::new(&f.name, &id))
        });
        Ok(App {
            fleet,
            state: ArcSwap::from_pointee(snapshot),
            pool,
            connector: Connector::new(Some(ConnectorOptions::from_server_conf(server_conf))),
            idle: conns::IdleConns::new(server_conf.upstream_keepalive_pool_size),
            limiter: crate::limits::Limiter::new(),
            gate: crate::limits::Gate::new(),
            auto_max_connections: client::auto_max_connections(),
            resolver: upstream::Resolver::default(),
            access_log: crate::access_log::AccessLog::stdout(metrics.access_log_dropped.clone()),
            metrics,
            reload_status: Mutex::new(reload::ReloadStatus {
                config_file: config_path.as_ref().map(|p| p.display().to_string()),
                loaded_at: now,
                ..Default::default()
            }),
            config_path,
            reload_lock: Arc::new(tokio::sync::Mutex::new(())),
            refresh_tx,
            refresh_rx: Mutex::new(Some(refresh_rx)),
            tokens_file_lock: Mutex::new(()),
            updater: updater::UpdaterState::default(),
            zai: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// Hand refresh work to the updater; never waits.
    pub fn request_refresh(&self, events: Vec<PoolEvent>) {
        for e in events {
            let _ = self.refresh_tx.send(e);
        }
    }

    /// Save the pool's file and account tokens to `pool.tokens_file`, atomically.
    /// `Ok(false)` when no tokens file is configured (the change lives in memory only).
    pub fn persist_tokens(&self) -> Result<bool, String> {
        let snap = self.snapshot();
        let Some(path) = snap.config.pool.tokens_file.as_deref() else {
            return Ok(false);
        };
        let _serial = self
            .tokens_file_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tokens = self.pool.persisted();
        let text = tokens_file::format(tokens.iter().map(|(t, s)| (t.expose(), s.account())));
        tokens_file::write_atomic(std::path::Path::new(path), &text)
            .map(|()| true)
            .map_err(|e| format!("cannot write {path}: {e}"))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Every provider's readiness and counts, by name, for `/ready` and `/admin/providers`
    /// (tokens never shown): K2Think in guest mode, or with a usable token; Z.AI in guest
    /// mode (guests are made on demand), or with a usable user token. Each lists the models
    /// it serves.
    pub fn providers_status(&self, snap: &Snapshot) -> serde_json::Map<String, serde_json::Value> {
        let c = &snap.config;
        let models = |name: &str| -> Vec<&str> {
            c.models
                .iter()
                .filter(|m| c.model_provider(m) == name)
                .map(|m| m.id.as_str())
                .collect()
        };
        let mut out = serde_json::Map::new();
        let k2 = c.k2think_name();
        let mut status = self.k2think(snap).status();
        status["models"] = serde_json::json!(models(k2));
        out.insert(k2.to_string(), status);
        for name in c.providers.keys() {
            if c.provider_kind(name) != Some("zai") {
                continue;
            }
            let mut status = match self.zai_runtime(snap, name) {
                Ok(rt) => rt.status(),
                Err(e) => serde_json::json!({"kind": "zai", "ready": false, "error": e}),
            };
            status["models"] = serde_json::json!(models(name));
            out.insert(name.clone(), status);
        }
        out
    }

    /// The K2Think provider under this snapshot's config.
    fn k2think<'a>(&'a self, snap: &'a Snapshot) -> K2think<'a> {
        K2think {
            settings: &snap.k2think,
            pool: &self.pool,
        }
    }

    /// The run-time state of the Z.AI provider `name` under this snapshot's config.
    fn zai_runtime(&self, snap: &Snapshot, name: &str) -> Result<Arc<ZaiRuntime>, String> {
        let Some(crate::config::providers::ProviderEntry::Zai(section)) =
            snap.config.providers.get(name)
        else {
            return Err(format!("no Z.AI provider is named `{name}`"));
        };
        let mut all = self.zai.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rt) = all.get(name) {
            if rt.section == **section {
                return Ok(Arc::clone(rt));
            }
        }
        let rt = Arc::new(ZaiRuntime::new(name, section)?);
        all.insert(name.to_string(), Arc::clone(&rt));
        Ok(rt)
    }
}

/// The first 12 hex digits of the SHA-256 of the running config, leaving out what is each
/// instance's own (its listen addresses and instance id): instances that show different
/// values run different configs.
fn config_sha(config: &Config) -> String {
    let mut config = config.clone();
    config.server.listen.clear();
    config.metrics.listen = None;
    if let Some(f) = &mut config.fleet {
        f.instance_id.clear();
    }
    let text = serde_json::to_vec(&config).unwrap_or_default();
    let d = ring::digest::digest(&ring::digest::SHA256, &text);
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn pool_settings(c: &Config) -> PoolSettings {
    PoolSettings {
        max_failures: c.pool.max_failures,
        cooldown: c.pool.cooldown,
        max_cooldown: c.pool.max_cooldown,
        consecutive_threshold: c.pool.consecutive_failures,
    }
}

/// Inline tokens first, then the tokens file.
fn load_tokens(c: &Config) -> Result<Vec<(Secret, Source)>, String> {
    let mut tokens: Vec<(Secret, Source)> = c
        .pool
        .tokens
        .iter()
        .map(|t| (Secret::new(t.as_str()), Source::Inline))
        .collect();
    if let Some(path) = &c.pool.tokens_file {
        match tokens_file::read(std::path::Path::new(path)) {
            Ok(Some(list)) => tokens.extend(list.into_iter().map(|(t, account)| {
                let source = account.map_or(Source::File, Source::Account);
                (Secret::new(t), source)
            })),
            Ok(None) => {
                warn!("pool.tokens_file {path} does not exist yet; starting without its tokens")
            }
            Err(e) => return Err(format!("pool.tokens_file {path}: {e}")),
        }
    }
    Ok(tokens)
}

/// Read buffer of a client connection: none. Pingora's default is 64 KiB, zero-filled at
/// accept, which with a thousand open streams is 64 MB of resident memory; even 4 KiB was
/// 4 MB. Pingora reads a request's head into its own head buffer and its body into the
/// body reader's, so a buffer in front of them only adds a copy (Pingora reads straight
/// from the socket when it is 0).
const CLIENT_READ_BUFFER: usize = 0;

/// Pingora's server settings from ours.
pub fn server_conf(c: &Config) -> ServerConf {
    let s = &c.server;
    let mut conf = ServerConf {
        threads: s.threads,
        grace_period_seconds: Some(s.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout.as_secs()),
        error_log: s.error_log.clone(),
        ca_file: s.ca_file.clone(),
        upstream_keepalive_pool_size: s.upstream_keepalive_pool_size,
        work_stealing: s.work_stealing,
        ..ServerConf::default()
    };
    if let Some(p) = &s.pid_file {
        conf.pid_file = p.clone();
    }
    if let Some(p) = &s.upgrade_sock {
        conf.upgrade_sock = p.clone();
    }
    conf
}

/// Build the Pingora server: the proxy service on every `server.listen` address, the
/// metrics listener, and the reload triggers. `config_path` is the file reloads read;
/// `opt` carries `-d`/`-u` from the command line (its config path is ignored).
pub fn build_server(
    config: Config,
    config_path: Option<PathBuf>,
    opt: Option<Opt>,
) -> Result<(Server, Arc<App>), String> {
    build_server_with(config, config_path, opt, |_| {})
}

/// [`build_server`] with Pingora's settings adjusted after they are made from the config
/// (for servers embedded in another process, such as the tests': see `tests/common`).
pub fn build_server_with(
    config: Config,
    config_path: Option<PathBuf>,
    opt: Option<Opt>,
    adjust: impl FnOnce(&mut ServerConf),
) -> Result<(Server, Arc<App>), String> {
    let listen = config.server.listen.clone();
    let metrics_listen = config.metrics.listen.clone();
    let h2c = config.server.h2c;
    if config.auth.api_keys.is_empty() {
        warn!("auth.api_keys is empty: the API is open to every client that can reach it");
    }
    let open_files = client::raise_open_files_limit();
    let mut conf = server_conf(&config);
    adjust(&mut conf);
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let app = Arc::new(App::new(config, config_path, &server.configuration)?);
    let snap = app.snapshot();
    info!(
        "open-files limit {open_files}: up to {} client connections (limits.max_connections)",
        snap.config
            .limits
            .max_connections
            .unwrap_or(app.auto_max_connections)
    );
    info!(
        "upstream {} in {} mode, {} token(s), {} model(s)",
        snap.config.upstream.base_url,
        if snap.mode == UpstreamMode::User {
            "user"
        } else {
            "guest"
        },
        app.pool.len(),
        snap.config.models.len()
    );
    let mut options = HttpServerOptions::default();
    options.h2c = h2c;
    options.h2_idle_timeout = Some(snap.config.limits.client_idle_timeout);
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, K2Proxy { app: app.clone() });
    proxy.server_options = Some(options);
    let mut service = Service::new(
        "k2proxy".to_string(),
        client::ClientApp {
            proxy: Arc::new(proxy),
            app: app.clone(),
            rehome: !server.configuration.work_stealing,
        },
    );
    for addr in &listen {
        service.add_listener(
            ListenerConfig::tcp(addr.as_str()).l4_buffer(L4BufferSettings::new(
                CLIENT_READ_BUFFER,
                DEFAULT_L4_WRITE_BUFFER_SIZE,
            )),
        );
    }
    server.add_service(service);
    if let Some(addr) = metrics_listen {
        let mut metrics = Service::new(
            "k2proxy metrics".to_string(),
            metrics_app::MetricsApp { app: app.clone() },
        );
        metrics.add_tcp(&addr);
        metrics.threads = Some(1);
        server.add_service(metrics);
    }
    if app.config_path.is_some() {
        server.add_service(background_service(
            "config watcher",
            reload::ConfigWatcher { app: app.clone() },
        ));
    }
    server.add_service(background_service(
        "sighup reload",
        reload::SighupReload { app: app.clone() },
    ));
    server.add_service(background_service(
        "token updater",
        updater::UpdaterService { app: app.clone() },
    ));
    if app.fleet.is_some() {
        server.add_service(background_service(
            "fleet link",
            fleet::FleetService { app: app.clone() },
        ));
    }
    Ok((server, app))
}

/// The `ProxyHttp` implementation.
pub struct K2Proxy {
    app: Arc<App>,
}

/// Per-request state, also what the access log reports.
pub struct Ctx {
    pub started: Instant,
    pub request_id: String,
    pub route: &'static str,
    /// The API the request came in on: shapes its answer and its errors.
    pub surface: crate::surface::Surface,
    pub key_name: Option<String>,
    pub model: Option<String>,
    /// The provider (its name under `providers`) that served the request.
    pub provider: Option<String>,
    pub status: u16,
    pub attempts: u32,
    /// Masked token of the attempt that answered.
    pub token: Option<String>,
    pub ttft: Option<Duration>,
    pub bytes_in: usize,
    pub bytes_out: usize,
    /// `complete`, `upstream_error`, `client_abort`, `rejected` …
    pub outcome: &'static str,
    pub error: Option<String>,
    /// The response was committed as an event stream.
    pub streamed: bool,
    /// When the last stream chunk was written (for the inter-chunk gap histogram).
    pub last_write: Option<Instant>,
    /// Emulated tool calls emitted, and malformed tool blocks returned as content.
    pub tool_calls: usize,
    pub tool_malformed: u64,
    /// Counts the request in `k2proxy_requests_in_flight` while the context lives.
    _in_flight: Held,
    /// A chat request's place under `limits.max_requests`, held to its last byte.
    pub slot: Option<crate::limits::Slot>,
}

/// One unit of a gauge (open connections, requests in flight), held until dropped, so the
/// gauge comes down however the holder ends.
struct Held(prometheus::IntGauge);

impl Held {
    fn new(gauge: &prometheus::IntGauge) -> Held {
        gauge.inc();
        Held(gauge.clone())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl ProxyHttp for K2Proxy {
    type CTX = Ctx;

    /// None. Pingora's default adds a response-compression module at level 0 (off), which
    /// still builds its state for every request and runs on every body write; k2proxy
    /// never compresses (an event stream is read as it arrives).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            request_id: String::new(),
            route: "-",
            surface: crate::surface::Surface::Chat,
            key_name: None,
            model: None,
            provider: None,
            status: 0,
            attempts: 0,
            token: None,
            ttft: None,
            bytes_in: 0,
            bytes_out: 0,
            outcome: "-",
            error: None,
            streamed: false,
            last_write: None,
            tool_calls: 0,
            tool_malformed: 0,
            _in_flight: Held::new(&self.app.metrics.requests_in_flight),
            slot: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = request_id(session);
        let snap = self.app.snapshot();
        client::apply_session_limits(session, &snap.config.limits);
        routes::dispatch(&self.app, &snap, session, ctx).await;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Every route is answered in request_filter.
        Error::e_explain(ErrorType::InternalError, "no route reaches the proxy loop")
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.status == 0 {
            ctx.status = session.response_written().map_or(0, |r| r.status.as_u16());
        }
        let snap = self.app.snapshot();
        let model = match ctx.model.as_deref() {
            None => "-",
            Some(name) => snap.model(name).map_or("unknown", |m| m.id.as_str()),
        };
        let m = &self.app.metrics;
        let status = ctx.status.to_string();
        m.requests
            .with_label_values(&[ctx.route, model, status.as_str()])
            .inc();
        if let Some(p) = ctx.provider.as_deref() {
            m.provider_requests
                .with_label_values(&[p, status.as_str()])
                .inc();
        }
        m.request_duration
            .with_label_values(&[ctx.route])
            .observe(ctx.started.elapsed().as_secs_f64());
        m.tool_calls.inc_by(ctx.tool_calls as u64);
        m.tool_parse_failures.inc_by(ctx.tool_malformed);
        if ctx.streamed {
            m.stream_outcomes.with_label_values(&[ctx.outcome]).inc();
            if let Some(t) = ctx.ttft {
                m.ttft.observe(t.as_secs_f64());
            }
        }
        if snap.config.logging.access_log {
            let req = session.req_header();
            let line = access_line(
                snap.config.logging.format,
                req.method.as_str(),
                req.uri.path(),
                ctx,
            );
            self.app.access_log.log(line);
        }
    }
}

/// One access-log line (with its newline). Never contains a prompt, a key or a token:
/// the key appears by name, the token masked.
fn access_line(format: LogFormat, method: &str, path: &str, ctx: &Ctx) -> String {
    let ts = humantime::format_rfc3339_millis(SystemTime::now());
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let duration = ms(ctx.started.elapsed());
    match format {
        LogFormat::Json => {
            let v = serde_json::json!({
                "ts": ts.to_string(),
                "request_id": ctx.request_id,
                "method": method,
                "path": path,
                "route": ctx.route,
                "status": ctx.status,
                "key": ctx.key_name,
                "model": ctx.model.as_deref().map(|m| truncate_chars(m, LOG_FIELD_CHARS)),
                "provider": ctx.provider,
                "attempts": ctx.attempts,
                "token": ctx.token,
                "ttft_ms": ctx.ttft.map(ms),
                "duration_ms": duration,
                "bytes_in": ctx.bytes_in,
                "bytes_out": ctx.bytes_out,
                "outcome": ctx.outcome,
                "error": ctx.error.as_deref().map(|e| truncate_chars(e, LOG_ERROR_CHARS)),
            });
            format!("{v}\n")
        }
        LogFormat::Plain => format!(
            "{ts} {} {method} {path} {} key={} model={} provider={} attempts={} token={} ttft={} dur={duration:.1}ms in={} out={} outcome={}{}\n",
            ctx.request_id,
            ctx.status,
            ctx.key_name.as_deref().unwrap_or("-"),
            ctx.model.as_deref().map_or("-".into(), log_word),
            ctx.provider.as_deref().unwrap_or("-"),
            ctx.attempts,
            ctx.token.as_deref().unwrap_or("-"),
            ctx.ttft
                .map(|d| format!("{:.1}ms", ms(d)))
                .unwrap_or_else(|| "-".into()),
            ctx.bytes_in,
            ctx.bytes_out,
            ctx.outcome,
            ctx.error
                .as_deref()
                .map(|e| format!(" error={:?}", truncate_chars(e, LOG_ERROR_CHARS)))
                .unwrap_or_default(),
        ),
    }
}

/// Most characters of a client-chosen value (the model name) in an access-log line.
const LOG_FIELD_CHARS: usize = 128;
/// Most characters of the error in an access-log line (it may quote client input, such as
/// an unknown model's name).
const LOG_ERROR_CHARS: usize = 512;

/// `s` cut to `max` characters, with `…` when cut.
fn truncate_chars(s: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]).into(),
        None => s.into(),
    }
}

/// A client-chosen value as one word of a plain access-log line: at most
/// [`LOG_FIELD_CHARS`] characters, and quoted with escapes when it holds whitespace, a quote
/// or a control character, so that no value can end the line or forge a field.
fn log_word(s: &str) -> std::borrow::Cow<'_, str> {
    let s = truncate_chars(s, LOG_FIELD_CHARS);
    if s.is_empty()
        || s.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '=')
    {
        format!("{:?}", s.as_ref()).into()
    } else {
        s
    }
}

/// The client's `X-Request-Id` when it is sane, else a fresh one.
fn request_id(session: &Session) -> String {
    if let Some(v) = session.req_header().headers.get("x-request-id") {
        if let Ok(s) = v.to_str() {
            if !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
            {
                return s.to_string();
            }
        }
    }
    let r: u128 = rand::random();
    format!("req_{:024x}", r & ((1u128 << 96) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_values_cannot_forge_or_bloat_access_log_lines() {
        assert_eq!(log_word("IFM/K2-Horizon"), "IFM/K2-Horizon");
        let forged = "m\r\n2026-12-01T00:00:00Z req_x POST /admin 200 key=root\0";
        let w = log_word(forged);
        assert!(
            !w.contains('\n') && !w.contains('\r') && !w.contains('\0'),
            "{w}"
        );
        assert!(w.starts_with('"') && w.contains("\\r\\n"), "{w}");
        assert_eq!(log_word("a key=x"), "\"a key=x\"");
        assert_eq!(log_word(""), "\"\"");
        let long = "é".repeat(1_000_000);
        let w = log_word(&long);
        assert_eq!(
            w.chars().count(),
            LOG_FIELD_CHARS + 1,
            "cut, with an ellipsis"
        );
        assert!(truncate_chars(&long, 5).ends_with('…'));
    }
}

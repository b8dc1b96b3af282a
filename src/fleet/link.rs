//! The instance's link to Redis: one lazily connected, reconnecting connection that
//! carries the shared pool's changes (the `change` script), the fleet's events (RESP3
//! pushes on the same connection), resyncs and heartbeats. It runs in the background: a
//! request never waits on it, and while Redis is away the instance serves on its own state,
//! queues its changes and catches up when Redis is back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use log::{info, warn};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use serde::Serialize;

use super::record::{change_args, decode, Event, Keys};
use super::scripts;
use crate::config::fleet::FleetSection;
use crate::core::clock::unix_ms;
use crate::pool::{Pool, PoolSettings, Shared, SharedState};
use crate::secret::mask_url;

/// How often queued changes go to Redis.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often a link in local mode asks whether Redis is back.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Errors in a row that switch to local mode.
const BREAKER_ERRORS: u32 = 3;

/// The fleet mode of an instance (`k2proxy_fleet_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// State shared through Redis.
    Shared,
    /// Redis is away: the instance serves on its own state.
    Local,
}

/// One instance as its heartbeat shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Heartbeat {
    pub id: String,
    pub version: String,
    /// SHA-256 prefix of the instance's config (drift shows as different values).
    pub config_sha: String,
    pub mode: String,
    pub started_ms: u64,
    pub seen_ms: u64,
    pub in_flight: u64,
    pub tokens_total: u64,
    pub tokens_active: u64,
    pub tokens_cooling: u64,
    pub tokens_disabled: u64,
}

/// What the link needs from the instance it serves.
pub trait Host: Send + Sync {
    fn pool(&self) -> &Pool;
    fn pool_settings(&self) -> PoolSettings;
    /// This instance's heartbeat (without `mode` and `seen_ms`, which the link fills).
    fn heartbeat(&self) -> Heartbeat;
    /// Another instance asked every instance to re-read its config file.
    fn reload(&self);
    /// Refresh every account this instance holds (the fleet's failures in a row).
    fn refresh_all(&self);
    /// The `fleet` section as the running config has it (a reload may change its timings).
    fn settings(&self) -> Option<FleetSection>;
    /// Another instance signed `email` in: use its token (expiry in Unix seconds).
    fn adopt_account_token(&self, email: &str, token: String, exp: Option<u64>);
    /// An operator added or removed a token on another instance (saved like an admin
    /// change here).
    fn token_added(&self, token: String);
    fn token_removed(&self, tid: &str);
}

/// The link's state as the rest of the instance reads it (metrics, admin).
#[derive(Debug)]
pub struct FleetState {
    pub instance_id: String,
    pub fleet: String,
    mode: AtomicU8,
    /// Fleet clock (Redis `TIME`) minus this instance's, in ms.
    offset_ms: AtomicI64,
    pub events: AtomicU64,
    pub resyncs: AtomicU64,
    pub changes_sent: AtomicU64,
    pub changes_dropped: AtomicU64,
    pub errors: AtomicU64,
    /// Client-limit requests the fleet refused.
    pub denials: AtomicU64,
    instances: Mutex<Vec<Heartbeat>>,
    /// The link's connection, for the request path's admission calls.
    con: std::sync::OnceLock<ConnectionManager>,
    /// Request-path errors in a row (the breaker opens at [`BREAKER_ERRORS`]).
    path_errors: std::sync::atomic::AtomicU32,
    next_lease: AtomicU64,
    /// Live concurrency leases (lease → client key id), renewed by the link.
    leases: Mutex<HashMap<String, String>>,
    /// Leases given back, for the link to remove from Redis.
    released: Mutex<Vec<(String, String)>>,
    /// The fleet's keys and scripts, made once.
    pub(super) keys: Keys,
    pub(super) scripts: scripts::Scripts,
    /// When this process made the state (ms): lease ids of a restarted instance differ.
    epoch: u64,
}

impl FleetState {
    pub fn new(fleet: &str, instance_id: &str) -> FleetState {
        FleetState {
            instance_id: instance_id.to_string(),
            fleet: fleet.to_string(),
            // Until Redis answers, the instance is on its own.
            mode: AtomicU8::new(1),
            offset_ms: AtomicI64::new(0),
            events: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            changes_sent: AtomicU64::new(0),
            changes_dropped: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            instances: Mutex::new(Vec::new()),
            con: std::sync::OnceLock::new(),
            path_errors: std::sync::atomic::AtomicU32::new(0),
            next_lease: AtomicU64::new(0),
            leases: Mutex::new(HashMap::new()),
            released: Mutex::new(Vec::new()),
            keys: Keys::new(fleet),
            scripts: scripts::Scripts::default(),
            epoch: unix_ms(),
        }
    }

    /// Wait until the link shares state with the fleet, at most `limit`; whether it does.
    /// Background work that should be done once per fleet (a sign-in) waits here while the
    /// link is still coming up.
    pub async fn wait_shared(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.mode() != Mode::Shared {
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub(super) fn connection(&self) -> Option<ConnectionManager> {
        self.con.get().cloned()
    }

    pub(super) fn new_lease_id(&self) -> String {
        let n = self.next_lease.fetch_add(1, Ordering::Relaxed);
        format!("{}:{}:{n}", self.instance_id, self.epoch)
    }

    pub(super) fn hold(&self, kid: &str, lease: &str) {
        lock(&self.leases).insert(lease.to_string(), kid.to_string());
    }

    pub(super) fn release(&self, kid: &str, lease: &str) {
        lock(&self.leases).remove(lease);
        lock(&self.released).push((kid.to_string(), lease.to_string()));
    }

    pub(super) fn path_ok(&self) {
        self.path_errors.store(0, Ordering::Relaxed);
    }

    /// A request-path call failed; enough in a row switch the instance to local mode
    /// until the link finds Redis again.
    pub(super) fn path_failed(&self, e: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let n = self.path_errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= BREAKER_ERRORS && self.set_mode(Mode::Local) {
            warn!(
                "fleet {}: Redis is away ({e}); serving on this instance's own state until it is back",
                self.fleet
            );
        }
    }

    pub fn mode(&self) -> Mode {
        if self.mode.load(Ordering::Relaxed) == 0 {
            Mode::Shared
        } else {
            Mode::Local
        }
    }

    fn set_mode(&self, m: Mode) -> bool {
        let v = u8::from(m == Mode::Local);
        self.mode.swap(v, Ordering::Relaxed) != v
    }

    /// The fleet's instances at the last heartbeat read, this one included.
    pub fn instances(&self) -> Vec<Heartbeat> {
        self.instances
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Live instances (at least 1: this one).
    pub fn size(&self) -> usize {
        self.instances().len().max(1)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The instance id when `fleet.instance_id` is empty: host name and port.
pub fn default_instance_id(port: Option<u16>) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "k2proxy".to_string());
    match port {
        Some(p) => format!("{host}-{p}"),
        None => host,
    }
}

/// A connection manager for `settings`, lazily connected (an instance starts without
/// Redis), speaking RESP3 so events arrive on the same connection as `pushes`.
fn connect(
    settings: &FleetSection,
    pushes: tokio::sync::mpsc::UnboundedSender<PushInfo>,
) -> Result<ConnectionManager, String> {
    let shown = mask_url(&settings.redis_url);
    let url = settings
        .redis_url
        .replace("redis+unix://", "unix://")
        .to_string();
    let info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("fleet.redis_url {shown}: {e}"))?;
    let mut redis = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    if let Some(u) = &settings.username {
        redis = redis.set_username(u);
    }
    if let Some(p) = &settings.password {
        redis = redis.set_password(p);
    }
    let info = info.set_redis_settings(redis);
    let client = redis::Client::open(info).map_err(|e| format!("fleet.redis_url {shown}: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_push_sender(pushes)
        .set_automatic_resubscription()
        .set_response_timeout(Some(settings.background_timeout))
        .set_connection_timeout(Some(settings.background_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config)
        .map_err(|e| format!("fleet.redis_url {shown}: {e}"))
}

/// The running link.
pub struct Link {
    settings: FleetSection,
    host: Arc<dyn Host>,
    state: Arc<FleetState>,
    started_ms: u64,
    errors_in_a_row: u32,
    /// Accounts whose new token other instances announced, to read.
    accounts_heard: Mutex<Vec<String>>,
    /// Tokens other instances added, to read.
    tokens_heard: Mutex<Vec<String>>,
    /// Why Redis cannot be reached was logged (once per spell in local mode).
    away_logged: bool,
}

impl Link {
    pub fn new(settings: FleetSection, host: Arc<dyn Host>, state: Arc<FleetState>) -> Link {
        Link {
            settings,
            host,
            state,
            started_ms: unix_ms(),
            errors_in_a_row: 0,
            accounts_heard: Mutex::new(Vec::new()),
            tokens_heard: Mutex::new(Vec::new()),
            away_logged: false,
        }
    }

    /// Run until `stop` says so; on the way out the instance leaves the fleet's list.
    pub async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (tx, mut pushes) = tokio::sync::mpsc::unbounded_channel();
        let mut con = match connect(&self.settings, tx) {
            Ok(c) => c,
            Err(e) => {
                warn!("fleet: {e}; this instance runs on its own state");
                return;
            }
        };
        let _ = self.state.con.set(con.clone());
        info!(
            "fleet {}: instance {} linking to {}",
            self.settings.name,
            self.state.instance_id,
            mask_url(&self.settings.redis_url)
        );
        let mut flush = tokio::time::interval(FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_heartbeat = Instant::now();
        let mut next_resync = Instant::now();
        let mut next_probe = Instant::now();
        let mut next_renewal = Instant::now() + self.settings.lease_ttl / 3;
        let mut subscribed = false;
        loop {
            self.follow_reload();
            // Failures in a row are the fleet's count while Redis answers, this pool's own
            // while it does not.
            self.host
                .pool()
                .count_in_fleet(self.state.mode() == Mode::Shared);
            tokio::select! {
                _ = stop.changed() => break,
                Some(p) = pushes.recv() => self.on_push(p),
                _ = flush.tick() => {}
            }
            let now = Instant::now();
            if self.state.mode() == Mode::Local {
                if now < next_probe {
                    continue;
                }
                next_probe = now + PROBE_EVERY;
                if !self.up(&mut con, &mut subscribed).await {
                    continue;
                }
                next_resync = now;
                next_heartbeat = now;
            }
            if !self.flush(&mut con).await {
                continue;
            }
            if let Err(e) = self.adopt_tokens(&mut con).await {
                self.failed(&e);
                continue;
            }
            if let Err(e) = self.adopt_accounts(&mut con).await {
                self.failed(&e);
                continue;
            }
            if let Err(e) = self.leases(&mut con, now >= next_renewal).await {
                self.failed(&e);
                continue;
            }
            if now >= next_renewal {
                next_renewal = now + self.settings.lease_ttl / 3;
            }
            if now >= next_resync {
                next_resync = now + self.settings.resync_interval;
                if let Err(e) = self.resync(&mut con).await {
                    self.failed(&e);
                    continue;
                }
            }
            if now >= next_heartbeat {
                next_heartbeat = now + self.settings.heartbeat_interval;
                if let Err(e) = self.heartbeat(&mut con).await {
                    self.failed(&e);
                }
            }
        }
        let _ = tokio::time::timeout(self.settings.background_timeout, async {
            let _: Result<(), _> = redis::pipe()
                .cmd("DEL")
                .arg(self.state.keys.instance(&self.state.instance_id))
                .ignore()
                .cmd("ZREM")
                .arg(self.state.keys.instances())
                .arg(&self.state.instance_id)
                .ignore()
                .query_async(&mut con)
                .await;
        })
        .await;
    }

    /// Take the timings of a reloaded `fleet` section (the link's identity and address need
    /// a restart, and stay).
    fn follow_reload(&mut self) {
        let Some(new) = self.host.settings() else {
            return;
        };
        let s = &mut self.settings;
        s.command_timeout = new.command_timeout;
        s.background_timeout = new.background_timeout;
        s.resync_interval = new.resync_interval;
        s.heartbeat_interval = new.heartbeat_interval;
        s.lease_ttl = new.lease_ttl;
        s.on_redis_error = new.on_redis_error;
    }

    /// Whether Redis answers (and the channel is subscribed); switches to shared mode.
    async fn up(&mut self, con: &mut ConnectionManager, subscribed: &mut bool) -> bool {
        let ping = tokio::time::timeout(
            self.settings.background_timeout,
            redis::cmd("PING").query_async::<String>(con),
        )
        .await;
        if let Err(e) = ping
            .map_err(|_| "no answer in time".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
        {
            if !self.away_logged {
                self.away_logged = true;
                warn!(
                    "fleet {}: cannot reach Redis at {} ({e}); serving on this instance's own state until it answers",
                    self.settings.name,
                    mask_url(&self.settings.redis_url)
                );
            }
            return false;
        }
        if !*subscribed {
            let sub = tokio::time::timeout(
                self.settings.background_timeout,
                con.subscribe(self.state.keys.events()),
            )
            .await;
            if !matches!(sub, Ok(Ok(()))) {
                return false;
            }
            *subscribed = true;
        }
        self.errors_in_a_row = 0;
        self.away_logged = false;
        self.state.path_ok();
        if self.state.set_mode(Mode::Shared) {
            info!(
                "fleet {}: Redis is reachable; sharing state (instance {})",
                self.settings.name, self.state.instance_id
            );
        }
        true
    }

    fn failed(&mut self, e: &str) {
        self.state.errors.fetch_add(1, Ordering::Relaxed);
        self.errors_in_a_row += 1;
        if self.errors_in_a_row >= BREAKER_ERRORS && self.state.set_mode(Mode::Local) {
            self.away_logged = true;
            warn!(
                "fleet {}: Redis is away ({e}); serving on this instance's own state until it is back",
                self.settings.name
            );
        }
    }

    fn on_push(&self, p: PushInfo) {
        if p.kind != PushKind::Message {
            return;
        }
        let Some(text) = p.data.get(1).and_then(value_text) else {
            return;
        };
        let Some(event) = Event::parse(&text) else {
            return;
        };
        self.state.events.fetch_add(1, Ordering::Relaxed);
        let offset = self.state.offset_ms.load(Ordering::Relaxed);
        let pool = self.host.pool();
        match event {
            Event::Token { tid, state, .. } => {
                pool.apply_shared(&tid, state, offset, Instant::now())
            }
            Event::ResetAll { .. } => {
                for tid in pool.token_ids() {
                    pool.apply_shared(&tid, SharedState::default(), offset, Instant::now());
                }
            }
            Event::Reload { origin } => {
                info!("fleet: instance {origin} asked every instance to reload its config");
                self.host.reload();
            }
            Event::Consecutive { count, .. } => pool.apply_consecutive(count),
            Event::RefreshAll { origin } => {
                pool.apply_consecutive(0);
                info!("fleet: failures in a row across the fleet (the last on {origin}); refreshing every account");
                self.host.refresh_all();
            }
            Event::Account { aid, .. } => {
                lock(&self.accounts_heard).push(aid);
            }
            Event::Added { tid, .. } => lock(&self.tokens_heard).push(tid),
            Event::Removed { tid, .. } => self.host.token_removed(&tid),
        }
    }

    /// Take the tokens other instances added.
    async fn adopt_tokens(&self, con: &mut ConnectionManager) -> Result<(), String> {
        let heard = std::mem::take(&mut *lock(&self.tokens_heard));
        if heard.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for tid in &heard {
            pipe.cmd("HGET")
                .arg(self.state.keys.added_tokens())
                .arg(tid);
        }
        let got: Vec<Option<String>> =
            tokio::time::timeout(self.settings.background_timeout, pipe.query_async(con))
                .await
                .map_err(|_| "no answer in time".to_string())?
                .map_err(|e| e.to_string())?;
        for stored in got.into_iter().flatten() {
            match super::seal::open(self.settings.secret.as_deref(), &stored) {
                Some(token) => self.host.token_added(token),
                None => warn!("fleet: a shared token cannot be opened (is fleet.secret the same on every instance?)"),
            }
        }
        Ok(())
    }

    /// Take the tokens of accounts other instances signed in.
    async fn adopt_accounts(&self, con: &mut ConnectionManager) -> Result<(), String> {
        let heard = std::mem::take(&mut *lock(&self.accounts_heard));
        for aid in heard {
            let read = tokio::time::timeout(
                self.settings.background_timeout,
                super::signin::read_account(
                    con,
                    &self.state.keys,
                    &aid,
                    self.settings.secret.as_deref(),
                ),
            )
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
            if let Some((email, token, exp)) = read {
                self.host.adopt_account_token(&email, token, exp);
            }
        }
        Ok(())
    }

    /// Send the queued changes; false (and the rest queued again) when Redis failed.
    async fn flush(&mut self, con: &mut ConnectionManager) -> bool {
        let (changes, dropped) = self.host.pool().take_shared();
        if dropped > 0 {
            self.state
                .changes_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if changes.is_empty() {
            return true;
        }
        let settings = self.host.pool_settings();
        let mut rest = changes.into_iter();
        while let Some(change) = rest.next() {
            match self.send(con, &change, &settings).await {
                Ok(()) => {
                    self.state.changes_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let mut back: Vec<Shared> = vec![change];
                    back.extend(rest);
                    self.host.pool().requeue_shared(back);
                    self.failed(&e);
                    return false;
                }
            }
        }
        true
    }

    async fn send(
        &self,
        con: &mut ConnectionManager,
        change: &Shared,
        settings: &PoolSettings,
    ) -> Result<(), String> {
        if let Shared::Add { .. } | Shared::Remove { .. } = change {
            return self.send_token_change(con, change).await;
        }
        let (tid, kind, retry_after) = change_args(change);
        let call = self.change_call(&tid, kind, retry_after, "", settings);
        let sent = tokio::time::timeout(
            self.settings.background_timeout,
            call.invoke_async::<(String, String)>(con),
        )
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
        if let Ok(now) = sent.1.parse::<i64>() {
            self.state
                .offset_ms
                .store(now - unix_ms() as i64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// An operator's added or removed token: stored (or tombstoned, so an instance that was
    /// away cannot bring it back) and announced.
    async fn send_token_change(
        &self,
        con: &mut ConnectionManager,
        change: &Shared,
    ) -> Result<(), String> {
        let origin = &self.state.instance_id;
        let mut pipe = redis::pipe();
        match change {
            Shared::Add { tid, token } => {
                pipe.cmd("HSET")
                    .arg(self.state.keys.added_tokens())
                    .arg(tid)
                    .arg(super::seal::seal(
                        self.settings.secret.as_deref(),
                        token.expose(),
                    ))
                    .ignore()
                    .cmd("HDEL")
                    .arg(self.state.keys.removed_tokens())
                    .arg(tid)
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(self.state.keys.events())
                    .arg(format!("{origin} * add:{tid}"))
                    .ignore();
            }
            Shared::Remove { tid } => {
                pipe.cmd("HDEL")
                    .arg(self.state.keys.added_tokens())
                    .arg(tid)
                    .ignore()
                    .cmd("HSET")
                    .arg(self.state.keys.removed_tokens())
                    .arg(tid)
                    .arg(unix_ms())
                    .ignore()
                    .cmd("PUBLISH")
                    .arg(self.state.keys.events())
                    .arg(format!("{origin} * del:{tid}"))
                    .ignore();
            }
            _ => return Ok(()),
        }
        tokio::time::timeout(
            self.settings.background_timeout,
            pipe.query_async::<()>(con),
        )
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())
    }

    /// Remove released client-limit leases; with `renew`, push the expiry of the live ones
    /// (a stream may outlive one lease TTL).
    async fn leases(&self, con: &mut ConnectionManager, renew: bool) -> Result<(), String> {
        let released = std::mem::take(&mut *lock(&self.state.released));
        let live: Vec<(String, String)> = if renew {
            lock(&self.state.leases)
                .iter()
                .map(|(l, k)| (l.clone(), k.clone()))
                .collect()
        } else {
            Vec::new()
        };
        if released.is_empty() && live.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (kid, lease) in &released {
            pipe.cmd("ZREM")
                .arg(self.state.keys.leases(kid))
                .arg(lease)
                .ignore();
        }
        let expiry = unix_ms() as i64
            + self.state.offset_ms.load(Ordering::Relaxed)
            + self.settings.lease_ttl.as_millis() as i64;
        for (lease, kid) in &live {
            pipe.cmd("ZADD")
                .arg(self.state.keys.leases(kid))
                .arg("XX")
                .arg(expiry)
                .arg(lease)
                .ignore();
        }
        let sent = tokio::time::timeout(
            self.settings.background_timeout,
            pipe.query_async::<()>(con),
        )
        .await;
        match sent {
            Ok(Ok(())) => Ok(()),
            failed => {
                // Leases expire by themselves; give the releases another chance.
                let mut back = lock(&self.state.released);
                if back.len() < 10_000 {
                    back.extend(released);
                }
                Err(match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "no answer in time".to_string(),
                })
            }
        }
    }

    /// Read every shared record and make the mirror follow; a token the fleet holds
    /// nothing about is clean.
    async fn resync(&self, con: &mut ConnectionManager) -> Result<(), String> {
        let all: HashMap<String, String> = tokio::time::timeout(
            self.settings.background_timeout,
            redis::cmd("HGETALL")
                .arg(self.state.keys.tokens())
                .query_async(con),
        )
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
        type Rest = (
            HashMap<String, String>,
            HashMap<String, String>,
            Option<u32>,
        );
        let (added, removed, consec): Rest = tokio::time::timeout(
            self.settings.background_timeout,
            redis::pipe()
                .cmd("HGETALL")
                .arg(self.state.keys.added_tokens())
                .cmd("HGETALL")
                .arg(self.state.keys.removed_tokens())
                .cmd("HGET")
                .arg(self.state.keys.meta())
                .arg("consec")
                .query_async(con),
        )
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map_err(|e| e.to_string())?;
        let pool = self.host.pool();
        pool.apply_consecutive(consec.unwrap_or(0));
        let here = pool.token_ids();
        for tid in removed.keys().filter(|t| here.contains(t)) {
            self.host.token_removed(tid);
        }
        for (tid, stored) in &added {
            if !here.contains(tid) && !removed.contains_key(tid) {
                if let Some(token) = super::seal::open(self.settings.secret.as_deref(), stored) {
                    self.host.token_added(token);
                }
            }
        }
        // Changes not yet sent are newer than what Redis holds: they win.
        let (pending, _) = pool.take_shared();
        let offset = self.state.offset_ms.load(Ordering::Relaxed);
        let mut lost: Vec<(String, SharedState)> = Vec::new();
        for tid in pool.token_ids() {
            match all.get(&tid).and_then(|r| decode(r)) {
                Some((shared, _)) => {
                    // A cooldown this instance knows of and the fleet does not (it was
                    // set while Redis was away) stays until it ends.
                    let mine = pool.local_state(&tid, offset, Instant::now());
                    let cool = mine.map_or(0, |m| m.cool_until_ms);
                    let state = SharedState {
                        cool_until_ms: shared.cool_until_ms.max(cool),
                        ..shared
                    };
                    pool.apply_shared(&tid, state, offset, Instant::now());
                }
                None => {
                    // Redis lost it (a restart) or never had it: this instance's state
                    // stands, and goes back to the fleet when it is not clean.
                    if let Some(mine) = pool.local_state(&tid, offset, Instant::now()) {
                        if mine != SharedState::default() {
                            lost.push((tid, mine));
                        }
                    }
                }
            }
        }
        pool.requeue_shared(pending);
        for (tid, mine) in lost {
            self.put(con, &tid, &mine).await?;
        }
        self.state.resyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One call of the `change` script (its arguments are documented there): the pool's
    /// rules, the fleet's clock, and the failures-in-a-row threshold with this pool's size;
    /// `record` is what a `put` carries (empty otherwise).
    fn change_call(
        &self,
        tid: &str,
        kind: &str,
        retry_after: i64,
        record: &str,
        settings: &PoolSettings,
    ) -> redis::ScriptInvocation<'_> {
        let ms = |d: Duration| d.as_millis() as u64;
        let mut call = self.state.scripts.change.key(self.state.keys.tokens());
        call.key(self.state.keys.meta())
            .arg(tid)
            .arg(kind)
            .arg(retry_after)
            .arg(settings.max_failures)
            .arg(ms(settings.cooldown))
            .arg(ms(settings.max_cooldown))
            .arg(&self.state.instance_id)
            .arg(self.state.keys.events())
            .arg("")
            .arg(record)
            .arg(settings.consecutive_threshold)
            .arg(self.host.pool().len());
        call
    }

    /// Give the fleet this instance's state of a token Redis lost (merged in the script).
    async fn put(
        &self,
        con: &mut ConnectionManager,
        tid: &str,
        mine: &SharedState,
    ) -> Result<(), String> {
        let settings = self.host.pool_settings();
        let record = super::record::encode(mine, 0);
        let call = self.change_call(tid, "put", -1, &record, &settings);
        tokio::time::timeout(
            self.settings.background_timeout,
            call.invoke_async::<(String, String)>(con),
        )
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
    }

    /// Say this instance is alive, and read who else is.
    async fn heartbeat(&self, con: &mut ConnectionManager) -> Result<(), String> {
        let mut hb = self.host.heartbeat();
        hb.id = self.state.instance_id.clone();
        hb.started_ms = self.started_ms;
        hb.mode = "shared".to_string();
        hb.seen_ms = unix_ms();
        let ttl = (self.settings.heartbeat_interval * 3).as_millis() as u64;
        let key = self.state.keys.instance(&hb.id);
        let fields: Vec<(&str, String)> = vec![
            ("version", hb.version.clone()),
            ("config_sha", hb.config_sha.clone()),
            ("mode", hb.mode.clone()),
            ("started_ms", hb.started_ms.to_string()),
            ("seen_ms", hb.seen_ms.to_string()),
            ("in_flight", hb.in_flight.to_string()),
            ("tokens_total", hb.tokens_total.to_string()),
            ("tokens_active", hb.tokens_active.to_string()),
            ("tokens_cooling", hb.tokens_cooling.to_string()),
            ("tokens_disabled", hb.tokens_disabled.to_string()),
        ];
        let work = async {
            let (_, _, _, _, ids): ((), (), (), (), Vec<String>) = redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg(&fields)
                .cmd("PEXPIRE")
                .arg(&key)
                .arg(ttl)
                .cmd("ZADD")
                .arg(self.state.keys.instances())
                .arg(hb.seen_ms)
                .arg(&hb.id)
                .cmd("ZREMRANGEBYSCORE")
                .arg(self.state.keys.instances())
                .arg("-inf")
                .arg(hb.seen_ms.saturating_sub(ttl))
                .cmd("ZRANGE")
                .arg(self.state.keys.instances())
                .arg(0)
                .arg(-1)
                .query_async(con)
                .await?;
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HGETALL").arg(self.state.keys.instance(id));
            }
            let found: Vec<HashMap<String, String>> = pipe.query_async(con).await?;
            Ok::<_, redis::RedisError>((ids, found))
        };
        let (ids, found) = tokio::time::timeout(self.settings.background_timeout, work)
            .await
            .map_err(|_| "no answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        let mut list: Vec<Heartbeat> = ids
            .iter()
            .zip(found)
            .filter(|(_, f)| !f.is_empty())
            .map(|(id, f)| heartbeat_of(id, &f))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        *self
            .state
            .instances
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = list;
        Ok(())
    }
}

fn heartbeat_of(id: &str, f: &HashMap<String, String>) -> Heartbeat {
    let text = |k: &str| f.get(k).cloned().unwrap_or_default();
    let num = |k: &str| f.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Heartbeat {
        id: id.to_string(),
        version: text("version"),
        config_sha: text("config_sha"),
        mode: text("mode"),
        started_ms: num("started_ms"),
        seen_ms: num("seen_ms"),
        in_flight: num("in_flight"),
        tokens_total: num("tokens_total"),
        tokens_active: num("tokens_active"),
        tokens_cooling: num("tokens_cooling"),
        tokens_disabled: num("tokens_disabled"),
    }
}

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Publish a fleet-wide reload (each instance re-reads its own file), on the link's
/// connection; how many instances heard it.
pub async fn publish_reload(state: &FleetState, timeout: Duration) -> Result<u64, String> {
    let mut con = state
        .connection()
        .ok_or_else(|| "the link has not started".to_string())?;
    tokio::time::timeout(
        timeout,
        redis::cmd("PUBLISH")
            .arg(state.keys.events())
            .arg(Event::reload(&state.instance_id))
            .query_async::<u64>(&mut con),
    )
    .await
    .map_err(|_| "Redis did not answer in time".to_string())?
    .map_err(|e| e.to_string())
}

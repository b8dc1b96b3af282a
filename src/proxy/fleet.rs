//! Fleet mode in the server: the link to Redis as a background service (it lives for the
//! whole process, after Pingora's fork), the instance's side of the link (its pool, its
//! heartbeat, reloads asked by other instances), and the admin view of the fleet.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};

use super::App;
use crate::config::fleet::OnRedisError;
use crate::core::error::ApiError;
use crate::fleet::admission::{share_of, Verdict};
use crate::fleet::link::{Heartbeat, Host, Link};
use crate::pool::{Pool, PoolSettings};

/// The instance as the link sees it.
struct Instance {
    app: Arc<App>,
}

impl Host for Instance {
    fn pool(&self) -> &Pool {
        &self.app.pool
    }

    fn pool_settings(&self) -> PoolSettings {
        super::pool_settings(&self.app.snapshot().config)
    }

    fn heartbeat(&self) -> Heartbeat {
        let stats = self.app.pool.stats(Instant::now());
        Heartbeat {
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_sha: self.app.snapshot().config_sha.clone(),
            in_flight: self.app.gate.open() as u64,
            tokens_total: stats.total as u64,
            tokens_active: stats.active as u64,
            tokens_cooling: stats.cooling as u64,
            tokens_disabled: stats.disabled as u64,
            ..Heartbeat::default()
        }
    }

    fn adopt_account_token(&self, email: &str, token: String, exp: Option<u64>) {
        super::updater::adopt(&self.app, email, token, exp);
    }

    fn settings(&self) -> Option<crate::config::fleet::FleetSection> {
        self.app.snapshot().config.fleet.clone()
    }

    fn token_added(&self, token: String) {
        let secret = crate::secret::Secret::new(token);
        let masked = secret.masked();
        if self
            .app
            .pool
            .add_from_fleet(secret, crate::pool::Source::File)
            .is_some()
        {
            log::info!("fleet: token {masked} added by another instance");
            if let Err(e) = self.app.persist_tokens() {
                log::warn!("fleet: {e}");
            }
        }
    }

    fn token_removed(&self, tid: &str) {
        if self.app.pool.remove_from_fleet(tid) {
            log::info!("fleet: a token was removed by another instance");
            if let Err(e) = self.app.persist_tokens() {
                log::warn!("fleet: {e}");
            }
        }
    }

    fn refresh_all(&self) {
        self.app
            .request_refresh(vec![crate::pool::PoolEvent::RefreshAll]);
    }

    fn reload(&self) {
        let app = self.app.clone();
        tokio::spawn(async move {
            app.reload("fleet").await;
        });
    }
}

/// Runs the link while the server runs.
pub struct FleetService {
    pub app: Arc<App>,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let (Some(state), Some(settings)) = (
            self.app.fleet.clone(),
            self.app.snapshot().config.fleet.clone(),
        ) else {
            return;
        };
        let host = Arc::new(Instance {
            app: self.app.clone(),
        });
        Link::new(settings, host, state).run(shutdown).await;
    }
}

/// `GET /admin/fleet`: this instance, its mode and counters, and every live instance with
/// its heartbeat; `drift` marks an instance whose config differs from this one's.
pub fn view(app: &App) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let Some(f) = &app.fleet else {
        return json!({"enabled": false});
    };
    let mine = app.snapshot().config_sha.clone();
    let instances: Vec<Value> = f
        .instances()
        .into_iter()
        .map(|h| {
            let drift = h.config_sha != mine;
            let mut v = serde_json::to_value(&h).unwrap_or(Value::Null);
            v["drift"] = json!(drift);
            v["self"] = json!(h.id == f.instance_id);
            v
        })
        .collect();
    json!({
        "enabled": true,
        "fleet": f.fleet,
        "instance_id": f.instance_id,
        "mode": f.mode(),
        "config_sha": mine,
        "counters": {
            "events": f.events.load(Relaxed),
            "resyncs": f.resyncs.load(Relaxed),
            "changes_sent": f.changes_sent.load(Relaxed),
            "changes_dropped": f.changes_dropped.load(Relaxed),
            "errors": f.errors.load(Relaxed),
        },
        "instances": instances,
    })
}

/// A request's client-limit slot: this instance's own, the fleet's, or none (no limit).
/// Never read: holding it is the point, and dropping it gives the slot back.
#[derive(Debug)]
#[allow(dead_code)]
pub enum Admission {
    Local(crate::limits::Permit),
    Fleet(Option<crate::fleet::admission::FleetPermit>),
    Open,
}

/// Admit one request of client `who` under `limits.per_key`: alone, as before, without a
/// fleet; with one, the fleet decides (one Redis call, only when a limit is set), and while
/// Redis is away `fleet.on_redis_error` says what happens.
pub async fn admit(app: &App, snap: &super::Snapshot, who: &str) -> Result<Admission, ApiError> {
    let rules = &snap.config.limits.per_key;
    let local = |rules: &crate::limits::Rules| {
        app.limiter
            .admit(who, rules, Instant::now())
            .map(Admission::Local)
            .map_err(|d| denied(&d))
    };
    let (Some(state), Some(settings)) = (&app.fleet, &snap.config.fleet) else {
        return local(rules);
    };
    if rules.concurrency == 0 && rules.rate <= 0.0 {
        return Ok(Admission::Open);
    }
    match crate::fleet::admission::admit(state, settings, who, rules).await {
        Ok(Verdict::Admitted(p)) => Ok(Admission::Fleet(p)),
        Ok(Verdict::Denied(d)) => Err(denied(&d)),
        Err(_) => match settings.on_redis_error {
            OnRedisError::Local => local(&share_of(rules, state.size())),
            OnRedisError::Open => Ok(Admission::Open),
            OnRedisError::Closed => Err(ApiError::new(
                503,
                "server_error",
                "fleet_unavailable",
                "The fleet's shared limits are unavailable (Redis is away and fleet.on_redis_error is closed); retry shortly".to_string(),
            )
            .with_retry_after(Some(1))),
        },
    }
}

fn denied(d: &crate::limits::Denied) -> ApiError {
    ApiError::new(429, "rate_limit_error", "rate_limit_exceeded", d.message())
        .with_retry_after(Some(d.retry_after_secs()))
}

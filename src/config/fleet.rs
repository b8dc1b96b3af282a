//! The `fleet` section: several instances sharing one pool, one set of client limits and
//! one sign-in per account through Redis (or Valkey). Absent, an instance keeps all its
//! state to itself, exactly as before.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::values::{de_duration, de_opt_string, de_string};

/// What an instance does while Redis is away.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnRedisError {
    /// Keep serving on the instance's own state; client limits are divided by the last
    /// known fleet size.
    #[default]
    Local,
    /// Keep serving; client limits are not enforced until Redis is back.
    Open,
    /// Refuse requests that need a shared decision (client limits) with a 503.
    Closed,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Names the fleet; several fleets may share one Redis (keys start `k2:v1:<name>`).
    #[serde(deserialize_with = "de_string")]
    pub name: String,
    /// This instance's id in the fleet; empty: host name and first listen port.
    #[serde(deserialize_with = "de_string")]
    pub instance_id: String,
    /// `redis://host:port[/db]`, `rediss://…` (TLS), or `unix:///path/to/redis.sock`.
    #[serde(deserialize_with = "de_string")]
    pub redis_url: String,
    /// ACL user and password (`${ENV}` references keep them out of the file).
    #[serde(deserialize_with = "de_opt_string")]
    pub username: Option<String>,
    #[serde(deserialize_with = "de_opt_string")]
    pub password: Option<String>,
    /// Deadline of a Redis call on a request's path (client-limit admission).
    #[serde(deserialize_with = "de_duration")]
    pub command_timeout: Duration,
    /// Deadline of a background call (reports, heartbeats, resyncs).
    #[serde(deserialize_with = "de_duration")]
    pub background_timeout: Duration,
    /// A full read of the shared pool state, closing any gap a lost event left.
    #[serde(deserialize_with = "de_duration")]
    pub resync_interval: Duration,
    /// How often the instance says it is alive (its record lives three times as long).
    #[serde(deserialize_with = "de_duration")]
    pub heartbeat_interval: Duration,
    /// A client-limit slot held by an instance that died frees itself after this long.
    #[serde(deserialize_with = "de_duration")]
    pub lease_ttl: Duration,
    pub on_redis_error: OnRedisError,
    /// Seals the tokens the fleet stores in Redis (ChaCha20-Poly1305, key from this
    /// secret); the same on every instance. `null`: stored as they are.
    #[serde(deserialize_with = "de_opt_string")]
    pub secret: Option<String>,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            name: "default".to_string(),
            instance_id: String::new(),
            redis_url: String::new(),
            username: None,
            password: None,
            command_timeout: Duration::from_millis(50),
            background_timeout: Duration::from_secs(1),
            resync_interval: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(5),
            lease_ttl: Duration::from_secs(60),
            on_redis_error: OnRedisError::Local,
            secret: None,
        }
    }
}

/// The fleet keys a reload cannot apply: the link to Redis and the instance's identity.
pub const RESTART_KEYS: &[&str] = &[
    "fleet",
    "fleet.name",
    "fleet.instance_id",
    "fleet.redis_url",
    "fleet.username",
    "fleet.password",
    "fleet.secret",
];

impl FleetSection {
    /// Checks with the dotted key of what is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let key = |k: &str| format!("fleet.{k}");
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err((
                key("name"),
                "must be letters, digits, `-`, `_` or `.`".to_string(),
            ));
        }
        if self
            .instance_id
            .chars()
            .any(|c| c.is_whitespace() || c == ':')
        {
            return Err((
                key("instance_id"),
                "must not contain spaces or `:`".to_string(),
            ));
        }
        let url = self.redis_url.as_str();
        if url.is_empty() {
            return Err((
                key("redis_url"),
                "is required (redis://host:port, rediss://host:port or unix:///path/redis.sock)"
                    .to_string(),
            ));
        }
        let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://"]
            .iter()
            .any(|s| url.starts_with(s));
        if !scheme_ok {
            return Err((
                key("redis_url"),
                format!(
                    "`{}` must start with redis://, rediss:// or unix://",
                    crate::secret::mask_url(url)
                ),
            ));
        }
        for (k, d) in [
            ("command_timeout", self.command_timeout),
            ("background_timeout", self.background_timeout),
            ("resync_interval", self.resync_interval),
            ("heartbeat_interval", self.heartbeat_interval),
            ("lease_ttl", self.lease_ttl),
        ] {
            if d.is_zero() {
                return Err((key(k), "must be greater than zero".to_string()));
            }
        }
        if self.secret.as_deref().is_some_and(|s| s.len() < 16) {
            return Err((key("secret"), "must be at least 16 characters".to_string()));
        }
        if self.lease_ttl < Duration::from_secs(3) {
            return Err((key("lease_ttl"), "must be at least 3s".to_string()));
        }
        Ok(())
    }
}

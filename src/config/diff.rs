//! What changed between two configurations, by key path, and which changes a hot reload
//! cannot apply. Values are never reported, only key names (keys and tokens are secrets).

use serde_json::Value;

use super::Config;

/// Keys whose change takes effect only after a restart or a graceful upgrade (`-u`):
/// listeners and process-level Pingora settings are fixed when the server starts.
const RESTART_PREFIXES: &[&str] = &["server", "metrics.listen"];

/// The changes of one reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// Every changed key path (lists and maps of secrets are reported as one key).
    pub changed: Vec<String>,
    /// The subset that needs a restart to take effect.
    pub need_restart: Vec<String>,
}

pub fn diff(old: &Config, new: &Config) -> Changes {
    let (a, b) = match (serde_json::to_value(old), serde_json::to_value(new)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Changes::default(),
    };
    let mut changed = Vec::new();
    walk("", &a, &b, &mut changed);
    let need_restart = changed
        .iter()
        .filter(|k| needs_restart(k))
        .cloned()
        .collect();
    Changes {
        changed,
        need_restart,
    }
}

pub fn needs_restart(key: &str) -> bool {
    RESTART_PREFIXES
        .iter()
        .any(|p| key == *p || key.starts_with(&format!("{p}.")))
        || super::fleet::RESTART_KEYS.contains(&key)
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) if !is_leaf_object(path) && !is_duration(x) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => walk(&p, va, vb, out),
                    _ => out.push(p),
                }
            }
        }
        _ if a != b => out.push(path.to_string()),
        _ => {}
    }
}

/// Durations serialize as `{secs, nanos}`: report the duration's key, not its parts.
/// A serialized `Duration` (`{secs, nanos}`) is one value, whatever its key is called.
fn is_duration(v: &serde_json::Map<String, Value>) -> bool {
    v.len() == 2 && v.contains_key("secs") && v.contains_key("nanos")
}

fn is_leaf_object(path: &str) -> bool {
    matches!(
        path.rsplit('.').next(),
        Some(
            "grace_period"
                | "graceful_shutdown_timeout"
                | "connect_timeout"
                | "header_timeout"
                | "idle_timeout"
                | "keepalive"
                | "cooldown"
                | "max_cooldown"
                | "backoff"
                | "interval"
                | "timeout"
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Config {
        Config::parse(t, "t").unwrap()
    }

    #[test]
    fn lists_changed_keys_and_restart_needs() {
        let a = parse("");
        let b = parse(
            "server:\n  listen: [\"127.0.0.1:1\"]\nauth:\n  api_keys: [sk-new-key]\n\
             upstream:\n  idle_timeout: 5s\nmetrics:\n  listen: 127.0.0.1:2\n",
        );
        let c = diff(&a, &b);
        assert_eq!(
            c.changed,
            [
                "auth.api_keys",
                "metrics.listen",
                "server.listen",
                "upstream.idle_timeout"
            ]
        );
        assert_eq!(c.need_restart, ["metrics.listen", "server.listen"]);
        assert!(!serde_json::to_string(&c).unwrap().contains("sk-new-key"));
        assert_eq!(diff(&a, &a.clone()), Changes::default());
        // How upstream `content` values are read applies to the next request.
        let d = diff(&a, &parse("upstream:\n  content_delivery: incremental\n"));
        assert_eq!(d.changed, ["upstream.content_delivery"]);
        assert!(d.need_restart.is_empty());
    }
}

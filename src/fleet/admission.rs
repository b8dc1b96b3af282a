//! Client limits across the fleet (`limits.per_key` with a `fleet` section): one `admit`
//! script call per request decides for every instance at once (concurrency as leases that
//! expire, so a crashed instance's slots free themselves; rate as GCRA). Only requests
//! with a limit configured pay the round trip, under `fleet.command_timeout`; while Redis
//! is away each instance decides alone on its share of the limits.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::link::{FleetState, Mode};
use crate::config::fleet::FleetSection;
use crate::limits::{Denied, Rules};

/// One in-flight slot of a client key held in the fleet; released on drop (in the
/// background), or by its expiry if this instance dies.
#[derive(Debug)]
pub struct FleetPermit {
    state: Arc<FleetState>,
    kid: String,
    lease: String,
}

impl Drop for FleetPermit {
    fn drop(&mut self) {
        self.state.release(&self.kid, &self.lease);
    }
}

/// The fleet's answer for one request.
#[derive(Debug)]
pub enum Verdict {
    /// Admitted; the permit holds the concurrency slot (`None`: no concurrency limit).
    Admitted(Option<FleetPermit>),
    Denied(Denied),
}

/// This instance's share of `rules` when it decides alone in a fleet of `n`: the rate and
/// burst divided (at least 1 token), the concurrency divided rounding up.
pub fn share_of(rules: &Rules, n: usize) -> Rules {
    let n = n.max(1) as u32;
    let mut r = rules.clone();
    r.rate = rules.rate / f64::from(n);
    if rules.burst > 0 {
        r.burst = (rules.burst / n).max(1);
    }
    if rules.concurrency > 0 {
        r.concurrency = rules.concurrency.div_ceil(n);
    }
    r
}

/// Ask the fleet to admit one request of client `key`. `Err`: Redis could not answer in
/// `fleet.command_timeout` (or the link is in local mode); the caller decides alone.
pub async fn admit(
    state: &Arc<FleetState>,
    settings: &FleetSection,
    key: &str,
    rules: &Rules,
) -> Result<Verdict, String> {
    if state.mode() == Mode::Local {
        return Err("Redis is away".to_string());
    }
    let Some(mut con) = state.connection() else {
        return Err("not linked yet".to_string());
    };
    let keys = &state.keys;
    let kid = crate::secret::token_id(key);
    let lease = state.new_lease_id();
    let bucket = if rules.burst > 0 {
        f64::from(rules.burst)
    } else {
        rules.rate.max(1.0)
    };
    let mut call = state.scripts.admit.key(keys.rate(&kid));
    call.key(keys.leases(&kid))
        .arg(rules.rate)
        .arg(bucket)
        .arg(rules.concurrency)
        .arg(settings.lease_ttl.as_millis() as u64)
        .arg(&lease)
        .arg("");
    let answer = tokio::time::timeout(
        settings.command_timeout,
        call.invoke_async::<(i64, String, i64)>(&mut con),
    )
    .await;
    let (ok, why, retry_ms) = match answer {
        Ok(Ok(a)) => {
            state.path_ok();
            a
        }
        Ok(Err(e)) => {
            state.path_failed(&e.to_string());
            return Err(e.to_string());
        }
        Err(_) => {
            state.path_failed("no answer within fleet.command_timeout");
            return Err("no answer within fleet.command_timeout".to_string());
        }
    };
    if ok == 1 {
        if rules.concurrency == 0 {
            return Ok(Verdict::Admitted(None));
        }
        state.hold(&kid, &lease);
        return Ok(Verdict::Admitted(Some(FleetPermit {
            state: state.clone(),
            kid,
            lease,
        })));
    }
    state.denials.fetch_add(1, Ordering::Relaxed);
    Ok(Verdict::Denied(if why == "concurrency" {
        Denied::Concurrency {
            limit: rules.concurrency,
        }
    } else {
        Denied::Rate {
            retry_after: Duration::from_millis(retry_ms.max(1) as u64),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_alone_takes_its_share_of_the_limits() {
        let rules = Rules {
            concurrency: 5,
            rate: 10.0,
            burst: 7,
        };
        let s = share_of(&rules, 3);
        assert_eq!((s.concurrency, s.burst), (2, 2));
        assert!((s.rate - 10.0 / 3.0).abs() < 1e-9);
        let s = share_of(&rules, 20);
        assert_eq!((s.concurrency, s.burst), (1, 1));
        assert_eq!(share_of(&rules, 0), rules);
        let none = Rules {
            concurrency: 0,
            rate: 0.0,
            burst: 0,
        };
        assert_eq!(share_of(&none, 4), none);
    }
}

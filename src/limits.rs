//! Per-client-key limits: requests in flight (a counter) and request rate (a token bucket),
//! and the process-wide cap on chat requests in flight ([`Gate`], `limits.max_requests`).
//!
//! Pure: the clock is a parameter, so the rules are tested without sleeping. A [`Permit`]
//! holds one in-flight slot until it is dropped. Keys that are idle and full again are
//! forgotten, so the table does not grow with every client address ever seen.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The limits in force: `limits.per_key` as configured (0 = unlimited).
pub use crate::config::PerKeyLimits as Rules;

/// Bucket size: `burst`, or max(1, rate) when it is 0.
fn bucket(rules: &Rules) -> f64 {
    if rules.burst > 0 {
        f64::from(rules.burst)
    } else {
        rules.rate.max(1.0)
    }
}

fn limits_rate(rules: &Rules) -> bool {
    rules.rate > 0.0
}

/// Why a request was refused, and when to come back.
#[derive(Debug, Clone, PartialEq)]
pub enum Denied {
    /// `concurrency` requests of this key are in flight.
    Concurrency { limit: u32 },
    /// The bucket is empty; one token is back after `retry_after`.
    Rate { retry_after: Duration },
}

impl Denied {
    /// Seconds for `Retry-After` (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Denied::Concurrency { .. } => 1,
            Denied::Rate { retry_after } => {
                let ms = retry_after.as_millis() as u64;
                ms.div_ceil(1000).max(1)
            }
        }
    }

    pub fn message(&self) -> String {
        match self {
            Denied::Concurrency { limit } => format!(
                "Too many concurrent requests for this API key (limit {limit}); retry when one finishes"
            ),
            Denied::Rate { .. } => {
                "Rate limit exceeded for this API key; retry after the time in Retry-After"
                    .to_string()
            }
        }
    }
}

#[derive(Debug)]
struct KeyState {
    in_flight: u32,
    tokens: f64,
    refilled: Instant,
}

/// Limits state for every key.
#[derive(Debug, Default)]
pub struct Limiter {
    keys: Mutex<HashMap<String, KeyState>>,
}

/// One in-flight slot of a key; released on drop.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    key: String,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut keys = self.limiter.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = keys.get_mut(&self.key) {
            k.in_flight = k.in_flight.saturating_sub(1);
        }
    }
}

impl Limiter {
    pub fn new() -> Arc<Limiter> {
        Arc::new(Limiter::default())
    }

    /// Admit one request of `key` at `now`, or say why not. Unlimited rules admit at once.
    pub fn admit(
        self: &Arc<Self>,
        key: &str,
        rules: &Rules,
        now: Instant,
    ) -> Result<Permit, Denied> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if keys.len() > 4096 {
            // Forget keys with nothing in flight and a full bucket: they carry no state.
            keys.retain(|_, k| {
                let full = !limits_rate(rules)
                    || k.tokens + now.duration_since(k.refilled).as_secs_f64() * rules.rate
                        >= bucket(rules);
                k.in_flight > 0 || !full
            });
        }
        let k = keys.entry(key.to_string()).or_insert_with(|| KeyState {
            in_flight: 0,
            tokens: bucket(rules),
            refilled: now,
        });
        if rules.concurrency > 0 && k.in_flight >= rules.concurrency {
            return Err(Denied::Concurrency {
                limit: rules.concurrency,
            });
        }
        if limits_rate(rules) {
            let elapsed = now.saturating_duration_since(k.refilled).as_secs_f64();
            k.tokens = (k.tokens + elapsed * rules.rate).min(bucket(rules));
            k.refilled = now;
            if k.tokens < 1.0 {
                let wait = (1.0 - k.tokens) / rules.rate;
                return Err(Denied::Rate {
                    retry_after: Duration::from_secs_f64(wait),
                });
            }
            k.tokens -= 1.0;
        }
        k.in_flight += 1;
        Ok(Permit {
            limiter: self.clone(),
            key: key.to_string(),
        })
    }

    /// Requests of `key` in flight now.
    pub fn in_flight(&self, key: &str) -> u32 {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.get(key).map_or(0, |k| k.in_flight)
    }
}

/// Chat requests in flight across every key, against `limits.max_requests`.
#[derive(Debug, Default)]
pub struct Gate {
    open: AtomicUsize,
}

/// One request counted by a [`Gate`]; released on drop.
#[derive(Debug)]
pub struct Slot(Arc<Gate>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate::default())
    }

    /// A slot when fewer than `max` requests are in flight (`max` 0: always), else `None`.
    pub fn enter(self: &Arc<Self>, max: usize) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (max == 0 || n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// Requests counted now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: Rules = Rules {
        concurrency: 0,
        rate: 0.0,
        burst: 0,
    };

    #[test]
    fn unlimited_admits_everything_and_counts_in_flight() {
        let l = Limiter::new();
        let now = Instant::now();
        let permits: Vec<_> = (0..100)
            .map(|_| l.admit("a", &OPEN, now).unwrap())
            .collect();
        assert_eq!(l.in_flight("a"), 100);
        drop(permits);
        assert_eq!(l.in_flight("a"), 0);
    }

    #[test]
    fn concurrency_is_per_key_and_freed_on_drop() {
        let l = Limiter::new();
        let rules = Rules {
            concurrency: 2,
            ..OPEN
        };
        let now = Instant::now();
        let a1 = l.admit("a", &rules, now).unwrap();
        let _a2 = l.admit("a", &rules, now).unwrap();
        let denied = l.admit("a", &rules, now).unwrap_err();
        assert_eq!(denied, Denied::Concurrency { limit: 2 });
        assert_eq!(denied.retry_after_secs(), 1);
        // Another key is not affected.
        let _b = l.admit("b", &rules, now).unwrap();
        drop(a1);
        assert!(l.admit("a", &rules, now).is_ok());
    }

    #[test]
    fn token_bucket_allows_a_burst_then_the_rate() {
        let l = Limiter::new();
        let rules = Rules {
            concurrency: 0,
            rate: 2.0,
            burst: 3,
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(l.admit("k", &rules, t0).unwrap());
        }
        let Err(Denied::Rate { retry_after }) = l.admit("k", &rules, t0) else {
            panic!("fourth request in the same instant must be refused");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        assert_eq!(Denied::Rate { retry_after }.retry_after_secs(), 1);
        // Half a second later one token is back, and only one.
        let t1 = t0 + Duration::from_millis(500);
        drop(l.admit("k", &rules, t1).unwrap());
        assert!(l.admit("k", &rules, t1).is_err());
        // A long pause refills to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..3 {
            drop(l.admit("k", &rules, t2).unwrap());
        }
        assert!(l.admit("k", &rules, t2).is_err());
    }

    #[test]
    fn burst_zero_means_the_rate_rounded_up_to_one() {
        let l = Limiter::new();
        let slow = Rules {
            concurrency: 0,
            rate: 0.1,
            burst: 0,
        };
        let t0 = Instant::now();
        drop(l.admit("k", &slow, t0).unwrap());
        let Err(Denied::Rate { retry_after }) = l.admit("k", &slow, t0) else {
            panic!("second request must wait");
        };
        assert_eq!(retry_after.as_secs(), 10);
        assert_eq!(Denied::Rate { retry_after }.retry_after_secs(), 10);
    }

    #[test]
    fn idle_full_keys_are_forgotten_when_the_table_is_large() {
        let l = Limiter::new();
        let rules = Rules {
            concurrency: 0,
            rate: 1000.0,
            burst: 1,
        };
        let t0 = Instant::now();
        let held = l.admit("busy", &rules, t0).unwrap();
        for i in 0..5000 {
            drop(l.admit(&format!("ip{i}"), &rules, t0).unwrap());
        }
        let later = t0 + Duration::from_secs(1);
        drop(l.admit("new", &rules, later).unwrap());
        let n = l.keys.lock().unwrap().len();
        assert!(n < 100, "idle keys forgotten, {n} left");
        assert_eq!(
            l.in_flight("busy"),
            1,
            "a key with requests in flight is kept"
        );
        drop(held);
    }

    #[test]
    fn the_gate_admits_up_to_its_limit_and_frees_slots_on_drop() {
        let gate = Gate::new();
        let held: Vec<Slot> = (0..3).filter_map(|_| gate.enter(3)).collect();
        assert_eq!(held.len(), 3);
        assert!(gate.enter(3).is_none(), "a fourth is refused");
        assert_eq!(gate.open(), 3, "a refusal counts nothing");
        drop(held);
        assert_eq!(gate.open(), 0);
        assert!(gate.enter(3).is_some());
        // 0 = unlimited, still counted
        let many: Vec<Slot> = (0..100).filter_map(|_| gate.enter(0)).collect();
        assert_eq!(many.len(), 100);
        assert_eq!(gate.open(), 100);
        // a lower limit after a reload refuses until enough requests ended
        assert!(gate.enter(50).is_none());
    }
}

//! What crosses the wire to Redis: the keys of a fleet, a token's shared record (a short
//! comma-separated text), the events on the fleet's channel, and how a pool change becomes
//! the arguments of the `change` script. Pure.

use std::time::Duration;

use crate::pool::{Outcome, Shared, SharedState};

/// The keys of one fleet (`k2:v1:<name>`); pool keys share the hash tag `{pool}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(fleet: &str) -> Keys {
        Keys {
            prefix: format!("k2:v1:{fleet}"),
        }
    }
    /// HASH token id → record.
    pub fn tokens(&self) -> String {
        format!("{}:{{pool}}:tok", self.prefix)
    }
    /// HASH of pool-wide fields (`ver`).
    pub fn meta(&self) -> String {
        format!("{}:{{pool}}:meta", self.prefix)
    }
    /// The pub/sub channel of the fleet's events.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }
    /// ZSET instance id → last heartbeat (ms).
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }
    /// HASH of one instance's heartbeat.
    pub fn instance(&self, id: &str) -> String {
        format!("{}:inst:{id}", self.prefix)
    }
    /// HASH of an account's shared sign-in state (`aid` from
    /// [`crate::fleet::signin::account_id`]).
    pub fn account(&self, aid: &str) -> String {
        format!("{}:{{pool}}:acct:{aid}", self.prefix)
    }
    /// The lock of an account's sign-in.
    pub fn signin_lock(&self, aid: &str) -> String {
        format!("{}:{{pool}}:signin:{aid}", self.prefix)
    }
    /// HASH token id → token: tokens operators added through the admin API.
    pub fn added_tokens(&self) -> String {
        format!("{}:{{pool}}:tokens", self.prefix)
    }
    /// HASH token id → removal time (ms): tokens operators removed.
    pub fn removed_tokens(&self) -> String {
        format!("{}:{{pool}}:tomb", self.prefix)
    }
    /// A client key's GCRA state (its own hash tag, `kid` a [`crate::secret::token_id`]).
    pub fn rate(&self, kid: &str) -> String {
        format!("{}:rl:{{{kid}}}:tat", self.prefix)
    }
    /// A client key's in-flight leases.
    pub fn leases(&self, kid: &str) -> String {
        format!("{}:rl:{{{kid}}}:cc", self.prefix)
    }
}

/// `strikes,disabled,cool_until_ms,streak,version`.
pub fn encode(s: &SharedState, version: u64) -> String {
    format!(
        "{},{},{},{},{version}",
        s.strikes,
        u8::from(s.disabled),
        s.cool_until_ms,
        s.streak
    )
}

/// A record as [`encode`] writes it (and the `change` script); `None` when malformed.
pub fn decode(text: &str) -> Option<(SharedState, u64)> {
    let mut f = text.split(',').map(|x| x.trim().parse::<u64>());
    let mut next = || f.next()?.ok();
    let strikes = u32::try_from(next()?).ok()?;
    let disabled = next()? != 0;
    let cool_until_ms = next()?;
    let streak = u32::try_from(next()?).ok()?;
    let version = next()?;
    Some((
        SharedState {
            strikes,
            disabled,
            cool_until_ms,
            streak,
        },
        version,
    ))
}

/// One message on the fleet's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The new record of a token, after a change by instance `origin`.
    Token {
        origin: String,
        tid: String,
        state: SharedState,
        version: u64,
    },
    /// Every token was reset.
    ResetAll {
        origin: String,
    },
    /// Every instance re-reads its own config file.
    Reload {
        origin: String,
    },
    /// An account was signed in: its token is in the account's record.
    Account {
        origin: String,
        aid: String,
    },
    /// The fleet's failures-in-a-row count changed.
    Consecutive {
        origin: String,
        count: u32,
    },
    /// The fleet's count reached the threshold (and went back to 0): every instance
    /// refreshes its accounts (one sign-in per account for the whole fleet).
    RefreshAll {
        origin: String,
    },
    /// An operator added a token (stored under its id) or removed one.
    Added {
        origin: String,
        tid: String,
    },
    Removed {
        origin: String,
        tid: String,
    },
}

impl Event {
    /// `<origin> <tid> <record>`, `<origin> * reset`, `<origin> * reload`, `<origin> * refresh`,
    /// `<origin> * consec:<n>`, `<origin> * acct:<aid>`, `<origin> * add:<tid>`, `<origin> * del:<tid>`.
    pub fn parse(text: &str) -> Option<Event> {
        let mut parts = text.splitn(3, ' ');
        let origin = parts.next()?.to_string();
        let tid = parts.next()?;
        let rest = parts.next()?;
        match (tid, rest) {
            ("*", "reset") => Some(Event::ResetAll { origin }),
            ("*", "reload") => Some(Event::Reload { origin }),
            ("*", "refresh") => Some(Event::RefreshAll { origin }),
            ("*", rest) if rest.starts_with("consec:") => Some(Event::Consecutive {
                origin,
                count: rest["consec:".len()..].parse().ok()?,
            }),
            ("*", rest) if rest.starts_with("acct:") => Some(Event::Account {
                origin,
                aid: rest["acct:".len()..].to_string(),
            }),
            ("*", rest) if rest.starts_with("add:") => Some(Event::Added {
                origin,
                tid: rest["add:".len()..].to_string(),
            }),
            ("*", rest) if rest.starts_with("del:") => Some(Event::Removed {
                origin,
                tid: rest["del:".len()..].to_string(),
            }),
            ("*", _) => None,
            (tid, rec) => {
                let (state, version) = decode(rec)?;
                Some(Event::Token {
                    origin,
                    tid: tid.to_string(),
                    state,
                    version,
                })
            }
        }
    }

    pub fn reload(origin: &str) -> String {
        format!("{origin} * reload")
    }
}

/// The `change` script's arguments for one pool change: `tid`, the kind (`success`,
/// `strike`, `ratelimit`, `reset`, `disable`, `reset_all`), the Retry-After in ms (-1:
/// none), then the pool rules.
pub fn change_args(change: &Shared) -> (String, &'static str, i64) {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let (tid, kind, retry_after) = match change {
        Shared::Outcome { tid, outcome } => {
            let (kind, wait) = match outcome {
                Outcome::Success => ("success", -1),
                Outcome::RateLimited(ra) => ("ratelimit", ra.map_or(-1, ms)),
                Outcome::Rejected(_)
                | Outcome::ServerError(_)
                | Outcome::Timeout
                | Outcome::BadResponse => ("strike", -1),
                Outcome::Network | Outcome::RequestRefused(_) => ("none", -1),
            };
            (tid.clone(), kind, wait)
        }
        Shared::Reset { tid } => (tid.clone(), "reset", -1),
        Shared::Disable { tid } => (tid.clone(), "disable", -1),
        Shared::ResetAll => ("*".to_string(), "reset_all", -1),
        Shared::Add { tid, .. } => (tid.clone(), "add", -1),
        Shared::Remove { tid } => (tid.clone(), "remove", -1),
        Shared::ClearConsecutive => ("*".to_string(), "clear_consec", -1),
    };
    (tid, kind, retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let s = SharedState {
            strikes: 2,
            disabled: true,
            cool_until_ms: 1_764_000_000_123,
            streak: 3,
        };
        let text = encode(&s, 9);
        assert_eq!(text, "2,1,1764000000123,3,9");
        assert_eq!(decode(&text), Some((s, 9)));
        for bad in ["", "1,2,3", "a,0,0,0,1", "1,0,0,0"] {
            assert_eq!(decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn events_parse_tokens_resets_and_reloads() {
        assert_eq!(
            Event::parse("a-1 0123abcd 1,0,0,0,4"),
            Some(Event::Token {
                origin: "a-1".into(),
                tid: "0123abcd".into(),
                state: SharedState {
                    strikes: 1,
                    ..SharedState::default()
                },
                version: 4
            })
        );
        assert_eq!(
            Event::parse("b * reset"),
            Some(Event::ResetAll { origin: "b".into() })
        );
        assert_eq!(
            Event::parse(&Event::reload("c")),
            Some(Event::Reload { origin: "c".into() })
        );
        assert_eq!(
            Event::parse("a * acct:00ff"),
            Some(Event::Account {
                origin: "a".into(),
                aid: "00ff".into()
            })
        );
        assert_eq!(
            Event::parse("a * consec:3"),
            Some(Event::Consecutive {
                origin: "a".into(),
                count: 3
            })
        );
        assert_eq!(
            Event::parse("a * refresh"),
            Some(Event::RefreshAll { origin: "a".into() })
        );
        assert_eq!(Event::parse("a * consec:x"), None);
        assert_eq!(Event::parse("x * other"), None);
        assert_eq!(Event::parse("x"), None);
    }

    #[test]
    fn changes_become_script_arguments() {
        let o = |outcome| Shared::Outcome {
            tid: "t".into(),
            outcome,
        };
        assert_eq!(
            change_args(&o(Outcome::RateLimited(Some(Duration::from_secs(7))))),
            ("t".into(), "ratelimit", 7000)
        );
        assert_eq!(change_args(&o(Outcome::RateLimited(None))).2, -1);
        assert_eq!(change_args(&o(Outcome::Rejected(401))).1, "strike");
        assert_eq!(change_args(&o(Outcome::Success)).1, "success");
        assert_eq!(change_args(&Shared::ResetAll).1, "reset_all");
        assert_eq!(Keys::new("prod").tokens(), "k2:v1:prod:{pool}:tok");
    }
}

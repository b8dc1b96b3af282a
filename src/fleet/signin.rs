//! One sign-in per account across the fleet: before an instance signs an account in it
//! reads the account's shared record (a newer token another instance got is taken as is;
//! a fleet-wide backoff after failures is respected), then takes the account's lock
//! (`SET NX PX`); the winner signs in, stores the token and tells the fleet, the others
//! wait for the event. Passwords never leave the instance; the token is stored for the
//! fleet, sealed with `fleet.secret` when one is set ([`super::seal`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::link::FleetState;
use crate::config::fleet::FleetSection;
use crate::core::clock::unix_ms;

/// What an instance should do about a due account.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// Sign in; call [`signed_in`] or [`failed`] after, which release the lock.
    Won { owner: String },
    /// Another instance is signing in now; its token arrives as an event.
    Taken,
    /// The fleet backs off after failures until this Unix time (ms).
    Backoff(u64),
    /// Another instance signed in meanwhile: use its token (and its expiry, seconds).
    Adopt { token: String, exp: Option<u64> },
    /// Redis is away: decide alone.
    Away,
}

/// Claim the sign-in of `email`, whose token on this instance is `current`. The lock
/// lasts `hold` (twice the sign-in timeout: a holder that dies delays the next try by it).
pub async fn claim(
    state: &Arc<FleetState>,
    settings: &FleetSection,
    email: &str,
    current: Option<&str>,
    hold: Duration,
) -> Claim {
    // A link still coming up (or Redis briefly away) gets a moment before this instance
    // decides alone.
    if !state.wait_shared(settings.background_timeout * 3).await {
        return Claim::Away;
    }
    let Some(mut con) = state.connection() else {
        return Claim::Away;
    };
    let keys = &state.keys;
    let aid = account_id(email);
    let owner = format!("{}:{}", state.instance_id, unix_ms());
    let work = async {
        let rec: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(keys.account(&aid))
            .query_async(&mut con)
            .await?;
        let now = unix_ms();
        let num = |k: &str| rec.get(k).and_then(|v| v.parse::<u64>().ok());
        if let Some(next) = num("next_try_ms").filter(|t| *t > now) {
            return Ok(Claim::Backoff(next));
        }
        let stored = rec.get("token").filter(|t| !t.is_empty());
        if let Some(token) = stored.and_then(|t| super::seal::open(settings.secret.as_deref(), t)) {
            let exp = num("exp");
            let fresh = exp.is_none_or(|e| e > now / 1000 + 60);
            if Some(token.as_str()) != current && fresh {
                return Ok(Claim::Adopt { token, exp });
            }
        }
        let got: Option<String> = redis::cmd("SET")
            .arg(keys.signin_lock(&aid))
            .arg(&owner)
            .arg("NX")
            .arg("PX")
            .arg(hold.as_millis() as u64)
            .query_async(&mut con)
            .await?;
        Ok::<_, redis::RedisError>(match got {
            Some(_) => Claim::Won {
                owner: owner.clone(),
            },
            None => Claim::Taken,
        })
    };
    match tokio::time::timeout(settings.background_timeout, work).await {
        Ok(Ok(c)) => c,
        _ => Claim::Away,
    }
}

/// The sign-in of `email` succeeded: store the token for the fleet, tell every instance,
/// release the lock.
pub async fn signed_in(
    state: &Arc<FleetState>,
    settings: &FleetSection,
    email: &str,
    owner: &str,
    token: &str,
    exp: Option<u64>,
) -> Result<(), String> {
    let Some(mut con) = state.connection() else {
        return Err("not linked".to_string());
    };
    let keys = &state.keys;
    let aid = account_id(email);
    let now = unix_ms();
    let fields: Vec<(&str, String)> = vec![
        ("email", email.to_string()),
        (
            "token",
            super::seal::seal(settings.secret.as_deref(), token),
        ),
        ("exp", exp.unwrap_or(0).to_string()),
        ("signed_in_ms", now.to_string()),
        ("by", state.instance_id.clone()),
        ("fails", "0".to_string()),
        ("next_try_ms", "0".to_string()),
    ];
    let work = async {
        redis::pipe()
            .cmd("HSET")
            .arg(keys.account(&aid))
            .arg(&fields)
            .ignore()
            .cmd("PUBLISH")
            .arg(keys.events())
            .arg(format!("{} * acct:{aid}", state.instance_id))
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        release(state, &mut con, &aid, owner).await
    };
    tokio::time::timeout(settings.background_timeout, work)
        .await
        .map_err(|_| "no answer in time".to_string())?
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// The sign-in of `email` failed: the fleet backs off (`backoff` from the failures in a
/// row, which it returns counted fleet-wide), and the lock is released.
pub async fn failed(
    state: &Arc<FleetState>,
    settings: &FleetSection,
    email: &str,
    owner: &str,
    backoff: impl Fn(u64) -> Duration,
) -> Option<u64> {
    let mut con = state.connection()?;
    let keys = &state.keys;
    let aid = account_id(email);
    let work = async {
        let fails: u64 = redis::cmd("HINCRBY")
            .arg(keys.account(&aid))
            .arg("fails")
            .arg(1)
            .query_async(&mut con)
            .await?;
        let next = unix_ms() + backoff(fails).as_millis() as u64;
        redis::cmd("HSET")
            .arg(keys.account(&aid))
            .arg("next_try_ms")
            .arg(next)
            .query_async::<()>(&mut con)
            .await?;
        release(state, &mut con, &aid, owner).await?;
        Ok::<_, redis::RedisError>(fails)
    };
    tokio::time::timeout(settings.background_timeout, work)
        .await
        .ok()?
        .ok()
}

/// Release the account's lock if this instance (`owner`) still holds it.
async fn release(
    state: &FleetState,
    con: &mut redis::aio::ConnectionManager,
    aid: &str,
    owner: &str,
) -> Result<i64, redis::RedisError> {
    state
        .scripts
        .release
        .key(state.keys.signin_lock(aid))
        .arg(owner)
        .invoke_async(con)
        .await
}

/// The account's shared token (after an event), with its email and expiry.
pub async fn read_account(
    con: &mut redis::aio::ConnectionManager,
    keys: &super::record::Keys,
    aid: &str,
    secret: Option<&str>,
) -> Result<Option<(String, String, Option<u64>)>, redis::RedisError> {
    let rec: HashMap<String, String> = redis::cmd("HGETALL")
        .arg(keys.account(aid))
        .query_async(con)
        .await?;
    let token = rec.get("token").and_then(|t| super::seal::open(secret, t));
    let (Some(email), Some(token)) = (rec.get("email"), token) else {
        return Ok(None);
    };
    let exp = rec
        .get("exp")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|e| *e > 0);
    Ok(Some((email.clone(), token, exp)))
}

/// An account's id in key names: a SHA-256 prefix of the lower-cased email.
pub fn account_id(email: &str) -> String {
    crate::secret::token_id(&email.trim().to_lowercase())
}

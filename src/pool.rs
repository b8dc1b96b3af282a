//! The upstream token pool: round-robin leases, outcome rules, strikes and cooldowns.
//!
//! Pure and clock-injected (`now: Instant` is an argument everywhere), so every rule is
//! unit-tested without a server or a sleep. One short mutex section per lease or report;
//! nothing here waits on I/O.
//!
//! Rules (design §6):
//! - a lease takes the next usable token in round-robin order that the request has not
//!   tried yet, so one request never sees the same token twice;
//! - success clears the token's strikes and its 429 streak;
//! - 401/403, 5xx, timeouts and unusable answers add a strike; `max_failures` strikes
//!   disable the token until a reset or a new token list;
//! - 429 cools the token for `Retry-After`, or `cooldown · 2^(streak-1)` capped at
//!   `max_cooldown` when the upstream gives none; no strike;
//! - network errors (connect refused, reset before the head) are not the token's fault and
//!   change nothing;
//! - a refused token that came from an account asks for a fresh sign-in of that account
//!   alone ([`PoolEvent::RefreshAccount`]); `consecutive_threshold` failures in a row (any
//!   kind, success resets the count) ask for a refresh of every account
//!   ([`PoolEvent::RefreshAll`]) when the pool holds more than two tokens. The caller hands
//!   these to the updater in the background: nothing here waits on a sign-in.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::core::clock::unix_ms;
use crate::secret::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    pub max_failures: u32,
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// Failures in a row that ask for a refresh of every account (pool > 2 tokens).
    pub consecutive_threshold: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            max_failures: 3,
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
            consecutive_threshold: 2,
        }
    }
}

/// Where a token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `pool.tokens` in the config.
    Inline,
    /// The tokens file (including tokens added through the admin API).
    File,
    /// Signed in with this account (email).
    Account(String),
}

impl Source {
    pub fn label(&self) -> &'static str {
        match self {
            Source::Inline => "inline",
            Source::File => "file",
            Source::Account(_) => "account",
        }
    }

    pub fn account(&self) -> Option<&str> {
        match self {
            Source::Account(e) => Some(e),
            _ => None,
        }
    }
}

/// Work the pool asks for after an outcome; the caller forwards it to the updater.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// Sign in again with this account: its token (this id) was refused. Several refusals
    /// of the same token ask once: the updater skips the event when that token has left
    /// the pool (a sign-in replaced it meanwhile).
    RefreshAccount(String, u64),
    /// Too many failures in a row: refresh every account.
    RefreshAll,
}

/// What happened to one upstream attempt made with a leased token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// 401 or 403: the token was refused.
    Rejected(u16),
    /// 429, with the upstream's `Retry-After` when it gave one.
    RateLimited(Option<Duration>),
    /// 5xx or another unexpected status.
    ServerError(u16),
    /// No head (or first byte) in time.
    Timeout,
    /// A 200 whose body is not an answer (an HTML challenge page, garbage).
    BadResponse,
    /// Connect or I/O error before any response: not the token's fault.
    Network,
    /// The upstream refused the request itself (400, 422: a retired model, a body it will
    /// not take): the token worked, so it is neither struck nor credited.
    RequestRefused(u16),
}

impl Outcome {
    fn label(&self) -> String {
        match self {
            Outcome::Success => "ok".to_string(),
            Outcome::Rejected(s) => format!("HTTP {s} (token refused)"),
            Outcome::RateLimited(_) => "HTTP 429 (rate limited)".to_string(),
            Outcome::ServerError(s) => format!("HTTP {s}"),
            Outcome::Timeout => "timeout".to_string(),
            Outcome::BadResponse => "unusable response body".to_string(),
            Outcome::Network => "network error".to_string(),
            Outcome::RequestRefused(s) => format!("HTTP {s} (request refused)"),
        }
    }
}

/// A change a fleet shares (fleet mode only; see [`Pool::share`]): every instance applies
/// the same rules to the shared record and hears the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shared {
    /// An attempt's outcome on the token with this id ([`crate::secret::token_id`]).
    Outcome {
        tid: String,
        outcome: Outcome,
    },
    /// Operator actions.
    Reset {
        tid: String,
    },
    Disable {
        tid: String,
    },
    ResetAll,
    /// A token an operator added (its id and the token, which the fleet stores).
    Add {
        tid: String,
        token: Secret,
    },
    /// A token an operator removed.
    Remove {
        tid: String,
    },
    /// The fleet's failures-in-a-row counter back to 0: a success after failures, or an
    /// operator's reset.
    ClearConsecutive,
}

/// A token's state as the fleet holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedState {
    pub strikes: u32,
    pub disabled: bool,
    /// End of the cooldown, Unix milliseconds (0: none).
    pub cool_until_ms: u64,
    /// 429s in a row.
    pub streak: u32,
}

/// Most changes waiting for the fleet; past it the oldest go (counted by the caller).
pub const SHARED_QUEUE_LIMIT: usize = 10_000;

/// A token handed out for one attempt.
#[derive(Debug, Clone)]
pub struct Lease {
    /// Stable id of the pool entry (survives reloads of the token list).
    pub id: u64,
    pub token: Secret,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// The pool holds no token at all.
    Empty,
    /// Every usable token was already tried by this request.
    AllTried,
    /// Every token is disabled or cooling; `retry_after` is the earliest cooldown end.
    Exhausted { retry_after: Option<Duration> },
}

/// Per-token state, as shown to operators (token masked).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenView {
    /// Position in the pool (what the seed-compatible `/admin/tokens/reset/{i}` takes).
    pub index: usize,
    /// Stable id (survives reloads of the token list).
    pub id: u64,
    pub token: String,
    /// `inline`, `file` or `account`.
    pub source: &'static str,
    pub account: Option<String>,
    /// `active`, `cooling` or `disabled`.
    pub state: &'static str,
    pub strikes: u32,
    pub cooling_for_secs: Option<u64>,
    pub uses: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub total: usize,
    pub active: usize,
    pub cooling: usize,
    pub disabled: usize,
    pub current_index: usize,
    pub max_failures: u32,
    pub consecutive_failures: u32,
    pub consecutive_threshold: u32,
    pub consecutive_auth_failures: u32,
    /// Unix seconds of the last refused (401/403) attempt.
    pub last_auth_failure: Option<u64>,
    pub tokens: Vec<TokenView>,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    /// The id the fleet knows it by.
    tid: String,
    token: Secret,
    source: Source,
    strikes: u32,
    disabled: bool,
    cooling_until: Option<Instant>,
    rate_limit_streak: u32,
    uses: u64,
    failures: u64,
    last_error: Option<String>,
}

impl Entry {
    fn new(id: u64, token: Secret, source: Source) -> Entry {
        Entry {
            id,
            tid: crate::secret::token_id(token.expose()),
            token,
            source,
            strikes: 0,
            disabled: false,
            cooling_until: None,
            rate_limit_streak: 0,
            uses: 0,
            failures: 0,
            last_error: None,
        }
    }

    fn cooling(&self, now: Instant) -> Option<Duration> {
        self.cooling_until
            .and_then(|t| t.checked_duration_since(now))
            .filter(|d| !d.is_zero())
    }

    fn usable(&self, now: Instant) -> bool {
        !self.disabled && self.cooling(now).is_none()
    }
}

#[derive(Debug)]
struct Inner {
    settings: PoolSettings,
    entries: Vec<Entry>,
    cursor: usize,
    next_id: u64,
    consecutive_failures: u32,
    consecutive_auth_failures: u32,
    last_auth_failure: Option<SystemTime>,
    /// Changes for the fleet, when the pool is shared ([`Pool::share`]).
    outbox: Option<std::collections::VecDeque<Shared>>,
    /// Changes dropped because the queue was full.
    dropped: u64,
    /// The failures-in-a-row counter is the fleet's (Redis answers): this pool mirrors it,
    /// and the fleet's change script, not this pool, asks for a refresh of every account.
    fleet_counts: bool,
}

impl Inner {
    fn share(&mut self, change: Shared) {
        if let Some(q) = &mut self.outbox {
            if q.len() >= SHARED_QUEUE_LIMIT {
                q.pop_front();
                self.dropped += 1;
            }
            q.push_back(change);
        }
    }

    fn add(&mut self, token: Secret, source: Source) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push(Entry::new(id, token, source));
        id
    }

    fn find(&mut self, id: u64) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }
}

#[derive(Debug)]
pub struct Pool {
    inner: Mutex<Inner>,
}

impl Pool {
    pub fn new(settings: PoolSettings) -> Pool {
        Pool {
            inner: Mutex::new(Inner {
                settings,
                entries: Vec::new(),
                cursor: 0,
                next_id: 1,
                consecutive_failures: 0,
                consecutive_auth_failures: 0,
                last_auth_failure: None,
                outbox: None,
                dropped: 0,
                fleet_counts: false,
            }),
        }
    }

    /// Start queueing changes for a fleet (outcomes that change a token's state and
    /// operator actions); [`Pool::take_shared`] collects them.
    pub fn share(&self) {
        let mut inner = self.lock();
        if inner.outbox.is_none() {
            inner.outbox = Some(std::collections::VecDeque::new());
        }
    }

    /// The changes queued for the fleet, oldest first, and how many were dropped since the
    /// last call because the queue was full.
    pub fn take_shared(&self) -> (Vec<Shared>, u64) {
        let mut inner = self.lock();
        let dropped = std::mem::take(&mut inner.dropped);
        let taken = inner
            .outbox
            .as_mut()
            .map(|q| q.drain(..).collect())
            .unwrap_or_default();
        (taken, dropped)
    }

    /// Put changes back at the front of the queue (Redis was away), oldest first.
    pub fn requeue_shared(&self, changes: Vec<Shared>) {
        let mut inner = self.lock();
        let Some(q) = &mut inner.outbox else { return };
        for c in changes.into_iter().rev() {
            q.push_front(c);
        }
        let mut dropped = 0;
        while q.len() > SHARED_QUEUE_LIMIT {
            q.pop_back();
            dropped += 1;
        }
        inner.dropped += dropped;
    }

    /// The fleet's state for token `tid` (a report of any instance, an operator's action):
    /// it replaces this instance's. `offset_ms` is the fleet clock minus this one's.
    pub fn apply_shared(&self, tid: &str, state: SharedState, offset_ms: i64, now: Instant) {
        let now_ms = unix_ms() as i64 + offset_ms;
        let mut inner = self.lock();
        for e in inner.entries.iter_mut().filter(|e| e.tid == tid) {
            if state.disabled && !e.disabled && e.last_error.is_none() {
                e.last_error = Some("disabled in the fleet".to_string());
            }
            e.strikes = state.strikes;
            e.disabled = state.disabled;
            e.rate_limit_streak = state.streak;
            let left = state.cool_until_ms as i64 - now_ms;
            e.cooling_until = (state.cool_until_ms > 0 && left > 0)
                .then(|| now + Duration::from_millis(left as u64));
        }
    }

    /// This instance's view of token `tid` in the fleet's terms (`offset_ms`: fleet clock
    /// minus this one's).
    pub fn local_state(&self, tid: &str, offset_ms: i64, now: Instant) -> Option<SharedState> {
        let now_ms = unix_ms() as i64 + offset_ms;
        let inner = self.lock();
        let e = inner.entries.iter().find(|e| e.tid == tid)?;
        Some(SharedState {
            strikes: e.strikes,
            disabled: e.disabled,
            cool_until_ms: e
                .cooling(now)
                .map_or(0, |d| (now_ms + d.as_millis() as i64).max(0) as u64),
            streak: e.rate_limit_streak,
        })
    }

    /// Every token's fleet id.
    pub fn token_ids(&self) -> Vec<String> {
        self.lock().entries.iter().map(|e| e.tid.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the pool half-updated in a way that
        // matters more than refusing service, so recover the guard instead of propagating.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_settings(&self, settings: PoolSettings) {
        self.lock().settings = settings;
    }

    /// Replace the configured token list (inline and file tokens). Tokens that stay keep
    /// their id and state; duplicates collapse. Account tokens signed in by the updater are
    /// kept unless the list carries a token for the same account.
    pub fn set_tokens(&self, tokens: Vec<(Secret, Source)>) {
        let mut inner = self.lock();
        let listed_accounts: Vec<String> = tokens
            .iter()
            .filter_map(|(_, s)| s.account().map(str::to_string))
            .collect();
        let (mut signed_in, mut old): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut inner.entries)
            .into_iter()
            .partition(|e| {
                matches!(&e.source, Source::Account(a) if !listed_accounts.contains(a))
                    && !tokens.iter().any(|(t, _)| *t == e.token)
            });
        let mut entries: Vec<Entry> = Vec::with_capacity(tokens.len() + signed_in.len());
        for (token, source) in tokens {
            if entries.iter().any(|e| e.token == token) {
                continue;
            }
            match old.iter().position(|e| e.token == token) {
                Some(i) => {
                    let mut e = old.swap_remove(i);
                    e.source = source;
                    entries.push(e);
                }
                None => {
                    let id = inner.next_id;
                    inner.next_id += 1;
                    entries.push(Entry::new(id, token, source));
                }
            }
        }
        entries.append(&mut signed_in);
        inner.entries = entries;
        if inner.cursor >= inner.entries.len() {
            inner.cursor = 0;
        }
    }

    /// A fresh sign-in for `account`: its old tokens leave the pool, the new one starts
    /// clean. Returns the new token's id.
    pub fn replace_account_token(&self, account: &str, token: Secret) -> u64 {
        let mut inner = self.lock();
        inner
            .entries
            .retain(|e| e.source.account() != Some(account) && e.token != token);
        let id = inner.add(token, Source::Account(account.to_string()));
        if inner.cursor >= inner.entries.len() {
            inner.cursor = 0;
        }
        id
    }

    /// Add a token (admin API); `None` if it is already in the pool. A shared pool tells
    /// the fleet.
    pub fn add(&self, token: Secret, source: Source) -> Option<u64> {
        let id = self.add_from_fleet(token.clone(), source)?;
        let tid = crate::secret::token_id(token.expose());
        self.lock().share(Shared::Add { tid, token });
        Some(id)
    }

    /// Add a token another instance of the fleet added; `None` if it is already here.
    pub fn add_from_fleet(&self, token: Secret, source: Source) -> Option<u64> {
        let mut inner = self.lock();
        if inner.entries.iter().any(|e| e.token == token) {
            return None;
        }
        Some(inner.add(token, source))
    }

    /// Remove a token; what it was, if it existed. A shared pool tells the fleet.
    pub fn remove(&self, id: u64) -> Option<(Secret, Source)> {
        let mut inner = self.lock();
        let i = inner.entries.iter().position(|e| e.id == id)?;
        let e = inner.entries.remove(i);
        if inner.cursor >= inner.entries.len() {
            inner.cursor = 0;
        }
        inner.share(Shared::Remove { tid: e.tid.clone() });
        Some((e.token, e.source))
    }

    /// Remove the token another instance of the fleet removed; whether it was here.
    pub fn remove_from_fleet(&self, tid: &str) -> bool {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| e.tid != tid);
        if inner.cursor >= inner.entries.len() {
            inner.cursor = 0;
        }
        inner.entries.len() != before
    }

    /// Take a token out of rotation until a reset (operator action).
    pub fn disable(&self, id: u64) -> bool {
        let mut inner = self.lock();
        if let Some(tid) = inner.find(id).map(|e| e.tid.clone()) {
            inner.share(Shared::Disable { tid });
        }
        match inner.find(id) {
            Some(e) => {
                e.disabled = true;
                e.last_error = Some("disabled by an operator".to_string());
                true
            }
            None => false,
        }
    }

    /// The id of the token at position `index` (seed-compatible admin paths use indexes).
    pub fn id_at(&self, index: usize) -> Option<u64> {
        self.lock().entries.get(index).map(|e| e.id)
    }

    /// The tokens to persist in the tokens file: file and account tokens, in pool order.
    pub fn persisted(&self) -> Vec<(Secret, Source)> {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.source != Source::Inline)
            .map(|e| (e.token.clone(), e.source.clone()))
            .collect()
    }

    /// The accounts whose tokens are in the pool, with their tokens.
    pub fn account_tokens(&self) -> Vec<(String, Secret)> {
        self.lock()
            .entries
            .iter()
            .filter_map(|e| e.source.account().map(|a| (a.to_string(), e.token.clone())))
            .collect()
    }

    /// Clear both failure-in-a-row counters (the fleet's too, in a fleet); the previous
    /// `consecutive_failures`.
    pub fn reset_consecutive(&self) -> u32 {
        let mut inner = self.lock();
        let prev = inner.consecutive_failures;
        inner.consecutive_failures = 0;
        inner.consecutive_auth_failures = 0;
        inner.share(Shared::ClearConsecutive);
        prev
    }

    /// Whether the fleet counts failures in a row (fleet mode while Redis answers); while
    /// it does not, this pool counts and asks for refreshes on its own, as without a fleet.
    pub fn count_in_fleet(&self, on: bool) {
        let mut inner = self.lock();
        inner.fleet_counts = on && inner.outbox.is_some();
    }

    /// The fleet's failures-in-a-row count, as its change script last published it.
    pub fn apply_consecutive(&self, count: u32) {
        self.lock().consecutive_failures = count;
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the token with this id is still in the pool.
    pub fn holds(&self, id: u64) -> bool {
        self.lock().entries.iter().any(|e| e.id == id)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long until a token is usable again, when every one is cooling (`None`: one is
    /// usable now, or none ever will be).
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        match self.lease(&[], now) {
            Err(LeaseError::Exhausted { retry_after }) => retry_after,
            _ => None,
        }
    }

    /// Take the next usable token that is not in `tried`.
    pub fn lease(&self, tried: &[u64], now: Instant) -> Result<Lease, LeaseError> {
        let mut inner = self.lock();
        let n = inner.entries.len();
        if n == 0 {
            return Err(LeaseError::Empty);
        }
        let start = inner.cursor % n;
        let mut any_usable = false;
        for k in 0..n {
            let i = (start + k) % n;
            let e = &mut inner.entries[i];
            if !e.usable(now) {
                continue;
            }
            any_usable = true;
            if tried.contains(&e.id) {
                continue;
            }
            e.cooling_until = None;
            e.uses += 1;
            let lease = Lease {
                id: e.id,
                token: e.token.clone(),
            };
            inner.cursor = (i + 1) % n;
            return Ok(lease);
        }
        if any_usable {
            return Err(LeaseError::AllTried);
        }
        let retry_after = inner
            .entries
            .iter()
            .filter(|e| !e.disabled)
            .filter_map(|e| e.cooling(now))
            .min();
        Err(LeaseError::Exhausted { retry_after })
    }

    /// Apply the outcome of an attempt made with lease `id`, and say what refresh work it
    /// calls for. Unknown ids (the token was removed meanwhile) change nothing.
    pub fn report(&self, id: u64, outcome: &Outcome, now: Instant) -> Vec<PoolEvent> {
        let mut inner = self.lock();
        let settings = inner.settings;
        let pool_size = inner.entries.len();
        let Some(e) = inner.find(id) else {
            return Vec::new();
        };
        let mut events = Vec::new();
        let mut failed = true;
        let had_state = e.strikes > 0 || e.rate_limit_streak > 0;
        let news = match outcome {
            Outcome::Network | Outcome::RequestRefused(_) => false,
            Outcome::Success => had_state,
            _ => true,
        };
        // Only a shared pool pays for the token id (an allocation per report otherwise).
        let shared = (news && inner.outbox.is_some())
            .then(|| inner.find(id).map(|e| e.tid.clone()))
            .flatten();
        if let Some(tid) = shared {
            inner.share(Shared::Outcome {
                tid,
                outcome: outcome.clone(),
            });
        }
        let Some(e) = inner.find(id) else {
            return events;
        };
        match outcome {
            Outcome::Success => {
                e.strikes = 0;
                e.rate_limit_streak = 0;
                failed = false;
            }
            Outcome::Network | Outcome::RequestRefused(_) => return events,
            Outcome::RateLimited(retry_after) => {
                e.failures += 1;
                e.rate_limit_streak = e.rate_limit_streak.saturating_add(1);
                let wait = retry_after.unwrap_or_else(|| {
                    let exp = e.rate_limit_streak.saturating_sub(1).min(20);
                    settings
                        .cooldown
                        .saturating_mul(1u32 << exp)
                        .min(settings.max_cooldown)
                });
                e.cooling_until = Some(now + wait);
                e.last_error = Some(outcome.label());
            }
            Outcome::Rejected(_)
            | Outcome::ServerError(_)
            | Outcome::Timeout
            | Outcome::BadResponse => {
                e.failures += 1;
                e.strikes += 1;
                if e.strikes >= settings.max_failures {
                    e.disabled = true;
                }
                e.last_error = Some(outcome.label());
                if let (Outcome::Rejected(_), Some(account)) = (outcome, e.source.account()) {
                    events.push(PoolEvent::RefreshAccount(account.to_string(), id));
                }
            }
        }
        if !failed {
            let after_failures = inner.consecutive_failures > 0;
            inner.consecutive_failures = 0;
            inner.consecutive_auth_failures = 0;
            if after_failures && inner.fleet_counts {
                // Once per run of failures, not per success: the steady state sends nothing.
                inner.share(Shared::ClearConsecutive);
            }
            return events;
        }
        if matches!(outcome, Outcome::Rejected(_)) {
            inner.consecutive_auth_failures += 1;
            inner.last_auth_failure = Some(SystemTime::now());
        }
        inner.consecutive_failures += 1;
        if inner.fleet_counts {
            // The failure went to the fleet with the token's change; the fleet's count
            // decides, and its answer replaces this mirror.
            return events;
        }
        if pool_size > 2 && inner.consecutive_failures >= settings.consecutive_threshold {
            inner.consecutive_failures = 0;
            events.push(PoolEvent::RefreshAll);
        }
        events
    }

    /// Clear every token's strikes, cooldown and disabled flag.
    pub fn reset_all(&self) {
        let mut inner = self.lock();
        inner.share(Shared::ResetAll);
        for e in &mut inner.entries {
            e.strikes = 0;
            e.disabled = false;
            e.cooling_until = None;
            e.rate_limit_streak = 0;
        }
    }

    /// Clear strikes, cooldown and the disabled flag of one token; false if no such id.
    pub fn reset(&self, id: u64) -> bool {
        let mut inner = self.lock();
        if let Some(tid) = inner.find(id).map(|e| e.tid.clone()) {
            inner.share(Shared::Reset { tid });
        }
        match inner.entries.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                e.strikes = 0;
                e.disabled = false;
                e.cooling_until = None;
                e.rate_limit_streak = 0;
                true
            }
            None => false,
        }
    }

    pub fn stats(&self, now: Instant) -> PoolStats {
        let inner = self.lock();
        let mut stats = PoolStats {
            total: inner.entries.len(),
            active: 0,
            cooling: 0,
            disabled: 0,
            current_index: inner.cursor,
            max_failures: inner.settings.max_failures,
            consecutive_failures: inner.consecutive_failures,
            consecutive_threshold: inner.settings.consecutive_threshold,
            consecutive_auth_failures: inner.consecutive_auth_failures,
            last_auth_failure: inner
                .last_auth_failure
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            tokens: Vec::with_capacity(inner.entries.len()),
        };
        for (index, e) in inner.entries.iter().enumerate() {
            let cooling = e.cooling(now);
            let state = if e.disabled {
                stats.disabled += 1;
                "disabled"
            } else if cooling.is_some() {
                stats.cooling += 1;
                "cooling"
            } else {
                stats.active += 1;
                "active"
            };
            stats.tokens.push(TokenView {
                index,
                id: e.id,
                token: e.token.masked(),
                source: e.source.label(),
                account: e.source.account().map(str::to_string),
                state,
                strikes: e.strikes,
                cooling_for_secs: cooling.map(|d| d.as_secs_f64().ceil() as u64),
                uses: e.uses,
                failures: e.failures,
                last_error: e.last_error.clone(),
            });
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(tokens: &[&str]) -> Pool {
        let p = Pool::new(PoolSettings::default());
        p.set_tokens(
            tokens
                .iter()
                .map(|t| (Secret::new(*t), Source::Inline))
                .collect(),
        );
        p
    }

    fn take(p: &Pool, tried: &mut Vec<u64>, now: Instant) -> Result<String, LeaseError> {
        let l = p.lease(tried, now)?;
        tried.push(l.id);
        Ok(l.token.expose().to_string())
    }

    #[test]
    fn round_robin_across_requests_and_never_twice_within_one() {
        let p = pool(&["a", "b", "c"]);
        let now = Instant::now();
        let firsts: Vec<String> = (0..6)
            .map(|_| take(&p, &mut Vec::new(), now).unwrap())
            .collect();
        assert_eq!(firsts, ["a", "b", "c", "a", "b", "c"]);
        let mut tried = Vec::new();
        let mut seen: Vec<String> = (0..3).map(|_| take(&p, &mut tried, now).unwrap()).collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c"]);
        assert_eq!(p.lease(&tried, now).unwrap_err(), LeaseError::AllTried);
    }

    #[test]
    fn strikes_disable_and_success_clears() {
        let p = pool(&["a", "b"]);
        let now = Instant::now();
        let a = p.lease(&[], now).unwrap();
        p.report(a.id, &Outcome::Rejected(401), now);
        p.report(a.id, &Outcome::ServerError(500), now);
        p.report(a.id, &Outcome::Success, now);
        assert_eq!(p.stats(now).tokens[0].strikes, 0);
        for o in [
            Outcome::Timeout,
            Outcome::BadResponse,
            Outcome::Rejected(403),
        ] {
            p.report(a.id, &o, now);
        }
        let s = p.stats(now);
        assert_eq!((s.active, s.disabled), (1, 1));
        assert_eq!(s.tokens[0].state, "disabled");
        assert_eq!(
            s.tokens[0].last_error.as_deref(),
            Some("HTTP 403 (token refused)")
        );
        for _ in 0..4 {
            assert_eq!(take(&p, &mut Vec::new(), now).unwrap(), "b");
        }
        assert!(p.reset(a.id));
        assert_eq!(p.stats(now).active, 2);
    }

    #[test]
    fn network_errors_do_not_strike() {
        let p = pool(&["a"]);
        let now = Instant::now();
        for _ in 0..10 {
            p.report(1, &Outcome::Network, now);
        }
        assert_eq!(p.stats(now).active, 1);
    }

    #[test]
    fn refused_requests_do_not_strike_or_count_as_failures() {
        let p = pool(&["a", "b", "c"]);
        let now = Instant::now();
        for _ in 0..10 {
            for id in 1..=3 {
                let events = p.report(id, &Outcome::RequestRefused(400), now);
                assert!(events.is_empty(), "no refresh for a refused request");
            }
        }
        let s = p.stats(now);
        assert_eq!(s.active, 3);
        assert!(s
            .tokens
            .iter()
            .all(|t| t.strikes == 0 && t.last_error.is_none()));
    }

    #[test]
    fn rate_limit_cools_for_retry_after_or_exponential_backoff() {
        let p = pool(&["a", "b"]);
        let t0 = Instant::now();
        p.report(1, &Outcome::RateLimited(Some(Duration::from_secs(7))), t0);
        p.report(2, &Outcome::RateLimited(None), t0);
        match p.lease(&[], t0) {
            Err(LeaseError::Exhausted { retry_after }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(7)))
            }
            other => panic!("{other:?}"),
        }
        let s = p.stats(t0);
        assert_eq!((s.cooling, s.tokens[1].cooling_for_secs), (2, Some(30)));
        // a is usable again after 7 s; b is still cooling for 30 s
        let t7 = t0 + Duration::from_secs(7);
        assert_eq!(take(&p, &mut Vec::new(), t7).unwrap(), "a");
        // b's second 429 without Retry-After doubles the wait
        let t30 = t0 + Duration::from_secs(30);
        p.report(2, &Outcome::RateLimited(None), t30);
        assert_eq!(p.stats(t30).tokens[1].cooling_for_secs, Some(60));
        // no strikes from 429s
        assert_eq!(p.stats(t30).tokens[1].strikes, 0);
        // the backoff is capped
        for _ in 0..30 {
            p.report(2, &Outcome::RateLimited(None), t30);
        }
        assert_eq!(p.stats(t30).tokens[1].cooling_for_secs, Some(600));
    }

    #[test]
    fn empty_and_exhausted_without_cooldown() {
        let p = pool(&[]);
        assert_eq!(p.lease(&[], Instant::now()).unwrap_err(), LeaseError::Empty);
        let p = pool(&["a"]);
        let now = Instant::now();
        for _ in 0..3 {
            p.report(1, &Outcome::ServerError(502), now);
        }
        assert_eq!(
            p.lease(&[], now).unwrap_err(),
            LeaseError::Exhausted { retry_after: None }
        );
    }

    #[test]
    fn set_tokens_keeps_state_of_tokens_that_stay() {
        let p = pool(&["a", "b"]);
        let now = Instant::now();
        p.report(2, &Outcome::Rejected(401), now);
        p.set_tokens(vec![
            (Secret::new("b"), Source::File),
            (Secret::new("c"), Source::File),
            (Secret::new("c"), Source::File),
        ]);
        let s = p.stats(now);
        assert_eq!(s.total, 2);
        assert_eq!((s.tokens[0].id, s.tokens[0].strikes), (2, 1));
        assert_eq!(s.tokens[1].id, 3);
        p.report(1, &Outcome::Rejected(401), now); // removed token: ignored
    }

    #[test]
    fn stats_mask_tokens() {
        let p = pool(&["eyJhbGciOiJIUzI1NiJ9.secret-part.sig1"]);
        let s = p.stats(Instant::now());
        assert_eq!(s.tokens[0].token, "eyJh…sig1");
        assert!(!serde_json::to_string(&s).unwrap().contains("secret-part"));
    }

    #[test]
    fn refused_account_tokens_ask_for_that_account_only() {
        let p = Pool::new(PoolSettings::default());
        p.set_tokens(vec![(Secret::new("inline"), Source::Inline)]);
        let id = p.replace_account_token("a@x.io", Secret::new("jwt-a"));
        let now = Instant::now();
        assert_eq!(
            p.report(id, &Outcome::Rejected(401), now),
            vec![PoolEvent::RefreshAccount("a@x.io".into(), id)]
        );
        // once a sign-in replaced the refused token, its later refusals ask for nothing
        assert!(p.holds(id));
        let fresh = p.replace_account_token("a@x.io", Secret::new("jwt-a2"));
        assert!(!p.holds(id) && p.holds(fresh));
        // a refused inline token has no account to refresh
        assert!(p.report(1, &Outcome::Rejected(403), now).is_empty());
        // a new sign-in replaces the account's token with a clean one
        let id2 = p.replace_account_token("a@x.io", Secret::new("jwt-a2"));
        let s = p.stats(now);
        assert_eq!(s.total, 2);
        assert_eq!(s.tokens[1].id, id2);
        assert_eq!((s.tokens[1].strikes, s.tokens[1].source), (0, "account"));
        // a reload of the configured tokens keeps signed-in account tokens
        p.set_tokens(vec![(Secret::new("other"), Source::File)]);
        assert_eq!(
            p.account_tokens(),
            vec![("a@x.io".to_string(), Secret::new("jwt-a2"))]
        );
        assert_eq!(p.persisted().len(), 2);
    }

    #[test]
    fn failures_in_a_row_ask_for_a_refresh_of_everything_only_in_pools_over_two() {
        let now = Instant::now();
        let p = pool(&["a", "b", "c"]);
        assert!(p.report(1, &Outcome::ServerError(500), now).is_empty());
        assert_eq!(
            p.report(2, &Outcome::Timeout, now),
            vec![PoolEvent::RefreshAll]
        );
        // the count restarts after asking, and success resets it
        assert!(p.report(3, &Outcome::ServerError(502), now).is_empty());
        p.report(3, &Outcome::Success, now);
        assert!(p.report(1, &Outcome::BadResponse, now).is_empty());
        assert_eq!(p.stats(now).consecutive_failures, 1);
        assert_eq!(p.reset_consecutive(), 1);
        // network errors do not count
        for _ in 0..5 {
            assert!(p.report(2, &Outcome::Network, now).is_empty());
        }
        // two tokens: never
        let small = pool(&["a", "b"]);
        for _ in 0..5 {
            assert!(small.report(1, &Outcome::ServerError(500), now).is_empty());
        }
    }

    #[test]
    fn operator_actions() {
        let p = pool(&["a", "b"]);
        let now = Instant::now();
        assert!(p.disable(1));
        assert_eq!(p.stats(now).tokens[0].state, "disabled");
        assert_eq!(p.lease(&[], now).unwrap().token.expose(), "b");
        p.reset_all();
        assert_eq!(p.stats(now).active, 2);
        assert_eq!(p.add(Secret::new("a"), Source::File), None);
        let c = p.add(Secret::new("c"), Source::File).unwrap();
        assert_eq!(p.id_at(2), Some(c));
        assert_eq!(p.remove(c).map(|(t, _)| t), Some(Secret::new("c")));
        assert_eq!(p.remove(c), None);
        assert!(!p.disable(c) && !p.reset(c));
    }

    #[test]
    fn in_a_fleet_the_fleet_counts_failures_in_a_row_and_a_success_clears_it_once() {
        let now = Instant::now();
        let p = pool(&["a", "b", "c"]);
        p.count_in_fleet(true);
        assert_eq!(p.stats(now).consecutive_failures, 0);
        // Not shared yet: the flag needs a fleet, and the pool counts on its own.
        p.report(1, &Outcome::ServerError(500), now);
        assert_eq!(
            p.report(2, &Outcome::Timeout, now),
            vec![PoolEvent::RefreshAll]
        );
        p.share();
        p.count_in_fleet(true);
        // Shared: failures go out with the tokens' changes and never ask for a refresh
        // here (the fleet's script decides); the mirror counts meanwhile.
        for id in [1, 2, 3, 1] {
            assert!(p.report(id, &Outcome::ServerError(500), now).is_empty());
        }
        assert_eq!(p.stats(now).consecutive_failures, 4);
        // The fleet's count replaces the mirror.
        p.apply_consecutive(7);
        assert_eq!(p.stats(now).consecutive_failures, 7);
        p.take_shared();
        // The first success after failures clears the fleet's count; the next ones send
        // nothing (a success on a clean token is not news).
        p.reset(3);
        p.take_shared();
        p.report(3, &Outcome::Success, now);
        p.report(3, &Outcome::Success, now);
        assert_eq!(p.take_shared().0, vec![Shared::ClearConsecutive]);
        assert_eq!(p.stats(now).consecutive_failures, 0);
        // An operator's reset clears the fleet's count too.
        p.reset_consecutive();
        assert_eq!(p.take_shared().0, vec![Shared::ClearConsecutive]);
        // With Redis away the pool counts and asks on its own again.
        p.count_in_fleet(false);
        p.report(1, &Outcome::ServerError(500), now);
        assert_eq!(
            p.report(2, &Outcome::ServerError(500), now),
            vec![PoolEvent::RefreshAll]
        );
    }

    #[test]
    fn a_shared_pool_queues_what_changes_a_token_and_follows_the_fleet() {
        let p = pool(&["a", "b"]);
        let now = Instant::now();
        let a = p.lease(&[], now).unwrap();
        // Not shared: nothing is queued.
        p.report(a.id, &Outcome::Rejected(401), now);
        assert_eq!(p.take_shared(), (vec![], 0));
        p.share();
        let tid = crate::secret::token_id("a");
        // A success on a struck token is news; on a clean one, a network error or a refused
        // request is not.
        p.report(a.id, &Outcome::Success, now);
        p.report(a.id, &Outcome::Success, now);
        p.report(a.id, &Outcome::Network, now);
        p.report(a.id, &Outcome::RequestRefused(400), now);
        p.report(a.id, &Outcome::RateLimited(None), now);
        p.reset(a.id);
        p.disable(a.id);
        p.reset_all();
        let (got, dropped) = p.take_shared();
        assert_eq!(dropped, 0);
        let o = |outcome| Shared::Outcome {
            tid: tid.clone(),
            outcome,
        };
        assert_eq!(
            got,
            vec![
                o(Outcome::Success),
                o(Outcome::RateLimited(None)),
                Shared::Reset { tid: tid.clone() },
                Shared::Disable { tid: tid.clone() },
                Shared::ResetAll,
            ]
        );
        // What could not be sent goes back in front, in order.
        p.report(a.id, &Outcome::Timeout, now);
        p.requeue_shared(got.clone());
        let (again, _) = p.take_shared();
        assert_eq!(again.len(), got.len() + 1);
        assert_eq!(again[..got.len()], got[..]);

        // The fleet's record replaces this instance's view: a cooldown in fleet time, a
        // disable, and a clean record.
        let cooled = SharedState {
            cool_until_ms: unix_ms() + 5_000,
            streak: 1,
            ..SharedState::default()
        };
        p.apply_shared(&tid, cooled, 0, now);
        let t = &p.stats(now).tokens[0];
        assert_eq!(t.state, "cooling");
        assert!((4..=5).contains(&t.cooling_for_secs.unwrap()), "{t:?}");
        // The same record seen from an instance whose clock is 10 s behind the fleet's
        // has already expired.
        p.apply_shared(&tid, cooled, 10_000, now);
        assert_eq!(p.stats(now).tokens[0].state, "active");
        p.apply_shared(
            &tid,
            SharedState {
                disabled: true,
                strikes: 3,
                ..SharedState::default()
            },
            0,
            now,
        );
        assert_eq!(p.stats(now).tokens[0].state, "disabled");
        p.apply_shared(&tid, SharedState::default(), 0, now);
        assert_eq!(p.stats(now).tokens[0].state, "active");
        assert_eq!(p.stats(now).tokens[0].strikes, 0);
    }

    #[test]
    fn the_shared_queue_is_bounded_and_counts_what_it_drops() {
        let p = pool(&["a"]);
        p.share();
        for _ in 0..SHARED_QUEUE_LIMIT + 5 {
            p.reset_all();
        }
        let (got, dropped) = p.take_shared();
        assert_eq!((got.len(), dropped), (SHARED_QUEUE_LIMIT, 5));
    }
}

//! The token keeper: signs accounts in through Pingora's connector (same TLS stack as the
//! chat path) and keeps their tokens fresh, in the background.
//!
//! Runs at start, at each account's refresh time (a fraction of its JWT lifetime, capped by
//! `updater.interval`), when the pool asks (a refused account token, failures in a row), and
//! on `POST /admin/tokens/updater/force-update`. Sign-ins run at most `max_parallel` at a
//! time and at most one per account. A failed sign-in never removes a working token; the
//! account is retried later with backoff. No request ever waits on any of this.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use log::{debug, info, warn};
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::{Notify, Semaphore};

use super::reload::unix_now;
use super::{fetch, App};
use crate::fleet::signin::{self, Claim};
use crate::pool::PoolEvent;
use crate::secret::Secret;
use crate::updater::{
    due_accounts, jwt_exp, parse_accounts, refresh_due, token_from_signin, Account, AccountStatus,
    UpdaterStatus,
};

const SIGNIN_PATH: &str = "/api/v1/auths/signin";
const MAX_ANSWER: usize = 64 * 1024;
/// How often the loop looks again when nothing is due (picks up config reloads).
const TICK: Duration = Duration::from_secs(5);

/// Shared updater state (in `App`).
#[derive(Default)]
pub struct UpdaterState {
    status: Mutex<UpdaterStatus>,
    /// email → unix time of its next refresh.
    due: Mutex<HashMap<String, u64>>,
    /// Consecutive failed sign-ins per account (for backoff).
    failures: Mutex<HashMap<String, u32>>,
    inflight: Mutex<HashSet<String>>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl UpdaterState {
    /// Make these accounts (or all, with `None`) due now and wake the loop.
    pub fn force(&self, email: Option<&str>) {
        let mut due = lock(&self.due);
        match email {
            Some(e) => {
                due.insert(e.to_string(), 0);
            }
            None => due.values_mut().for_each(|t| *t = 0),
        }
        drop(due);
        self.wake.notify_one();
    }
}

impl App {
    /// The updater's status, with live counts.
    pub fn updater_status(&self) -> UpdaterStatus {
        let snap = self.snapshot();
        let mut s = lock(&self.updater.status).clone();
        s.update_interval = snap.config.updater.interval.as_secs();
        s.accounts_file_exists = snap
            .config
            .updater
            .accounts_file
            .as_deref()
            .is_some_and(|p| std::path::Path::new(p).exists());
        s.cached_tokens_count = self.pool.account_tokens().len();
        s.mode = if snap.config.pool.tokens_file.is_some() {
            "file"
        } else {
            "memory"
        };
        s.next_update = lock(&self.updater.due).values().min().copied();
        s.is_updating = !lock(&self.updater.inflight).is_empty();
        s
    }

    pub fn updater_enabled(&self) -> bool {
        self.snapshot().config.updater.accounts_file.is_some()
    }

    pub fn force_update(&self) {
        self.updater.force(None);
    }
}

pub struct UpdaterService {
    pub app: Arc<App>,
}

#[async_trait]
impl BackgroundService for UpdaterService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let app = &self.app;
        let Some(mut events) = lock(&app.refresh_rx).take() else {
            return;
        };
        loop {
            let snap = app.snapshot();
            let cfg = snap.config.updater.clone();
            let accounts = match cfg.accounts_file.as_deref() {
                None => Vec::new(),
                Some(path) => match std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {path}: {e}"))
                    .and_then(|t| parse_accounts(&t).map_err(|e| format!("{path}: {e}")))
                {
                    Ok(a) => a,
                    Err(e) => {
                        let mut st = lock(&app.updater.status);
                        if st.last_error.as_deref() != Some(e.as_str()) {
                            warn!("updater: {e}");
                        }
                        st.last_error = Some(e);
                        Vec::new()
                    }
                },
            };
            {
                let mut st = lock(&app.updater.status);
                st.is_running = cfg.accounts_file.is_some();
                st.accounts = accounts.len();
            }
            let now = unix_now();
            let due: Vec<Account> = {
                let map = lock(&app.updater.due);
                due_accounts(&accounts, &map, now)
                    .into_iter()
                    .cloned()
                    .collect()
            };
            if !due.is_empty() {
                self.run(due, cfg.max_parallel, cfg.timeout).await;
            }
            let next = {
                let map = lock(&app.updater.due);
                accounts
                    .iter()
                    .filter_map(|a| map.get(&a.email))
                    .min()
                    .copied()
            };
            let wait = next
                .map(|t| Duration::from_secs(t.saturating_sub(unix_now())))
                .unwrap_or(TICK)
                .min(TICK);
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = app.updater.wake.notified() => {}
                ev = events.recv() => match ev {
                    None => break,
                    // Requests in flight may each be refused with the same token before
                    // the new one is in: one sign-in answers them all.
                    Some(PoolEvent::RefreshAccount(email, id)) if app.pool.holds(id) => {
                        info!("updater: a token of {email} was refused; signing in again");
                        app.updater.force(Some(&email));
                    }
                    Some(PoolEvent::RefreshAccount(email, _)) => {
                        debug!("updater: a refused token of {email} was replaced already");
                    }
                    Some(PoolEvent::RefreshAll) => {
                        if !accounts.is_empty() {
                            info!("updater: failures in a row; refreshing every account");
                        }
                        app.updater.force(None);
                    }
                },
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

impl UpdaterService {
    /// Sign these accounts in, `max_parallel` at a time, one flight per account.
    async fn run(&self, accounts: Vec<Account>, max_parallel: usize, timeout: Duration) {
        let sem = Arc::new(Semaphore::new(max_parallel));
        let mut tasks = tokio::task::JoinSet::new();
        for account in accounts {
            if !lock(&self.app.updater.inflight).insert(account.email.clone()) {
                continue;
            }
            let (app, sem) = (self.app.clone(), sem.clone());
            tasks.spawn(async move {
                let _permit = sem.acquire().await;
                signin_once(&app, &account, timeout).await;
                lock(&app.updater.inflight).remove(&account.email);
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// Sign `account` in, once per fleet when there is one: another instance's fresh token is
/// taken instead, a fleet-wide backoff is respected, and while another instance holds the
/// account's lock this one waits for its token. Without a fleet (or with Redis away) the
/// instance signs in alone, as before.
async fn signin_once(app: &Arc<App>, account: &Account, timeout: Duration) {
    let attempt = || async {
        tokio::time::timeout(timeout, sign_in(app, account))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", timeout.as_secs())))
    };
    let snap = app.snapshot();
    let (Some(state), Some(settings)) = (&app.fleet, &snap.config.fleet) else {
        return record(app, account, attempt().await);
    };
    let email = &account.email;
    let current = app
        .pool
        .account_tokens()
        .into_iter()
        .find(|(a, _)| a == email)
        .map(|(_, t)| t.expose().to_string());
    let hold = timeout * 2;
    match signin::claim(state, settings, email, current.as_deref(), hold).await {
        Claim::Won { owner } => {
            let result = attempt().await;
            match &result {
                Ok(token) => {
                    if let Err(e) =
                        signin::signed_in(state, settings, email, &owner, token, jwt_exp(token))
                            .await
                    {
                        warn!("updater: signed in {email} but could not tell the fleet ({e})");
                    }
                }
                Err(_) => {
                    let interval = snap.config.updater.interval.as_secs();
                    let _ = signin::failed(state, settings, email, &owner, |n| {
                        Duration::from_secs(backoff_secs(n, interval))
                    })
                    .await;
                }
            }
            record(app, account, result);
        }
        Claim::Taken => {
            debug!("updater: another instance is signing {email} in; waiting for its token");
            let due = unix_now() + hold.as_secs().max(1);
            lock(&app.updater.due).insert(email.clone(), due);
        }
        Claim::Backoff(until_ms) => {
            debug!("updater: the fleet backs off signing {email} in");
            lock(&app.updater.due).insert(email.clone(), until_ms.div_ceil(1000));
        }
        Claim::Adopt { token, exp } => adopt(app, email, token, exp),
        Claim::Away => record(app, account, attempt().await),
    }
}

/// Seconds before the next try after `n` failures in a row.
fn backoff_secs(n: u64, interval: u64) -> u64 {
    (30u64 << n.min(10)).min(interval)
}

/// Use the token another instance of the fleet got for `email` (no sign-in here), and
/// schedule the account's next refresh from its expiry.
pub(super) fn adopt(app: &App, email: &str, token: String, exp: Option<u64>) {
    let token = Secret::new(token);
    let held = app
        .pool
        .account_tokens()
        .into_iter()
        .any(|(a, t)| a == email && t == token);
    if held {
        return;
    }
    let now = unix_now();
    let cfg = app.snapshot().config.updater.clone();
    app.pool.replace_account_token(email, token);
    let due = refresh_due(now, exp, cfg.refresh_at, cfg.interval.as_secs());
    lock(&app.updater.due).insert(email.to_string(), due);
    lock(&app.updater.failures).remove(email);
    info!(
        "updater: took the token of {email} another instance signed in; next refresh in {}s",
        due.saturating_sub(now)
    );
    if let Err(e) = app.persist_tokens() {
        warn!("updater: {e}");
    }
}

/// Apply one sign-in result: swap the account's token in, persist, schedule the next one.
fn record(app: &App, account: &Account, result: Result<String, String>) {
    let now = unix_now();
    let cfg = app.snapshot().config.updater.clone();
    let email = &account.email;
    let mut per = AccountStatus {
        email: email.clone(),
        last_signin: Some(now),
        ..Default::default()
    };
    match result {
        Ok(token) => {
            let exp = jwt_exp(&token);
            app.pool.replace_account_token(email, Secret::new(token));
            let due = refresh_due(now, exp, cfg.refresh_at, cfg.interval.as_secs());
            lock(&app.updater.due).insert(email.clone(), due);
            lock(&app.updater.failures).remove(email);
            per.token_expires = exp;
            per.refresh_due = Some(due);
            app.metrics.refreshes.with_label_values(&["success"]).inc();
            info!(
                "updater: signed in {email}; next refresh in {}s",
                due.saturating_sub(now)
            );
            // counted before the file is written: whoever sees the new token in the file
            // sees the sign-in counted too
            {
                let mut st = lock(&app.updater.status);
                st.update_count += 1;
                st.last_update = Some(now);
            }
            if let Err(e) = app.persist_tokens() {
                warn!("updater: {e}");
            }
        }
        Err(e) => {
            let n = {
                let mut f = lock(&app.updater.failures);
                let n = f.entry(email.clone()).or_insert(0);
                *n += 1;
                *n
            };
            let backoff = backoff_secs(u64::from(n), cfg.interval.as_secs());
            lock(&app.updater.due).insert(email.clone(), now + backoff);
            per.last_error = Some(e.clone());
            per.refresh_due = Some(now + backoff);
            app.metrics.refreshes.with_label_values(&["failure"]).inc();
            warn!("updater: sign-in of {email} failed ({e}); keeping its current token, retry in {backoff}s");
            let mut st = lock(&app.updater.status);
            st.error_count += 1;
            st.last_error = Some(format!("{email}: {e}"));
        }
    }
    let mut st = lock(&app.updater.status);
    st.per_account.retain(|a| a.email != *email);
    st.per_account.push(per);
    st.per_account.sort_by(|a, b| a.email.cmp(&b.email));
}

/// One sign-in: `POST /api/v1/auths/signin` with the account's email and password.
async fn sign_in(app: &App, account: &Account) -> Result<String, String> {
    let snap = app.snapshot();
    let body = serde_json::json!({"email": account.email, "password": account.password.expose()})
        .to_string();
    let h = &snap.config.upstream.headers;
    let build = || -> Result<RequestHeader, String> {
        let e = |e: Box<pingora::Error>| format!("cannot build the request: {e}");
        let mut req = fetch::head(&snap.target, "POST", SIGNIN_PATH)?;
        req.insert_header("content-type", "application/json")
            .map_err(e)?;
        req.insert_header("accept", "application/json").map_err(e)?;
        if !snap.origin.is_empty() {
            req.insert_header("referer", format!("{}/auth?mode=signin", snap.origin))
                .map_err(e)?;
            req.insert_header("origin", snap.origin.as_str())
                .map_err(e)?;
        }
        if !h.user_agent.is_empty() {
            req.insert_header("user-agent", h.user_agent.as_str())
                .map_err(e)?;
        }
        Ok(req)
    };
    let up = &snap.config.upstream;
    let settings = fetch::PeerSettings {
        connect_timeout: up.connect_timeout,
        read_timeout: up.idle_timeout.max(up.header_timeout),
        tls_verify: up.tls_verify,
    };
    let got = fetch::fetch(
        app,
        &snap.target,
        settings,
        build()?,
        Some(bytes::Bytes::from(body)),
        MAX_ANSWER,
        snap.config.updater.timeout,
    )
    .await
    .map_err(|e| format!("sign-in {e}"))?;
    let cookies: Vec<&str> = got
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    token_from_signin(got.status, &got.body, &cookies)
}

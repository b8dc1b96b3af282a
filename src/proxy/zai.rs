//! A Z.AI provider at run time: its identities (a small pool of guests, or user JWTs in a
//! token pool), the cached front-end version, captcha proofs, chat creation and cleanup,
//! and the signed request of each attempt. The wire facts (signature, bodies, decoder,
//! error classes) are pure, in [`crate::provider::zai`]; this file does their I/O.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use log::{info, warn};
use pingora::http::RequestHeader;
use serde_json::Value;

use super::failure::{Failure, Refused};
use super::fetch::{self, Fetched, PeerSettings};
use super::App;
use crate::config::providers::{CaptchaSourceKind, ZaiMode, ZaiSection};
use crate::config::UpstreamTarget;
use crate::core::error::ApiError;
use crate::core::request::{Sampling, Turn};
use crate::pool::{Lease, LeaseError, Outcome, Pool, PoolSettings, Source};
use crate::provider::zai::classify::{classify, classify_inline, Refusal};
use crate::provider::zai::{body, fe_version, sign};
use crate::secret::Secret;

/// Longest side-call answer read (a home page, a guest, a chat).
const SIDE_ANSWER_LIMIT: usize = 2 * 1024 * 1024;
/// Time for a side call.
const SIDE_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an idle connection to Z.AI is kept for reuse.
pub const KEEPALIVE: Duration = Duration::from_secs(60);
/// How long cleanup of a request's chat may take after the answer.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(3);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An anonymous identity from `GET /api/v1/auths/`.
#[derive(Debug, Clone)]
struct Guest {
    id: u64,
    token: Secret,
    user_id: String,
    born: Instant,
}

/// Whose token an attempt sends.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Stable id for "tried already" (a pool entry or a guest).
    pub id: u64,
    pub token: Secret,
    pub user_id: String,
    /// `None`: a guest.
    pub lease: Option<Lease>,
}

/// Why no identity could be had.
#[derive(Debug)]
pub enum NoIdentity {
    /// Every identity was tried by this request.
    AllTried,
    /// User mode without a usable token.
    Exhausted(Option<Duration>),
    /// The upstream would not hand out a guest (message names the step).
    Guest(String),
}

/// One signed completion request, ready to send.
pub struct Call {
    pub header: RequestHeader,
    pub body: Bytes,
    /// The chat created for it (`None`: a random id, nothing to clean up).
    pub created_chat: Option<String>,
}

/// What a request needs to build its Z.AI body.
pub struct Ask<'a> {
    pub upstream_model: &'a str,
    pub model: &'a crate::provider::zai::models::ZaiModel,
    pub turns: &'a [Turn],
    pub sampling: &'a Sampling,
    pub thinking: bool,
    pub effort: Option<&'a str>,
}

pub struct ZaiRuntime {
    pub name: String,
    pub section: ZaiSection,
    pub target: UpstreamTarget,
    origin: String,
    guests: Mutex<Vec<Guest>>,
    next_guest: AtomicUsize,
    guest_ids: AtomicU64,
    /// Serializes guest creation so a burst of first requests creates `guests` guests, not
    /// one per request.
    creating: tokio::sync::Mutex<()>,
    fe: Mutex<Option<(String, Instant)>>,
    /// User tokens (user mode).
    pub pool: Pool,
    /// Pool entries whose role was checked and found a user's, with their user id (the
    /// signature's `user_id`), so neither the check nor the JWT is read again.
    checked: Mutex<std::collections::HashMap<u64, String>>,
}

impl ZaiRuntime {
    pub fn new(name: &str, section: &ZaiSection) -> Result<ZaiRuntime, String> {
        let target = UpstreamTarget::parse(&section.base_url)?;
        let origin = format!(
            "{}://{}",
            if target.tls { "https" } else { "http" },
            target.authority
        );
        let pool = Pool::new(PoolSettings {
            max_failures: section.max_failures,
            cooldown: section.cooldown,
            max_cooldown: section.cooldown.max(Duration::from_secs(600)),
            consecutive_threshold: u32::MAX,
        });
        pool.set_tokens(
            section
                .tokens
                .iter()
                .map(|t| (Secret::new(t.as_str()), Source::Inline))
                .collect(),
        );
        Ok(ZaiRuntime {
            name: name.to_string(),
            section: section.clone(),
            target,
            origin,
            guests: Mutex::new(Vec::new()),
            next_guest: AtomicUsize::new(0),
            guest_ids: AtomicU64::new(1 << 40),
            creating: tokio::sync::Mutex::new(()),
            fe: Mutex::new(None),
            pool,
            checked: Mutex::new(std::collections::HashMap::new()),
        })
    }

    fn settings(&self) -> PeerSettings {
        PeerSettings {
            connect_timeout: self.section.connect_timeout,
            read_timeout: self.section.header_timeout,
            tls_verify: self.section.tls_verify,
        }
    }

    /// The peer of a completion attempt.
    pub fn peer(&self, addr: std::net::SocketAddr) -> pingora::prelude::HttpPeer {
        let mut p = fetch::peer(
            &self.target,
            addr,
            PeerSettings {
                read_timeout: self.section.idle_timeout.max(self.section.header_timeout),
                ..self.settings()
            },
        );
        p.options.idle_timeout = Some(KEEPALIVE);
        p
    }

    /// Readiness and counts, tokens never shown.
    pub fn status(&self) -> Value {
        if self.guest_mode() {
            let live = lock(&self.guests)
                .iter()
                .filter(|g| g.born.elapsed() < self.section.guest_ttl)
                .count();
            return serde_json::json!({
                "kind": "zai",
                "ready": true,
                "mode": "guest",
                "guests": {"live": live, "target": self.section.guests},
            });
        }
        let s = self.pool.stats(Instant::now());
        serde_json::json!({
            "kind": "zai",
            "ready": s.active > 0,
            "mode": "user",
            "tokens": {"total": s.total, "active": s.active, "cooling": s.cooling, "disabled": s.disabled},
        })
    }

    pub fn guest_mode(&self) -> bool {
        self.section.effective_mode() == ZaiMode::Guest
    }

    /// Browser-like headers shared by every call.
    fn browser_head(
        &self,
        method: &str,
        path: &str,
        referer: &str,
    ) -> Result<RequestHeader, String> {
        let mut req = fetch::head(&self.target, method, path)?;
        let e = |e: Box<pingora::Error>| format!("cannot build the request: {e}");
        req.insert_header("user-agent", self.section.user_agent.as_str())
            .map_err(e)?;
        req.insert_header("accept-language", self.section.accept_language.as_str())
            .map_err(e)?;
        req.insert_header("origin", self.origin.as_str())
            .map_err(e)?;
        req.insert_header("referer", referer).map_err(e)?;
        for (k, v) in &self.section.headers {
            req.insert_header(k.clone(), v.as_str()).map_err(e)?;
        }
        Ok(req)
    }

    async fn side_call(
        &self,
        app: &App,
        req: RequestHeader,
        body: Option<Bytes>,
    ) -> Result<Fetched, String> {
        fetch::fetch(
            app,
            &self.target,
            self.settings(),
            req,
            body,
            SIDE_ANSWER_LIMIT,
            SIDE_CALL_TIMEOUT,
        )
        .await
    }

    /// An identity this request has not tried: a user token from the pool, or a guest
    /// (created when fewer than `guests` are alive).
    pub async fn identity(&self, app: &App, tried: &[u64]) -> Result<Identity, NoIdentity> {
        if !self.guest_mode() {
            let mut skipped: Vec<u64> = tried.to_vec();
            loop {
                let l = match self.pool.lease(&skipped, Instant::now()) {
                    Ok(l) => l,
                    Err(LeaseError::AllTried) => return Err(NoIdentity::AllTried),
                    Err(LeaseError::Empty) => return Err(NoIdentity::Exhausted(None)),
                    Err(LeaseError::Exhausted { retry_after }) => {
                        return Err(NoIdentity::Exhausted(retry_after))
                    }
                };
                if let Some(user_id) = self.user_id_of(app, &l).await {
                    return Ok(Identity {
                        id: l.id,
                        user_id,
                        token: l.token.clone(),
                        lease: Some(l),
                    });
                }
                skipped.push(l.id);
            }
        }
        if let Some(g) = self.pick_guest(tried)? {
            return Ok(g);
        }
        let _serial = self.creating.lock().await;
        if let Some(g) = self.pick_guest(tried)? {
            return Ok(g);
        }
        let g = self.new_guest(app).await.map_err(NoIdentity::Guest)?;
        Ok(Identity {
            id: g.id,
            token: g.token.clone(),
            user_id: g.user_id.clone(),
            lease: None,
        })
    }

    /// `GET /api/v1/auths/`: with `token`, who it is; without, a new guest.
    fn auths_request(&self, token: Option<&Secret>) -> Result<RequestHeader, String> {
        let e = |e: Box<pingora::Error>| format!("cannot build the request: {e}");
        let mut req = self.browser_head("GET", "/api/v1/auths/", &format!("{}/", self.origin))?;
        req.insert_header("accept", "application/json").map_err(e)?;
        if let Some(t) = token {
            req.insert_header("authorization", format!("Bearer {}", t.expose()))
                .map_err(e)?;
        }
        Ok(req)
    }

    /// The user id of a user token, when it is a logged-in user's: asked once per token
    /// with `GET /api/v1/auths/` (`role: user`), then remembered. A guest's token or one the
    /// site refuses (401) is disabled in the pool with a warning naming it masked (`None`); a
    /// check that fails for another reason (network, WAF) lets the token be used with the
    /// JWT's id and is asked again next time.
    async fn user_id_of(&self, app: &App, lease: &Lease) -> Option<String> {
        if let Some(id) = lock(&self.checked).get(&lease.id) {
            return Some(id.clone());
        }
        let jwt_id = || sign::jwt_user_id(lease.token.expose()).unwrap_or_default();
        let who = async {
            let got = self
                .side_call(app, self.auths_request(Some(&lease.token))?, None)
                .await?;
            if got.status == 401 {
                return Ok(None);
            }
            if got.status != 200 {
                return Err(format!("HTTP {}", got.status));
            }
            let v: Value = serde_json::from_slice(&got.body)
                .map_err(|_| "an answer that is not JSON".to_string())?;
            let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Ok(Some((field("role"), field("id"))))
        };
        let verdict: Result<Option<(String, String)>, String> = who.await;
        match verdict {
            Ok(Some((role, id))) if role == "user" || role == "admin" => {
                let id = if id.is_empty() { jwt_id() } else { id };
                lock(&self.checked).insert(lease.id, id.clone());
                Some(id)
            }
            Ok(found) => {
                let found = found.map(|(role, _)| role);
                warn!(
                    "provider {}: token {} is {}; disabled (user mode needs a logged-in user's token)",
                    self.name,
                    lease.token.masked(),
                    match found.as_deref() {
                        None => "refused by the site (401)".to_string(),
                        Some("") => "of no known role".to_string(),
                        Some(r) => format!("a {r}'s token"),
                    }
                );
                self.pool.disable(lease.id);
                None
            }
            Err(e) => {
                warn!(
                    "provider {}: could not check token {} ({e}); using it",
                    self.name,
                    lease.token.masked()
                );
                Some(jwt_id())
            }
        }
    }

    /// A live guest this request has not tried, round robin, once the pool holds `guests`
    /// of them; `Ok(None)`: make another (the pool is short).
    fn pick_guest(&self, tried: &[u64]) -> Result<Option<Identity>, NoIdentity> {
        let mut guests = lock(&self.guests);
        let ttl = self.section.guest_ttl;
        guests.retain(|g| g.born.elapsed() < ttl);
        if guests.len() < self.section.guests {
            return Ok(None);
        }
        let fresh: Vec<&Guest> = guests.iter().filter(|g| !tried.contains(&g.id)).collect();
        if fresh.is_empty() {
            return Err(NoIdentity::AllTried);
        }
        let g = fresh[self.next_guest.fetch_add(1, Ordering::Relaxed) % fresh.len()];
        Ok(Some(Identity {
            id: g.id,
            token: g.token.clone(),
            user_id: g.user_id.clone(),
            lease: None,
        }))
    }

    async fn new_guest(&self, app: &App) -> Result<Guest, String> {
        let got = self
            .side_call(app, self.auths_request(None)?, None)
            .await
            .map_err(|e| format!("guest sign-in: {e}"))?;
        if got.status == 405 {
            return Err("guest sign-in was blocked by the upstream's firewall (HTTP 405, Aliyun WAF): only another IP or an outbound proxy helps".to_string());
        }
        if got.status != 200 {
            return Err(format!("guest sign-in answered HTTP {}", got.status));
        }
        let v: Value = serde_json::from_slice(&got.body)
            .map_err(|_| "guest sign-in answered something that is not JSON".to_string())?;
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| "guest sign-in answered no token".to_string())?;
        let user_id = v
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| sign::jwt_user_id(token))
            .unwrap_or_else(|| "guest".to_string());
        let g = Guest {
            id: self.guest_ids.fetch_add(1, Ordering::Relaxed),
            token: Secret::new(token),
            user_id,
            born: Instant::now(),
        };
        info!(
            "provider {}: new guest {} (token {})",
            self.name,
            g.id,
            g.token.masked()
        );
        lock(&self.guests).push(g.clone());
        Ok(g)
    }

    /// Report how an attempt went: a user token's pool rules, or a guest retired on a
    /// refusal (401, concurrency, 429).
    pub fn report(&self, who: &Identity, outcome: &Outcome) {
        match &who.lease {
            Some(l) => {
                self.pool.report(l.id, outcome, Instant::now());
            }
            None => {
                if matches!(outcome, Outcome::Rejected(_) | Outcome::RateLimited(_)) {
                    lock(&self.guests).retain(|g| g.id != who.id);
                }
            }
        }
    }

    /// The `X-FE-Version`: the configured one, else the cached scrape, else a new scrape.
    pub async fn fe_version(&self, app: &App) -> Result<String, String> {
        if let Some(v) = &self.section.fe_version {
            return Ok(v.clone());
        }
        if let Some((v, at)) = lock(&self.fe).clone() {
            if at.elapsed() < self.section.fe_version_ttl {
                return Ok(v);
            }
        }
        let mut req = self.browser_head("GET", "/", &format!("{}/", self.origin))?;
        req.insert_header("accept", "text/html")
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let got = self
            .side_call(app, req, None)
            .await
            .map_err(|e| format!("front-end version: {e}"))?;
        let html = String::from_utf8_lossy(&got.body);
        let v = fe_version::scrape(&html).ok_or_else(|| {
            format!(
                "front-end version: the home page (HTTP {}) names no prod-fe version; set providers.{}.fe_version",
                got.status, self.name
            )
        })?;
        *lock(&self.fe) = Some((v.clone(), Instant::now()));
        Ok(v)
    }

    /// Forget the scraped version (the upstream called it stale).
    pub fn stale_fe_version(&self) {
        *lock(&self.fe) = None;
    }

    /// The captcha proof for one request, from the configured source.
    pub async fn captcha(&self, app: &App) -> Result<Option<String>, String> {
        let c = &self.section.captcha;
        let proof = match c.source {
            CaptchaSourceKind::None => return Ok(None),
            CaptchaSourceKind::Fixed => c.value.clone().unwrap_or_default(),
            CaptchaSourceKind::Command => {
                let Some((program, args)) = c.command.split_first() else {
                    return Err("captcha: no command is configured".to_string());
                };
                let run = tokio::process::Command::new(program)
                    .args(args)
                    .stdin(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .output();
                let out = tokio::time::timeout(c.timeout, run)
                    .await
                    .map_err(|_| format!("captcha: the command took longer than {:?}", c.timeout))?
                    .map_err(|e| format!("captcha: cannot run the command: {e}"))?;
                if !out.status.success() {
                    return Err(format!("captcha: the command failed ({})", out.status));
                }
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            }
            CaptchaSourceKind::Http => {
                let url = c.url.as_deref().unwrap_or("");
                let target = UpstreamTarget::parse(url)?;
                let path = url_path(url);
                let req = fetch::head(&target, "GET", &path)?;
                let got = fetch::fetch(
                    app,
                    &target,
                    PeerSettings {
                        connect_timeout: c.timeout,
                        read_timeout: c.timeout,
                        tls_verify: self.section.tls_verify,
                    },
                    req,
                    None,
                    64 * 1024,
                    c.timeout,
                )
                .await
                .map_err(|e| format!("captcha: {e}"))?;
                if got.status != 200 {
                    return Err(format!("captcha: the source answered HTTP {}", got.status));
                }
                proof_from_answer(&got.body)
            }
        };
        if proof.is_empty() {
            return Err("captcha: the source gave an empty proof".to_string());
        }
        Ok(Some(proof))
    }

    /// `POST /api/v1/chats/new` for this identity; the chat's id.
    async fn create_chat(
        &self,
        app: &App,
        who: &Identity,
        input: &body::CompletionInput<'_>,
    ) -> Result<String, String> {
        let payload = body::new_chat_body(input);
        let mut req =
            self.browser_head("POST", "/api/v1/chats/new", &format!("{}/", self.origin))?;
        let e = |e: Box<pingora::Error>| format!("cannot build the request: {e}");
        req.insert_header("content-type", "application/json")
            .map_err(e)?;
        req.insert_header("accept", "application/json").map_err(e)?;
        req.insert_header("authorization", format!("Bearer {}", who.token.expose()))
            .map_err(e)?;
        let got = self
            .side_call(app, req, Some(Bytes::from(payload)))
            .await
            .map_err(|e| format!("chat creation: {e}"))?;
        if got.status != 200 {
            return Err(format!("chat creation answered HTTP {}", got.status));
        }
        let v: Value = serde_json::from_slice(&got.body)
            .map_err(|_| "chat creation answered something that is not JSON".to_string())?;
        v.get("id")
            .and_then(Value::as_str)
            .or_else(|| v.pointer("/chat/id").and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .ok_or_else(|| "chat creation answered no id".to_string())
    }

    /// Delete a chat this proxy created (cleanup policy `delete`), within a short bound;
    /// a failure is logged, never the client's problem.
    pub async fn delete_chat(&self, app: &App, token: &Secret, chat_id: &str) {
        let work = async {
            let mut req = self.browser_head(
                "DELETE",
                &format!("/api/v1/chats/{chat_id}"),
                &format!("{}/", self.origin),
            )?;
            req.insert_header("authorization", format!("Bearer {}", token.expose()))
                .map_err(|e| format!("cannot build the request: {e}"))?;
            let got = self.side_call(app, req, None).await?;
            if !(200..300).contains(&got.status) {
                return Err(format!("HTTP {}", got.status));
            }
            Ok(())
        };
        match tokio::time::timeout(CLEANUP_TIMEOUT, work).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!("provider {}: could not delete a chat: {e}", self.name),
            Err(_) => warn!("provider {}: deleting a chat took too long", self.name),
        }
    }

    /// The signed completion request of one attempt for `who`: FE version, captcha proof,
    /// the chat (created when `create_chats`), the body and the signed query.
    pub async fn call(&self, app: &App, who: &Identity, ask: &Ask<'_>) -> Result<Call, String> {
        let fe = self.fe_version(app).await?;
        let captcha = self.captcha(app).await?;
        let now = now_ms();
        let message_id = crate::core::ids::uuid_v4();
        let user_message_id = crate::core::ids::uuid_v4();
        let input = body::CompletionInput {
            upstream_model: ask.upstream_model,
            model: ask.model,
            turns: ask.turns,
            sampling: ask.sampling,
            thinking: ask.thinking,
            effort: ask.effort,
            chat_id: "",
            message_id: &message_id,
            user_message_id: &user_message_id,
            captcha: captcha.as_deref(),
            now_ms: now,
            timezone: &self.section.timezone,
            utc_offset_minutes: self.section.utc_offset_minutes,
        };
        let created_chat = if self.section.create_chats {
            Some(self.create_chat(app, who, &input).await?)
        } else {
            None
        };
        let chat_id = created_chat
            .clone()
            .unwrap_or_else(crate::core::ids::uuid_v4);
        let input = body::CompletionInput {
            chat_id: &chat_id,
            ..input
        };
        let payload = body::completion_body(&input);
        let prompt = body::signature_prompt(ask.turns);
        let request_id = crate::core::ids::uuid_v4();
        let signature = sign::signature(&request_id, now, &who.user_id, &prompt);
        let query = sign::completion_query(&sign::QueryInput {
            request_id: &request_id,
            now_ms: now,
            user_id: &who.user_id,
            token: who.token.expose(),
            chat_id: &chat_id,
            user_agent: &self.section.user_agent,
            timezone: &self.section.timezone,
            utc_offset_minutes: self.section.utc_offset_minutes,
        });
        let referer = format!("{}/c/{chat_id}", self.origin);
        let mut req = self.browser_head(
            "POST",
            &format!("/api/v2/chat/completions?{query}"),
            &referer,
        )?;
        let e = |e: Box<pingora::Error>| format!("cannot build the request: {e}");
        req.insert_header("content-type", "application/json")
            .map_err(e)?;
        req.insert_header("content-length", payload.len().to_string())
            .map_err(e)?;
        req.insert_header("accept", "text/event-stream")
            .map_err(e)?;
        req.insert_header("authorization", format!("Bearer {}", who.token.expose()))
            .map_err(e)?;
        req.insert_header("x-fe-version", fe.as_str()).map_err(e)?;
        req.insert_header("x-signature", signature.as_str())
            .map_err(e)?;
        Ok(Call {
            header: req,
            body: Bytes::from(payload),
            created_chat,
        })
    }
}

/// A request that could not be prepared: a captcha source that failed is final (another
/// identity needs a proof just the same) and names the setting; anything else (the home
/// page for the FE version, chat creation) is retried.
pub fn prepare_failure(rt: &ZaiRuntime, message: String) -> Failure {
    if message.starts_with("captcha:") {
        let error = ApiError::new(
            503,
            "server_error",
            "upstream_captcha_unavailable",
            format!(
                "Z.AI needs a captcha proof and providers.{}.captcha could not give one ({message})",
                rt.name
            ),
        );
        return refused(
            "captcha_source",
            Outcome::RequestRefused(0),
            false,
            message,
            error,
        );
    }
    Failure::Network(message)
}

fn refused(
    label: &'static str,
    outcome: Outcome,
    retry: bool,
    detail: String,
    error: ApiError,
) -> Failure {
    Failure::Refused(Box::new(Refused {
        label,
        outcome,
        retry,
        detail,
        error,
    }))
}

/// What a Z.AI refusal means for the token, the retry and the client.
fn refusal_failure(
    rt: &ZaiRuntime,
    refusal: Refusal,
    status: u16,
    retry_after: Option<Duration>,
    detail: String,
) -> Failure {
    let name = &rt.name;
    let who = if rt.guest_mode() { "guest" } else { "token" };
    match refusal {
        Refusal::WafBlocked => refused(
            "waf_blocked",
            Outcome::Network,
            false,
            detail,
            ApiError::new(
                502,
                "upstream_error",
                "upstream_blocked",
                "Z.AI's firewall (Aliyun WAF) blocked this proxy's address (HTTP 405); only another IP or an outbound proxy helps".to_string(),
            ),
        ),
        Refusal::Unauthorized => refused(
            "401",
            Outcome::Rejected(401),
            true,
            detail,
            ApiError::new(
                502,
                "upstream_error",
                "upstream_auth_failed",
                format!("Z.AI refused the proxy's {who} credentials (HTTP 401)"),
            ),
        ),
        Refusal::RateLimited => refused(
            "429",
            Outcome::RateLimited(retry_after),
            true,
            detail.clone(),
            ApiError::new(
                429,
                "rate_limit_error",
                "upstream_rate_limited",
                format!("Z.AI is rate limiting this proxy ({detail}); retry later"),
            )
            .with_retry_after(Some(retry_after.map_or(30, |d| d.as_secs().max(1)))),
        ),
        Refusal::StaleClient => {
            rt.stale_fe_version();
            refused(
                "stale_client",
                Outcome::Network,
                true,
                detail,
                ApiError::new(
                    502,
                    "upstream_error",
                    "upstream_client_outdated",
                    format!(
                        "Z.AI calls this proxy's front-end version stale (HTTP 426) even after a fresh look; set providers.{name}.fe_version to the site's current prod-fe version"
                    ),
                ),
            )
        }
        Refusal::SignatureRejected => refused(
            "signature_rejected",
            Outcome::RequestRefused(status),
            false,
            detail.clone(),
            ApiError::new(
                502,
                "upstream_error",
                "upstream_signature_rejected",
                format!("Z.AI rejected the request's signature ({detail}); its signing scheme may have changed"),
            ),
        ),
        Refusal::ModelNotAllowed => refused(
            "model_not_allowed",
            Outcome::RequestRefused(403),
            false,
            detail,
            ApiError::new(
                403,
                "permission_error",
                "model_not_available",
                format!(
                    "Z.AI does not offer this model to the proxy's {who}s (guests get GLM-4.7 only); add user tokens under providers.{name}.tokens"
                ),
            ),
        ),
        Refusal::CaptchaRequired => refused(
            "captcha_required",
            Outcome::RequestRefused(status),
            false,
            detail,
            ApiError::new(
                503,
                "server_error",
                "upstream_captcha_required",
                format!(
                    "Z.AI demands a captcha proof (captcha_verify_param) and none is configured or it was refused; set providers.{name}.captcha (source: fixed, command or http)"
                ),
            ),
        ),
        Refusal::ServerError(s) => refused(
            "5xx",
            Outcome::ServerError(s),
            true,
            detail.clone(),
            ApiError::new(
                502,
                "upstream_error",
                "upstream_error",
                format!("Z.AI failed (HTTP {s}: {detail})"),
            ),
        ),
        Refusal::Other(s) => refused(
            "other",
            Outcome::ServerError(s),
            false,
            detail.clone(),
            ApiError::new(
                502,
                "upstream_error",
                "upstream_rejected",
                format!("Z.AI rejected the request (HTTP {s}: {detail})"),
            ),
        ),
    }
}

/// A non-2xx answer to a completion attempt.
pub fn status_failure(
    rt: &ZaiRuntime,
    status: u16,
    retry_after: Option<Duration>,
    content_type: &str,
    body: &[u8],
) -> Failure {
    let refusal = classify(status, content_type, body);
    let detail = format!("HTTP {status}: {}", refusal.message());
    refusal_failure(rt, refusal, status, retry_after, detail)
}

/// An error inside a 200 stream (or a stream with nothing usable).
pub fn inline_failure(rt: &ZaiRuntime, code: Option<i64>, message: String) -> Failure {
    let refusal = classify_inline(code, &message);
    if matches!(refusal, Refusal::Other(_)) {
        return Failure::Unusable(message);
    }
    refusal_failure(rt, refusal, 200, None, message)
}

/// The path and query of a URL (`/` when it has none).
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    match rest.find('/') {
        Some(i) => rest[i..].to_string(),
        None => "/".to_string(),
    }
}

/// A captcha source's answer: JSON with `proof` or `captcha_verify_param`, or the text.
fn proof_from_answer(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        for k in ["captcha_verify_param", "proof"] {
            if let Some(s) = v.get(k).and_then(Value::as_str) {
                return s.trim().to_string();
            }
        }
        if let Some(s) = v.as_str() {
            return s.trim().to_string();
        }
    }
    String::from_utf8_lossy(body).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_come_from_json_fields_or_plain_text() {
        assert_eq!(proof_from_answer(b"{\"proof\":\" abc \"}"), "abc");
        assert_eq!(proof_from_answer(b"{\"captcha_verify_param\":\"x\"}"), "x");
        assert_eq!(proof_from_answer(b"\"quoted\""), "quoted");
        assert_eq!(proof_from_answer(b" plain\n"), "plain");
    }

    #[test]
    fn url_paths_keep_their_query() {
        assert_eq!(url_path("http://127.0.0.1:9/proof?x=1"), "/proof?x=1");
        assert_eq!(url_path("https://h"), "/");
    }
}

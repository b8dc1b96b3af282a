//! A Z.AI provider at run time: its identities (a small pool of guests, or user JWTs in a
//! token pool), the cached front-end version, captcha proofs, chat creation and cleanup,
//! the signed request of each attempt, and what each refusal means. The wire facts
//! (signature, bodies, decoder, error classes) are pure, in the sibling modules; the I/O
//! goes through [`SideCalls`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use log::{info, warn};
use serde_json::Value;

use super::classify::{classify, classify_inline, Refusal};
use super::settings::{CaptchaSourceKind, ChatCleanup, ZaiMode, ZaiSection};
use super::{body, fe_version, models, sign};
use crate::core::clock::unix_ms;
use crate::core::error::ApiError;
use crate::core::Decoder;
use crate::pool::{LeaseError, Outcome, Pool, PoolEvent, PoolSettings, Source};
use crate::provider::failure::{Failure, Refused};
use crate::provider::target::UpstreamTarget;
use crate::provider::{
    Ask, Identity, Leftover, NoIdentity, Outbound, Pending, Provider, SideAnswer, SideCall,
    SideCalls, Timing, UpstreamFormat,
};
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

/// An anonymous identity from `GET /api/v1/auths/`.
#[derive(Debug, Clone)]
struct Guest {
    id: u64,
    token: Secret,
    user_id: String,
    born: Instant,
}

impl Guest {
    fn identity(&self) -> Identity {
        Identity {
            id: Some(self.id),
            token: Some(self.token.clone()),
            user_id: self.user_id.clone(),
            pooled: false,
        }
    }
}

/// Headers of a request: name and value.
type Headers = Vec<(String, String)>;

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

    pub fn guest_mode(&self) -> bool {
        self.section.effective_mode() == ZaiMode::Guest
    }

    /// Browser-like headers shared by every call.
    fn browser_headers(&self, referer: String, token: Option<&Secret>) -> Headers {
        let mut h: Headers = vec![
            ("user-agent".into(), self.section.user_agent.clone()),
            (
                "accept-language".into(),
                self.section.accept_language.clone(),
            ),
            ("origin".into(), self.origin.clone()),
            ("referer".into(), referer),
        ];
        h.extend(
            self.section
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        if let Some(t) = token {
            h.push(("authorization".into(), format!("Bearer {}", t.expose())));
        }
        h
    }

    fn home(&self) -> String {
        format!("{}/", self.origin)
    }

    async fn side_call(
        &self,
        io: &dyn SideCalls,
        method: &'static str,
        path: String,
        headers: Headers,
        body: Option<Bytes>,
    ) -> Result<SideAnswer, String> {
        io.send(SideCall {
            target: &self.target,
            method,
            path,
            headers,
            body,
            connect_timeout: self.section.connect_timeout,
            read_timeout: self.section.header_timeout,
            tls_verify: self.section.tls_verify,
            limit: SIDE_ANSWER_LIMIT,
            timeout: SIDE_CALL_TIMEOUT,
        })
        .await
    }

    /// An identity this request has not tried: a user token from the pool, or a guest
    /// (created when fewer than `guests` are alive).
    async fn next_identity(
        &self,
        io: &dyn SideCalls,
        tried: &[u64],
    ) -> Result<Identity, NoIdentity> {
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
                if let Some(user_id) = self.user_id_of(io, l.id, &l.token).await {
                    return Ok(Identity {
                        id: Some(l.id),
                        user_id,
                        token: Some(l.token),
                        pooled: true,
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
        let g = self.new_guest(io).await.map_err(NoIdentity::Failed)?;
        Ok(g.identity())
    }

    /// `GET /api/v1/auths/`: with `token`, who it is; without, a new guest.
    async fn auths(
        &self,
        io: &dyn SideCalls,
        token: Option<&Secret>,
    ) -> Result<SideAnswer, String> {
        let mut h = self.browser_headers(self.home(), token);
        h.push(("accept".into(), "application/json".into()));
        self.side_call(io, "GET", "/api/v1/auths/".into(), h, None)
            .await
    }

    /// The user id of a user token, when it is a logged-in user's: asked once per token
    /// with `GET /api/v1/auths/` (`role: user`), then remembered. A guest's token or one the
    /// site refuses (401) is disabled in the pool with a warning naming it masked (`None`); a
    /// check that fails for another reason (network, WAF) lets the token be used with the
    /// JWT's id and is asked again next time.
    async fn user_id_of(&self, io: &dyn SideCalls, entry: u64, token: &Secret) -> Option<String> {
        if let Some(id) = lock(&self.checked).get(&entry) {
            return Some(id.clone());
        }
        let jwt_id = || sign::jwt_user_id(token.expose()).unwrap_or_default();
        let who = async {
            let got = self.auths(io, Some(token)).await?;
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
                lock(&self.checked).insert(entry, id.clone());
                Some(id)
            }
            Ok(found) => {
                let found = found.map(|(role, _)| role);
                warn!(
                    "provider {}: token {} is {}; disabled (user mode needs a logged-in user's token)",
                    self.name,
                    token.masked(),
                    match found.as_deref() {
                        None => "refused by the site (401)".to_string(),
                        Some("") => "of no known role".to_string(),
                        Some(r) => format!("a {r}'s token"),
                    }
                );
                self.pool.disable(entry);
                None
            }
            Err(e) => {
                warn!(
                    "provider {}: could not check token {} ({e}); using it",
                    self.name,
                    token.masked()
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
        Ok(Some(g.identity()))
    }

    async fn new_guest(&self, io: &dyn SideCalls) -> Result<Guest, String> {
        let got = self
            .auths(io, None)
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

    /// The `X-FE-Version`: the configured one, else the cached scrape, else a new scrape.
    async fn fe_version(&self, io: &dyn SideCalls) -> Result<String, String> {
        if let Some(v) = &self.section.fe_version {
            return Ok(v.clone());
        }
        if let Some((v, at)) = lock(&self.fe).clone() {
            if at.elapsed() < self.section.fe_version_ttl {
                return Ok(v);
            }
        }
        let mut h = self.browser_headers(self.home(), None);
        h.push(("accept".into(), "text/html".into()));
        let got = self
            .side_call(io, "GET", "/".into(), h, None)
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
    fn stale_fe_version(&self) {
        *lock(&self.fe) = None;
    }

    /// The captcha proof for one request, from the configured source.
    async fn captcha(&self, io: &dyn SideCalls) -> Result<Option<String>, String> {
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
                let got = io
                    .send(SideCall {
                        target: &target,
                        method: "GET",
                        path: url_path(url),
                        headers: Vec::new(),
                        body: None,
                        connect_timeout: c.timeout,
                        read_timeout: c.timeout,
                        tls_verify: self.section.tls_verify,
                        limit: 64 * 1024,
                        timeout: c.timeout,
                    })
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
        io: &dyn SideCalls,
        token: &Secret,
        input: &body::CompletionInput<'_>,
    ) -> Result<String, String> {
        let payload = body::new_chat_body(input);
        let mut h = self.browser_headers(self.home(), Some(token));
        h.push(("content-type".into(), "application/json".into()));
        h.push(("accept".into(), "application/json".into()));
        let got = self
            .side_call(
                io,
                "POST",
                "/api/v1/chats/new".into(),
                h,
                Some(Bytes::from(payload)),
            )
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
    async fn delete_chat(&self, io: &dyn SideCalls, left: &Leftover) {
        let work = async {
            let h = self.browser_headers(self.home(), Some(&left.token));
            let got = self
                .side_call(io, "DELETE", format!("/api/v1/chats/{}", left.id), h, None)
                .await?;
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
    async fn call(
        &self,
        io: &dyn SideCalls,
        who: &Identity,
        ask: &Ask<'_>,
    ) -> Result<Outbound, Failure> {
        let prepare = |e: String| self.prepare_failure(e);
        let token = who
            .token
            .clone()
            .ok_or_else(|| Failure::Network("no Z.AI identity".to_string()))?;
        let fe = self.fe_version(io).await.map_err(prepare)?;
        let captcha = self.captcha(io).await.map_err(prepare)?;
        let model = models::for_entry(ask.model, ask.upstream_model, ask.thinking, ask.images);
        let now = unix_ms();
        let message_id = crate::core::ids::uuid_v4();
        let user_message_id = crate::core::ids::uuid_v4();
        let input = body::CompletionInput {
            upstream_model: ask.upstream_model,
            model: &model,
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
            Some(
                self.create_chat(io, &token, &input)
                    .await
                    .map_err(prepare)?,
            )
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
            token: token.expose(),
            chat_id: &chat_id,
            user_agent: &self.section.user_agent,
            timezone: &self.section.timezone,
            utc_offset_minutes: self.section.utc_offset_minutes,
        });
        let mut h = self.browser_headers(format!("{}/c/{chat_id}", self.origin), Some(&token));
        h.push(("content-type".into(), "application/json".into()));
        h.push(("accept".into(), "text/event-stream".into()));
        h.push(("x-fe-version".into(), fe));
        h.push(("x-signature".into(), signature));
        let head = crate::provider::request_head(
            &self.target,
            "POST",
            &format!("/api/v2/chat/completions?{query}"),
            payload.len(),
            h.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .map_err(Failure::Network)?;
        let leftover = match (created_chat, self.section.cleanup) {
            (Some(id), ChatCleanup::Delete) => Some(Leftover { token, id }),
            _ => None,
        };
        Ok(Outbound {
            head,
            body: Bytes::from(payload),
            leftover,
        })
    }

    /// A request that could not be prepared: a captcha source that failed is final (another
    /// identity needs a proof just the same) and names the setting; anything else (the home
    /// page for the FE version, chat creation) is retried.
    fn prepare_failure(&self, message: String) -> Failure {
        if message.starts_with("captcha:") {
            let error = ApiError::new(
                503,
                "server_error",
                "upstream_captcha_unavailable",
                format!(
                    "Z.AI needs a captcha proof and providers.{}.captcha could not give one ({message})",
                    self.name
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

    /// What a Z.AI refusal means for the token, the retry and the client.
    fn refusal_failure(
        &self,
        refusal: Refusal,
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    ) -> Failure {
        let name = &self.name;
        let who = if self.guest_mode() { "guest" } else { "token" };
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
                self.stale_fe_version();
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
}

impl Provider for ZaiRuntime {
    fn title(&self) -> &'static str {
        "Z.AI"
    }

    fn target(&self) -> &UpstreamTarget {
        &self.target
    }

    fn timing(&self) -> Timing {
        let s = &self.section;
        Timing {
            connect_timeout: s.connect_timeout,
            header_timeout: s.header_timeout,
            idle_timeout: s.idle_timeout,
            keepalive: KEEPALIVE,
            tls_verify: s.tls_verify,
            h2_streams: 0,
        }
    }

    fn max_attempts(&self) -> u32 {
        self.section.max_attempts
    }

    fn identity<'a>(
        &'a self,
        io: &'a dyn SideCalls,
        tried: &'a [u64],
        _attempt: u32,
    ) -> Pending<'a, Result<Identity, NoIdentity>> {
        Box::pin(self.next_identity(io, tried))
    }

    /// A user token follows the pool's rules; a guest refused with a 401, a concurrency
    /// error or a 429 is retired (a fresh one replaces it).
    fn report(&self, who: &Identity, outcome: &Outcome) -> Vec<PoolEvent> {
        let Some(id) = who.id else {
            return Vec::new();
        };
        if who.pooled {
            self.pool.report(id, outcome, Instant::now());
        } else if matches!(outcome, Outcome::Rejected(_) | Outcome::RateLimited(_)) {
            lock(&self.guests).retain(|g| g.id != id);
        }
        Vec::new()
    }

    fn request<'a>(
        &'a self,
        io: &'a dyn SideCalls,
        who: &'a Identity,
        ask: &'a Ask<'a>,
    ) -> Pending<'a, Result<Outbound, Failure>> {
        Box::pin(self.call(io, who, ask))
    }

    fn status_failure(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        content_type: &str,
        body: &[u8],
    ) -> Failure {
        let refusal = classify(status, content_type, body);
        let detail = format!("HTTP {status}: {}", refusal.message());
        self.refusal_failure(refusal, status, retry_after, detail)
    }

    /// An error inside a 200 stream (or a stream with nothing usable).
    fn body_failure(&self, code: Option<i64>, message: String) -> Failure {
        let refusal = classify_inline(code, &message);
        if matches!(refusal, Refusal::Other(_)) {
            return Failure::Unusable(message);
        }
        self.refusal_failure(refusal, 200, None, message)
    }

    fn decoder(&self, _format: UpstreamFormat) -> Box<dyn Decoder> {
        Box::new(super::decode::ZaiDecoder::new())
    }

    fn clean_up<'a>(&'a self, io: &'a dyn SideCalls, left: Vec<Leftover>) -> Pending<'a, ()> {
        Box::pin(async move {
            for l in &left {
                self.delete_chat(io, l).await;
            }
        })
    }

    fn pool_wait(&self) -> Option<Duration> {
        self.pool.wait(Instant::now())
    }

    fn status(&self) -> Value {
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

    /// Side calls answered from a script, each recorded (method, path, bearer).
    #[derive(Default)]
    struct Scripted {
        calls: Mutex<Vec<(String, String, Option<String>)>>,
        guests: AtomicUsize,
    }

    impl Scripted {
        fn calls(&self) -> Vec<(String, String, Option<String>)> {
            lock(&self.calls).clone()
        }
        fn count(&self, method: &str, path: &str) -> usize {
            self.calls()
                .iter()
                .filter(|(m, p, _)| m == method && p == path)
                .count()
        }
    }

    impl SideCalls for Scripted {
        fn send<'a>(&'a self, call: SideCall<'a>) -> Pending<'a, Result<SideAnswer, String>> {
            let bearer = call
                .headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.trim_start_matches("Bearer ").to_string());
            lock(&self.calls).push((call.method.to_string(), call.path.clone(), bearer.clone()));
            let json = |status: u16, v: Value| {
                Ok(SideAnswer {
                    status,
                    body: Bytes::from(v.to_string()),
                })
            };
            let answer = match (call.method, call.path.as_str(), bearer.as_deref()) {
                ("GET", "/api/v1/auths/", None) => {
                    let n = self.guests.fetch_add(1, Ordering::Relaxed) + 1;
                    json(
                        200,
                        serde_json::json!({"token": format!("guest-{n}"), "id": format!("g{n}"), "role": "guest"}),
                    )
                }
                ("GET", "/api/v1/auths/", Some("user-a")) => {
                    json(200, serde_json::json!({"role": "user", "id": "u-a"}))
                }
                ("GET", "/api/v1/auths/", Some("guest-jwt")) => {
                    json(200, serde_json::json!({"role": "guest", "id": "g"}))
                }
                ("GET", "/api/v1/auths/", Some(_)) => json(401, serde_json::json!({})),
                ("POST", "/api/v1/chats/new", Some(_)) => {
                    json(200, serde_json::json!({"id": "chat-1"}))
                }
                _ => Err(format!("unscripted {} {}", call.method, call.path)),
            };
            Box::pin(std::future::ready(answer))
        }
    }

    fn runtime(edit: impl FnOnce(&mut ZaiSection)) -> ZaiRuntime {
        let mut section = ZaiSection {
            base_url: "http://127.0.0.1:9".into(),
            fe_version: Some("prod-fe-1.2.3".into()),
            guests: 2,
            ..ZaiSection::default()
        };
        edit(&mut section);
        ZaiRuntime::new("zai", &section).unwrap()
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn guests_are_made_up_to_the_target_then_rotated_and_a_refused_one_is_replaced() {
        let rt = runtime(|_| {});
        let io = Scripted::default();
        let ids: Vec<Identity> = block(async {
            let mut out = Vec::new();
            for _ in 0..6 {
                out.push(rt.identity(&io, &[], 0).await.unwrap());
            }
            out
        });
        assert_eq!(io.count("GET", "/api/v1/auths/"), 2, "{:?}", io.calls());
        let tokens: std::collections::BTreeSet<String> = ids
            .iter()
            .map(|i| i.token.as_ref().unwrap().expose().to_string())
            .collect();
        assert_eq!(tokens.len(), 2, "both guests are used");
        assert!(ids.iter().all(|i| !i.pooled && i.user_id.starts_with('g')));
        // A request that tried both has none left.
        let tried: Vec<u64> = ids.iter().take(2).filter_map(|i| i.id).collect();
        assert!(matches!(
            block(rt.identity(&io, &tried, 2)),
            Err(NoIdentity::AllTried)
        ));
        // A guest refused with a 401 is retired; the next request makes a third one.
        rt.report(&ids[0], &Outcome::Rejected(401));
        let next = block(rt.identity(&io, &[], 0)).unwrap();
        assert_eq!(io.count("GET", "/api/v1/auths/"), 3);
        assert_ne!(next.id, ids[0].id);
    }

    #[test]
    fn user_tokens_are_checked_once_by_role_and_a_guest_token_is_disabled() {
        let rt = runtime(|s| s.tokens = vec!["guest-jwt".into(), "user-a".into()]);
        let io = Scripted::default();
        for _ in 0..4 {
            let who = block(rt.identity(&io, &[], 0)).unwrap();
            assert_eq!(who.token.as_ref().unwrap().expose(), "user-a");
            assert_eq!(who.user_id, "u-a");
            assert!(who.pooled);
        }
        // One check per token, never again.
        assert_eq!(io.count("GET", "/api/v1/auths/"), 2, "{:?}", io.calls());
        assert_eq!(rt.status()["tokens"]["disabled"], 1);
    }

    #[test]
    fn an_attempt_is_signed_and_its_chat_is_left_for_cleanup_only_under_delete() {
        let turns = vec![crate::core::request::Turn {
            role: "user",
            content: crate::core::request::TurnContent::Text("hello".into()),
            thinking: None,
        }];
        let sampling = crate::core::request::Sampling::default();
        let body = Bytes::new();
        let ask = Ask {
            model: "glm-4.7",
            upstream_model: "glm-4.7",
            thinking: true,
            images: false,
            effort: None,
            turns: &turns,
            sampling: &sampling,
            chat_id: "",
            body: &body,
        };
        for (cleanup, left) in [(ChatCleanup::Delete, true), (ChatCleanup::Keep, false)] {
            let rt = runtime(|s| s.cleanup = cleanup);
            let io = Scripted::default();
            let who = block(rt.identity(&io, &[], 0)).unwrap();
            let out = block(rt.request(&io, &who, &ask)).unwrap();
            let h = &out.head.headers;
            let query = out.head.uri.query().unwrap_or("");
            let param = |k: &str| {
                query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                    .unwrap_or("")
                    .to_string()
            };
            let ts: u64 = param("timestamp").parse().unwrap();
            let expected = sign::signature(&param("requestId"), ts, &who.user_id, "hello");
            assert_eq!(h["x-signature"], expected.as_str());
            assert_eq!(h["x-fe-version"], "prod-fe-1.2.3");
            assert_eq!(h["content-length"], out.body.len().to_string().as_str());
            assert_eq!(h["host"], "127.0.0.1:9");
            assert_eq!(out.head.uri.path(), "/api/v2/chat/completions");
            let v: Value = serde_json::from_slice(&out.body).unwrap();
            assert_eq!(v["chat_id"], "chat-1");
            assert_eq!(io.count("POST", "/api/v1/chats/new"), 1);
            match out.leftover {
                Some(l) => {
                    assert!(left, "{cleanup:?}");
                    assert_eq!(l.id, "chat-1");
                    assert_eq!(Some(&l.token), who.token.as_ref());
                    block(rt.clean_up(&io, vec![l]));
                    // The mock script has no DELETE: the failure is logged, not raised.
                    assert_eq!(io.count("DELETE", "/api/v1/chats/chat-1"), 1);
                }
                None => assert!(!left, "{cleanup:?}"),
            }
        }
    }
}

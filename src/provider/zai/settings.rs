//! The settings of a Z.AI provider (`providers.<name>` with `kind: zai`), with their
//! defaults and checks. The config reads them; the run time ([`super::runtime`]) follows them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::provider::target::UpstreamTarget;
use crate::values::{de_duration, de_opt_string, de_string, de_string_list, de_string_map};

/// Whose tokens a Z.AI provider sends.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ZaiMode {
    /// `user` when any token is configured, else `guest`.
    #[default]
    Auto,
    /// User JWTs from `tokens` / `tokens_file` (checked to be `role: user`).
    User,
    /// Anonymous guests from `GET /api/v1/auths/`, a small pool of them.
    Guest,
}

/// Where the per-request captcha proof (`captcha_verify_param`) comes from.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CaptchaSourceKind {
    /// No proof is sent; an upstream that demands one gets a clear error naming
    /// `providers.<name>.captcha`.
    #[default]
    None,
    /// `captcha.value` is sent with every request.
    Fixed,
    /// `captcha.command` is run for each request; its trimmed stdout is the proof.
    Command,
    /// `captcha.url` is fetched (GET) for each request; the trimmed body (or its JSON
    /// `proof` / `captcha_verify_param` field) is the proof.
    Http,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CaptchaSection {
    pub source: CaptchaSourceKind,
    #[serde(deserialize_with = "de_opt_string")]
    pub value: Option<String>,
    /// Program and arguments (no shell).
    #[serde(deserialize_with = "de_string_list")]
    pub command: Vec<String>,
    #[serde(deserialize_with = "de_opt_string")]
    pub url: Option<String>,
    /// How long one proof may take.
    #[serde(deserialize_with = "de_duration")]
    pub timeout: Duration,
}

impl Default for CaptchaSection {
    fn default() -> Self {
        CaptchaSection {
            source: CaptchaSourceKind::None,
            value: None,
            command: Vec::new(),
            url: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What happens to the upstream chat each request creates.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChatCleanup {
    /// `DELETE /api/v1/chats/{id}` after the answer (in the background).
    #[default]
    Delete,
    /// Leave it in the account's history.
    Keep,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ZaiSection {
    #[serde(deserialize_with = "de_string")]
    pub base_url: String,
    pub mode: ZaiMode,
    /// User JWTs (copied from a logged-in browser's Local Storage `token`).
    #[serde(deserialize_with = "de_string_list")]
    pub tokens: Vec<String>,
    /// How many guest identities guest mode keeps.
    pub guests: usize,
    /// A guest is replaced after this long (and at once on a 401 or a concurrency error).
    #[serde(deserialize_with = "de_duration")]
    pub guest_ttl: Duration,
    /// The front-end version sent as `X-FE-Version`; `null`: scraped from the home page,
    /// cached for `fe_version_ttl` and scraped again when the upstream calls it stale.
    #[serde(deserialize_with = "de_opt_string")]
    pub fe_version: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub fe_version_ttl: Duration,
    /// Create each request's chat with `POST /api/v1/chats/new` (what the web page does);
    /// `false`: a fresh random chat id, no extra call.
    pub create_chats: bool,
    pub cleanup: ChatCleanup,
    pub captcha: CaptchaSection,
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub header_timeout: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
    pub tls_verify: bool,
    #[serde(deserialize_with = "de_string")]
    pub user_agent: String,
    #[serde(deserialize_with = "de_string")]
    pub accept_language: String,
    /// The `{{CURRENT_TIMEZONE}}` variable and the query's `timezone`.
    #[serde(deserialize_with = "de_string")]
    pub timezone: String,
    /// Minutes east of UTC of `timezone` (480 for Asia/Shanghai): the page's local time.
    pub utc_offset_minutes: i32,
    /// Extra request headers.
    #[serde(deserialize_with = "de_string_map")]
    pub headers: BTreeMap<String, String>,
    /// Attempts per request (each on another identity).
    pub max_attempts: u32,
    /// Strikes before a user token is disabled.
    pub max_failures: u32,
    /// Cool-down after a 429 without `Retry-After`.
    #[serde(deserialize_with = "de_duration")]
    pub cooldown: Duration,
}

impl Default for ZaiSection {
    fn default() -> Self {
        ZaiSection {
            base_url: "https://chat.z.ai".to_string(),
            mode: ZaiMode::Auto,
            tokens: Vec::new(),
            guests: 3,
            guest_ttl: Duration::from_secs(480),
            fe_version: None,
            fe_version_ttl: Duration::from_secs(1800),
            create_chats: true,
            cleanup: ChatCleanup::Delete,
            captcha: CaptchaSection::default(),
            connect_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            tls_verify: true,
            user_agent: crate::provider::CHROME_USER_AGENT.to_string(),
            accept_language: "en-US,en;q=0.9".to_string(),
            timezone: "UTC".to_string(),
            utc_offset_minutes: 0,
            headers: BTreeMap::new(),
            max_attempts: 3,
            max_failures: 3,
            cooldown: Duration::from_secs(60),
        }
    }
}

impl ZaiSection {
    /// `user` when tokens are configured (or asked for), else `guest`.
    pub fn effective_mode(&self) -> ZaiMode {
        match self.mode {
            ZaiMode::Auto if self.tokens.is_empty() => ZaiMode::Guest,
            ZaiMode::Auto => ZaiMode::User,
            m => m,
        }
    }

    /// Checks with the dotted key of what is wrong (`at` is `providers.<name>`).
    pub fn validate(&self, at: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("{at}.{k}");
        UpstreamTarget::parse(&self.base_url).map_err(|m| (key("base_url"), m))?;
        if self.effective_mode() == ZaiMode::Guest && self.guests == 0 {
            return Err((key("guests"), "guest mode needs at least 1".to_string()));
        }
        if self.guests > 64 {
            return Err((key("guests"), "must be at most 64".to_string()));
        }
        if self.effective_mode() == ZaiMode::User && self.tokens.is_empty() {
            return Err((
                key("tokens"),
                "user mode needs at least one token".to_string(),
            ));
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.trim().is_empty() || t.chars().any(char::is_whitespace) {
                return Err((
                    key(&format!("tokens[{i}]")),
                    "a token must be non-empty and contain no whitespace".to_string(),
                ));
            }
        }
        for (k, d) in [
            ("connect_timeout", self.connect_timeout),
            ("header_timeout", self.header_timeout),
            ("idle_timeout", self.idle_timeout),
            ("captcha.timeout", self.captcha.timeout),
        ] {
            if d.is_zero() {
                return Err((key(k), "must be greater than zero".to_string()));
            }
        }
        if !(1..=16).contains(&self.max_attempts) {
            return Err((key("max_attempts"), "must be between 1 and 16".to_string()));
        }
        if self.max_failures == 0 {
            return Err((key("max_failures"), "must be at least 1".to_string()));
        }
        let c = &self.captcha;
        match c.source {
            CaptchaSourceKind::Fixed if c.value.as_deref().is_none_or(str::is_empty) => {
                return Err((
                    key("captcha.value"),
                    "`source: fixed` needs the proof in `value`".to_string(),
                ))
            }
            CaptchaSourceKind::Command if c.command.is_empty() => {
                return Err((
                    key("captcha.command"),
                    "`source: command` needs the program (and its arguments) in `command`"
                        .to_string(),
                ))
            }
            CaptchaSourceKind::Http => {
                let url = c.url.as_deref().unwrap_or("");
                UpstreamTarget::parse(url).map_err(|m| (key("captcha.url"), m))?;
            }
            _ => {}
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    key(&format!("headers.{name}")),
                    "is not a valid header name".to_string(),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err((
                    key(&format!("headers.{name}")),
                    "is not a valid header value".to_string(),
                ));
            }
        }
        Ok(())
    }
}

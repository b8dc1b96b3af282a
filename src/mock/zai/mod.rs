//! Mock Z.AI upstream (chat.z.ai): an Open WebUI fork with guest JWTs, a scraped front-end
//! version, signed `/api/v2/chat/completions` requests and a `<details>`/`edit_index` SSE
//! stream, built from `providers-protocol.md` Part A (§A.8 is its spec).
//!
//! Start it in-process with [`ZaiMock::start`] or by hand with `k2mock --provider zai`.
//!
//! Endpoints:
//! * `GET /`: HTML whose asset URLs name the current front-end version
//!   (`/frontend/prod-fe-1.0.999/assets/…`); an older version appears in the page too.
//! * `GET /api/v1/auths/`: without a bearer a new guest (and `Set-Cookie: token=…`); the
//!   cookie sent back gives the same guest; with a bearer that identity, 401 when unknown.
//!   `POST /api/v1/auths/guest` always makes a new guest.
//! * `POST /api/v1/chats/new`, `DELETE /api/v1/chats/` (all of the token's chats, answers
//!   `true`), `DELETE /api/v1/chats/{id}`.
//! * `POST /api/v2/chat/completions?<signed query>`, checked in order: bearer known (401),
//!   `X-FE-Version` current (426, or inline 426 with [`ZaiMockConfig::fe_inline_426`]),
//!   the query fields (400), `X-Signature` present (422) and right (400), then the
//!   toggles: captcha proof, chat from `chats/new`, guest model, known model. Then the
//!   stream of [`stream::data_events`].
//! * `POST /api/v1/files/` (multipart), `GET /api/v1/files/{id}/content`, `GET /api/models`
//!   (401 for guests), `GET /api/config`, `GET /api/v1/users/user/settings`.
//! * Control: `GET|DELETE /__mock/requests`, `POST /__mock/gates/NAME/open`,
//!   `POST /__mock/fe-version/prod-fe-X.Y.Z`.
//!
//! Each answer is deterministic ([`reply_for`], [`tool_answer`]) and shaped by
//! [`ZaiDirectives`] from the config, the last user message (`[[mock: key=value; …]]`) and
//! the bearer token (`<jwt>;key=value;…`), later wins.

pub mod directives;
mod server;
pub mod sign;
pub mod stream;
#[cfg(test)]
mod tests;

use std::time::{Duration, Instant};

pub use directives::{EditAt, EditMode, Envelope, Thinking, ToolStyle, ZaiDirectives, ZaiFault};
pub use server::ZaiMock;
pub use stream::{closed_block, full_text, reply_for, tool_answer};

/// The front-end version the mock starts with.
pub const DEFAULT_FE_VERSION: &str = "prod-fe-1.0.999";

/// The only model guests may use since May 2026.
pub const GUEST_MODEL: &str = "glm-4.7";

/// Whose token a bearer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Made by `GET /api/v1/auths/` without a bearer.
    Guest,
    /// A logged-in user's token, registered with [`ZaiMock::set_user`].
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::User => "user",
        }
    }
}

/// A chat made by `POST /api/v1/chats/new`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZaiChat {
    pub id: String,
    /// The owner's user id (the JWT's `id` claim).
    pub owner: String,
    /// The bearer that created it (without `;directives`).
    pub token: String,
    /// `chat.history.currentId` of the creating request.
    pub user_message_id: Option<String>,
}

/// Server-wide settings.
#[derive(Debug, Clone)]
pub struct ZaiMockConfig {
    /// Directive defaults (layer 1).
    pub defaults: ZaiDirectives,
    /// The current front-end version, `prod-fe-X.Y.Z` (rotate live with
    /// [`ZaiMock::set_fe_version`]).
    pub fe_version: String,
    /// Keep a [`ZaiRequest`] for every request.
    pub record: bool,
    /// Models listed by `/api/models` and accepted by the completion (others: 400
    /// `Model not found`).
    pub models: Vec<String>,
    /// Models a guest may use; any other gets the inline 403 "Model not available…".
    pub guest_models: Vec<String>,
    /// A stale `X-FE-Version` gets a 200 SSE with the inline 426 "您的客户端校验失败"
    /// instead of HTTP 426 "您的客户端版本过旧".
    pub fe_inline_426: bool,
    /// The body must carry `captcha_verify_param`.
    pub require_captcha: bool,
    /// With `require_captcha`: the accepted proofs (empty: any non-empty proof).
    pub captcha_proofs: Vec<String>,
    /// The body's `chat_id` must be a chat this token made with `chats/new`.
    pub require_chat: bool,
    /// How far the signed timestamp may be from the mock's clock.
    pub signature_window: Duration,
    /// A fault for `GET /api/v1/auths/` and `POST /api/v1/auths/guest` (only HTTP faults:
    /// `Waf`, `Status`).
    pub auths_fault: Option<ZaiFault>,
    /// User tokens known from the start (as with [`ZaiMock::set_user`]).
    pub users: Vec<String>,
}

impl Default for ZaiMockConfig {
    fn default() -> Self {
        ZaiMockConfig {
            defaults: ZaiDirectives::default(),
            fe_version: DEFAULT_FE_VERSION.to_string(),
            record: true,
            models: [GUEST_MODEL, "glm-5", "GLM-5-Turbo", "GLM-5.1", "glm-4.6v"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            guest_models: vec![GUEST_MODEL.to_string()],
            fe_inline_426: false,
            require_captcha: false,
            captcha_proofs: Vec::new(),
            require_chat: false,
            signature_window: Duration::from_secs(600),
            auths_fault: None,
            users: Vec::new(),
        }
    }
}

/// One request the mock received, and what it did with it so far.
#[derive(Debug, Clone)]
pub struct ZaiRequest {
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// The raw query string (empty when none).
    pub query: String,
    /// Lower-case names, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The `Authorization: Bearer` value.
    pub bearer: Option<String>,
    /// The `token` cookie value.
    pub cookie: Option<String>,
    pub body: Vec<u8>,
    pub json: Option<serde_json::Value>,
    pub received_at: Instant,
    /// Status the mock chose (0 while undecided).
    pub response_status: u16,
    /// SSE events handed to the connection so far.
    pub events_written: usize,
    /// Whether the whole response was handed over.
    pub completed: bool,
}

impl ZaiRequest {
    /// First header value with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded query pairs, in order.
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        sign::query_pairs(&self.query)
    }

    /// The first decoded value of a query parameter.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

//! The K2Think provider at run time: the request head of each attempt (path per mode,
//! browser-like headers, the attempt's bearer), identities from the token pool (or none in
//! guest mode), what a status means, and the decoder of an answer. Its settings are worked
//! out once per config; a request borrows them with the pool ([`K2think`]).

use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use serde_json::Value;

use super::decode::{ContentDelivery, K2Decoder};
use super::error_detail;
use crate::core::error::ApiError;
use crate::core::Decoder;
use crate::pool::{LeaseError, Outcome, Pool, PoolEvent};
use crate::provider::failure::Failure;
use crate::provider::target::UpstreamTarget;
use crate::provider::{
    Ask, Identity, NoIdentity, Outbound, Pending, Provider, SideCalls, Timing, UpstreamFormat,
};
use crate::secret::Secret;

/// Characters of an error body's detail kept in a failure.
const DETAIL_CHARS: usize = 500;

/// Everything an attempt needs from the K2Think sections of the config, worked out once
/// per config.
#[derive(Debug, Clone)]
pub struct K2thinkSettings {
    pub target: UpstreamTarget,
    /// Tokens come from the pool (else guest access, no token).
    pub user_mode: bool,
    /// Ask for an event stream (`upstream.stream`).
    pub stream: bool,
    /// What the config fixes of every attempt's head ([`FixedHead::new`]), or why a
    /// configured header makes it unusable (each attempt then fails with it).
    pub fixed_head: Result<FixedHead, String>,
    /// The Referer, `{chat_id}` replaced per request; empty: none.
    pub referer: String,
    pub timing: Timing,
    pub max_attempts: u32,
    /// Pause between guest-mode attempts.
    pub backoff: Duration,
    /// Statuses another attempt may help with (`retry.on_status`).
    pub on_status: Vec<u16>,
    pub implicit_think: bool,
    pub delivery: ContentDelivery,
}

impl K2thinkSettings {
    /// The request head of one attempt: path per mode, browser-like headers, the bearer of
    /// this attempt's token, and the exact body length.
    pub fn head(
        &self,
        token: Option<&Secret>,
        chat_id: &str,
        body_len: usize,
        stream: bool,
    ) -> Result<http::request::Parts, String> {
        let invalid = |e: &dyn std::fmt::Display| format!("cannot build the request: {e}");
        let fixed = self.fixed_head.as_ref().map_err(|e| invalid(e))?;
        let mut h = HeaderMap::with_capacity(8 + fixed.browser.len() + fixed.after_referer.len());
        h.append(header::HOST, fixed.host.clone());
        h.append(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.append(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static(if stream {
                "text/event-stream, application/json"
            } else {
                "application/json"
            }),
        );
        h.append(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        for (k, v) in &fixed.browser {
            h.append(k.clone(), v.clone());
        }
        if !self.referer.is_empty() {
            let referer = HeaderValue::from_str(&self.referer.replace("{chat_id}", chat_id))
                .map_err(|e| invalid(&e))?;
            h.append(header::REFERER, referer);
        }
        for (k, v) in &fixed.after_referer {
            h.append(k.clone(), v.clone());
        }
        if let Some(t) = token {
            let bearer = HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                .map_err(|e| invalid(&e))?;
            h.append(header::AUTHORIZATION, bearer);
        }
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = http::Method::POST;
        parts.uri = fixed.uri.clone();
        parts.headers = h;
        Ok(parts)
    }
}

/// The parts of the request head that only the config decides, parsed and checked once
/// per config: an attempt clones them, which only counts references.
#[derive(Debug, Clone)]
pub struct FixedHead {
    uri: http::Uri,
    host: HeaderValue,
    browser: Vec<(HeaderName, HeaderValue)>,
    after_referer: Vec<(HeaderName, HeaderValue)>,
}

impl FixedHead {
    /// The completion `path` of the mode (`user_path` or `guest_path`), `Host` from
    /// `target`, the browser headers that follow the fixed ones (`user-agent`, `sec-ch-*`,
    /// `origin`) and those after the Referer (`accept-language`, the operator's extra
    /// headers), in order.
    pub fn new(
        path: &str,
        target: &UpstreamTarget,
        browser: &[(String, String)],
        after_referer: &[(String, String)],
    ) -> Result<FixedHead, String> {
        let fields = |list: &[(String, String)]| {
            list.iter()
                .map(|(k, v)| {
                    let name =
                        HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}"))?;
                    let value = HeaderValue::from_str(v).map_err(|e| format!("{k}: {e}"))?;
                    Ok((name, value))
                })
                .collect::<Result<Vec<_>, String>>()
        };
        Ok(FixedHead {
            uri: path.parse().map_err(|e| format!("{path}: {e}"))?,
            host: HeaderValue::from_str(&target.authority).map_err(|e| format!("host: {e}"))?,
            browser: fields(browser)?,
            after_referer: fields(after_referer)?,
        })
    }
}

/// The K2Think provider for one request: its settings and the token pool.
pub struct K2think<'a> {
    pub settings: &'a K2thinkSettings,
    pub pool: &'a Pool,
}

impl Provider for K2think<'_> {
    fn title(&self) -> &'static str {
        "K2Think"
    }

    fn target(&self) -> &UpstreamTarget {
        &self.settings.target
    }

    fn timing(&self) -> Timing {
        self.settings.timing
    }

    fn max_attempts(&self) -> u32 {
        self.settings.max_attempts
    }

    fn identity<'a>(
        &'a self,
        _io: &'a dyn SideCalls,
        tried: &'a [u64],
        attempt: u32,
    ) -> Pending<'a, Result<Identity, NoIdentity>> {
        Box::pin(async move {
            let s = self.settings;
            if !s.user_mode {
                if attempt > 0 && !s.backoff.is_zero() {
                    tokio::time::sleep(s.backoff).await;
                }
                return Ok(Identity::default());
            }
            match self.pool.lease(tried, Instant::now()) {
                Ok(l) => Ok(Identity {
                    id: Some(l.id),
                    token: Some(l.token),
                    user_id: String::new(),
                    pooled: true,
                }),
                Err(LeaseError::Empty) => Err(NoIdentity::Final(ApiError::new(
                    503,
                    "server_error",
                    "no_upstream_tokens",
                    "No upstream token is configured (pool.tokens / pool.tokens_file)".to_string(),
                ))),
                Err(LeaseError::AllTried) => Err(NoIdentity::AllTried),
                Err(LeaseError::Exhausted { retry_after }) => {
                    Err(NoIdentity::Exhausted(retry_after))
                }
            }
        })
    }

    fn report(&self, who: &Identity, outcome: &Outcome) -> Vec<PoolEvent> {
        match who.id {
            Some(id) if who.pooled => self.pool.report(id, outcome, Instant::now()),
            _ => Vec::new(),
        }
    }

    fn request<'a>(
        &'a self,
        _io: &'a dyn SideCalls,
        who: &'a Identity,
        ask: &'a Ask<'a>,
    ) -> Pending<'a, Result<Outbound, Failure>> {
        let s = self.settings;
        let made = s
            .head(who.token.as_ref(), ask.chat_id, ask.body.len(), s.stream)
            .map(|head| Outbound {
                head,
                body: ask.body.clone(),
                leftover: None,
            })
            .map_err(Failure::Network);
        Box::pin(std::future::ready(made))
    }

    fn status_failure(
        &self,
        status: u16,
        retry_after: Option<Duration>,
        content_type: &str,
        body: &[u8],
    ) -> Failure {
        let detail = error_detail(content_type, body)
            .map(|d| d.chars().take(DETAIL_CHARS).collect())
            .unwrap_or_default();
        Failure::Status {
            status,
            retry_after,
            detail,
        }
    }

    fn body_failure(&self, _code: Option<i64>, message: String) -> Failure {
        Failure::Unusable(message)
    }

    fn retries(&self, failure: &Failure) -> bool {
        failure.retryable(&self.settings.on_status)
    }

    fn decoder(&self, format: UpstreamFormat) -> Box<dyn Decoder> {
        Box::new(
            K2Decoder::new(format, self.settings.implicit_think)
                .with_delivery(self.settings.delivery),
        )
    }

    fn pool_wait(&self) -> Option<Duration> {
        self.pool.wait(Instant::now())
    }

    fn status(&self) -> Value {
        let stats = self.pool.stats(Instant::now());
        let user = self.settings.user_mode;
        serde_json::json!({
            "kind": "k2think",
            "ready": !user || stats.active > 0,
            "mode": if user { "user" } else { "guest" },
            "tokens": {"total": stats.total, "active": stats.active, "cooling": stats.cooling, "disabled": stats.disabled},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{PoolSettings, Source};

    struct NoCalls;
    impl SideCalls for NoCalls {
        fn send<'a>(
            &'a self,
            call: crate::provider::SideCall<'a>,
        ) -> Pending<'a, Result<crate::provider::SideAnswer, String>> {
            Box::pin(std::future::ready(Err(format!(
                "K2Think makes no side call ({})",
                call.path
            ))))
        }
    }

    fn settings(user_mode: bool) -> K2thinkSettings {
        let target = UpstreamTarget::parse("http://127.0.0.1:8080").unwrap();
        K2thinkSettings {
            fixed_head: FixedHead::new(
                "/api/chat/completions",
                &target,
                &[("user-agent".into(), "UA".into())],
                &[("x-extra".into(), "1".into())],
            ),
            target,
            user_mode,
            stream: true,
            referer: "http://127.0.0.1:8080/c/{chat_id}".into(),
            timing: Timing {
                connect_timeout: Duration::from_secs(1),
                header_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
                keepalive: Duration::from_secs(1),
                tls_verify: true,
                h2_streams: 0,
            },
            max_attempts: 3,
            backoff: Duration::ZERO,
            on_status: vec![429],
            implicit_think: true,
            delivery: ContentDelivery::default(),
        }
    }

    #[test]
    fn the_head_keeps_the_browser_order_and_fills_in_each_attempts_fields() {
        let s = settings(true);
        let token = Secret::new("tok-123");
        for chat in ["abc", "def"] {
            let parts = s.head(Some(&token), chat, 42, true).unwrap();
            assert_eq!(parts.method, http::Method::POST);
            assert_eq!(parts.uri, "/api/chat/completions");
            let fields: Vec<(&str, &str)> = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
                .collect();
            let referer = format!("http://127.0.0.1:8080/c/{chat}");
            assert_eq!(
                fields,
                [
                    ("host", "127.0.0.1:8080"),
                    ("content-type", "application/json"),
                    ("content-length", "42"),
                    ("accept", "text/event-stream, application/json"),
                    ("accept-encoding", "identity"),
                    ("user-agent", "UA"),
                    ("referer", referer.as_str()),
                    ("x-extra", "1"),
                    ("authorization", "Bearer tok-123"),
                ]
            );
        }
        let guest = s.head(None, "abc", 7, false).unwrap();
        assert_eq!(guest.headers["accept"], "application/json");
        assert!(guest.headers.get("authorization").is_none());
    }

    #[test]
    fn a_header_the_config_got_wrong_fails_every_attempt_with_its_name() {
        let mut s = settings(true);
        s.fixed_head = FixedHead::new(
            "/api/chat/completions",
            &s.target,
            &[("user-agent".into(), "bad\nvalue".into())],
            &[],
        );
        for _ in 0..2 {
            let e = s.head(None, "abc", 1, true).unwrap_err();
            assert!(e.starts_with("cannot build the request: user-agent"), "{e}");
        }
    }

    fn block<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_user_mode_attempt_carries_its_token_and_the_request_headers() {
        let pool = Pool::new(PoolSettings::default());
        pool.set_tokens(vec![(Secret::new("tok-1"), Source::Inline)]);
        let s = settings(true);
        let k2 = K2think {
            settings: &s,
            pool: &pool,
        };
        let who = block(k2.identity(&NoCalls, &[], 0)).unwrap();
        assert!(who.pooled && who.token.is_some());
        let body = bytes::Bytes::from_static(b"{\"x\":1}");
        let ask = Ask {
            model: "m",
            upstream_model: "m",
            thinking: true,
            images: false,
            effort: None,
            turns: &[],
            sampling: &crate::core::request::Sampling::default(),
            chat_id: "c1",
            body: &body,
        };
        let out = block(k2.request(&NoCalls, &who, &ask)).unwrap();
        let h = &out.head.headers;
        assert_eq!(h["authorization"], "Bearer tok-1");
        assert_eq!(h["referer"], "http://127.0.0.1:8080/c/c1");
        assert_eq!(h["content-length"], "7");
        assert_eq!(h["host"], "127.0.0.1:8080");
        assert_eq!(h["x-extra"], "1");
        assert_eq!(out.head.uri.path(), "/api/chat/completions");
        assert_eq!(out.body, body);
        // Tried already: none left for this request.
        let tried = [who.id.unwrap()];
        assert!(matches!(
            block(k2.identity(&NoCalls, &tried, 1)),
            Err(NoIdentity::AllTried)
        ));
    }

    #[test]
    fn guest_mode_sends_no_token_and_an_empty_user_pool_is_a_clear_error() {
        let pool = Pool::new(PoolSettings::default());
        let guest = settings(false);
        let k2 = K2think {
            settings: &guest,
            pool: &pool,
        };
        let who = block(k2.identity(&NoCalls, &[], 0)).unwrap();
        assert!(who.token.is_none() && who.id.is_none() && !who.pooled);
        let user = settings(true);
        let k2 = K2think {
            settings: &user,
            pool: &pool,
        };
        match block(k2.identity(&NoCalls, &[], 0)) {
            Err(NoIdentity::Final(e)) => assert_eq!(e.code, Some("no_upstream_tokens")),
            other => panic!("{other:?}"),
        }
        // A status off `retry.on_status` is final; one on it is retried.
        assert!(k2.retries(&k2.status_failure(429, None, "", b"")));
        assert!(!k2.retries(&k2.status_failure(502, None, "", b"")));
    }
}

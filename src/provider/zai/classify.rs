//! Why Z.AI refused a request (providers-protocol.md §A.7): an error response, or an
//! error found inside a 200 stream, judged into a [`Refusal`] the pool and the metrics
//! can act on.
//!
//! The error's words are read from a JSON body's `code`/`message`/`msg`/`detail`/`error`
//! at the top level or under `error`/`detail`/`data` (any depth up to 4); a body that is
//! not JSON counts by its text (HTML only for the WAF page). Order of the rules: the WAF
//! (405, or an HTML page naming Aliyun or "blocked"), then the words (captcha, signature,
//! stale client, model level, concurrency), then the HTTP status, then a numeric `code`
//! in the body.

use serde_json::Value;

/// Bytes of a body looked at.
const MAX_SCAN: usize = 64 * 1024;

/// A judged refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The Aliyun WAF blocks this IP on this endpoint (HTTP 405 or its HTML page). Only
    /// another IP helps.
    WafBlocked,
    /// The token is bad or expired (401).
    Unauthorized,
    /// Concurrency or rate limit (429, or words saying so).
    RateLimited,
    /// `X-FE-Version` stale or the client check failed (426, 您的客户端版本过旧,
    /// 您的客户端校验失败, "New version detected"): scrape the version again.
    StaleClient,
    /// The signature was refused (400 "Signature validation failed", or 422 for none).
    SignatureRejected,
    /// The account's level may not use this model (guests get only `glm-4.7`).
    ModelNotAllowed,
    /// An Aliyun captcha proof (`captcha_verify_param`) is missing or refused.
    CaptchaRequired,
    /// The upstream failed (5xx).
    ServerError(u16),
    /// Anything else, with its HTTP status (or the inline error's code).
    Other(u16),
}

impl Refusal {
    /// A low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Refusal::WafBlocked => "waf_blocked",
            Refusal::Unauthorized => "unauthorized",
            Refusal::RateLimited => "rate_limited",
            Refusal::StaleClient => "stale_client",
            Refusal::SignatureRejected => "signature_rejected",
            Refusal::ModelNotAllowed => "model_not_allowed",
            Refusal::CaptchaRequired => "captcha_required",
            Refusal::ServerError(_) => "server_error",
            Refusal::Other(_) => "other",
        }
    }

    /// A fixed human message (it never repeats the upstream's body, so never a secret).
    pub fn message(&self) -> String {
        match self {
            Refusal::WafBlocked => "Z.AI's firewall (Aliyun WAF) blocked this address".to_string(),
            Refusal::Unauthorized => "Z.AI refused the token (unauthorized)".to_string(),
            Refusal::RateLimited => "Z.AI's concurrency or rate limit was reached".to_string(),
            Refusal::StaleClient => "Z.AI refused the client version or client check".to_string(),
            Refusal::SignatureRejected => "Z.AI refused the request signature".to_string(),
            Refusal::ModelNotAllowed => {
                "this Z.AI account may not use the requested model".to_string()
            }
            Refusal::CaptchaRequired => "Z.AI requires a captcha proof".to_string(),
            Refusal::ServerError(s) => format!("Z.AI failed (HTTP {s})"),
            Refusal::Other(s) => format!("Z.AI refused the request (status {s})"),
        }
    }
}

/// Judge an error response: its status, `Content-Type` and (start of the) body.
pub fn classify(status: u16, content_type: &str, body: &[u8]) -> Refusal {
    let body = &body[..body.len().min(MAX_SCAN)];
    if status == 405 || is_waf_page(content_type, body) {
        return Refusal::WafBlocked;
    }
    let (code, words) = read_error(content_type, body);
    if let Some(r) = by_words(&words) {
        return r;
    }
    match status {
        401 => Refusal::Unauthorized,
        422 => Refusal::SignatureRejected,
        426 => Refusal::StaleClient,
        429 => Refusal::RateLimited,
        500..=599 => Refusal::ServerError(status),
        _ => code.and_then(by_code).unwrap_or(Refusal::Other(status)),
    }
}

/// Judge an error found inside a 200 stream (the decoder's `Decoder::error` and
/// [`super::decode::ZaiDecoder::error_code`]). A code that is not an HTTP status counts
/// as 200 in [`Refusal::Other`].
pub fn classify_inline(code: Option<i64>, message: &str) -> Refusal {
    if let Some(r) = by_words(&message.to_lowercase()) {
        return r;
    }
    let status = code
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (100..=599).contains(c))
        .unwrap_or(200);
    code.and_then(by_code).unwrap_or(match status {
        500..=599 => Refusal::ServerError(status),
        _ => Refusal::Other(status),
    })
}

/// An HTML page from the Aliyun WAF.
fn is_waf_page(content_type: &str, body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    let html =
        content_type.to_ascii_lowercase().contains("html") || text.trim_start().starts_with('<');
    if !html {
        return false;
    }
    let lower = text.to_lowercase();
    lower.contains("aliyun") || lower.contains("blocked")
}

/// The rules on the error's words (`words` is lower-case).
fn by_words(words: &str) -> Option<Refusal> {
    let has = |needles: &[&str]| needles.iter().any(|n| words.contains(n));
    if has(&["captcha", "验证码"]) {
        Some(Refusal::CaptchaRequired)
    } else if has(&["signature validation failed", "签名验证失败"]) {
        Some(Refusal::SignatureRejected)
    } else if has(&[
        "您的客户端版本过旧",
        "您的客户端校验失败",
        "new version detected",
    ]) {
        Some(Refusal::StaleClient)
    } else if has(&["model not available for current user level"]) {
        Some(Refusal::ModelNotAllowed)
    } else if has(&["concurrency", "too many requests", "并发", "rate limit"]) {
        Some(Refusal::RateLimited)
    } else {
        None
    }
}

/// The rules on a numeric error code in the body.
fn by_code(code: i64) -> Option<Refusal> {
    match code {
        401 => Some(Refusal::Unauthorized),
        405 => Some(Refusal::WafBlocked),
        422 => Some(Refusal::SignatureRejected),
        426 => Some(Refusal::StaleClient),
        429 => Some(Refusal::RateLimited),
        _ => None,
    }
}

/// The body's numeric error code and its words (lower-case): the JSON fields of the
/// module docs, or the text of a body that is neither JSON nor HTML.
fn read_error(content_type: &str, body: &[u8]) -> (Option<i64>, String) {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let mut words = String::new();
        let mut code = None;
        gather(&v, 0, &mut words, &mut code);
        return (code, words.to_lowercase());
    }
    let text = String::from_utf8_lossy(body);
    let html =
        content_type.to_ascii_lowercase().contains("html") || text.trim_start().starts_with('<');
    if html {
        (None, String::new())
    } else {
        (None, text.to_lowercase())
    }
}

/// The keys that hold an error's words or code.
const WORD_KEYS: [&str; 5] = ["code", "message", "msg", "detail", "error"];
/// The keys under which an error object nests.
const NEST_KEYS: [&str; 3] = ["error", "detail", "data"];

/// Collect the strings under [`WORD_KEYS`] (looking into [`NEST_KEYS`] objects and into
/// arrays) into `words`, and the first numeric `code` (a number or a numeric string).
fn gather(v: &Value, depth: u8, words: &mut String, code: &mut Option<i64>) {
    if depth > 4 {
        return;
    }
    match v {
        Value::Object(o) => {
            if code.is_none() {
                *code = o.get("code").and_then(|c| match c {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                });
            }
            for k in WORD_KEYS {
                match o.get(k) {
                    Some(Value::String(s)) => {
                        words.push_str(s);
                        words.push('\n');
                    }
                    Some(inner @ (Value::Object(_) | Value::Array(_)))
                        if NEST_KEYS.contains(&k) =>
                    {
                        gather(inner, depth + 1, words, code)
                    }
                    _ => {}
                }
            }
            if let Some(inner @ (Value::Object(_) | Value::Array(_))) = o.get("data") {
                gather(inner, depth + 1, words, code);
            }
        }
        Value::Array(a) => {
            for x in a.iter().take(8) {
                gather(x, depth + 1, words, code);
            }
        }
        Value::String(s) if depth > 0 => {
            words.push_str(s);
            words.push('\n');
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = "application/json";

    fn c(status: u16, body: &str) -> Refusal {
        classify(status, JSON, body.as_bytes())
    }

    #[test]
    fn signature_rows() {
        assert_eq!(
            c(
                400,
                r#"{"detail":"403: Signature validation failed: 签名验证失败"}"#
            ),
            Refusal::SignatureRejected
        );
        assert_eq!(
            c(400, r#"{"detail":"签名验证失败"}"#),
            Refusal::SignatureRejected
        );
        // 422: FastAPI's validation error for a missing signature.
        assert_eq!(
            c(
                422,
                r#"{"detail":[{"loc":["header","x-signature"],"msg":"field required","type":"value_error.missing"}]}"#
            ),
            Refusal::SignatureRejected
        );
        assert_eq!(c(422, ""), Refusal::SignatureRejected);
    }

    #[test]
    fn stale_client_rows() {
        assert_eq!(c(426, "您的客户端版本过旧"), Refusal::StaleClient);
        assert_eq!(
            c(426, r#"{"detail":"New version detected, please refresh"}"#),
            Refusal::StaleClient
        );
        assert_eq!(c(426, ""), Refusal::StaleClient);
        // The inline 426 of a 200 stream.
        assert_eq!(
            c(
                200,
                r#"{"type":"chat:completion","data":{"error":{"detail":"您的客户端校验失败","code":426},"done":true}}"#
            ),
            Refusal::StaleClient
        );
        assert_eq!(
            classify_inline(Some(426), "您的客户端校验失败"),
            Refusal::StaleClient
        );
        assert_eq!(
            classify_inline(Some(426), "something else"),
            Refusal::StaleClient
        );
    }

    #[test]
    fn model_level_rows() {
        let body = r#"{"detail":"Model not available for current user level","code":403}"#;
        assert_eq!(c(200, body), Refusal::ModelNotAllowed);
        assert_eq!(c(403, body), Refusal::ModelNotAllowed);
        // Nested under data.data.error (GFA's extractZAIError).
        assert_eq!(
            c(
                200,
                r#"{"data":{"data":{"error":{"detail":"Model not available for current user level","code":403}}}}"#
            ),
            Refusal::ModelNotAllowed
        );
        assert_eq!(
            classify_inline(Some(403), "Model not available for current user level"),
            Refusal::ModelNotAllowed
        );
        // A bare inline 403 is not judged by its code alone.
        assert_eq!(classify_inline(Some(403), "forbidden"), Refusal::Other(403));
    }

    #[test]
    fn unauthorized_rows() {
        assert_eq!(
            c(401, r#"{"detail":"Not authenticated"}"#),
            Refusal::Unauthorized
        );
        assert_eq!(c(401, ""), Refusal::Unauthorized);
        assert_eq!(
            classify_inline(Some(401), "token expired"),
            Refusal::Unauthorized
        );
    }

    #[test]
    fn rate_limit_rows() {
        assert_eq!(c(429, ""), Refusal::RateLimited);
        assert_eq!(
            c(400, r#"{"error":{"message":"Concurrency limit exceeded"}}"#),
            Refusal::RateLimited
        );
        assert_eq!(
            c(200, r#"{"msg":"Too Many Requests"}"#),
            Refusal::RateLimited
        );
        assert_eq!(
            c(400, r#"{"detail":"当前并发数过多"}"#),
            Refusal::RateLimited
        );
        assert_eq!(
            c(400, r#"{"code":429,"message":"busy"}"#),
            Refusal::RateLimited
        );
        assert_eq!(
            c(400, r#"{"error":{"code":"429","message":"busy"}}"#),
            Refusal::RateLimited
        );
        assert_eq!(classify_inline(Some(429), "busy"), Refusal::RateLimited);
        assert_eq!(classify_inline(None, "concurrency"), Refusal::RateLimited);
    }

    #[test]
    fn waf_rows() {
        let page = "<!DOCTYPE html><html><body>Sorry, your request has been blocked as it may cause potential threats to the server's security. Aliyun</body></html>";
        assert_eq!(
            classify(405, "text/html", page.as_bytes()),
            Refusal::WafBlocked
        );
        assert_eq!(
            classify(403, "text/html; charset=utf-8", page.as_bytes()),
            Refusal::WafBlocked
        );
        // 405 whatever the body; an HTML page without the words is not the WAF.
        assert_eq!(c(405, ""), Refusal::WafBlocked);
        assert_eq!(
            classify(502, "text/html", b"<html><h1>502 Bad Gateway</h1></html>"),
            Refusal::ServerError(502)
        );
        // JSON that says "blocked" is not the WAF page.
        assert_eq!(c(400, r#"{"detail":"blocked word"}"#), Refusal::Other(400));
    }

    #[test]
    fn captcha_rows() {
        // The mock's answer to a missing proof.
        assert_eq!(
            c(
                400,
                r#"{"detail":"captcha_verify_param is required","code":"CAPTCHA_REQUIRED"}"#
            ),
            Refusal::CaptchaRequired
        );
        assert_eq!(
            c(
                403,
                r#"{"error":{"message":"Captcha verification failed"}}"#
            ),
            Refusal::CaptchaRequired
        );
        assert_eq!(
            c(400, r#"{"msg":"请完成验证码"}"#),
            Refusal::CaptchaRequired
        );
        // Only the code says it.
        assert_eq!(
            c(400, r#"{"code":"CAPTCHA_INVALID"}"#),
            Refusal::CaptchaRequired
        );
        assert_eq!(
            classify_inline(None, "captcha_verify_param is required"),
            Refusal::CaptchaRequired
        );
    }

    #[test]
    fn server_and_other() {
        assert_eq!(
            c(500, r#"{"detail":"Internal Server Error"}"#),
            Refusal::ServerError(500)
        );
        assert_eq!(c(503, "upstream unavailable"), Refusal::ServerError(503));
        assert_eq!(
            c(400, r#"{"detail":"INTERNAL_ERROR"}"#),
            Refusal::Other(400)
        );
        assert_eq!(c(404, "not found"), Refusal::Other(404));
        assert_eq!(
            classify_inline(Some(500), "oops"),
            Refusal::ServerError(500)
        );
        assert_eq!(classify_inline(None, "oops"), Refusal::Other(200));
        assert_eq!(classify_inline(Some(70001), "oops"), Refusal::Other(200));
        // Garbage bodies never panic.
        assert_eq!(classify(400, "", &[0xff, 0xfe, b'{']), Refusal::Other(400));
        assert_eq!(
            c(400, "[[[[[[[[[[\"concurrency\"]]]]]]]]]]"),
            Refusal::Other(400)
        );
    }

    #[test]
    fn labels_and_messages_never_echo_the_body() {
        let secret = "eyJhbGciOi.secret-token";
        let body = format!(r#"{{"detail":"bad token {secret}"}}"#);
        for status in [200, 400, 401, 405, 422, 426, 429, 500] {
            let r = classify(status, JSON, body.as_bytes());
            assert!(!r.message().contains(secret));
            assert!(!r.metric_label().is_empty());
        }
        let labels: std::collections::HashSet<_> = [
            Refusal::WafBlocked,
            Refusal::Unauthorized,
            Refusal::RateLimited,
            Refusal::StaleClient,
            Refusal::SignatureRejected,
            Refusal::ModelNotAllowed,
            Refusal::CaptchaRequired,
            Refusal::ServerError(500),
            Refusal::Other(400),
        ]
        .iter()
        .map(Refusal::metric_label)
        .collect();
        assert_eq!(labels.len(), 9);
    }
}

//! The Z.AI request signature (`X-Signature`, providers-protocol.md §A.3.1), the user id
//! inside an Open WebUI JWT (§A.2) and the signed query string of the completion URL
//! (§A.3.3).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ring::hmac;
use serde_json::Value;

use super::calendar::Civil;

/// The front end's signing constant (three `&`, five `%`).
pub const SIGNING_SECRET: &str = "key-@@@@)))()((9))-xxxx&&&%%%%%";

/// Length of one signing window: the derived key changes every 5 minutes.
pub const WINDOW_MS: u64 = 300_000;

/// `version` of the query string.
pub const CLIENT_VERSION: &str = "0.0.1";

/// The web chat's origin, as the page's `location` reports it.
const HOST: &str = "chat.z.ai";

/// The page title a browser reports (`title`).
const PAGE_TITLE: &str = "Z.ai - Free AI Chatbot & Agent powered by GLM-5 & GLM-4.7";

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Lower-case hex of HMAC-SHA256(`key`, `msg`).
fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hex(hmac::sign(&key, msg).as_ref())
}

/// The `X-Signature` header of one completion request.
///
/// * `request_id`: the query's `requestId` (a fresh UUIDv4);
/// * `timestamp_ms`: the query's `timestamp` (Unix milliseconds);
/// * `user_id`: the query's `user_id` (the JWT's id, [`jwt_user_id`]);
/// * `prompt`: exactly the body's `signature_prompt`.
///
/// Two layers of HMAC-SHA256: the key of the 5-minute window `timestamp_ms / 300000` is
/// the lower-case hex of HMAC(secret, window), used as ASCII text to sign
/// `requestId,<id>,timestamp,<ts>,user_id,<uid>|<base64(prompt)>|<ts>`. Lower-case hex.
pub fn signature(request_id: &str, timestamp_ms: u64, user_id: &str, prompt: &str) -> String {
    let window = (timestamp_ms / WINDOW_MS).to_string();
    let derived = hmac_hex(SIGNING_SECRET.as_bytes(), window.as_bytes());
    let message = format!(
        "requestId,{request_id},timestamp,{timestamp_ms},user_id,{user_id}|{}|{timestamp_ms}",
        STANDARD.encode(prompt.as_bytes())
    );
    hmac_hex(derived.as_bytes(), message.as_bytes())
}

/// The user id in an Open WebUI JWT: the payload's `id` claim, else `user_id`, `uid`,
/// `sub` (a string, or a number as its decimal text; empty strings skipped). `None` for
/// anything that is not a JWT with such a claim. The signature is not checked.
pub fn jwt_user_id(token: &str) -> Option<String> {
    let mut parts = token.trim().split('.');
    let (_header, payload) = (parts.next()?, parts.next()?);
    let payload = payload.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    let claims = claims.as_object()?;
    ["id", "user_id", "uid", "sub"]
        .iter()
        .find_map(|k| match claims.get(*k)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// What the caller knows about one completion request; the rest of the query is a
/// desktop Chrome's fingerprint.
#[derive(Debug, Clone, Copy)]
pub struct QueryInput<'a> {
    /// `requestId`: the id that was signed.
    pub request_id: &'a str,
    /// `timestamp` and `signature_timestamp`: the time that was signed (Unix ms).
    pub now_ms: u64,
    /// `user_id`: the id that was signed.
    pub user_id: &'a str,
    /// `token`: the same JWT as the `Authorization` header.
    pub token: &'a str,
    /// The chat the page is on (`/c/<chat_id>`).
    pub chat_id: &'a str,
    /// `user_agent`: the `User-Agent` header sent; it also names `browser_name`/`os_name`.
    pub user_agent: &'a str,
    /// `timezone`: an IANA name, e.g. `UTC` or `Asia/Shanghai`.
    pub timezone: &'a str,
    /// Minutes east of UTC for `timezone` (480 for Shanghai); `timezone_offset` is its
    /// negation, as JavaScript's `getTimezoneOffset` reports it.
    pub utc_offset_minutes: i32,
}

/// The URL-encoded query string (no leading `?`) of `POST /api/v2/chat/completions`:
/// the signed trio, `token`, `version`, `platform`, the page location and
/// `signature_timestamp`, plus the browser fingerprint a desktop Chrome sends (1920×1080
/// screen, 944×919 viewport, `en-US`).
pub fn completion_query(q: &QueryInput<'_>) -> String {
    let path = format!("/c/{}", q.chat_id);
    let url = format!("https://{HOST}{path}");
    let ts = q.now_ms.to_string();
    let utc = Civil::at(q.now_ms, 0);
    let http_date =
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(q.now_ms));
    let offset = (-q.utc_offset_minutes).to_string();
    let pairs: [(&str, &str); 37] = [
        ("requestId", q.request_id),
        ("timestamp", &ts),
        ("user_id", q.user_id),
        ("version", CLIENT_VERSION),
        ("platform", "web"),
        ("token", q.token),
        ("user_agent", q.user_agent),
        ("language", "en-US"),
        ("languages", "en-US,en"),
        ("timezone", q.timezone),
        ("cookie_enabled", "true"),
        ("screen_width", "1920"),
        ("screen_height", "1080"),
        ("screen_resolution", "1920x1080"),
        ("viewport_height", "919"),
        ("viewport_width", "944"),
        ("viewport_size", "944x919"),
        ("color_depth", "24"),
        ("pixel_ratio", "1.25"),
        ("current_url", &url),
        ("pathname", &path),
        ("search", ""),
        ("hash", ""),
        ("host", HOST),
        ("hostname", HOST),
        ("protocol", "https:"),
        ("referrer", ""),
        ("title", PAGE_TITLE),
        ("timezone_offset", &offset),
        ("local_time", &utc.iso_utc()),
        ("utc_time", &http_date),
        ("is_mobile", "false"),
        ("is_touch", "false"),
        ("max_touch_points", "0"),
        ("browser_name", browser_name(q.user_agent)),
        ("os_name", os_name(q.user_agent)),
        ("signature_timestamp", &ts),
    ];
    let mut out = String::with_capacity(1024);
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode(k, &mut out);
        out.push('=');
        percent_encode(v, &mut out);
    }
    out
}

/// The browser a `User-Agent` names, as the page reports it (Chrome when unsure).
fn browser_name(ua: &str) -> &'static str {
    if ua.contains("Edg/") {
        "Microsoft Edge"
    } else if ua.contains("OPR/") {
        "Opera"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("Chrome/") || ua.contains("CriOS/") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else {
        "Chrome"
    }
}

/// The operating system a `User-Agent` names (Windows when unsure).
fn os_name(ua: &str) -> &'static str {
    if ua.contains("Android") {
        "Android"
    } else if ua.contains("iPhone") || ua.contains("iPad") {
        "iOS"
    } else if ua.contains("Mac OS X") || ua.contains("Macintosh") {
        "Mac OS"
    } else if ua.contains("Linux") || ua.contains("X11") {
        "Linux"
    } else {
        "Windows"
    }
}

/// Append `s` percent-encoded: every byte but the RFC 3986 unreserved set
/// (`A–Z a–z 0–9 - . _ ~`) becomes `%XX` (upper-case hex), so a space is `%20`.
fn percent_encode(s: &str, out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(DIGITS[usize::from(b >> 4)]));
            out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const RID: &str = "8f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    const TS: u64 = 1_760_000_000_000;

    /// Reference implementation, run once on this machine to get the vectors below:
    ///
    /// ```text
    /// python3 -c '
    /// import hmac,hashlib,base64
    /// S=b"key-@@@@)))()((9))-xxxx&&&%%%%%"
    /// def sig(rid,ts,uid,prompt):
    ///     k=hmac.new(S,str(ts//300000).encode(),hashlib.sha256).hexdigest()
    ///     msg="requestId,%s,timestamp,%d,user_id,%s|%s|%d"%(rid,ts,uid,base64.b64encode(prompt.encode()).decode(),ts)
    ///     return hmac.new(k.encode(),msg.encode(),hashlib.sha256).hexdigest()
    /// print(sig("8f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",1760000000000,"user-123","hi 你好"))
    /// print(sig("8f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",1760000000000,"user-123",""))'
    /// ```
    #[test]
    fn known_vectors() {
        assert_eq!(
            signature(RID, TS, "user-123", "hi 你好"),
            "440dfb3fa2d65a2dd0c56de696055b82fd1f9dad65fdbbbd2cc16b3daa832aea"
        );
        // The empty prompt signs `…|` + `|ts`.
        assert_eq!(
            signature(RID, TS, "user-123", ""),
            "0f7600fdc35d18b75d7e813bc6039920b14d1c7fb4009d0450d0a4fedb183c58"
        );
    }

    #[test]
    fn secret_is_the_front_end_constant() {
        assert_eq!(SIGNING_SECRET.len(), 31);
        assert_eq!(SIGNING_SECRET.matches('&').count(), 3);
        assert_eq!(SIGNING_SECRET.matches('%').count(), 5);
    }

    #[test]
    fn hex_is_lower_case_and_64_chars() {
        let s = signature(RID, TS, "u", "p");
        assert_eq!(s.len(), 64);
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    /// The derived key changes exactly at a multiple of 5 minutes. The timestamp is also
    /// part of the message, so the test compares the derived layer alone.
    #[test]
    fn window_boundaries() {
        let derived = |ts: u64| {
            hmac_hex(
                SIGNING_SECRET.as_bytes(),
                (ts / WINDOW_MS).to_string().as_bytes(),
            )
        };
        let start = 5_866_666 * WINDOW_MS;
        assert_eq!(derived(start), derived(start + WINDOW_MS - 1));
        assert_ne!(derived(start - 1), derived(start));
        assert_ne!(derived(start + WINDOW_MS - 1), derived(start + WINDOW_MS));
        // Same instant, same signature; one millisecond later, another one.
        assert_eq!(
            signature(RID, start, "u", "p"),
            signature(RID, start, "u", "p")
        );
        assert_ne!(
            signature(RID, start, "u", "p"),
            signature(RID, start + 1, "u", "p")
        );
        // Every input is signed.
        let base = signature(RID, TS, "u", "p");
        assert_ne!(base, signature("other", TS, "u", "p"));
        assert_ne!(base, signature(RID, TS, "v", "p"));
        assert_ne!(base, signature(RID, TS, "u", "q"));
    }

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(payload.as_bytes())
        )
    }

    #[test]
    fn jwt_claims_in_order() {
        assert_eq!(
            jwt_user_id(&jwt(r#"{"id":"abc-1","sub":"x"}"#)).as_deref(),
            Some("abc-1")
        );
        assert_eq!(
            jwt_user_id(&jwt(r#"{"user_id":"u2","uid":"u3"}"#)).as_deref(),
            Some("u2")
        );
        assert_eq!(jwt_user_id(&jwt(r#"{"uid":42}"#)).as_deref(), Some("42"));
        assert_eq!(
            jwt_user_id(&jwt(r#"{"id":"","sub":"s-4"}"#)).as_deref(),
            Some("s-4")
        );
        // A payload with `-`/`_` (base64url) and a padded one.
        let odd = jwt(r#"{"id":"??>>~~"}"#);
        assert!(odd.contains('-') || odd.contains('_') || odd.len() > 10);
        assert_eq!(jwt_user_id(&odd).as_deref(), Some("??>>~~"));
        let padded = format!("h.{}=.s", URL_SAFE_NO_PAD.encode(br#"{"id":"pad"}"#));
        assert_eq!(jwt_user_id(&padded).as_deref(), Some("pad"));
    }

    #[test]
    fn jwt_garbage_is_none() {
        for t in [
            "",
            ".",
            "..",
            "abc",
            "a.b.c",
            "a.!!!!.c",
            "a.\u{1F600}.c",
            &jwt("not json"),
            &jwt("[1,2]"),
            &jwt(r#"{"name":"x"}"#),
            &jwt(r#"{"id":null,"sub":true}"#),
            &jwt(r#"{"id":{"nested":1}}"#),
        ] {
            assert_eq!(jwt_user_id(t), None, "{t:?}");
        }
    }

    fn decode(q: &str) -> HashMap<String, String> {
        q.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (unescape(k), unescape(v))
            })
            .collect()
    }

    fn unescape(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36";

    #[test]
    fn query_has_the_signed_and_fingerprint_fields() {
        let q = completion_query(&QueryInput {
            request_id: RID,
            now_ms: 1_773_194_400_123,
            user_id: "user-123",
            token: "h.p+/=.s",
            chat_id: "chat-9",
            user_agent: CHROME,
            timezone: "Asia/Shanghai",
            utc_offset_minutes: 480,
        });
        // Only unreserved characters, `%`, `=` and `&` on the wire.
        assert!(q
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%=&".contains(&b)));
        let m = decode(&q);
        assert_eq!(m.len(), 37);
        for (k, v) in [
            ("requestId", RID),
            ("timestamp", "1773194400123"),
            ("signature_timestamp", "1773194400123"),
            ("user_id", "user-123"),
            ("token", "h.p+/=.s"),
            ("version", "0.0.1"),
            ("platform", "web"),
            ("current_url", "https://chat.z.ai/c/chat-9"),
            ("pathname", "/c/chat-9"),
            ("user_agent", CHROME),
            ("timezone", "Asia/Shanghai"),
            ("timezone_offset", "-480"),
            ("local_time", "2026-03-11T02:00:00.123Z"),
            ("utc_time", "Wed, 11 Mar 2026 02:00:00 GMT"),
            ("browser_name", "Chrome"),
            ("os_name", "Windows"),
            ("screen_resolution", "1920x1080"),
            ("search", ""),
            ("host", "chat.z.ai"),
            ("protocol", "https:"),
            ("title", PAGE_TITLE),
        ] {
            assert_eq!(m.get(k).map(String::as_str), Some(v), "{k}");
        }
        // The token's reserved characters are escaped, spaces are %20.
        assert!(q.contains("token=h.p%2B%2F%3D.s"));
        assert!(q.contains("title=Z.ai%20-%20Free%20AI%20Chatbot%20%26%20Agent"));
    }

    #[test]
    fn browser_and_os_from_user_agent() {
        let edge = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36 Edg/140.0.0.0";
        assert_eq!(
            (browser_name(edge), os_name(edge)),
            ("Microsoft Edge", "Windows")
        );
        let mac = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15";
        assert_eq!((browser_name(mac), os_name(mac)), ("Safari", "Mac OS"));
        let ff = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
        assert_eq!((browser_name(ff), os_name(ff)), ("Firefox", "Linux"));
        assert_eq!((browser_name(""), os_name("")), ("Chrome", "Windows"));
    }

    #[test]
    fn percent_encoding_of_utf8() {
        let mut s = String::new();
        percent_encode("a b/é~", &mut s);
        assert_eq!(s, "a%20b%2F%C3%A9~");
    }
}

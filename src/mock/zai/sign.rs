//! The Z.AI request signature (`providers-protocol.md` §A.3.1), the mock's JWTs and query
//! parsing: what the mock needs to check a completion request on its own.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::Rng;
use ring::hmac;
use serde_json::{json, Value};

/// The front-end constant keying the first HMAC layer (three `&`, five `%`).
pub const SECRET: &str = "key-@@@@)))()((9))-xxxx&&&%%%%%";

/// Width of a signing window: the derived key changes every 5 minutes.
pub const WINDOW_MS: u64 = 300_000;

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

fn hmac_hex(key: &[u8], msg: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hex(hmac::sign(&key, msg).as_ref())
}

/// The `X-Signature` for these query values and `signature_prompt`, recomputed from the
/// notes:
/// 1. payload `requestId,<id>,timestamp,<ts>,user_id,<uid>` (keys in ASCII order),
/// 2. message `<payload>|<standard padded base64 of the prompt's UTF-8>|<ts>`,
/// 3. bucket `floor(ts / 300000)` as decimal text,
/// 4. derived key = lower-case hex of `HMAC-SHA256(SECRET, bucket)`,
/// 5. signature = lower-case hex of `HMAC-SHA256(<the 64 hex characters>, message)`.
pub fn signature(request_id: &str, timestamp_ms: u64, user_id: &str, prompt: &str) -> String {
    signature_of(
        request_id,
        &timestamp_ms.to_string(),
        timestamp_ms,
        user_id,
        prompt,
    )
}

/// [`signature`] with the timestamp as the request wrote it (`timestamp_text`, used in the
/// message) and as a number (`timestamp_ms`, for the bucket).
pub fn signature_of(
    request_id: &str,
    timestamp_text: &str,
    timestamp_ms: u64,
    user_id: &str,
    prompt: &str,
) -> String {
    let payload = format!("requestId,{request_id},timestamp,{timestamp_text},user_id,{user_id}");
    let message = format!("{payload}|{}|{timestamp_text}", STANDARD.encode(prompt));
    let bucket = (timestamp_ms / WINDOW_MS).to_string();
    let derived = hmac_hex(SECRET.as_bytes(), bucket.as_bytes());
    hmac_hex(derived.as_bytes(), message.as_bytes())
}

/// An Open WebUI-looking JWT `base64url(header).base64url({"id","email"}).<random sig>`,
/// without `exp` (Z.AI's tokens never expire, SEC / GFA #41).
pub fn jwt(user_id: &str, email: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({"id": user_id, "email": email});
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let sig: [u8; 32] = rand::thread_rng().gen();
    format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// The user id claim of a JWT (`id`, else `user_id`, `uid`, `sub`), if it has one.
pub fn jwt_user_id(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    ["id", "user_id", "uid", "sub"]
        .iter()
        .find_map(|k| match claims.get(*k)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; a stray `%`
/// stays as it is.
pub fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The decoded `(name, value)` pairs of a query string, in order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_layers() {
        // Rebuild the two layers by hand for one input and compare.
        let ts = 1_760_000_123_456u64;
        let bucket = (ts / 300_000).to_string();
        assert_eq!(bucket, "5866667");
        let k1 = hmac_hex(SECRET.as_bytes(), bucket.as_bytes());
        assert_eq!(k1.len(), 64);
        let msg = format!("requestId,r1,timestamp,{ts},user_id,u1|aGk=|{ts}");
        assert_eq!(
            signature("r1", ts, "u1", "hi"),
            hmac_hex(k1.as_bytes(), msg.as_bytes())
        );
        // Same bucket, same key; next bucket, another key.
        assert_ne!(
            signature("r1", ts, "u1", "hi"),
            signature("r1", ts, "u1", "ho")
        );
        assert_eq!(SECRET.matches('&').count(), 3);
        assert_eq!(SECRET.matches('%').count(), 5);
        // HMAC-SHA256 test vector (RFC 4231, case 2) through the same helper.
        assert_eq!(
            hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn jwt_round_trip_and_query() {
        let t = jwt("u-1", "a@b.c");
        assert_eq!(t.split('.').count(), 3);
        assert_eq!(jwt_user_id(&t).as_deref(), Some("u-1"));
        assert_eq!(jwt_user_id("nope"), None);
        assert_eq!(url_decode("a%20b+c%2x%"), "a b c%2x%");
        assert_eq!(
            query_pairs("a=1&b=%E4%B8%AD&c&=x"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "中".into()),
                ("c".into(), String::new()),
                (String::new(), "x".into()),
            ]
        );
    }
}

//! Secrets (upstream tokens, client keys) in a type that cannot be printed by accident.
//!
//! `Debug` and `Display` show only a mask (`eyJh…X9c`), so a secret that slips into a log
//! line, an error or an admin view leaks nothing. The value is reachable only through
//! [`Secret::expose`], which is easy to grep for.

use std::fmt;
use std::sync::Arc;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The real value: for building the upstream request, and nothing else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The masked form used everywhere a secret is shown.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Keep the first and last four characters of long values, nothing of short ones.
pub fn mask(s: &str) -> String {
    let n = s.chars().count();
    if n < 16 {
        return "****".to_string();
    }
    let head: String = s.chars().take(4).collect();
    let tail: String = s.chars().skip(n - 4).collect();
    format!("{head}…{tail}")
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.masked())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

/// A token's id where a fleet shares its state: the first 16 hex digits of its SHA-256,
/// so the token itself never appears in a key or an event.
pub fn token_id(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A URL with its credentials (`user:password@`) masked, for logs and errors.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://****@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// Constant-time equality for keys (the length is not hidden).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_stable_short_and_not_the_token() {
        let a = token_id("secret-token-a");
        assert_eq!(a.len(), 16);
        assert_eq!(a, token_id("secret-token-a"));
        assert_ne!(a, token_id("secret-token-b"));
        // SHA-256("abc") starts ba7816bf8f01cfea.
        assert_eq!(token_id("abc"), "ba7816bf8f01cfea");
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(mask_url("redis://:pw@h:6379/0"), "redis://****@h:6379/0");
        assert_eq!(mask_url("rediss://u:p@h"), "rediss://****@h");
        assert_eq!(mask_url("redis://h:1"), "redis://h:1");
        assert_eq!(mask_url("unix:///run/r.sock"), "unix:///run/r.sock");
    }

    #[test]
    fn never_prints_the_value() {
        let s = Secret::new("eyJhbGciOiJIUzI1NiJ9.payload.signature-X9c");
        assert_eq!(s.to_string(), "eyJh…-X9c");
        assert_eq!(format!("{s:?}"), "Secret(eyJh…-X9c)");
        assert!(!format!("{s} {s:?} {s:#?}").contains("payload"));
        assert_eq!(Secret::new("short").to_string(), "****");
        assert_eq!(s.expose(), "eyJhbGciOiJIUzI1NiJ9.payload.signature-X9c");
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"sk-abc", b"sk-abc"));
        assert!(!ct_eq(b"sk-abc", b"sk-abd"));
        assert!(!ct_eq(b"sk-abc", b"sk-ab"));
    }
}

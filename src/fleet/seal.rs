//! Optional sealing of the tokens a fleet stores in Redis (`fleet.secret`): ChaCha20-Poly1305
//! with a key derived from the secret (SHA-256), a random nonce per value, written as
//! `s1:<base64(nonce ‖ ciphertext ‖ tag)>`. Without a secret tokens are stored as they are
//! (protect Redis with an ACL user and TLS); a value stored before a secret was set is
//! still read.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "s1:";

fn key(secret: &str) -> Option<LessSafeKey> {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    UnboundKey::new(&CHACHA20_POLY1305, d.as_ref())
        .ok()
        .map(LessSafeKey::new)
}

/// `token` as stored: sealed with `secret` when there is one.
pub fn seal(secret: Option<&str>, token: &str) -> String {
    let Some(k) = secret.and_then(key) else {
        return token.to_string();
    };
    let mut nonce = [0u8; NONCE_LEN];
    if SystemRandom::new().fill(&mut nonce).is_err() {
        // No randomness: never store a token under a reused nonce; store nothing usable.
        return String::new();
    }
    let mut buf = token.as_bytes().to_vec();
    if k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
        .is_err()
    {
        return String::new();
    }
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(out)
    )
}

/// A stored value back as the token: opened with `secret` when sealed; `None` when it is
/// sealed and cannot be opened (no secret, another secret, altered).
pub fn open(secret: Option<&str>, stored: &str) -> Option<String> {
    let Some(b64) = stored.strip_prefix(PREFIX) else {
        return (!stored.is_empty()).then(|| stored.to_string());
    };
    let k = key(secret?)?;
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .ok()?;
    if raw.len() < NONCE_LEN {
        return None;
    }
    let (nonce, sealed) = raw.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = sealed.to_vec();
    let plain = k.open_in_place(nonce, Aad::empty(), &mut buf).ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_only_with_their_secret() {
        let s = Some("fleet-secret-0123456789");
        let sealed = seal(s, "eyJ.token.sig");
        assert!(
            sealed.starts_with("s1:") && !sealed.contains("eyJ"),
            "{sealed}"
        );
        assert_ne!(sealed, seal(s, "eyJ.token.sig"), "a fresh nonce each time");
        assert_eq!(open(s, &sealed).as_deref(), Some("eyJ.token.sig"));
        assert_eq!(open(Some("another-secret-000000"), &sealed), None);
        assert_eq!(open(None, &sealed), None);
        let mut altered = sealed.clone();
        altered.pop();
        altered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(open(s, &altered), None);
        // Without a secret, stored as is; a plain value is read with or without one.
        assert_eq!(seal(None, "plain"), "plain");
        assert_eq!(open(s, "plain").as_deref(), Some("plain"));
        assert_eq!(open(None, ""), None);
    }
}

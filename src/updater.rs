//! Account sign-in, the pure part: the accounts file, the sign-in answer, JWT lifetimes,
//! and when each account is due. The transport (Pingora's connector) and the background
//! loop live in `proxy::updater`.

use std::collections::HashMap;

use base64::Engine;
use serde::Serialize;
use serde_json::Value;

use crate::secret::Secret;

/// An account to sign in with. The password never leaves this struct except in the
/// sign-in request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub email: String,
    pub password: Secret,
}

/// Parse an accounts file: one JSON object per line with `email` and `k2_password` (the
/// seed proxies' key) or `password`. Blank lines and `#` comments are skipped. Errors name
/// the line, never the password.
pub fn parse_accounts(text: &str) -> Result<Vec<Account>, String> {
    let mut out: Vec<Account> = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let v: Value = serde_json::from_str(line)
            .map_err(|e| format!("line {n}: not a JSON object ({})", e.classify_name()))?;
        let email = v
            .get("email")
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .ok_or_else(|| format!("line {n}: `email` is missing"))?;
        let password = v
            .get("k2_password")
            .or_else(|| v.get("password"))
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .ok_or_else(|| format!("line {n}: `k2_password` (or `password`) is missing"))?;
        if out.iter().any(|a| a.email.eq_ignore_ascii_case(email)) {
            return Err(format!("line {n}: account {email} is listed twice"));
        }
        out.push(Account {
            email: email.to_string(),
            password: Secret::new(password),
        });
    }
    Ok(out)
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "read error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "wrong shape",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

/// The `exp` claim (unix seconds) of a JWT, without verifying it.
pub fn jwt_exp(token: &str) -> Option<u64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("exp")
        .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)))
}

/// The token in a sign-in answer: the JSON `token` field (also `access_token`,
/// `data.token`), else the `token=` cookie of a `Set-Cookie` header.
pub fn token_from_signin(status: u16, body: &[u8], set_cookies: &[&str]) -> Result<String, String> {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    if !(200..300).contains(&status) {
        let detail = json
            .as_ref()
            .and_then(|v| v.get("detail").or_else(|| v.get("message")))
            .and_then(Value::as_str)
            .map(|d| d.chars().take(160).collect::<String>())
            .unwrap_or_default();
        return Err(if detail.is_empty() {
            format!("sign-in refused: HTTP {status}")
        } else {
            format!("sign-in refused: HTTP {status}: {detail}")
        });
    }
    let from_body = json.as_ref().and_then(|v| {
        v.get("token")
            .or_else(|| v.get("access_token"))
            .or_else(|| v.get("data").and_then(|d| d.get("token")))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
    });
    if let Some(t) = from_body {
        return Ok(t);
    }
    for header in set_cookies {
        for part in header.split(';') {
            if let Some(v) = part.trim().strip_prefix("token=") {
                if !v.is_empty() {
                    return Ok(v.to_string());
                }
            }
        }
    }
    Err("sign-in answered without a token (no `token` field, no `token` cookie)".to_string())
}

/// When a token obtained at `now` should be refreshed: at `fraction` of its remaining
/// lifetime, but no later than the regular `interval`.
pub fn refresh_due(now: u64, exp: Option<u64>, fraction: f64, interval: u64) -> u64 {
    let by_interval = now + interval;
    match exp {
        Some(exp) if exp > now => {
            let life = (exp - now) as f64;
            (now + (life * fraction) as u64).min(by_interval)
        }
        // already expired (clock skew) or no exp: the interval decides, with a short retry
        Some(_) => now + 60.min(interval),
        None => by_interval,
    }
}

/// The updater's state, as `/admin/tokens/updater/status` shows it (seed-compatible keys).
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdaterStatus {
    pub is_running: bool,
    pub is_updating: bool,
    /// Seconds.
    pub update_interval: u64,
    pub last_update: Option<u64>,
    pub update_count: u64,
    pub error_count: u64,
    pub last_error: Option<String>,
    pub cached_tokens_count: usize,
    pub next_update: Option<u64>,
    pub accounts_file_exists: bool,
    pub accounts: usize,
    /// `file` when tokens are saved to `pool.tokens_file`, else `memory`.
    pub mode: &'static str,
    /// Per account: last result and when its token is due.
    pub per_account: Vec<AccountStatus>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountStatus {
    pub email: String,
    pub last_signin: Option<u64>,
    pub last_error: Option<String>,
    pub token_expires: Option<u64>,
    pub refresh_due: Option<u64>,
}

/// Which accounts are due at `now` (`due` maps email to its next refresh time; accounts
/// never signed in are due at once).
pub fn due_accounts<'a>(
    accounts: &'a [Account],
    due: &HashMap<String, u64>,
    now: u64,
) -> Vec<&'a Account> {
    accounts
        .iter()
        .filter(|a| due.get(&a.email).is_none_or(|t| *t <= now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        let e = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.sig", e(r#"{"alg":"HS256","typ":"JWT"}"#), e(payload))
    }

    #[test]
    fn accounts_file() {
        let a = parse_accounts(
            "# team\n{\"email\":\"a@x.io\",\"k2_password\":\"pw1\"}\n\n{\"email\":\"b@x.io\",\"password\":\"pw2\"}\n",
        )
        .unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(
            (a[0].email.as_str(), a[0].password.expose()),
            ("a@x.io", "pw1")
        );
        assert_eq!(a[1].password.expose(), "pw2");
        let e = parse_accounts("{\"email\":\"a@x.io\"}\n").unwrap_err();
        assert!(e.contains("line 1") && e.contains("k2_password"), "{e}");
        let e = parse_accounts("{\"email\":\"a\",\"password\":\"secret-pw\"\n").unwrap_err();
        assert!(e.contains("line 1") && !e.contains("secret-pw"), "{e}");
        assert!(parse_accounts(
            "{\"email\":\"a@x\",\"password\":\"1\"}\n{\"email\":\"A@x\",\"password\":\"2\"}"
        )
        .is_err());
    }

    #[test]
    fn jwt_expiry() {
        assert_eq!(
            jwt_exp(&jwt(r#"{"id":"u","exp":1900000000}"#)),
            Some(1_900_000_000)
        );
        assert_eq!(jwt_exp(&jwt(r#"{"id":"u"}"#)), None);
        assert_eq!(jwt_exp("not-a-jwt"), None);
        assert_eq!(jwt_exp("a.%%%.c"), None);
    }

    #[test]
    fn signin_answers() {
        assert_eq!(
            token_from_signin(200, br#"{"token":"T1","token_type":"Bearer"}"#, &[]).unwrap(),
            "T1"
        );
        assert_eq!(
            token_from_signin(200, br#"{"data":{"token":"T2"}}"#, &[]).unwrap(),
            "T2"
        );
        assert_eq!(
            token_from_signin(
                200,
                b"{}",
                &["theme=dark; Path=/", "token=T3; Path=/; HttpOnly"]
            )
            .unwrap(),
            "T3"
        );
        let e = token_from_signin(
            400,
            br#"{"detail":"The email or password provided is incorrect."}"#,
            &[],
        )
        .unwrap_err();
        assert!(e.contains("400") && e.contains("incorrect"), "{e}");
        assert!(token_from_signin(200, b"<html>", &[]).is_err());
    }

    #[test]
    fn refresh_schedule() {
        // a one-hour token refreshed at 80 % of its life
        assert_eq!(refresh_due(1000, Some(4600), 0.8, 86_400), 1000 + 2880);
        // the interval caps it
        assert_eq!(refresh_due(1000, Some(1_000_000), 0.8, 3600), 4600);
        // no exp: the interval
        assert_eq!(refresh_due(1000, None, 0.8, 3600), 4600);
        // already expired: retry soon
        assert_eq!(refresh_due(1000, Some(500), 0.8, 3600), 1060);
        let accounts = parse_accounts(
            "{\"email\":\"a\",\"password\":\"1\"}\n{\"email\":\"b\",\"password\":\"2\"}",
        )
        .unwrap();
        let due: HashMap<String, u64> = [("a".to_string(), 2000)].into();
        let now_due: Vec<&str> = due_accounts(&accounts, &due, 1500)
            .iter()
            .map(|a| a.email.as_str())
            .collect();
        assert_eq!(now_due, ["b"]);
        assert_eq!(due_accounts(&accounts, &due, 2000).len(), 2);
    }
}

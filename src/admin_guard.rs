//! The admin API's first gate, before any key is looked at: it refuses what a browser can be
//! made to send on a victim's behalf, and what loopback cannot vouch for.
//!
//! A pure function of the request's method, headers and the `admin` config section, for every
//! `/admin` route, the dashboard page included, with or without `admin.key`:
//!
//! - **Foreign `Host`** (DNS rebinding: a page on `evil.example` whose name now resolves to
//!   127.0.0.1 reads the API as same-origin): the `Host` must be an IP literal, `localhost`,
//!   or a name in `admin.allowed_hosts`. 403 `admin_host_not_allowed`.
//! - **Cross-site** (a form or `fetch` from another site, sent with the victim's network
//!   position): `Sec-Fetch-Site` other than `same-origin`/`none`, or an `Origin` that is not
//!   the request's own host (`Origin: null` included). 403 `admin_cross_site`.
//! - **Through a reverse proxy without a key**: with no `admin.key` only loopback clients are
//!   let in, and behind a local reverse proxy every client is loopback. A request carrying
//!   `X-Forwarded-For`, `Forwarded` or `X-Real-IP` is refused. 403 `admin_behind_proxy`.
//! - **A write with a body that is not JSON** (`text/plain` and form bodies are what a
//!   cross-site form can send without a preflight): 415 `admin_json_only`. A write without a
//!   body (`curl -X POST …/admin/config/reload`) needs no content type.

use std::net::{Ipv4Addr, Ipv6Addr};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use http::{HeaderMap, Method};

use crate::config::AdminSection;
use crate::core::error::ApiError;

/// Headers a reverse proxy adds to say who the client really is.
const FORWARDING_HEADERS: [&str; 3] = ["x-forwarded-for", "forwarded", "x-real-ip"];

/// `Ok` when the request may go on to the admin key (or loopback) check.
///
/// `authority` is the request target's authority (`:authority` in HTTP/2), used when there
/// is no `Host` header.
pub fn check(
    method: &Method,
    authority: Option<&str>,
    headers: &HeaderMap,
    admin: &AdminSection,
) -> Result<(), ApiError> {
    let host = request_host(authority, headers)?;
    if !host_allowed(host, &admin.allowed_hosts) {
        return Err(forbidden(
            "admin_host_not_allowed",
            "The admin API answers only when the Host header is an IP address, `localhost` or a \
             name listed in admin.allowed_hosts (this stops DNS-rebinding pages)",
        ));
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        let ok = site
            .to_str()
            .is_ok_and(|s| s.eq_ignore_ascii_case("same-origin") || s.eq_ignore_ascii_case("none"));
        if !ok {
            return Err(cross_site());
        }
    }
    for origin in headers.get_all(ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(origin_authority)
            .is_some_and(|a| a.eq_ignore_ascii_case(host));
        if !same {
            return Err(cross_site());
        }
    }
    if admin.key.is_none() && FORWARDING_HEADERS.iter().any(|h| headers.contains_key(*h)) {
        return Err(forbidden(
            "admin_behind_proxy",
            "This request came through a reverse proxy (it carries X-Forwarded-For, Forwarded \
             or X-Real-IP), so a loopback address proves nothing about the client. Set \
             admin.key to use the admin API through a proxy",
        ));
    }
    let write = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if write && has_body(headers) && !is_json(headers) {
        return Err(ApiError::new(
            415,
            "invalid_request_error",
            "admin_json_only",
            "Admin requests with a body must send it as `Content-Type: application/json`"
                .to_string(),
        ));
    }
    Ok(())
}

fn forbidden(code: &'static str, message: &str) -> ApiError {
    ApiError::new(403, "invalid_request_error", code, message.to_string())
}

fn cross_site() -> ApiError {
    forbidden(
        "admin_cross_site",
        "Cross-site requests to the admin API are refused: the Origin (or Sec-Fetch-Site) \
         says this request comes from another site. Use the dashboard at /admin on this host, \
         or a client that is not a browser",
    )
}

/// The `Host` the request was sent to: the one `Host` header, else the authority.
fn request_host<'a>(
    authority: Option<&'a str>,
    headers: &'a HeaderMap,
) -> Result<&'a str, ApiError> {
    let mut hosts = headers.get_all(HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().ok(),
        (None, _) => authority,
        (Some(_), Some(_)) => None,
    };
    host.map(str::trim)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            forbidden(
                "admin_host_not_allowed",
                "The admin API needs exactly one valid Host header",
            )
        })
}

/// An IP literal (v4, or v6 in brackets), `localhost`, or a name in `allowed`; any port.
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        let Some((addr, rest)) = v6.split_once(']') else {
            return false;
        };
        return addr.parse::<Ipv6Addr>().is_ok() && valid_port_suffix(rest);
    } else {
        match host.split_once(':') {
            Some((name, port)) if valid_port_suffix(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    if name.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| {
            let a = a.strip_suffix('.').unwrap_or(a);
            !a.is_empty() && a.eq_ignore_ascii_case(name)
        })
}

/// Empty, or `:` and a port number.
fn valid_port_suffix(s: &str) -> bool {
    match s.strip_prefix(':') {
        None => s.is_empty(),
        Some(p) => !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()),
    }
}

/// `host[:port]` of an `Origin` (`scheme://host[:port]`); `None` for `null` or anything else.
fn origin_authority(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    (web && !rest.is_empty() && !rest.contains(['/', '?', '#', '@'])).then_some(rest)
}

/// The request has a body: a non-zero `Content-Length`, or `Transfer-Encoding`.
fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.to_str().map_or(true, |s| s.trim() != "0"))
}

/// `Content-Type: application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    match (types.next(), types.next()) {
        (Some(v), None) => v.to_str().is_ok_and(|s| {
            s.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn admin(key: Option<&str>, allowed: &[&str]) -> AdminSection {
        AdminSection {
            key: key.map(str::to_string),
            allowed_hosts: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The error code, or `ok`.
    fn verdict(method: &str, list: &[(&str, &str)], cfg: &AdminSection) -> String {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        match check(&m, None, &headers(list), cfg) {
            Ok(()) => "ok".to_string(),
            Err(e) => format!("{} {}", e.status, e.code.unwrap_or("-")),
        }
    }

    #[test]
    fn plain_local_clients_pass() {
        let open = admin(None, &[]);
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "localhost:8080",
            "LOCALHOST",
            "localhost.",
            "[::1]:8080",
            "[::1]",
            "10.1.2.3:80",
            "[fe80::1]:9",
        ] {
            assert_eq!(verdict("GET", &[("host", host)], &open), "ok", "{host}");
        }
        // curl -X POST with no body, and a JSON body
        assert_eq!(verdict("POST", &[("host", "localhost:8080")], &open), "ok");
        assert_eq!(
            verdict(
                "POST",
                &[("host", "localhost:8080"), ("content-length", "0")],
                &open
            ),
            "ok"
        );
        assert_eq!(
            verdict(
                "POST",
                &[
                    ("host", "localhost:8080"),
                    ("content-type", "application/json; charset=utf-8"),
                    ("content-length", "17"),
                ],
                &open
            ),
            "ok"
        );
    }

    #[test]
    fn same_origin_browser_requests_pass() {
        let open = admin(None, &[]);
        let list = [
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
            ("content-type", "application/json"),
            ("content-length", "17"),
        ];
        assert_eq!(verdict("POST", &list, &open), "ok");
        // a page opened from the address bar
        let list = [("host", "localhost:8080"), ("sec-fetch-site", "none")];
        assert_eq!(verdict("GET", &list, &open), "ok");
        // an HTTP/2 request: the authority stands in for Host
        let m = Method::GET;
        assert!(check(&m, Some("127.0.0.1:8080"), &HeaderMap::new(), &open).is_ok());
        let h = headers(&[("origin", "https://127.0.0.1:8080")]);
        assert!(check(&m, Some("127.0.0.1:8080"), &h, &open).is_ok());
    }

    #[test]
    fn cross_site_requests_are_refused() {
        let open = admin(None, &[]);
        let keyed = admin(Some("admin-key-0123456789"), &[]);
        let host = ("host", "127.0.0.1:8080");
        for cfg in [&open, &keyed] {
            // the form POST that added an attacker's token
            let form = [
                host,
                ("origin", "https://evil.example"),
                ("content-type", "text/plain"),
                ("content-length", "20"),
            ];
            assert_eq!(verdict("POST", &form, cfg), "403 admin_cross_site");
            for origin in [
                "null",
                "http://127.0.0.1:8081",
                "http://127.0.0.1",
                "http://localhost:8080",
                "file://",
                "127.0.0.1:8080",
                "ftp://127.0.0.1:8080",
            ] {
                assert_eq!(
                    verdict("GET", &[host, ("origin", origin)], cfg),
                    "403 admin_cross_site",
                    "{origin}"
                );
            }
            for site in ["cross-site", "same-site", "bogus"] {
                assert_eq!(
                    verdict("GET", &[host, ("sec-fetch-site", site)], cfg),
                    "403 admin_cross_site",
                    "{site}"
                );
            }
            // two Origins, one of them foreign
            let two = [
                host,
                ("origin", "http://127.0.0.1:8080"),
                ("origin", "https://evil.example"),
            ];
            assert_eq!(verdict("GET", &two, cfg), "403 admin_cross_site");
        }
    }

    #[test]
    fn foreign_hosts_are_refused_unless_listed() {
        let open = admin(None, &[]);
        let keyed = admin(Some("admin-key-0123456789"), &[]);
        for cfg in [&open, &keyed] {
            for host in [
                "evil.example",
                "evil.example:8080",
                "127.0.0.1.nip.io:8080",
                "localhost.evil.example",
                "127.1",
                "::1",
                "[::1",
                "[not-ip]:80",
                "127.0.0.1:port",
                "127.0.0.1:",
                "",
            ] {
                assert_eq!(
                    verdict("GET", &[("host", host)], cfg),
                    "403 admin_host_not_allowed",
                    "{host:?}"
                );
            }
            // even with a matching Origin: that is just what a rebinding page sends
            let rebinding = [
                ("host", "evil.example:8080"),
                ("origin", "http://evil.example:8080"),
            ];
            assert_eq!(
                verdict("GET", &rebinding, cfg),
                "403 admin_host_not_allowed"
            );
            assert_eq!(verdict("GET", &[], cfg), "403 admin_host_not_allowed");
            let two = [("host", "127.0.0.1"), ("host", "evil.example")];
            assert_eq!(verdict("GET", &two, cfg), "403 admin_host_not_allowed");
        }
        let listed = admin(Some("admin-key-0123456789"), &["Admin.Example.com"]);
        for host in [
            "admin.example.com",
            "ADMIN.example.com:8443",
            "admin.example.com.",
        ] {
            assert_eq!(verdict("GET", &[("host", host)], &listed), "ok", "{host}");
        }
        let list = [
            ("host", "admin.example.com"),
            ("origin", "https://admin.example.com"),
            ("sec-fetch-site", "same-origin"),
        ];
        assert_eq!(verdict("GET", &list, &listed), "ok");
        assert_eq!(
            verdict("GET", &[("host", "other.example.com")], &listed),
            "403 admin_host_not_allowed"
        );
    }

    #[test]
    fn forwarded_requests_need_a_key() {
        let open = admin(None, &[]);
        let keyed = admin(Some("admin-key-0123456789"), &[]);
        for h in [
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "X-Forwarded-For",
        ] {
            let list = [("host", "127.0.0.1:8080"), (h, "203.0.113.9")];
            assert_eq!(
                verdict("GET", &list, &open),
                "403 admin_behind_proxy",
                "{h}"
            );
            assert_eq!(verdict("GET", &list, &keyed), "ok", "{h}");
        }
        let open_err = check(
            &Method::GET,
            None,
            &headers(&[("host", "localhost"), ("x-real-ip", "1.2.3.4")]),
            &open,
        )
        .unwrap_err();
        assert!(
            open_err.message.contains("admin.key"),
            "{}",
            open_err.message
        );
    }

    #[test]
    fn writes_with_a_body_must_be_json() {
        let keyed = admin(Some("admin-key-0123456789"), &[]);
        let host = ("host", "localhost:8080");
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            for ct in [
                None,
                Some("text/plain"),
                Some("application/x-www-form-urlencoded"),
                Some("multipart/form-data; boundary=x"),
                Some("application/jsonx"),
            ] {
                let mut list = vec![host, ("content-length", "5")];
                if let Some(ct) = ct {
                    list.push(("content-type", ct));
                }
                assert_eq!(
                    verdict(method, &list, &keyed),
                    "415 admin_json_only",
                    "{method} {ct:?}"
                );
            }
            let chunked = [host, ("transfer-encoding", "chunked")];
            assert_eq!(verdict(method, &chunked, &keyed), "415 admin_json_only");
            let json = [
                host,
                ("transfer-encoding", "chunked"),
                ("content-type", "Application/JSON"),
            ];
            assert_eq!(verdict(method, &json, &keyed), "ok");
            // bodiless writes stay allowed
            assert_eq!(verdict(method, &[host], &keyed), "ok");
        }
        // reads are not writes
        let get = [
            host,
            ("content-length", "5"),
            ("content-type", "text/plain"),
        ];
        assert_eq!(verdict("GET", &get, &keyed), "ok");
    }
}

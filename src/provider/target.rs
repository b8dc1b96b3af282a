//! An upstream's address: scheme, host, port and `Host` header, from a base URL.

/// Where an upstream lives, taken apart from its base URL (`upstream.base_url`,
/// `providers.<name>.base_url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Value of the `Host` header (host, plus the port when it is not the default).
    pub authority: String,
}

impl UpstreamTarget {
    pub fn parse(url: &str) -> Result<UpstreamTarget, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("`{url}` must start with http:// or https://"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(format!(
                "`{url}` must be scheme://host[:port] only; paths go in upstream.user_path/guest_path"
            ));
        }
        let default_port = if tls { 443 } else { 80 };
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("`{url}` has an unclosed IPv6 bracket"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| format!("bad port in `{url}`"))?,
                None if after.is_empty() => default_port,
                None => return Err(format!("`{url}` is not a valid URL")),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().map_err(|_| format!("bad port in `{url}`"))?,
                ),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("`{url}` has no host"));
        }
        let authority = if port == default_port {
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            }
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(UpstreamTarget {
            tls,
            host,
            port,
            authority,
        })
    }
}

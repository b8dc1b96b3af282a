//! Values in operators' files, shared by the config and each provider's settings: `${ENV}`
//! expansion, human durations (`500ms`, `30s`, `5m`, `1h`) and byte sizes (`64KiB`, `10MiB`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Replace `${NAME}` with the environment variable `NAME`; `${NAME:-default}` falls back to
/// `default` when unset. `$${` escapes a literal `${`. An unset variable without default is
/// an error, so a missing secret never turns silently into an empty key.
pub fn expand_env(s: &str) -> Result<String, String> {
    if !s.contains("${") {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{s}`"))?;
        let expr = &after[..end];
        let (name, default) = match expr.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (expr, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{expr}}}` is not a valid variable reference"));
        }
        match (std::env::var(name), default) {
            (Ok(v), _) => out.push_str(&v),
            (Err(_), Some(d)) => out.push_str(d),
            (Err(_), None) => {
                return Err(format!(
                    "environment variable `{name}` is not set (use `${{{name}:-default}}` for a fallback)"
                ))
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn de_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    expand_env(&s).map_err(serde::de::Error::custom)
}

pub fn de_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => {
            let v = expand_env(&s).map_err(serde::de::Error::custom)?;
            Ok(if v.is_empty() { None } else { Some(v) })
        }
    }
}

pub fn de_string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Option::<Vec<String>>::deserialize(d)?.unwrap_or_default();
    v.iter()
        .map(|s| expand_env(s).map_err(serde::de::Error::custom))
        .collect()
}

pub fn de_string_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let v = Option::<BTreeMap<String, String>>::deserialize(d)?.unwrap_or_default();
    v.into_iter()
        .map(|(k, s)| Ok((k, expand_env(&s).map_err(serde::de::Error::custom)?)))
        .collect()
}

/// Parse `250ms`, `30s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (examples: 500ms, 30s, 5m, 1h)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ))
        }
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Num(f64),
        Text(String),
    }
    match Raw::deserialize(d)
        .map_err(|_| serde::de::Error::custom("expected a duration such as 500ms, 30s or 5m"))?
    {
        Raw::Num(n) => parse_duration(&n.to_string()),
        Raw::Text(s) => parse_duration(&expand_env(&s).map_err(serde::de::Error::custom)?),
    }
    .map_err(serde::de::Error::custom)
}

/// A size in bytes, written as a number or with a unit (`64KiB`, `10MiB`, `1GiB`, `500KB`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size (examples: 65536, 64KiB, 10MiB)"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1000,
            "KiB" | "K" | "k" => 1024,
            "MB" => 1000 * 1000,
            "MiB" | "M" => 1024 * 1024,
            "GB" => 1000 * 1000 * 1000,
            "GiB" | "G" => 1024 * 1024 * 1024,
            other => return Err(format!("unknown size unit `{other}` (use KiB, MiB, GiB)")),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| format!("`{s}` is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size such as 65536 or 10MiB"))?
        {
            Raw::Num(n) => Ok(ByteSize(n)),
            Raw::Text(s) => ByteSize::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

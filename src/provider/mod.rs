//! The upstreams: one folder per web chat (`k2think`, `zai`), each with its request
//! building, stream decoding (a [`crate::core::Decoder`]) and error classification, with no
//! I/O and no clock. Wire types stay private to their folder where the proxy does not need
//! them.

use serde_json::Value;

pub mod k2think;
pub mod zai;

/// Human message out of an upstream error value: a string, or an object's
/// `message` (looking into `error`/`detail`), or the first array item.
pub fn error_message(v: &Value) -> String {
    fn find(v: &Value, depth: u8) -> Option<String> {
        if depth > 4 {
            return None;
        }
        match v {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => ["message", "msg", "error", "detail"]
                .iter()
                .find_map(|k| o.get(*k).and_then(|x| find(x, depth + 1))),
            Value::Array(a) => a.first().and_then(|x| find(x, depth + 1)),
            _ => None,
        }
    }
    let msg = find(v, 0).unwrap_or_else(|| v.to_string());
    if msg.trim().is_empty() {
        "upstream error".to_string()
    } else {
        msg
    }
}

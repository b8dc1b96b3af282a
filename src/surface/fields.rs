//! Reading a request body field by field, for the surfaces whose requests are converted by
//! hand (Anthropic Messages, OpenAI Responses): every 400 names the exact field, as
//! `param` and at the start of the message (`messages[2].content[0].source: is required`).
//! The `check_*` readers also check the fields the chat surface takes but does not use
//! (`user`, `metadata`, …); [`expect_object`] is every surface's first check. The
//! converted messages and where each came from are [`crate::surface::convert`]'s.

use serde_json::{Map, Value};

use crate::core::error::ApiError;

/// A 400 unless `body` starts (after whitespace) like a JSON object: the first check of
/// every request surface.
pub fn expect_object(body: &[u8]) -> Result<(), ApiError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => Err(ApiError::invalid("the request body is empty", None)),
        Some(b'{') => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
    }
}

/// A JSON object.
pub type Obj = Map<String, Value>;

/// A 400 whose message starts with the field it names.
pub fn bad(param: &str, problem: impl std::fmt::Display) -> ApiError {
    ApiError::invalid(format!("{param}: {problem}"), Some(param.to_string()))
}

/// A 400 for a field of the wrong JSON type.
pub fn wrong_type(param: &str, expected: &str, got: &Value) -> ApiError {
    bad(param, format!("expected {expected}, got {}", kind_of(got)))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The body as a JSON object.
pub fn root(body: &[u8]) -> Result<Obj, ApiError> {
    expect_object(body)?;
    let root: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    match root {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
    }
}

/// `model`: a non-empty string, required.
pub fn model(root: &Obj) -> Result<String, ApiError> {
    match root.get("model") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(bad("model", "must not be empty")),
        None | Some(Value::Null) => Err(bad("model", "is required")),
        Some(v) => Err(wrong_type("model", "a string", v)),
    }
}

/// `root[key]` as a boolean; absent or null is `default`.
pub fn opt_bool(root: &Obj, key: &str, default: bool) -> Result<bool, ApiError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(wrong_type(key, "a boolean", v)),
    }
}

/// `root[key]` as a number in `lo..=hi`, optional.
pub fn number_in(root: &Obj, key: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
            Some(x) => Err(bad(key, format!("must be between {lo} and {hi}, got {x}"))),
            None => Err(wrong_type(key, "a number", v)),
        },
    }
}

/// `root[key]` as a positive integer, optional.
pub fn positive(root: &Obj, key: &str) -> Result<Option<u64>, ApiError> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(0) => Err(bad(key, "must be at least 1")),
            Some(n) => Ok(Some(n)),
            None => Err(wrong_type(key, "a positive integer", v)),
        },
    }
}

/// `obj[key]` as a string, required (`at` is the path of `obj`).
pub fn req_str<'a>(obj: &'a Obj, key: &str, at: &str) -> Result<&'a str, ApiError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(bad(&join(at, key), "is required")),
        Some(v) => Err(wrong_type(&join(at, key), "a string", v)),
    }
}

/// `obj[key]` as a string, optional.
pub fn opt_str<'a>(obj: &'a Obj, key: &str, at: &str) -> Result<Option<&'a str>, ApiError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(&join(at, key), "a string", v)),
    }
}

/// `v` (the field `param`) as a string; absent or null is `None`.
pub fn check_str<'a>(param: &str, v: Option<&'a Value>) -> Result<Option<&'a str>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(param, "a string", v)),
    }
}

/// `v` (the field `param`) as a boolean; absent or null is `None`.
pub fn check_bool(param: &str, v: Option<&Value>) -> Result<Option<bool>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(wrong_type(param, "a boolean", v)),
    }
}

/// `v` (the field `param`) as an object; absent or null is `None`.
pub fn check_object<'a>(param: &str, v: Option<&'a Value>) -> Result<Option<&'a Obj>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(v) => Err(wrong_type(param, "an object", v)),
    }
}

/// `v` (the field `param`) as an integer in `lo..=hi` (`i64::MAX`: no upper bound); absent
/// or null is `None`.
pub fn check_int_in(
    param: &str,
    v: Option<&Value>,
    lo: i64,
    hi: i64,
) -> Result<Option<i64>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if (lo..=hi).contains(&n) => Ok(Some(n)),
            Some(n) if hi == i64::MAX => Err(bad(param, format!("must be at least {lo}, got {n}"))),
            Some(n) => Err(bad(
                param,
                format!("must be between {lo} and {hi}, got {n}"),
            )),
            None => Err(wrong_type(param, "an integer", v)),
        },
    }
}

/// `v` (the field `param`) as one of `allowed`; absent or null is `None`.
pub fn check_one_of<'a>(
    param: &str,
    v: Option<&'a Value>,
    allowed: &[&str],
) -> Result<Option<&'a str>, ApiError> {
    match check_str(param, v)? {
        None => Ok(None),
        Some(s) if allowed.contains(&s) => Ok(Some(s)),
        Some(s) => Err(bad(
            param,
            format!("must be one of {}, got \"{s}\"", quoted(allowed)),
        )),
    }
}

/// `"a", "b" or "c"`.
fn quoted(names: &[&str]) -> String {
    let q: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    match q.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => q.concat(),
    }
}

/// `v` (the field `param`) as an array of strings; absent or null is `None`.
pub fn check_str_list<'a>(
    param: &str,
    v: Option<&'a Value>,
) -> Result<Option<Vec<&'a str>>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type(param, "an array of strings", v)),
    };
    list.iter()
        .enumerate()
        .map(|(i, s)| match s {
            Value::String(s) => Ok(s.as_str()),
            v => Err(wrong_type(&format!("{param}[{i}]"), "a string", v)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// `metadata` as OpenAI takes it: an object whose values are strings.
pub fn check_metadata(param: &str, v: Option<&Value>) -> Result<(), ApiError> {
    if let Some(map) = check_object(param, v)? {
        for (k, v) in map {
            check_str(&format!("{param}.{k}"), Some(v))?
                .ok_or_else(|| bad(&format!("{param}.{k}"), "expected a string, got null"))?;
        }
    }
    Ok(())
}

/// A structured-output format: `{"type": "text" | "json_object" | "json_schema", …}`. The
/// JSON schema's `name` and `schema` sit in a nested `json_schema` object (`nested`, chat's
/// `response_format`) or in the format object itself (Responses' `text.format`).
pub fn check_format(param: &str, v: Option<&Value>, nested: bool) -> Result<(), ApiError> {
    let Some(format) = check_object(param, v)? else {
        return Ok(());
    };
    let kind = req_str(format, "type", param)?;
    match kind {
        "text" | "json_object" => Ok(()),
        "json_schema" => {
            let (spec, at) = if nested {
                let at = join(param, "json_schema");
                match check_object(&at, format.get("json_schema"))? {
                    Some(o) => (o, at),
                    None => return Err(bad(&at, "is required")),
                }
            } else {
                (format, param.to_string())
            };
            req_str(spec, "name", &at)?;
            check_object(&join(&at, "schema"), spec.get("schema"))?;
            check_bool(&join(&at, "strict"), spec.get("strict"))?;
            Ok(())
        }
        other => Err(bad(
            &join(param, "type"),
            format!("must be \"text\", \"json_object\" or \"json_schema\", got \"{other}\""),
        )),
    }
}

/// `at.key`, or `key` at the root.
fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_string()
    } else {
        format!("{at}.{key}")
    }
}

/// `v` (the field `key`) as an array of objects, each with its path (`tools[2]`); absent or
/// null is `None`. `what` names an element in errors ("a tool object").
pub fn objects<'a>(
    v: Option<&'a Value>,
    key: &str,
    what: &str,
) -> Result<Option<Vec<(String, &'a Obj)>>, ApiError> {
    let list = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(a)) => a,
        Some(v) => return Err(wrong_type(key, "an array", v)),
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| wrong_type(&at, what, item))?;
        out.push((at, obj));
    }
    Ok(Some(out))
}

/// An OpenAI chat function tool, for the shared tool emulation.
pub fn function_tool(name: &str, description: Option<&str>, parameters: Option<Value>) -> Value {
    let mut function = Obj::new();
    function.insert("name".into(), Value::String(name.to_string()));
    if let Some(d) = description {
        function.insert("description".into(), Value::String(d.to_string()));
    }
    if let Some(p) = parameters {
        function.insert("parameters".into(), p);
    }
    serde_json::json!({"type": "function", "function": function})
}

/// A tool result's text parts, joined, and a note that its `images` images moved to the
/// next user message (tool results reach the model as text). `from` names the result
/// ("tool result").
pub fn result_text(texts: &[&str], images: usize, from: &str) -> String {
    let mut text = texts.join("\n");
    if images > 0 {
        if !text.is_empty() {
            text.push('\n');
        }
        let s = if images == 1 { "" } else { "s" };
        text.push_str(&format!(
            "[{images} image{s} from this {from} attached to the next user message]"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Obj {
        match v {
            Value::Object(o) => o,
            _ => unreachable!(),
        }
    }

    #[test]
    fn each_reader_names_the_field_it_refuses() {
        let o = obj(json!({"m": 3, "t": 2.5, "n": 0, "s": 1, "b": "x", "e": ""}));
        assert_eq!(
            req_str(&o, "m", "").unwrap_err().param.as_deref(),
            Some("m")
        );
        assert_eq!(
            req_str(&o, "zz", "tools[1]").unwrap_err().message,
            "tools[1].zz: is required"
        );
        assert_eq!(opt_str(&o, "nope", "x").unwrap(), None);
        assert_eq!(
            number_in(&o, "t", 0.0, 2.0).unwrap_err().message,
            "t: must be between 0 and 2, got 2.5"
        );
        assert_eq!(number_in(&o, "t", 0.0, 3.0).unwrap(), Some(2.5));
        assert_eq!(
            positive(&o, "n").unwrap_err().message,
            "n: must be at least 1"
        );
        assert_eq!(positive(&o, "s").unwrap(), Some(1));
        assert_eq!(
            opt_bool(&o, "b", false).unwrap_err().message,
            "b: expected a boolean, got a string"
        );
        assert!(opt_bool(&o, "absent", true).unwrap());
        assert_eq!(model(&o).unwrap_err().message, "model: is required");
        assert_eq!(
            model(&obj(json!({"model": " "}))).unwrap_err().message,
            "model: must not be empty"
        );
        assert_eq!(root(b"[1]").unwrap_err().status, 400);
        assert_eq!(root(b"{\"a\":").unwrap_err().status, 400);
        assert!(root(b" {\"a\":1}").is_ok());
    }
}

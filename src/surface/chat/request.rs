//! Downstream wire types: the OpenAI chat request we accept and the error body we return.
//!
//! Parsing is strict about the fields we use, and about the fields OpenAI defines that we
//! only check (`user`, `metadata`, `response_format`, …): a wrong type or value is a 400
//! that names the field, as `param`. Fields OpenAI does not define are ignored.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::core::error::ApiError;
use crate::core::request::Effort;
use crate::surface::fields;

/// `POST /v1/chat/completions` body (the fields we act on, and those we only check).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    #[serde(default)]
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stop: Option<Stop>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n: Option<u32>,
    /// Kept for the tool emulation; validated there.
    #[serde(default)]
    pub tools: Option<Vec<Value>>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    /// `reasoning_effort` (`none`/`minimal`/`low`, `medium`, `high`/`xhigh`), mapped onto the
    /// upstream's three levels.
    #[serde(default, deserialize_with = "client_effort")]
    pub reasoning_effort: Option<Effort>,
    // OpenAI's fields that are only checked ([`ChatRequest::validate`]): the upstream takes
    // none of them, but a client that sends a wrong one gets the 400 OpenAI would give,
    // not an answer that ignored it. Absent and `null` are `None`.
    #[serde(default)]
    pub user: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<Value>,
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub top_logprobs: Option<Value>,
    #[serde(default)]
    pub logit_bias: Option<Value>,
    #[serde(default)]
    pub store: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<Value>,
    #[serde(default)]
    pub prompt_cache_key: Option<Value>,
    #[serde(default)]
    pub safety_identifier: Option<Value>,
    #[serde(default)]
    pub modalities: Option<Value>,
}

fn client_effort<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Effort>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => Effort::from_client(&s).map(Some).ok_or_else(|| {
            de::Error::custom(format!(
                "unknown reasoning effort `{s}`; use none, minimal, low, medium, high or xhigh"
            ))
        }),
    }
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Message {
    pub role: Role,
    #[serde(default)]
    pub content: Content,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// An assistant message's own reasoning (`reasoning_content`, or `reasoning`), sent
    /// back upstream as the message's thinking field.
    #[serde(default, alias = "reasoning")]
    pub reasoning_content: Option<String>,
    /// The deprecated `function_call` of an assistant message: read only because such a
    /// message, like one with `tool_calls`, needs no content.
    #[serde(default)]
    pub function_call: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ToolCall {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

fn function_type() -> String {
    "function".to_string()
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// A JSON document as a string (OpenAI's wire form); objects are accepted too.
    #[serde(default, deserialize_with = "arguments_string")]
    pub arguments: String,
}

fn arguments_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => Ok(s),
        Value::Null => Ok(String::new()),
        v @ Value::Object(_) => Ok(v.to_string()),
        _ => Err(de::Error::custom(
            "expected a JSON string (or object) of arguments",
        )),
    }
}

/// Message content: absent/null, a string, or an array of parts.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Content {
    #[default]
    None,
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image {
        url: String,
        detail: Option<String>,
    },
    /// A `file` part: inline data (`file_data`, a `data:` URL or bare base64) or a
    /// `file_id` reference (not supported: there is no upload store).
    File {
        filename: Option<String>,
        file_data: Option<String>,
        file_id: Option<String>,
    },
    /// A part type we do not carry (e.g. `input_audio`): rejected in validation.
    Unsupported(String),
}

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, an array of content parts, or null")
            }
            fn visit_unit<E>(self) -> Result<Content, E> {
                Ok(Content::None)
            }
            fn visit_none<E>(self) -> Result<Content, E> {
                Ok(Content::None)
            }
            fn visit_str<E>(self, s: &str) -> Result<Content, E> {
                Ok(Content::Text(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Content, E> {
                Ok(Content::Text(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<Part>()? {
                    parts.push(p);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Part {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Part;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a content part object with a `type`")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Part, A::Error> {
                let mut kind: Option<String> = None;
                let mut text: Option<String> = None;
                let mut image: Option<Value> = None;
                let mut file: Option<Value> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "type" => kind = Some(map.next_value()?),
                        "text" => text = Some(map.next_value()?),
                        "image_url" => image = Some(map.next_value()?),
                        "file" => file = Some(map.next_value()?),
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
                match kind.as_str() {
                    "text" => Ok(Part::Text(
                        text.ok_or_else(|| de::Error::missing_field("text"))?,
                    )),
                    "image_url" => {
                        let (url, detail) = match image {
                            Some(Value::String(u)) => (u, None),
                            Some(Value::Object(o)) => {
                                let url = match o.get("url") {
                                    Some(Value::String(u)) => u.clone(),
                                    _ => {
                                        return Err(de::Error::custom(
                                            "image_url.url must be a string",
                                        ))
                                    }
                                };
                                let detail =
                                    o.get("detail").and_then(Value::as_str).map(str::to_string);
                                (url, detail)
                            }
                            _ => return Err(de::Error::missing_field("image_url")),
                        };
                        Ok(Part::Image { url, detail })
                    }
                    "file" => {
                        let f = file.ok_or_else(|| de::Error::missing_field("file"))?;
                        let field = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
                        Ok(Part::File {
                            filename: field("filename"),
                            file_data: field("file_data"),
                            file_id: field("file_id"),
                        })
                    }
                    _ => Ok(Part::Unsupported(kind)),
                }
            }
        }
        d.deserialize_map(V)
    }
}

impl Content {
    /// The text of the content, parts joined with a newline; images are left out.
    pub fn text(&self) -> String {
        match self {
            Content::None => String::new(),
            Content::Text(s) => s.clone(),
            Content::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    if let Part::Text(t) = p {
                        if !out.is_empty() {
                            out.push('\n');
                        }
                        out.push_str(t);
                    }
                }
                out
            }
        }
    }
}

impl ChatRequest {
    /// Parse and validate a request body; the error says which field is wrong.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        fields::expect_object(body)?;
        let mut de = serde_json::Deserializer::from_slice(body);
        let req: ChatRequest = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return ApiError::invalid(
                    format!("the request body is not valid JSON: {inner}"),
                    None,
                );
            }
            let msg = strip_position(&inner.to_string());
            // `missing field` errors point at the parent; name the field itself.
            let param = match msg.strip_prefix("missing field `") {
                Some(rest) => {
                    let field = rest.split('`').next().unwrap_or_default();
                    if path == "." || path.is_empty() {
                        field.to_string()
                    } else {
                        format!("{path}.{field}")
                    }
                }
                None => path.clone(),
            };
            ApiError::invalid(format!("{param}: {msg}"), Some(param))
        })?;
        if de.end().is_err() {
            return Err(ApiError::invalid(
                "the request body has trailing characters after the JSON object",
                None,
            ));
        }
        req.validate()?;
        Ok(req)
    }

    fn validate(&self) -> Result<(), ApiError> {
        let bad = |param: &str, msg: String| Err(ApiError::invalid(msg, Some(param.to_string())));
        if self.model.trim().is_empty() {
            return bad("model", "model must not be empty".to_string());
        }
        if self.messages.is_empty() {
            return bad(
                "messages",
                "messages must contain at least one message".to_string(),
            );
        }
        for (i, m) in self.messages.iter().enumerate() {
            if let Content::Parts(parts) = &m.content {
                for (j, p) in parts.iter().enumerate() {
                    if let Part::Unsupported(kind) = p {
                        return Err(ApiError {
                            code: Some("unsupported_content_type"),
                            ..ApiError::invalid(
                                format!("content part type `{kind}` is not supported; use `text`, `image_url` or a text-like `file`"),
                                Some(format!("messages[{i}].content[{j}].type")),
                            )
                        });
                    }
                }
            }
            if m.role == Role::Tool && m.tool_call_id.is_none() && m.name.is_none() {
                return bad(
                    &format!("messages[{i}].tool_call_id"),
                    "a tool message needs `tool_call_id`".to_string(),
                );
            }
            // As OpenAI: content is required, except on an assistant message that calls
            // tools (or a function) and on a deprecated `function` message.
            let calls = !m.tool_calls.is_empty() || m.function_call.is_some();
            let optional = match m.role {
                Role::Assistant => calls,
                Role::Function => true,
                _ => false,
            };
            if m.content == Content::None && !optional {
                let role = format!("{:?}", m.role).to_lowercase();
                let param = format!("messages[{i}].content");
                let why = if m.role == Role::Assistant {
                    "is required for an assistant message without `tool_calls`".to_string()
                } else {
                    format!("is required for a {role} message")
                };
                return Err(fields::bad(&param, why));
            }
        }
        self.check_openai_fields()?;
        let range = |param: &str, v: Option<f64>, lo: f64, hi: f64| match v {
            Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
                format!("{param} must be between {lo} and {hi}, got {x}"),
                Some(param.to_string()),
            )),
            _ => Ok(()),
        };
        range("temperature", self.temperature, 0.0, 2.0)?;
        range("top_p", self.top_p, 0.0, 1.0)?;
        range("presence_penalty", self.presence_penalty, -2.0, 2.0)?;
        range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)?;
        if self.max_tokens == Some(0) || self.max_completion_tokens == Some(0) {
            return bad("max_tokens", "max_tokens must be at least 1".to_string());
        }
        if self.n.unwrap_or(1) != 1 {
            return bad("n", "only n = 1 is supported".to_string());
        }
        Ok(())
    }

    /// The fields OpenAI defines that only need their shape checked, and `tool_choice`
    /// (checked again against the tools by the tool emulation).
    fn check_openai_fields(&self) -> Result<(), ApiError> {
        fields::check_str("user", self.user.as_ref())?;
        fields::check_metadata("metadata", self.metadata.as_ref())?;
        fields::check_format("response_format", self.response_format.as_ref(), true)?;
        fields::check_bool("parallel_tool_calls", self.parallel_tool_calls.as_ref())?;
        fields::check_bool("logprobs", self.logprobs.as_ref())?;
        fields::check_int_in("top_logprobs", self.top_logprobs.as_ref(), 0, 20)?;
        if let Some(bias) = fields::check_object("logit_bias", self.logit_bias.as_ref())? {
            for (token, v) in bias {
                if !v.is_number() {
                    return Err(fields::wrong_type(
                        &format!("logit_bias.{token}"),
                        "a number",
                        v,
                    ));
                }
            }
        }
        fields::check_bool("store", self.store.as_ref())?;
        fields::check_str("service_tier", self.service_tier.as_ref())?;
        fields::check_str("prompt_cache_key", self.prompt_cache_key.as_ref())?;
        fields::check_str("safety_identifier", self.safety_identifier.as_ref())?;
        fields::check_str_list("modalities", self.modalities.as_ref())?;
        let choice = crate::pipeline::tools::parse_tool_choice(self.tool_choice.as_ref())
            .map_err(|(param, message)| fields::bad(&param, message))?;
        if let crate::pipeline::tools::ToolChoice::Function(name) = choice {
            if self.tools.as_ref().is_none_or(|t| t.is_empty()) {
                return Err(fields::bad(
                    "tool_choice.function.name",
                    format!("no tool named '{name}' in tools (the request has no tools)"),
                ));
            }
        }
        Ok(())
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage)
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(body: &str) -> ApiError {
        ChatRequest::parse(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_a_full_request() {
        let r = ChatRequest::parse(
            br#"{"model":"m","stream":true,"stream_options":{"include_usage":true},
            "temperature":0.5,"max_tokens":100,"stop":["x"],"user":"ignored","logprobs":false,
            "messages":[{"role":"system","content":"s"},
              {"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAA","detail":"low"}},{"type":"text","text":"b"}]},
              {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"x\":1}"}}]},
              {"role":"tool","tool_call_id":"call_1","content":"42"}]}"#,
        )
        .unwrap();
        assert!(r.stream && r.include_usage());
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[1].content.text(), "a\nb");
        assert_eq!(r.messages[2].tool_calls[0].function.arguments, "{\"x\":1}");
        assert_eq!(r.stop, Some(Stop::Many(vec!["x".into()])));
    }

    #[test]
    fn errors_name_the_field() {
        let e = err(r#"{"messages":[{"role":"user","content":"x"}]}"#);
        assert_eq!((e.status, e.param.as_deref()), (400, Some("model")));
        let e = err(r#"{"model":"m"}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(r#"{"model":"m","messages":[]}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(r#"{"model":"m","messages":"hi"}"#);
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = err(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        let e =
            err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#);
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#);
        assert_eq!(e.param.as_deref(), Some("stream"));
        let e =
            err(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].content[0].type"));
        assert!(e.message.contains("input_audio"));
        let e = err(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#);
        assert_eq!(e.param.as_deref(), Some("n"));
        let e = err(r#"{"model":"m","messages":[{"role":"tool","content":"x"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].tool_call_id"));
    }

    #[test]
    fn lax_fields_and_empty_messages_are_refused_naming_the_field() {
        // Issue 16: each of these used to get a 200.
        let user = json!([{"role": "user", "content": "x"}]);
        let with = |extra: Value| {
            let mut body = json!({"model": "m", "messages": user});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            body
        };
        let messages = |m: Value| json!({"model": "m", "messages": m});
        let cases: Vec<(Value, &str)> = vec![
            (with(json!({"tool_choice": 7})), "tool_choice"),
            (with(json!({"tool_choice": "sometimes"})), "tool_choice"),
            (
                with(json!({"tool_choice": {"type": "function"}})),
                "tool_choice.function.name",
            ),
            (
                with(json!({"tool_choice": {"type": "allowed_tools", "allowed_tools": {}}})),
                "tool_choice.type",
            ),
            (
                with(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
                "tool_choice.function.name",
            ),
            (with(json!({"response_format": 3})), "response_format"),
            (with(json!({"response_format": {}})), "response_format.type"),
            (
                with(json!({"response_format": {"type": "xml"}})),
                "response_format.type",
            ),
            (
                with(json!({"response_format": {"type": "json_schema"}})),
                "response_format.json_schema",
            ),
            (
                with(
                    json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
                ),
                "response_format.json_schema.name",
            ),
            (
                with(
                    json!({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": 1}}}),
                ),
                "response_format.json_schema.schema",
            ),
            (with(json!({"user": {}})), "user"),
            (with(json!({"user": 5})), "user"),
            (with(json!({"metadata": 5})), "metadata"),
            (with(json!({"metadata": {"run": 1}})), "metadata.run"),
            (
                with(json!({"parallel_tool_calls": "yes"})),
                "parallel_tool_calls",
            ),
            (with(json!({"logprobs": 1})), "logprobs"),
            (with(json!({"top_logprobs": 50})), "top_logprobs"),
            (with(json!({"top_logprobs": "2"})), "top_logprobs"),
            (with(json!({"logit_bias": []})), "logit_bias"),
            (
                with(json!({"logit_bias": {"50256": "ban"}})),
                "logit_bias.50256",
            ),
            (with(json!({"store": "no"})), "store"),
            (with(json!({"service_tier": 1})), "service_tier"),
            (with(json!({"prompt_cache_key": 1})), "prompt_cache_key"),
            (with(json!({"safety_identifier": []})), "safety_identifier"),
            (with(json!({"modalities": "text"})), "modalities"),
            (with(json!({"modalities": [1]})), "modalities[0]"),
            (messages(json!([{"role": "user"}])), "messages[0].content"),
            (
                messages(json!([{"role": "user", "content": null}])),
                "messages[0].content",
            ),
            (
                messages(json!([{"role": "system"}, {"role": "user", "content": "x"}])),
                "messages[0].content",
            ),
            (
                messages(json!([{"role": "developer", "content": null}])),
                "messages[0].content",
            ),
            (
                messages(json!([{"role": "user", "content": "x"}, {"role": "assistant"}])),
                "messages[1].content",
            ),
            (
                messages(
                    json!([{"role": "user", "content": "x"}, {"role": "assistant", "content": null, "tool_calls": []}]),
                ),
                "messages[1].content",
            ),
            (
                messages(json!([{"role": "tool", "tool_call_id": "c"}])),
                "messages[0].content",
            ),
        ];
        for (body, param) in cases {
            let e = err(&body.to_string());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.kind, "invalid_request_error", "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{body}: {}", e.message);
            let v: Value = serde_json::from_slice(&e.body()).unwrap();
            assert_eq!(v["error"]["param"], param);
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn what_openai_clients_send_is_accepted() {
        // The OpenAI SDK's shapes of every checked field, and the message forms that carry
        // no content: an assistant turn with tool calls (null or absent content) or a
        // deprecated function call, a deprecated function result.
        let r = ChatRequest::parse(
            json!({
                "model": "m", "user": "u-1", "metadata": {"run": "7"},
                "response_format": {"type": "json_schema", "json_schema": {
                    "name": "answer", "strict": true, "schema": {"type": "object"}}},
                "tool_choice": "auto", "parallel_tool_calls": false, "logprobs": false,
                "top_logprobs": 0, "logit_bias": {"50256": -100}, "store": false,
                "service_tier": "auto", "prompt_cache_key": "k", "safety_identifier": "s",
                "modalities": ["text"], "seed": 1,
                "messages": [
                    {"role": "developer", "content": "be brief"},
                    {"role": "user", "content": "weather?"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c1", "content": "sun"},
                    {"role": "assistant", "tool_calls": [
                        {"id": "c2", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
                    {"role": "tool", "tool_call_id": "c2", "content": ""},
                    {"role": "assistant", "content": null, "function_call": {"name": "w", "arguments": "{}"}},
                    {"role": "function", "name": "w", "content": null},
                    {"role": "assistant", "content": ""},
                    {"role": "user", "content": [{"type": "text", "text": "and now?"}]}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .expect("an OpenAI SDK body");
        assert_eq!(r.messages.len(), 10);
        for extra in [
            json!({"tool_choice": "none"}),
            json!({"tool_choice": "required"}),
            json!({"tool_choice": null, "user": null, "metadata": null}),
            json!({"response_format": {"type": "text"}}),
            json!({"response_format": {"type": "json_object"}}),
        ] {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            assert!(
                ChatRequest::parse(body.to_string().as_bytes()).is_ok(),
                "{body}"
            );
        }
        let forced = json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "w"}}],
            "tool_choice": {"type": "function", "function": {"name": "w"}}});
        assert!(ChatRequest::parse(forced.to_string().as_bytes()).is_ok());
    }

    #[test]
    fn syntax_errors_and_non_objects() {
        for body in [
            "",
            "   ",
            "[1]",
            "\"x\"",
            "{\"model\":",
            "{bad json}",
            "{} {}",
        ] {
            let e = err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.kind, "invalid_request_error");
        }
    }

    #[test]
    fn error_body_shape() {
        let e = ApiError::invalid("bad", Some("model".into()));
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["message"], "bad");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "invalid_request");
    }
}

//! The Anthropic Messages surface (`POST /v1/messages`, `/v1/messages/count_tokens`): its
//! wire types, the conversion of a Messages request into the shared [`ChatRequest`], the
//! stream event encoder and the non-stream message. Pure: no HTTP.
//!
//! * [`parse_request`] reads the body as a [`serde_json::Value`] and converts it by hand so
//!   that every 400 names the exact field (`messages[2].content[0].source`). Tools become
//!   OpenAI function tools for the shared tool emulation; `tool_use` / `tool_result` history
//!   becomes assistant `tool_calls` and `tool` messages.
//! * [`MessagesEncoder`] writes the Anthropic event sequence (`message_start`, `ping`,
//!   `content_block_start/delta/stop` for `thinking`, `text` and `tool_use` blocks,
//!   `message_delta`, `message_stop`; `error` on a failure), one `event:` line per event.
//! * [`message_json`] is the non-stream `message` object.
//!
//! Token counts: K2Think's tokenizer is not available. `input_tokens` is always the
//! [`estimate_tokens`](crate::pipeline::tokens::estimate_tokens) estimate of the prompt
//! that went upstream (one number for one prompt: `message_start`, `message_delta`, the
//! non-stream message and `count_tokens` agree); `output_tokens` is the upstream's count
//! when it reports one, else an estimate.
//!
//! Ids: answers are `msg_` + 24 letters and digits, tool calls `toolu_` + 24, shaped as
//! Anthropic's. Thinking blocks appear only when the caller's [`ReasoningMode`] shows
//! reasoning (with `anthropic.thinking_blocks: auto`, when the request turned thinking on).

use serde_json::{json, Map, Value};

use crate::core::error::ApiError;
use crate::core::events::ToolCall;
use crate::core::json::{write_json_str, write_u64};
use crate::core::request::Effort;
use crate::core::Encoder;
use crate::core::ReasoningMode;
use crate::pipeline::complete::CompletionResult;
use crate::pipeline::stream::Usage;
use crate::pipeline::tokens::Estimate;
use crate::surface::chat::request::{
    ChatRequest, Content, FunctionCall, Message, Part, Role, Stop,
};
use crate::surface::convert::{message, Converted, Origin};
use crate::surface::fields::{self, bad, number_in, opt_bool, opt_str, req_str, wrong_type, Obj};

// ---------------------------------------------------------------------------------------
// Request conversion
// ---------------------------------------------------------------------------------------

/// A Messages request: the shared chat request, and where its messages came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub chat: ChatRequest,
    /// For checks after the conversion: their errors name `messages[…]` of the client.
    pub origin: Origin,
    /// The client turned thinking on (`thinking.type` `enabled` or `adaptive`): with
    /// `anthropic.thinking_blocks: auto` only then does the answer have thinking blocks.
    pub thinking: bool,
}

/// A Messages request body → the shared chat request (`count_tokens`: `max_tokens` is not
/// required there). Errors are 400s whose `param`, and the start of whose message, names
/// the field (Anthropic's error body has only the message).
pub fn parse_request(body: &[u8], count_tokens: bool) -> Result<Request, ApiError> {
    convert_request(body, count_tokens).map_err(anthropic_wording)
}

/// Anthropic's wording of a missing field.
const FIELD_REQUIRED: &str = "Field required";

/// The shared field checks say `<field>: is required`; Anthropic says `Field required`.
fn anthropic_wording(mut e: ApiError) -> ApiError {
    if let Some(field) = e.message.strip_suffix(": is required") {
        e.message = format!("{field}: {FIELD_REQUIRED}");
    }
    e
}

fn convert_request(body: &[u8], count_tokens: bool) -> Result<Request, ApiError> {
    let root = fields::root(body)?;
    let model = fields::model(&root)?;
    check_fields(&root)?;

    let max_tokens = match fields::positive(&root, "max_tokens")? {
        None if !count_tokens => return Err(bad("max_tokens", FIELD_REQUIRED)),
        n => n,
    };

    let stream = opt_bool(&root, "stream", false)?;
    let temperature = number_in(&root, "temperature", 0.0, 1.0)?;
    let top_p = number_in(&root, "top_p", 0.0, 1.0)?;

    let stop = match root.get("stop_sequences") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut seqs = Vec::with_capacity(a.len());
            for (i, s) in a.iter().enumerate() {
                match s {
                    Value::String(s) => seqs.push(s.clone()),
                    v => return Err(wrong_type(&format!("stop_sequences[{i}]"), "a string", v)),
                }
            }
            (!seqs.is_empty()).then_some(Stop::Many(seqs))
        }
        Some(v) => return Err(wrong_type("stop_sequences", "an array of strings", v)),
    };

    let mut messages = Converted::of("messages");
    if let Some(system) = system_text(root.get("system"), "system")? {
        messages.push(
            message(Role::System, Content::Text(system)),
            "system",
            Vec::new(),
        );
    }
    let list = match root.get("messages") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err(bad("messages", "at least one message is required")),
        None | Some(Value::Null) => return Err(bad("messages", FIELD_REQUIRED)),
        Some(v) => return Err(wrong_type("messages", "an array", v)),
    };
    for (i, m) in list.iter().enumerate() {
        convert_message(i, m, &mut messages)?;
    }
    if list
        .iter()
        .all(|m| m.get("role").and_then(Value::as_str) == Some("system"))
    {
        return Err(bad(
            "messages",
            "at least one \"user\" or \"assistant\" message is required",
        ));
    }

    let tools = convert_tools(root.get("tools"))?;
    let tool_choice = convert_tool_choice(root.get("tool_choice"))?;
    let reasoning_effort = effort(&root)?;
    let thinking = matches!(
        root.get("thinking")
            .and_then(|t| t.get("type"))
            .and_then(Value::as_str),
        Some("enabled" | "adaptive")
    );

    let chat = ChatRequest {
        model,
        messages: messages.messages,
        stream,
        temperature,
        top_p,
        max_tokens,
        stop,
        tools,
        tool_choice,
        reasoning_effort,
        ..ChatRequest::default()
    };
    Ok(Request {
        chat,
        origin: messages.origin,
        thinking,
    })
}

/// The fields Anthropic defines that are only checked here (the upstream takes none of
/// them): `metadata`, `top_k`, `service_tier`, `context_management`; `thinking` and
/// `output_config` whatever [`effort`] reads of them.
fn check_fields(root: &Obj) -> Result<(), ApiError> {
    if let Some(metadata) = fields::check_object("metadata", root.get("metadata"))? {
        opt_str(metadata, "user_id", "metadata")?;
    }
    fields::check_int_in("top_k", root.get("top_k"), 0, i64::MAX)?;
    fields::check_str("service_tier", root.get("service_tier"))?;
    fields::check_object("context_management", root.get("context_management"))?;
    if let Some(thinking) = fields::check_object("thinking", root.get("thinking"))? {
        match req_str(thinking, "type", "thinking")? {
            "enabled" | "disabled" | "adaptive" => {}
            other => {
                return Err(bad(
                    "thinking.type",
                    format!("must be \"enabled\", \"disabled\" or \"adaptive\", got \"{other}\""),
                ))
            }
        }
        budget_tokens(thinking)?;
    }
    if let Some(config) = fields::check_object("output_config", root.get("output_config"))? {
        output_effort(config)?;
    }
    Ok(())
}

/// `thinking.budget_tokens`, where given: a non-negative integer.
fn budget_tokens(thinking: &Obj) -> Result<Option<u64>, ApiError> {
    match thinking.get("budget_tokens") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| wrong_type("thinking.budget_tokens", "a non-negative integer", v)),
    }
}

/// `output_config.effort`, where given: `low`, `medium`, `high` or `max` (OpenAI's names
/// are taken too).
fn output_effort(config: &Obj) -> Result<Option<Effort>, ApiError> {
    let Some(name) = opt_str(config, "effort", "output_config")? else {
        return Ok(None);
    };
    Effort::from_client(name).map(Some).ok_or_else(|| {
        bad(
            "output_config.effort",
            format!("unknown effort `{name}`; use low, medium, high or max"),
        )
    })
}

/// The reasoning effort a Messages request asks for: `output_config.effort` (`low`,
/// `medium`, `high`, `max`), else the `thinking` settings: a `budget_tokens` of an
/// `enabled` thinking, `disabled` as low, `adaptive` as no preference.
/// Both are checked by [`check_fields`] first.
fn effort(root: &Obj) -> Result<Option<Effort>, ApiError> {
    if let Some(Value::Object(config)) = root.get("output_config") {
        if let Some(e) = output_effort(config)? {
            return Ok(Some(e));
        }
    }
    let Some(Value::Object(thinking)) = root.get("thinking") else {
        return Ok(None);
    };
    Ok(match opt_str(thinking, "type", "thinking")? {
        Some("disabled") => Some(Effort::Low),
        Some("enabled") => budget_tokens(thinking)?.map(Effort::from_budget),
        // `adaptive`: the model decides, the config's default applies.
        _ => None,
    })
}

fn as_block<'a>(v: &'a Value, at: &str) -> Result<(&'a Obj, &'a str), ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| wrong_type(at, "a content block object", v))?;
    let kind = req_str(obj, "type", at)?;
    Ok((obj, kind))
}

/// `system` (or the content of a `system` message, at `at`): a string or an array of
/// `text` blocks, joined by `\n`. `None` when empty.
fn system_text(v: Option<&Value>, at: &str) -> Result<Option<String>, ApiError> {
    let text = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::with_capacity(blocks.len());
            for (i, b) in blocks.iter().enumerate() {
                let at = format!("{at}[{i}]");
                let (obj, kind) = as_block(b, &at)?;
                if kind != "text" {
                    return Err(bad(
                        &format!("{at}.type"),
                        format!("system blocks must be `text`, got `{kind}`"),
                    ));
                }
                texts.push(req_str(obj, "text", &at)?);
            }
            texts.join("\n")
        }
        Some(v) => return Err(wrong_type(at, "a string or an array of text blocks", v)),
    };
    Ok((!text.is_empty()).then_some(text))
}

/// One Anthropic message → one or more shared messages (a user message with
/// `tool_result` blocks becomes `tool` messages first, then the rest of the user turn).
///
/// A `system` message (Claude Code sends them mid-conversation, beta
/// `mid-conversation-system-2026-04-07`, for any model it does not know) stays where it is:
/// a system message at that position upstream, as the chat surface's own system messages
/// do. An empty one is left out.
fn convert_message(i: usize, m: &Value, out: &mut Converted) -> Result<(), ApiError> {
    let at = format!("messages[{i}]");
    let obj = m
        .as_object()
        .ok_or_else(|| wrong_type(&at, "a message object", m))?;
    let role = match req_str(obj, "role", &at)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" => {
            let cat = format!("{at}.content");
            if obj.get("content").is_none_or(Value::is_null) {
                return Err(bad(&cat, FIELD_REQUIRED));
            }
            if let Some(text) = system_text(obj.get("content"), &cat)? {
                out.push(message(Role::System, Content::Text(text)), at, Vec::new());
            }
            return Ok(());
        }
        // Anthropic's wording (with `system` now among the roles it takes).
        other => {
            let mut why = format!(
                "Unexpected role \"{other}\". Allowed roles are \"user\", \"assistant\" or \"system\""
            );
            if other == "tool" {
                why.push_str(
                    ". Tool results go in a \"user\" message as `tool_result` content blocks",
                );
            }
            return Err(bad(&format!("{at}.role"), why));
        }
    };
    let blocks = match obj.get("content") {
        Some(Value::String(s)) => {
            out.push(message(role, Content::Text(s.clone())), at, Vec::new());
            return Ok(());
        }
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(bad(&format!("{at}.content"), "is required")),
        Some(v) => {
            return Err(wrong_type(
                &format!("{at}.content"),
                "a string or an array of content blocks",
                v,
            ))
        }
    };
    match role {
        Role::Assistant => {
            let m = assistant_message(&at, blocks)?;
            out.push(m, at, Vec::new());
        }
        _ => user_messages(&at, blocks, out)?,
    }
    Ok(())
}

fn assistant_message(at: &str, blocks: &[Value]) -> Result<Message, ApiError> {
    let mut texts: Vec<&str> = Vec::new();
    let mut thoughts: Vec<&str> = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        let (obj, kind) = as_block(b, &bat)?;
        match kind {
            "text" => texts.push(req_str(obj, "text", &bat)?),
            "tool_use" => {
                let id = req_str(obj, "id", &bat)?;
                let name = req_str(obj, "name", &bat)?;
                let arguments = match obj.get("input") {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(v @ Value::Object(_)) => v.to_string(),
                    Some(v) => return Err(wrong_type(&format!("{bat}.input"), "an object", v)),
                };
                calls.push(crate::surface::chat::request::ToolCall {
                    id: id.to_string(),
                    kind: "function".to_string(),
                    function: FunctionCall {
                        name: name.to_string(),
                        arguments,
                    },
                });
            }
            // Earlier thinking goes back upstream as the message's thinking field; redacted
            // thinking is Anthropic's own ciphertext, meaningless to any other model.
            "thinking" => {
                if let Some(t) = opt_str(obj, "thinking", &bat)? {
                    thoughts.push(t);
                }
            }
            "redacted_thinking" => {}
            "image" | "document" | "tool_result" => {
                return Err(bad(
                    &format!("{bat}.type"),
                    format!("`{kind}` blocks are only allowed in user messages"),
                ))
            }
            other => return Err(unsupported_block(&bat, other, "text, tool_use, thinking")),
        }
    }
    let content = if !texts.is_empty() {
        Content::Text(texts.join("\n"))
    } else if calls.is_empty() {
        Content::Text(String::new())
    } else {
        Content::None
    };
    Ok(Message {
        tool_calls: calls,
        reasoning_content: (!thoughts.is_empty()).then(|| thoughts.join("\n")),
        ..message(Role::Assistant, content)
    })
}

fn unsupported_block(at: &str, kind: &str, supported: &str) -> ApiError {
    bad(
        &format!("{at}.type"),
        format!("content block type `{kind}` is not supported here (supported: {supported})"),
    )
}

/// A content part and the client's path of the block it came from.
type Sourced = (Part, String);

fn user_messages(at: &str, blocks: &[Value], out: &mut Converted) -> Result<(), ApiError> {
    let mut parts: Vec<Sourced> = Vec::new();
    // Images from tool results: the shared request carries tool results as text only, so
    // they go into the user message that follows the results (before the user's own parts).
    let mut carried: Vec<Sourced> = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let bat = format!("{at}.content[{j}]");
        let (obj, kind) = as_block(b, &bat)?;
        match kind {
            "text" => parts.push((Part::Text(req_str(obj, "text", &bat)?.to_string()), bat)),
            "image" => parts.push((image_part(obj, &bat)?, bat)),
            "document" => parts.push((document_part(obj, &bat)?, bat)),
            "tool_result" => {
                let m = tool_result(obj, &bat, &mut carried)?;
                out.push(m, bat, Vec::new());
            }
            "tool_use" => {
                return Err(bad(
                    &format!("{bat}.type"),
                    "`tool_use` blocks are only allowed in assistant messages",
                ))
            }
            other => {
                return Err(unsupported_block(
                    &bat,
                    other,
                    "text, image, document, tool_result",
                ))
            }
        }
    }
    if !carried.is_empty() {
        carried.append(&mut parts);
        parts = carried;
    } else if parts.is_empty() {
        if !blocks.is_empty() {
            // Only tool results: they are the whole turn.
            return Ok(());
        }
        parts.push((Part::Text(String::new()), format!("{at}.content")));
    }
    let (parts, paths): (Vec<Part>, Vec<String>) = parts.into_iter().unzip();
    let content = if parts.iter().all(|p| matches!(p, Part::Text(_))) {
        Content::Text(Content::Parts(parts).text())
    } else {
        Content::Parts(parts)
    };
    out.push(message(Role::User, content), at, paths);
    Ok(())
}

fn source_of<'a>(obj: &'a Obj, at: &str) -> Result<(&'a Obj, &'a str, String), ApiError> {
    let sat = format!("{at}.source");
    let source = match obj.get("source") {
        Some(Value::Object(s)) => s,
        None | Some(Value::Null) => return Err(bad(&sat, "is required")),
        Some(v) => return Err(wrong_type(&sat, "an object", v)),
    };
    let kind = req_str(source, "type", &sat)?;
    Ok((source, kind, sat))
}

fn data_url(source: &Obj, sat: &str) -> Result<String, ApiError> {
    let media = req_str(source, "media_type", sat)?;
    let data = req_str(source, "data", sat)?;
    Ok(format!("data:{media};base64,{data}"))
}

fn image_part(obj: &Obj, at: &str) -> Result<Part, ApiError> {
    let (source, kind, sat) = source_of(obj, at)?;
    let url = match kind {
        "base64" => data_url(source, &sat)?,
        "url" => req_str(source, "url", &sat)?.to_string(),
        other => {
            return Err(bad(
                &format!("{sat}.type"),
                format!("image source type `{other}` is not supported; use `base64` or `url`"),
            ))
        }
    };
    Ok(Part::Image { url, detail: None })
}

fn document_part(obj: &Obj, at: &str) -> Result<Part, ApiError> {
    let title = opt_str(obj, "title", at)?;
    let (source, kind, sat) = source_of(obj, at)?;
    match kind {
        "text" => {
            let data = req_str(source, "data", &sat)?;
            Ok(Part::Text(match title {
                Some(t) if !t.is_empty() => format!("{t}\n\n{data}"),
                _ => data.to_string(),
            }))
        }
        "base64" => Ok(Part::File {
            filename: title.map(str::to_string),
            file_data: Some(data_url(source, &sat)?),
            file_id: None,
        }),
        other => Err(bad(
            &format!("{sat}.type"),
            format!("document source type `{other}` is not supported; use `text` or `base64`"),
        )),
    }
}

/// A `tool_result` block → a `tool` message (text); its images go to `carried`.
fn tool_result(obj: &Obj, at: &str, carried: &mut Vec<Sourced>) -> Result<Message, ApiError> {
    let id = req_str(obj, "tool_use_id", at)?;
    let is_error = match obj.get("is_error") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(v) => return Err(wrong_type(&format!("{at}.is_error"), "a boolean", v)),
    };
    let cat = format!("{at}.content");
    let mut text = match obj.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => {
            let mut texts: Vec<&str> = Vec::new();
            let mut images = 0usize;
            for (k, b) in blocks.iter().enumerate() {
                let bat = format!("{cat}[{k}]");
                let (bobj, kind) = as_block(b, &bat)?;
                match kind {
                    "text" => texts.push(req_str(bobj, "text", &bat)?),
                    "image" => {
                        carried.push((image_part(bobj, &bat)?, bat));
                        images += 1;
                    }
                    other => {
                        return Err(unsupported_block(
                            &bat,
                            other,
                            "text, image (in tool_result)",
                        ))
                    }
                }
            }
            fields::result_text(&texts, images, "tool result")
        }
        Some(v) => {
            return Err(wrong_type(
                &cat,
                "a string or an array of content blocks",
                v,
            ))
        }
    };
    if is_error {
        text.insert_str(0, "Error: ");
    }
    Ok(Message {
        tool_call_id: Some(id.to_string()),
        ..message(Role::Tool, Content::Text(text))
    })
}

/// Client tools → OpenAI function tools; Anthropic server tools are refused.
fn convert_tools(v: Option<&Value>) -> Result<Option<Vec<Value>>, ApiError> {
    let Some(list) = fields::objects(v, "tools", "a tool object")? else {
        return Ok(None);
    };
    let mut tools = Vec::with_capacity(list.len());
    for (at, obj) in list {
        match opt_str(obj, "type", &at)? {
            None | Some("custom") => {}
            Some(other) => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!(
                        "`{other}` is an Anthropic server tool; this proxy only runs client tools (omit `type` or use \"custom\")"
                    ),
                ))
            }
        }
        let name = req_str(obj, "name", &at)?;
        let description = opt_str(obj, "description", &at)?;
        let schema = match obj.get("input_schema") {
            Some(s @ Value::Object(_)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(bad(&format!("{at}.input_schema"), "is required"))
            }
            Some(v) => {
                return Err(wrong_type(
                    &format!("{at}.input_schema"),
                    "a JSON schema object",
                    v,
                ))
            }
        };
        tools.push(fields::function_tool(name, description, Some(schema)));
    }
    Ok((!tools.is_empty()).then_some(tools))
}

fn convert_tool_choice(v: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(o)) => o,
        Some(v) => return Err(wrong_type("tool_choice", "an object", v)),
    };
    fields::check_bool(
        "tool_choice.disable_parallel_tool_use",
        obj.get("disable_parallel_tool_use"),
    )?;
    let choice = match req_str(obj, "type", "tool_choice")? {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => {
            let name = req_str(obj, "name", "tool_choice")?;
            json!({"type": "function", "function": {"name": name}})
        }
        other => {
            return Err(bad(
                "tool_choice.type",
                format!("must be \"auto\", \"any\", \"tool\" or \"none\", got \"{other}\""),
            ))
        }
    };
    Ok(Some(choice))
}

// ---------------------------------------------------------------------------------------
// Errors and usage
// ---------------------------------------------------------------------------------------

fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        // `timeout_error` is in the SDKs' error types (GatewayTimeoutError).
        504 => "timeout_error",
        500..=599 => "api_error",
        // Anthropic: "we may also use this error type for other 4XX status codes".
        _ => "invalid_request_error",
    }
}

/// Anthropic's error body: `{"type":"error","error":{"type":…,"message":…}}`, the type
/// chosen from the status.
pub fn error_body(err: &ApiError) -> Vec<u8> {
    let v = json!({
        "type": "error",
        "error": {"type": error_type(err.status), "message": err.message},
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Upstream `completion_tokens` when non-zero, else our estimate.
fn output_tokens_of(usage: Option<&Usage>, estimate: u64) -> u64 {
    usage
        .map(|u| u.completion_tokens)
        .filter(|&n| n > 0)
        .unwrap_or(estimate)
}

/// OpenAI `finish_reason` → Anthropic `stop_reason`.
fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        _ => "end_turn",
    }
}

/// A tool call's id as Anthropic shapes them: `toolu_` + 24 letters and digits (the tool
/// emulation's `call_` + 24 becomes `toolu_` + the same 24).
fn tool_use_id(id: &str) -> String {
    match id.strip_prefix("call_") {
        Some(tail) => format!("toolu_{tail}"),
        None if id.starts_with("toolu_") => id.to_string(),
        None => format!("toolu_{id}"),
    }
}

/// A tool call's arguments as the `input` object (the tool emulation always produces a
/// serialized JSON object; anything else becomes `{}`).
fn tool_input(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => Value::Object(Map::new()),
    }
}

// ---------------------------------------------------------------------------------------
// Non-stream message
// ---------------------------------------------------------------------------------------

/// The non-stream answer: a `message` object.
///
/// `input_tokens` is always `input_tokens`, our estimate of the prompt that went upstream,
/// as in the stream's `message_start` and `message_delta` and in `count_tokens`: a stream
/// must say it before the upstream reports any usage, and a client (Claude Code sizes its
/// context with it) must not see two counts for one prompt. `output_tokens`, when estimated, counts the reasoning even in [`ReasoningMode::Drop`]:
/// the model generated it (Anthropic counts hidden thinking as output too).
pub fn message_json(
    result: &CompletionResult,
    id: &str,
    model: &str,
    reasoning: ReasoningMode,
    input_tokens: u64,
) -> Vec<u8> {
    let mut content = Vec::new();
    if !result.reasoning.is_empty() && reasoning != ReasoningMode::Drop {
        // Inline is treated like Field: Anthropic has a native thinking block.
        content.push(json!({"type": "thinking", "thinking": result.reasoning, "signature": ""}));
    }
    if !result.content.is_empty() || (content.is_empty() && result.tool_calls.is_empty()) {
        content.push(json!({"type": "text", "text": result.content}));
    }
    let mut estimate = Estimate::default();
    estimate.add(&result.reasoning);
    estimate.add(&result.content);
    for c in &result.tool_calls {
        estimate.add(&c.name);
        estimate.add(&c.arguments);
        content.push(json!({
            "type": "tool_use",
            "id": tool_use_id(&c.id),
            "name": c.name,
            "input": tool_input(&c.arguments),
        }));
    }
    let usage = result.usage.as_ref();
    let v = json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(&result.finish_reason),
        "stop_sequence": null,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens_of(usage, estimate.tokens()),
        },
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Stream encoder
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
}

/// Stream events: `message_start`, `content_block_start/delta/stop` (`thinking`, `text`,
/// `tool_use`), `message_delta` with `stop_reason` and usage, `message_stop`; `error` on
/// a failure.
///
/// A thinking block ends, as Anthropic's do, with a `signature_delta` before its
/// `content_block_stop`. K2Think signs nothing, so the signature is empty (never a made-up
/// value a client could mistake for Anthropic's); thinking blocks sent back in a later
/// request are dropped by [`parse_request`], so it is never checked.
#[derive(Debug)]
pub struct MessagesEncoder {
    started: bool,
    id: String,
    model: String,
    reasoning: ReasoningMode,
    input_tokens: u64,
    /// Index of the next block.
    next: usize,
    /// The block open at index `next - 1`.
    open: Option<Block>,
    /// Characters generated (for the `output_tokens` estimate).
    estimate: Estimate,
    /// `finish` or `error` was written: nothing more.
    ended: bool,
}

impl MessagesEncoder {
    pub fn new(id: &str, model: &str, reasoning: ReasoningMode, input_tokens: u64) -> Self {
        MessagesEncoder {
            started: false,
            id: id.to_string(),
            model: model.to_string(),
            reasoning,
            input_tokens,
            next: 0,
            open: None,
            estimate: Estimate::default(),
            ended: false,
        }
    }

    /// Stop the open `thinking` / `text` block, if any (a thinking block gets its
    /// `signature_delta` first).
    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(block) = self.open.take() else {
            return;
        };
        let i = self.next - 1;
        if block == Block::Thinking {
            event(out, "content_block_delta", |o| {
                o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
                write_u64(o, i as u64);
                o.extend_from_slice(
                    b",\"delta\":{\"type\":\"signature_delta\",\"signature\":\"\"}}",
                );
            });
        }
        stop_block(i, out);
    }

    /// Close the open block and start a new one; returns its index.
    fn start_block(&mut self, block: &[u8], out: &mut Vec<u8>) -> usize {
        self.close(out);
        let i = self.next;
        self.next += 1;
        event(out, "content_block_start", |o| {
            o.extend_from_slice(b"{\"type\":\"content_block_start\",\"index\":");
            write_u64(o, i as u64);
            o.extend_from_slice(b",\"content_block\":");
            o.extend_from_slice(block);
            o.push(b'}');
        });
        i
    }

    /// A text-like delta into a `thinking` or `text` block (opened when needed).
    fn text_delta(&mut self, kind: Block, text: &str, out: &mut Vec<u8>) {
        if self.open != Some(kind) {
            let block: &[u8] = match kind {
                Block::Thinking => b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}",
                Block::Text => b"{\"type\":\"text\",\"text\":\"\"}",
            };
            self.start_block(block, out);
            self.open = Some(kind);
            self.started = true;
        }
        let (delta, field): (&[u8], &[u8]) = match kind {
            Block::Thinking => (b"thinking_delta", b"thinking"),
            Block::Text => (b"text_delta", b"text"),
        };
        let i = self.next - 1;
        event(out, "content_block_delta", |o| {
            o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
            write_u64(o, i as u64);
            o.extend_from_slice(b",\"delta\":{\"type\":\"");
            o.extend_from_slice(delta);
            o.extend_from_slice(b"\",\"");
            o.extend_from_slice(field);
            o.extend_from_slice(b"\":");
            write_json_str(o, text);
            o.extend_from_slice(b"}}");
        });
    }
}

fn stop_block(index: usize, out: &mut Vec<u8>) {
    event(out, "content_block_stop", |o| {
        o.extend_from_slice(b"{\"type\":\"content_block_stop\",\"index\":");
        write_u64(o, index as u64);
        o.push(b'}');
    });
}

/// `event: <name>\ndata: <json>\n\n`.
fn event(out: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    data(out);
    out.extend_from_slice(b"\n\n");
}

fn event_json(out: &mut Vec<u8>, name: &str, v: &Value) {
    event(out, name, |o| {
        // Writing a `Value` into a Vec cannot fail.
        let _ = serde_json::to_writer(o, v);
    });
}

impl Encoder for MessagesEncoder {
    /// `message_start` (empty content, `input_tokens`) and a `ping`, as Anthropic sends.
    fn start(&mut self, out: &mut Vec<u8>) {
        let v = json!({
            "type": "message_start",
            "message": {
                "id": self.id,
                "type": "message",
                "role": "assistant",
                "model": self.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
            },
        });
        event_json(out, "message_start", &v);
        event(out, "ping", |o| o.extend_from_slice(b"{\"type\":\"ping\"}"));
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() || self.ended {
            return;
        }
        self.estimate.add(text);
        if self.reasoning == ReasoningMode::Drop {
            return;
        }
        self.text_delta(Block::Thinking, text, out);
    }

    fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() || self.ended {
            return;
        }
        self.estimate.add(text);
        self.text_delta(Block::Text, text, out);
    }

    /// A whole `tool_use` block: start (empty `input`), one `input_json_delta` with the
    /// arguments, stop.
    fn tool_call(&mut self, _index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.estimate.add(&call.name);
        self.estimate.add(&call.arguments);
        let block = json!({"type": "tool_use", "id": tool_use_id(&call.id), "name": call.name, "input": {}});
        let block = serde_json::to_vec(&block).unwrap_or_default();
        let i = self.start_block(&block, out);
        self.started = true;
        if !call.arguments.is_empty() {
            event(out, "content_block_delta", |o| {
                o.extend_from_slice(b"{\"type\":\"content_block_delta\",\"index\":");
                write_u64(o, i as u64);
                o.extend_from_slice(b",\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":");
                write_json_str(o, &call.arguments);
                o.extend_from_slice(b"}}");
            });
        }
        stop_block(i, out);
    }

    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        if self.next == 0 {
            // A message always has content: one empty text block.
            self.start_block(b"{\"type\":\"text\",\"text\":\"\"}", out);
            self.open = Some(Block::Text);
        }
        self.close(out);
        // `input_tokens` as in `message_start` (see [`message_json`]).
        let v = json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(finish_reason), "stop_sequence": null},
            "usage": {
                "input_tokens": self.input_tokens,
                "output_tokens": output_tokens_of(usage, self.estimate.tokens()),
            },
        });
        event_json(out, "message_delta", &v);
        event(out, "message_stop", |o| {
            o.extend_from_slice(b"{\"type\":\"message_stop\"}")
        });
    }

    /// `event: error` and nothing after it (no `message_stop`: the message is incomplete).
    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let kind = match code {
            "upstream_timeout" | "request_timeout" => "timeout_error",
            _ => "api_error",
        };
        let v = json!({"type": "error", "error": {"type": kind, "message": message}});
        event_json(out, "error", &v);
    }

    fn output_started(&self) -> bool {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::surface::testing::{call, events, names, result};

    fn parse(v: Value) -> ChatRequest {
        parse_request(v.to_string().as_bytes(), false)
            .expect("valid request")
            .chat
    }

    fn err(v: Value) -> ApiError {
        parse_request(v.to_string().as_bytes(), false).expect_err("invalid request")
    }

    /// A minimal valid request with `messages` replaced.
    fn with_messages(messages: Value) -> Value {
        json!({"model": "m", "max_tokens": 10, "messages": messages})
    }

    fn user(content: Value) -> Value {
        with_messages(json!([{"role": "user", "content": content}]))
    }

    fn text_of(m: &Message) -> &str {
        match &m.content {
            Content::Text(t) => t,
            other => panic!("expected text content, got {other:?}"),
        }
    }

    #[test]
    fn basic_fields_and_system_string() {
        let r = parse(json!({
            "model": "K2-Think", "max_tokens": 1024, "stream": true, "temperature": 0.5,
            "top_p": 0.9, "top_k": 5, "metadata": {"user_id": "u"}, "thinking": {"type": "enabled"},
            "service_tier": "auto", "unknown": [1],
            "stop_sequences": ["END", "STOP"],
            "system": "be brief",
            "messages": [{"role": "user", "content": "hi"}],
        }));
        assert_eq!(r.model, "K2-Think");
        assert_eq!(r.max_tokens, Some(1024));
        assert!(r.stream);
        assert_eq!(r.temperature, Some(0.5));
        assert_eq!(r.top_p, Some(0.9));
        assert_eq!(r.stop, Some(Stop::Many(vec!["END".into(), "STOP".into()])));
        assert_eq!(r.stream_options, None);
        assert_eq!((r.max_completion_tokens, r.n, r.seed), (None, None, None));
        assert_eq!((r.tools.clone(), r.tool_choice.clone()), (None, None));
        assert_eq!(r.messages.len(), 2);
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(text_of(&r.messages[0]), "be brief");
        assert_eq!(r.messages[1].role, Role::User);
        assert_eq!(text_of(&r.messages[1]), "hi");
        let r = parse(with_messages(json!([{"role": "user", "content": "x"}])));
        assert!(!r.stream);
        assert_eq!(r.messages.len(), 1);
    }

    /// Claude Code's mid-conversation system messages (beta
    /// `mid-conversation-system-2026-04-07`) stay where they are, as system messages.
    #[test]
    fn system_messages_stay_in_place() {
        let r = parse_request(
            json!({"model": "m", "max_tokens": 5, "system": "top",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "say hi", "cache_control": {"type": "ephemeral"}}]},
                    {"role": "system", "content": "Available agent types: claude"},
                    {"role": "assistant", "content": "hi"},
                    {"role": "system", "content": [
                        {"type": "text", "text": "one"},
                        {"type": "text", "text": "two", "cache_control": {"type": "ephemeral"}}
                    ]},
                    {"role": "system", "content": ""},
                    {"role": "user", "content": "again"},
                ]})
            .to_string()
            .as_bytes(),
            false,
        )
        .expect("valid");
        let roles: Vec<Role> = r.chat.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::System,
                Role::User,
                Role::System,
                Role::Assistant,
                Role::System,
                Role::User
            ]
        );
        assert_eq!(text_of(&r.chat.messages[0]), "top");
        assert_eq!(
            text_of(&r.chat.messages[2]),
            "Available agent types: claude"
        );
        assert_eq!(text_of(&r.chat.messages[4]), "one\ntwo");
        // Errors after the conversion name the client's message.
        assert_eq!(r.origin.path("messages[2]"), "messages[1]");
        assert_eq!(r.origin.path("messages[4]"), "messages[3]");
        assert_eq!(r.origin.path("messages[5]"), "messages[5]");
    }

    /// What is still refused is worded as Anthropic words it.
    #[test]
    fn refusals_use_anthropics_wording() {
        let e = err(with_messages(json!([{"role": "tool", "content": "x"}])));
        assert_eq!(
            e.message,
            "messages[0].role: Unexpected role \"tool\". Allowed roles are \"user\", \"assistant\" or \"system\". Tool results go in a \"user\" message as `tool_result` content blocks"
        );
        let e = err(with_messages(json!([{"role": "ai", "content": "x"}])));
        assert_eq!(
            e.message,
            "messages[0].role: Unexpected role \"ai\". Allowed roles are \"user\", \"assistant\" or \"system\""
        );
        let e = err(json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.message, "max_tokens: Field required");
        let e = err(json!({"max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(e.message, "model: Field required");
        let e = err(json!({"model": "m", "max_tokens": 1}));
        assert_eq!(e.message, "messages: Field required");
        let e = err(with_messages(json!([])));
        assert_eq!(e.message, "messages: at least one message is required");
        let e = err(with_messages(json!([{"content": "x"}])));
        assert_eq!(e.message, "messages[0].role: Field required");
        for e in [e, err(with_messages(json!([{"role": "tool"}])))] {
            assert_eq!(e.status, 400);
            let v: Value = serde_json::from_slice(&error_body(&e)).expect("json");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }

    #[test]
    fn thinking_is_on_when_enabled_or_adaptive() {
        let on = |thinking: Value| {
            let mut body = with_messages(json!([{"role": "user", "content": "x"}]));
            if !thinking.is_null() {
                body["thinking"] = thinking;
            }
            parse_request(body.to_string().as_bytes(), false)
                .expect("valid")
                .thinking
        };
        assert!(on(json!({"type": "adaptive"})));
        assert!(on(json!({"type": "enabled", "budget_tokens": 2048})));
        assert!(!on(json!({"type": "disabled"})));
        assert!(!on(Value::Null));
    }

    #[test]
    fn tool_use_ids_are_shaped_as_anthropics() {
        let id = crate::pipeline::tools::new_call_id();
        let t = tool_use_id(&id);
        let tail = t.strip_prefix("toolu_").expect("toolu_ prefix");
        assert_eq!(tail.len(), 24, "{t}");
        assert!(tail.chars().all(|c| c.is_ascii_alphanumeric()), "{t}");
        assert_eq!(tool_use_id("toolu_01abc"), "toolu_01abc");
        assert_eq!(tool_use_id("x"), "toolu_x");
    }

    #[test]
    fn system_blocks_are_joined() {
        let r = parse(json!({
            "model": "m", "max_tokens": 1,
            "system": [
                {"type": "text", "text": "one", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "two"}
            ],
            "messages": [{"role": "user", "content": "q"}],
        }));
        assert_eq!(r.messages[0].role, Role::System);
        assert_eq!(text_of(&r.messages[0]), "one\ntwo");
        // An empty system adds no message.
        let r = parse(json!({"model": "m", "max_tokens": 1, "system": [],
            "messages": [{"role": "user", "content": "q"}]}));
        assert_eq!(r.messages.len(), 1);
    }

    #[test]
    fn multi_turn() {
        let r = parse(with_messages(json!([
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "xx"},
                {"type": "text", "text": "b1"},
                {"type": "text", "text": "b2"}
            ]},
            {"role": "user", "content": [{"type": "text", "text": "c1"}, {"type": "text", "text": "c2"}]},
        ])));
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::User, Role::Assistant, Role::User]);
        assert_eq!(text_of(&r.messages[1]), "b1\nb2");
        assert!(r.messages[1].tool_calls.is_empty());
        assert_eq!(text_of(&r.messages[2]), "c1\nc2");
    }

    #[test]
    fn images_base64_and_url() {
        let r = parse(user(json!([
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
            {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
        ])));
        assert_eq!(
            r.messages[0].content,
            Content::Parts(vec![
                Part::Text("what is this?".into()),
                Part::Image {
                    url: "data:image/png;base64,iVBO".into(),
                    detail: None
                },
                Part::Image {
                    url: "https://x.test/a.jpg".into(),
                    detail: None
                },
            ])
        );
    }

    #[test]
    fn documents() {
        let r = parse(user(json!([
            {"type": "document", "title": "notes.txt", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "bare"}},
        ])));
        assert_eq!(text_of(&r.messages[0]), "notes.txt\n\nhello\nbare");
        let r = parse(user(json!([
            {"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}},
            {"type": "text", "text": "summarize"},
        ])));
        assert_eq!(
            r.messages[0].content,
            Content::Parts(vec![
                Part::File {
                    filename: Some("a.pdf".into()),
                    file_data: Some("data:application/pdf;base64,JVBE".into()),
                    file_id: None,
                },
                Part::Text("summarize".into()),
            ])
        );
    }

    #[test]
    fn tool_use_and_tool_result() {
        let r = parse(with_messages(json!([
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "and be quick"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "service"}, {"type": "text", "text": "down"}]}
            ]},
        ])));
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::User
            ]
        );
        let a = &r.messages[1];
        assert_eq!(text_of(a), "Checking.");
        assert_eq!(a.tool_calls.len(), 2);
        assert_eq!(a.tool_calls[0].id, "toolu_1");
        assert_eq!(a.tool_calls[0].kind, "function");
        assert_eq!(a.tool_calls[0].function.name, "get_weather");
        let args: Value = serde_json::from_str(&a.tool_calls[1].function.arguments).expect("json");
        assert_eq!(args, json!({"city": "Rome"}));
        assert_eq!(r.messages[2].tool_call_id.as_deref(), Some("toolu_1"));
        assert_eq!(text_of(&r.messages[2]), "18C");
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("toolu_2"));
        assert_eq!(text_of(&r.messages[3]), "Error: service\ndown");
        assert_eq!(text_of(&r.messages[4]), "and be quick");

        // Tool calls only: content is null; tool results only: no trailing user message.
        let r = parse(with_messages(json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t"}]},
        ])));
        assert_eq!(r.messages.len(), 3);
        assert_eq!(r.messages[1].content, Content::None);
        assert_eq!(r.messages[1].tool_calls[0].function.arguments, "{}");
        assert_eq!(r.messages[2].role, Role::Tool);
        assert_eq!(text_of(&r.messages[2]), "");
    }

    #[test]
    fn tool_result_images_move_to_the_next_user_message() {
        let r = parse(with_messages(json!([
            {"role": "user", "content": "screenshot"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "text", "text": "here"},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/s.png"}}
                ]},
                {"type": "text", "text": "what do you see?"}
            ]},
        ])));
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[2].role, Role::Tool);
        assert_eq!(
            text_of(&r.messages[2]),
            "here\n[1 image from this tool result attached to the next user message]"
        );
        assert_eq!(r.messages[3].role, Role::User);
        assert_eq!(
            r.messages[3].content,
            Content::Parts(vec![
                Part::Image {
                    url: "https://x.test/s.png".into(),
                    detail: None
                },
                Part::Text("what do you see?".into()),
            ])
        );
    }

    #[test]
    fn tools_and_tool_choice() {
        let base = |choice: Value| {
            json!({
                "model": "m", "max_tokens": 5,
                "messages": [{"role": "user", "content": "x"}],
                "tools": [
                    {"name": "get_weather", "description": "Weather", "input_schema":
                        {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
                     "cache_control": {"type": "ephemeral"}},
                    {"type": "custom", "name": "noop", "input_schema": {"type": "object"}}
                ],
                "tool_choice": choice,
            })
        };
        let r = parse(base(Value::Null));
        let tools = r.tools.expect("tools");
        assert_eq!(
            tools[0],
            json!({"type": "function", "function": {"name": "get_weather", "description": "Weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}})
        );
        assert_eq!(
            tools[1],
            json!({"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}})
        );
        assert_eq!(r.tool_choice, None);
        let cases = [
            (json!({"type": "auto"}), json!("auto")),
            (
                json!({"type": "any", "disable_parallel_tool_use": true}),
                json!("required"),
            ),
            (json!({"type": "none"}), json!("none")),
            (
                json!({"type": "tool", "name": "noop"}),
                json!({"type": "function", "function": {"name": "noop"}}),
            ),
        ];
        for (given, want) in cases {
            assert_eq!(parse(base(given)).tool_choice, Some(want));
        }
        // The converted tools are accepted by the shared tool emulation.
        let r = parse(base(json!({"type": "tool", "name": "noop"})));
        let set = crate::pipeline::tools::ToolSet::from_request(
            r.tools.as_deref(),
            r.tool_choice.as_ref(),
        )
        .expect("tool set");
        assert!(set.is_some());
    }

    #[test]
    fn server_tools_are_refused() {
        for kind in [
            "web_search_20250305",
            "bash_20250124",
            "text_editor_20250728",
        ] {
            let e = err(json!({
                "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": "ok", "input_schema": {"type": "object"}}, {"type": kind, "name": "web_search"}],
            }));
            assert_eq!(e.status, 400);
            assert_eq!(e.param.as_deref(), Some("tools[1].type"));
            assert!(e.message.contains(kind), "{}", e.message);
            assert!(
                e.message
                    .contains("is an Anthropic server tool; this proxy only runs client tools"),
                "{}",
                e.message
            );
        }
    }

    #[test]
    fn count_tokens_needs_no_max_tokens() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let r = parse_request(body.to_string().as_bytes(), true).expect("count_tokens body");
        assert_eq!(r.chat.max_tokens, None);
        let e = parse_request(body.to_string().as_bytes(), false).expect_err("needs max_tokens");
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
    }

    #[test]
    fn errors_name_the_param() {
        let raw = |b: &[u8]| parse_request(b, false).expect_err("invalid");
        assert_eq!(raw(b"").param, None);
        assert!(raw(b"  ").message.contains("empty"));
        assert!(raw(b"[1]").message.contains("JSON object"));
        assert!(raw(b"{\"model\":").message.contains("not valid JSON"));

        let m = || json!([{"role": "user", "content": "x"}]);
        let cases: Vec<(Value, &str)> = vec![
            (json!({"max_tokens": 1, "messages": m()}), "model"),
            (
                json!({"model": 3, "max_tokens": 1, "messages": m()}),
                "model",
            ),
            (
                json!({"model": " ", "max_tokens": 1, "messages": m()}),
                "model",
            ),
            (json!({"model": "m", "messages": m()}), "max_tokens"),
            (
                json!({"model": "m", "max_tokens": 0, "messages": m()}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": -3, "messages": m()}),
                "max_tokens",
            ),
            (
                json!({"model": "m", "max_tokens": 1.5, "messages": m()}),
                "max_tokens",
            ),
            (json!({"model": "m", "max_tokens": 1}), "messages"),
            (
                json!({"model": "m", "max_tokens": 1, "messages": []}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": "hi"}),
                "messages",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "temperature": 1.5}),
                "temperature",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "top_p": "x"}),
                "top_p",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "stop_sequences": "x"}),
                "stop_sequences",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "stop_sequences": ["a", 1]}),
                "stop_sequences[1]",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "system": 5}),
                "system",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "system": [{"type": "image"}]}),
                "system[0].type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "system": [{"type": "text"}]}),
                "system[0].text",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tools": {}}),
                "tools",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tools": [{"input_schema": {}}]}),
                "tools[0].name",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tools": [{"name": "f"}]}),
                "tools[0].input_schema",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tools": [{"name": "f", "input_schema": 1}]}),
                "tools[0].input_schema",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tools": [{"name": "f", "description": 2, "input_schema": {}}]}),
                "tools[0].description",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tool_choice": "auto"}),
                "tool_choice",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tool_choice": {}}),
                "tool_choice.type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tool_choice": {"type": "some"}}),
                "tool_choice.type",
            ),
            (
                json!({"model": "m", "max_tokens": 1, "messages": m(), "tool_choice": {"type": "tool"}}),
                "tool_choice.name",
            ),
        ];
        for (body, param) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{}", e.message);
        }

        let msgs: Vec<(Value, &str)> = vec![
            (json!(["x"]), "messages[0]"),
            (json!([{"content": "x"}]), "messages[0].role"),
            (
                json!([{"role": "tool", "content": "x"}]),
                "messages[0].role",
            ),
            (json!([{"role": "system", "content": "x"}]), "messages"),
            (
                json!([{"role": "user", "content": "x"}, {"role": "system"}]),
                "messages[1].content",
            ),
            (
                json!([{"role": "user", "content": "x"}, {"role": "system", "content": 3}]),
                "messages[1].content",
            ),
            (
                json!([{"role": "user", "content": "x"}, {"role": "system", "content": [{"type": "image"}]}]),
                "messages[1].content[0].type",
            ),
            (json!([{"role": "user"}]), "messages[0].content"),
            (
                json!([{"role": "user", "content": 1}]),
                "messages[0].content",
            ),
            (
                json!([{"role": "user", "content": "a"}, {"role": "user", "content": [1]}]),
                "messages[1].content[0]",
            ),
            (
                json!([{"role": "user", "content": [{"text": "a"}]}]),
                "messages[0].content[0].type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "text"}]}]),
                "messages[0].content[0].text",
            ),
            (
                json!([{"role": "user", "content": [{"type": "audio"}]}]),
                "messages[0].content[0].type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]),
                "messages[0].content[0].type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}]}]),
                "messages[0].content[1].source",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image", "source": "x"}]}]),
                "messages[0].content[0].source",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
                "messages[0].content[0].source.type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]),
                "messages[0].content[0].source.media_type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png"}}]}]),
                "messages[0].content[0].source.data",
            ),
            (
                json!([{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}]),
                "messages[0].content[0].source.url",
            ),
            (
                json!([{"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "https://x"}}]}]),
                "messages[0].content[0].source.type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "document", "title": 3, "source": {"type": "text", "data": "x"}}]}]),
                "messages[0].content[0].title",
            ),
            (
                json!([{"role": "user", "content": [{"type": "document", "source": {"type": "text"}}]}]),
                "messages[0].content[0].source.data",
            ),
            (
                json!([{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
                "messages[0].content[0].tool_use_id",
            ),
            (
                json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": "yes"}]}]),
                "messages[0].content[0].is_error",
            ),
            (
                json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]),
                "messages[0].content[0].content",
            ),
            (
                json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document", "source": {}}]}]}]),
                "messages[0].content[0].content[0].type",
            ),
            (
                json!([{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {"type": "x"}}]}]}]),
                "messages[0].content[0].content[0].source.type",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]),
                "messages[1].content[0].id",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "i", "input": {}}]}]),
                "messages[1].content[0].name",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "tool_use", "id": "i", "name": "f", "input": "x"}]}]),
                "messages[1].content[0].input",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image", "source": {}}]}]),
                "messages[1].content[0].type",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]),
                "messages[1].content[0].type",
            ),
            (
                json!([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "server_tool_use"}]}]),
                "messages[1].content[0].type",
            ),
        ];
        for (messages, param) in msgs {
            let e = err(with_messages(messages.clone()));
            assert_eq!(e.status, 400, "{messages}");
            assert_eq!(e.param.as_deref(), Some(param), "{messages}: {}", e.message);
            assert!(e.message.starts_with(param), "{}", e.message);
        }
        // Unsupported block types are named.
        let e = err(user(json!([{"type": "search_result"}])));
        assert!(e.message.contains("`search_result`"), "{}", e.message);
    }

    #[test]
    fn lax_fields_are_refused_naming_the_field() {
        // Issue 16: `thinking: 7` got a 200 when `output_config.effort` was set.
        let with = |extra: Value| {
            let mut body = with_messages(json!([{"role": "user", "content": "x"}]));
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            body
        };
        let cases: Vec<(Value, &str)> = vec![
            (with(json!({"thinking": 7})), "thinking"),
            (
                with(json!({"thinking": 7, "output_config": {"effort": "high"}})),
                "thinking",
            ),
            (with(json!({"thinking": "enabled"})), "thinking"),
            (with(json!({"thinking": {}})), "thinking.type"),
            (
                with(json!({"thinking": {"budget_tokens": 2048}})),
                "thinking.type",
            ),
            (
                with(json!({"thinking": {"type": "sometimes"}})),
                "thinking.type",
            ),
            (with(json!({"thinking": {"type": 1}})), "thinking.type"),
            (
                with(json!({"thinking": {"type": "enabled", "budget_tokens": "lots"}})),
                "thinking.budget_tokens",
            ),
            (
                with(
                    json!({"thinking": {"type": "adaptive", "budget_tokens": -1}, "output_config": {"effort": "low"}}),
                ),
                "thinking.budget_tokens",
            ),
            (with(json!({"output_config": 3})), "output_config"),
            (
                with(json!({"output_config": {"effort": "huge"}})),
                "output_config.effort",
            ),
            (with(json!({"metadata": 5})), "metadata"),
            (
                with(json!({"metadata": {"user_id": 5}})),
                "metadata.user_id",
            ),
            (with(json!({"top_k": "x"})), "top_k"),
            (with(json!({"top_k": -1})), "top_k"),
            (with(json!({"service_tier": 1})), "service_tier"),
            (
                with(json!({"context_management": []})),
                "context_management",
            ),
            (
                with(json!({"tool_choice": {"type": "auto", "disable_parallel_tool_use": "yes"}})),
                "tool_choice.disable_parallel_tool_use",
            ),
        ];
        for (body, param) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            // Anthropic's error body has only the message: it names the field.
            assert!(e.message.starts_with(param), "{}", e.message);
            let v: Value = serde_json::from_slice(&error_body(&e)).expect("json");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(param)));
        }
    }

    #[test]
    fn what_claude_code_sends_is_accepted() {
        let r = parse_request(
            json!({
                "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": true,
                "thinking": {"type": "adaptive"},
                "output_config": {"effort": "medium"},
                "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                "metadata": {"user_id": "user_abc_account_def_session_ghi"},
                "system": [
                    {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}
                ],
                "tools": [{"name": "Bash", "description": "Run a command",
                    "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}},
                    "cache_control": {"type": "ephemeral"}}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": false},
                "messages": [{"role": "user", "content": [
                    {"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}}
                ]}]
            })
            .to_string()
            .as_bytes(),
            false,
        )
        .expect("a Claude Code body");
        assert_eq!(r.chat.reasoning_effort, Some(Effort::Medium));
        for thinking in [
            json!({"type": "enabled", "budget_tokens": 31999}),
            json!({"type": "enabled"}),
            json!({"type": "disabled"}),
            json!(null),
        ] {
            let mut body = with_messages(json!([{"role": "user", "content": "x"}]));
            body["thinking"] = thinking.clone();
            body["top_k"] = json!(40);
            body["service_tier"] = json!("auto");
            assert!(
                parse_request(body.to_string().as_bytes(), false).is_ok(),
                "{thinking}"
            );
        }
    }

    #[test]
    fn origin_names_the_clients_block() {
        // The converted request has the system message first and tool results split off:
        // an error found after the conversion names the client's block.
        let mut body = with_messages(json!([
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "shot", "input": {}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "text", "text": "here"},
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/s.png"}}
                ]},
                {"type": "text", "text": "what is it?"},
                {"type": "document", "title": "a.pdf", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}}
            ]},
        ]));
        body["system"] = json!("be brief");
        let r = parse_request(body.to_string().as_bytes(), false).expect("valid");
        let o = &r.origin;
        assert_eq!(r.chat.messages.len(), 5);
        assert_eq!(o.path("messages[0]"), "system");
        assert_eq!(o.path("messages[1].content[0]"), "messages[0]");
        assert_eq!(o.path("messages[3]"), "messages[2].content[0]");
        // The user turn: the tool result's image first, then the text and the document.
        assert_eq!(
            o.path("messages[4].content[0]"),
            "messages[2].content[0].content[1]"
        );
        assert_eq!(o.path("messages[4].content[1]"), "messages[2].content[1]");
        assert_eq!(
            o.path("messages[4].content[2].type"),
            "messages[2].content[2].type"
        );
        assert_eq!(o.path("messages"), "messages");
        assert_eq!(o.path("tools[1].function.name"), "tools[1].name");
        assert_eq!(o.path("tool_choice.function.name"), "tool_choice.name");
        let e = o.error(ApiError::invalid(
            "not a text file",
            Some("messages[4].content[2]".into()),
        ));
        assert_eq!(e.param.as_deref(), Some("messages[2].content[2]"));
        assert_eq!(e.message, "messages[2].content[2]: not a text file");
    }

    #[test]
    fn error_bodies() {
        let cases = [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (408, "invalid_request_error"),
            (413, "request_too_large"),
            (422, "invalid_request_error"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (502, "api_error"),
            (503, "overloaded_error"),
            (504, "timeout_error"),
        ];
        for (status, kind) in cases {
            let e = ApiError::new(status, "x", "y", format!("boom \"{status}\""));
            let v: Value = serde_json::from_slice(&error_body(&e)).expect("json");
            assert_eq!(
                v,
                json!({"type": "error", "error": {"type": kind, "message": format!("boom \"{status}\"")}}),
                "{status}"
            );
        }
        let v: Value =
            serde_json::from_slice(&error_body(&ApiError::invalid("bad", Some("model".into()))))
                .expect("json");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }

    fn msg(r: &CompletionResult, mode: ReasoningMode) -> Value {
        serde_json::from_slice(&message_json(r, "msg_1", "K2", mode, 7)).expect("json")
    }

    #[test]
    fn message_plain() {
        let v = msg(
            &result("", "Hello \"you\"", "stop", vec![]),
            ReasoningMode::Field,
        );
        assert_eq!(
            v,
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "K2",
                "content": [{"type": "text", "text": "Hello \"you\""}],
                "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 7, "output_tokens": 3}})
        );
        let v = msg(&result("", "cut", "length", vec![]), ReasoningMode::Field);
        assert_eq!(v["stop_reason"], "max_tokens");
        let v = msg(&result("", "", "stop", vec![]), ReasoningMode::Field);
        assert_eq!(v["content"], json!([{"type": "text", "text": ""}]));
        assert_eq!(v["usage"]["output_tokens"], 0);
        let v = msg(
            &result("", "x", "content_filter", vec![]),
            ReasoningMode::Field,
        );
        assert_eq!(v["stop_reason"], "end_turn");
    }

    #[test]
    fn message_reasoning_and_usage() {
        let mut r = result("think", "answer", "stop", vec![]);
        for mode in [ReasoningMode::Field, ReasoningMode::Inline] {
            let v = msg(&r, mode);
            assert_eq!(
                v["content"],
                json!([{"type": "thinking", "thinking": "think", "signature": ""},
                       {"type": "text", "text": "answer"}])
            );
            assert_eq!(v["usage"], json!({"input_tokens": 7, "output_tokens": 3}));
        }
        r.usage = Some(Usage {
            prompt_tokens: 100,
            completion_tokens: 42,
            total_tokens: 142,
            completion_tokens_details: None,
        });
        // The upstream's output count is taken; its prompt count is not: input_tokens is
        // the estimate the stream's message_start gives too.
        let v = msg(&r, ReasoningMode::Field);
        assert_eq!(v["usage"], json!({"input_tokens": 7, "output_tokens": 42}));
    }

    #[test]
    fn message_drop_mode() {
        let v = msg(
            &result("secret", "answer", "stop", vec![]),
            ReasoningMode::Drop,
        );
        assert_eq!(v["content"], json!([{"type": "text", "text": "answer"}]));
        // Reasoning only, dropped: still one (empty) text block.
        let v = msg(&result("secret", "", "stop", vec![]), ReasoningMode::Drop);
        assert_eq!(v["content"], json!([{"type": "text", "text": ""}]));
    }

    #[test]
    fn message_tool_calls() {
        let r = result(
            "plan",
            "",
            "tool_calls",
            vec![
                call("call_a", "get_weather", "{\"city\":\"Paris\"}"),
                call("call_b", "noop", ""),
            ],
        );
        let v = msg(&r, ReasoningMode::Field);
        assert_eq!(v["stop_reason"], "tool_use");
        assert_eq!(
            v["content"],
            json!([
                {"type": "thinking", "thinking": "plan", "signature": ""},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_b", "name": "noop", "input": {}}
            ])
        );
        let r = result(
            "",
            "Let me check.",
            "tool_calls",
            vec![call("c", "f", "{}")],
        );
        let v = msg(&r, ReasoningMode::Drop);
        assert_eq!(
            v["content"][0],
            json!({"type": "text", "text": "Let me check."})
        );
        assert_eq!(v["content"][1]["type"], "tool_use");
    }

    /// The stream as (event name, JSON data), through the crate's SSE decoder; checks that
    /// every event has a JSON `data` whose `type` is the event name.
    #[test]
    fn stream_full_sequence() {
        let mut e = MessagesEncoder::new("msg_x", "K2-Think", ReasoningMode::Field, 11);
        let mut out = Vec::new();
        e.start(&mut out);
        assert!(!e.output_started());
        e.reasoning("", &mut out);
        e.reasoning("Let me", &mut out);
        assert!(e.output_started());
        e.reasoning(" think", &mut out);
        e.content("", &mut out);
        e.content("It is \"sunny\"\n", &mut out);
        e.tool_call(
            0,
            &call("call_1", "get_weather", "{\"city\":\"Paris\"}"),
            &mut out,
        );
        e.tool_call(1, &call("call_2", "noop", ""), &mut out);
        e.finish("tool_calls", None, &mut out);
        // Nothing after the end.
        e.content("late", &mut out);
        e.error("upstream_stream_error", "late", &mut out);
        let evs = events(&out);
        let data: Vec<&Value> = evs.iter().map(|(_, v)| v).collect();
        assert_eq!(
            names(&evs),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            *data[0],
            json!({"type": "message_start", "message": {"id": "msg_x", "type": "message",
                "role": "assistant", "model": "K2-Think", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 0}}})
        );
        assert_eq!(*data[1], json!({"type": "ping"}));
        assert_eq!(
            *data[2],
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": "", "signature": ""}})
        );
        assert_eq!(
            *data[3],
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "Let me"}})
        );
        assert_eq!(data[4]["delta"]["thinking"], " think");
        assert_eq!(
            *data[5],
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "signature_delta", "signature": ""}})
        );
        assert_eq!(*data[6], json!({"type": "content_block_stop", "index": 0}));
        assert_eq!(
            *data[7],
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(
            *data[8],
            json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "text_delta", "text": "It is \"sunny\"\n"}})
        );
        assert_eq!(*data[9], json!({"type": "content_block_stop", "index": 1}));
        assert_eq!(
            *data[10],
            json!({"type": "content_block_start", "index": 2, "content_block":
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}})
        );
        assert_eq!(
            *data[11],
            json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{\"city\":\"Paris\"}"}})
        );
        assert_eq!(*data[12], json!({"type": "content_block_stop", "index": 2}));
        // Empty arguments: no empty delta.
        assert_eq!(data[13]["index"], 3);
        assert_eq!(data[13]["content_block"]["name"], "noop");
        assert_eq!(*data[14], json!({"type": "content_block_stop", "index": 3}));
        // Estimate: "Let me think" 12 + "It is \"sunny\"\n" 14 + "get_weather" 11 +
        // args 16 + "noop" 4 = 57 ASCII chars → 15 tokens.
        assert_eq!(
            *data[15],
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"input_tokens": 11, "output_tokens": 15}})
        );
        assert_eq!(*data[16], json!({"type": "message_stop"}));
    }

    #[test]
    fn stream_block_switches_and_usage() {
        let mut e = MessagesEncoder::new("m", "K2", ReasoningMode::Inline, 12);
        let mut out = Vec::new();
        e.start(&mut out);
        e.content("a", &mut out);
        e.reasoning("b", &mut out);
        e.content("c", &mut out);
        let usage = Usage {
            prompt_tokens: 30,
            completion_tokens: 9,
            total_tokens: 39,
            completion_tokens_details: None,
        };
        e.finish("length", Some(&usage), &mut out);
        let evs = events(&out);
        let starts: Vec<(u64, &str)> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, v)| {
                (
                    v["index"].as_u64().expect("index"),
                    v["content_block"]["type"].as_str().expect("type"),
                )
            })
            .collect();
        assert_eq!(starts, [(0, "text"), (1, "thinking"), (2, "text")]);
        let stops: Vec<u64> = evs
            .iter()
            .filter(|(n, _)| n == "content_block_stop")
            .map(|(_, v)| v["index"].as_u64().expect("index"))
            .collect();
        assert_eq!(stops, [0, 1, 2]);
        let (name, delta) = &evs[evs.len() - 2];
        assert_eq!(name, "message_delta");
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
        // The upstream's prompt count does not replace the one message_start gave.
        assert_eq!(evs[0].1["message"]["usage"]["input_tokens"], 12);
        assert_eq!(
            delta["usage"],
            json!({"input_tokens": 12, "output_tokens": 9})
        );
        assert_eq!(evs[evs.len() - 1].0, "message_stop");
    }

    #[test]
    fn stream_drop_mode_has_no_thinking() {
        let mut e = MessagesEncoder::new("m", "K2", ReasoningMode::Drop, 1);
        let mut out = Vec::new();
        e.start(&mut out);
        e.reasoning("secret thoughts", &mut out);
        assert!(!e.output_started());
        e.content("answer", &mut out);
        e.finish("stop", None, &mut out);
        let text = String::from_utf8(out.clone()).expect("utf8");
        assert!(!text.contains("thinking") && !text.contains("secret"));
        let evs = events(&out);
        assert_eq!(
            names(&evs),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(evs[2].1["index"], 0);
        assert_eq!(evs[2].1["content_block"]["type"], "text");
        assert_eq!(evs[5].1["delta"]["stop_reason"], "end_turn");
        // The dropped reasoning was generated: 15 + 6 ASCII chars → 6 tokens.
        assert_eq!(
            evs[5].1["usage"],
            json!({"input_tokens": 1, "output_tokens": 6})
        );
    }

    #[test]
    fn stream_empty_answer_has_one_text_block() {
        let mut e = MessagesEncoder::new("m", "K2", ReasoningMode::Field, 1);
        let mut out = Vec::new();
        e.start(&mut out);
        e.finish("stop", None, &mut out);
        let evs = events(&out);
        assert_eq!(
            names(&evs),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert_eq!(
            evs[2].1,
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        );
        assert_eq!(evs[3].1, json!({"type": "content_block_stop", "index": 0}));
        assert_eq!(
            evs[4].1["usage"],
            json!({"input_tokens": 1, "output_tokens": 0})
        );
    }

    #[test]
    fn stream_error_ending() {
        let mut e = MessagesEncoder::new("m", "K2", ReasoningMode::Field, 1);
        let mut out = Vec::new();
        e.start(&mut out);
        e.content("partial", &mut out);
        e.error("upstream_stream_error", "upstream \"broke\" off", &mut out);
        e.finish("stop", None, &mut out);
        e.content("more", &mut out);
        let evs = events(&out);
        assert_eq!(
            names(&evs),
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "error",
            ]
        );
        assert_eq!(
            evs[4].1,
            json!({"type": "error", "error": {"type": "api_error", "message": "upstream \"broke\" off"}})
        );
        for code in ["upstream_timeout", "request_timeout"] {
            let mut e = MessagesEncoder::new("m", "K2", ReasoningMode::Field, 1);
            let mut out = Vec::new();
            e.start(&mut out);
            e.error(code, "slow", &mut out);
            let evs = events(&out);
            assert_eq!(names(&evs), ["message_start", "ping", "error"]);
            assert_eq!(evs[2].1["error"]["type"], "timeout_error");
            assert!(!e.output_started());
        }
    }

    #[test]
    fn stream_escapes_and_unicode() {
        let mut e = MessagesEncoder::new("id\"1", "mo\\del", ReasoningMode::Field, 0);
        let mut out = Vec::new();
        e.start(&mut out);
        let tricky = "line1\nline2\r\n\u{0}\u{1f} \"q\" \\ 你好 👋 \u{2028}";
        e.reasoning(tricky, &mut out);
        e.content(tricky, &mut out);
        e.tool_call(0, &call("c\"1", "n", "{\"a\":\"\\n\"}"), &mut out);
        e.finish("stop", None, &mut out);
        let evs = events(&out);
        assert_eq!(evs[0].1["message"]["id"], "id\"1");
        assert_eq!(evs[0].1["message"]["model"], "mo\\del");
        assert_eq!(evs[3].1["delta"]["thinking"], tricky);
        assert_eq!(evs[7].1["delta"]["text"], tricky);
        assert_eq!(evs[9].1["content_block"]["id"], "toolu_c\"1");
        assert_eq!(evs[10].1["delta"]["partial_json"], "{\"a\":\"\\n\"}");
    }
}

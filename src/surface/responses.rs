//! The OpenAI Responses surface (`POST /v1/responses`), stateless: its wire types, the
//! conversion of a Responses request into the shared [`ChatRequest`], the stream event
//! encoder and the non-stream `response` object. Pure: no HTTP.
//!
//! * [`parse_request`] converts `instructions` and `input` (a string, or `message`,
//!   `function_call`, `function_call_output`, `custom_tool_call`, `custom_tool_call_output`
//!   and `reasoning` items) into chat messages, and the tools into the shared tool
//!   emulation: `function` tools, the functions of `namespace` tools and `custom` tools
//!   (as functions of one string, `input`), from `tools` and from `additional_tools` input
//!   items (Codex's "Responses lite"). Hosted tools (`web_search`, …) are set apart as
//!   [`Hosted`] for `responses.hosted_tools`. Every 400 names its field
//!   (`input[3].content[0].image_url`). Nothing is stored: `previous_response_id`,
//!   `conversation` and item references are refused, since the client must send the whole
//!   conversation.
//! * [`ResponsesEncoder`] writes the Responses event sequence: `response.created`,
//!   `response.in_progress`, then per output item `response.output_item.added`,
//!   `response.content_part.added`, the deltas (`response.reasoning_text.delta`,
//!   `response.output_text.delta`, `response.function_call_arguments.delta`,
//!   `response.custom_tool_call_input.delta`), their `.done` events and
//!   `response.output_item.done`; then `response.completed` (or `response.incomplete` at
//!   the token limit). A failure ends with `response.failed`. A call of a namespaced tool
//!   is a `function_call` with its `namespace`; a custom tool's call is a
//!   `custom_tool_call`.
//! * [`response_json`] is the non-stream `response` object.
//!
//! Reasoning is a `reasoning` output item whose `content` is the model's raw reasoning as
//! `reasoning_text` (as OpenAI's open-weight models report it). K2Think writes no summary:
//! when the request asks for `reasoning.summary` (and `responses.reasoning_summary` is on)
//! the reasoning is also the item's one `summary_text`, streamed with the
//! `response.reasoning_summary_part.*` and `response.reasoning_summary_text.*` events
//! (Codex CLI shows summaries, not raw reasoning); otherwise `summary` is empty.

use serde_json::{json, Value};

use crate::core::error::ApiError;
use crate::core::events::ToolCall;
use crate::core::ids::random_id;
use crate::core::json::{write_json_str, write_u64};
use crate::core::request::Effort;
use crate::core::Encoder;
use crate::core::ReasoningMode;
use crate::pipeline::complete::CompletionResult;
use crate::pipeline::stream::Usage;
use crate::pipeline::tokens::Estimate;
use crate::surface::chat::request::{ChatRequest, Content, FunctionCall, Message, Part, Role};
use crate::surface::convert::{message, Converted, Origin};
use crate::surface::fields::{self, bad, opt_str, req_str, wrong_type, Obj};
use crate::surface::Reply;

// ---------------------------------------------------------------------------------------
// Request conversion
// ---------------------------------------------------------------------------------------

/// A Responses request: the shared chat request, and the request fields every `response`
/// object repeats (`instructions`, `tools`, `tool_choice`, `temperature`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub chat: ChatRequest,
    pub echo: Obj,
    /// For checks after the conversion: their errors name `input[…]`, not `messages[…]`.
    pub origin: Origin,
    /// How the answer names the calls and writes the reasoning.
    pub dialect: Dialect,
    /// Tools the emulation cannot run, left out of `chat`: `responses.hosted_tools` drops
    /// them or refuses the request.
    pub hosted: Vec<Hosted>,
}

/// What a Responses answer needs beyond the echo: the client's terms for each emulated
/// tool, and whether the reasoning is also its summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dialect {
    /// The emulated tools whose calls are not plain `function_call` items: functions of a
    /// `namespace` tool and `custom` tools.
    pub tools: Vec<ToolOrigin>,
    /// Write the reasoning as the reasoning item's `summary` too (with the
    /// `response.reasoning_summary_*` events). [`parse_request`] sets it when the request
    /// asks for `reasoning.summary` (`auto`, `concise`, `detailed`); the exchange keeps it
    /// only with `responses.reasoning_summary` on.
    pub summary: bool,
}

impl Dialect {
    fn tool(&self, flat: &str) -> Option<&ToolOrigin> {
        self.tools.iter().find(|t| t.flat == flat)
    }
}

/// A namespaced function or a custom tool, as the client declared it, and the flat name
/// the model calls it by ([`flat_name`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOrigin {
    pub flat: String,
    pub namespace: Option<String>,
    pub name: String,
    /// A `custom` tool (free-text input): emulated as a function with one string argument,
    /// `input`, and answered as a `custom_tool_call` item.
    pub custom: bool,
}

/// The name the emulation gives tool `name` of `namespace`: Codex's own flat form of a
/// namespaced tool name (`ToolName::canonical_flat_name` in Codex's
/// `codex-rs/protocol/src/tool_name.rs`), `namespace__name`, with the underscores around
/// the `__` trimmed. Calls go back to the client split again (`namespace` + `name`).
pub fn flat_name(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!(
            "{}__{}",
            ns.trim_end_matches('_'),
            name.trim_start_matches('_')
        ),
        None => name.to_string(),
    }
}

/// The tool types only OpenAI's servers run, or whose calls have item types of their own
/// that this server does not write (`local_shell_call`, `tool_search_call`, …): the
/// emulation cannot offer them. Each is a metric label; any other unknown type is `other`.
const HOSTED_TYPES: &[&str] = &[
    "web_search",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "web_search_2025_08_26",
    "file_search",
    "code_interpreter",
    "image_generation",
    "computer_use_preview",
    "computer_use",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "tool_search",
];

/// A tool the emulation cannot run (see [`HOSTED_TYPES`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hosted {
    /// The tool's type as a metric label: one of [`HOSTED_TYPES`], or `other`.
    pub kind: &'static str,
    /// The tool's `type` as the client wrote it (at most 64 characters), for the 400.
    pub named: String,
    /// Where it is: `tools[8]`, `input[0].tools[2]`, or `tool_choice` (a choice of a hosted
    /// tool, which becomes `auto` when the tools are dropped).
    pub at: String,
}

impl Hosted {
    fn new(named: &str, at: String) -> Hosted {
        Hosted {
            kind: HOSTED_TYPES
                .iter()
                .find(|k| **k == named)
                .copied()
                .unwrap_or("other"),
            named: named.chars().take(64).collect(),
            at,
        }
    }

    /// The 400 of `responses.hosted_tools: refuse`.
    pub fn refusal(&self) -> ApiError {
        bad(
            &format!("{}.type", self.at),
            format!(
                "`{}` tools are not supported; this server runs function, namespace and custom tools only (responses.hosted_tools is refuse)",
                self.named
            ),
        )
    }
}

/// A Responses request body → the shared chat request. Errors are 400s whose `param` names
/// the field.
pub fn parse_request(body: &[u8]) -> Result<Request, ApiError> {
    let root = fields::root(body)?;
    let model = fields::model(&root)?;
    for key in ["previous_response_id", "conversation"] {
        if !matches!(root.get(key), None | Some(Value::Null)) {
            return Err(bad(
                key,
                "this server keeps no responses or conversations; send the whole conversation in `input`",
            ));
        }
    }
    if !matches!(root.get("prompt"), None | Some(Value::Null)) {
        return Err(bad(
            "prompt",
            "stored prompt templates are not supported; send `instructions` and `input`",
        ));
    }
    if fields::opt_bool(&root, "background", false)? {
        return Err(bad(
            "background",
            "background responses are not supported (nothing is stored)",
        ));
    }
    let stream = fields::opt_bool(&root, "stream", false)?;
    let parallel_tool_calls = fields::opt_bool(&root, "parallel_tool_calls", true)?;
    let temperature = fields::number_in(&root, "temperature", 0.0, 2.0)?;
    let top_p = fields::number_in(&root, "top_p", 0.0, 1.0)?;
    let max_output_tokens = fields::positive(&root, "max_output_tokens")?;
    let instructions = opt_str(&root, "instructions", "")?;
    check_fields(&root)?;

    let mut messages = Converted::of("input");
    if let Some(text) = instructions.filter(|t| !t.is_empty()) {
        messages.push(
            message(Role::System, Content::Text(text.to_string())),
            "instructions",
            Vec::new(),
        );
    }
    match root.get("input") {
        Some(Value::String(s)) => messages.push(
            message(Role::User, Content::Text(s.clone())),
            "input",
            Vec::new(),
        ),
        Some(Value::Array(items)) if !items.is_empty() => convert_items(items, &mut messages)?,
        Some(Value::Array(_)) => return Err(bad("input", "must contain at least one item")),
        None | Some(Value::Null) => return Err(bad("input", "is required")),
        Some(v) => {
            return Err(wrong_type(
                "input",
                "a string or an array of input items",
                v,
            ))
        }
    }
    if messages.messages.iter().all(|m| m.role == Role::System) {
        return Err(bad(
            "input",
            "has no message, function call or function call output",
        ));
    }

    let mut tools = Tools::default();
    tools.add_list(root.get("tools"), "tools", None)?;
    if let Some(Value::Array(items)) = root.get("input") {
        for (i, item) in items.iter().enumerate() {
            if item.get("type").and_then(Value::as_str) == Some("additional_tools") {
                tools.add_list(item.get("tools"), &format!("input[{i}].tools"), None)?;
            }
        }
    }
    let tool_choice = convert_tool_choice(root.get("tool_choice"), &mut tools.hosted)?;
    let reasoning_effort = effort(&root)?;
    // `generate_summary` is the field's deprecated name.
    let summary = ["summary", "generate_summary"].iter().any(|key| {
        root.get("reasoning")
            .and_then(|r| r.get(*key))
            .and_then(Value::as_str)
            .is_some_and(|s| s != "none")
    });

    let mut echo = Obj::new();
    let copy = |key: &str, default: Value| {
        root.get(key)
            .cloned()
            .filter(|v| !v.is_null())
            .unwrap_or(default)
    };
    echo.insert("instructions".into(), copy("instructions", Value::Null));
    echo.insert("max_output_tokens".into(), json!(max_output_tokens));
    echo.insert("metadata".into(), copy("metadata", json!({})));
    echo.insert("parallel_tool_calls".into(), json!(parallel_tool_calls));
    echo.insert("previous_response_id".into(), Value::Null);
    echo.insert(
        "reasoning".into(),
        copy("reasoning", json!({"effort": null, "summary": null})),
    );
    // Nothing is kept, whatever the client asked.
    echo.insert("store".into(), json!(false));
    echo.insert("temperature".into(), json!(temperature.unwrap_or(1.0)));
    echo.insert(
        "text".into(),
        copy("text", json!({"format": {"type": "text"}})),
    );
    echo.insert("tool_choice".into(), copy("tool_choice", json!("auto")));
    echo.insert("tools".into(), copy("tools", json!([])));
    echo.insert("top_p".into(), json!(top_p.unwrap_or(1.0)));
    echo.insert("truncation".into(), json!("disabled"));
    echo.insert("user".into(), copy("user", Value::Null));

    let chat = ChatRequest {
        model,
        messages: messages.messages,
        stream,
        temperature,
        top_p,
        max_tokens: max_output_tokens,
        tools: (!tools.chat.is_empty()).then_some(tools.chat),
        tool_choice,
        reasoning_effort,
        ..ChatRequest::default()
    };
    let mut origin = messages.origin;
    origin.set_tools(tools.paths);
    Ok(Request {
        chat,
        echo,
        origin,
        dialect: Dialect {
            tools: tools.origins,
            summary,
        },
        hosted: tools.hosted,
    })
}

/// The fields OpenAI defines that are only checked here (the upstream takes none of them;
/// several are echoed in the `response`), as OpenAI types them. Codex CLI sends `include`,
/// `store`, `prompt_cache_key`, `reasoning: {effort, summary}`, `text: {verbosity,
/// format}` and `parallel_tool_calls`.
fn check_fields(root: &Obj) -> Result<(), ApiError> {
    fields::check_metadata("metadata", root.get("metadata"))?;
    fields::check_str("user", root.get("user"))?;
    fields::check_str_list("include", root.get("include"))?;
    fields::check_bool("store", root.get("store"))?;
    fields::check_str("prompt_cache_key", root.get("prompt_cache_key"))?;
    fields::check_str("safety_identifier", root.get("safety_identifier"))?;
    fields::check_str("service_tier", root.get("service_tier"))?;
    fields::check_one_of("truncation", root.get("truncation"), &["auto", "disabled"])?;
    fields::check_int_in("max_tool_calls", root.get("max_tool_calls"), 1, i64::MAX)?;
    fields::check_int_in("top_logprobs", root.get("top_logprobs"), 0, 20)?;
    if let Some(reasoning) = fields::check_object("reasoning", root.get("reasoning"))? {
        const SUMMARIES: &[&str] = &["auto", "concise", "detailed", "none"];
        for key in ["summary", "generate_summary"] {
            let at = format!("reasoning.{key}");
            fields::check_one_of(&at, reasoning.get(key), SUMMARIES)?;
        }
    }
    if let Some(text) = fields::check_object("text", root.get("text"))? {
        fields::check_one_of(
            "text.verbosity",
            text.get("verbosity"),
            &["low", "medium", "high"],
        )?;
        fields::check_format("text.format", text.get("format"), false)?;
    }
    Ok(())
}

/// `reasoning.effort` (`none`, `minimal`, `low`, `medium`, `high`, `xhigh`).
fn effort(root: &Obj) -> Result<Option<Effort>, ApiError> {
    let Some(reasoning) = root.get("reasoning").filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let reasoning = reasoning
        .as_object()
        .ok_or_else(|| wrong_type("reasoning", "an object", reasoning))?;
    match opt_str(reasoning, "effort", "reasoning")? {
        None => Ok(None),
        Some(name) => Effort::from_client(name).map(Some).ok_or_else(|| {
            bad(
                "reasoning.effort",
                format!("unknown effort `{name}`; use none, minimal, low, medium, high or xhigh"),
            )
        }),
    }
}

/// The text of a `reasoning` input item: its `reasoning_text` content, else its
/// `summary_text` parts. `None` when it has neither (only `encrypted_content`, say).
fn reasoning_text(obj: &Obj, at: &str) -> Result<Option<String>, ApiError> {
    for (key, part_type) in [("content", "reasoning_text"), ("summary", "summary_text")] {
        let list = match obj.get(key) {
            None | Some(Value::Null) => continue,
            Some(Value::Array(a)) => a,
            Some(v) => return Err(wrong_type(&format!("{at}.{key}"), "an array", v)),
        };
        let mut texts = Vec::new();
        for (j, p) in list.iter().enumerate() {
            let pat = format!("{at}.{key}[{j}]");
            let (pobj, kind) = part_of(p, &pat)?;
            if kind == part_type {
                texts.push(req_str(pobj, "text", &pat)?);
            }
        }
        if !texts.is_empty() {
            return Ok(Some(texts.join("\n")));
        }
    }
    Ok(None)
}

/// `input` items → chat messages. Consecutive `function_call` items (and the assistant
/// message before them) become one assistant message; images from function call outputs
/// go into a user message after the run of outputs.
fn convert_items(items: &[Value], out: &mut Converted) -> Result<(), ApiError> {
    // Images from function call outputs, each with the client's path of its part.
    let mut carried: Vec<(Part, String)> = Vec::new();
    // A `reasoning` item's text, for the assistant message the next items make.
    let mut reasoning: Option<String> = None;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let obj = item
            .as_object()
            .ok_or_else(|| wrong_type(&at, "an input item object", item))?;
        let kind = match opt_str(obj, "type", &at)? {
            Some(k) => k,
            None if obj.contains_key("role") => "message",
            None => return Err(bad(&format!("{at}.type"), "is required")),
        };
        let output = matches!(kind, "function_call_output" | "custom_tool_call_output");
        if !output && !carried.is_empty() {
            push_carried(std::mem::take(&mut carried), out);
        }
        match kind {
            "message" => {
                let (mut m, parts) = input_message(obj, &at)?;
                if m.role == Role::Assistant {
                    m.reasoning_content = reasoning.take();
                }
                out.push(m, at, parts);
            }
            // A call of a namespaced tool carries its `namespace`; the emulation knows the
            // tool by its flat name.
            "function_call" => {
                let arguments = match obj.get("arguments") {
                    None | Some(Value::Null) => "{}".to_string(),
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Object(_)) => v.to_string(),
                    Some(v) => {
                        return Err(wrong_type(
                            &format!("{at}.arguments"),
                            "a JSON string",
                            v,
                        ))
                    }
                };
                push_call(obj, &at, arguments, &mut reasoning, out)?;
            }
            // A custom tool is emulated as a function whose one argument is the input.
            "custom_tool_call" => {
                let input = req_str(obj, "input", &at)?;
                let arguments = json!({ "input": input }).to_string();
                push_call(obj, &at, arguments, &mut reasoning, out)?;
            }
            "function_call_output" | "custom_tool_call_output" => {
                let m = call_output(obj, &at, &mut carried)?;
                out.push(m, at, Vec::new());
            }
            // Codex's "Responses lite" declares its tools in these; [`Tools`] reads them.
            "additional_tools" => {}
            // Earlier reasoning goes back upstream as the thinking field of the assistant
            // message that follows it.
            "reasoning" => {
                if let Some(t) = reasoning_text(obj, &at)? {
                    reasoning = Some(match reasoning.take() {
                        Some(r) => format!("{r}\n{t}"),
                        None => t,
                    });
                }
            }
            "item_reference" => {
                return Err(bad(
                    &at,
                    "item references need stored items, and this server keeps none; send the item itself",
                ))
            }
            other => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!(
                        "input item type `{other}` is not supported (supported: message, function_call, function_call_output, custom_tool_call, custom_tool_call_output, reasoning, additional_tools)"
                    ),
                ))
            }
        }
    }
    if !carried.is_empty() {
        push_carried(carried, out);
    }
    Ok(())
}

/// A `function_call` or `custom_tool_call` item, with its arguments as the emulation sees
/// them, joined to the assistant turn before it (or starting one, with the reasoning that
/// came before it).
fn push_call(
    obj: &Obj,
    at: &str,
    arguments: String,
    reasoning: &mut Option<String>,
    out: &mut Converted,
) -> Result<(), ApiError> {
    let name = req_str(obj, "name", at)?;
    let namespace = opt_str(obj, "namespace", at)?.filter(|n| !n.is_empty());
    let call = crate::surface::chat::request::ToolCall {
        id: req_str(obj, "call_id", at)?.to_string(),
        kind: "function".to_string(),
        function: FunctionCall {
            name: flat_name(namespace, name),
            arguments,
        },
    };
    match out.messages.last_mut() {
        Some(m) if m.role == Role::Assistant && reasoning.is_none() => m.tool_calls.push(call),
        _ => {
            let m = Message {
                tool_calls: vec![call],
                reasoning_content: reasoning.take(),
                ..message(Role::Assistant, Content::None)
            };
            out.push(m, at, Vec::new());
        }
    }
    Ok(())
}

/// The user message that carries the images of function call outputs.
fn push_carried(carried: Vec<(Part, String)>, out: &mut Converted) {
    let at = carried.first().map(|(_, p)| p.clone()).unwrap_or_default();
    let (parts, paths): (Vec<Part>, Vec<String>) = carried.into_iter().unzip();
    out.push(message(Role::User, Content::Parts(parts)), at, paths);
}

/// A `message` item (`role` + a string or content parts), and the path of each part.
fn input_message(obj: &Obj, at: &str) -> Result<(Message, Vec<String>), ApiError> {
    let role = match req_str(obj, "role", at)? {
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "system" => Role::System,
        "developer" => Role::Developer,
        other => {
            return Err(bad(
                &format!("{at}.role"),
                format!(
                    "must be \"user\", \"assistant\", \"system\" or \"developer\", got \"{other}\""
                ),
            ))
        }
    };
    let cat = format!("{at}.content");
    let parts = match obj.get("content") {
        Some(Value::String(s)) => return Ok((message(role, Content::Text(s.clone())), Vec::new())),
        Some(Value::Array(a)) => a,
        None | Some(Value::Null) => return Err(bad(&cat, "is required")),
        Some(v) => return Err(wrong_type(&cat, "a string or an array of content parts", v)),
    };
    let mut out = Vec::with_capacity(parts.len());
    let mut paths = Vec::with_capacity(parts.len());
    for (j, p) in parts.iter().enumerate() {
        let pat = format!("{cat}[{j}]");
        let (pobj, kind) = part_of(p, &pat)?;
        let part = match (role, kind) {
            (_, "input_text") | (Role::Assistant, "output_text") => {
                Part::Text(req_str(pobj, "text", &pat)?.to_string())
            }
            (Role::Assistant, "refusal") => Part::Text(req_str(pobj, "refusal", &pat)?.to_string()),
            (Role::User, "input_image") => image_part(pobj, &pat)?,
            (Role::User, "input_file") => file_part(pobj, &pat)?,
            (Role::Assistant, _) => {
                return Err(unsupported_part(
                    &pat,
                    kind,
                    "output_text, refusal, input_text",
                ))
            }
            (Role::User, _) => {
                return Err(unsupported_part(
                    &pat,
                    kind,
                    "input_text, input_image, input_file",
                ))
            }
            _ => return Err(unsupported_part(&pat, kind, "input_text")),
        };
        out.push(part);
        paths.push(pat);
    }
    let content = if out.iter().all(|p| matches!(p, Part::Text(_))) {
        Content::Text(Content::Parts(out).text())
    } else {
        Content::Parts(out)
    };
    Ok((message(role, content), paths))
}

fn part_of<'a>(v: &'a Value, at: &str) -> Result<(&'a Obj, &'a str), ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| wrong_type(at, "a content part object", v))?;
    Ok((obj, req_str(obj, "type", at)?))
}

fn unsupported_part(at: &str, kind: &str, supported: &str) -> ApiError {
    bad(
        &format!("{at}.type"),
        format!("content part type `{kind}` is not supported here (supported: {supported})"),
    )
}

/// `input_image`: `image_url` (a URL or a `data:` URL); `file_id` needs a file store.
fn image_part(obj: &Obj, at: &str) -> Result<Part, ApiError> {
    match opt_str(obj, "image_url", at)? {
        Some(url) => Ok(Part::Image {
            url: url.to_string(),
            detail: opt_str(obj, "detail", at)?.map(str::to_string),
        }),
        None if obj.get("file_id").is_some_and(|v| !v.is_null()) => Err(bad(
            &format!("{at}.file_id"),
            "file ids are not supported (this server has no file store); send `image_url` as a URL or a data: URL",
        )),
        None => Err(bad(&format!("{at}.image_url"), "is required")),
    }
}

/// `input_file`: inline `file_data` (checked with every other file later); `file_url` is
/// not fetched.
fn file_part(obj: &Obj, at: &str) -> Result<Part, ApiError> {
    if obj.get("file_url").is_some_and(|v| !v.is_null()) {
        return Err(bad(
            &format!("{at}.file_url"),
            "file URLs are not fetched; send the file inline as `file_data`",
        ));
    }
    Ok(Part::File {
        filename: opt_str(obj, "filename", at)?.map(str::to_string),
        file_data: opt_str(obj, "file_data", at)?.map(str::to_string),
        file_id: opt_str(obj, "file_id", at)?.map(str::to_string),
    })
}

/// A `function_call_output` item → a `tool` message (text); its images go to `carried`.
fn call_output(
    obj: &Obj,
    at: &str,
    carried: &mut Vec<(Part, String)>,
) -> Result<Message, ApiError> {
    let id = req_str(obj, "call_id", at)?;
    let oat = format!("{at}.output");
    let text = match obj.get("output") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut texts: Vec<&str> = Vec::new();
            let mut images = 0usize;
            for (k, p) in parts.iter().enumerate() {
                let pat = format!("{oat}[{k}]");
                let (pobj, kind) = part_of(p, &pat)?;
                match kind {
                    "input_text" => texts.push(req_str(pobj, "text", &pat)?),
                    "input_image" => {
                        carried.push((image_part(pobj, &pat)?, pat));
                        images += 1;
                    }
                    other => return Err(unsupported_part(&pat, other, "input_text, input_image")),
                }
            }
            fields::result_text(&texts, images, "function call output")
        }
        None | Some(Value::Null) => return Err(bad(&oat, "is required")),
        Some(v) => return Err(wrong_type(&oat, "a string or an array of content parts", v)),
    };
    Ok(Message {
        tool_call_id: Some(id.to_string()),
        ..message(Role::Tool, Content::Text(text))
    })
}

/// The request's tools for the shared emulation: `tools`, and the tools of the
/// `additional_tools` input items (where Codex's "Responses lite" declares them), as chat
/// function tools. A `namespace` tool's functions and custom tools become functions under
/// their [`flat_name`]; a `custom` tool (free-text input, maybe with a grammar) becomes a
/// function with one string argument, `input`. Other types are [`Hosted`].
#[derive(Debug, Default)]
struct Tools {
    chat: Vec<Value>,
    /// The client's path of each chat tool (`tools[4].tools[1]`).
    paths: Vec<String>,
    origins: Vec<ToolOrigin>,
    hosted: Vec<Hosted>,
}

impl Tools {
    /// The tools of the list `v`, found at `key` (`tools`, `input[0].tools`), inside
    /// `namespace` when it is one's.
    fn add_list(
        &mut self,
        v: Option<&Value>,
        key: &str,
        namespace: Option<&str>,
    ) -> Result<(), ApiError> {
        let Some(list) = fields::objects(v, key, "a tool object")? else {
            return Ok(());
        };
        for (at, obj) in list {
            self.add(obj, at, namespace)?;
        }
        Ok(())
    }

    fn add(&mut self, obj: &Obj, at: String, namespace: Option<&str>) -> Result<(), ApiError> {
        let kind = req_str(obj, "type", &at)?;
        let custom = match kind {
            "function" => false,
            "custom" => true,
            "namespace" if namespace.is_none() => {
                let name = req_str(obj, "name", &at)?;
                opt_str(obj, "description", &at)?;
                let key = format!("{at}.tools");
                if !matches!(obj.get("tools"), Some(Value::Array(_))) {
                    return Err(match obj.get("tools") {
                        None | Some(Value::Null) => bad(&key, "is required"),
                        Some(v) => wrong_type(&key, "an array of tools", v),
                    });
                }
                return self.add_list(obj.get("tools"), &key, Some(name));
            }
            "namespace" => {
                return Err(bad(
                    &format!("{at}.type"),
                    "a namespace cannot hold another namespace",
                ))
            }
            other => {
                self.hosted.push(Hosted::new(other, at));
                return Ok(());
            }
        };
        let name = req_str(obj, "name", &at)?;
        let description = opt_str(obj, "description", &at)?;
        let flat = flat_name(namespace, name);
        let tool = if custom {
            let description = custom_description(description, obj.get("format"), &at)?;
            let parameters = json!({
                "type": "object",
                "properties": {"input": {
                    "type": "string",
                    "description": "The whole input, as free text (not JSON).",
                }},
                "required": ["input"],
            });
            fields::function_tool(&flat, Some(&description), Some(parameters))
        } else {
            let parameters = match obj.get("parameters") {
                None | Some(Value::Null) => None,
                Some(p @ Value::Object(_)) => Some(p.clone()),
                Some(v) => {
                    return Err(wrong_type(
                        &format!("{at}.parameters"),
                        "a JSON schema object",
                        v,
                    ))
                }
            };
            fields::function_tool(&flat, description, parameters)
        };
        if custom || namespace.is_some() {
            self.origins.push(ToolOrigin {
                flat,
                namespace: namespace.map(str::to_string),
                name: name.to_string(),
                custom,
            });
        }
        self.chat.push(tool);
        self.paths.push(at);
        Ok(())
    }
}

/// A custom tool's description for the emulation: the client's, and how its free-text
/// input travels; with a `grammar` format, the grammar the input must follow.
fn custom_description(
    description: Option<&str>,
    format: Option<&Value>,
    at: &str,
) -> Result<String, ApiError> {
    let mut text = description.unwrap_or_default().trim().to_string();
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str("This tool takes free text, not JSON: put its whole input in `input`.");
    let fat = format!("{at}.format");
    let Some(format) = fields::check_object(&fat, format)? else {
        return Ok(text);
    };
    match req_str(format, "type", &fat)? {
        "text" => {}
        "grammar" => {
            let syntax = req_str(format, "syntax", &fat)?;
            let definition = req_str(format, "definition", &fat)?;
            text.push_str(&format!(
                " The input must match this {syntax} grammar:\n{definition}"
            ));
        }
        other => {
            return Err(bad(
                &format!("{fat}.type"),
                format!("must be \"text\" or \"grammar\", got \"{other}\""),
            ))
        }
    }
    Ok(text)
}

/// `tool_choice` → the chat form. A function or custom tool is chosen by its [`flat_name`]
/// (`namespace` + `name`); a choice of a hosted tool type goes to `hosted` (it is `auto`
/// once that tool is dropped).
fn convert_tool_choice(
    v: Option<&Value>,
    hosted: &mut Vec<Hosted>,
) -> Result<Option<Value>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "auto" | "none" | "required" => Ok(Some(json!(s))),
            other => Err(bad(
                "tool_choice",
                format!("must be \"auto\", \"none\", \"required\" or a function choice, got \"{other}\""),
            )),
        },
        Some(Value::Object(obj)) => match req_str(obj, "type", "tool_choice")? {
            "function" | "custom" => {
                let name = req_str(obj, "name", "tool_choice")?;
                let namespace = opt_str(obj, "namespace", "tool_choice")?;
                let name = flat_name(namespace.filter(|n| !n.is_empty()), name);
                Ok(Some(json!({"type": "function", "function": {"name": name}})))
            }
            t if HOSTED_TYPES.contains(&t) => {
                hosted.push(Hosted::new(t, "tool_choice".to_string()));
                Ok(None)
            }
            other => Err(bad(
                "tool_choice.type",
                format!("`{other}` is not supported; use \"function\" or \"custom\" (with `name`) or a string mode"),
            )),
        },
        Some(v) => Err(wrong_type("tool_choice", "a string or an object", v)),
    }
}

// ---------------------------------------------------------------------------------------
// The response object
// ---------------------------------------------------------------------------------------

/// `usage`: the upstream's counts when it gave them, else estimates.
fn usage_json(
    usage: Option<&Usage>,
    input_estimate: u64,
    output: &Estimate,
    reasoning: &Estimate,
) -> Value {
    let input = usage
        .map(|u| u.prompt_tokens)
        .filter(|&n| n > 0)
        .unwrap_or(input_estimate);
    let output_tokens = usage
        .map(|u| u.completion_tokens)
        .filter(|&n| n > 0)
        .unwrap_or(output.tokens());
    let reasoning_tokens = usage
        .and_then(|u| u.completion_tokens_details.as_ref())
        .and_then(|d| d.reasoning_tokens)
        .unwrap_or(reasoning.tokens())
        .min(output_tokens);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input + output_tokens,
    })
}

/// A `response` object: the request's echo, then `status`, `output` and the rest.
fn response_object(
    reply: &Reply,
    status: &str,
    output: Vec<Value>,
    extra: &[(&str, Value)],
) -> Value {
    let mut v = reply.echo.clone();
    v.insert("id".into(), json!(reply.id));
    v.insert("object".into(), json!("response"));
    v.insert("created_at".into(), json!(reply.created));
    v.insert("status".into(), json!(status));
    v.insert("error".into(), Value::Null);
    v.insert("incomplete_details".into(), Value::Null);
    v.insert("model".into(), json!(reply.model));
    v.insert("output".into(), Value::Array(output));
    v.insert("usage".into(), Value::Null);
    for (k, x) in extra {
        v.insert((*k).into(), x.clone());
    }
    Value::Object(v)
}

/// `status` and the extra fields of a response that ended with `finish_reason`.
fn end_of(finish_reason: &str) -> (&'static str, Option<(&'static str, Value)>) {
    match finish_reason {
        "length" => (
            "incomplete",
            Some(("incomplete_details", json!({"reason": "max_output_tokens"}))),
        ),
        _ => ("completed", None),
    }
}

/// A reasoning item: the reasoning as `reasoning_text` content and, with `summary`, as its
/// one `summary_text` part too.
fn reasoning_item(id: &str, text: &str, status: &str, summary: bool) -> Value {
    let summary = if summary {
        json!([summary_part(text)])
    } else {
        json!([])
    };
    json!({
        "type": "reasoning",
        "id": id,
        "summary": summary,
        "content": [Kind::Reasoning.part(text)],
        "status": status,
    })
}

fn summary_part(text: &str) -> Value {
    json!({"type": "summary_text", "text": text})
}

fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message",
        "id": id,
        "status": status,
        "role": "assistant",
        "content": [text_part(text)],
    })
}

/// The output item of an emulated call, in the client's terms: a `function_call`, with
/// the tool's `namespace` when it came from one (the call's `name` is then the name inside
/// it, which is how Codex reads a namespaced call: `ToolName::new(namespace, name)` in
/// `codex-rs/core/src/tools/router.rs`), or a `custom_tool_call` whose `input` is the
/// emulated `input` argument. `input`/`arguments` hold `""` for the `added` event.
fn call_item(id: &str, call: &ToolCall, status: &str, dialect: &Dialect, empty: bool) -> Value {
    let origin = dialect.tool(&call.name);
    let mut item = match origin {
        Some(t) if t.custom => json!({
            "type": "custom_tool_call",
            "id": id,
            "call_id": call.id,
            "name": t.name,
            "input": if empty { String::new() } else { custom_input(&call.arguments) },
            "status": status,
        }),
        _ => json!({
            "type": "function_call",
            "id": id,
            "call_id": call.id,
            "name": origin.map_or(call.name.as_str(), |t| t.name.as_str()),
            "arguments": if empty { "" } else { call.arguments.as_str() },
            "status": status,
        }),
    };
    if let Some(ns) = origin.and_then(|t| t.namespace.as_deref()) {
        item["namespace"] = json!(ns);
    }
    item
}

/// A custom tool's input from the emulated call's arguments: the `input` string (another
/// JSON value as its JSON text); arguments without `input` go as they are.
fn custom_input(arguments: &str) -> String {
    match serde_json::from_str::<Value>(arguments) {
        Ok(Value::Object(mut m)) => match m.remove("input") {
            Some(Value::String(s)) => s,
            Some(v) => v.to_string(),
            None => arguments.to_string(),
        },
        _ => arguments.to_string(),
    }
}

/// Whether the call is of a custom tool (a `custom_tool_call` item).
fn is_custom(call: &ToolCall, dialect: &Dialect) -> bool {
    dialect.tool(&call.name).is_some_and(|t| t.custom)
}

/// The non-stream answer: a `response` object.
pub fn response_json(result: &CompletionResult, reply: &Reply) -> Vec<u8> {
    let (status, extra) = end_of(&result.finish_reason);
    let mut output = Vec::new();
    let mut reasoning = Estimate::default();
    reasoning.add(&result.reasoning);
    let mut generated = reasoning;
    if !result.reasoning.is_empty() && reply.reasoning != ReasoningMode::Drop {
        output.push(reasoning_item(
            &random_id("rs_"),
            &result.reasoning,
            "completed",
            reply.dialect.summary,
        ));
    }
    if !result.content.is_empty() || result.tool_calls.is_empty() {
        generated.add(&result.content);
        output.push(message_item(&random_id("msg_"), &result.content, status));
    }
    for c in &result.tool_calls {
        generated.add(&c.name);
        generated.add(&c.arguments);
        let prefix = if is_custom(c, &reply.dialect) {
            "ctc_"
        } else {
            "fc_"
        };
        output.push(call_item(
            &random_id(prefix),
            c,
            "completed",
            &reply.dialect,
            false,
        ));
    }
    let usage = usage_json(
        result.usage.as_ref(),
        reply.input_tokens,
        &generated,
        &reasoning,
    );
    let mut fields = vec![("usage", usage)];
    fields.extend(extra);
    let v = response_object(reply, status, output, &fields);
    serde_json::to_vec(&v).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Stream encoder
// ---------------------------------------------------------------------------------------

/// `event: <name>\ndata: {"type":<name>,"sequence_number":N,<fields>}\n\n`, numbering
/// the events from `seq`.
fn write_event(seq: &mut u64, out: &mut Vec<u8>, name: &str, fields: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: {\"type\":\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\",\"sequence_number\":");
    write_u64(out, *seq);
    *seq += 1;
    fields(out);
    out.extend_from_slice(b"}\n\n");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reasoning,
    Message,
}

impl Kind {
    /// The item's one content part.
    fn part(self, text: &str) -> Value {
        match self {
            Kind::Reasoning => json!({"type": "reasoning_text", "text": text}),
            Kind::Message => text_part(text),
        }
    }

    /// The whole item (`summary`: a reasoning item's summary is its text too).
    fn item(self, id: &str, text: &str, status: &str, summary: bool) -> Value {
        match self {
            Kind::Reasoning => reasoning_item(id, text, status, summary),
            Kind::Message => message_item(id, text, status),
        }
    }
}

/// The reasoning or message item being written.
#[derive(Debug)]
struct Open {
    kind: Kind,
    id: String,
    index: usize,
    text: String,
}

/// The Responses stream events for one answer (see the module docs). Every event carries
/// its `sequence_number`; the finished items are kept for the final `response` object.
#[derive(Debug)]
pub struct ResponsesEncoder {
    reply: Reply,
    seq: u64,
    /// Finished output items.
    output: Vec<Value>,
    open: Option<Open>,
    generated: Estimate,
    reasoning: Estimate,
    started: bool,
    ended: bool,
}

impl ResponsesEncoder {
    pub fn new(reply: Reply) -> Self {
        ResponsesEncoder {
            reply,
            seq: 0,
            output: Vec::new(),
            open: None,
            generated: Estimate::default(),
            reasoning: Estimate::default(),
            started: false,
            ended: false,
        }
    }

    fn event(&mut self, out: &mut Vec<u8>, name: &str, fields: impl FnOnce(&mut Vec<u8>)) {
        write_event(&mut self.seq, out, name, fields)
    }

    /// An event whose other fields are a JSON object.
    fn event_json(&mut self, out: &mut Vec<u8>, name: &str, v: Value) {
        self.event(out, name, |o| {
            if let Value::Object(m) = v {
                for (k, x) in m {
                    o.push(b',');
                    write_json_str(o, &k);
                    o.push(b':');
                    // Writing a `Value` into a Vec cannot fail.
                    let _ = serde_json::to_writer(&mut *o, &x);
                }
            }
        });
    }

    /// `,"item_id":…,"output_index":N,"content_index":0`.
    fn item_ref(o: &mut Vec<u8>, id: &str, index: usize, content: bool) {
        o.extend_from_slice(b",\"item_id\":");
        write_json_str(o, id);
        o.extend_from_slice(b",\"output_index\":");
        write_u64(o, index as u64);
        if content {
            o.extend_from_slice(b",\"content_index\":0");
        }
    }

    fn open_item(&mut self, kind: Kind, out: &mut Vec<u8>) {
        self.close(out, "completed");
        let index = self.output.len();
        let id = random_id(match kind {
            Kind::Reasoning => "rs_",
            Kind::Message => "msg_",
        });
        // An item starts with no content part (and no summary part); the parts are
        // announced next.
        let mut item = kind.item(&id, "", "in_progress", false);
        item["content"] = json!([]);
        let part = kind.part("");
        self.event_json(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": item}),
        );
        if self.summarizes(kind) {
            self.event_json(
                out,
                "response.reasoning_summary_part.added",
                json!({"item_id": id, "output_index": index, "summary_index": 0, "part": summary_part("")}),
            );
        }
        self.event_json(
            out,
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
        );
        self.open = Some(Open {
            kind,
            id,
            index,
            text: String::new(),
        });
        self.started = true;
    }

    /// Finish the open reasoning or message item, if any, with its `.done` events.
    fn close(&mut self, out: &mut Vec<u8>, status: &str) {
        let Some(open) = self.open.take() else {
            return;
        };
        let done = match open.kind {
            Kind::Reasoning => "response.reasoning_text.done",
            Kind::Message => "response.output_text.done",
        };
        let summary = self.summarizes(open.kind);
        let part = open.kind.part(&open.text);
        let item = open.kind.item(&open.id, &open.text, status, summary);
        let mut fields = json!({"item_id": open.id, "output_index": open.index, "content_index": 0, "text": open.text});
        if open.kind == Kind::Message {
            fields["logprobs"] = json!([]);
        }
        self.event_json(out, done, fields);
        self.event_json(
            out,
            "response.content_part.done",
            json!({"item_id": open.id, "output_index": open.index, "content_index": 0, "part": part}),
        );
        if summary {
            self.event_json(
                out,
                "response.reasoning_summary_text.done",
                json!({"item_id": open.id, "output_index": open.index, "summary_index": 0, "text": open.text}),
            );
            self.event_json(
                out,
                "response.reasoning_summary_part.done",
                json!({"item_id": open.id, "output_index": open.index, "summary_index": 0, "part": summary_part(&open.text)}),
            );
        }
        self.event_json(
            out,
            "response.output_item.done",
            json!({"output_index": open.index, "item": item}),
        );
        self.output.push(item);
    }

    fn delta(&mut self, kind: Kind, text: &str, out: &mut Vec<u8>) {
        if self.open.as_ref().map(|o| o.kind) != Some(kind) {
            self.open_item(kind, out);
        }
        let Some(open) = self.open.as_mut() else {
            return;
        };
        open.text.push_str(text);
        let name = match kind {
            Kind::Reasoning => "response.reasoning_text.delta",
            Kind::Message => "response.output_text.delta",
        };
        // `self.seq` and `self.open` are borrowed apart: no copy of the item id per delta.
        write_event(&mut self.seq, out, name, |o| {
            Self::item_ref(o, &open.id, open.index, true);
            o.extend_from_slice(b",\"delta\":");
            write_json_str(o, text);
            if kind == Kind::Message {
                o.extend_from_slice(b",\"logprobs\":[]");
            }
        });
        if kind == Kind::Reasoning && self.reply.dialect.summary {
            write_event(
                &mut self.seq,
                out,
                "response.reasoning_summary_text.delta",
                |o| {
                    Self::item_ref(o, &open.id, open.index, false);
                    o.extend_from_slice(b",\"summary_index\":0,\"delta\":");
                    write_json_str(o, text);
                },
            );
        }
    }

    /// Whether items of `kind` carry a summary (reasoning, when the dialect says so).
    fn summarizes(&self, kind: Kind) -> bool {
        kind == Kind::Reasoning && self.reply.dialect.summary
    }

    /// The finished items and, on a failure, the open item as it stood.
    fn output_so_far(&self) -> Vec<Value> {
        let mut output = self.output.clone();
        if let Some(open) = &self.open {
            output.push(open.kind.item(
                &open.id,
                &open.text,
                "incomplete",
                self.summarizes(open.kind),
            ));
        }
        output
    }
}

impl Encoder for ResponsesEncoder {
    /// `response.created` and `response.in_progress`, both with the response in progress.
    fn start(&mut self, out: &mut Vec<u8>) {
        let response = response_object(&self.reply, "in_progress", Vec::new(), &[]);
        self.event_json(out, "response.created", json!({"response": response}));
        self.event_json(out, "response.in_progress", json!({"response": response}));
    }

    fn reasoning(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() || self.ended {
            return;
        }
        self.generated.add(text);
        self.reasoning.add(text);
        if self.reply.reasoning == ReasoningMode::Drop {
            return;
        }
        self.delta(Kind::Reasoning, text, out);
    }

    fn content(&mut self, text: &str, out: &mut Vec<u8>) {
        if text.is_empty() || self.ended {
            return;
        }
        self.generated.add(text);
        self.delta(Kind::Message, text, out);
    }

    /// A whole call item: added (empty arguments), one arguments delta, the arguments
    /// done, the item done. A custom tool's call is a `custom_tool_call` item whose input
    /// goes in `response.custom_tool_call_input.delta` / `.done`.
    fn tool_call(&mut self, _index: usize, call: &ToolCall, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.close(out, "completed");
        self.generated.add(&call.name);
        self.generated.add(&call.arguments);
        self.started = true;
        let index = self.output.len();
        let custom = is_custom(call, &self.reply.dialect);
        let id = random_id(if custom { "ctc_" } else { "fc_" });
        let added = call_item(&id, call, "in_progress", &self.reply.dialect, true);
        self.event_json(
            out,
            "response.output_item.added",
            json!({"output_index": index, "item": added}),
        );
        let item = call_item(&id, call, "completed", &self.reply.dialect, false);
        if custom {
            let input = item["input"].as_str().unwrap_or_default();
            self.event(out, "response.custom_tool_call_input.delta", |o| {
                Self::item_ref(o, &id, index, false);
                o.extend_from_slice(b",\"delta\":");
                write_json_str(o, input);
            });
            self.event_json(
                out,
                "response.custom_tool_call_input.done",
                json!({"item_id": id, "output_index": index, "input": input}),
            );
        } else {
            self.event(out, "response.function_call_arguments.delta", |o| {
                Self::item_ref(o, &id, index, false);
                o.extend_from_slice(b",\"delta\":");
                write_json_str(o, &call.arguments);
            });
            self.event_json(
                out,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": index, "name": item["name"], "arguments": call.arguments}),
            );
        }
        self.event_json(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": item}),
        );
        self.output.push(item);
    }

    /// `response.completed`, or `response.incomplete` when the token limit cut the answer.
    fn finish(&mut self, finish_reason: &str, usage: Option<&Usage>, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let (status, extra) = end_of(finish_reason);
        let item_status = if status == "completed" {
            "completed"
        } else {
            "incomplete"
        };
        if self.output.is_empty() && self.open.is_none() {
            // A response always has output: one empty message.
            self.open_item(Kind::Message, out);
        }
        self.close(out, item_status);
        let usage = usage_json(
            usage,
            self.reply.input_tokens,
            &self.generated,
            &self.reasoning,
        );
        let mut fields = vec![("usage", usage)];
        fields.extend(extra);
        let output = std::mem::take(&mut self.output);
        let response = response_object(&self.reply, status, output, &fields);
        let name = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.event_json(out, name, json!({"response": response}));
    }

    /// `response.failed` with the error and the output so far (the open item marked
    /// `incomplete`), and nothing after it.
    fn error(&mut self, code: &str, message: &str, out: &mut Vec<u8>) {
        if self.ended {
            return;
        }
        self.ended = true;
        let output = self.output_so_far();
        let error = json!({"code": code, "message": message});
        let response = response_object(&self.reply, "failed", output, &[("error", error)]);
        self.event_json(out, "response.failed", json!({"response": response}));
    }

    fn output_started(&self) -> bool {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::stream::ChatStream;
    use crate::provider::k2think::decode::UpstreamFormat;
    use crate::surface::testing::{self, call, names, result};
    use crate::surface::Wire;

    fn parse(v: Value) -> Request {
        parse_request(v.to_string().as_bytes()).expect("valid request")
    }

    fn err(v: Value) -> ApiError {
        parse_request(v.to_string().as_bytes()).expect_err("invalid request")
    }

    fn items(input: Value) -> Vec<Message> {
        parse(json!({"model": "m", "input": input})).chat.messages
    }

    fn text_of(m: &Message) -> &str {
        match &m.content {
            Content::Text(t) => t,
            other => panic!("expected text content, got {other:?}"),
        }
    }

    fn reply(reasoning: ReasoningMode) -> Reply {
        let echo = parse(json!({"model": "m", "input": "x", "instructions": "be brief"})).echo;
        Reply {
            id: "resp_1".into(),
            created: 7,
            model: "K2".into(),
            reasoning,
            input_tokens: 11,
            include_usage: false,
            echo,
            dialect: Dialect::default(),
        }
    }

    #[test]
    fn a_string_input_with_instructions_and_the_echo() {
        let r = parse(json!({
            "model": "K2", "input": "hi", "instructions": "be brief", "stream": true,
            "temperature": 1.5, "top_p": 0.5, "max_output_tokens": 99, "store": true,
            "include": ["reasoning.encrypted_content"], "metadata": {"k": "v"},
            "parallel_tool_calls": false, "truncation": "auto", "unknown": 1,
        }));
        let c = &r.chat;
        assert_eq!((c.model.as_str(), c.stream), ("K2", true));
        assert_eq!(
            (c.temperature, c.top_p, c.max_tokens),
            (Some(1.5), Some(0.5), Some(99))
        );
        assert_eq!(c.messages.len(), 2);
        assert_eq!(
            (c.messages[0].role, text_of(&c.messages[0])),
            (Role::System, "be brief")
        );
        assert_eq!(
            (c.messages[1].role, text_of(&c.messages[1])),
            (Role::User, "hi")
        );
        let e = &r.echo;
        assert_eq!(e["instructions"], "be brief");
        assert_eq!(e["max_output_tokens"], 99);
        assert_eq!(e["metadata"], json!({"k": "v"}));
        assert_eq!(e["parallel_tool_calls"], false);
        assert_eq!(e["store"], false, "nothing is stored, whatever was asked");
        assert_eq!(e["tool_choice"], "auto");
        assert_eq!(e["tools"], json!([]));
        assert_eq!(e["text"], json!({"format": {"type": "text"}}));
    }

    #[test]
    fn message_items_with_every_role_and_part() {
        let m = items(json!([
            {"role": "system", "content": "sys"},
            {"role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"},
                {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,QQ=="}
            ]},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "one", "annotations": []},
                {"type": "refusal", "refusal": "two"}
            ]},
        ]));
        let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::Developer, Role::User, Role::Assistant]
        );
        assert_eq!(text_of(&m[1]), "dev");
        let Content::Parts(parts) = &m[2].content else {
            panic!("parts")
        };
        assert_eq!(parts[0], Part::Text("look".into()));
        assert_eq!(
            parts[1],
            Part::Image {
                url: "https://x/y.png".into(),
                detail: Some("low".into())
            }
        );
        assert!(
            matches!(&parts[2], Part::File { filename: Some(f), file_data: Some(_), .. } if f == "a.pdf")
        );
        assert_eq!(text_of(&m[3]), "one\ntwo");
    }

    #[test]
    fn function_calls_join_the_assistant_turn_and_outputs_become_tool_messages() {
        let m = items(json!([
            {"role": "user", "content": "weather?"},
            {"type": "message", "role": "assistant", "content": "Checking."},
            {"type": "function_call", "call_id": "call_a", "name": "w", "arguments": "{\"city\":\"P\"}"},
            {"type": "function_call", "call_id": "call_b", "name": "w", "arguments": {"city": "L"}},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "call_a", "output": "21 C"},
            {"type": "function_call_output", "call_id": "call_b", "output": [
                {"type": "input_text", "text": "map:"},
                {"type": "input_image", "image_url": "data:image/png;base64,AA=="}
            ]},
            {"role": "user", "content": "thanks"},
        ]));
        let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Tool,
                Role::User,
                Role::User
            ]
        );
        assert_eq!(text_of(&m[1]), "Checking.");
        let calls: Vec<(&str, &str)> = m[1]
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.function.arguments.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("call_a", "{\"city\":\"P\"}"),
                ("call_b", "{\"city\":\"L\"}")
            ]
        );
        assert_eq!(m[2].tool_call_id.as_deref(), Some("call_a"));
        assert_eq!(text_of(&m[2]), "21 C");
        assert!(text_of(&m[3]).starts_with("map:\n[1 image from this function call output"));
        let Content::Parts(carried) = &m[4].content else {
            panic!("the image in a user message after the outputs")
        };
        assert!(
            matches!(&carried[0], Part::Image { url, .. } if url.starts_with("data:image/png"))
        );
        assert_eq!(text_of(&m[5]), "thanks");

        // a call with no assistant message before it starts one
        let m = items(json!([
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c", "name": "w", "arguments": "{}"},
        ]));
        assert_eq!(m[1].role, Role::Assistant);
        assert_eq!(m[1].content, Content::None);
        assert_eq!(m[1].tool_calls.len(), 1);
    }

    #[test]
    fn function_tools_and_tool_choice() {
        let r = parse(json!({"model": "m", "input": "x",
            "tools": [{"type": "function", "name": "w", "description": "d",
                       "parameters": {"type": "object"}, "strict": true},
                      {"type": "function", "name": "bare"}],
            "tool_choice": {"type": "function", "name": "w"}}));
        assert_eq!(
            r.chat.tools.unwrap(),
            [
                json!({"type": "function", "function": {"name": "w", "description": "d", "parameters": {"type": "object"}}}),
                json!({"type": "function", "function": {"name": "bare"}}),
            ]
        );
        assert_eq!(
            r.chat.tool_choice,
            Some(json!({"type": "function", "function": {"name": "w"}}))
        );
        assert_eq!(
            r.echo["tools"][0]["strict"], true,
            "tools are echoed as sent"
        );
        for mode in ["auto", "none", "required"] {
            let r = parse(json!({"model": "m", "input": "x", "tool_choice": mode}));
            assert_eq!(r.chat.tool_choice, Some(json!(mode)));
        }
    }

    #[test]
    fn errors_name_the_param() {
        let cases = [
            (
                json!({"model": "m", "input": "x", "conversation": "c"}),
                "conversation",
            ),
            (
                json!({"model": "m", "input": "x", "prompt": {"id": "p"}}),
                "prompt",
            ),
            (
                json!({"model": "m", "input": "x", "background": true}),
                "background",
            ),
            (
                json!({"model": "m", "input": "x", "stream": "yes"}),
                "stream",
            ),
            (
                json!({"model": "m", "input": "x", "max_output_tokens": 0}),
                "max_output_tokens",
            ),
            (
                json!({"model": "m", "input": "x", "instructions": 5}),
                "instructions",
            ),
            (json!({"model": "m", "input": "x", "top_p": 2}), "top_p"),
            (json!({"model": "m", "input": [1]}), "input[0]"),
            (
                json!({"model": "m", "input": [{"content": "x"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "tool", "content": "x"}]}),
                "input[0].role",
            ),
            (
                json!({"model": "m", "input": [{"role": "user"}]}),
                "input[0].content",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "u"}]}]}),
                "input[0].content[0].type",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}),
                "input[0].content[0].file_id",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_url": "u"}]}]}),
                "input[0].content[0].file_url",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "call_id": "c"}]}),
                "input[0].name",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call", "call_id": "c", "name": "n", "arguments": 1}]}),
                "input[0].arguments",
            ),
            (
                json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_audio"}]}]}),
                "input[0].output[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "computer_call"}]}),
                "input[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "reasoning", "summary": []}]}),
                "input",
            ),
            (json!({"model": "m", "input": "x", "tools": {}}), "tools"),
            (
                json!({"model": "m", "input": "x", "tools": [{"name": "w"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function"}]}),
                "tools[0].name",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "function", "name": "w", "parameters": []}]}),
                "tools[0].parameters",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": {"type": "allowed_tools"}}),
                "tool_choice.type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "namespace", "name": "n"}]}),
                "tools[0].tools",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "namespace", "name": "n",
                    "tools": [{"type": "namespace", "name": "m", "tools": []}]}]}),
                "tools[0].tools[0].type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "namespace", "name": "n",
                    "tools": [{"type": "function"}]}]}),
                "tools[0].tools[0].name",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "custom", "name": "c",
                    "format": {"type": "regexp"}}]}),
                "tools[0].format.type",
            ),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "custom", "name": "c",
                    "format": {"type": "grammar", "syntax": "lark"}}]}),
                "tools[0].format.definition",
            ),
            (
                json!({"model": "m", "input": [{"type": "additional_tools", "tools": [{"type": "function"}]},
                    {"role": "user", "content": "x"}]}),
                "input[0].tools[0].name",
            ),
            (
                json!({"model": "m", "input": [{"type": "custom_tool_call", "call_id": "c", "name": "n"}]}),
                "input[0].input",
            ),
            (
                json!({"model": "m", "input": "x", "tool_choice": 1}),
                "tool_choice",
            ),
        ];
        for (body, param) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{}", e.message);
        }
        assert_eq!(parse_request(b"").unwrap_err().status, 400);
        assert_eq!(parse_request(b"[]").unwrap_err().status, 400);
    }

    #[test]
    fn lax_fields_are_refused_naming_the_field() {
        // Issue 16: `metadata: 5` got a 200 (and was echoed back).
        let with = |extra: Value| {
            let mut body = json!({"model": "m", "input": "x"});
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            body
        };
        let cases: Vec<(Value, &str)> = vec![
            (with(json!({"metadata": 5})), "metadata"),
            (with(json!({"metadata": {"run": 1}})), "metadata.run"),
            (with(json!({"metadata": {"run": null}})), "metadata.run"),
            (with(json!({"user": {}})), "user"),
            (
                with(json!({"include": "reasoning.encrypted_content"})),
                "include",
            ),
            (with(json!({"include": [1]})), "include[0]"),
            (with(json!({"store": "no"})), "store"),
            (with(json!({"prompt_cache_key": 1})), "prompt_cache_key"),
            (with(json!({"safety_identifier": 1})), "safety_identifier"),
            (with(json!({"service_tier": []})), "service_tier"),
            (with(json!({"truncation": "sometimes"})), "truncation"),
            (with(json!({"max_tool_calls": 0})), "max_tool_calls"),
            (with(json!({"top_logprobs": 21})), "top_logprobs"),
            (
                with(json!({"parallel_tool_calls": "yes"})),
                "parallel_tool_calls",
            ),
            (with(json!({"reasoning": 1})), "reasoning"),
            (
                with(json!({"reasoning": {"summary": "long"}})),
                "reasoning.summary",
            ),
            (
                with(json!({"reasoning": {"summary": 1}})),
                "reasoning.summary",
            ),
            (
                with(json!({"reasoning": {"generate_summary": "x"}})),
                "reasoning.generate_summary",
            ),
            (with(json!({"text": 3})), "text"),
            (
                with(json!({"text": {"verbosity": "loud"}})),
                "text.verbosity",
            ),
            (with(json!({"text": {"format": "json"}})), "text.format"),
            (
                with(json!({"text": {"format": {"type": "xml"}}})),
                "text.format.type",
            ),
            (
                with(json!({"text": {"format": {"type": "json_schema", "schema": {}}}})),
                "text.format.name",
            ),
            (
                with(
                    json!({"text": {"format": {"type": "json_schema", "name": "n", "schema": []}}}),
                ),
                "text.format.schema",
            ),
        ];
        for (body, param) in cases {
            let e = err(body.clone());
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {}", e.message);
            assert!(e.message.starts_with(param), "{}", e.message);
            let v: Value = serde_json::from_slice(&e.body()).expect("json");
            assert_eq!(v["error"]["type"], "invalid_request_error");
            assert_eq!(v["error"]["param"], param);
        }
    }

    #[test]
    fn what_codex_sends_is_accepted() {
        let r = parse(json!({
            "model": "gpt-5-codex", "instructions": "You are Codex.", "stream": true,
            "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix it"}]}],
            "tools": [{"type": "function", "name": "shell", "description": "Run", "strict": false,
                "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}],
            "tool_choice": "auto", "parallel_tool_calls": false,
            "reasoning": {"effort": "medium", "summary": "auto"},
            "store": false, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "0199-abc",
            "text": {"verbosity": "low", "format": {"type": "json_schema", "name": "codex_output_schema",
                "strict": true, "schema": {"type": "object"}}},
        }));
        assert_eq!(r.chat.reasoning_effort, Some(Effort::Medium));
        for extra in [
            json!({"reasoning": {"effort": "xhigh", "summary": "none"}}),
            json!({"reasoning": {"effort": null, "summary": null}}),
            json!({"text": {"format": {"type": "text"}}}),
            json!({"metadata": {}, "user": "u", "service_tier": "auto", "truncation": "disabled"}),
        ] {
            let mut body = json!({"model": "m", "input": "x"});
            for (k, v) in extra.as_object().expect("object") {
                body[k] = v.clone();
            }
            parse(body);
        }
    }

    /// The tools Codex CLI 0.171.0 declares, in short: plain functions, a `namespace`, a
    /// `custom` (freeform) tool, hosted tools, and "Responses lite" `additional_tools`.
    fn codex_tools() -> Value {
        json!({"model": "m",
            "tools": [
                {"type": "function", "name": "exec_command", "strict": false,
                 "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}},
                {"type": "namespace", "name": "multi_agent_v1", "description": "Agents", "tools": [
                    {"type": "function", "name": "spawn_agent", "description": "Spawn one",
                     "parameters": {"type": "object"}}]},
                {"type": "custom", "name": "apply_patch", "description": "Edit files.",
                 "format": {"type": "grammar", "syntax": "lark", "definition": "start: begin_patch"}},
                {"type": "web_search", "external_web_access": false},
            ],
            "input": [
                {"type": "additional_tools", "id": "at_1", "role": "developer", "tools": [
                    {"type": "namespace", "name": "functions", "description": "", "tools": [
                        {"type": "custom", "name": "exec", "description": "Run JavaScript",
                         "format": {"type": "text"}},
                        {"type": "function", "name": "wait", "parameters": {"type": "object"}}]},
                    {"type": "tool_search", "execution": "client", "description": "Find tools",
                     "parameters": {"type": "object"}}]},
                {"role": "user", "content": "hi"}],
        })
    }

    #[test]
    fn namespaces_custom_and_additional_tools_are_flattened_and_hosted_ones_set_apart() {
        let mut body = codex_tools();
        body["tool_choice"] = json!({"type": "custom", "name": "exec", "namespace": "functions"});
        let r = parse(body);
        let tools = r.chat.tools.clone().expect("tools");
        let names: Vec<&str> = tools
            .iter()
            .map(|t| t["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "exec_command",
                "multi_agent_v1__spawn_agent",
                "apply_patch",
                "functions__exec",
                "functions__wait"
            ]
        );
        let patch = &tools[2]["function"];
        assert_eq!(
            patch["parameters"]["required"],
            json!(["input"]),
            "a custom tool takes one string"
        );
        assert_eq!(patch["parameters"]["properties"]["input"]["type"], "string");
        let d = patch["description"].as_str().unwrap();
        assert!(
            d.starts_with("Edit files.") && d.ends_with("lark grammar:\nstart: begin_patch"),
            "{d}"
        );
        assert_eq!(
            r.dialect.tools,
            [
                ToolOrigin {
                    flat: "multi_agent_v1__spawn_agent".into(),
                    namespace: Some("multi_agent_v1".into()),
                    name: "spawn_agent".into(),
                    custom: false
                },
                ToolOrigin {
                    flat: "apply_patch".into(),
                    namespace: None,
                    name: "apply_patch".into(),
                    custom: true
                },
                ToolOrigin {
                    flat: "functions__exec".into(),
                    namespace: Some("functions".into()),
                    name: "exec".into(),
                    custom: true
                },
                ToolOrigin {
                    flat: "functions__wait".into(),
                    namespace: Some("functions".into()),
                    name: "wait".into(),
                    custom: false
                },
            ]
        );
        let hosted: Vec<(&str, &str)> = r.hosted.iter().map(|h| (h.kind, h.at.as_str())).collect();
        assert_eq!(
            hosted,
            [
                ("web_search", "tools[3]"),
                ("tool_search", "input[0].tools[1]")
            ]
        );
        assert_eq!(
            r.chat.tool_choice,
            Some(json!({"type": "function", "function": {"name": "functions__exec"}}))
        );
        assert!(!r.dialect.summary, "no summary asked");
        for (reasoning, asked) in [
            (json!({"summary": "concise"}), true),
            (json!({"generate_summary": "detailed"}), true),
            (json!({"summary": "none"}), false),
            (json!({"effort": "high"}), false),
        ] {
            let r = parse(json!({"model": "m", "input": "x", "reasoning": reasoning}));
            assert_eq!(r.dialect.summary, asked, "{reasoning}");
        }
        // The additional_tools item is no message; errors about a tool name its own path.
        assert_eq!(r.chat.messages.len(), 1);
        assert_eq!(
            r.origin.path("tools[1].function.name"),
            "tools[1].tools[0].name"
        );
        assert_eq!(
            r.origin.path("tools[4].function.parameters"),
            "input[0].tools[0].tools[1].parameters"
        );
        // A hosted tool choice is set apart too (it is `auto` once the tool is dropped).
        let r = parse(json!({"model": "m", "input": "x", "tool_choice": {"type": "file_search"}}));
        assert_eq!(r.chat.tool_choice, None);
        assert_eq!(r.hosted[0].at, "tool_choice");
        let e = r.hosted[0].refusal();
        assert_eq!(e.param.as_deref(), Some("tool_choice.type"));
        let h = Hosted::new("brand_new_tool", "tools[2]".into());
        assert_eq!(h.kind, "other", "unknown types are one metric label");
        assert_eq!(h.refusal().param.as_deref(), Some("tools[2].type"));
        assert!(h.refusal().message.contains("`brand_new_tool`"));
        assert_eq!(flat_name(Some("mcp__srv__"), "_tool"), "mcp__srv__tool");
    }

    #[test]
    fn namespaced_and_custom_calls_in_the_history_take_their_flat_names() {
        let m = items(json!([
            {"role": "user", "content": "go"},
            {"type": "function_call", "call_id": "c1", "name": "spawn_agent",
             "namespace": "multi_agent_v1", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "ok"},
            {"type": "custom_tool_call", "call_id": "c2", "name": "exec", "namespace": "functions",
             "input": "text(await tools.exec_command({cmd: \"ls\"}))", "status": "completed"},
            {"type": "custom_tool_call_output", "call_id": "c2",
             "output": [{"type": "input_text", "text": "a.txt"}]},
        ]));
        let roles: Vec<Role> = m.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [
                Role::User,
                Role::Assistant,
                Role::Tool,
                Role::Assistant,
                Role::Tool
            ]
        );
        assert_eq!(
            m[1].tool_calls[0].function.name,
            "multi_agent_v1__spawn_agent"
        );
        let c = &m[3].tool_calls[0];
        assert_eq!(
            (c.id.as_str(), c.function.name.as_str()),
            ("c2", "functions__exec")
        );
        let args: Value = serde_json::from_str(&c.function.arguments).unwrap();
        assert_eq!(
            args,
            json!({"input": "text(await tools.exec_command({cmd: \"ls\"}))"})
        );
        assert_eq!(m[4].tool_call_id.as_deref(), Some("c2"));
        assert_eq!(text_of(&m[4]), "a.txt");
    }

    #[test]
    fn origin_names_the_input_item() {
        let r = parse(json!({
            "model": "m", "instructions": "be brief",
            "input": [
                {"role": "user", "content": [
                    {"type": "input_text", "text": "look"},
                    {"type": "input_image", "image_url": "https://x.test/a.png"}
                ]},
                {"type": "function_call", "call_id": "c", "name": "shot", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": [
                    {"type": "input_image", "image_url": "https://x.test/s.png"}
                ]},
                {"role": "user", "content": "and?"}
            ]
        }));
        let o = &r.origin;
        // instructions, user, assistant call, tool output, carried image, user
        assert_eq!(r.chat.messages.len(), 6);
        assert_eq!(o.path("messages"), "input");
        assert_eq!(o.path("messages[0]"), "instructions");
        assert_eq!(o.path("messages[1].content[1]"), "input[0].content[1]");
        assert_eq!(o.path("messages[2]"), "input[1]");
        assert_eq!(o.path("messages[4].content[0]"), "input[2].output[0]");
        assert_eq!(o.path("messages[5]"), "input[3]");
        assert_eq!(o.path("tools[1].function.name"), "tools[1].name");
        let e = o.error(ApiError::invalid(
            "too big",
            Some("messages[1].content[1]".into()),
        ));
        assert_eq!(e.param.as_deref(), Some("input[0].content[1]"));
        assert_eq!(e.message, "input[0].content[1]: too big");
    }

    fn body(r: &CompletionResult, mode: ReasoningMode) -> Value {
        serde_json::from_slice(&response_json(r, &reply(mode))).expect("JSON")
    }

    #[test]
    fn the_response_object() {
        let v = body(
            &result("think", "answer", "stop", vec![]),
            ReasoningMode::Field,
        );
        assert_eq!(v["id"], "resp_1");
        assert_eq!(v["object"], "response");
        assert_eq!(v["created_at"], 7);
        assert_eq!(v["status"], "completed");
        assert_eq!(v["model"], "K2");
        assert_eq!(v["instructions"], "be brief");
        assert_eq!(v["error"], Value::Null);
        let out = v["output"].as_array().unwrap();
        assert_eq!(out[0]["type"], "reasoning");
        assert_eq!(
            out[0]["content"],
            json!([{"type": "reasoning_text", "text": "think"}])
        );
        assert!(out[0]["id"].as_str().unwrap().starts_with("rs_"));
        assert_eq!(out[1]["type"], "message");
        assert_eq!(out[1]["role"], "assistant");
        assert_eq!(out[1]["content"][0]["text"], "answer");
        assert!(out[1]["id"].as_str().unwrap().starts_with("msg_"));
        let u = &v["usage"];
        assert_eq!(
            u["input_tokens"], 11,
            "our estimate when the upstream gives none"
        );
        assert!(
            u["output_tokens"].as_u64().unwrap()
                >= u["output_tokens_details"]["reasoning_tokens"]
                    .as_u64()
                    .unwrap()
        );
        assert_eq!(
            u["total_tokens"].as_u64(),
            Some(11 + u["output_tokens"].as_u64().unwrap())
        );

        // dropped reasoning, upstream usage, the token limit
        let mut r = result("think", "cut sh", "length", vec![]);
        r.usage = Some(Usage {
            prompt_tokens: 40,
            completion_tokens: 9,
            total_tokens: 49,
            completion_tokens_details: None,
        });
        let v = body(&r, ReasoningMode::Drop);
        assert_eq!(v["status"], "incomplete");
        assert_eq!(
            v["incomplete_details"],
            json!({"reason": "max_output_tokens"})
        );
        assert_eq!(v["output"].as_array().unwrap().len(), 1);
        assert_eq!(v["output"][0]["status"], "incomplete");
        assert_eq!(
            (
                v["usage"]["input_tokens"].as_u64(),
                v["usage"]["output_tokens"].as_u64()
            ),
            (Some(40), Some(9))
        );

        // tool calls: no empty message
        let v = body(
            &result("", "", "tool_calls", vec![call("call_1", "w", "{\"a\":1}")]),
            ReasoningMode::Field,
        );
        let out = v["output"].as_array().unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["type"], "function_call");
        assert_eq!(out[0]["call_id"], "call_1");
        assert_eq!(out[0]["name"], "w");
        assert_eq!(out[0]["arguments"], "{\"a\":1}");
        assert!(out[0]["id"].as_str().unwrap().starts_with("fc_"));

        // an empty answer is one empty message
        let v = body(&result("", "", "stop", vec![]), ReasoningMode::Field);
        assert_eq!(v["output"][0]["content"][0]["text"], "");
    }

    /// A reply for the tools of [`codex_tools`], with the reasoning summary on.
    fn codex_reply() -> Reply {
        let mut body = codex_tools();
        body["reasoning"] = json!({"effort": "low", "summary": "auto"});
        let r = parse(body);
        assert!(r.dialect.summary, "summary asked");
        Reply {
            dialect: r.dialect,
            ..reply(ReasoningMode::Field)
        }
    }

    fn codex_calls() -> Vec<ToolCall> {
        vec![
            call("call_1", "functions__exec", "{\"input\":\"text(1)\"}"),
            call("call_2", "multi_agent_v1__spawn_agent", "{\"task\":\"t\"}"),
            call("call_3", "exec_command", "{\"cmd\":\"ls\"}"),
        ]
    }

    /// The three calls of [`codex_calls`], as the client must read them.
    fn assert_codex_calls(out: &[Value]) {
        assert_eq!(out[0]["type"], "custom_tool_call");
        assert!(out[0]["id"].as_str().unwrap().starts_with("ctc_"));
        assert_eq!(
            (&out[0]["namespace"], &out[0]["name"], &out[0]["input"]),
            (&json!("functions"), &json!("exec"), &json!("text(1)"))
        );
        assert_eq!(out[0]["call_id"], "call_1");
        assert!(out[0].get("arguments").is_none());
        assert_eq!(out[1]["type"], "function_call");
        assert_eq!(
            (&out[1]["namespace"], &out[1]["name"]),
            (&json!("multi_agent_v1"), &json!("spawn_agent"))
        );
        assert_eq!(out[1]["arguments"], "{\"task\":\"t\"}");
        assert_eq!(out[2]["name"], "exec_command");
        assert!(
            out[2].get("namespace").is_none(),
            "a plain function has none"
        );
        for item in out {
            assert_eq!(item["status"], "completed");
        }
    }

    #[test]
    fn calls_go_back_in_the_clients_terms() {
        let reply = codex_reply();
        let v: Value = serde_json::from_slice(&response_json(
            &result("", "", "tool_calls", codex_calls()),
            &reply,
        ))
        .unwrap();
        assert_codex_calls(v["output"].as_array().unwrap());

        let mut e = ResponsesEncoder::new(reply);
        let mut out = Vec::new();
        e.start(&mut out);
        for (i, c) in codex_calls().iter().enumerate() {
            e.tool_call(i, c, &mut out);
        }
        e.finish("tool_calls", None, &mut out);
        let evs = events(&out);
        assert_eq!(
            names(&evs)[2..6],
            [
                "response.output_item.added",
                "response.custom_tool_call_input.delta",
                "response.custom_tool_call_input.done",
                "response.output_item.done",
            ]
        );
        assert_eq!(evs[2].1["item"]["input"], "");
        assert_eq!(evs[2].1["item"]["namespace"], "functions");
        assert_eq!(evs[3].1["delta"], "text(1)");
        assert_eq!(evs[4].1["input"], "text(1)");
        assert_eq!(evs[6].1["item"]["arguments"], "");
        assert_eq!(evs[8].1["name"], "spawn_agent");
        let done = &evs.last().unwrap().1["response"];
        assert_codex_calls(done["output"].as_array().unwrap());
    }

    #[test]
    fn the_reasoning_is_its_summary_too_when_asked() {
        let v: Value = serde_json::from_slice(&response_json(
            &result("think", "answer", "stop", vec![]),
            &codex_reply(),
        ))
        .unwrap();
        assert_eq!(
            v["output"][0]["summary"],
            json!([{"type": "summary_text", "text": "think"}])
        );
        assert_eq!(v["output"][0]["content"][0]["text"], "think");

        let mut e = ResponsesEncoder::new(codex_reply());
        let mut out = Vec::new();
        e.start(&mut out);
        e.reasoning("th", &mut out);
        e.reasoning("ink", &mut out);
        e.content("answer", &mut out);
        e.finish("stop", None, &mut out);
        let evs = events(&out);
        assert_eq!(
            names(&evs)[2..13],
            [
                "response.output_item.added",
                "response.reasoning_summary_part.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_summary_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.reasoning_summary_text.done",
                "response.reasoning_summary_part.done",
            ]
        );
        assert_eq!(evs[2].1["item"]["summary"], json!([]));
        assert_eq!(
            evs[3].1["part"],
            json!({"type": "summary_text", "text": ""})
        );
        assert_eq!(evs[3].1["summary_index"], 0);
        assert_eq!(evs[8].1["delta"], "ink");
        assert_eq!(evs[8].1["summary_index"], 0);
        assert!(evs[8].1.get("content_index").is_none());
        assert_eq!(evs[11].1["text"], "think");
        assert_eq!(evs[12].1["part"]["text"], "think");
        let item = &evs[13].1["item"];
        assert_eq!(evs[13].0, "response.output_item.done");
        assert_eq!(
            item["summary"],
            json!([{"type": "summary_text", "text": "think"}])
        );
        let done = &evs.last().unwrap().1["response"];
        assert_eq!(&done["output"][0], item);
    }

    /// The events, numbered from 0 by `sequence_number`.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let evs = testing::events(out);
        for (i, (_, v)) in evs.iter().enumerate() {
            assert_eq!(v["sequence_number"], i as u64);
        }
        evs
    }

    #[test]
    fn stream_full_sequence() {
        let mut e = ResponsesEncoder::new(reply(ReasoningMode::Field));
        let mut out = Vec::new();
        e.start(&mut out);
        assert!(!e.output_started());
        e.reasoning("th", &mut out);
        e.reasoning("ink", &mut out);
        e.content("Hel", &mut out);
        e.content("lo", &mut out);
        e.tool_call(0, &call("call_1", "w", "{}"), &mut out);
        assert!(e.output_started());
        e.finish("tool_calls", None, &mut out);
        e.content("late", &mut out);
        let evs = events(&out);
        assert_eq!(
            names(&evs),
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.reasoning_text.delta",
                "response.reasoning_text.delta",
                "response.reasoning_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        assert_eq!(evs[0].1["response"]["status"], "in_progress");
        assert_eq!(evs[0].1["response"]["instructions"], "be brief");
        assert_eq!(evs[6].1["text"], "think");
        assert_eq!(evs[12].1["delta"], "lo");
        assert_eq!(evs[12].1["output_index"], 1);
        assert_eq!(evs[13].1["text"], "Hello");
        assert_eq!(evs[16].1["item"]["arguments"], "");
        assert_eq!(evs[18].1["name"], "w");
        assert_eq!(evs[19].1["output_index"], 2);
        let done = &evs[20].1["response"];
        assert_eq!(done["status"], "completed");
        let out = done["output"].as_array().unwrap();
        assert_eq!(out.len(), 3);
        for (i, item) in out.iter().enumerate() {
            let streamed = &evs[[8, 15, 19][i]].1["item"];
            assert_eq!(item, streamed, "the final output is the streamed items");
            assert_eq!(item["status"], "completed");
        }
        assert!(done["usage"]["output_tokens"].as_u64().unwrap() > 0);
    }

    #[test]
    fn stream_token_limit_is_incomplete() {
        let mut e = ResponsesEncoder::new(reply(ReasoningMode::Drop));
        let mut out = Vec::new();
        e.start(&mut out);
        e.reasoning("hidden", &mut out);
        e.content("cut sh", &mut out);
        e.finish("length", None, &mut out);
        let evs = events(&out);
        assert!(!String::from_utf8_lossy(&out).contains("hidden"));
        let (name, last) = evs.last().unwrap();
        assert_eq!(name, "response.incomplete");
        assert_eq!(last["response"]["status"], "incomplete");
        assert_eq!(
            last["response"]["incomplete_details"]["reason"],
            "max_output_tokens"
        );
        assert_eq!(last["response"]["output"][0]["status"], "incomplete");
        assert!(
            last["response"]["usage"]["output_tokens_details"]["reasoning_tokens"].as_u64()
                > Some(0),
            "dropped reasoning still counts"
        );
    }

    #[test]
    fn stream_empty_answer_has_one_empty_message() {
        let mut e = ResponsesEncoder::new(reply(ReasoningMode::Field));
        let mut out = Vec::new();
        e.start(&mut out);
        e.finish("stop", None, &mut out);
        let evs = events(&out);
        assert_eq!(evs.len(), 2 + 5 + 1, "{:?}", names(&evs));
        assert_eq!(evs[7].1["response"]["output"][0]["content"][0]["text"], "");
    }

    #[test]
    fn stream_error_ending_is_failed_and_final() {
        let mut e = ResponsesEncoder::new(reply(ReasoningMode::Field));
        let mut out = Vec::new();
        e.start(&mut out);
        e.reasoning("r", &mut out);
        e.content("partial", &mut out);
        e.error(
            "upstream_timeout",
            "the upstream sent nothing for 5s",
            &mut out,
        );
        e.content("more", &mut out);
        e.finish("stop", None, &mut out);
        e.error("again", "x", &mut out);
        let evs = events(&out);
        let (name, last) = evs.last().unwrap();
        assert_eq!(name, "response.failed");
        assert_eq!(
            names(&evs)
                .iter()
                .filter(|n| n.starts_with("response.failed"))
                .count(),
            1
        );
        assert!(!names(&evs).contains(&"response.completed"));
        assert!(
            !names(&evs).contains(&"response.output_text.done"),
            "the cut item is not done"
        );
        let r = &last["response"];
        assert_eq!(r["status"], "failed");
        assert_eq!(
            r["error"],
            json!({"code": "upstream_timeout", "message": "the upstream sent nothing for 5s"})
        );
        let out = r["output"].as_array().unwrap();
        assert_eq!(out[0]["status"], "completed");
        assert_eq!(out[1]["status"], "incomplete");
        assert_eq!(out[1]["content"][0]["text"], "partial");
    }

    #[test]
    fn stream_escapes_and_unicode() {
        let mut r = reply(ReasoningMode::Field);
        r.model = "mo\\del\"".into();
        let mut e = ResponsesEncoder::new(r);
        let mut out = Vec::new();
        e.start(&mut out);
        let tricky = "line1\nline2\r\n\u{0}\u{1f} \"q\" \\ 你好 👋 \u{2028}";
        e.reasoning(tricky, &mut out);
        e.content(tricky, &mut out);
        e.tool_call(0, &call("c\"1", "n", "{\"a\":\"\\n\"}"), &mut out);
        e.finish("stop", None, &mut out);
        let evs = events(&out);
        assert_eq!(evs[0].1["response"]["model"], "mo\\del\"");
        assert_eq!(evs[4].1["delta"], tricky);
        assert_eq!(evs[10].1["delta"], tricky);
        assert_eq!(evs[14].1["item"]["call_id"], "c\"1");
        assert_eq!(evs[15].1["delta"], "{\"a\":\"\\n\"}");
    }

    /// Random ids → fixed ones, so that two runs can be compared.
    fn without_ids(out: &[u8]) -> String {
        let s = String::from_utf8(out.to_vec()).expect("UTF-8");
        let mut r = String::with_capacity(s.len());
        let mut rest = s.as_str();
        'outer: while !rest.is_empty() {
            for prefix in ["\"rs_", "\"msg_", "\"fc_", "\"ctc_"] {
                if let Some(tail) = rest.strip_prefix(prefix) {
                    if tail.len() >= 24
                        && tail.as_bytes()[..24].iter().all(u8::is_ascii_alphanumeric)
                    {
                        r.push_str(prefix);
                        r.push_str("ID");
                        rest = &tail[24..];
                        continue 'outer;
                    }
                }
            }
            let c = rest.chars().next().unwrap_or_default();
            r.push(c);
            rest = &rest[c.len_utf8()..];
        }
        r
    }

    #[test]
    fn the_stream_does_not_depend_on_how_the_upstream_body_is_split() {
        let body = concat!(
            "data: {\"content\":\"<think>pl\\u00e9ase\"}\n\n",
            "data: {\"content\":\"<think>pl\\u00e9ase think</think>\"}\n\n",
            "data: {\"content\":\"<think>pl\\u00e9ase think</think><answer>Hi \\\"you\\\" 👋\"}\n\n",
            "data: {\"content\":\"<think>pl\\u00e9ase think</think><answer>Hi \\\"you\\\" 👋</answer>\",\"done\":true}\n\n",
            "data: [DONE]\n\n",
        )
        .as_bytes();
        let run = |pieces: &[&[u8]]| {
            let mut s = ChatStream::with_encoder(
                Wire::Responses(Box::new(ResponsesEncoder::new(reply(ReasoningMode::Field)))),
                UpstreamFormat::Sse,
                false,
                None,
            );
            let mut out = Vec::new();
            s.start(&mut out);
            for p in pieces {
                s.push(p, &mut out);
            }
            assert_eq!(s.finish(&mut out), Ok(()));
            out
        };
        let whole = run(&[body]);
        let evs = events(&whole);
        let last = &evs.last().unwrap().1["response"];
        assert_eq!(last["output"][0]["content"][0]["text"], "pléase think");
        assert_eq!(last["output"][1]["content"][0]["text"], "Hi \"you\" 👋");
        let whole = shape(&whole);
        for i in 0..=body.len() {
            let split = run(&[&body[..i], &body[i..]]);
            assert_eq!(shape(&split), whole, "split at {i}");
        }
    }

    /// A stream's events without deltas and sequence numbers, ids fixed, after checking
    /// that each item's deltas add up to its `.done` text: what must not depend on how the
    /// upstream body was split (the deltas themselves follow the pieces).
    fn shape(out: &[u8]) -> Vec<(String, Value)> {
        let evs = events(without_ids(out).as_bytes());
        let mut texts: std::collections::HashMap<String, String> = Default::default();
        let mut kept = Vec::new();
        for (name, mut v) in evs {
            if name.ends_with(".delta") {
                let id = v["item_id"].as_str().unwrap().to_string();
                texts
                    .entry(id)
                    .or_default()
                    .push_str(v["delta"].as_str().unwrap());
                continue;
            }
            if name.ends_with("_text.done") {
                let id = v["item_id"].as_str().unwrap();
                assert_eq!(
                    texts.remove(id).unwrap_or_default(),
                    v["text"].as_str().unwrap()
                );
            }
            if let Some(m) = v.as_object_mut() {
                m.remove("sequence_number");
            }
            kept.push((name, v));
        }
        kept
    }
}

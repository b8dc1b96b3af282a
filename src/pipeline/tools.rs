//! Tool-calling emulation ("toolify", `k2think-protocol.md` §6) for an
//! upstream without native function calling.
//!
//! * [`ToolSet::from_request`] reads the request's `tools` / `tool_choice`
//!   and draws a trigger `<Function_XXXX_Start/>` **per request**.
//! * [`ToolSet::instructions`] is the system text that teaches the tools and
//!   the call format; [`ToolSet::encode_calls`] / [`encode_result`] rewrite
//!   history (assistant `tool_calls`, `tool` messages) into the same form.
//! * [`ToolDetector`] runs on the **content channel** (reasoning is never
//!   searched) and turns `trigger + <function_calls>…</function_calls>` into
//!   [`ToolCall`]s while everything else streams on as content.
//!
//! # Detection (content text `C`)
//!
//! 1. Text before a trigger is content, emitted at once; only a suffix that
//!    could still be part of `[ws] ["```lang" ws] trigger` is held back.
//! 2. After the trigger: optional whitespace and one code-fence opener, then
//!    `<function_calls>`, within [`OPEN_WINDOW`] bytes. Anything else is a
//!    false alarm: the text is content (verbatim) and scanning goes on after
//!    the trigger.
//! 3. The block is buffered up to `</function_calls>` (at most
//!    [`MAX_BLOCK`] bytes) and parsed. A valid block becomes calls and the
//!    whitespace/fence around it disappears (a closing fence after it too).
//!    A malformed block (see [`parse_block`]) is content, verbatim, from the
//!    whitespace before the trigger to the closing tag, and counts in
//!    [`ToolDetector::malformed`]. An unclosed block at the end is malformed.
//! 4. Content never starts with whitespace; text after a block is content.
//!
//! The output depends only on the text, never on how it was split.

use std::fmt::Write as _;
use std::sync::Arc;

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{Map, Value};

pub use crate::core::events::ToolCall;

/// Bytes after the trigger within which `<function_calls>` must start.
pub const OPEN_WINDOW: usize = 300;
/// Largest buffered block (trigger to closing tag) before it is given up as
/// malformed and released as content.
pub const MAX_BLOCK: usize = 256 * 1024;

const OPEN: &str = "<function_calls>";
const CLOSE: &str = "</function_calls>";
const FENCE: &str = "```";

/// One declared tool.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (an object).
    pub parameters: Value,
}

/// The request's `tool_choice`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model may call tools.
    Auto,
    /// No call this turn (tools are still described; output is not parsed).
    None,
    /// At least one call.
    Required,
    /// Calls of exactly this tool.
    Function(String),
}

/// Tools of one request, with its trigger signal.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSet {
    pub tools: Vec<ToolSpec>,
    pub choice: ToolChoice,
    /// `<Function_XXXX_Start/>`.
    pub trigger: String,
}

/// A fresh trigger signal, `<Function_XXXX_Start/>`.
pub fn new_trigger() -> String {
    let tag: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(4)
        .map(char::from)
        .collect();
    format!("<Function_{tag}_Start/>")
}

/// A fresh call id, `call_` + 24 ASCII letters/digits.
pub fn new_call_id() -> String {
    crate::core::ids::random_id("call_")
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

type ParamError = (String, String);

fn perr(param: impl Into<String>, msg: impl Into<String>) -> ParamError {
    (param.into(), msg.into())
}

/// The request's `tool_choice` on its own (a named function must still be among the tools):
/// `"auto"`, `"none"`, `"required"` (or Anthropic's `"any"`), or a function,
/// `{"type":"function","function":{"name":…}}` or the flat `{"name":…}`.
/// `Err((param, message))` names the bad field.
pub fn parse_tool_choice(tool_choice: Option<&Value>) -> Result<ToolChoice, ParamError> {
    Ok(match tool_choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" | "any" => ToolChoice::Required,
            _ => {
                return Err(perr(
                    "tool_choice",
                    "must be \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}",
                ))
            }
        },
        Some(Value::Object(o)) => {
            match o.get("type") {
                None | Some(Value::Null) => {}
                Some(Value::String(t)) if t == "function" => {}
                Some(_) => {
                    return Err(perr(
                        "tool_choice.type",
                        "only \"function\" is supported",
                    ))
                }
            }
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .or_else(|| o.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| perr("tool_choice.function.name", "missing"))?;
            ToolChoice::Function(name.to_string())
        }
        Some(_) => return Err(perr("tool_choice", "must be a string or an object")),
    })
}

impl ToolSet {
    /// From the request's `tools` / `tool_choice` JSON, with a fresh
    /// trigger. `Ok(None)` when there are no tools. `Err((param, message))`
    /// names the bad field, e.g. `("tools[1].function.name", "…")`.
    ///
    /// Accepted tool forms: `{"type":"function","function":{name,
    /// description?, parameters?}}` and the flat `{name, description?,
    /// parameters?}`. Names: 1–64 of `A-Z a-z 0-9 _ - . :`, unique.
    pub fn from_request(
        tools: Option<&[Value]>,
        tool_choice: Option<&Value>,
    ) -> Result<Option<ToolSet>, ParamError> {
        let Some(list) = tools.filter(|t| !t.is_empty()) else {
            return Ok(None);
        };
        let mut specs: Vec<ToolSpec> = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let at = format!("tools[{i}]");
            let obj = t
                .as_object()
                .ok_or_else(|| perr(&at, "each tool must be an object"))?;
            match obj.get("type") {
                None | Some(Value::Null) => {}
                Some(Value::String(s)) if s == "function" => {}
                Some(_) => {
                    return Err(perr(
                        format!("{at}.type"),
                        "only \"function\" tools are supported",
                    ))
                }
            }
            let (f, fat) = match obj.get("function") {
                Some(Value::Object(f)) => (f, format!("{at}.function")),
                Some(_) => return Err(perr(format!("{at}.function"), "must be an object")),
                None if obj.contains_key("name") => (obj, at.clone()),
                None => return Err(perr(format!("{at}.function"), "missing")),
            };
            let name = match f.get("name") {
                Some(Value::String(n)) => n.trim().to_string(),
                _ => return Err(perr(format!("{fat}.name"), "missing or not a string")),
            };
            if !valid_name(&name) {
                return Err(perr(
                    format!("{fat}.name"),
                    "must be 1-64 characters of a-z, A-Z, 0-9, '_', '-', '.', ':'",
                ));
            }
            if specs.iter().any(|s| s.name == name) {
                return Err(perr(
                    format!("{fat}.name"),
                    format!("duplicate tool name '{name}'"),
                ));
            }
            let description = match f.get("description") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d.clone()).filter(|d| !d.trim().is_empty()),
                Some(_) => return Err(perr(format!("{fat}.description"), "must be a string")),
            };
            let parameters = match f.get("parameters") {
                None | Some(Value::Null) => {
                    serde_json::json!({"type": "object", "properties": {}})
                }
                Some(p @ Value::Object(_)) => p.clone(),
                Some(_) => {
                    return Err(perr(
                        format!("{fat}.parameters"),
                        "must be a JSON schema object",
                    ))
                }
            };
            specs.push(ToolSpec {
                name,
                description,
                parameters,
            });
        }
        let choice = parse_tool_choice(tool_choice)?;
        if let ToolChoice::Function(name) = &choice {
            if !specs.iter().any(|s| &s.name == name) {
                return Err(perr(
                    "tool_choice.function.name",
                    format!("no tool named '{name}' in tools"),
                ));
            }
        }
        Ok(Some(ToolSet {
            tools: specs,
            choice,
            trigger: new_trigger(),
        }))
    }

    /// Whether the output is searched for calls (`tool_choice` is not
    /// `"none"`).
    pub fn detects(&self) -> bool {
        self.choice != ToolChoice::None
    }

    /// The tool by name.
    pub fn tool(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    /// The tool list as written into the instructions (`{tools_list}`).
    pub fn tools_list(&self) -> String {
        let mut s = String::new();
        for (i, t) in self.tools.iter().enumerate() {
            if i > 0 {
                s.push('\n');
            }
            render_tool(&mut s, i + 1, t);
        }
        let n = s.trim_end().len();
        s.truncate(n);
        s
    }

    /// The system message text. `template` replaces the built-in one; its
    /// `{trigger_signal}` and `{tools_list}` are filled in. The `tool_choice`
    /// rule is appended to either.
    pub fn instructions(&self, template: Option<&str>) -> String {
        let tpl = template
            .filter(|t| !t.trim().is_empty())
            .unwrap_or(BUILTIN_TEMPLATE);
        let mut s = fill(tpl, &self.trigger, &self.tools_list());
        let note = match &self.choice {
            ToolChoice::Auto => String::new(),
            ToolChoice::None => format!(
                "For this reply, do NOT call any tool: do not write {} and do not write a \
                 <function_calls> block. The tools are described only so that earlier calls in \
                 the conversation make sense. Answer directly in plain text.",
                self.trigger
            ),
            ToolChoice::Required => format!(
                "For this reply you MUST call at least one tool: your reply must contain the \
                 line {} followed by a <function_calls> block.",
                self.trigger
            ),
            ToolChoice::Function(n) => format!(
                "For this reply you MUST call the tool \"{n}\" and no other tool: your reply must \
                 contain the line {} followed by a <function_calls> block whose calls all use \
                 <tool>{n}</tool>.",
                self.trigger
            ),
        };
        if !note.is_empty() {
            let t = s.trim_end().len();
            s.truncate(t);
            s.push_str("\n\n");
            s.push_str(&note);
        }
        s
    }

    /// History: an assistant turn's calls `(name, arguments JSON string)` as
    /// the model would have written them: trigger, newline, the
    /// `<function_calls>` block. Object arguments become one element per key
    /// (value as JSON); anything else becomes `<raw_arguments>"…"</raw_arguments>`.
    pub fn encode_calls(&self, calls: &[(String, String)]) -> String {
        format!("{}\n{}", self.trigger, function_calls_block(calls))
    }
    /// History: an assistant message = its text (when not blank) + `"\n"` +
    /// [`Self::encode_calls`].
    pub fn encode_assistant(&self, text: Option<&str>, calls: &[(String, String)]) -> String {
        let block = self.encode_calls(calls);
        match text.map(str::trim_end).filter(|t| !t.trim().is_empty()) {
            Some(t) => format!("{t}\n{block}"),
            None => block,
        }
    }
}

/// `(name, arguments JSON)` calls as a `<function_calls>` XML block (no trigger): argument
/// values as JSON (with `<` escaped), non-object arguments as `<raw_arguments>`.
pub fn function_calls_block(calls: &[(String, String)]) -> String {
    let mut s = String::with_capacity(32 + calls.len() * 128);
    s.push_str("<function_calls>\n");
    for (name, args) in calls {
        s.push_str("<function_call>\n<tool>");
        s.push_str(&xml_text(name));
        s.push_str("</tool>\n<args>\n");
        let parsed = if args.trim().is_empty() {
            Ok(Value::Object(Map::new()))
        } else {
            serde_json::from_str::<Value>(args)
        };
        match parsed {
            Ok(Value::Object(m)) => {
                for (k, v) in &m {
                    let _ = writeln!(s, "<{k}>{}</{k}>", json_for_xml(v));
                }
            }
            _ => {
                let v = Value::String(args.clone());
                let _ = writeln!(s, "<raw_arguments>{}</raw_arguments>", json_for_xml(&v));
            }
        }
        s.push_str("</args>\n</function_call>\n");
    }
    s.push_str("</function_calls>");
    s
}

/// History: a `tool` message as `user` text. `name` is left out when unknown.
pub fn encode_result(name: Option<&str>, content: &str) -> String {
    let mut s = String::with_capacity(content.len() + 96);
    s.push_str("Tool execution result:\n");
    if let Some(n) = name.filter(|n| !n.is_empty()) {
        s.push_str("- Tool name: ");
        s.push_str(n);
        s.push('\n');
    }
    s.push_str("- Execution result:\n<tool_result>\n");
    s.push_str(content);
    s.push_str("\n</tool_result>");
    s
}

/// Compact JSON whose `<` is escaped (`\u003c`), so a value can never close
/// its element.
fn json_for_xml(v: &Value) -> String {
    let s = v.to_string();
    if s.contains('<') {
        s.replace('<', "\\u003c")
    } else {
        s
    }
}

fn xml_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One-pass placeholder substitution (a description containing a
/// placeholder is not expanded again).
fn fill(tpl: &str, trigger: &str, list: &str) -> String {
    let mut out = String::with_capacity(tpl.len() + list.len() + 64);
    let mut rest = tpl;
    while let Some(k) = rest.find('{') {
        out.push_str(&rest[..k]);
        let at = &rest[k..];
        if let Some(r) = at.strip_prefix("{trigger_signal}") {
            out.push_str(trigger);
            rest = r;
        } else if let Some(r) = at.strip_prefix("{tools_list}") {
            out.push_str(list);
            rest = r;
        } else {
            out.push('{');
            rest = &at[1..];
        }
    }
    out.push_str(rest);
    out
}

const BUILTIN_TEMPLATE: &str = "\
# Tools

You can call the tools listed below. To call a tool you write a tool-call block in your reply; \
the system runs the calls and sends the results back to you in a later message.

## Available tools

{tools_list}

## How to call tools

To call one or more tools, end your reply with exactly this structure:

{trigger_signal}
<function_calls>
<function_call>
<tool>TOOL_NAME</tool>
<args>
<PARAMETER_NAME>VALUE_AS_JSON</PARAMETER_NAME>
</args>
</function_call>
</function_calls>

Rules (follow them exactly; anything else is not executed):
1. Write the trigger line {trigger_signal} exactly as shown, alone on its own line, once per \
reply, and only when you are calling tools. Never write it in any other situation.
2. Start the <function_calls> block on the very next line. Put every call of this reply in that \
one block, one <function_call> element per call; several calls in one block are allowed and run \
in order.
3. <tool> contains one of the tool names listed above, exactly as written.
4. Inside <args> write one element per argument. The tag name is the parameter name exactly as \
listed (same letter case, including a leading \"-\" if it has one). Include every required \
argument; leave out optional arguments you do not need. Use <args></args> for a tool without \
arguments.
5. Every value is JSON: strings in double quotes (\"Paris\"), numbers and booleans bare (3, \
true), arrays and objects in JSON syntax ([\"a\", \"b\"], {\"key\": \"value\"}).
6. Write nothing after </function_calls>: your reply ends there. Do not put the block in a code \
fence, and do not describe a call in prose instead of making it.
7. Results come back in a user message, inside <tool_result>...</tool_result>. Results of earlier \
calls may already be in the conversation: use them instead of repeating the same call.
8. If no tool is needed, answer normally, without the trigger line and without a block.

Example (the tool names here are only illustrations; use only the tools listed above):

{trigger_signal}
<function_calls>
<function_call>
<tool>search</tool>
<args>
<query>\"weather in Paris\"</query>
<limit>5</limit>
</args>
</function_call>
<function_call>
<tool>search</tool>
<args>
<query>\"weather in Rome\"</query>
<sources>[\"news\", \"web\"]</sources>
</args>
</function_call>
</function_calls>
";

// ---------------------------------------------------------------------------
// Tool list rendering.

const MAX_DEPTH: usize = 6;

fn schema_type(s: &Value) -> String {
    let base = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(" | "),
        _ if s.get("properties").is_some() => "object".to_string(),
        _ if s.get("items").is_some() => "array".to_string(),
        _ => String::new(),
    };
    if base == "array" {
        if let Some(items) = s.get("items") {
            let it = schema_type(items);
            if !it.is_empty() {
                return format!("array of {it}");
            }
        }
    }
    base
}

fn render_tool(s: &mut String, n: usize, t: &ToolSpec) {
    let _ = writeln!(s, "{n}. {}", t.name);
    if let Some(d) = &t.description {
        let _ = writeln!(s, "   Description: {}", indent_lines(d.trim(), "   "));
    }
    let props = t.parameters.get("properties").and_then(Value::as_object);
    let required = required_of(&t.parameters);
    match props.filter(|p| !p.is_empty()) {
        None => s.push_str("   Arguments: none (write <args></args>)\n"),
        Some(p) => {
            s.push_str("   Arguments:\n");
            for (k, v) in p {
                render_param(s, k, v, required.contains(&k.as_str()), 1, 0);
            }
            if !required.is_empty() {
                let _ = writeln!(s, "   Required: {}", required.join(", "));
            }
        }
    }
    // Schema parts that the list does not show otherwise.
    let extra: Map<String, Value> = t
        .parameters
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| matches!(k.as_str(), "anyOf" | "oneOf" | "allOf" | "not"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    if !extra.is_empty() {
        let _ = writeln!(s, "   Schema constraints: {}", Value::Object(extra));
    }
}

fn required_of(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn indent_lines(text: &str, pad: &str) -> String {
    if text.contains('\n') {
        text.replace('\n', &format!("\n{pad}"))
    } else {
        text.to_string()
    }
}

const SHOWN_KEYS: &[&str] = &[
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "const",
    "examples",
    "anyOf",
    "oneOf",
    "allOf",
];

fn render_param(
    s: &mut String,
    name: &str,
    schema: &Value,
    required: bool,
    level: usize,
    depth: usize,
) {
    let pad = "   ".repeat(level);
    let ty = schema_type(schema);
    let mut head = format!("{pad}- {name} (");
    if !ty.is_empty() {
        head.push_str(&ty);
        head.push_str(", ");
    }
    head.push_str(if required { "required" } else { "optional" });
    head.push(')');
    if let Some(d) = schema
        .get("description")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|d| !d.is_empty())
    {
        head.push_str(": ");
        head.push_str(&indent_lines(d, &format!("{pad}  ")));
    }
    let mut facts: Vec<String> = Vec::new();
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e.iter().map(Value::to_string).collect();
        facts.push(format!("one of: {}", vals.join(", ")));
    }
    if let Some(d) = schema.get("default") {
        facts.push(format!("default: {d}"));
    }
    for k in SHOWN_KEYS {
        if let Some(v) = schema.get(*k) {
            facts.push(format!("{k}: {v}"));
        }
    }
    // Items that are not objects: their own enum/constraints.
    let items = schema.get("items").filter(|i| i.is_object());
    if let Some(i) = items.filter(|i| i.get("properties").is_none()) {
        if let Some(e) = i.get("enum").and_then(Value::as_array) {
            let vals: Vec<String> = e.iter().map(Value::to_string).collect();
            facts.push(format!("items one of: {}", vals.join(", ")));
        }
        if let Some(d) = i.get("description").and_then(Value::as_str) {
            facts.push(format!("items: {d}"));
        }
    }
    if !facts.is_empty() {
        head.push_str(" [");
        head.push_str(&facts.join("; "));
        head.push(']');
    }
    s.push_str(&head);
    s.push('\n');
    if depth >= MAX_DEPTH {
        return;
    }
    let nested = match schema.get("properties") {
        Some(p) => Some((p, schema, false)),
        None => items.and_then(|i| i.get("properties").map(|p| (p, i, true))),
    };
    if let Some((Value::Object(p), owner, via_items)) = nested {
        let req = required_of(owner);
        if via_items {
            let _ = writeln!(s, "{pad}   each item has:");
        }
        let lvl = level + 1 + usize::from(via_items);
        for (k, v) in p {
            render_param(s, k, v, req.contains(&k.as_str()), lvl, depth + 1);
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing.

/// Parse the inside of `<function_calls>…</function_calls>` against `set`.
/// Returns `(name, arguments JSON object string)` per call, or why the block
/// is malformed: unparseable XML, no call, text outside the elements, an
/// unknown tool, a tool other than a forced one, arguments that are not an
/// object, a missing required argument.
pub fn parse_block(set: &ToolSet, inner: &str) -> Result<Vec<(String, String)>, String> {
    let mut calls = Vec::new();
    let mut rest = inner;
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(r) = rest.strip_prefix("<function_call>") else {
            return Err("text outside <function_call>".into());
        };
        let Some(end) = r.find("</function_call>") else {
            return Err("unclosed <function_call>".into());
        };
        calls.push(parse_call(set, &r[..end])?);
        rest = &r[end + "</function_call>".len()..];
    }
    if calls.is_empty() {
        return Err("no <function_call>".into());
    }
    Ok(calls)
}

/// Next element `<name>…</name>` (or `<name/>`) at the start of `s` (after
/// whitespace): `(name, inner, rest)`. Same-name nesting is balanced.
fn next_element(s: &str) -> Result<Option<(&str, &str, &str)>, String> {
    let s = s.trim_start();
    if s.is_empty() {
        return Ok(None);
    }
    let Some(r) = s.strip_prefix('<') else {
        return Err("text outside an element".into());
    };
    let Some(gt) = r.find('>') else {
        return Err("unclosed tag".into());
    };
    let raw = &r[..gt];
    let after = &r[gt + 1..];
    if let Some(name) = raw.strip_suffix('/') {
        let name = name.trim_end();
        if !valid_tag(name) {
            return Err(format!("bad tag <{raw}>"));
        }
        return Ok(Some((name, "", after)));
    }
    let name = raw.trim_end();
    if !valid_tag(name) {
        return Err(format!("bad tag <{raw}>"));
    }
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(k) = after[i..].find('<') {
        let at = &after[i + k..];
        if at.starts_with("<![CDATA[") {
            match at.find("]]>") {
                Some(e) => {
                    i += k + e + 3;
                    continue;
                }
                None => return Err("unclosed CDATA".into()),
            }
        }
        if at.starts_with(&close) {
            if depth == 0 {
                let inner = &after[..i + k];
                return Ok(Some((name, inner, &after[i + k + close.len()..])));
            }
            depth -= 1;
        } else if at.starts_with(&open) {
            depth += 1;
        }
        i += k + 1;
    }
    Err(format!("unclosed <{name}>"))
}

fn valid_tag(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.starts_with('!')
        && !name.starts_with('?')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '<' | '>' | '/' | '"' | '\'' | '='))
}

fn parse_call(set: &ToolSet, body: &str) -> Result<(String, String), String> {
    let mut name: Option<String> = None;
    let mut args: Option<&str> = None;
    let mut rest = body;
    while let Some((tag, inner, r)) = next_element(rest)? {
        match tag {
            "tool" | "tool_name" | "name" if name.is_none() => {
                name = Some(
                    decode_entities(strip_cdata(inner.trim()))
                        .trim()
                        .to_string(),
                )
            }
            "args" | "arguments" | "parameters" if args.is_none() => args = Some(inner),
            other => return Err(format!("unexpected <{other}> in <function_call>")),
        }
        rest = r;
    }
    let name = name.ok_or("missing <tool>")?;
    let spec = set
        .tool(&name)
        .ok_or_else(|| format!("unknown tool '{name}'"))?;
    if let ToolChoice::Function(forced) = &set.choice {
        if *forced != name {
            return Err(format!(
                "tool '{name}' called, but tool_choice forces '{forced}'"
            ));
        }
    }
    let props = spec.parameters.get("properties");
    let mut pairs: Vec<(String, Value)> = Vec::new();
    let a = args.unwrap_or("").trim();
    if a.starts_with('{') || a.starts_with('[') || a.starts_with('"') {
        // The whole arguments object written as JSON.
        match serde_json::from_str::<Value>(a) {
            Ok(Value::Object(m)) => pairs.extend(m),
            Ok(_) => return Err("arguments are not an object".into()),
            Err(_) => return Err("arguments are not valid JSON".into()),
        }
    } else {
        let mut rest = a;
        while let Some((key, inner, r)) = next_element(rest)? {
            let ty = props
                .and_then(|p| p.get(key))
                .and_then(|s| s.get("type"))
                .and_then(Value::as_str);
            let v = arg_value(inner, ty);
            match pairs.iter_mut().find(|(k, _)| k == key) {
                Some(slot) => slot.1 = v,
                None => pairs.push((key.to_string(), v)),
            }
            rest = r;
        }
    }
    for req in required_of(&spec.parameters) {
        if !pairs.iter().any(|(k, _)| k == req) {
            return Err(format!("tool '{name}': missing required argument '{req}'"));
        }
    }
    // Serialized in document order.
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        out.push_str(&v.to_string());
    }
    out.push('}');
    Ok((name, out))
}

fn strip_cdata(s: &str) -> &str {
    s.strip_prefix("<![CDATA[")
        .and_then(|x| x.strip_suffix("]]>"))
        .unwrap_or(s)
}

/// An argument element's value: JSON when it parses (a string-typed
/// parameter keeps its text when the JSON is not a string), else a string
/// with `&lt; &gt; &amp; &quot; &apos; &#N; &#xH;` decoded. CDATA content is
/// taken verbatim.
fn arg_value(inner: &str, ty: Option<&str>) -> Value {
    let t = inner.trim();
    let coerce = |v: Value, text: &str| -> Value {
        if ty == Some("string") && !v.is_string() {
            Value::String(text.to_string())
        } else {
            v
        }
    };
    if let Some(c) = t
        .strip_prefix("<![CDATA[")
        .and_then(|x| x.strip_suffix("]]>"))
    {
        return match serde_json::from_str::<Value>(c.trim()) {
            Ok(v) => coerce(v, c),
            Err(_) => Value::String(c.to_string()),
        };
    }
    if let Ok(v) = serde_json::from_str::<Value>(t) {
        return coerce(v, t);
    }
    let d = decode_entities(t);
    if d != t {
        if let Ok(v) = serde_json::from_str::<Value>(&d) {
            return coerce(v, &d);
        }
    }
    Value::String(d)
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(k) = rest.find('&') {
        out.push_str(&rest[..k]);
        let at = &rest[k..];
        let semi = at.bytes().take(12).position(|b| b == b';');
        let decoded = semi.and_then(|e| {
            let ent = &at[1..e];
            let c = match ent {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => ent
                    .strip_prefix("#x")
                    .or_else(|| ent.strip_prefix("#X"))
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, e + 1))
        });
        match decoded {
            Some((c, n)) => {
                out.push(c);
                rest = &at[n..];
            }
            None => {
                out.push('&');
                rest = &at[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// Streaming detection.

/// Detector output, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolPiece {
    /// Content text (consecutive text is merged).
    Content(String),
    /// One call; `index` counts the calls of the response from 0.
    Call { index: usize, call: ToolCall },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DState {
    /// Looking for the trigger; `buf` is the held suffix.
    Scan,
    /// `buf` = pre + trigger + text; waiting for `<function_calls>`.
    Opener { trig: usize, fence: bool },
    /// `buf` = pre + … + `<function_calls>` + body; waiting for the close.
    Block {
        open_end: usize,
        fence: bool,
        searched: usize,
    },
    /// After a fenced block: whitespace and the closing fence are dropped.
    AfterFence,
}

/// Incremental detector over the content channel. See the module docs.
#[derive(Debug, Clone)]
pub struct ToolDetector {
    set: Arc<ToolSet>,
    state: DState,
    buf: String,
    content_started: bool,
    calls: usize,
    malformed: u64,
    finished: bool,
}

enum Step {
    Go,
    Hold,
}

impl ToolDetector {
    /// A detector for one response.
    pub fn new(set: Arc<ToolSet>) -> Self {
        ToolDetector {
            set,
            state: DState::Scan,
            buf: String::new(),
            content_started: false,
            calls: 0,
            malformed: 0,
            finished: false,
        }
    }

    /// Calls emitted so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Blocks that were given back as content.
    pub fn malformed(&self) -> u64 {
        self.malformed
    }

    /// Append content text.
    pub fn push(&mut self, text: &str, out: &mut Vec<ToolPiece>) {
        if text.is_empty() || self.finished {
            return;
        }
        self.buf.push_str(text);
        self.run(false, out);
    }

    /// The content is complete: resolve what is held.
    pub fn finish(&mut self, out: &mut Vec<ToolPiece>) {
        if self.finished {
            return;
        }
        self.run(true, out);
        self.finished = true;
    }

    /// The response failed: release everything held as content, unparsed.
    pub fn abort(&mut self, out: &mut Vec<ToolPiece>) {
        if self.finished {
            return;
        }
        let b = std::mem::take(&mut self.buf);
        self.content(&b, out);
        self.finished = true;
    }

    fn content(&mut self, text: &str, out: &mut Vec<ToolPiece>) {
        let t = if self.content_started {
            text
        } else {
            text.trim_start()
        };
        if t.is_empty() {
            return;
        }
        self.content_started = true;
        if let Some(ToolPiece::Content(last)) = out.last_mut() {
            last.push_str(t);
        } else {
            out.push(ToolPiece::Content(t.to_string()));
        }
    }

    /// Emit `buf[..n]` as content and drop it.
    fn release(&mut self, n: usize, out: &mut Vec<ToolPiece>) {
        let head: String = self.buf.drain(..n).collect();
        self.content(&head, out);
    }

    fn run(&mut self, fin: bool, out: &mut Vec<ToolPiece>) {
        loop {
            let step = match self.state {
                DState::Scan => self.scan(fin, out),
                DState::Opener { trig, fence } => self.opener(trig, fence, fin, out),
                DState::Block {
                    open_end,
                    fence,
                    searched,
                } => self.block(open_end, fence, searched, fin, out),
                DState::AfterFence => self.after_fence(fin),
            };
            if let Step::Hold = step {
                break;
            }
        }
    }

    fn scan(&mut self, fin: bool, out: &mut Vec<ToolPiece>) -> Step {
        let trigger = self.set.trigger.as_str();
        if let Some(k) = self.buf.find(trigger) {
            let (pre, fence) = pre_start(&self.buf[..k]);
            self.release(pre, out);
            self.state = DState::Opener {
                trig: k - pre,
                fence,
            };
            return Step::Go;
        }
        if fin {
            let n = self.buf.len();
            self.release(n, out);
            return Step::Hold;
        }
        let h = hold_start(&self.buf, trigger);
        self.release(h, out);
        Step::Hold
    }

    fn opener(&mut self, trig: usize, fence: bool, fin: bool, out: &mut Vec<ToolPiece>) -> Step {
        let r0 = trig + self.set.trigger.len();
        let r = &self.buf[r0..];
        let mut i = r.len() - r.trim_start().len();
        let mut fenced = fence;
        let mut partial = false;
        if r[i..].starts_with(FENCE) {
            fenced = true;
            i += FENCE.len();
            i += r[i..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
                .count();
            let t = &r[i..];
            i += t.len() - t.trim_start().len();
        } else if i == r.len() || FENCE.starts_with(&r[i..]) {
            partial = true;
        }
        let t = &r[i..];
        if t.starts_with(OPEN) && i <= OPEN_WINDOW {
            let open_end = r0 + i + OPEN.len();
            self.state = DState::Block {
                open_end,
                fence: fenced,
                searched: open_end,
            };
            return Step::Go;
        }
        partial |= OPEN.starts_with(t);
        if partial && !fin && i <= OPEN_WINDOW {
            return Step::Hold;
        }
        // False alarm: pre + trigger are content; scan on after the trigger.
        self.release(r0, out);
        self.state = DState::Scan;
        Step::Go
    }

    fn block(
        &mut self,
        open_end: usize,
        fence: bool,
        searched: usize,
        fin: bool,
        out: &mut Vec<ToolPiece>,
    ) -> Step {
        let hay = &self.buf.as_bytes()[searched..];
        let found = hay
            .windows(CLOSE.len())
            .position(|w| w == CLOSE.as_bytes())
            .map(|p| searched + p);
        let Some(e) = found else {
            if fin || self.buf.len() > MAX_BLOCK {
                self.malformed += 1;
                let n = self.buf.len();
                self.release(n, out);
                self.state = DState::Scan;
                return if fin { Step::Go } else { Step::Hold };
            }
            let next = self.buf.len().saturating_sub(CLOSE.len() - 1).max(open_end);
            self.state = DState::Block {
                open_end,
                fence,
                searched: next,
            };
            return Step::Hold;
        };
        let end = e + CLOSE.len();
        match parse_block(&self.set, &self.buf[open_end..e]) {
            Ok(calls) => {
                self.buf.drain(..end);
                for (name, arguments) in calls {
                    out.push(ToolPiece::Call {
                        index: self.calls,
                        call: ToolCall {
                            id: new_call_id(),
                            name,
                            arguments,
                        },
                    });
                    self.calls += 1;
                }
                self.state = if fence {
                    DState::AfterFence
                } else {
                    DState::Scan
                };
            }
            Err(_) => {
                self.malformed += 1;
                self.release(end, out);
                self.state = DState::Scan;
            }
        }
        Step::Go
    }

    fn after_fence(&mut self, fin: bool) -> Step {
        let t = self.buf.trim_start();
        if t.starts_with(FENCE) {
            let n = self.buf.len() - t.len() + FENCE.len();
            self.buf.drain(..n);
            self.state = DState::Scan;
            return Step::Go;
        }
        if !fin && FENCE.starts_with(t) {
            return Step::Hold;
        }
        self.state = DState::Scan;
        Step::Go
    }
}

/// Where the text that belongs to a block starts in `before` (the text up to
/// a trigger): trailing whitespace, optionally preceded by a fence opener
/// ```` ```lang ```` and the whitespace before it. Also whether a fence was
/// found.
fn pre_start(before: &str) -> (usize, bool) {
    let a = before.trim_end().len();
    let head = &before[..a];
    let word = head
        .bytes()
        .rev()
        .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'+'))
        .count();
    let f = a - word;
    if head[..f].ends_with(FENCE) {
        let g = f - FENCE.len();
        (before[..g].trim_end().len(), true)
    } else {
        (a, false)
    }
}

/// Start of the suffix of `buf` to hold back: a proper prefix of the
/// trigger, with the whitespace/fence opener that may precede it, or a
/// trailing partial fence (`` ` `` or ` `` `).
fn hold_start(buf: &str, trigger: &str) -> usize {
    let b = buf.as_bytes();
    let t = trigger.as_bytes();
    let max = t.len().saturating_sub(1).min(b.len());
    let mut p = 0;
    for m in (1..=max).rev() {
        if b[b.len() - m..] == t[..m] {
            p = m;
            break;
        }
    }
    let before = &buf[..buf.len() - p];
    if p == 0 {
        let ticks = before.bytes().rev().take_while(|&c| c == b'`').count();
        if ticks == 1 || ticks == 2 {
            let h = before.len() - ticks;
            return buf[..h].trim_end().len();
        }
    }
    pre_start(before).0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ReasoningMode;
    use crate::pipeline::complete::Completion;
    use crate::pipeline::split::{Delta, Deltas, Splitter};
    use crate::pipeline::stream::ChatStream;
    use crate::provider::k2think::decode::{StreamOptions, UpstreamFormat};
    use serde_json::json;

    const TRIGGER: &str = "<Function_T3st_Start/>";
    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tools");

    /// What a client ends up with.
    #[derive(Debug, Clone, PartialEq, Default)]
    struct Outcome {
        reasoning: String,
        content: String,
        calls: Vec<(String, Value)>,
        finish: String,
        malformed: u64,
    }

    fn check_id(id: &str) {
        let tail = id.strip_prefix("call_").unwrap();
        assert_eq!(tail.len(), 24, "{id}");
        assert!(tail.bytes().all(|b| b.is_ascii_alphanumeric()), "{id}");
    }

    fn args_value(arguments: &str) -> Value {
        let v: Value = serde_json::from_str(arguments).unwrap();
        assert!(v.is_object(), "{arguments}");
        v
    }

    fn tools_json() -> Vec<Value> {
        serde_json::from_slice(&std::fs::read(format!("{DIR}/_tools.json")).unwrap()).unwrap()
    }

    fn set_for(choice: Option<&Value>) -> Arc<ToolSet> {
        let mut s = ToolSet::from_request(Some(&tools_json()), choice)
            .unwrap()
            .unwrap();
        s.trigger = TRIGGER.to_string();
        Arc::new(s)
    }

    struct Case {
        name: String,
        text: String,
        expected: Value,
        set: Arc<ToolSet>,
    }

    fn corpus() -> Vec<Case> {
        let mut names: Vec<String> = std::fs::read_dir(DIR)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".txt"))
            .collect();
        names.sort();
        assert!(names.len() >= 25, "corpus present");
        names
            .into_iter()
            .map(|n| {
                let base = n.trim_end_matches(".txt").to_string();
                let expected: Value = serde_json::from_slice(
                    &std::fs::read(format!("{DIR}/{base}.expected.json")).unwrap(),
                )
                .unwrap();
                Case {
                    text: std::fs::read_to_string(format!("{DIR}/{n}")).unwrap(),
                    set: set_for(expected.get("tool_choice")),
                    name: base,
                    expected,
                }
            })
            .collect()
    }

    impl Case {
        fn want(&self) -> Outcome {
            let e = &self.expected;
            Outcome {
                reasoning: e["reasoning"].as_str().unwrap_or("").to_string(),
                content: e["content"].as_str().unwrap().to_string(),
                calls: e["calls"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|c| {
                        (
                            c["name"].as_str().unwrap().to_string(),
                            c["arguments"].clone(),
                        )
                    })
                    .collect(),
                finish: e["finish_reason"].as_str().unwrap().to_string(),
                malformed: e["malformed"].as_u64().unwrap(),
            }
        }
    }

    /// Raw answer text → splitter (content channel) → detector.
    fn via_detector(set: &Arc<ToolSet>, pieces: &[&str]) -> Outcome {
        let mut sp = Splitter::new(false);
        let mut det = set.detects().then(|| ToolDetector::new(Arc::clone(set)));
        let mut o = Outcome::default();
        let mut d = Deltas::new();
        let mut out = Vec::new();
        let mut take =
            |d: &mut Deltas, det: &mut Option<ToolDetector>, fin: bool, o: &mut Outcome| {
                for x in d.iter() {
                    match (x, det.as_mut()) {
                        (Delta::Reasoning(t), _) => o.reasoning.push_str(t),
                        (Delta::Content(t), Some(det)) => det.push(t, &mut out),
                        (Delta::Content(t), None) => o.content.push_str(t),
                    }
                }
                d.clear();
                if let Some(det) = det.as_mut() {
                    if fin {
                        det.finish(&mut out);
                    }
                    for p in out.drain(..) {
                        match p {
                            ToolPiece::Content(t) => {
                                assert!(!t.is_empty());
                                o.content.push_str(&t)
                            }
                            ToolPiece::Call { index, call } => {
                                assert_eq!(index, o.calls.len());
                                check_id(&call.id);
                                o.calls.push((call.name, args_value(&call.arguments)));
                            }
                        }
                    }
                }
            };
        for p in pieces {
            sp.push(p, &mut d);
            take(&mut d, &mut det, false, &mut o);
        }
        sp.finish(&mut d);
        take(&mut d, &mut det, true, &mut o);
        o.finish = if o.calls.is_empty() {
            "stop"
        } else {
            "tool_calls"
        }
        .to_string();
        o.malformed = det.as_ref().map_or(0, |d| d.malformed());
        if let Some(det) = &det {
            assert_eq!(det.calls(), o.calls.len());
        }
        o
    }

    /// The text as OpenAI-delta SSE events of up to 16 characters.
    fn sse_body(text: &str) -> Vec<u8> {
        let chars: Vec<char> = text.chars().collect();
        let mut body = Vec::new();
        for piece in chars.chunks(16) {
            let s: String = piece.iter().collect();
            let ev = json!({"choices":[{"delta":{"content": s}}]});
            body.extend_from_slice(format!("data: {ev}\n\n").as_bytes());
        }
        body.extend_from_slice(b"data: [DONE]\n\n");
        body
    }

    fn options(
        set: Option<Arc<ToolSet>>,
        implicit: bool,
        reasoning: ReasoningMode,
    ) -> StreamOptions {
        StreamOptions {
            id: "chatcmpl-t".into(),
            created: 1,
            model: "m".into(),
            reasoning,
            implicit_think: implicit,
            include_usage: true,
            tools: set,
            delivery: crate::provider::k2think::decode::ContentDelivery::default(),
        }
    }

    /// Decode our chunk SSE, checking the shape of every chunk.
    fn assemble(out: &[u8]) -> Outcome {
        let text = std::str::from_utf8(out).unwrap();
        let mut o = Outcome::default();
        let mut finished = false;
        let mut done = false;
        for (n, ev) in text.split("\n\n").filter(|e| !e.is_empty()).enumerate() {
            let data = ev.strip_prefix("data: ").unwrap();
            assert!(!done);
            if data == "[DONE]" {
                assert!(finished);
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            let choices = v["choices"].as_array().unwrap();
            if choices.is_empty() {
                continue;
            }
            let c = &choices[0];
            let delta = c["delta"].as_object().unwrap();
            if n == 0 {
                assert_eq!(c["delta"], json!({"role":"assistant","content":""}));
                continue;
            }
            if let Some(f) = c["finish_reason"].as_str() {
                assert!(delta.is_empty());
                assert!(!finished);
                finished = true;
                o.finish = f.to_string();
                continue;
            }
            assert!(!finished);
            assert_eq!(delta.len(), 1, "{data}");
            if let Some(r) = delta.get("reasoning_content") {
                o.reasoning.push_str(r.as_str().unwrap());
            } else if let Some(t) = delta.get("content") {
                let t = t.as_str().unwrap();
                assert!(!t.is_empty());
                o.content.push_str(t);
            } else {
                let tc = delta["tool_calls"].as_array().unwrap();
                assert_eq!(tc.len(), 1, "one call per chunk");
                let call = &tc[0];
                assert_eq!(call["index"], o.calls.len());
                assert_eq!(call["type"], "function");
                check_id(call["id"].as_str().unwrap());
                let f = &call["function"];
                o.calls.push((
                    f["name"].as_str().unwrap().to_string(),
                    args_value(f["arguments"].as_str().unwrap()),
                ));
            }
        }
        assert!(done);
        o
    }

    fn via_stream(set: &Arc<ToolSet>, pieces: &[&[u8]], implicit: bool) -> Outcome {
        let mut s = ChatStream::new(
            options(Some(Arc::clone(set)), implicit, ReasoningMode::Field),
            UpstreamFormat::Sse,
        );
        let mut out = Vec::new();
        for p in pieces {
            s.push(p, &mut out);
        }
        s.finish(&mut out).unwrap();
        let mut o = assemble(&out);
        o.malformed = s.malformed_tool_blocks();
        assert_eq!(s.tool_calls_emitted(), o.calls.len());
        o
    }

    fn via_completion(set: &Arc<ToolSet>, pieces: &[&[u8]], implicit: bool) -> Outcome {
        let mut c =
            Completion::new(UpstreamFormat::Sse, implicit).with_tools(Some(Arc::clone(set)));
        for p in pieces {
            c.push(p);
        }
        let malformed = c.malformed_tool_blocks();
        let r = c.finish().unwrap();
        assert!(c.malformed_tool_blocks() >= malformed);
        let v: Value =
            serde_json::from_slice(&r.to_json("id", 1, "m", ReasoningMode::Field)).unwrap();
        let msg = &v["choices"][0]["message"];
        assert_eq!(v["choices"][0]["finish_reason"], r.finish_reason.as_str());
        if r.tool_calls.is_empty() {
            assert!(msg.get("tool_calls").is_none());
            assert_eq!(msg["content"], r.content.as_str());
        } else {
            let tc = msg["tool_calls"].as_array().unwrap();
            assert_eq!(tc.len(), r.tool_calls.len());
            for (w, c) in tc.iter().zip(&r.tool_calls) {
                assert_eq!(
                    w,
                    &json!({"id": c.id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
                );
            }
            if r.content.is_empty() {
                assert_eq!(msg["content"], Value::Null);
            } else {
                assert_eq!(msg["content"], r.content.as_str());
            }
        }
        assert_eq!(c.tool_calls_emitted(), r.tool_calls.len());
        Outcome {
            reasoning: r.reasoning,
            content: r.content,
            calls: r
                .tool_calls
                .iter()
                .map(|c| {
                    check_id(&c.id);
                    (c.name.clone(), args_value(&c.arguments))
                })
                .collect(),
            finish: r.finish_reason,
            malformed: c.malformed_tool_blocks(),
        }
    }

    fn char_splits(text: &str) -> Vec<usize> {
        (0..=text.len())
            .filter(|i| text.is_char_boundary(*i))
            .collect()
    }

    #[test]
    fn corpus_detector_every_split() {
        for c in corpus() {
            let want = c.want();
            let t = c.text.as_str();
            assert_eq!(via_detector(&c.set, &[t]), want, "{} whole", c.name);
            let chars: Vec<String> = t.chars().map(String::from).collect();
            let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(via_detector(&c.set, &refs), want, "{} char by char", c.name);
            let bounds = char_splits(t);
            for &i in &bounds {
                let (a, b) = t.split_at(i);
                assert_eq!(via_detector(&c.set, &[a, b]), want, "{} split {i}", c.name);
            }
            // Three pieces, the middle one short (a trigger or tag cut twice).
            {
                for &i in &bounds {
                    for &j in bounds.iter().filter(|j| **j > i && **j <= i + 12) {
                        let (a, rest) = t.split_at(i);
                        let (b, d) = rest.split_at(j - i);
                        assert_eq!(
                            via_detector(&c.set, &[a, b, d]),
                            want,
                            "{} split {i},{j}",
                            c.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn corpus_stream_and_completion_every_byte_split() {
        for c in corpus() {
            let want = c.want();
            let body = sse_body(&c.text);
            assert_eq!(
                via_stream(&c.set, &[&body], false),
                want,
                "{} stream",
                c.name
            );
            assert_eq!(
                via_completion(&c.set, &[&body], false),
                want,
                "{} complete",
                c.name
            );
            let bytes: Vec<&[u8]> = body.chunks(1).collect();
            assert_eq!(
                via_stream(&c.set, &bytes, false),
                want,
                "{} bytewise",
                c.name
            );
            for i in 0..=body.len() {
                let (a, b) = body.split_at(i);
                assert_eq!(
                    via_stream(&c.set, &[a, b], false),
                    want,
                    "{} stream split {i}",
                    c.name
                );
                assert_eq!(
                    via_completion(&c.set, &[a, b], false),
                    want,
                    "{} complete split {i}",
                    c.name
                );
            }
            // implicit_think: same content and calls (reasoning may carry the retracted speculation).
            for o in [
                via_stream(&c.set, &[&body], true),
                via_completion(&c.set, &[&body], true),
            ] {
                assert_eq!(
                    (&o.content, &o.calls, &o.finish, o.malformed),
                    (&want.content, &want.calls, &want.finish, want.malformed),
                    "{} implicit",
                    c.name
                );
            }
        }
    }

    #[test]
    fn without_tools_nothing_changes() {
        // The upstream fixtures through a tool-enabled stream assemble the same.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/upstream");
        let set = set_for(None);
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().and_then(|x| x.to_str()) != Some("sse") {
                continue;
            }
            let body = std::fs::read(&p).unwrap();
            let run = |tools: Option<Arc<ToolSet>>| {
                let mut s = ChatStream::new(
                    options(tools, true, ReasoningMode::Field),
                    UpstreamFormat::Sse,
                );
                let mut out = Vec::new();
                for piece in body.chunks(5) {
                    s.push(piece, &mut out);
                }
                let r = s.finish(&mut out);
                (out, r)
            };
            let (plain, r1) = run(None);
            let (with, r2) = run(Some(Arc::clone(&set)));
            assert_eq!(r1, r2, "{p:?}");
            if r1.is_ok() {
                assert_eq!(assemble(&plain), assemble(&with), "{p:?}");
            }
        }
    }

    #[test]
    fn choice_none_is_byte_identical_to_no_tools() {
        let set = set_for(Some(&json!("none")));
        let body = sse_body(&format!("Hi\n{TRIGGER}\n<function_calls><function_call><tool>notify</tool></function_call></function_calls>"));
        let run = |tools: Option<Arc<ToolSet>>| {
            let mut s = ChatStream::new(
                options(tools, false, ReasoningMode::Field),
                UpstreamFormat::Sse,
            );
            let mut out = Vec::new();
            s.push(&body, &mut out);
            s.finish(&mut out).unwrap();
            out
        };
        assert_eq!(run(None), run(Some(set)));
    }

    #[test]
    fn inline_reasoning_with_calls() {
        let set = set_for(None);
        let body = sse_body(&format!("<think>why</think>{TRIGGER}\n<function_calls><function_call><tool>notify</tool></function_call></function_calls>"));
        let mut s = ChatStream::new(
            options(Some(set.clone()), false, ReasoningMode::Inline),
            UpstreamFormat::Sse,
        );
        let mut out = Vec::new();
        s.push(&body, &mut out);
        s.finish(&mut out).unwrap();
        let o = assemble(&out);
        assert_eq!(o.content, "<think>why</think>\n\n");
        assert_eq!(o.calls, vec![("notify".to_string(), json!({}))]);
        assert_eq!(o.finish, "tool_calls");
        let mut c = Completion::new(UpstreamFormat::Sse, false).with_tools(Some(set));
        c.push(&body);
        let r = c.finish().unwrap();
        let v: Value =
            serde_json::from_slice(&r.to_json("i", 1, "m", ReasoningMode::Drop)).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    }

    #[test]
    fn upstream_failure_releases_held_text() {
        let set = set_for(None);
        let body = sse_body(&format!(
            "Partial\n{TRIGGER}\n<function_calls><function_call>"
        ));
        let body = &body[..body.len() - b"data: [DONE]\n\n".len()];
        let mut s = ChatStream::new(
            options(Some(set), false, ReasoningMode::Field),
            UpstreamFormat::Sse,
        );
        let mut out = Vec::new();
        s.push(body, &mut out);
        s.fail(crate::core::events::UPSTREAM_STREAM_ERROR, "cut", &mut out);
        let text = String::from_utf8(out).unwrap();
        let content: String = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(
            content,
            format!("Partial\n{TRIGGER}\n<function_calls><function_call>")
        );
        assert!(text.contains("\"finish_reason\":\"error\""));
    }

    #[test]
    fn random_texts_split_invariant_and_lossless() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let good = "<function_call><tool>get_weather</tool><args><city>\"X\"</city></args></function_call>";
        let atoms: &[&str] = &[
            TRIGGER,
            "<Function_T3",
            "st_Start/>",
            "<function_calls>",
            "</function_calls>",
            good,
            "<function_call>",
            "<tool>nope</tool>",
            "```",
            "```xml",
            "`",
            "\n",
            " ",
            "\t",
            "a",
            "word ",
            "é",
            "北",
            "<",
            ">",
            "</think>",
            "<think>",
            "&lt;",
            "<args>",
            "</args>",
        ];
        let set = set_for(None);
        for _ in 0..1500 {
            let n = (next() % 14) as usize;
            let mut text = String::new();
            for _ in 0..n {
                text.push_str(atoms[(next() % atoms.len() as u64) as usize]);
            }
            let whole = via_detector(&set, &[&text]);
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
            assert_eq!(via_detector(&set, &refs), whole, "{text:?}");
            let bounds = char_splits(&text);
            let i = bounds[(next() % bounds.len() as u64) as usize];
            let (a, b) = text.split_at(i);
            assert_eq!(via_detector(&set, &[a, b]), whole, "{text:?} at {i}");
            if whole.calls.is_empty() {
                // Nothing parsed: the content channel passes through unchanged.
                let plain = via_detector(&set_for(Some(&json!("none"))), &[&text]);
                assert_eq!(whole.content, plain.content, "{text:?}");
            }
        }
    }

    #[test]
    fn from_request_validation() {
        assert_eq!(ToolSet::from_request(None, None), Ok(None));
        assert_eq!(
            ToolSet::from_request(Some(&[]), Some(&json!("auto"))),
            Ok(None)
        );
        let t = tools_json();
        let s = ToolSet::from_request(Some(&t), None).unwrap().unwrap();
        assert_eq!(s.choice, ToolChoice::Auto);
        assert_eq!(s.tools.len(), 4);
        assert_eq!(
            s.tools[3].parameters,
            json!({"type":"object","properties":{}})
        );
        let trig = |s: &ToolSet| {
            let mid = s
                .trigger
                .strip_prefix("<Function_")
                .unwrap()
                .strip_suffix("_Start/>")
                .unwrap()
                .to_string();
            assert_eq!(mid.len(), 4);
            assert!(mid.bytes().all(|b| b.is_ascii_alphanumeric()));
            mid
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20 {
            seen.insert(trig(
                &ToolSet::from_request(Some(&t), None).unwrap().unwrap(),
            ));
        }
        assert!(seen.len() > 1, "trigger drawn per request");
        for (choice, want) in [
            (json!("none"), ToolChoice::None),
            (json!("required"), ToolChoice::Required),
            (
                json!({"type":"function","function":{"name":"search"}}),
                ToolChoice::Function("search".into()),
            ),
        ] {
            assert_eq!(
                ToolSet::from_request(Some(&t), Some(&choice))
                    .unwrap()
                    .unwrap()
                    .choice,
                want
            );
        }
        let err = |tools: Value, choice: Option<Value>| {
            ToolSet::from_request(Some(tools.as_array().unwrap()), choice.as_ref())
                .unwrap_err()
                .0
        };
        assert_eq!(
            err(json!([{"type":"function","function":{"name":"a b"}}]), None),
            "tools[0].function.name"
        );
        assert_eq!(
            err(
                json!([{"type":"function","function":{"name":"a"}},{"type":"function","function":{"name":"a"}}]),
                None
            ),
            "tools[1].function.name"
        );
        assert_eq!(
            err(
                json!([{"type":"function","function":{"name":"a","parameters":"x"}}]),
                None
            ),
            "tools[0].function.parameters"
        );
        assert_eq!(err(json!([{"type":"retrieval"}]), None), "tools[0].type");
        assert_eq!(err(json!([1]), None), "tools[0]");
        assert_eq!(
            err(
                json!([{"type":"function","function":{"name":"a"}}]),
                Some(json!({"type":"function","function":{"name":"b"}}))
            ),
            "tool_choice.function.name"
        );
        assert_eq!(
            err(
                json!([{"type":"function","function":{"name":"a"}}]),
                Some(json!("sometimes"))
            ),
            "tool_choice"
        );
        // Flat form.
        let s = ToolSet::from_request(Some(&[json!({"name":"flat","description":"d"})]), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.tools[0].name, "flat");
    }

    #[test]
    fn instructions_describe_everything() {
        let s = set_for(None);
        let text = s.instructions(None);
        for needle in [
            TRIGGER,
            "<function_calls>",
            "</function_calls>",
            "<tool_result>",
            "1. get_weather",
            "Description: Current weather for a city.",
            "- city (string, required): City name",
            "- unit (string, optional) [one of: \"c\", \"f\"; default: \"c\"]",
            "- days (integer, optional) [minimum: 1]",
            "- sources (array of string, optional) [items one of: \"news\", \"web\"]",
            "- filter (object, optional)",
            "      - lang (string, optional)",
            "- -i (boolean, optional)",
            "4. notify",
            "Arguments: none",
            "Required: city",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("{tools_list}") && !text.contains("{trigger_signal}"));
        assert!(!text.contains("MUST"));
        let forced = set_for(Some(
            &json!({"type":"function","function":{"name":"search"}}),
        ));
        assert!(forced
            .instructions(None)
            .contains("MUST call the tool \"search\""));
        assert!(set_for(Some(&json!("required")))
            .instructions(None)
            .contains("MUST call at least one tool"));
        let none = set_for(Some(&json!("none"))).instructions(None);
        assert!(none.contains("do NOT call any tool") && none.contains("1. get_weather"));
        let custom = s.instructions(Some("T={trigger_signal} {x}\nL={tools_list}"));
        assert!(custom.starts_with(&format!("T={TRIGGER} {{x}}\nL=1. get_weather")));
        // Nested array items with object properties.
        let deep = ToolSet::from_request(Some(&[json!({"type":"function","function":{"name":"d",
            "parameters":{"type":"object","properties":{"rows":{"type":"array","items":{"type":"object",
            "properties":{"k":{"type":"string","description":"key"}},"required":["k"]}}}}}})]), None)
            .unwrap().unwrap();
        let text = deep.tools_list();
        assert!(text.contains("- rows (array of object, optional)\n      each item has:\n         - k (string, required): key"), "{text}");
    }

    #[test]
    fn history_encoding_round_trips() {
        let set = set_for(None);
        let calls = vec![
            (
                "get_weather".to_string(),
                r#"{"city":"Pa</city>ris <b>","days":2}"#.to_string(),
            ),
            (
                "search".to_string(),
                r#"{"query":"北京 ☀️","sources":["news"],"filter":{"lang":"x"}}"#.to_string(),
            ),
            ("notify".to_string(), "".to_string()),
            ("notify".to_string(), "not json".to_string()),
            (
                "run_cmd".to_string(),
                r#"{"-i":false,"cmd":"ls"}"#.to_string(),
            ),
        ];
        let enc = set.encode_assistant(Some("Let me check."), &calls);
        assert!(enc.starts_with(&format!("Let me check.\n{TRIGGER}\n<function_calls>\n<function_call>\n<tool>get_weather</tool>\n<args>\n<city>")), "{enc}");
        assert!(
            enc.contains("<raw_arguments>\"not json\"</raw_arguments>"),
            "{enc}"
        );
        assert!(enc.ends_with("</function_calls>"));
        let o = via_detector(&set, &[&enc]);
        assert_eq!(o.content, "Let me check.");
        assert_eq!(o.malformed, 0);
        let got: Vec<(String, Value)> = o.calls;
        assert_eq!(
            got[0],
            (
                "get_weather".into(),
                json!({"city":"Pa</city>ris <b>","days":2})
            )
        );
        assert_eq!(
            got[1],
            (
                "search".into(),
                json!({"query":"北京 ☀️","sources":["news"],"filter":{"lang":"x"}})
            )
        );
        assert_eq!(got[2], ("notify".into(), json!({})));
        assert_eq!(
            got[3],
            ("notify".into(), json!({"raw_arguments":"not json"}))
        );
        assert_eq!(got[4], ("run_cmd".into(), json!({"-i":false,"cmd":"ls"})));
        assert_eq!(
            set.encode_assistant(None, &calls[2..3]),
            set.encode_calls(&calls[2..3])
        );
        assert_eq!(
            encode_result(Some("get_weather"), "{\"t\":21}"),
            "Tool execution result:\n- Tool name: get_weather\n- Execution result:\n<tool_result>\n{\"t\":21}\n</tool_result>"
        );
        assert_eq!(
            encode_result(None, "ok"),
            "Tool execution result:\n- Execution result:\n<tool_result>\nok\n</tool_result>"
        );
    }

    #[test]
    fn argument_order_and_entities() {
        let set = set_for(None);
        let calls = parse_block(
            &set,
            "<function_call><tool>search</tool><args><query>&#72;&#x69; &amp;amp; &bogus;</query><limit>3</limit></args></function_call>",
        )
        .unwrap();
        assert_eq!(calls[0].1, r#"{"query":"Hi &amp; &bogus;","limit":3}"#);
        let calls = parse_block(
            &set,
            "<function_call><tool>search</tool><args><query>&ééééééé; &#xD800; &#99999999;</query></args></function_call>",
        )
        .unwrap();
        assert_eq!(calls[0].1, r#"{"query":"&ééééééé; &#xD800; &#99999999;"}"#);
        assert!(parse_block(&set, "").is_err());
        assert!(parse_block(
            &set,
            "junk <function_call><tool>notify</tool></function_call>"
        )
        .is_err());
        assert!(parse_block(
            &set,
            "<function_call><tool>notify</tool><extra>1</extra></function_call>"
        )
        .is_err());
    }
}

//! Z.AI answer stream → ordered reasoning/content deltas ([`ZaiDecoder`],
//! providers-protocol.md §A.6).
//!
//! # Input
//!
//! SSE whose `data:` payloads are:
//!
//! * the envelope `{"type":"chat:completion","data":{…}}`; `type:"chat:completion:finish"`
//!   is an end marker; other `type`s carry nothing we show (only their errors count);
//! * a bare data object `{"phase":…,"delta_content":…}` (no envelope);
//! * an OpenAI-shaped chunk `{"choices":[{"delta":{"content","reasoning_content"}}]}`;
//! * `[DONE]`.
//!
//! A body without any SSE event is read as one JSON document (an error object, or a
//! bare data object).
//!
//! Fields of a data object: `phase` (`thinking`, `answer`, `other`, `tool_call`, `done`,
//! `search`, `finish`; a missing phase keeps the previous one), `delta_content`
//! (incremental text), `edit_index` + `edit_content`, `usage` (OpenAI counts), `done:
//! true`, `finish_reason`, `error`.
//!
//! # The text
//!
//! One full-text buffer in the upstream's coordinates: `delta_content` is appended;
//! `edit_content` truncates the buffer at the `edit_index`-th **character** (Unicode
//! scalar; an index past the end appends), then appends (GFA's reading). The buffer is
//! turned into the text the [`Splitter`] reads (the *view*):
//!
//! * `<glm_block …>…</glm_block>` (Z.AI's own legacy MCP tool calls, including a later
//!   phase that edits inside the block) is removed;
//! * thinking-phase text that does not start with markup (`<details`, `<think`) is
//!   wrapped as `<think>…</think>` and closed where the first answer-phase text starts
//!   (a leading `</details>` there is dropped); `tool_call`/`search` text stays on the
//!   channel in force. Text with markup goes through as it is: the [`Splitter`]
//!   (`implicit_think = false`) reads Open WebUI's `<details type="reasoning">` block,
//!   drops its `<summary>` and `> ` quoting, and takes the text after `</details>` as the
//!   answer.
//!
//! After an append the view only grows, and its new part goes to the splitter. After an
//! edit the view is built again from the buffer: if it extends what the splitter has
//! read, the suffix is pushed; otherwise [`Splitter::rederive`] emits only what goes
//! beyond the output already sent on each channel, so output never repeats.
//!
//! # Output
//!
//! The content channel then loses Z.AI's search citations (`【…turn0search1…】`, the
//! pattern `【[^】]*turn\d+search\d+[^】]*】`), a trailing `【…` of at most
//! [`MARKER_MAX`] bytes being held until it is decided. Everything else in the content
//! passes unchanged (tool calls are emulated downstream from the content text).
//!
//! Errors (`data.error`, `data.data.error`, a top-level `error`, or `detail` without
//! text, an `event: error`) stop the decoding: [`Decoder::error`] gives the upstream's
//! message and [`ZaiDecoder::error_code`] its numeric `code` (see
//! [`super::classify::classify_inline`]). End markers: `done: true`, `phase: "done"`,
//! `[DONE]`, `type: "chat:completion:finish"`.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::core::events::{Deltas, Usage};
use crate::core::Decoder;
use crate::pipeline::split::Splitter;
use crate::provider::error_message;
use crate::sse::SseDecoder;

/// Longest search citation (bytes, brackets included) that is recognised; a `【` without
/// its `】` within this many bytes is text.
pub const MARKER_MAX: usize = 64;

/// Bytes of a body kept while it has no SSE event (read as JSON at the end).
const MAX_PLAIN_BODY: usize = 64 * 1024;

/// The error for a body that is neither SSE nor JSON.
pub const NOT_AN_ANSWER: &str = "upstream returned a body that is not a Z.AI answer";

/// What a piece of text is, by its event's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `thinking`.
    Thinking,
    /// `answer`, `other`, `done`, `finish` and anything unknown.
    Answer,
    /// `tool_call`, `search`: Z.AI's own tools; the text stays on the channel in force.
    Neutral,
}

fn phase_of(s: &str) -> Phase {
    match s {
        "thinking" => Phase::Thinking,
        "tool_call" | "search" => Phase::Neutral,
        _ => Phase::Answer,
    }
}

const BLOCK_OPEN: &str = "<glm_block";
const BLOCK_CLOSE: &str = "</glm_block>";

/// Streaming removal of `<glm_block…>…</glm_block>`. Its output depends only on the
/// input so far, not on how it was cut.
#[derive(Debug, Clone, Default)]
struct Blocks {
    in_block: bool,
    /// A possible opener (outside) or closer (inside) cut at the end of the input.
    held: String,
}

impl Blocks {
    fn push(&mut self, text: &str, out: &mut String) {
        let buf: Cow<'_, str> = if self.held.is_empty() {
            Cow::Borrowed(text)
        } else {
            let mut b = std::mem::take(&mut self.held);
            b.push_str(text);
            Cow::Owned(b)
        };
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            if self.in_block {
                if let Some(k) = rest.find(BLOCK_CLOSE) {
                    self.in_block = false;
                    i += k + BLOCK_CLOSE.len();
                    continue;
                }
                // Keep only a tail that could still become the closer.
                let keep = (1..BLOCK_CLOSE.len())
                    .rev()
                    .find(|&n| rest.ends_with(&BLOCK_CLOSE[..n]))
                    .unwrap_or(0);
                self.held.push_str(&rest[rest.len() - keep..]);
                return;
            }
            let Some(k) = rest.find('<') else {
                out.push_str(rest);
                return;
            };
            out.push_str(&rest[..k]);
            let at = &rest[k..];
            if at.len() <= BLOCK_OPEN.len() {
                if BLOCK_OPEN.starts_with(at) {
                    self.held.push_str(at);
                    return;
                }
            } else if at.starts_with(BLOCK_OPEN) {
                let next = at.as_bytes()[BLOCK_OPEN.len()];
                if next == b'>' || next.is_ascii_whitespace() {
                    self.in_block = true;
                    i += k + BLOCK_OPEN.len();
                    continue;
                }
            }
            out.push('<');
            i += k + 1;
        }
    }

    fn finish(&mut self, out: &mut String) {
        if !self.in_block {
            out.push_str(&self.held);
        }
        self.held.clear();
    }
}

/// How thinking-phase text is presented to the splitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrap {
    /// No text that decides yet (only whitespace, or a possible markup opener, held).
    Undecided,
    /// Markup, or an answer first: the text goes through unchanged.
    Pass,
    /// Bare reasoning inside our `<think>`.
    Bare,
    /// Our `</think>` was written: a leading `</details>` of the answer is dropped.
    AfterBare,
}

/// Raw upstream text (with phases) → the text the splitter reads. Like [`Blocks`], its
/// output depends only on the input so far, so an incremental view and one built again
/// from the buffer agree.
#[derive(Debug, Clone)]
struct View {
    blocks: Blocks,
    wrap: Wrap,
    /// Text held by the wrap (leading whitespace, a cut opener, a cut `</details>`).
    held: String,
    /// The phase of the last push (for text [`Blocks`] releases at the end).
    last: Phase,
    scratch: String,
}

impl Default for View {
    fn default() -> Self {
        View {
            blocks: Blocks::default(),
            wrap: Wrap::Undecided,
            held: String::new(),
            last: Phase::Answer,
            scratch: String::new(),
        }
    }
}

/// Text that starts an Open WebUI reasoning block or a think tag.
fn is_markup(t: &str) -> bool {
    t.starts_with("<details") || t.starts_with("<think")
}

/// Text that could still become [`is_markup`].
fn maybe_markup(t: &str) -> bool {
    "<details".starts_with(t) || "<think".starts_with(t)
}

impl View {
    fn push(&mut self, text: &str, phase: Phase, out: &mut String) {
        self.last = phase;
        let mut clean = std::mem::take(&mut self.scratch);
        clean.clear();
        self.blocks.push(text, &mut clean);
        if !clean.is_empty() {
            self.wrap(&clean, phase, out);
        }
        self.scratch = clean;
    }

    fn wrap(&mut self, text: &str, phase: Phase, out: &mut String) {
        match (self.wrap, phase) {
            (Wrap::Undecided, Phase::Thinking) => {
                self.held.push_str(text);
                let t = self.held.trim_start();
                if t.is_empty() || (!is_markup(t) && maybe_markup(t)) {
                    return;
                }
                if is_markup(t) {
                    self.wrap = Wrap::Pass;
                } else {
                    self.wrap = Wrap::Bare;
                    out.push_str("<think>");
                }
                out.push_str(&self.held);
                self.held.clear();
            }
            (Wrap::Undecided, Phase::Neutral)
                if self.held.trim().is_empty() && text.trim().is_empty() =>
            {
                self.held.push_str(text);
            }
            (Wrap::Undecided, _) => {
                if self.held.trim().is_empty() {
                    self.wrap = Wrap::Pass;
                    out.push_str(&self.held);
                    out.push_str(text);
                    self.held.clear();
                } else {
                    // A cut opener that never completed: it was bare reasoning.
                    out.push_str("<think>");
                    out.push_str(&self.held);
                    self.held.clear();
                    self.close_bare(text, out);
                }
            }
            (Wrap::Bare, Phase::Thinking | Phase::Neutral) | (Wrap::Pass, _) => out.push_str(text),
            (Wrap::Bare, Phase::Answer) => self.close_bare(text, out),
            (Wrap::AfterBare, _) => self.after_bare(text, out),
        }
    }

    fn close_bare(&mut self, text: &str, out: &mut String) {
        out.push_str("</think>");
        self.wrap = Wrap::AfterBare;
        self.after_bare(text, out);
    }

    fn after_bare(&mut self, text: &str, out: &mut String) {
        const CLOSE: &str = "</details>";
        self.held.push_str(text);
        let t = self.held.trim_start();
        if let Some(rest) = t.strip_prefix(CLOSE) {
            out.push_str(rest);
        } else if CLOSE.starts_with(t) {
            return;
        } else {
            out.push_str(&self.held);
        }
        self.held.clear();
        self.wrap = Wrap::Pass;
    }

    fn finish(&mut self, out: &mut String) {
        let mut clean = String::new();
        self.blocks.finish(&mut clean);
        if !clean.is_empty() {
            self.wrap(&clean, self.last, out);
        }
        match self.wrap {
            Wrap::Undecided if !self.held.trim().is_empty() => {
                out.push_str("<think>");
                out.push_str(&self.held);
            }
            _ => out.push_str(&self.held),
        }
        self.held.clear();
    }
}

/// Streaming removal of search citations from the content channel.
#[derive(Debug, Clone, Default)]
struct Markers {
    /// A `【…` not decided yet (shorter than [`MARKER_MAX`], no `】`).
    held: String,
}

impl Markers {
    fn push(&mut self, text: &str, out: &mut Deltas) {
        if self.held.is_empty() && !text.contains('【') {
            out.push_content(text);
            return;
        }
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        let mut i = 0;
        while i < buf.len() {
            let rest = &buf[i..];
            let Some(k) = rest.find('【') else {
                out.push_content(rest);
                break;
            };
            out.push_content(&rest[..k]);
            let at = &rest[k..];
            let open = '【'.len_utf8();
            let close = '】'.len_utf8();
            match at.find('】') {
                // A citation: dropped.
                Some(e) if e + close <= MARKER_MAX && is_search_citation(&at[open..e]) => {
                    i += k + e + close;
                }
                // Could still close within the bound: decide later.
                None if at.len() < MARKER_MAX => {
                    self.held.push_str(at);
                    break;
                }
                // Another bracket, or too long: the `【` is text.
                _ => {
                    out.push_content("【");
                    i += k + open;
                }
            }
        }
    }

    fn finish(&mut self, out: &mut Deltas) {
        out.push_content(&self.held);
        self.held.clear();
    }
}

/// `inner` contains `turn<digits>search<digits>`.
fn is_search_citation(inner: &str) -> bool {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    inner.match_indices("turn").any(|(at, _)| {
        let rest = &inner[at + 4..];
        let n = digits(rest);
        n > 0
            && rest[n..]
                .strip_prefix("search")
                .is_some_and(|r| digits(r) > 0)
    })
}

/// A number or a numeric string.
fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A value that says something: not null, `false`, `""` or `{}`.
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => false,
        Value::String(s) => !s.trim().is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

/// Whether a data object carries answer text.
fn has_text(o: &Map<String, Value>) -> bool {
    ["delta_content", "edit_content", "content", "choices"]
        .iter()
        .any(|k| o.get(*k).is_some_and(|v| !v.is_null()))
}

/// The error an event carries: message and numeric code.
fn error_of(v: &Value) -> Option<(String, Option<i64>)> {
    let top = v.as_object()?;
    let data = top.get("data").and_then(Value::as_object);
    let nested = data.and_then(|d| d.get("data")).and_then(Value::as_object);
    for o in [Some(top), data, nested].into_iter().flatten() {
        if let Some(e) = o.get("error").filter(|e| is_set(e)) {
            let code = e
                .get("code")
                .and_then(int_of)
                .or_else(|| o.get("code").and_then(int_of));
            return Some((error_message(e), code));
        }
    }
    // `{"detail": …, "code": …}` without text: the whole payload, or its data object. A
    // `detail` beside stream fields (`phase`, `done`, `usage`) needs a `code` to count.
    let detail_only = |o: &Map<String, Value>| {
        let code = o.get("code").filter(|c| !c.is_null());
        let streamy = ["phase", "done", "usage"]
            .iter()
            .any(|k| o.contains_key(*k));
        o.get("detail")
            .filter(|d| is_set(d) && !has_text(o) && (code.is_some() || !streamy))
            .map(|d| (error_message(d), code.and_then(int_of)))
    };
    match data {
        None => detail_only(top),
        Some(d) => detail_only(d),
    }
}

/// Everything but the SSE decoder (the callback's state).
#[derive(Debug)]
struct Core {
    /// The full text, in the upstream's coordinates.
    full: String,
    /// Where each phase's text starts in `full` (byte offset, phase), in order.
    segments: Vec<(usize, Phase)>,
    /// The phase of the last event.
    phase: Phase,
    view: View,
    /// The view text the splitter has read.
    seen: String,
    splitter: Splitter,
    markers: Markers,
    /// The splitter's output before the citation filter.
    scratch: Deltas,
    done: bool,
    usable: bool,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    error: Option<String>,
    error_code: Option<i64>,
    events: u64,
}

impl Core {
    fn on_event(&mut self, event: &str, data: &[u8], out: &mut Deltas) {
        // Nothing after an error counts (the decoder stops reading there).
        if self.error.is_some() {
            return;
        }
        self.events += 1;
        let data = String::from_utf8_lossy(data);
        let t = data.trim();
        if event == "error" {
            self.error = Some(match serde_json::from_str::<Value>(t) {
                Ok(v) => {
                    self.error_code = v
                        .get("code")
                        .and_then(int_of)
                        .or_else(|| error_of(&v).and_then(|(_, c)| c));
                    error_message(&v)
                }
                Err(_) if t.is_empty() => "upstream error".to_string(),
                Err(_) => t.to_string(),
            });
            return;
        }
        if self.on_payload(t, out) || !t.contains('\n') {
            return;
        }
        // Several payloads in one event: an upstream that never sends blank lines (the
        // protocol notes' example is written so).
        for line in t.lines() {
            if self.error.is_some() {
                return;
            }
            self.on_payload(line.trim(), out);
        }
    }

    /// One payload: an end marker or a JSON object. False when it is neither (stray
    /// text and keep-alives carry nothing).
    fn on_payload(&mut self, t: &str, out: &mut Deltas) -> bool {
        if matches!(t, "[DONE]" | "DONE" | "done") {
            self.done = true;
            self.usable = true;
            return true;
        }
        match serde_json::from_str::<Value>(t) {
            Ok(v) => {
                self.on_json(&v, out);
                true
            }
            Err(_) => false,
        }
    }

    fn on_json(&mut self, v: &Value, out: &mut Deltas) {
        let Some(obj) = v.as_object() else {
            return;
        };
        if let Some((message, code)) = error_of(v) {
            self.error = Some(message);
            self.error_code = code;
            return;
        }
        let data = obj.get("data").and_then(Value::as_object);
        match obj.get("type").and_then(Value::as_str) {
            Some(ty) if ty.starts_with("chat:completion") => {
                if let Some(d) = data {
                    self.on_data(d, out);
                }
                if ty == "chat:completion:finish" {
                    self.done = true;
                    self.usable = true;
                }
            }
            Some(_) => {}
            None if obj.contains_key("choices") => self.on_openai(obj, out),
            None => match data {
                Some(d) if !has_text(obj) && !obj.contains_key("phase") => self.on_data(d, out),
                _ => self.on_data(obj, out),
            },
        }
    }

    /// A data object (see the module docs).
    fn on_data(&mut self, d: &Map<String, Value>, out: &mut Deltas) {
        let phase_name = d.get("phase").and_then(Value::as_str);
        if let Some(p) = phase_name {
            self.phase = phase_of(p);
        }
        let phase = self.phase;
        if let Some(text) = d.get("edit_content").and_then(Value::as_str) {
            let index = d.get("edit_index").and_then(|i| match i {
                Value::Number(n) => n
                    .as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            });
            match index {
                Some(at) => self.edit(at, text, phase, out),
                None => self.append(text, phase, out),
            }
        }
        if let Some(text) = d.get("delta_content").and_then(Value::as_str) {
            self.append(text, phase, out);
        }
        if let Some(u) = d.get("usage").and_then(Usage::from_value) {
            self.usage = Some(u);
            self.usable = true;
        }
        if let Some(f) = d.get("finish_reason").and_then(Value::as_str) {
            if !f.is_empty() {
                self.finish_reason = Some(f.to_string());
            }
        }
        if matches!(d.get("done"), Some(Value::Bool(true))) || phase_name == Some("done") {
            self.done = true;
            self.usable = true;
        }
    }

    /// An OpenAI-shaped chunk.
    fn on_openai(&mut self, obj: &Map<String, Value>, out: &mut Deltas) {
        let choice = obj
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|a| a.first());
        if let Some(c) = choice {
            if let Some(d) = c.get("delta").or(c.get("message")) {
                let s = |k: &str| d.get(k).and_then(Value::as_str);
                if let Some(r) = s("reasoning_content").or(s("reasoning")) {
                    self.append(r, Phase::Thinking, out);
                }
                if let Some(t) = s("content") {
                    self.append(t, Phase::Answer, out);
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                if !f.is_empty() {
                    self.finish_reason = Some(f.to_string());
                    self.usable = true;
                }
            }
        }
        if let Some(u) = obj.get("usage").and_then(Usage::from_value) {
            self.usage = Some(u);
            self.usable = true;
        }
    }

    fn note_segment(&mut self, start: usize, phase: Phase) {
        if self.segments.last().map(|s| s.1) != Some(phase) {
            self.segments.push((start, phase));
        }
    }

    /// `delta_content`: append to the buffer; the view only grows.
    fn append(&mut self, text: &str, phase: Phase, out: &mut Deltas) {
        if text.is_empty() {
            return;
        }
        self.usable = true;
        let start = self.full.len();
        self.full.push_str(text);
        self.note_segment(start, phase);
        let mut piece = String::new();
        self.view.push(text, phase, &mut piece);
        self.feed(&piece, out);
    }

    /// `edit_index` + `edit_content`: truncate at the character index, append, and show
    /// the splitter the new view.
    fn edit(&mut self, index: u64, text: &str, phase: Phase, out: &mut Deltas) {
        self.usable = true;
        let at = usize::try_from(index)
            .ok()
            .and_then(|n| self.full.char_indices().nth(n))
            .map_or(self.full.len(), |(b, _)| b);
        if at == self.full.len() {
            self.append(text, phase, out);
            return;
        }
        self.full.truncate(at);
        self.segments.retain(|(start, _)| *start < at);
        if !text.is_empty() {
            self.full.push_str(text);
            self.note_segment(at, phase);
        }
        let mut view = View::default();
        let mut text_now = String::with_capacity(self.seen.len() + text.len());
        for (n, (start, p)) in self.segments.iter().enumerate() {
            let end = self.segments.get(n + 1).map_or(self.full.len(), |s| s.0);
            view.push(&self.full[*start..end], *p, &mut text_now);
        }
        self.view = view;
        if let Some(suffix) = text_now.strip_prefix(self.seen.as_str()) {
            let suffix = suffix.to_string();
            self.feed(&suffix, out);
        } else {
            self.splitter.rederive(&text_now, &mut self.scratch);
            self.seen = text_now;
            self.route(out);
        }
    }

    /// New view text for the splitter.
    fn feed(&mut self, piece: &str, out: &mut Deltas) {
        if piece.is_empty() {
            return;
        }
        self.seen.push_str(piece);
        self.splitter.push(piece, &mut self.scratch);
        self.route(out);
    }

    /// The splitter's output → `out`, content through the citation filter.
    fn route(&mut self, out: &mut Deltas) {
        for d in self.scratch.iter() {
            match d {
                crate::core::Delta::Reasoning(t) => out.push_reasoning(t),
                crate::core::Delta::Content(t) => self.markers.push(t, out),
            }
        }
        self.scratch.clear();
    }

    fn finish(&mut self, out: &mut Deltas) {
        let mut piece = String::new();
        self.view.finish(&mut piece);
        self.feed(&piece, out);
        self.splitter.finish(&mut self.scratch);
        self.route(out);
        self.markers.finish(out);
    }
}

/// A body that has no SSE event yet: kept (bounded) to be read as JSON at the end.
#[derive(Debug)]
enum Plain {
    Kept(Vec<u8>),
    TooLong,
    /// An SSE event was seen: the body is a stream.
    Stream,
}

/// The Z.AI answer stream → reasoning/content deltas. See the module docs.
#[derive(Debug)]
pub struct ZaiDecoder {
    sse: SseDecoder,
    core: Core,
    plain: Plain,
    finished: bool,
}

impl Default for ZaiDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ZaiDecoder {
    /// A decoder for one answer body.
    pub fn new() -> Self {
        ZaiDecoder {
            sse: SseDecoder::new(),
            core: Core {
                full: String::new(),
                segments: Vec::new(),
                phase: Phase::Answer,
                view: View::default(),
                seen: String::new(),
                splitter: Splitter::new(false),
                markers: Markers::default(),
                scratch: Deltas::new(),
                done: false,
                usable: false,
                usage: None,
                finish_reason: None,
                error: None,
                error_code: None,
                events: 0,
            },
            plain: Plain::Kept(Vec::new()),
            finished: false,
        }
    }
}

impl Decoder for ZaiDecoder {
    /// The numeric `code` of the upstream error (426 stale client, 403 model level, 429
    /// concurrency, …), when it gave one.
    fn error_code(&self) -> Option<i64> {
        self.core.error_code
    }

    fn push(&mut self, bytes: &[u8], out: &mut Deltas) {
        if self.finished || self.core.error.is_some() || bytes.is_empty() {
            return;
        }
        if let Plain::Kept(buf) = &mut self.plain {
            if buf.len() + bytes.len() > MAX_PLAIN_BODY {
                self.plain = Plain::TooLong;
            } else {
                buf.extend_from_slice(bytes);
            }
        }
        let core = &mut self.core;
        let r = self
            .sse
            .push(bytes, |ev| core.on_event(ev.event, ev.data, out));
        if let Err(e) = r {
            core.error.get_or_insert_with(|| e.to_string());
        }
        if self.sse.events() > 0 {
            self.plain = Plain::Stream;
        }
    }

    fn finish(&mut self, out: &mut Deltas) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.core.error.is_some() {
            return;
        }
        let core = &mut self.core;
        let r = self.sse.finish(|ev| core.on_event(ev.event, ev.data, out));
        if let Err(e) = r {
            core.error.get_or_insert_with(|| e.to_string());
        }
        if self.sse.events() == 0 {
            match std::mem::replace(&mut self.plain, Plain::Stream) {
                Plain::Kept(buf) if buf.trim_ascii().is_empty() => {}
                Plain::Kept(buf) => match serde_json::from_slice::<Value>(&buf) {
                    Ok(v) if v.is_object() => {
                        self.core.events += 1;
                        self.core.on_json(&v, out);
                    }
                    _ => self.core.error = Some(NOT_AN_ANSWER.to_string()),
                },
                Plain::TooLong => self.core.error = Some(NOT_AN_ANSWER.to_string()),
                Plain::Stream => {}
            }
        }
        if self.core.error.is_none() {
            self.core.finish(out);
        }
    }

    fn done_seen(&self) -> bool {
        self.core.done
    }

    fn usage(&self) -> Option<&Usage> {
        self.core.usage.as_ref()
    }

    fn finish_reason(&self) -> Option<&str> {
        self.core.finish_reason.as_deref()
    }

    fn error(&self) -> Option<&str> {
        self.core.error.as_deref()
    }

    fn events(&self) -> u64 {
        self.core.events
    }

    fn usable(&self) -> bool {
        self.core.usable
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Delta;
    use serde_json::json;

    /// What one decoding produced.
    #[derive(Debug, Clone, PartialEq)]
    struct Outcome {
        deltas: Vec<Delta>,
        reasoning: String,
        content: String,
        done: bool,
        usage: Option<Usage>,
        finish_reason: Option<String>,
        error: Option<String>,
        code: Option<i64>,
        events: u64,
        usable: bool,
    }

    fn decode(pieces: &[&[u8]]) -> Outcome {
        let mut d = ZaiDecoder::new();
        let mut out = Deltas::new();
        for p in pieces {
            d.push(p, &mut out);
        }
        d.finish(&mut out);
        Outcome {
            deltas: out.as_slice().to_vec(),
            reasoning: out.reasoning_text(),
            content: out.content_text(),
            done: d.done_seen(),
            usage: d.usage().cloned(),
            finish_reason: d.finish_reason().map(str::to_string),
            error: d.error().map(str::to_string),
            code: d.error_code(),
            events: d.events(),
            usable: d.usable(),
        }
    }

    /// Whole, one byte at a time, and cut in two at every byte: the same outcome.
    fn all_splits(input: &[u8]) -> Outcome {
        let whole = decode(&[input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode(&bytes), whole, "byte by byte");
        for i in 0..=input.len() {
            let (a, b) = input.split_at(i);
            assert_eq!(decode(&[a, b]), whole, "split at {i}");
        }
        whole
    }

    /// `data: <event>\n\n` for each event.
    fn sse(events: &[Value]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in events {
            out.extend_from_slice(format!("data: {e}\n\n").as_bytes());
        }
        out
    }

    fn ev(data: Value) -> Value {
        json!({"type": "chat:completion", "data": data})
    }

    fn think(text: &str) -> Value {
        ev(json!({"phase": "thinking", "delta_content": text}))
    }

    fn answer(text: &str) -> Value {
        ev(json!({"phase": "answer", "delta_content": text}))
    }

    fn edit(phase: &str, index: u64, text: &str) -> Value {
        ev(json!({"phase": phase, "edit_index": index, "edit_content": text}))
    }

    fn done() -> Value {
        ev(json!({"phase": "done", "done": true,
                  "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}}))
    }

    fn usage(p: u64, c: u64, t: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
            completion_tokens_details: None,
        })
    }

    const OPEN: &str =
        "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n> ";

    /// The §A.6 example, byte for byte.
    const EXAMPLE: &str = concat!(
        "data: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"thinking\",\"delta_content\":\"<details type=\\\"reasoning\\\" done=\\\"false\\\">\\n<summary>Thinking…</summary>\\n> The user\"}}\n",
        "data: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"thinking\",\"delta_content\":\" says hi.\"}}\n",
        "data: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"answer\",\"edit_index\":0,\"edit_content\":\"<details type=\\\"reasoning\\\" done=\\\"true\\\" duration=\\\"1\\\">\\n<summary>Thought for 1 seconds</summary>\\n> The user says hi.\\n</details>\\nHel\"}}\n",
        "data: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"answer\",\"delta_content\":\"lo!\"}}\n",
        "data: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"done\",\"done\":true,\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":9,\"total_tokens\":21}}}\n",
        "data: [DONE]\n",
    );

    #[test]
    fn protocol_example_exactly() {
        // As written in the notes: one line per event, no blank lines, so the SSE layer
        // sees one event of six lines.
        let o = all_splits(EXAMPLE.as_bytes());
        assert_eq!(o.reasoning, "The user says hi.");
        assert_eq!(o.content, "Hello!");
        assert_eq!(
            o.deltas,
            [
                Delta::Reasoning("The user says hi.".into()),
                Delta::Content("Hello!".into())
            ]
        );
        assert!(o.done && o.usable);
        assert_eq!(o.usage, usage(12, 9, 21));
        assert_eq!((o.error.as_deref(), o.code, o.events), (None, None, 1));
        // With a blank line after each event, as real streams are framed: six events,
        // the same answer.
        let framed = EXAMPLE.replace('\n', "\n\n");
        let f = all_splits(framed.as_bytes());
        assert_eq!(f.events, 6);
        assert_eq!(Outcome { events: 1, ..f }, o);
    }

    #[test]
    fn streams_as_events_arrive() {
        let mut d = ZaiDecoder::new();
        let mut out = Deltas::new();
        d.push(&sse(&[think(&format!("{OPEN}The user"))]), &mut out);
        assert_eq!(out.as_slice(), [Delta::Reasoning("The user".into())]);
        out.clear();
        d.push(&sse(&[think(" says hi.")]), &mut out);
        assert_eq!(out.as_slice(), [Delta::Reasoning(" says hi.".into())]);
        out.clear();
        let closed = "<details type=\"reasoning\" done=\"true\" duration=\"1\">\n<summary>Thought for 1 seconds</summary>\n> The user says hi.\n</details>\nHel";
        d.push(&sse(&[edit("answer", 0, closed)]), &mut out);
        assert_eq!(out.as_slice(), [Delta::Content("Hel".into())]);
        out.clear();
        d.push(&sse(&[answer("lo!")]), &mut out);
        assert_eq!(out.as_slice(), [Delta::Content("lo!".into())]);
        out.clear();
        d.push(&sse(&[done()]), &mut out);
        d.finish(&mut out);
        assert!(out.is_empty());
        assert!(d.done_seen());
    }

    #[test]
    fn multi_line_reasoning_and_closing_edit_at_the_end() {
        // The closing edit placed at the end of the text (an append).
        let at = format!("{OPEN}First line.\n> Second line.\n>\n> Third.")
            .chars()
            .count();
        let body = sse(&[
            think(OPEN),
            think("First line.\n> Second"),
            think(" line.\n>\n> Third."),
            ev(
                json!({"phase": "answer", "edit_index": at, "edit_content": "\n</details>\nThe answer."}),
            ),
            answer(" More."),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.reasoning, "First line.\nSecond line.\n\nThird.");
        assert_eq!(o.content, "The answer. More.");
        assert!(o.done);
    }

    #[test]
    fn edit_in_the_middle_of_the_answer() {
        let head = "<details type=\"reasoning\" done=\"true\">\n<summary>Thought</summary>\n> R\n</details>\n";
        let hello = format!("{head}Hello wor");
        let at = hello.chars().count() as u64 - 3;
        // The edit re-sends the tail and goes on: nothing repeats, nothing is lost.
        let body = sse(&[
            think(&format!("{OPEN}R")),
            edit("answer", 0, &hello),
            edit("answer", at, "world, friend"),
            answer("!"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("R", "Hello world, friend!")
        );

        // An edit that changes text already sent: what was sent stays, only text beyond
        // it is added (never a repeat).
        let body = sse(&[
            edit("answer", 0, &format!("{head}Hello wrold")),
            edit("answer", at, "world, and more"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.content, "Hello wrold, and more");
        // An index past the end appends.
        let body = sse(&[answer("abc"), edit("answer", 99, "def"), done()]);
        assert_eq!(all_splits(&body).content, "abcdef");
    }

    #[test]
    fn edit_index_counts_characters_not_bytes() {
        // CJK and emoji before the edit point: a byte index would cut a character.
        let head = "<details type=\"reasoning\" done=\"false\">\n<summary>思考中…</summary>\n> 用户说你好 👋";
        let closed = "<details type=\"reasoning\" done=\"true\" duration=\"2\">\n<summary>思考了 2 秒</summary>\n> 用户说你好 👋。\n</details>\n你好";
        let answer_text = format!("{closed}，世界");
        let at = answer_text.chars().count() as u64 - 2; // before 世
        let body = sse(&[
            think(head),
            edit("answer", 0, closed),
            answer("，世界"),
            edit("answer", at, "世界！🌍"),
            answer("🎉"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.reasoning, "用户说你好 👋。");
        assert_eq!(o.content, "你好，世界！🌍🎉");
        // An edit that lands right after an emoji.
        let t = "ab👋cd";
        let body = sse(&[answer(t), edit("answer", 3, "XY"), done()]);
        let mut d = ZaiDecoder::new();
        let mut out = Deltas::new();
        d.push(&body, &mut out);
        d.finish(&mut out);
        assert_eq!(d.core.full, "ab👋XY");
        // The view went from "ab👋cd" to "ab👋XY": what was sent stays.
        assert_eq!(out.content_text(), "ab👋cd");
    }

    #[test]
    fn bare_thinking_is_reasoning_by_phase() {
        let body = sse(&[
            think("Let me think."),
            think(" 先想想 👋\n> quoted"),
            answer("Hi!"),
            answer(" Bye."),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.reasoning, "Let me think. 先想想 👋\n> quoted");
        assert_eq!(o.content, "Hi! Bye.");
        // The answer's edit closes a block that was never opened: `</details>` dropped.
        let body = sse(&[
            think("Plan."),
            ev(json!({"phase": "answer", "edit_index": 5, "edit_content": "\n</details>\nHi"})),
            answer(" there"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("Plan.", "Hi there")
        );
        // Thinking text that merely starts with `<` is still bare reasoning.
        let body = sse(&[think("<b>bold</b> idea"), answer("A"), done()]);
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("<b>bold</b> idea", "A")
        );
        // A cut opener that completes in the next event is markup.
        let body = sse(&[
            think("  <det"),
            think("ails type=\"reasoning\">\n<summary>S</summary>\n> R\n</details>\nA"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!((o.reasoning.as_str(), o.content.as_str()), ("R", "A"));
        // Only thinking (cut before the answer): all reasoning.
        let o = all_splits(&sse(&[think("half a thought")]));
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("half a thought", "")
        );
        assert!(!o.done);
    }

    #[test]
    fn bare_thinking_survives_an_edit() {
        // An edit inside the answer rebuilds the view: the bare reasoning keeps its
        // wrapping and nothing is repeated.
        let body = sse(&[
            think("Reason."),
            answer("Hello wor"),
            edit("answer", 13, "world"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("Reason.", "Hello world")
        );
    }

    #[test]
    fn answer_only() {
        let body = sse(&[answer("Just "), answer("the answer."), done()]);
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("", "Just the answer.")
        );
        assert_eq!(o.deltas, [Delta::Content("Just the answer.".into())]);
    }

    #[test]
    fn bare_data_objects_and_missing_phase() {
        let mut body = Vec::new();
        for e in [
            json!({"phase": "thinking", "delta_content": "R"}),
            json!({"delta_content": " more"}),
            json!({"phase": "answer", "delta_content": "A"}),
            json!({"phase": "other", "delta_content": "B"}),
            json!({"done": true}),
        ] {
            body.extend_from_slice(format!("data: {e}\n\n").as_bytes());
        }
        let o = all_splits(&body);
        assert_eq!((o.reasoning.as_str(), o.content.as_str()), ("R more", "AB"));
        assert!(o.done);
    }

    #[test]
    fn openai_shaped_chunks() {
        let mut body = sse(&[
            json!({"choices": [{"delta": {"reasoning_content": "Think."}}]}),
            json!({"choices": [{"delta": {"content": "Answer"}}]}),
            json!({"choices": [{"delta": {"content": "!"}, "finish_reason": "stop"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        ]);
        body.extend_from_slice(b"data: [DONE]\n\n");
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("Think.", "Answer!")
        );
        assert_eq!(o.finish_reason.as_deref(), Some("stop"));
        assert_eq!(o.usage, usage(1, 2, 3));
        assert!(o.done);
    }

    #[test]
    fn end_markers() {
        // chat:completion:finish
        let body = sse(&[
            answer("A"),
            json!({"type": "chat:completion:finish", "data": {}}),
        ]);
        let o = all_splits(&body);
        assert!(o.done);
        assert_eq!(o.content, "A");
        // phase done without done:true
        let o = all_splits(&sse(&[answer("A"), ev(json!({"phase": "done"}))]));
        assert!(o.done);
        // [DONE] alone
        let o = all_splits(b"data: [DONE]\n\n");
        assert!(o.done && o.usable);
        // Other envelope types carry nothing.
        let body = sse(&[
            answer("A"),
            json!({"type": "web_search", "data": {"delta_content": "junk", "done": true}}),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.content, "A");
        assert!(!o.done);
    }

    #[test]
    fn cut_stream_is_not_done() {
        let body = sse(&[think(&format!("{OPEN}Partial")), answer("never closed")]);
        let o = all_splits(&body);
        assert!(!o.done);
        assert!(o.usable);
        assert_eq!(o.error, None);
        // The block never closed: the splitter keeps it reasoning.
        assert_eq!(o.reasoning, "Partialnever closed");
        // A cut in the middle of an event: that event is lost, the rest stands.
        let mut body = sse(&[answer("Hello")]);
        body.extend_from_slice(b"data: {\"type\":\"chat:comp");
        let o = all_splits(&body);
        assert_eq!(o.content, "Hello");
        assert!(!o.done);
        // Nothing at all.
        let o = all_splits(b"");
        assert!(!o.usable && !o.done && o.error.is_none());
    }

    #[test]
    fn inline_errors() {
        // data.error (the inline 426 of ZYP #31)
        let body = sse(&[ev(
            json!({"error": {"detail": "您的客户端校验失败", "code": 426}, "done": true}),
        )]);
        let o = all_splits(&body);
        assert_eq!(o.error.as_deref(), Some("您的客户端校验失败"));
        assert_eq!(o.code, Some(426));
        assert!(!o.done);
        // data.data.error
        let body = sse(&[ev(
            json!({"data": {"error": {"detail": "Model not available for current user level", "code": 403}}}),
        )]);
        let o = all_splits(&body);
        assert_eq!(
            o.error.as_deref(),
            Some("Model not available for current user level")
        );
        assert_eq!(o.code, Some(403));
        // Top-level detail/code as the whole event.
        let body =
            sse(&[json!({"detail": "Model not available for current user level", "code": 403})]);
        let o = all_splits(&body);
        assert_eq!(
            (o.error.as_deref(), o.code),
            (
                Some("Model not available for current user level"),
                Some(403)
            )
        );
        // Top-level error object with a string code.
        let body = sse(&[json!({"error": {"message": "Too many requests", "code": "429"}})]);
        let o = all_splits(&body);
        assert_eq!(
            (o.error.as_deref(), o.code),
            (Some("Too many requests"), Some(429))
        );
        // A data object that is only detail + code.
        let body = sse(&[ev(json!({"detail": "concurrency limit", "code": 429}))]);
        assert_eq!(all_splits(&body).code, Some(429));
        // An SSE error event.
        let o = all_splits(b"event: error\ndata: {\"message\":\"boom\",\"code\":500}\n\n");
        assert_eq!((o.error.as_deref(), o.code), (Some("boom"), Some(500)));
        // A non-numeric code.
        let body = sse(&[ev(
            json!({"error": {"detail": "captcha_verify_param is required", "code": "CAPTCHA_REQUIRED"}}),
        )]);
        let o = all_splits(&body);
        assert_eq!(
            (o.error.as_deref(), o.code),
            (Some("captcha_verify_param is required"), None)
        );
        // A `detail` on a stream event without a code is no error.
        let body = sse(&[
            answer("ok"),
            ev(json!({"phase": "done", "done": true, "detail": "finished"})),
        ]);
        let o = all_splits(&body);
        assert_eq!((o.error, o.content.as_str(), o.done), (None, "ok", true));
        // `error: null` and an empty error are no errors.
        let body = sse(&[
            ev(json!({"phase": "answer", "delta_content": "ok", "error": null})),
            ev(json!({"phase": "answer", "delta_content": "!", "error": {}})),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!((o.error, o.content.as_str()), (None, "ok!"));
    }

    #[test]
    fn error_after_text_stops_the_decoding() {
        let body = sse(&[
            answer("Partial"),
            ev(json!({"error": {"detail": "internal", "code": 500}})),
            answer(" ignored"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.content, "Partial");
        assert_eq!((o.error.as_deref(), o.code), (Some("internal"), Some(500)));
        assert!(!o.done);
    }

    #[test]
    fn json_body_without_sse() {
        let o = all_splits(
            br#"{"detail":"captcha_verify_param is required","code":"CAPTCHA_REQUIRED"}"#,
        );
        assert_eq!(o.error.as_deref(), Some("captcha_verify_param is required"));
        let o =
            all_splits(br#"{"detail":"Model not available for current user level","code":403}"#);
        assert_eq!(o.code, Some(403));
        // A bare data object as the whole body.
        let o = all_splits(br#"{"phase":"answer","delta_content":"A","done":true}"#);
        assert_eq!((o.content.as_str(), o.done, o.events), ("A", true, 1));
        // Neither SSE nor JSON.
        let o = all_splits(b"<html>blocked</html>");
        assert_eq!(o.error.as_deref(), Some(NOT_AN_ANSWER));
    }

    #[test]
    fn search_citations_are_removed() {
        let body = sse(&[
            think(&format!("{OPEN}Search 【turn0search1】 kept in reasoning")),
            edit("answer", 0, "<details type=\"reasoning\" done=\"true\">\n<summary>T</summary>\n> Search 【turn0search1】 kept in reasoning\n</details>\nParis is the capital"),
            answer("【turn0search0】, and "),
            answer("big【tur"),
            answer("n12search3†L1-L4】. "),
            answer("Brackets 【like this】 stay, 【turn1news2】 too"),
            answer(" and a 【"),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.reasoning, "Search 【turn0search1】 kept in reasoning");
        assert_eq!(
            o.content,
            "Paris is the capital, and big. Brackets 【like this】 stay, 【turn1news2】 too and a 【"
        );
    }

    #[test]
    fn citation_hold_is_bounded() {
        // A `【` without `】` within MARKER_MAX bytes is released as text while streaming.
        let long = format!("【{}", "x".repeat(MARKER_MAX));
        let mut d = ZaiDecoder::new();
        let mut out = Deltas::new();
        d.push(&sse(&[answer("a"), answer(&long)]), &mut out);
        assert_eq!(out.content_text(), format!("a{long}"));
        // Nested: the regex's leftmost match swallows the first `【` too.
        let o = all_splits(&sse(&[answer("x【a【turn0search1】y"), done()]));
        assert_eq!(o.content, "xy");
        // A `】` farther than MARKER_MAX: text.
        let far = format!("【turn0search1{}】", "z".repeat(MARKER_MAX));
        let o = all_splits(&sse(&[answer(&far), done()]));
        assert_eq!(o.content, far);
    }

    #[test]
    fn tool_call_text_passes_unchanged() {
        let call = "<<<TOOL_CALL>>>{\"name\":\"get_weather\",\"arguments\":{\"city\":\"巴黎\"}}<<<END_TOOL_CALL>>>";
        let body = sse(&[
            answer("Let me check.\n"),
            answer(&call[..20]),
            answer(&call[20..]),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.content, format!("Let me check.\n{call}"));
        let json_call =
            "```json\n{\"tool_calls\":[{\"name\":\"f\",\"arguments\":{\"a\":[1,2]}}]}\n```";
        let o = all_splits(&sse(&[answer(json_call), done()]));
        assert_eq!(o.content, json_call);
    }

    #[test]
    fn native_glm_block_is_dropped() {
        // Legacy MCP: the block arrives in a tool_call edit, its JSON grows in deltas,
        // and an `other` edit inside the block (`null, …`) ends it.
        let block_head = "<glm_block view=\"\">{\"type\": \"mcp\", \"data\": {\"metadata\": {\"id\": \"call_1\", \"name\": \"search\", \"arguments\": \"{\\\"q\\\":\\\"paris\\\"}\", \"result\": ";
        let before = "<details type=\"reasoning\" done=\"true\">\n<summary>T</summary>\n> R\n</details>\nLooking it up. ";
        let with_block = format!("{before}{block_head}");
        let at = with_block.chars().count() as u64;
        let body = sse(&[
            think(&format!("{OPEN}R")),
            edit("tool_call", 0, &with_block),
            ev(json!({"phase": "tool_call", "delta_content": "\"\", \"status\": \"running\""})),
            edit("other", at, "null, \"display_result\": \"\"}}}</glm_block>"),
            answer("Paris it is."),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.reasoning, "R");
        assert_eq!(o.content, "Looking it up. Paris it is.");
        assert!(!o.content.contains("glm_block") && !o.content.contains("null"));
        // A block in the middle of bare thinking keeps the reasoning channel.
        let body = sse(&[
            think("Step one."),
            ev(json!({"phase": "tool_call", "delta_content": "<glm_block >{\"x\":1}</glm_block>"})),
            think(" Step two."),
            answer("Done."),
            done(),
        ]);
        let o = all_splits(&body);
        assert_eq!(
            (o.reasoning.as_str(), o.content.as_str()),
            ("Step one. Step two.", "Done.")
        );
        // Near misses are text.
        let o = all_splits(&sse(&[answer("<glm_blocks> and <glm"), done()]));
        assert_eq!(o.content, "<glm_blocks> and <glm");
    }

    #[test]
    fn usage_and_finish_reason_on_data() {
        let body = sse(&[
            answer("A"),
            ev(
                json!({"phase": "done", "done": true, "finish_reason": "stop",
                      "usage": {"prompt_tokens": "5", "completion_tokens": 7.0}}),
            ),
        ]);
        let o = all_splits(&body);
        assert_eq!(o.usage, usage(5, 7, 12));
        assert_eq!(o.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn crlf_framing_and_keep_alives() {
        let body = "data: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"answer\",\"delta_content\":\"A\"}}\r\n\r\n: ping\r\n\r\ndata: not json\r\n\r\ndata: {\"type\":\"chat:completion\",\"data\":{\"phase\":\"done\",\"done\":true}}\r\n\r\n";
        let o = all_splits(body.as_bytes());
        assert_eq!(o.content, "A");
        assert!(o.done);
    }

    /// xorshift64: a fixed pseudo-random sequence.
    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    const PIECES: &[&str] = &[
        "a",
        " ",
        "\n",
        "\n> ",
        "é",
        "你好",
        "👋",
        "<",
        ">",
        "</",
        "<details type=\"reasoning\" done=\"false\">\n<summary>Thinking…</summary>\n> ",
        "</details>\n",
        "<summary>",
        "</summary>",
        "<think>",
        "</think>",
        "<glm_block >",
        "</glm_block>",
        "<glm_bl",
        "【turn0search1】",
        "【",
        "】",
        "turn2search3",
        "<<<TOOL_CALL>>>",
    ];

    /// An edit that re-sends the tail of the text it truncates decodes exactly like the
    /// plain append of what it adds: the edit path and the append path agree, whatever
    /// the markup, phases and characters.
    #[test]
    fn tail_preserving_edits_equal_appends() {
        let mut next = rng(0x2545_F491_4F6C_DD1D);
        let phases = ["thinking", "answer", "tool_call", "other"];
        for round in 0..1500 {
            let mut appends = Vec::new();
            let mut edits = Vec::new();
            // Phase of every character of the full text so far.
            let mut chars: Vec<(char, &str)> = Vec::new();
            let n = (next() % 12) as usize;
            for _ in 0..n {
                let mut text = String::new();
                for _ in 0..=(next() % 3) {
                    text.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
                let phase = phases[(next() % phases.len() as u64) as usize];
                appends.push(ev(json!({"phase": phase, "delta_content": text})));
                // Edit at a point where the tail is all of this phase.
                let same = chars.iter().rev().take_while(|(_, p)| *p == phase).count();
                let back = if same == 0 {
                    0
                } else {
                    (next() as usize) % (same + 1)
                };
                let at = chars.len() - back;
                let tail: String = chars[at..].iter().map(|(c, _)| *c).collect();
                edits.push(edit(phase, at as u64, &format!("{tail}{text}")));
                chars.extend(text.chars().map(|c| (c, phase)));
            }
            appends.push(done());
            edits.push(done());
            let a = decode(&[&sse(&appends)]);
            let b = decode(&[&sse(&edits)]);
            assert_eq!(a, b, "round {round}: {appends:?}");
        }
    }

    /// Arbitrary edits (any index, any text) never panic and decode the same however
    /// the body is cut.
    #[test]
    fn arbitrary_edits_are_cut_independent() {
        let mut next = rng(0x9E37_79B9_7F4A_7C15);
        let phases = ["thinking", "answer", "tool_call", "search", "done"];
        for _ in 0..300 {
            let mut events = Vec::new();
            for _ in 0..(next() % 8) {
                let mut text = String::new();
                for _ in 0..=(next() % 3) {
                    text.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
                }
                let phase = phases[(next() % phases.len() as u64) as usize];
                events.push(if next().is_multiple_of(3) {
                    edit(phase, next() % 40, &text)
                } else {
                    ev(json!({"phase": phase, "delta_content": text}))
                });
            }
            let body = sse(&events);
            let whole = decode(&[&body]);
            let mut cut = rng(next() | 1);
            let mut pieces = Vec::new();
            let mut rest = &body[..];
            while !rest.is_empty() {
                let k = ((cut() % 7) as usize).min(rest.len());
                pieces.push(&rest[..k]);
                rest = &rest[k..];
            }
            assert_eq!(decode(&pieces), whole);
        }
    }

    #[test]
    fn blocks_filter_is_cut_independent() {
        let text =
            "a<glm_block x>hidden</glm_block>b<glm_block>c</glm_blockd</glm_block>e<g<glm_blockz";
        let run = |pieces: &[&str]| {
            let mut b = Blocks::default();
            let mut out = String::new();
            for p in pieces {
                b.push(p, &mut out);
            }
            b.finish(&mut out);
            out
        };
        let whole = run(&[text]);
        assert_eq!(whole, "abe<g<glm_blockz");
        for (i, _) in text.char_indices() {
            assert_eq!(run(&[&text[..i], &text[i..]]), whole, "{i}");
        }
    }
}

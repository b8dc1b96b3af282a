//! Per-request knobs of the Z.AI mock, parsed like the K2Think mock's directives.
//!
//! Three layers, later wins:
//! 1. [`ZaiMockConfig::defaults`](super::ZaiMockConfig),
//! 2. every `[[mock: key=value; key=value]]` block in the last user message,
//! 3. the bearer token `name;key=value;key=value` (the first segment is the token itself).
//!
//! Unknown keys are ignored; a pair whose value does not parse is ignored too, so the value
//! from the earlier layer (ultimately the default) stays.

use crate::mock::directives::split_token;

/// What `edit_index` counts (`providers-protocol.md` §A.6: the sources disagree).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EditMode {
    /// GFA: a character (Unicode scalar) index into the accumulated text; truncate there,
    /// then append `edit_content`.
    #[default]
    Rune,
    /// GO-DOC: a byte offset into the accumulated UTF-8 text; overwrite in place from there,
    /// growing the buffer.
    Byte,
}

/// Where the stream rewrites text with `edit_index` / `edit_content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EditAt {
    /// Only the thinking → answer transition, which rewrites from index 0.
    #[default]
    Start,
    /// The transition, plus a second edit halfway through the answer that goes back a few
    /// characters and writes them again (with the next piece of the answer).
    Middle,
}

/// Shape of each SSE `data:` object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Envelope {
    /// `{"type":"chat:completion","data":{...}}`
    #[default]
    Wrapped,
    /// The bare `{...}` data object.
    Bare,
}

/// Tool-call text the answer carries instead of the echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolStyle {
    /// GFA's contract: `<<<TOOL_CALL>>>{"name":…,"arguments":{…}}<<<END_TOOL_CALL>>>`.
    Gfa,
    /// An inline `{"tool_calls":[{…,"function":{"name":…,"arguments":"<json>"}}]}` object.
    Json,
    /// k2proxy's own emulation format (`src/pipeline/tools.rs`): the request's trigger
    /// `<Function_XXXX_Start/>`, then a `<function_calls>` block. Without a trigger in the
    /// request the answer stays the echo.
    K2,
}

/// Whether the thinking phase is streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Thinking {
    /// As the request's `features.enable_thinking` says.
    #[default]
    Auto,
    On,
    Off,
}

/// A failure to inject into `POST /api/v2/chat/completions` (and, through
/// [`ZaiMockConfig::auths_fault`](super::ZaiMockConfig), `GET /api/v1/auths/`).
///
/// HTTP faults ([`ZaiFault::Waf`], [`ZaiFault::Status`]) answer before any check, as an
/// edge in front of the app would; the stream faults answer after every check passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ZaiFault {
    #[default]
    None,
    /// HTTP 405 with the Aliyun WAF HTML block page (`fault=waf` or `fault=405`).
    Waf,
    /// HTTP status: 429 (with `Retry-After`), 401, 500 or any other 4xx/5xx.
    Status(u16),
    /// 200 SSE whose only event is an inline error, code 429, with a 并发/concurrency message.
    Concurrency,
    /// `cut_after` events (default 0), then an inline `data.error` event.
    InlineError,
    /// `cut_after` events (default 0), then a nested `data.data.error` event.
    NestedError,
    /// `cut_after` events (default: all but the done event), then the body is aborted.
    Cut,
}

impl ZaiFault {
    pub fn parse(s: &str) -> Option<ZaiFault> {
        Some(match s {
            "none" | "" => ZaiFault::None,
            "waf" | "405" => ZaiFault::Waf,
            "concurrency" => ZaiFault::Concurrency,
            "inline_error" | "inline-error" => ZaiFault::InlineError,
            "nested_error" | "nested-error" => ZaiFault::NestedError,
            "cut" => ZaiFault::Cut,
            n => match n.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => ZaiFault::Status(code),
                _ => return None,
            },
        })
    }

    /// Whether this fault is answered as an HTTP status before the request checks.
    pub fn is_http(self) -> bool {
        matches!(self, ZaiFault::Waf | ZaiFault::Status(_))
    }
}

/// Everything that shapes one Z.AI answer. See the module docs for where values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZaiDirectives {
    /// `edit=rune|byte`: what `edit_index` counts.
    pub edit: EditMode,
    /// `edit_at=start|middle`: where text is rewritten.
    pub edit_at: EditAt,
    /// `done_marker=on|off`: a final `data: [DONE]` line.
    pub done_marker: bool,
    /// `envelope=wrapped|bare`.
    pub envelope: Envelope,
    /// `chunk=N`: write the body in N-byte pieces (0 = one write per event).
    pub chunk: usize,
    /// `delay_ms=N`: sleep between events.
    pub delay_ms: u64,
    /// `piece=N`: characters per `delta_content` (>= 1).
    pub piece: usize,
    /// `search=on`: the answer carries `【turn0search0】`-style citation markers.
    pub search: bool,
    /// `tool=gfa|json|k2|none`: answer with a tool call in that format.
    pub tool: Option<ToolStyle>,
    /// `tool_name=NAME`: the called tool (default: the request's first tool, else
    /// `get_weather`).
    pub tool_name: Option<String>,
    /// `tool_args=B64URL`: the call's arguments, a JSON object, base64url-encoded
    /// (default `{}`).
    pub tool_args: Option<String>,
    /// `thinking=auto|on|off`: stream the thinking phase (auto: `features.enable_thinking`).
    pub thinking: Thinking,
    /// `fault=waf|405|429|401|500|<4xx/5xx>|concurrency|inline_error|nested_error|cut`.
    pub fault: ZaiFault,
    /// `retry_after=N`: seconds in the `Retry-After` of `fault=429`.
    pub retry_after: u64,
    /// `cut_after=N`: events sent before `cut` / `inline_error` / `nested_error` strike.
    pub cut_after: Option<usize>,
    /// `gate=NAME`: wait at this gate (see `ZaiMock::open_gate`) after `gate_after` events.
    pub gate: Option<String>,
    /// `gate_after=N` (default 1).
    pub gate_after: usize,
    /// `duration=N`: seconds in the closed reasoning block.
    pub duration: u64,
    /// `reasoning_words=N`, `answer_words=N`: filler words to lengthen the texts.
    pub reasoning_words: usize,
    pub answer_words: usize,
}

impl Default for ZaiDirectives {
    fn default() -> Self {
        ZaiDirectives {
            edit: EditMode::Rune,
            edit_at: EditAt::Start,
            done_marker: true,
            envelope: Envelope::Wrapped,
            chunk: 0,
            delay_ms: 0,
            piece: 6,
            search: false,
            tool: None,
            tool_name: None,
            tool_args: None,
            thinking: Thinking::Auto,
            fault: ZaiFault::None,
            retry_after: 5,
            cut_after: None,
            gate: None,
            gate_after: 1,
            duration: 1,
            reasoning_words: 0,
            answer_words: 0,
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

impl ZaiDirectives {
    /// Defaults overlaid with the `key=value` pairs in `s` (see [`ZaiDirectives::apply`]).
    pub fn parse(s: &str) -> ZaiDirectives {
        let mut d = ZaiDirectives::default();
        d.apply(s);
        d
    }

    /// Overlays `key=value` pairs separated by `;`, `,` or whitespace. Unknown keys and bad
    /// values are ignored.
    pub fn apply(&mut self, s: &str) {
        for pair in s
            .split(|c: char| c == ';' || c == ',' || c.is_whitespace())
            .filter(|p| !p.is_empty())
        {
            if let Some((k, v)) = pair.split_once('=') {
                self.set(k.trim(), v.trim());
            }
        }
    }

    /// Overlays one pair; returns whether it was understood.
    pub fn set(&mut self, key: &str, value: &str) -> bool {
        let key = key.to_ascii_lowercase().replace('-', "_");
        let lower = value.to_ascii_lowercase();
        let v = lower.as_str();
        let num = || v.parse::<u64>().ok();
        match key.as_str() {
            "edit" => {
                let m = match v {
                    "rune" | "char" | "gfa" => Some(EditMode::Rune),
                    "byte" | "go" | "go_doc" => Some(EditMode::Byte),
                    _ => None,
                };
                m.map(|x| self.edit = x).is_some()
            }
            "edit_at" => {
                let m = match v {
                    "start" => Some(EditAt::Start),
                    "middle" | "mid" => Some(EditAt::Middle),
                    _ => None,
                };
                m.map(|x| self.edit_at = x).is_some()
            }
            "done_marker" => parse_bool(v).map(|x| self.done_marker = x).is_some(),
            "envelope" => {
                let m = match v {
                    "wrapped" => Some(Envelope::Wrapped),
                    "bare" => Some(Envelope::Bare),
                    _ => None,
                };
                m.map(|x| self.envelope = x).is_some()
            }
            "chunk" => num().map(|x| self.chunk = x as usize).is_some(),
            "delay_ms" | "delay" => num().map(|x| self.delay_ms = x).is_some(),
            "piece" => match num() {
                Some(n) if n >= 1 => {
                    self.piece = n as usize;
                    true
                }
                _ => false,
            },
            "search" => parse_bool(v).map(|x| self.search = x).is_some(),
            "tool" => {
                let m = match v {
                    "gfa" => Some(Some(ToolStyle::Gfa)),
                    "json" => Some(Some(ToolStyle::Json)),
                    "k2" => Some(Some(ToolStyle::K2)),
                    "none" | "off" => Some(None),
                    _ => None,
                };
                m.map(|x| self.tool = x).is_some()
            }
            "tool_name" => {
                // Tool names keep their case.
                self.tool_name = Some(value.to_string()).filter(|n| !n.is_empty());
                true
            }
            "tool_args" => {
                self.tool_args = Some(value.to_string());
                true
            }
            "thinking" => {
                let m = match v {
                    "auto" => Some(Thinking::Auto),
                    "on" | "true" => Some(Thinking::On),
                    "off" | "false" => Some(Thinking::Off),
                    _ => None,
                };
                m.map(|x| self.thinking = x).is_some()
            }
            "fault" => ZaiFault::parse(v).map(|x| self.fault = x).is_some(),
            "retry_after" => num().map(|x| self.retry_after = x).is_some(),
            "cut_after" => num().map(|x| self.cut_after = Some(x as usize)).is_some(),
            "gate" => {
                // Gate names keep their case.
                self.gate = if value.is_empty() || v == "none" {
                    None
                } else {
                    Some(value.to_string())
                };
                true
            }
            "gate_after" => num().map(|x| self.gate_after = x as usize).is_some(),
            "duration" => num().map(|x| self.duration = x).is_some(),
            "reasoning_words" => num().map(|x| self.reasoning_words = x as usize).is_some(),
            "answer_words" => num().map(|x| self.answer_words = x as usize).is_some(),
            _ => false,
        }
    }

    /// Overlays every `[[mock: ...]]` block found in `text`, in order.
    pub fn apply_text(&mut self, text: &str) {
        let mut rest = text;
        while let Some(start) = rest.find("[[mock:") {
            let after = &rest[start + "[[mock:".len()..];
            match after.find("]]") {
                Some(end) => {
                    self.apply(&after[..end]);
                    rest = &after[end + 2..];
                }
                None => break,
            }
        }
    }

    /// Overlays the directives carried by a token `name;key=value;...` and returns the name.
    pub fn apply_token<'t>(&mut self, token: &'t str) -> &'t str {
        let (name, rest) = split_token(token);
        if let Some(rest) = rest {
            self.apply(rest);
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_layers() {
        let mut d = ZaiDirectives::parse("edit=byte; edit_at=middle piece=3,search=on bogus=1");
        assert_eq!(d.edit, EditMode::Byte);
        assert_eq!(d.edit_at, EditAt::Middle);
        assert_eq!(d.piece, 3);
        assert!(d.search);
        d.apply_text("hi [[mock: piece=0; envelope=bare]] there [[mock: tool=K2 tool_name=Get]]");
        assert_eq!(d.piece, 3, "a bad value keeps the earlier layer");
        assert_eq!(d.envelope, Envelope::Bare);
        assert_eq!(d.tool, Some(ToolStyle::K2));
        assert_eq!(d.tool_name.as_deref(), Some("Get"));
        let name = d.apply_token("eyJ.x.y;fault=429;retry_after=9;done_marker=off");
        assert_eq!(name, "eyJ.x.y");
        assert_eq!(d.fault, ZaiFault::Status(429));
        assert_eq!(d.retry_after, 9);
        assert!(!d.done_marker);
        assert_eq!(ZaiFault::parse("405"), Some(ZaiFault::Waf));
        assert_eq!(ZaiFault::parse("nested-error"), Some(ZaiFault::NestedError));
        assert_eq!(ZaiFault::parse("200"), None);
    }
}

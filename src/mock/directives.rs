//! Directives: the knobs that shape one mock answer.
//!
//! They come from three layers, later wins:
//! 1. [`MockConfig::defaults`](super::MockConfig),
//! 2. every `[[mock: key=value; key=value]]` block in the last user message,
//! 3. the bearer token `name;key=value;key=value` (the first segment is the token's name).
//!
//! Unknown keys are ignored; a pair whose value does not parse is ignored too, so the value
//! from the earlier layer (ultimately the default) stays.

use std::time::Duration;

/// Markup the answer is wrapped in (see `k2think-protocol.md` §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Form {
    /// `<think>R</think>\n<answer>A</answer>`
    #[default]
    V1,
    /// `<think duration="N">R</think>\nA`
    V2,
    /// `<think duration="N">R</think>\n<answer>A</answer>`
    V2Answer,
    /// `R</think>\n\nA` (opening tag missing)
    V2NoOpen,
    /// Open WebUI `<details type="reasoning">` block, then `<answer>A</answer>`.
    Details,
    /// K2 Horizon's guest form (k2think-protocol.md §0.5 #5): the `<details>` block with
    /// `> `-quoted reasoning lines, then the answer as bare text after `</details>`.
    DetailsBare,
    /// Just `A`.
    None,
}

impl Form {
    pub fn parse(s: &str) -> Option<Form> {
        Some(match s {
            "v1" => Form::V1,
            "v2" => Form::V2,
            "v2-answer" | "v2answer" | "v2_answer" => Form::V2Answer,
            "v2-noopen" | "v2noopen" | "v2_noopen" => Form::V2NoOpen,
            "details" => Form::Details,
            "details-bare" | "details_bare" | "horizon" => Form::DetailsBare,
            "none" | "plain" => Form::None,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Form::V1 => "v1",
            Form::V2 => "v2",
            Form::V2Answer => "v2-answer",
            Form::V2NoOpen => "v2-noopen",
            Form::Details => "details",
            Form::DetailsBare => "details-bare",
            Form::None => "none",
        }
    }

    pub const ALL: [Form; 7] = [
        Form::V1,
        Form::V2,
        Form::V2Answer,
        Form::V2NoOpen,
        Form::Details,
        Form::DetailsBare,
        Form::None,
    ];
}

/// How the text travels in SSE events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// `{"content": "<whole text so far>"}`
    #[default]
    Cumulative,
    /// `{"content": "<piece>"}`
    Incremental,
    /// OpenAI chunk shape `{"choices":[{"index":0,"delta":{"content":"<piece>"},...}]}`
    Delta,
}

impl Delivery {
    pub fn parse(s: &str) -> Option<Delivery> {
        Some(match s {
            "cumulative" => Delivery::Cumulative,
            "incremental" => Delivery::Incremental,
            "delta" => Delivery::Delta,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Cumulative => "cumulative",
            Delivery::Incremental => "incremental",
            Delivery::Delta => "delta",
        }
    }

    pub const ALL: [Delivery; 3] = [Delivery::Cumulative, Delivery::Incremental, Delivery::Delta];
}

/// How an SSE stream ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum End {
    /// A final `{"done": true, "content": <full>}` event.
    Done,
    /// `data: [DONE]`.
    Marker,
    /// The done event, then `[DONE]`.
    #[default]
    Both,
    /// The body just ends.
    None,
    /// The done event (and the finish chunk, with `finish_chunk`), then the connection is
    /// torn down without a clean end of body (§0.5 #8, "ragged teardown").
    Ragged,
}

impl End {
    pub fn parse(s: &str) -> Option<End> {
        Some(match s {
            "done" => End::Done,
            "marker" => End::Marker,
            "both" => End::Both,
            "none" => End::None,
            "ragged" => End::Ragged,
            _ => return None,
        })
    }
}

/// JSON style of the SSE payloads and the non-stream body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JsonStyle {
    /// serde_json compact, raw UTF-8.
    #[default]
    Compact,
    /// Python `json.dumps` defaults: `", "` / `": "` separators and `\uXXXX` for non-ASCII.
    Python,
}

/// `Retry-After` header value of a 429.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryAfter {
    /// `Retry-After: <seconds>`
    Seconds(u64),
    /// `Retry-After: <HTTP-date N seconds from now>`
    DateIn(u64),
}

impl Default for RetryAfter {
    fn default() -> Self {
        RetryAfter::Seconds(2)
    }
}

/// A failure to inject.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// An error status (401, 403, 429, 500, 502, 503 or any other 4xx/5xx).
    Status(u16),
    /// Send `cut_after` events, then drop the connection without the chunked terminator.
    Cut,
    /// Sleep `slowhead_ms` before the response head, then answer normally.
    SlowHead,
    /// 200 `text/event-stream` with random non-SSE bytes.
    Garbage,
    /// 200 `text/html` Cloudflare-style challenge page.
    Html,
    /// Close the connection without any response.
    Close,
    /// Send `cut_after` events, keep the connection silent for `stall_ms`, then drop it.
    Stall,
    /// Send `cut_after` events, then `data: {"error":{"message":"upstream model error"}}`.
    ErrorEvent,
    /// Send `cut_after` events, then a `{"detail": "..."}` event with no content (§0.5 #7).
    DetailEvent,
}

impl Fault {
    pub fn parse(s: &str) -> Option<Fault> {
        Some(match s {
            "none" | "" => Fault::None,
            "cut" => Fault::Cut,
            "slowhead" | "slow_head" => Fault::SlowHead,
            "garbage" => Fault::Garbage,
            "html" => Fault::Html,
            "close" => Fault::Close,
            "stall" => Fault::Stall,
            "error_event" | "error-event" => Fault::ErrorEvent,
            "detail" | "detail_event" | "detail-event" => Fault::DetailEvent,
            n => match n.parse::<u16>() {
                Ok(code) if (400..=599).contains(&code) => Fault::Status(code),
                _ => return None,
            },
        })
    }
}

/// Everything that shapes one answer. See the module docs for where values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    /// `form`: markup of the answer.
    pub form: Form,
    /// `delivery`: SSE payload shape.
    pub delivery: Delivery,
    /// `end`: how the stream ends.
    pub end: End,
    /// `usage`: send a `{"usage":{...}}` event before the end (and `usage` in JSON answers).
    pub usage: bool,
    /// `chunk`: characters added per content event (>= 1).
    pub chunk: usize,
    /// `pace_ms`: sleep between events.
    pub pace_ms: u64,
    /// `crlf`: end lines with `\r\n` instead of `\n`.
    pub crlf: bool,
    /// `split`: write each event in pieces of this many bytes (0 = whole events).
    pub split: usize,
    /// `gate`: name of a gate to wait at.
    pub gate: Option<String>,
    /// `gate_after`: events written before waiting at the gate.
    pub gate_after: usize,
    /// `fault`: failure to inject.
    pub fault: Fault,
    /// `retry_after`: `N` or `date:N` for 429s.
    pub retry_after: RetryAfter,
    /// `cut_after`: events sent before `cut` / `stall` / `error_event` strike.
    pub cut_after: usize,
    /// `slowhead_ms`: delay before the head with `fault=slowhead`.
    pub slowhead_ms: u64,
    /// `stall_ms`: silence with `fault=stall` before the connection is dropped.
    pub stall_ms: u64,
    /// `linger_ms`: keep the body open this long after the last event (a server that does
    /// not close the stream after `[DONE]`).
    pub linger_ms: u64,
    /// `tool_call`: answer like a model that follows the tool prompt: call this tool with
    /// the trigger found in the request's system message (if the request has one).
    pub tool_call: Option<String>,
    /// `tool_args`: the call's arguments, a JSON object, base64url-encoded.
    pub tool_args: Option<String>,
    /// Set by the server, not a directive: the answer to give instead of the echo.
    pub answer_override: Option<String>,
    /// `reasoning_words`: filler words appended to the reasoning.
    pub reasoning_words: usize,
    /// `answer_words`: filler words appended to the answer.
    pub answer_words: usize,
    /// `duration`: seconds reported by `v2` / `details` markup.
    pub duration: u64,
    /// `json`: `compact` or `python`.
    pub json: JsonStyle,
    /// `task_id`: a leading `{"task_id": "<uuid>"}` event (K2 Horizon).
    pub task_id: bool,
    /// `finish_chunk`: after the done event, an OpenAI-style chunk with
    /// `finish_reason: "stop"` whose delta repeats the answer (it must never be added).
    pub finish_chunk: bool,
    /// `thinking_rule`: every assistant message must carry a string thinking field
    /// (`reasoning`, `reasoning_content`, `think`, `think_fast` or `think_faster`), else 400.
    pub thinking_rule: bool,
    /// `effort_closers`: the v2 forms close (and open) their reasoning with the tag of the
    /// requested `chat_template_kwargs.reasoning_effort`: `think` (high, or none asked),
    /// `think_fast` (medium), `think_faster` (low).
    pub effort_closers: bool,
    /// Set by the server, not a directive: the request's reasoning effort, if any.
    pub effort: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            form: Form::V1,
            delivery: Delivery::Cumulative,
            end: End::Both,
            usage: true,
            chunk: 8,
            pace_ms: 0,
            crlf: false,
            split: 0,
            gate: None,
            gate_after: 1,
            fault: Fault::None,
            retry_after: RetryAfter::Seconds(2),
            cut_after: 2,
            slowhead_ms: 3000,
            stall_ms: 60_000,
            linger_ms: 0,
            tool_call: None,
            tool_args: None,
            answer_override: None,
            reasoning_words: 0,
            answer_words: 0,
            duration: 3,
            json: JsonStyle::Compact,
            task_id: false,
            finish_chunk: false,
            thinking_rule: false,
            effort_closers: false,
            effort: None,
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

impl Directives {
    /// Defaults overlaid with the `key=value` pairs in `s` (see [`Directives::apply`]).
    pub fn parse(s: &str) -> Directives {
        let mut d = Directives::default();
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
            "form" => Form::parse(v).map(|x| self.form = x).is_some(),
            "delivery" => Delivery::parse(v).map(|x| self.delivery = x).is_some(),
            "end" => End::parse(v).map(|x| self.end = x).is_some(),
            "usage" => parse_bool(v).map(|x| self.usage = x).is_some(),
            "chunk" => match num() {
                Some(n) if n >= 1 => {
                    self.chunk = n as usize;
                    true
                }
                _ => false,
            },
            "pace_ms" | "pace" => num().map(|x| self.pace_ms = x).is_some(),
            "crlf" => parse_bool(v).map(|x| self.crlf = x).is_some(),
            "split" => num().map(|x| self.split = x as usize).is_some(),
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
            "fault" => Fault::parse(v).map(|x| self.fault = x).is_some(),
            "retry_after" => {
                let parsed = match v.strip_prefix("date:") {
                    Some(n) => n.parse().ok().map(RetryAfter::DateIn),
                    None => num().map(RetryAfter::Seconds),
                };
                parsed.map(|x| self.retry_after = x).is_some()
            }
            "cut_after" => num().map(|x| self.cut_after = x as usize).is_some(),
            "slowhead_ms" => num().map(|x| self.slowhead_ms = x).is_some(),
            "stall_ms" => num().map(|x| self.stall_ms = x).is_some(),
            "linger_ms" => num().map(|x| self.linger_ms = x).is_some(),
            "tool_call" => {
                self.tool_call = Some(value.trim().to_string()).filter(|v| !v.is_empty());
                true
            }
            "tool_args" => {
                self.tool_args = Some(value.trim().to_string());
                true
            }
            "reasoning_words" => num().map(|x| self.reasoning_words = x as usize).is_some(),
            "answer_words" => num().map(|x| self.answer_words = x as usize).is_some(),
            "duration" => num().map(|x| self.duration = x).is_some(),
            "json" => {
                let style = match v {
                    "compact" => Some(JsonStyle::Compact),
                    "python" => Some(JsonStyle::Python),
                    _ => None,
                };
                style.map(|x| self.json = x).is_some()
            }
            "task_id" => parse_bool(v).map(|x| self.task_id = x).is_some(),
            "finish_chunk" => parse_bool(v).map(|x| self.finish_chunk = x).is_some(),
            "thinking_rule" => parse_bool(v).map(|x| self.thinking_rule = x).is_some(),
            "effort_closers" => parse_bool(v).map(|x| self.effort_closers = x).is_some(),
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

    pub fn pace(&self) -> Duration {
        Duration::from_millis(self.pace_ms)
    }

    /// K2 Horizon on chat.ifm.ai as the newest clients describe it (k2think-protocol.md
    /// §0.5): the `<details>` + bare-answer form, a leading `task_id` event, a finish chunk
    /// after `done`, a ragged end, the thinking-field rule and the effort closers.
    pub fn horizon() -> Directives {
        Directives {
            form: Form::DetailsBare,
            end: End::Ragged,
            task_id: true,
            finish_chunk: true,
            thinking_rule: true,
            effort_closers: true,
            ..Directives::default()
        }
    }

    /// The reasoning tag of the v2 forms: `think`, or with `effort_closers` the tag of the
    /// requested effort.
    pub fn think_tag(&self) -> &'static str {
        if !self.effort_closers {
            return "think";
        }
        match self.effort.as_deref() {
            Some("medium") => "think_fast",
            Some("low") => "think_faster",
            _ => "think",
        }
    }
}

/// Splits `name;k=v;...` into the name and the directive part.
pub fn split_token(token: &str) -> (&str, Option<&str>) {
    match token.find([';', ',']) {
        Some(i) => (token[..i].trim(), Some(&token[i + 1..])),
        None => (token.trim(), None),
    }
}

/// Removes every `[[mock: ...]]` block from `text` and trims the result.
pub fn strip_directives(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("[[mock:") {
        out.push_str(&rest[..start]);
        match rest[start..].find("]]") {
            Some(end) => rest = &rest[start + end + 2..],
            None => {
                rest = &rest[start..];
                break;
            }
        }
    }
    out.push_str(rest);
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_layers() {
        let mut d = Directives::parse("form=v2; delivery=delta chunk=3,usage=false bogus=1");
        assert_eq!(d.form, Form::V2);
        assert_eq!(d.delivery, Delivery::Delta);
        assert_eq!(d.chunk, 3);
        assert!(!d.usage);
        d.apply_text("hello [[mock: form=details; chunk=0]] world [[mock: pace_ms=5]]");
        assert_eq!(d.form, Form::Details);
        assert_eq!(d.chunk, 3, "bad value keeps the earlier layer");
        assert_eq!(d.pace_ms, 5);
        let name = d.apply_token("tok-b;fault=429;retry_after=date:7;gate=G1");
        assert_eq!(name, "tok-b");
        assert_eq!(d.fault, Fault::Status(429));
        assert_eq!(d.retry_after, RetryAfter::DateIn(7));
        assert_eq!(d.gate.as_deref(), Some("G1"));
        assert_eq!(split_token("eyJ.abc.def"), ("eyJ.abc.def", None));
    }

    #[test]
    fn strip() {
        assert_eq!(strip_directives("hi [[mock: form=v2]] there"), "hi  there");
        assert_eq!(strip_directives("[[mock: x=1]]"), "");
        assert_eq!(strip_directives("open [[mock: x"), "open [[mock: x");
    }
}

//! The Z.AI request bodies (providers-protocol.md §A.4–§A.5): the completion body of
//! `POST /api/v2/chat/completions` in its newest form and the body of
//! `POST /api/v1/chats/new`.
//!
//! # Messages (§A.5.3, the "safe choice")
//!
//! * Each run of system (or developer) turns is folded into the text of the next user
//!   turn as `"<system text>\n\n<user text>"` (several system turns joined by a blank
//!   line); system turns after the last user turn become a user message of their own.
//! * User and assistant turns keep their roles; any other role is sent as a user turn.
//! * A message's text is its text parts joined with `"\n"`, trimmed; an assistant turn's
//!   thinking is not sent.
//! * Images become OpenAI `image_url` parts (after the text part) for vision models only;
//!   other models get the text alone.
//!
//! [`signature_prompt`] is the text of the last user message **as sent** (after folding),
//! so the signed string, the body's `signature_prompt` and the last user message agree
//! whichever of them the server checks.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::calendar::Civil;
use super::models::ZaiModel;
use crate::core::request::{Sampling, Turn, TurnContent, TurnPart};

/// Characters of the user message kept in the chats/new history (then `...`).
pub const HISTORY_PREVIEW_CHARS: usize = 500;

/// Everything one request's bodies are built from. `Copy`: set `chat_id` from the
/// chats/new answer with `CompletionInput { chat_id: &id, ..input }`.
#[derive(Debug, Clone, Copy)]
pub struct CompletionInput<'a> {
    /// The body's `model` (the catalogue's [`ZaiModel::upstream`], or an id from the
    /// live `/api/models` list).
    pub upstream_model: &'a str,
    /// The model's flags: search, vision, effort.
    pub model: &'a ZaiModel,
    /// The conversation.
    pub turns: &'a [Turn],
    /// `params`: temperature, top_p, max_tokens and stop are sent.
    pub sampling: &'a Sampling,
    /// `features.enable_thinking`.
    pub thinking: bool,
    /// The client's reasoning effort (OpenAI words); used by effort models while thinking.
    pub effort: Option<&'a str>,
    /// `chat_id` (from chats/new, or a fresh UUID); unused by [`new_chat_body`].
    pub chat_id: &'a str,
    /// `id`: the assistant message's id (a fresh UUID).
    pub message_id: &'a str,
    /// `current_user_message_id`: the user message's id, the same in chats/new.
    pub user_message_id: &'a str,
    /// `captcha_verify_param`: the Aliyun captcha proof, sent only when given.
    pub captcha: Option<&'a str>,
    /// Now, Unix milliseconds (template variables, chats/new timestamps).
    pub now_ms: u64,
    /// `{{CURRENT_TIMEZONE}}`: an IANA name, e.g. `UTC`.
    pub timezone: &'a str,
    /// Minutes east of UTC of `timezone`: the template's date and time are local to it.
    pub utc_offset_minutes: i32,
}

/// The string to sign and to send as `signature_prompt`: the text of the last user
/// message as [`completion_body`] sends it (see the module docs); `""` without one.
pub fn signature_prompt(turns: &[Turn]) -> String {
    messages(turns, false)
        .into_iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text)
        .unwrap_or_default()
}

/// One message as sent.
struct Message<'a> {
    role: &'static str,
    text: String,
    images: Vec<&'a str>,
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_struct("Message", 2)?;
        m.serialize_field("role", self.role)?;
        if self.images.is_empty() {
            m.serialize_field("content", &self.text)?;
        } else {
            let mut parts = Vec::with_capacity(self.images.len() + 1);
            if !self.text.is_empty() {
                parts.push(Part::Text { text: &self.text });
            }
            parts.extend(self.images.iter().map(|url| Part::ImageUrl {
                image_url: ImageRef { url },
            }));
            m.serialize_field("content", &parts)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part<'a> {
    Text { text: &'a str },
    ImageUrl { image_url: ImageRef<'a> },
}

#[derive(Serialize)]
struct ImageRef<'a> {
    url: &'a str,
}

/// A turn's text parts joined with `"\n"`, trimmed.
fn text_of(content: &TurnContent) -> String {
    match content {
        TurnContent::Text(s) => s.trim().to_string(),
        TurnContent::Parts(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| match p {
                    TurnPart::Text { text } => Some(text.as_str()),
                    TurnPart::ImageUrl { .. } => None,
                })
                .collect();
            texts.join("\n").trim().to_string()
        }
    }
}

fn images_of(content: &TurnContent) -> Vec<&str> {
    match content {
        TurnContent::Text(_) => Vec::new(),
        TurnContent::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                TurnPart::ImageUrl { image_url } => Some(image_url.url.as_str()),
                TurnPart::Text { .. } => None,
            })
            .collect(),
    }
}

/// The turns as sent (see the module docs).
fn messages(turns: &[Turn], vision: bool) -> Vec<Message<'_>> {
    let mut out = Vec::with_capacity(turns.len());
    let mut system: Vec<String> = Vec::new();
    for t in turns {
        let text = text_of(&t.content);
        match t.role {
            "system" | "developer" => {
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "assistant" => out.push(Message {
                role: "assistant",
                text,
                images: Vec::new(),
            }),
            _ => {
                let text = if system.is_empty() {
                    text
                } else {
                    let mut folded = system.join("\n\n");
                    system.clear();
                    if !text.is_empty() {
                        folded.push_str("\n\n");
                        folded.push_str(&text);
                    }
                    folded
                };
                let images = if vision {
                    images_of(&t.content)
                } else {
                    Vec::new()
                };
                out.push(Message {
                    role: "user",
                    text,
                    images,
                });
            }
        }
    }
    if !system.is_empty() {
        out.push(Message {
            role: "user",
            text: system.join("\n\n"),
            images: Vec::new(),
        });
    }
    out
}

/// `reasoning_effort` for an OpenAI effort word: `minimal`/`low`/`medium`/`high` (and
/// `none`) → `high`, anything above (`xhigh`, `max`, …) → `max`.
fn effort_level(effort: &str) -> &'static str {
    match effort.trim().to_ascii_lowercase().as_str() {
        "none" | "minimal" | "low" | "medium" | "high" => "high",
        _ => "max",
    }
}

#[derive(Serialize)]
struct Params<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
}

#[derive(Serialize)]
struct Features {
    image_generation: bool,
    web_search: bool,
    auto_web_search: bool,
    preview_mode: bool,
    flags: [&'static str; 0],
    enable_thinking: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
}

/// Open WebUI's template variables.
#[derive(Serialize)]
struct Variables<'a> {
    #[serde(rename = "{{USER_NAME}}")]
    user_name: &'static str,
    #[serde(rename = "{{USER_LOCATION}}")]
    user_location: &'static str,
    #[serde(rename = "{{CURRENT_DATETIME}}")]
    datetime: String,
    #[serde(rename = "{{CURRENT_DATE}}")]
    date: String,
    #[serde(rename = "{{CURRENT_TIME}}")]
    time: String,
    #[serde(rename = "{{CURRENT_WEEKDAY}}")]
    weekday: &'static str,
    #[serde(rename = "{{CURRENT_TIMEZONE}}")]
    timezone: &'a str,
    #[serde(rename = "{{USER_LANGUAGE}}")]
    language: &'static str,
}

#[derive(Serialize)]
struct BackgroundTasks {
    title_generation: bool,
    tags_generation: bool,
}

#[derive(Serialize)]
struct CompletionBody<'a> {
    stream: bool,
    model: &'a str,
    messages: Vec<Message<'a>>,
    signature_prompt: String,
    params: Params<'a>,
    extra: serde_json::Map<String, serde_json::Value>,
    features: Features,
    variables: Variables<'a>,
    chat_id: &'a str,
    id: &'a str,
    current_user_message_id: &'a str,
    current_user_message_parent_id: Option<&'a str>,
    background_tasks: BackgroundTasks,
    #[serde(skip_serializing_if = "Option::is_none")]
    captcha_verify_param: Option<&'a str>,
}

/// The body of `POST /api/v2/chat/completions` (§A.5, newest form): always streamed;
/// `signature_prompt` is [`signature_prompt`] of the same turns.
pub fn completion_body(input: &CompletionInput<'_>) -> Vec<u8> {
    let messages = messages(input.turns, input.model.vision);
    let signature_prompt = messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .map(|m| m.text.clone())
        .unwrap_or_default();
    let local = Civil::at(input.now_ms, input.utc_offset_minutes);
    let (date, time) = (local.date(), local.time());
    let s = input.sampling;
    let body = CompletionBody {
        stream: true,
        model: input.upstream_model,
        messages,
        signature_prompt,
        params: Params {
            temperature: s.temperature,
            top_p: s.top_p,
            max_tokens: s.max_tokens,
            stop: s.stop.as_deref(),
        },
        extra: serde_json::Map::new(),
        features: Features {
            image_generation: false,
            web_search: false,
            auto_web_search: input.model.search,
            preview_mode: true,
            flags: [],
            enable_thinking: input.thinking,
            reasoning_effort: input
                .effort
                .filter(|_| input.model.effort && input.thinking)
                .map(effort_level),
        },
        variables: Variables {
            user_name: "User",
            user_location: "Unknown",
            datetime: format!("{date} {time}"),
            date,
            time,
            weekday: local.weekday_name(),
            timezone: input.timezone,
            language: "en-US",
        },
        chat_id: input.chat_id,
        id: input.message_id,
        current_user_message_id: input.user_message_id,
        current_user_message_parent_id: None,
        background_tasks: BackgroundTasks {
            title_generation: false,
            tags_generation: false,
        },
        captcha_verify_param: input.captcha,
    };
    // Serializing strings, numbers and vectors cannot fail.
    serde_json::to_vec(&body).unwrap_or_default()
}

/// The body of `POST /api/v1/chats/new` (§A.4): a chat whose history holds the last
/// user message (its first [`HISTORY_PREVIEW_CHARS`] characters, then `...`) under
/// `user_message_id`, with the model, `enable_thinking`, `auto_web_search`, and
/// timestamps in seconds (message) and milliseconds (chat) from `now_ms`.
pub fn new_chat_body(input: &CompletionInput<'_>) -> Vec<u8> {
    let prompt = signature_prompt(input.turns);
    let preview = match prompt.char_indices().nth(HISTORY_PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}...", &prompt[..cut]),
        None => prompt,
    };
    let umid = input.user_message_id;
    let model = input.upstream_model;
    let mut history = serde_json::Map::new();
    history.insert(
        umid.to_string(),
        serde_json::json!({
            "id": umid, "parentId": null, "childrenIds": [], "role": "user",
            "content": preview, "timestamp": input.now_ms / 1000, "models": [model],
        }),
    );
    let body = serde_json::json!({"chat": {
        "id": "", "title": "New Chat", "models": [model], "params": {},
        "history": {"messages": history, "currentId": umid},
        "tags": [], "flags": [],
        "features": [{"type": "tool_selector", "server": "tool_selector_h", "status": "hidden"}],
        "mcp_servers": [], "enable_thinking": input.thinking,
        "auto_web_search": input.model.search, "message_version": 1, "extra": {},
        "timestamp": input.now_ms,
    }});
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::request::{ImageUrl, Thinking};
    use crate::provider::zai::models::lookup;
    use serde_json::{json, Value};

    fn text(role: &'static str, s: &str) -> Turn {
        Turn {
            role,
            content: TurnContent::Text(s.into()),
            thinking: None,
        }
    }

    fn with_image(s: &str, url: &str) -> Turn {
        Turn {
            role: "user",
            content: TurnContent::Parts(vec![
                TurnPart::Text { text: s.into() },
                TurnPart::ImageUrl {
                    image_url: ImageUrl {
                        url: url.into(),
                        detail: Some("high".into()),
                    },
                },
                TurnPart::Text {
                    text: "second part ".into(),
                },
            ]),
            thinking: None,
        }
    }

    fn input<'a>(
        model: &'a ZaiModel,
        turns: &'a [Turn],
        sampling: &'a Sampling,
    ) -> CompletionInput<'a> {
        CompletionInput {
            upstream_model: model.upstream,
            model,
            turns,
            sampling,
            thinking: model.thinking,
            effort: None,
            chat_id: "chat-1",
            message_id: "msg-a",
            user_message_id: "msg-u",
            captcha: None,
            // 2026-03-11 02:00:00 UTC, a Wednesday.
            now_ms: 1_773_194_400_123,
            timezone: "Asia/Shanghai",
            utc_offset_minutes: 480,
        }
    }

    fn body(i: &CompletionInput<'_>) -> Value {
        serde_json::from_slice(&completion_body(i)).unwrap()
    }

    #[test]
    fn newest_form_fields() {
        let m = lookup("GLM-4.7").unwrap();
        let turns = [text("user", "  hi  ")];
        let sampling = Sampling {
            temperature: Some(0.7),
            top_p: Some(0.9),
            max_tokens: Some(1024),
            stop: Some(vec!["END".into()]),
            presence_penalty: Some(1.0),
            frequency_penalty: Some(1.0),
            seed: Some(7),
        };
        let v = body(&input(m, &turns, &sampling));
        assert_eq!(v["stream"], true);
        assert_eq!(v["model"], "glm-4.7");
        assert_eq!(v["messages"], json!([{"role": "user", "content": "hi"}]));
        assert_eq!(v["signature_prompt"], "hi");
        // Only the four sampling parameters.
        assert_eq!(
            v["params"],
            json!({"temperature": 0.7, "top_p": 0.9, "max_tokens": 1024, "stop": ["END"]})
        );
        assert_eq!(v["extra"], json!({}));
        assert_eq!(
            v["features"],
            json!({"image_generation": false, "web_search": false, "auto_web_search": false,
                   "preview_mode": true, "flags": [], "enable_thinking": false})
        );
        assert_eq!(
            v["variables"],
            json!({"{{USER_NAME}}": "User", "{{USER_LOCATION}}": "Unknown",
                   "{{CURRENT_DATETIME}}": "2026-03-11 10:00:00", "{{CURRENT_DATE}}": "2026-03-11",
                   "{{CURRENT_TIME}}": "10:00:00", "{{CURRENT_WEEKDAY}}": "Wednesday",
                   "{{CURRENT_TIMEZONE}}": "Asia/Shanghai", "{{USER_LANGUAGE}}": "en-US"})
        );
        assert_eq!(v["chat_id"], "chat-1");
        assert_eq!(v["id"], "msg-a");
        assert_eq!(v["current_user_message_id"], "msg-u");
        assert_eq!(v["current_user_message_parent_id"], Value::Null);
        assert!(v
            .as_object()
            .unwrap()
            .contains_key("current_user_message_parent_id"));
        assert_eq!(
            v["background_tasks"],
            json!({"title_generation": false, "tags_generation": false})
        );
        assert!(v.get("captcha_verify_param").is_none());
        // No sampling: an empty `params`.
        assert_eq!(
            body(&input(m, &turns, &Sampling::default()))["params"],
            json!({})
        );
    }

    #[test]
    fn captcha_only_when_given() {
        let m = lookup("GLM-4.7").unwrap();
        let turns = [text("user", "hi")];
        let s = Sampling::default();
        let v = body(&CompletionInput {
            captcha: Some("eyJjZXJ0aWZ5SWQiOiJ4In0="),
            ..input(m, &turns, &s)
        });
        assert_eq!(v["captcha_verify_param"], "eyJjZXJ0aWZ5SWQiOiJ4In0=");
    }

    #[test]
    fn thinking_search_and_effort_flags() {
        let s = Sampling::default();
        let turns = [text("user", "hi")];
        let search = lookup("GLM-4.7-Search").unwrap();
        let v = body(&input(search, &turns, &s));
        assert_eq!(v["features"]["auto_web_search"], true);
        assert_eq!(v["features"]["web_search"], false);
        let think = lookup("GLM-4.7-Thinking").unwrap();
        assert_eq!(
            body(&input(think, &turns, &s))["features"]["enable_thinking"],
            true
        );
        // Effort: GLM-5.2 while thinking only.
        let m52 = lookup("GLM-5.2").unwrap();
        for (effort, want) in [
            ("low", "high"),
            ("medium", "high"),
            ("HIGH", "high"),
            ("minimal", "high"),
            ("xhigh", "max"),
            ("max", "max"),
        ] {
            let v = body(&CompletionInput {
                effort: Some(effort),
                ..input(m52, &turns, &s)
            });
            assert_eq!(v["features"]["reasoning_effort"], want, "{effort}");
        }
        let off = body(&CompletionInput {
            effort: Some("high"),
            thinking: false,
            ..input(m52, &turns, &s)
        });
        assert!(off["features"].get("reasoning_effort").is_none());
        assert_eq!(off["features"]["enable_thinking"], false);
        let none = body(&input(m52, &turns, &s));
        assert!(none["features"].get("reasoning_effort").is_none());
        // Other models never get it.
        let m5 = lookup("GLM-5").unwrap();
        let v = body(&CompletionInput {
            effort: Some("high"),
            ..input(m5, &turns, &s)
        });
        assert!(v["features"].get("reasoning_effort").is_none());
    }

    #[test]
    fn system_folded_roles_kept_thinking_dropped() {
        let m = lookup("GLM-5").unwrap();
        let s = Sampling::default();
        let mut answer = text("assistant", "Hello! ");
        answer.thinking = Some(Thinking {
            field: "reasoning",
            text: "secret plan".into(),
        });
        let turns = [
            text("system", "Be brief."),
            text("developer", "Use English."),
            text("user", "hi"),
            answer,
            text("system", "Now be formal."),
            text("user", "  how are you?\n"),
            text("system", "Trailing note."),
        ];
        let v = body(&input(m, &turns, &s));
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": "Be brief.\n\nUse English.\n\nhi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Now be formal.\n\nhow are you?"},
                {"role": "user", "content": "Trailing note."},
            ])
        );
        // The signed prompt is the last user message as sent.
        assert_eq!(v["signature_prompt"], "Trailing note.");
        assert_eq!(signature_prompt(&turns), "Trailing note.");
        assert!(!String::from_utf8(completion_body(&input(m, &turns, &s)))
            .unwrap()
            .contains("secret plan"));
    }

    #[test]
    fn signature_prompt_rule() {
        // Single turn with a system prompt: the folded text, as sent.
        let turns = [text("system", "S"), text("user", " U ")];
        assert_eq!(signature_prompt(&turns), "S\n\nU");
        // Text parts joined with "\n", trimmed; images ignored.
        assert_eq!(
            signature_prompt(&[with_image(" look ", "https://x/y.png")]),
            "look \nsecond part"
        );
        // The last user turn wins; none gives "".
        assert_eq!(
            signature_prompt(&[text("user", "a"), text("assistant", "b"), text("user", "c")]),
            "c"
        );
        assert_eq!(signature_prompt(&[text("assistant", "b")]), "");
        assert_eq!(signature_prompt(&[]), "");
        // Tool results reach us as user turns.
        assert_eq!(signature_prompt(&[text("tool", "42")]), "42");
    }

    #[test]
    fn images_only_for_vision_models() {
        let s = Sampling::default();
        let turns = [with_image("look", "https://x/y.png")];
        let v = body(&input(lookup("GLM-4.6V").unwrap(), &turns, &s));
        assert_eq!(
            v["messages"][0]["content"],
            json!([
                {"type": "text", "text": "look\nsecond part"},
                {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            ])
        );
        assert_eq!(v["signature_prompt"], "look\nsecond part");
        let v = body(&input(lookup("GLM-5").unwrap(), &turns, &s));
        assert_eq!(v["messages"][0]["content"], "look\nsecond part");
        // A vision model with an image and no text: just the image part.
        let only = [Turn {
            role: "user",
            content: TurnContent::Parts(vec![TurnPart::ImageUrl {
                image_url: ImageUrl {
                    url: "file-1".into(),
                    detail: None,
                },
            }]),
            thinking: None,
        }];
        let v = body(&input(lookup("GLM-5V-Turbo").unwrap(), &only, &s));
        assert_eq!(
            v["messages"][0]["content"],
            json!([{"type": "image_url", "image_url": {"url": "file-1"}}])
        );
        assert_eq!(v["signature_prompt"], "");
    }

    #[test]
    fn new_chat_body_shape() {
        let m = lookup("GLM-4.7-Search").unwrap();
        let s = Sampling::default();
        let turns = [text("system", "S"), text("user", "hi")];
        let i = CompletionInput {
            thinking: true,
            ..input(m, &turns, &s)
        };
        let v: Value = serde_json::from_slice(&new_chat_body(&i)).unwrap();
        let chat = &v["chat"];
        assert_eq!(chat["id"], "");
        assert_eq!(chat["title"], "New Chat");
        assert_eq!(chat["models"], json!(["glm-4.7"]));
        assert_eq!(chat["enable_thinking"], true);
        assert_eq!(chat["auto_web_search"], true);
        assert_eq!(chat["timestamp"], 1_773_194_400_123u64);
        assert_eq!(chat["history"]["currentId"], "msg-u");
        assert_eq!(
            chat["history"]["messages"]["msg-u"],
            json!({"id": "msg-u", "parentId": null, "childrenIds": [], "role": "user",
                   "content": "S\n\nhi", "timestamp": 1_773_194_400u64, "models": ["glm-4.7"]})
        );
        assert_eq!(chat["features"][0]["server"], "tool_selector_h");
        assert_eq!(chat["message_version"], 1);
    }

    #[test]
    fn new_chat_history_is_truncated_by_characters() {
        let m = lookup("GLM-4.7").unwrap();
        let s = Sampling::default();
        let content = |turns: &[Turn]| -> String {
            let v: Value = serde_json::from_slice(&new_chat_body(&input(m, turns, &s))).unwrap();
            v["chat"]["history"]["messages"]["msg-u"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let exact = "字".repeat(HISTORY_PREVIEW_CHARS);
        assert_eq!(content(&[text("user", &exact)]), exact);
        let long = format!("{exact}é and more");
        assert_eq!(content(&[text("user", &long)]), format!("{exact}..."));
    }
}

//! The K2Think provider: its wire payload (the Open WebUI chat body and its pieces), error
//! details and refusals, the prompt-token estimate of a payload; the payload builder in
//! [`request`], the answer decoder in [`decode`].
//!
//! Two body styles (k2think-protocol.md §2.2–2.3): `Minimal` is what the guest proxies and
//! HED-B send with `stream: true` and is confirmed to stream SSE; `Webui` is the full body
//! of the ZX family (variables, model_item, background_tasks and fresh chat/session ids).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::core::ids::uuid_v4;
use crate::core::request::{Sampling, Turn, TurnContent, TurnPart};
use crate::pipeline::tokens::estimate_tokens;

pub mod decode;
pub mod request;
pub mod runtime;

/// K2 Horizon, the web chat's model since 2026-09 (k2think-protocol.md §0.5 #2).
pub const HORIZON_MODEL: &str = "IFM/K2-Horizon-375B-A23B";
/// K2-Think-v2, the model of the old host (www.k2think.ai), being phased out.
pub const LEGACY_MODEL: &str = "MBZUAI-IFM/K2-Think-v2";
/// The old host. Pointing `upstream.base_url` at it brings back its model catalogue.
pub const LEGACY_HOST: &str = "www.k2think.ai";
/// An upstream status that refuses the request itself (a retired model, a body it will not
/// take): final, whatever `retry.on_status` says, and no token's fault. The client gets a
/// 400 with the upstream's own words.
pub fn refuses_request(status: u16) -> bool {
    matches!(status, 400 | 422)
}

/// Characters of a non-JSON error body kept as its detail.
const BODY_DETAIL: usize = 300;

/// The upstream's explanation in an error body, exactly: `detail`, `error.message` (or a
/// string `error`), or `message` of a JSON body (a structured value as compact JSON); the
/// start of a body that is neither JSON nor HTML; `None` otherwise.
pub fn error_detail(content_type: &str, body: &[u8]) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let present = |d: &&Value| !d.is_null();
        let found = v
            .get("detail")
            .filter(present)
            .or_else(|| {
                let e = v.get("error").filter(present)?;
                e.get("message").filter(present).or(Some(e))
            })
            .or_else(|| v.get("message").filter(present))?;
        return Some(match found {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let html = content_type.contains("html") || text.starts_with('<');
    if text.is_empty() || html {
        return None;
    }
    Some(text.chars().take(BODY_DETAIL).collect())
}

/// The assistant-message fields the new upstream accepts as the thinking field (§0.5 #3).
pub const THINKING_FIELDS: [&str; 5] = [
    "reasoning",
    "reasoning_content",
    "think",
    "think_fast",
    "think_faster",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStyle {
    Minimal,
    Webui,
}

/// The thinking-field name as configured (`upstream.thinking_field`): one of
/// [`THINKING_FIELDS`], or `None` for `""` or a name it does not know.
pub fn thinking_field(name: &str) -> Option<&'static str> {
    THINKING_FIELDS.iter().copied().find(|f| *f == name)
}

/// Where `chat_template_kwargs` goes in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KwargsPlacement {
    /// Under a literal `extra_body` key, as the newest web clients send it.
    ExtraBody,
    /// At the top level.
    TopLevel,
}

/// The upstream request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Payload {
    pub stream: bool,
    pub model: String,
    pub messages: Vec<Turn>,
    pub params: Sampling,
    /// `chat_template_kwargs.reasoning_effort` (`low`, `medium`, `high`), and where it goes.
    pub effort: Option<(&'static str, KwargsPlacement)>,
    pub style: BodyStyle,
    /// Fresh per request in the `Webui` style (also used in its Referer).
    pub chat_id: String,
}

#[derive(Serialize)]
struct Features {
    image_generation: bool,
    code_interpreter: bool,
    web_search: bool,
}

const FEATURES: Features = Features {
    image_generation: false,
    code_interpreter: false,
    web_search: false,
};

#[derive(Serialize)]
struct MinimalBody<'a> {
    stream: bool,
    model: &'a str,
    messages: &'a [Turn],
    params: &'a Sampling,
    features: Features,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template_kwargs: Option<TemplateKwargs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_body: Option<ExtraBody>,
}

#[derive(Serialize)]
struct TemplateKwargs {
    reasoning_effort: &'static str,
}

#[derive(Serialize)]
struct ExtraBody {
    chat_template_kwargs: TemplateKwargs,
}

#[derive(Serialize)]
struct WebuiBody<'a> {
    stream: bool,
    model: &'a str,
    messages: &'a [Turn],
    params: &'a Sampling,
    tool_servers: [u8; 0],
    features: Features,
    variables: serde_json::Value,
    model_item: serde_json::Value,
    background_tasks: serde_json::Value,
    chat_id: &'a str,
    id: String,
    session_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template_kwargs: Option<TemplateKwargs>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extra_body: Option<ExtraBody>,
}

impl Payload {
    /// Serialize the body for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let kwargs = |want: KwargsPlacement| {
            self.effort
                .filter(|(_, at)| *at == want)
                .map(|(e, _)| TemplateKwargs {
                    reasoning_effort: e,
                })
        };
        let chat_template_kwargs = kwargs(KwargsPlacement::TopLevel);
        let extra_body = kwargs(KwargsPlacement::ExtraBody).map(|k| ExtraBody {
            chat_template_kwargs: k,
        });
        let r = match self.style {
            BodyStyle::Minimal => serde_json::to_vec(&MinimalBody {
                stream: self.stream,
                model: &self.model,
                messages: &self.messages,
                params: &self.params,
                features: FEATURES,
                chat_template_kwargs,
                extra_body,
            }),
            BodyStyle::Webui => serde_json::to_vec(&WebuiBody {
                stream: self.stream,
                model: &self.model,
                messages: &self.messages,
                params: &self.params,
                tool_servers: [],
                features: FEATURES,
                variables: variables(SystemTime::now()),
                model_item: serde_json::json!({
                    "id": self.model, "object": "model", "owned_by": "MBZUAI",
                    "root": "ifm-k2-think-v2", "parent": null, "status": "active",
                    "connection_type": "external", "name": self.model,
                }),
                background_tasks: serde_json::json!({
                    "title_generation": false, "tags_generation": false
                }),
                chat_id: &self.chat_id,
                id: uuid_v4(),
                session_id: uuid_v4(),
                chat_template_kwargs,
                extra_body,
            }),
        };
        // Serializing plain strings, numbers and vectors cannot fail.
        r.unwrap_or_default()
    }
}

/// Open WebUI template variables for "now" (UTC).
fn variables(now: SystemTime) -> serde_json::Value {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    const WEEKDAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let weekday = WEEKDAYS[days.rem_euclid(7) as usize];
    let date = format!("{y:04}-{m:02}-{d:02}");
    let time = format!("{hh:02}:{mm:02}:{ss:02}");
    serde_json::json!({
        "{{USER_NAME}}": "User",
        "{{USER_LOCATION}}": "Unknown",
        "{{CURRENT_DATETIME}}": format!("{date} {time}"),
        "{{CURRENT_DATE}}": date,
        "{{CURRENT_TIME}}": time,
        "{{CURRENT_WEEKDAY}}": weekday,
        "{{CURRENT_TIMEZONE}}": "UTC",
        "{{USER_LANGUAGE}}": "en-US",
    })
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Tokens per image in [`estimate_input_tokens`]: a mid-sized image in most vision
/// tokenizers (the size is not known without decoding it).
const IMAGE_TOKENS: u64 = 1000;
/// Tokens of framing per message (role markers) in [`estimate_input_tokens`].
const MESSAGE_TOKENS: u64 = 4;

/// An estimate of the prompt tokens of what goes upstream.
pub fn estimate_input_tokens(payload: &Payload) -> u64 {
    payload
        .messages
        .iter()
        .map(|m| {
            MESSAGE_TOKENS
                + match &m.content {
                    TurnContent::Text(t) => estimate_tokens(t),
                    TurnContent::Parts(parts) => parts
                        .iter()
                        .map(|p| match p {
                            TurnPart::Text { text } => estimate_tokens(text),
                            TurnPart::ImageUrl { .. } => IMAGE_TOKENS,
                        })
                        .sum(),
                }
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::request::{ImageUrl, TurnContent, TurnPart};
    use std::time::Duration;

    fn payload(style: BodyStyle) -> Payload {
        Payload {
            stream: true,
            model: "MBZUAI-IFM/K2-Think-v2".into(),
            messages: vec![Turn {
                thinking: None,
                role: "user",
                content: TurnContent::Parts(vec![
                    TurnPart::Text { text: "hi".into() },
                    TurnPart::ImageUrl {
                        image_url: ImageUrl {
                            url: "https://x/y.png".into(),
                            detail: None,
                        },
                    },
                ]),
            }],
            params: Sampling {
                temperature: Some(0.2),
                ..Sampling::default()
            },
            effort: None,
            style,
            chat_id: uuid_v4(),
        }
    }

    #[test]
    fn minimal_body_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&payload(BodyStyle::Minimal).to_bytes()).unwrap();
        assert_eq!(v["stream"], true);
        assert_eq!(v["params"], serde_json::json!({"temperature": 0.2}));
        assert_eq!(v["messages"][0]["content"][1]["type"], "image_url");
        assert_eq!(
            v["messages"][0]["content"][1]["image_url"]["url"],
            "https://x/y.png"
        );
        assert_eq!(v["features"]["web_search"], false);
        assert!(v.get("chat_id").is_none());
    }

    #[test]
    fn webui_body_has_ids_and_variables() {
        let p = payload(BodyStyle::Webui);
        let v: serde_json::Value = serde_json::from_slice(&p.to_bytes()).unwrap();
        assert_eq!(v["chat_id"], p.chat_id.as_str());
        assert_ne!(v["id"], v["session_id"]);
        assert_eq!(v["model_item"]["id"], "MBZUAI-IFM/K2-Think-v2");
        assert!(v["variables"]["{{CURRENT_DATE}}"].as_str().unwrap().len() == 10);
    }

    #[test]
    fn uuid_format() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        let v = variables(UNIX_EPOCH + Duration::from_secs(1_758_362_400));
        assert_eq!(v["{{CURRENT_DATETIME}}"], "2025-09-20 10:00:00");
        assert_eq!(v["{{CURRENT_WEEKDAY}}"], "Saturday");
    }

    #[test]
    fn a_payload_counts_messages_framing_and_images() {
        let p = Payload {
            effort: None,
            messages: vec![
                crate::core::request::Turn {
                    role: "system",
                    content: TurnContent::Text("abcdefgh".into()),
                    thinking: None,
                },
                crate::core::request::Turn {
                    thinking: None,
                    role: "user",
                    content: TurnContent::Parts(vec![
                        TurnPart::Text {
                            text: "你好".into(),
                        },
                        TurnPart::ImageUrl {
                            image_url: crate::core::request::ImageUrl {
                                url: "data:image/png;base64,AAAA".into(),
                                detail: None,
                            },
                        },
                    ]),
                },
            ],
            stream: true,
            model: "m".into(),
            params: crate::core::request::Sampling::default(),
            style: BodyStyle::Minimal,
            chat_id: String::new(),
        };
        assert_eq!(
            estimate_input_tokens(&p),
            (MESSAGE_TOKENS + 2) + (MESSAGE_TOKENS + 2 + IMAGE_TOKENS)
        );
    }
}

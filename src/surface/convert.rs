//! Requests converted by hand into the chat request (Anthropic Messages, OpenAI
//! Responses): the messages a conversion makes ([`Converted`]) and where each message and
//! part came from in the client's body ([`Origin`]), so later checks name the client's field.

use crate::core::error::ApiError;
use crate::surface::chat::request::{Content, Message, Role};

/// Where the messages and parts of a converted request came from in the client's body: the
/// converted `messages[2].content[1]` is the client's `input[3].content[1]`. Checks that run
/// after the conversion (files, images, tool names, the message count) name the client's
/// field through [`Origin::error`]. The chat surface's own request is not converted:
/// [`Origin::default`] leaves every error as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The client's name of the message list (`messages`, `input`); empty: the chat surface.
    list: &'static str,
    messages: Vec<MessageOrigin>,
    /// The client's path of each converted tool, when the conversion did not keep one tool
    /// per client tool (Responses namespaces are flattened); empty: `tools[i]` is the
    /// client's `tools[i]`.
    tools: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MessageOrigin {
    /// The client's path of the item the message came from.
    at: String,
    /// The client's path of each part of the message's content.
    parts: Vec<String>,
}

impl Origin {
    /// The origin of messages converted from the client's list named `list`.
    pub fn of(list: &'static str) -> Origin {
        Origin {
            list,
            messages: Vec::new(),
            tools: Vec::new(),
        }
    }

    /// The client's path of each converted tool, in order (`tools[4].tools[1]`,
    /// `input[0].tools[2]`).
    pub fn set_tools(&mut self, paths: Vec<String>) {
        self.tools = paths;
    }

    /// The client's path for `param`, a path of the converted request.
    pub fn path(&self, param: &str) -> String {
        if self.list.is_empty() {
            return param.to_string();
        }
        // Tools are flat objects on both converted surfaces (`tools[0].name`).
        if param.starts_with("tools[") || param.starts_with("tool_choice") {
            let converted = param.strip_prefix("tools").and_then(index);
            if let Some((p, rest)) =
                converted.and_then(|(i, rest)| Some((self.tools.get(i)?, rest)))
            {
                return format!("{p}{}", rest.replacen(".function.", ".", 1));
            }
            return param.replacen(".function.", ".", 1);
        }
        let Some(rest) = param.strip_prefix("messages") else {
            return param.to_string();
        };
        let Some((i, rest)) = index(rest) else {
            return format!("{}{rest}", self.list);
        };
        let Some(m) = self.messages.get(i) else {
            return self.list.to_string();
        };
        match rest.strip_prefix(".content").and_then(index) {
            Some((j, rest)) => match m.parts.get(j) {
                Some(p) => format!("{p}{rest}"),
                None => m.at.clone(),
            },
            None => m.at.clone(),
        }
    }

    /// `e` naming the client's field: `param` mapped by [`Origin::path`] and, on the
    /// converted surfaces, the message starting with it as every other 400 there does
    /// (Anthropic errors carry no `param`).
    pub fn error(&self, mut e: ApiError) -> ApiError {
        if self.list.is_empty() {
            return e;
        }
        if let Some(p) = e.param.take() {
            let path = self.path(&p);
            if !e.message.starts_with(&format!("{path}:")) {
                e.message = format!("{path}: {}", e.message);
            }
            e.param = Some(path);
        }
        e
    }
}

/// `[3]…` → (3, `…`).
fn index(s: &str) -> Option<(usize, &str)> {
    let s = s.strip_prefix('[')?;
    let end = s.find(']')?;
    Some((s[..end].parse().ok()?, &s[end + 1..]))
}

/// The messages a conversion makes, each with where it came from ([`Origin`]).
#[derive(Debug, Default)]
pub struct Converted {
    pub messages: Vec<Message>,
    pub origin: Origin,
}

impl Converted {
    /// An empty conversion of the client's list named `list`.
    pub fn of(list: &'static str) -> Converted {
        Converted {
            messages: Vec::new(),
            origin: Origin::of(list),
        }
    }

    /// Add `m`, made from the client's item at `at`, whose parts come from `parts`.
    pub fn push(&mut self, m: Message, at: impl Into<String>, parts: Vec<String>) {
        self.messages.push(m);
        self.origin.messages.push(MessageOrigin {
            at: at.into(),
            parts,
        });
    }
}

/// A message with no name, tool calls or tool-call id.
pub fn message(role: Role, content: Content) -> Message {
    Message {
        role,
        content,
        name: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
        reasoning_content: None,
        function_call: None,
    }
}

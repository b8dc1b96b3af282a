//! The OpenAI Responses stream grammar, checked on raw SSE text: every event parses as
//! `async-openai`'s `ResponseStreamEvent` and is named as its `type`; `sequence_number`
//! counts up from 0; `response.created`, `response.in_progress`, then per output item
//! `output_item.added`, its parts (`content_part.*`, `reasoning_summary_part.*`), deltas
//! and `.done` events, `output_item.done`, one item at a time; one terminal
//! `response.completed` / `incomplete` / `failed` whose output is the streamed items.

use async_openai::types::responses::ResponseStreamEvent;
use serde_json::{json, Value};

/// The `event:` name and `data:` JSON of each SSE event.
pub fn events(raw: &str) -> Vec<(String, Value)> {
    raw.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let (mut name, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_string();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            let data: Value = serde_json::from_str(&data).expect("each data line is JSON");
            (name, data)
        })
        .collect()
}

/// What a client assembles from a Responses stream.
#[derive(Debug, Default)]
pub struct Assembled {
    /// Per output item: its type and its text (a call's arguments or input).
    pub items: Vec<(String, String)>,
    /// Per reasoning item with a summary: the summary text.
    pub summaries: Vec<String>,
    /// Calls: `(call_id, name, arguments)`; a custom tool's arguments are its input, as a
    /// JSON string.
    pub calls: Vec<(String, String, Value)>,
    /// Every finished item, as `output_item.done` gave it.
    pub done_items: Vec<Value>,
    /// The terminal event's name and its response.
    pub end: Option<(String, Value)>,
}

/// An item being streamed.
struct Open {
    id: String,
    kind: String,
    open: bool,
    text: String,
    /// Some once a summary part was added.
    summary: Option<String>,
}

/// The stream in `raw`, assembled; panics where the grammar is broken.
pub fn assemble(raw: &str) -> Assembled {
    let evs = events(raw);
    assert!(!raw.contains("[DONE]"), "the Responses API sends no [DONE]");
    let mut a = Assembled::default();
    let mut open: Vec<Open> = Vec::new();
    for (i, (name, data)) in evs.iter().enumerate() {
        // every event is one the SDK knows, named as its `type`
        serde_json::from_value::<ResponseStreamEvent>(data.clone())
            .unwrap_or_else(|e| panic!("event {i} `{name}` does not parse: {e}: {data}"));
        assert_eq!(data["type"], name.as_str(), "event {i}");
        assert_eq!(
            data["sequence_number"], i as u64,
            "sequence numbers count up from 0"
        );
        assert!(a.end.is_none(), "nothing after the terminal event: {name}");
        match (i, name.as_str()) {
            (0, n) => assert_eq!(n, "response.created"),
            (1, n) => assert_eq!(n, "response.in_progress"),
            (_, "response.created" | "response.in_progress") => panic!("{name} twice"),
            _ => {}
        }
        let index = data["output_index"].as_u64().map(|x| x as usize);
        let item = |idx: Option<usize>| -> usize {
            let idx = idx.expect("output_index");
            assert!(idx < open.len(), "event for an item never added: {data}");
            assert!(open[idx].open, "event for an item already done: {data}");
            if let Some(id) = data["item_id"].as_str() {
                assert_eq!(id, open[idx].id, "item_id matches the added item");
            }
            idx
        };
        match name.as_str() {
            "response.created" | "response.in_progress" => {
                assert_eq!(data["response"]["status"], "in_progress");
                assert_eq!(data["response"]["output"], json!([]));
            }
            "response.output_item.added" => {
                assert_eq!(index, Some(open.len()), "items are added in order");
                assert!(open.iter().all(|o| !o.open), "one item at a time");
                let it = &data["item"];
                assert_eq!(it["status"], "in_progress");
                open.push(Open {
                    id: it["id"].as_str().unwrap().to_string(),
                    kind: it["type"].as_str().unwrap().to_string(),
                    open: true,
                    text: String::new(),
                    summary: None,
                });
            }
            "response.content_part.added" | "response.content_part.done" => {
                item(index);
                assert_eq!(data["content_index"], 0);
            }
            "response.reasoning_summary_part.added" => {
                let idx = item(index);
                assert_eq!(open[idx].kind, "reasoning");
                assert_eq!(data["summary_index"], 0);
                assert!(open[idx].summary.is_none(), "one summary part");
                open[idx].summary = Some(String::new());
            }
            "response.reasoning_summary_text.delta" => {
                let idx = item(index);
                let s = open[idx]
                    .summary
                    .as_mut()
                    .expect("a summary part was added");
                s.push_str(data["delta"].as_str().unwrap());
            }
            "response.reasoning_summary_text.done" | "response.reasoning_summary_part.done" => {
                let idx = item(index);
                let text = if name.ends_with("text.done") {
                    &data["text"]
                } else {
                    &data["part"]["text"]
                };
                assert_eq!(
                    text.as_str(),
                    open[idx].summary.as_deref(),
                    "done = the deltas"
                );
            }
            "response.reasoning_text.delta"
            | "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.custom_tool_call_input.delta" => {
                let idx = item(index);
                let want = match name.as_str() {
                    "response.reasoning_text.delta" => "reasoning",
                    "response.output_text.delta" => "message",
                    "response.function_call_arguments.delta" => "function_call",
                    _ => "custom_tool_call",
                };
                assert_eq!(open[idx].kind, want, "{name} in a {} item", open[idx].kind);
                open[idx].text.push_str(data["delta"].as_str().unwrap());
            }
            "response.reasoning_text.done" | "response.output_text.done" => {
                let idx = item(index);
                assert_eq!(
                    data["text"].as_str().unwrap(),
                    open[idx].text,
                    "done = the deltas"
                );
            }
            "response.function_call_arguments.done" => {
                let idx = item(index);
                assert_eq!(data["arguments"].as_str().unwrap(), open[idx].text);
            }
            "response.custom_tool_call_input.done" => {
                let idx = item(index);
                assert_eq!(data["input"].as_str().unwrap(), open[idx].text);
            }
            "response.output_item.done" => {
                let idx = item(index);
                let it = &data["item"];
                assert_eq!(it["id"], open[idx].id.as_str());
                let text = match it["type"].as_str().unwrap() {
                    "reasoning" => {
                        let summary = match &open[idx].summary {
                            Some(s) => {
                                a.summaries.push(s.clone());
                                json!([{"type": "summary_text", "text": s}])
                            }
                            None => json!([]),
                        };
                        assert_eq!(it["summary"], summary, "the summary is what streamed");
                        it["content"][0]["text"].as_str().unwrap().to_string()
                    }
                    "message" => it["content"][0]["text"].as_str().unwrap().to_string(),
                    "function_call" => {
                        a.calls.push((
                            it["call_id"].as_str().unwrap().to_string(),
                            it["name"].as_str().unwrap().to_string(),
                            serde_json::from_str(it["arguments"].as_str().unwrap()).unwrap(),
                        ));
                        it["arguments"].as_str().unwrap().to_string()
                    }
                    "custom_tool_call" => {
                        a.calls.push((
                            it["call_id"].as_str().unwrap().to_string(),
                            it["name"].as_str().unwrap().to_string(),
                            it["input"].clone(),
                        ));
                        it["input"].as_str().unwrap().to_string()
                    }
                    t => panic!("unexpected item type {t}"),
                };
                assert_eq!(
                    text, open[idx].text,
                    "the done item holds what the deltas said"
                );
                open[idx].open = false;
                a.items.push((open[idx].kind.clone(), text));
                a.done_items.push(it.clone());
            }
            "response.completed" | "response.incomplete" => {
                assert!(
                    open.iter().all(|o| !o.open),
                    "every item is done before {name}"
                );
                let r = &data["response"];
                let output = r["output"].as_array().unwrap();
                assert_eq!(
                    output, &a.done_items,
                    "the final output is the streamed items"
                );
                a.end = Some((name.clone(), r.clone()));
            }
            "response.failed" => a.end = Some((name.clone(), data["response"].clone())),
            other => panic!("unexpected event {other}"),
        }
    }
    a
}

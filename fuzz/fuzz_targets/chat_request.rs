//! Request parsing: arbitrary bytes never panic; `ChatRequest::parse` gives a request or a
//! 4xx error; a parsed request goes through the tool set, the K2Think rewrite and file/image
//! resolution without panicking, and its payload serializes to JSON.
//!
//! cargo +nightly fuzz run chat_request -- -max_total_time=60

#![no_main]

use k2proxy::k2think::BodyStyle;
use k2proxy::openai::ChatRequest;
use k2proxy::transform::files;
use k2proxy::transform::request::{to_k2think, RewriteOptions};
use k2proxy::transform::tools::ToolSet;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn rewrite(req: &ChatRequest, tools: Option<&ToolSet>) {
    for (style, template) in [
        (BodyStyle::Minimal, None),
        (
            BodyStyle::Webui,
            Some("{tools_list} {trigger_signal} {other}"),
        ),
    ] {
        let payload = to_k2think(
            req,
            RewriteOptions {
                upstream_model: "K2-Think",
                stream: req.stream,
                style,
                tools,
                template,
            },
        );
        let v: Value = serde_json::from_slice(&payload.to_bytes()).expect("payload is JSON");
        assert!(v["messages"].is_array());
    }
}

fuzz_target!(|data: &[u8]| {
    let req = match ChatRequest::parse(data) {
        Ok(r) => r,
        Err(e) => {
            assert!((400..500).contains(&e.status), "status {}", e.status);
            let v: Value = serde_json::from_slice(&e.body()).expect("error body is JSON");
            assert!(v["error"]["message"].is_string());
            return;
        }
    };
    let tools = ToolSet::from_request(req.tools.as_deref(), req.tool_choice.as_ref())
        .ok()
        .flatten();
    rewrite(&req, tools.as_ref());
    // Tiny limits too, so that the size checks run.
    for max in [1 << 20, 8] {
        let mut r = req.clone();
        let limits = files::Limits {
            max_file_bytes: max,
            max_image_bytes: max,
        };
        match files::resolve(&mut r, limits) {
            Ok(()) => rewrite(&r, tools.as_ref()),
            Err(e) => {
                assert!((400..500).contains(&e.status), "status {}", e.status);
                assert!(e.param.starts_with("messages["), "param {}", e.param);
            }
        }
    }
});

//! Request parsing on every API surface (chat completions, Anthropic Messages, OpenAI
//! Responses): arbitrary bytes never panic; each parser gives a request or a 4xx error in its
//! surface's shape; a parsed request goes through the tool set, the K2Think rewrite and
//! file/image resolution without panicking, and its payload serializes to JSON.
//!
//! cargo +nightly fuzz run chat_request -- -max_total_time=60

#![no_main]

mod common;

use k2proxy::surface::chat::files;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Tiny limits too, so that the size checks run.
    for max in [1 << 20, 8] {
        common::check_request(
            data,
            files::Limits {
                max_file_bytes: max,
                max_image_bytes: max,
            },
        );
    }
});

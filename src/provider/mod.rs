//! The pure codecs of the web-chat upstreams beyond K2Think: for each, request signing,
//! body building, stream decoding and error classification, with no I/O and no clock.

pub mod zai;

//! k2proxy: an OpenAI-compatible edge proxy for the K2Think web chat, built on Pingora.
//!
//! Module map (design.md §2): `config` (YAML schema), `admin_guard` (the admin API's
//! cross-site, Host and forwarding checks), `openai` (downstream wire types),
//! `anthropic` (the Anthropic Messages surface), `responses` (the OpenAI Responses surface),
//! `fields` (reading hand-converted requests), `files` (reading operator-named files safely),
//! `k2think` (upstream wire types), `sse` (event stream codec), `transform` (pure request and
//! stream transforms), `pool` (token pool), `secret` (masked secrets), `probe` (the
//! upstream checks of `k2proxy probe`: judging and reports), `provider` (the pure codecs
//! of the other web-chat upstreams), `proxy` (the only module that
//! touches Pingora), `mock` (feature `mock` only: the mock upstreams, K2Think and Z.AI, used
//! by tests, benches and the `k2mock` binary; not in the production binary).

pub mod admin_guard;
pub mod anthropic;
pub mod config;
pub mod core;
pub mod fields;
pub mod files;
pub mod k2think;
pub mod limits;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
pub mod openai;
pub mod pool;
pub mod probe;
pub mod provider;
pub mod proxy;
pub mod responses;
pub mod secret;
pub mod sse;
pub mod tokens_file;
pub mod transform;
pub mod updater;

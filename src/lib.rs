//! k2proxy: an OpenAI-, Anthropic- and Responses-compatible edge proxy for web chats
//! (K2Think, Z.AI), built on Pingora.
//!
//! Module map (design.md §2: surfaces × providers around a neutral core):
//! `core` (the neutral request, events, `Decoder`/`Encoder` seams, the gateway error, ids,
//! JSON writers; a leaf), `surface` (the client APIs: `chat`, `messages`, `responses`, and
//! `fields` and `convert` for hand-converted requests), `pipeline` (the pure middle: stream, collect,
//! split, tool emulation, token estimates), `provider` (one folder per upstream:
//! `k2think`, `zai`), `sse` (event stream codec), `config` (YAML schema), `admin_guard`
//! (the admin API's cross-site, Host and forwarding checks), `files` (reading
//! operator-named files safely), `pool` (token pool), `limits` (client limits), `secret`
//! (masked secrets), `tokens_file`, `updater` (sign-in schedule), `fleet` (fleet mode: the shared pool on Redis), `metrics`, `access_log` (the log writer off the worker threads), `probe` (the
//! upstream checks of `k2proxy probe`), `proxy` (the only module that touches Pingora),
//! `mock` (feature `mock` only: the mock upstreams, K2Think and Z.AI, behind one harness,
//! used by tests, benches and the `k2mock` binary; not in the production binary).

pub mod access_log;
pub mod admin_guard;
pub mod config;
pub mod core;
pub mod files;
pub mod fleet;
pub mod limits;
pub mod metrics;
#[cfg(feature = "mock")]
pub mod mock;
pub mod pipeline;
pub mod pool;
pub mod probe;
pub mod provider;
pub mod proxy;
pub mod secret;
pub mod sse;
pub mod surface;
pub mod tokens_file;
pub mod updater;
pub mod values;

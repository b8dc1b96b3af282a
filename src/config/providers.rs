//! The `providers` section: the upstreams the proxy serves, each named, with its kind and
//! its own settings. The K2Think provider may also come from today's top-level `upstream`,
//! `pool` and `updater` keys (operators' files keep loading unchanged); it is then named
//! `k2think`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PoolSection, UpdaterSection, UpstreamSection};
pub use crate::provider::zai::settings::{
    CaptchaSection, CaptchaSourceKind, ChatCleanup, ZaiMode, ZaiSection,
};

/// The name the K2Think provider has when it comes from the top-level keys.
pub const K2THINK: &str = "k2think";

/// One entry of `providers`, by `kind`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProviderEntry {
    /// K2Think / K2 Horizon: the sections that are top-level keys in older files.
    K2think {
        #[serde(default)]
        upstream: Option<Box<UpstreamSection>>,
        #[serde(default)]
        pool: Option<Box<PoolSection>>,
        #[serde(default)]
        updater: Option<Box<UpdaterSection>>,
    },
    /// Z.AI (chat.z.ai, GLM).
    Zai(Box<ZaiSection>),
}

impl ProviderEntry {
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderEntry::K2think { .. } => "k2think",
            ProviderEntry::Zai(_) => "zai",
        }
    }
}

/// Named providers, in name order.
pub type Providers = BTreeMap<String, ProviderEntry>;

//! Unit tests of the config schema, validation and defaults.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.yaml")
}

#[test]
fn empty_file_gives_defaults_in_guest_mode() {
    let c = parse("# nothing here\n").unwrap();
    assert_eq!(c.server.listen, vec!["0.0.0.0:8080"]);
    assert_eq!(c.effective_mode(), UpstreamMode::Guest);
    assert_eq!(c.models.len(), 2);
    assert_eq!(c.retry.max_attempts, 3);
    assert_eq!(c.limits.max_body_bytes, ByteSize(10 * 1024 * 1024));
}

#[test]
fn shipped_config_is_valid_and_matches_the_defaults() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/k2proxy.yaml");
    let c = Config::load(&path).unwrap();
    let d = Config {
        models: default_models(&Config::default().upstream.base_url),
        ..Config::default()
    };
    assert_eq!(c, d, "conf/k2proxy.yaml must document exactly the defaults");
}

#[test]
fn unknown_key_is_named_with_its_path_and_location() {
    let e = parse("upstream:\n  base_url: http://127.0.0.1:1\n  moed: user\n").unwrap_err();
    assert_eq!(e.key, "upstream.moed");
    assert!(e.message.contains("unknown field `moed`"), "{e}");
    assert!(e.message.contains("line 3"), "{e}");
    let e = parse("serverr: {}\n").unwrap_err();
    assert_eq!(e.key, "serverr");
    assert!(e.message.contains("unknown field `serverr`"), "{e}");
    let e = parse("models:\n  - id: a\n    upstream: b\n    reasoningg: true\n").unwrap_err();
    assert_eq!(e.key, "models[0].reasoningg");
    assert!(
        e.to_string()
            .starts_with("test.yaml: models[0].reasoningg: unknown field `reasoningg`"),
        "{e}"
    );
}

#[test]
fn wrong_types_and_values_name_the_key() {
    let e = parse("upstream:\n  mode: usr\n").unwrap_err();
    assert_eq!(e.key, "upstream.mode");
    assert!(e.message.contains("unknown variant `usr`"), "{e}");
    let e = parse("retry:\n  max_attempts: lots\n").unwrap_err();
    assert_eq!(e.key, "retry.max_attempts");
    let e = parse("retry:\n  max_attempts: 0\n").unwrap_err();
    assert_eq!(e.key, "retry.max_attempts");
    let e = parse("upstream:\n  connect_timeout: 5 parsecs\n").unwrap_err();
    assert_eq!(e.key, "upstream.connect_timeout");
    let e = parse("server:\n  listen: [\"nowhere\"]\n").unwrap_err();
    assert_eq!(e.key, "server.listen[0]");
    let e = parse("upstream:\n  base_url: ftp://x\n").unwrap_err();
    assert_eq!(e.key, "upstream.base_url");
    let e = parse("retry:\n  on_status: [200]\n").unwrap_err();
    assert_eq!(e.key, "retry.on_status[0]");
    let e = parse("auth:\n  api_keys: [\"\"]\n").unwrap_err();
    assert_eq!(e.key, "auth.api_keys[0]");
    let e = parse("models:\n  - {id: a, upstream: x}\n  - {id: b, upstream: x, aliases: [a]}\n")
        .unwrap_err();
    assert_eq!(e.key, "models[1]");
    let e = parse("limits:\n  max_body_bytes: 12 parsecs\n").unwrap_err();
    assert_eq!(e.key, "limits.max_body_bytes");
    let e = parse("upstream:\n  content_delivery: sometimes\n").unwrap_err();
    assert_eq!(e.key, "upstream.content_delivery");
}

#[test]
fn content_delivery_defaults_to_cumulative_and_takes_each_reading() {
    use crate::provider::k2think::decode::ContentDelivery;
    assert_eq!(
        parse("").unwrap().upstream.content_delivery,
        ContentDelivery::Cumulative
    );
    for (name, want) in [
        ("cumulative", ContentDelivery::Cumulative),
        ("incremental", ContentDelivery::Incremental),
        ("auto", ContentDelivery::Auto),
    ] {
        let c = parse(&format!("upstream:\n  content_delivery: {name}\n")).unwrap();
        assert_eq!(c.upstream.content_delivery, want);
        assert_eq!(want.as_str(), name);
    }
}

#[test]
fn responses_hosted_tools_and_reasoning_summary() {
    let c = parse("").unwrap();
    assert_eq!(c.responses.hosted_tools, HostedTools::Drop);
    assert!(c.responses.reasoning_summary);
    let c = parse("responses:\n  hosted_tools: refuse\n  reasoning_summary: false\n").unwrap();
    assert_eq!(c.responses.hosted_tools, HostedTools::Refuse);
    assert!(!c.responses.reasoning_summary);
    let e = parse("responses:\n  hosted_tools: ignore\n").unwrap_err();
    assert_eq!(e.key, "responses.hosted_tools", "{e}");
}

#[test]
fn admin_allowed_hosts_are_bare_host_names() {
    let c = parse("admin:\n  allowed_hosts: [admin.example.com, Proxy-1.internal.]\n").unwrap();
    assert_eq!(
        c.admin.allowed_hosts,
        vec!["admin.example.com", "Proxy-1.internal."]
    );
    assert!(parse("server: {}\n")
        .unwrap()
        .admin
        .allowed_hosts
        .is_empty());
    for bad in [
        "https://admin.example.com",
        "admin.example.com:8443",
        "admin.example.com/admin",
        "",
        "two words",
        "a..b",
        "*.example.com",
    ] {
        let e = parse(&format!("admin:\n  allowed_hosts: [\"{bad}\"]\n")).unwrap_err();
        assert_eq!(e.key, "admin.allowed_hosts[0]", "{bad}");
        assert!(e.message.contains("host name"), "{e}");
    }
}

#[test]
fn durations_sizes_and_keys_parse() {
    let c = parse(
        "upstream:\n  connect_timeout: 250ms\n  header_timeout: 2m\n  idle_timeout: 45\n\
         limits:\n  max_body_bytes: 2MiB\n\
         auth:\n  api_keys:\n    - sk-plain\n    - {name: team-a, key: sk-a}\n",
    )
    .unwrap();
    assert_eq!(c.upstream.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.upstream.header_timeout, Duration::from_secs(120));
    assert_eq!(c.upstream.idle_timeout, Duration::from_secs(45));
    assert_eq!(c.limits.max_body_bytes, ByteSize(2 * 1024 * 1024));
    assert_eq!(c.auth.api_keys[0].key, "sk-plain");
    assert_eq!(c.auth.api_keys[1].name, "team-a");
}

#[test]
fn env_expansion_in_strings() {
    std::env::set_var("K2P_TEST_KEY", "sk-from-env");
    let c = parse(
        "auth:\n  api_keys: [\"${K2P_TEST_KEY}\"]\npool:\n  tokens: [\"${K2P_TEST_UNSET:-fallback}\"]\n",
    )
    .unwrap();
    assert_eq!(c.auth.api_keys[0].key, "sk-from-env");
    assert_eq!(c.pool.tokens, vec!["fallback"]);
    assert_eq!(c.effective_mode(), UpstreamMode::User);
    let e = parse("pool:\n  tokens: [\"${K2P_TEST_DEFINITELY_UNSET}\"]\n").unwrap_err();
    assert_eq!(e.key, "pool.tokens");
    assert!(e.message.contains("K2P_TEST_DEFINITELY_UNSET"), "{e}");
    assert_eq!(expand_env("a$${b}c").unwrap(), "a${b}c");
    assert!(expand_env("${unclosed").is_err());
}

#[test]
fn upstream_target_parsing() {
    let t = UpstreamTarget::parse("https://www.k2think.ai").unwrap();
    assert_eq!(
        (t.tls, t.port, t.authority.as_str()),
        (true, 443, "www.k2think.ai")
    );
    let t = UpstreamTarget::parse("http://127.0.0.1:9100/").unwrap();
    assert_eq!((t.tls, t.host.as_str(), t.port), (false, "127.0.0.1", 9100));
    assert_eq!(t.authority, "127.0.0.1:9100");
    let t = UpstreamTarget::parse("http://[::1]:81").unwrap();
    assert_eq!((t.host.as_str(), t.authority.as_str()), ("::1", "[::1]:81"));
    assert!(UpstreamTarget::parse("https://x/api").is_err());
    assert!(UpstreamTarget::parse("https://:80").is_err());
    assert!(UpstreamTarget::parse("http://h:99999").is_err());
}

#[test]
fn tokens_file_path_is_relative_to_the_config() {
    let dir = std::env::temp_dir().join(format!("k2p-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("c.yaml");
    std::fs::write(&file, "pool:\n  tokens_file: tokens.txt\n").unwrap();
    let c = Config::load(&file).unwrap();
    assert_eq!(
        c.pool.tokens_file.as_deref(),
        Some(dir.join("tokens.txt").display().to_string().as_str())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_default_catalogue_follows_the_host() {
    let c = parse("").unwrap();
    assert_eq!(c.upstream.base_url, "https://chat.ifm.ai");
    let ids: Vec<&str> = c.models.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["IFM/K2-Horizon", "IFM/K2-Horizon-nothink"]);
    assert!(c
        .models
        .iter()
        .all(|m| m.upstream == crate::provider::k2think::HORIZON_MODEL && !m.images));
    assert!(c.models[0]
        .aliases
        .iter()
        .any(|a| a == "MBZUAI-IFM/K2-Think-v2"));
    for old in ["https://www.k2think.ai", "https://k2think.ai/"] {
        let c = parse(&format!("upstream:\n  base_url: {old}\n")).unwrap();
        assert_eq!(c.models, legacy_models(), "{old}");
        assert!(c.models.iter().all(|m| m.images));
    }
    // A listed catalogue is taken as written; `images` defaults to true.
    let c = parse("models:\n  - {id: a, upstream: b}\n").unwrap();
    assert!(c.models[0].images);
}

#[test]
fn origin_and_referer_follow_the_base_url_unless_set() {
    let c = parse("upstream:\n  base_url: https://chat.ifm.ai/\n").unwrap();
    assert_eq!(c.upstream_origin(), "https://chat.ifm.ai");
    assert_eq!(c.upstream_referer(), "https://chat.ifm.ai/guest");
    let c = parse("upstream:\n  base_url: https://chat.ifm.ai\npool:\n  tokens: [t]\n").unwrap();
    assert_eq!(c.upstream_referer(), "https://chat.ifm.ai/");
    let c = parse(
        "upstream:\n  headers:\n    origin: https://o.example\n    referer: https://o.example/c/{chat_id}\n",
    )
    .unwrap();
    assert_eq!(c.upstream_origin(), "https://o.example");
    assert_eq!(c.upstream_referer(), "https://o.example/c/{chat_id}");
}

#[test]
fn thinking_field_effort_and_final_statuses_are_checked() {
    let c = parse("").unwrap();
    assert_eq!(c.upstream.thinking_field, "reasoning");
    assert_eq!(
        c.reasoning.effort,
        Some(crate::core::request::Effort::Medium)
    );
    assert_eq!(c.reasoning.effort_placement, EffortPlacement::ExtraBody);
    assert!(parse("upstream:\n  thinking_field: \"\"\n").is_ok());
    assert!(parse("upstream:\n  thinking_field: think_faster\n").is_ok());
    let e = parse("upstream:\n  thinking_field: thoughts\n").unwrap_err();
    assert_eq!(e.key, "upstream.thinking_field");
    let e = parse("reasoning:\n  effort: extreme\n").unwrap_err();
    assert_eq!(e.key, "reasoning.effort");
    let c = parse("reasoning:\n  effort: null\n  effort_placement: top_level\n").unwrap();
    assert_eq!(c.reasoning.effort, None);
    let e = parse("retry:\n  on_status: [429, 400]\n").unwrap_err();
    assert_eq!(e.key, "retry.on_status[1]");
}

#[test]
fn an_empty_or_comment_only_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("k2p-empty-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in [
        ("empty.yaml", ""),
        ("comments.yaml", "# server:\n#   listen: []\n\n"),
        ("null.yaml", "~\n"),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let e = Config::load(&path).unwrap_err();
        assert!(
            e.message.contains("empty or holds only comments"),
            "{name}: {e}"
        );
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{e}"
        );
    }
    let path = dir.join("defaults.yaml");
    std::fs::write(&path, "server: {}\n").unwrap();
    assert_eq!(
        Config::load(&path).unwrap().server.listen,
        vec!["0.0.0.0:8080"]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn only_regular_files_of_bounded_size_are_read() {
    // A FIFO would block a reader for good, /dev/zero would grow it without end: both are
    // opened without blocking and refused on the opened handle, before any read.
    let e = Config::load(Path::new("/dev/zero")).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{e}");
    let dir = std::env::temp_dir().join(format!("k2p-conf-kinds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.yaml");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if made.is_ok_and(|s| s.success()) {
        let e = Config::load(&fifo).unwrap_err();
        assert!(e.message.contains("not a regular file"), "{e}");
    }
    let e = Config::load(&dir).unwrap_err();
    assert!(e.message.contains("not a regular file"), "{e}");
    let big = dir.join("big.yaml");
    let mut text = String::from("server: {}\n");
    text.push_str(&"# padding\n".repeat(MAX_CONFIG_BYTES as usize / 10 + 1));
    std::fs::write(&big, text).unwrap();
    let e = Config::load(&big).unwrap_err();
    assert!(e.message.contains("larger than"), "{e}");
    let bad = dir.join("latin1.yaml");
    std::fs::write(&bad, b"server: {}\n# caf\xe9\n").unwrap();
    assert!(Config::load(&bad).unwrap_err().message.contains("UTF-8"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn dropping_every_key_on_reload_needs_the_file_to_say_so() {
    let doc = |t: &str| serde_yaml::from_str::<serde_yaml::Value>(t).unwrap();
    let running =
        parse("auth:\n  api_keys: [sk-a-key]\nadmin:\n  key: admin-key-0123456789\n").unwrap();
    // A file that lost its sections: refused, naming what to write instead.
    let text = "server: {}\n";
    let e = running
        .check_dropped_guards(&parse(text).unwrap(), &doc(text))
        .unwrap_err();
    assert!(e.contains("auth: {api_keys: []}"), "{e}");
    let text = "auth:\n  api_keys: [sk-a-key]\n";
    let e = running
        .check_dropped_guards(&parse(text).unwrap(), &doc(text))
        .unwrap_err();
    assert!(e.contains("admin: {key: null}"), "{e}");
    // Said explicitly: taken, and what it removes is reported.
    let text = "auth:\n  api_keys: []\nadmin:\n  key: null\n";
    let dropped = running
        .check_dropped_guards(&parse(text).unwrap(), &doc(text))
        .unwrap();
    assert_eq!(dropped.len(), 2, "{dropped:?}");
    // Keys kept or changed, or none to begin with: nothing to check.
    let text = "auth:\n  api_keys: [sk-other]\nadmin:\n  key: admin-key-9876543210\n";
    assert!(running
        .check_dropped_guards(&parse(text).unwrap(), &doc(text))
        .unwrap()
        .is_empty());
    let open = parse("server: {}\n").unwrap();
    assert!(open
        .check_dropped_guards(&open, &doc("server: {}\n"))
        .unwrap()
        .is_empty());
}

#[test]
fn errors_never_echo_string_values() {
    let e = parse("server:\n  threads: \"s3cr3t-value\"\n").unwrap_err();
    assert_eq!(e.key, "server.threads");
    assert!(!e.to_string().contains("s3cr3t"), "{e}");
    assert!(e.message.contains("a string of 12 characters"), "{e}");
    // A file that is no config at all (a symlink to /etc/passwd, say) is not echoed.
    let e = parse("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/sh\n").unwrap_err();
    assert!(!e.to_string().contains("root:x"), "{e}");
    assert_eq!(
        redact_strings(r#"invalid value: string "a\"b", expected x; string "" too"#),
        "invalid value: a string of 4 characters, expected x; a string of 0 characters too"
    );
    // Typos in names stay visible: they are what the operator needs to see.
    let e = parse("upstream:\n  mode: usr\n").unwrap_err();
    assert!(e.message.contains("unknown variant `usr`"), "{e}");
}

#[test]
fn alias_patterns_route_vendor_model_names_by_the_most_specific_match() {
    let models = default_models("https://chat.ifm.ai");
    let id = |name: &str| resolve_model(&models, name).map(|m| m.id.as_str());
    assert_eq!(id("IFM/K2-Horizon"), Some("IFM/K2-Horizon"));
    assert_eq!(id("K2-Think-nothink"), Some("IFM/K2-Horizon-nothink"));
    assert_eq!(id("claude-sonnet-4-5-20250929"), Some("IFM/K2-Horizon"));
    assert_eq!(id("claude-opus-4-1"), Some("IFM/K2-Horizon"));
    assert_eq!(
        id("claude-haiku-4-5-20251001"),
        Some("IFM/K2-Horizon-nothink")
    );
    assert_eq!(
        id("claude-3-5-haiku-latest"),
        Some("IFM/K2-Horizon-nothink")
    );
    assert_eq!(id("gpt-5.1-codex"), Some("IFM/K2-Horizon"));
    assert_eq!(id("gpt-4o-mini"), Some("IFM/K2-Horizon-nothink"));
    assert_eq!(id("o3"), Some("IFM/K2-Horizon"));
    assert_eq!(
        id("o4-mini"),
        Some("IFM/K2-Horizon"),
        "o4* is the only pattern"
    );
    assert_eq!(id("llama-3"), None);
    assert_eq!(id("claude"), None, "claude-* needs the dash");
    assert_eq!(id(""), None);
    // an exact alias that happens to contain a star is only a pattern
    let yaml = "models:\n  - {id: a, upstream: x, aliases: [\"x*y\"]}\n  - {id: b, upstream: x, aliases: [\"*\"]}\n";
    let c = parse(yaml).unwrap();
    let id = |name: &str| resolve_model(&c.models, name).map(|m| m.id.as_str());
    assert_eq!(id("x-and-y"), Some("a"), "more literal characters win");
    assert_eq!(id("anything"), Some("b"), "a lone star catches the rest");
    assert_eq!(id("xy"), Some("a"));
}

#[test]
fn glob_matching_backtracks_and_anchors_both_ends() {
    for (p, n, ok) in [
        ("a*b", "ab", true),
        ("a*b", "axxb", true),
        ("a*b", "axxbx", false),
        ("*haiku*", "claude-3-haiku", true),
        ("claude-*haiku*", "claude-haiku", true),
        ("claude-*haiku*", "claude-hai", false),
        ("claude-*haiku*", "claude--haiku", true),
        ("**", "", true),
        ("a*a*a", "aaaa", true),
        ("a*a*a", "aa", false),
        ("é*", "été", true),
    ] {
        assert_eq!(
            super::glob_match(p.as_bytes(), n.as_bytes()),
            ok,
            "{p} ~ {n}"
        );
    }
}

#[test]
fn an_old_config_is_the_k2think_provider() {
    let c = parse("upstream:\n  base_url: http://127.0.0.1:9\npool:\n  tokens: [a]\n").unwrap();
    assert_eq!(c.k2think_name(), "k2think");
    assert!(c.providers.is_empty());
    for m in &c.models {
        assert_eq!(c.model_provider(m), "k2think");
        assert_eq!(c.provider_kind(c.model_provider(m)), Some("k2think"));
    }
}

#[test]
fn a_k2think_entry_under_providers_reads_like_the_top_level_keys() {
    let nested = parse(
        "providers:\n  horizon:\n    kind: k2think\n    upstream:\n      base_url: http://127.0.0.1:9\n    pool:\n      tokens: [a]\n",
    )
    .unwrap();
    let flat = parse("upstream:\n  base_url: http://127.0.0.1:9\npool:\n  tokens: [a]\n").unwrap();
    assert_eq!(nested.upstream, flat.upstream);
    assert_eq!(nested.pool, flat.pool);
    assert_eq!(nested.k2think_name(), "horizon");
    assert_eq!(nested.model_provider(&nested.models[0]), "horizon");

    let e = parse(
        "upstream:\n  base_url: http://127.0.0.1:9\nproviders:\n  k2:\n    kind: k2think\n    upstream:\n      base_url: http://127.0.0.1:8\n",
    )
    .unwrap_err();
    assert_eq!(e.key, "providers.k2.upstream");
    let e = parse("providers:\n  a: {kind: k2think}\n  b: {kind: k2think}\n").unwrap_err();
    assert_eq!(e.key, "providers.b");
}

#[test]
fn a_zai_provider_brings_its_catalogue_and_models_name_real_providers() {
    let c = parse("providers:\n  zai:\n    kind: zai\n").unwrap();
    let glm: Vec<_> = c.models.iter().filter(|m| m.provider == "zai").collect();
    assert!(glm
        .iter()
        .any(|m| m.id == "GLM-4.7" && m.upstream == "glm-4.7"));
    assert!(glm.iter().any(|m| m.id == "GLM-4.6V" && m.images));
    assert_eq!(c.provider_kind("zai"), Some("zai"));
    // K2Think's defaults stay.
    assert!(c.models.iter().any(|m| c.model_provider(m) == "k2think"));

    let e = parse("models:\n  - {id: a, upstream: b, provider: nowhere}\n").unwrap_err();
    assert_eq!(e.key, "models[0].provider");
    assert!(e.message.contains("no provider is named `nowhere`"), "{e}");

    // A provider some model names does not add its catalogue.
    let c = parse(
        "providers:\n  zai: {kind: zai}\nmodels:\n  - {id: glm, upstream: glm-4.7, provider: zai}\n",
    )
    .unwrap();
    assert_eq!(c.models.len(), 1);
}

#[test]
fn zai_settings_are_checked_with_their_key() {
    for (yaml, key) in [
        ("captcha: {source: fixed}", "providers.zai.captcha.value"),
        (
            "captcha: {source: command}",
            "providers.zai.captcha.command",
        ),
        (
            "captcha: {source: http, url: 'ftp://x'}",
            "providers.zai.captcha.url",
        ),
        ("mode: user", "providers.zai.tokens"),
        ("mode: guest\n    guests: 0", "providers.zai.guests"),
        ("base_url: nowhere", "providers.zai.base_url"),
        ("max_attempts: 0", "providers.zai.max_attempts"),
        ("tokens: ['a b']", "providers.zai.tokens[0]"),
    ] {
        let e = parse(&format!("providers:\n  zai:\n    kind: zai\n    {yaml}\n")).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
    }
    let e = parse("providers:\n  zai:\n    kind: zai\n    guestz: 3\n").unwrap_err();
    assert!(e.message.contains("unknown field `guestz`"), "{e}");
}

#[test]
fn a_fleet_section_is_read_checked_with_its_key_and_needs_a_restart_to_change_its_link() {
    assert_eq!(parse("").unwrap().fleet, None);
    std::env::set_var("K2P_TEST_REDIS_PW", "pw-123");
    let c = parse(
        "fleet:\n  name: prod\n  redis_url: unix:///run/redis.sock\n  password: ${K2P_TEST_REDIS_PW}\n  command_timeout: 20ms\n  on_redis_error: closed\n",
    )
    .unwrap();
    let f = c.fleet.clone().unwrap();
    assert_eq!(f.name, "prod");
    assert_eq!(f.password.as_deref(), Some("pw-123"));
    assert_eq!(f.command_timeout, Duration::from_millis(20));
    assert_eq!(f.on_redis_error, fleet::OnRedisError::Closed);
    assert_eq!(f.resync_interval, Duration::from_secs(10));
    for (yaml, key) in [
        ("name: prod", "fleet.redis_url"),
        ("redis_url: http://h", "fleet.redis_url"),
        ("redis_url: redis://h\n  name: 'a b'", "fleet.name"),
        (
            "redis_url: redis://h\n  instance_id: 'a:b'",
            "fleet.instance_id",
        ),
        ("redis_url: redis://h\n  lease_ttl: 1s", "fleet.lease_ttl"),
        (
            "redis_url: redis://h\n  command_timeout: 0s",
            "fleet.command_timeout",
        ),
    ] {
        let e = parse(&format!("fleet:\n  {yaml}\n")).unwrap_err();
        assert_eq!(e.key, key, "{yaml}: {e}");
    }
    // A URL's password never shows in an error.
    let e = parse("fleet:\n  redis_url: ftp://u:secret@h\n").unwrap_err();
    assert!(!e.message.contains("secret"), "{e}");
    // The link's settings need a restart; its timings apply on reload.
    let mut d = c.clone();
    if let Some(f) = &mut d.fleet {
        f.redis_url = "redis://other:6379".into();
        f.resync_interval = Duration::from_secs(3);
    }
    let changes = diff::diff(&c, &d);
    assert_eq!(changes.need_restart, ["fleet.redis_url"]);
    assert!(changes
        .changed
        .contains(&"fleet.resync_interval".to_string()));
    let none = parse("").unwrap();
    assert_eq!(diff::diff(&none, &c).need_restart, ["fleet"]);
}

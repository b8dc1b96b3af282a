//! Fleet mode against a real `redis-server` (issue 19): several proxy instances, one mock
//! upstream, one Redis. A token's state set on one instance reaches the others; Redis
//! trouble never fails a client request, and the state converges when Redis is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::redis::RedisServer;
use common::{chat_body, runtime, start_mock, within, Env};
use k2proxy::config::fleet::FleetSection;
use k2proxy::mock::{MockConfig, MockServer};
use serde_json::Value;

const GOOD: &str = "tok-good-a";
const LIMITED: &str = "tok-b;fault=429;retry_after=30";

struct Fleet {
    redis: RedisServer,
    instances: Vec<Env>,
    mock: MockServer,
    _rt: tokio::runtime::Runtime,
}

impl Fleet {
    /// Wait until every instance shares state through Redis.
    fn all_shared(&self) {
        for env in &self.instances {
            within(Duration::from_secs(10), "shared mode", || shared(env));
        }
    }
}

fn fleet(tag: &str, n: usize, edit: impl Fn(&mut k2proxy::config::Config)) -> Fleet {
    let redis = RedisServer::start(tag);
    let rt = runtime();
    let cfg = MockConfig::default();
    let legacy = !cfg
        .models
        .iter()
        .any(|m| m == k2proxy::provider::k2think::HORIZON_MODEL);
    let mock = start_mock(&rt, cfg);
    let instances = (0..n)
        .map(|i| {
            Env::start_with(runtime(), |c| {
                c.upstream.base_url = mock.base_url();
                if legacy {
                    c.models = k2proxy::config::legacy_models();
                }
                c.pool.tokens = common::tokens(&[GOOD, LIMITED]);
                c.pool.max_failures = 5;
                c.fleet = Some(redis.fleet(&format!("test-{tag}"), &format!("i{i}")));
                edit(c);
            })
        })
        .collect();
    Fleet {
        redis,
        instances,
        mock,
        _rt: rt,
    }
}

fn model(env: &Env) -> String {
    env.get("/v1/models").json()["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The state of the pool's `i`-th token on `env`.
fn state(env: &Env, i: usize) -> String {
    env.get("/admin/tokens/stats").json()["data"]["tokens"][i]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn fleet_view(env: &Env) -> Value {
    env.get("/admin/fleet").json()["data"].clone()
}

fn shared(env: &Env) -> bool {
    fleet_view(env)["mode"] == "shared"
}

/// A chat request to `env` that runs on the test's runtime (to hold one open meanwhile).
fn send_chat(
    env: &Env,
    body: &Value,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> {
    env.client
        .post(env.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
}

/// Send requests on `env` until its pool has leased the 429 token once.
fn hit_the_limited_token(env: &Env, model: &str) {
    within(
        Duration::from_secs(10),
        "a 429 on the limited token",
        || {
            let r = env.chat(&chat_body(model, "hi", false));
            assert_eq!(r.status, 200, "{}", r.text());
            state(env, 1) == "cooling"
        },
    );
}

#[test]
fn a_429_on_one_instance_cools_the_token_on_all_and_operator_actions_reach_every_instance() {
    let f = fleet("share", 3, |_| {});
    let [a, b, c] = [&f.instances[0], &f.instances[1], &f.instances[2]];
    let m = model(a);
    f.all_shared();

    // A 429 on A: B and C stop using the token within a second.
    hit_the_limited_token(a, &m);
    for env in [b, c] {
        within(Duration::from_secs(1), "the cooldown on the others", || {
            state(env, 1) == "cooling"
        });
    }
    // ...and no request of theirs reaches the upstream with it meanwhile.
    let before = f.mock.requests().len();
    for env in [b, c] {
        for _ in 0..4 {
            assert_eq!(env.chat(&chat_body(&m, "x", false)).status, 200);
        }
    }
    let limited_after = f.mock.requests()[before..]
        .iter()
        .filter(|r| r.bearer.as_deref().is_some_and(|t| t.contains("fault=429")))
        .count();
    assert_eq!(limited_after, 0, "B and C used the cooling token");

    // An operator's reset on B reaches A and C; a disable on C reaches A and B.
    let r = b.post("/admin/tokens/reset/1", "");
    assert_eq!(r.status, 200, "{}", r.text());
    for env in [a, c] {
        within(Duration::from_secs(1), "the reset on the others", || {
            state(env, 1) == "active"
        });
    }
    let r = c.post("/admin/tokens/disable/0", "");
    assert_eq!(r.status, 200, "{}", r.text());
    for env in [a, b] {
        within(Duration::from_secs(1), "the disable on the others", || {
            state(env, 0) == "disabled"
        });
    }

    // Every instance sees the fleet: three live instances, no config drift.
    within(
        Duration::from_secs(3),
        "three instances in the view",
        || fleet_view(a)["instances"].as_array().map_or(0, Vec::len) == 3,
    );
    let view = fleet_view(a);
    for i in view["instances"].as_array().unwrap() {
        assert_eq!(i["drift"], false, "{view}");
        assert_eq!(i["mode"], "shared", "{view}");
    }
}

#[test]
fn redis_killed_restarted_empty_or_frozen_fails_no_request_and_the_state_converges() {
    let mut f = fleet("faults", 2, |_| {});
    let (a, b) = (&f.instances[0], &f.instances[1]);
    let m = model(a);
    f.all_shared();

    // Killed under load (four clients on the two instances, streamed and not): every
    // request still succeeds, and both instances go local.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let redis = &mut f.redis;
    let statuses: Vec<Vec<u16>> = std::thread::scope(|scope| {
        let clients: Vec<_> = (0..4)
            .map(|i| {
                let (env, stop, m) = (if i % 2 == 0 { a } else { b }, &stop, &m);
                scope.spawn(move || {
                    let mut seen = Vec::new();
                    let mut n = 0;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = env.chat(&chat_body(m, "under load", n % 2 == 0));
                        seen.push(r.status);
                        n += 1;
                    }
                    seen
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        redis.kill();
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        clients.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let all: Vec<u16> = statuses.into_iter().flatten().collect();
    assert!(all.len() >= 20, "only {} requests under load", all.len());
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
    for env in [a, b] {
        within(Duration::from_secs(10), "local mode", || {
            fleet_view(env)["mode"] == "local"
        });
    }
    // A cooldown set while Redis is away...
    hit_the_limited_token(a, &m);

    // ...reaches B once Redis is back, even empty.
    f.redis.restart();
    for env in [a, b] {
        within(Duration::from_secs(10), "shared mode again", || shared(env));
    }
    within(Duration::from_secs(5), "the outage's cooldown on B", || {
        state(b, 1) == "cooling"
    });

    // Frozen: requests stay served; thawed, the link comes back.
    f.redis.freeze();
    for i in 0..10 {
        let env = if i % 2 == 0 { a } else { b };
        let r = env.chat(&chat_body(&m, "while frozen", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    f.redis.thaw();
    for env in [a, b] {
        within(Duration::from_secs(10), "shared after the thaw", || {
            shared(env)
        });
    }
}

#[test]
fn an_instance_starts_and_serves_with_redis_unreachable() {
    let mut f = fleet("absent", 1, |c| {
        if let Some(fl) = &mut c.fleet {
            fl.redis_url = "unix:///nonexistent/k2proxy-test.sock".to_string();
        }
    });
    let a = &f.instances[0];
    let m = model(a);
    for _ in 0..5 {
        let r = a.chat(&chat_body(&m, "no redis", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(fleet_view(a)["mode"], "local");
    f.redis.kill();
}

#[test]
fn without_a_fleet_section_nothing_is_shared() {
    let env = Env::start(MockConfig::default(), |c| {
        c.pool.tokens = common::tokens(&[GOOD, LIMITED]);
    });
    assert_eq!(env.get("/admin/fleet").json()["data"]["enabled"], false);
    // A 429 cools the token here, and nothing is queued for a fleet.
    hit_the_limited_token(&env, &model(&env));
    assert_eq!(env.app.pool().take_shared(), (vec![], 0));
}

/// The `change` script's rules, run in a real Redis with the clock given (`now_ms`), read
/// back with `HGET`: the same rules as `pool.rs`.
#[test]
fn the_change_script_applies_the_pool_rules_with_the_fleet_clock() {
    let redis = RedisServer::start("script");
    let keys = k2proxy::fleet::record::Keys::new("rules");
    let (tok, meta) = (keys.tokens(), keys.meta());
    // One `change` call; `rec` is the record a `put` carries (empty otherwise); the
    // failures-in-a-row threshold is 4 and the pool holds 3 tokens.
    let change = |tid: &str, kind: &str, retry_ms: i64, now: u64, rec: &str| -> String {
        let (retry, now) = (retry_ms.to_string(), now.to_string());
        let mut args = vec![
            "EVAL",
            k2proxy::fleet::scripts::CHANGE,
            "2",
            &tok,
            &meta,
            tid,
            kind,
            &retry,
            "3",    // max_failures
            "1000", // cooldown ms
            "5000", // max_cooldown ms
            "test",
            "chan",
            &now,
        ];
        args.extend([rec, "4", "3"]);
        redis.command(&args).expect("EVAL answered")
    };
    let run = |tid: &str, kind: &str, retry_ms: i64, now: u64| change(tid, kind, retry_ms, now, "");
    let record = |tid: &str| {
        let raw = redis.command(&["HGET", &tok, tid]).unwrap();
        let text = raw.lines().nth(1).unwrap_or("").to_string();
        k2proxy::fleet::record::decode(&text)
    };
    let t0 = 1_800_000_000_000u64;

    // Strikes add up across reports and disable at max_failures.
    run("t1", "strike", -1, t0);
    run("t1", "strike", -1, t0);
    assert!(!record("t1").unwrap().0.disabled);
    run("t1", "strike", -1, t0);
    let (s, v) = record("t1").unwrap();
    assert_eq!((s.strikes, s.disabled, v), (3, true, 3));
    // A success on a clean token writes nothing; on a struck one it clears strikes.
    run("t2", "success", -1, t0);
    assert!(record("t2").is_none());
    run("t2", "strike", -1, t0);
    run("t2", "success", -1, t0);
    assert_eq!(record("t2").unwrap().0.strikes, 0);

    // 429s: Retry-After when given; else cooldown doubling per streak, capped.
    run("t3", "ratelimit", 7000, t0);
    assert_eq!(record("t3").unwrap().0.cool_until_ms, t0 + 7000);
    run("t4", "ratelimit", -1, t0);
    assert_eq!(record("t4").unwrap().0.cool_until_ms, t0 + 1000);
    run("t4", "ratelimit", -1, t0);
    assert_eq!(record("t4").unwrap().0.cool_until_ms, t0 + 2000);
    for _ in 0..5 {
        run("t4", "ratelimit", -1, t0);
    }
    let (s, _) = record("t4").unwrap();
    assert_eq!((s.cool_until_ms, s.streak), (t0 + 5000, 7));
    // A later, shorter cooldown never shortens the fleet's.
    run("t3", "ratelimit", 10, t0 + 100);
    assert_eq!(record("t3").unwrap().0.cool_until_ms, t0 + 7000);

    // An instance's own state after Redis lost it is merged in, never weakening the record.
    let put = |tid: &str, rec: &str| change(tid, "put", -1, t0, rec);
    put("t6", &format!("1,0,{},2,0", t0 + 9000));
    let (s, _) = record("t6").unwrap();
    assert_eq!((s.strikes, s.cool_until_ms, s.streak), (1, t0 + 9000, 2));
    put("t6", &format!("0,0,{},0,0", t0 + 10));
    assert_eq!(record("t6").unwrap().0.cool_until_ms, t0 + 9000);

    // Every strike and 429 above counted in the fleet's failures in a row: 13 of them, a
    // refresh asked at 4, 8 and 12, so 1 stands; a success does not touch it,
    // `clear_consec` does.
    let consec = || {
        let raw = redis.command(&["HGET", &meta, "consec"]).unwrap();
        raw.lines().nth(1).unwrap_or("").parse::<u32>().unwrap_or(0)
    };
    assert_eq!(consec(), 1);
    run("*", "clear_consec", -1, t0);
    run("t7", "strike", -1, t0);
    run("t7", "ratelimit", -1, t0);
    run("t7", "success", -1, t0);
    assert_eq!(consec(), 2);
    run("*", "clear_consec", -1, t0);
    assert_eq!(consec(), 0);
    for _ in 0..3 {
        run("t7", "strike", -1, t0);
    }
    assert_eq!(consec(), 3);
    // The fourth reaches the threshold: back to 0 (and `* refresh` published).
    run("t7", "strike", -1, t0);
    assert_eq!(consec(), 0);

    // Operator actions: reset one, disable one, reset all.
    run("t1", "reset", -1, t0);
    assert_eq!(record("t1").unwrap().0, Default::default());
    run("t5", "disable", -1, t0);
    assert!(record("t5").unwrap().0.disabled);
    run("*", "reset_all", -1, t0);
    assert!(record("t5").is_none() && record("t4").is_none());
}

/// The README's ACL user (keys and channels under `k2:` only) is all an instance needs,
/// with its password from the environment.
#[test]
fn an_acl_user_limited_to_the_fleet_keys_is_enough() {
    std::env::set_var("K2P_FLEET_TEST_PW", "fleet-pw-0123456789");
    let f = fleet("acl", 2, |c| {
        if let Some(fl) = &mut c.fleet {
            fl.username = Some("k2proxy".into());
            fl.password = Some(k2proxy::config::expand_env("${K2P_FLEET_TEST_PW}").unwrap());
        }
    });
    let acl = f.redis.command(&[
        "ACL",
        "SETUSER",
        "k2proxy",
        "on",
        ">fleet-pw-0123456789",
        "~k2:*",
        "&k2:*",
        "+@read",
        "+@write",
        "+@scripting",
        "+@pubsub",
        "+ping",
        "+time",
    ]);
    assert!(
        acl.as_deref().is_some_and(|r| r.starts_with("+OK")),
        "{acl:?}"
    );
    let (a, b) = (&f.instances[0], &f.instances[1]);
    for env in [a, b] {
        within(
            Duration::from_secs(10),
            "shared mode as the ACL user",
            || shared(env),
        );
    }
    hit_the_limited_token(a, &model(a));
    within(Duration::from_secs(1), "the cooldown on B", || {
        state(b, 1) == "cooling"
    });
}

/// The `admit` script with the clock given: concurrency leases that expire (a crashed
/// instance's slots free themselves after the lease TTL) and a GCRA rate with its burst
/// and exact Retry-After.
#[test]
fn the_admit_script_counts_leases_that_expire_and_a_rate_with_its_burst() {
    let redis = RedisServer::start("admit");
    let keys = k2proxy::fleet::record::Keys::new("limits");
    let admit = |kid: &str, rate: &str, burst: &str, conc: &str, lease: &str, now: u64| {
        let reply = redis
            .command(&[
                "EVAL",
                k2proxy::fleet::scripts::ADMIT,
                "2",
                &keys.rate(kid),
                &keys.leases(kid),
                rate,
                burst,
                conc,
                "3000", // lease TTL ms
                lease,
                &now.to_string(),
            ])
            .expect("EVAL answered");
        // *3\r\n:1\r\n$0\r\n\r\n:0\r\n  or  *3\r\n:0\r\n$4\r\nrate\r\n:1000\r\n
        let lines: Vec<&str> = reply.lines().collect();
        let ok = lines.get(1) == Some(&":1");
        let retry: i64 = lines
            .last()
            .and_then(|l| l.trim_start_matches(':').parse().ok())
            .unwrap_or(-1);
        (ok, retry, reply)
    };
    let t0 = 1_800_000_000_000u64;
    // Concurrency 2: two leases from two instances, the third refused...
    assert!(admit("k1", "0", "1", "2", "a:1", t0).0);
    assert!(admit("k1", "0", "1", "2", "b:1", t0).0);
    let (ok, _, reply) = admit("k1", "0", "1", "2", "a:2", t0 + 10);
    assert!(!ok && reply.contains("concurrency"), "{reply}");
    // ...one given back frees a slot at once...
    redis.command(&["ZREM", &keys.leases("k1"), "b:1"]).unwrap();
    assert!(admit("k1", "0", "1", "2", "a:3", t0 + 20).0);
    // ...and those of an instance that died free themselves after the lease TTL.
    assert!(!admit("k1", "0", "1", "2", "a:4", t0 + 2_000).0);
    assert!(admit("k1", "0", "1", "2", "a:5", t0 + 3_100).0);

    // Rate 1/s with a burst of 2: two at once, the third told to come back in 1 s.
    assert!(admit("k2", "1", "2", "0", "x", t0).0);
    assert!(admit("k2", "1", "2", "0", "x", t0).0);
    let (ok, retry, _) = admit("k2", "1", "2", "0", "x", t0);
    assert!(!ok);
    assert_eq!(retry, 1000);
    let (ok, retry, _) = admit("k2", "1", "2", "0", "x", t0 + 400);
    assert!(!ok);
    assert_eq!(retry, 600);
    assert!(admit("k2", "1", "2", "0", "x", t0 + 1000).0);
    assert!(!admit("k2", "1", "2", "0", "x", t0 + 1000).0);
}

/// `limits.per_key` holds across instances: the fleet admits what one instance would.
#[test]
fn per_key_limits_hold_across_instances() {
    let f = fleet("limits", 2, |c| {
        c.limits.per_key.concurrency = 2;
    });
    let (a, b) = (&f.instances[0], &f.instances[1]);
    let m = model(a);
    f.all_shared();
    let rt = runtime();
    rt.block_on(async {
        // One request held upstream on each instance: the key's two slots.
        let held: Vec<_> = [a, b]
            .iter()
            .map(|env| {
                let body = chat_body(&m, "hold [[mock: gate=g1; gate_after=1]]", true);
                tokio::spawn(send_chat(env, &body))
            })
            .collect();
        for _ in 0..300 {
            if f.mock.requests().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.mock.requests().len(), 2);
        // A third on either instance is refused, with Retry-After.
        for env in [a, b] {
            let r = send_chat(env, &chat_body(&m, "third", false))
                .await
                .unwrap();
            assert_eq!(r.status(), 429);
            assert_eq!(r.headers()["retry-after"], "1");
        }
        f.mock.open_gate("g1");
        for h in held {
            assert_eq!(h.await.unwrap().unwrap().status(), 200);
        }
    });
    // Both slots come back (the releases reach Redis in the background, within a flush).
    for env in [a, b] {
        within(Duration::from_secs(3), "the slots given back", || {
            env.chat(&chat_body(&m, "after", false)).status == 200
        });
    }
}

/// `POST /admin/fleet/reload` on one instance makes every instance re-read its own file.
#[test]
fn a_fleet_reload_reaches_every_instance() {
    let f = fleet("reload", 2, |_| {});
    let (a, b) = (&f.instances[0], &f.instances[1]);
    f.all_shared();
    let r = a.post("/admin/fleet/reload", "");
    assert_eq!(r.status, 200, "{}", r.text());
    for env in [a, b] {
        within(
            Duration::from_secs(3),
            "a reload asked by the fleet",
            || env.get("/admin/config/status").json()["data"]["last_attempt"]["trigger"] == "fleet",
        );
    }
    // Without a fleet section the route says what to use instead.
    let alone = Env::start(MockConfig::default(), |_| {});
    let r = alone.post("/admin/fleet/reload", "");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("/admin/config/reload"), "{}", r.text());
}

/// Two instances with the same accounts: one sign-in per account reaches the upstream, and
/// both pools use its token.
#[test]
fn one_sign_in_per_account_for_the_whole_fleet() {
    let redis = RedisServer::start("signin");
    let rt = runtime();
    let accounts = [("a@x.io", "pw-a"), ("b@x.io", "pw-b")];
    let mock = start_mock(
        &rt,
        MockConfig {
            accounts: accounts
                .iter()
                .map(|(e, p)| k2proxy::mock::Account::new(e, p))
                .collect(),
            strict_tokens: true,
            token_ttl: Duration::from_secs(3600),
            ..MockConfig::default()
        },
    );
    let dir = common::temp_dir("fleet-signin");
    let lines: String = accounts
        .iter()
        .map(|(e, p)| format!("{}\n", serde_json::json!({"email": e, "k2_password": p})))
        .collect();
    std::fs::write(dir.join("accounts.jsonl"), lines).unwrap();
    let instances: Vec<Env> = (0..2)
        .map(|i| {
            Env::start_with(runtime(), |c| {
                c.upstream.base_url = mock.base_url();
                c.models = k2proxy::config::legacy_models();
                c.updater.accounts_file = Some(dir.join("accounts.jsonl").display().to_string());
                c.pool.tokens_file =
                    Some(dir.join(format!("tokens-{i}.txt")).display().to_string());
                c.fleet = Some(FleetSection {
                    // The account tokens go to Redis sealed.
                    secret: Some("signin-fleet-secret-0001".into()),
                    ..redis.fleet("signin", &format!("s{i}"))
                });
            })
        })
        .collect();
    let holds = |env: &Env| {
        let s = env.get("/admin/tokens/stats").json()["data"].clone();
        s["tokens"]
            .as_array()
            .map(|t| t.iter().filter(|t| t["source"] == "account").count())
            .unwrap_or(0)
    };
    for env in &instances {
        within(Duration::from_secs(15), "both accounts' tokens", || {
            holds(env) == 2
        });
    }
    assert_eq!(mock.signins("a@x.io"), 1, "one sign-in for a@x.io");
    let aid = k2proxy::fleet::signin::account_id("a@x.io");
    let raw = redis
        .command(&[
            "HGET",
            &k2proxy::fleet::record::Keys::new("signin").account(&aid),
            "token",
        ])
        .unwrap();
    assert!(raw.contains("s1:") && !raw.contains("eyJhbGci"), "{raw}");
    assert_eq!(mock.signins("b@x.io"), 1, "one sign-in for b@x.io");
    // The strict mock takes only the tokens it issued: both instances answer with them.
    let m = model(&instances[0]);
    for env in &instances {
        let r = env.chat(&chat_body(&m, "signed in", false));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each instance saved the token in its own tokens file (its cache without Redis).
    for i in 0..2 {
        let saved = std::fs::read_to_string(dir.join(format!("tokens-{i}.txt"))).unwrap();
        assert!(
            saved.contains("a@x.io") && saved.contains("b@x.io"),
            "{saved}"
        );
    }
}

/// Failures in a row are counted for the fleet: two instances' failures add up to the
/// threshold, which refreshes the accounts once for the whole fleet; an operator's reset of
/// the count on one instance reaches the other.
#[test]
fn failures_in_a_row_add_up_across_the_fleet_and_refresh_once() {
    let redis = RedisServer::start("consec");
    let rt = runtime();
    let mock = start_mock(
        &rt,
        MockConfig {
            accounts: vec![k2proxy::mock::Account::new("a@x.io", "pw-a")],
            token_ttl: Duration::from_secs(3600),
            ..MockConfig::default()
        },
    );
    let dir = common::temp_dir("fleet-consec");
    std::fs::write(
        dir.join("accounts.jsonl"),
        "{\"email\":\"a@x.io\",\"k2_password\":\"pw-a\"}\n",
    )
    .unwrap();
    let instances: Vec<Env> = (0..2)
        .map(|i| {
            Env::start_with(runtime(), |c| {
                c.upstream.base_url = mock.base_url();
                c.models = k2proxy::config::legacy_models();
                c.pool.tokens = common::tokens(&["t1;fault=500", "t2;fault=500"]);
                c.pool.max_failures = 50;
                c.pool.consecutive_failures = 4;
                c.updater.accounts_file = Some(dir.join("accounts.jsonl").display().to_string());
                c.fleet = Some(redis.fleet("consec", &format!("c{i}")));
            })
        })
        .collect();
    let [a, b] = [&instances[0], &instances[1]];
    let count = |env: &Env| {
        env.get("/admin/tokens/consecutive-failures").json()["data"]["consecutive_failures"]
            .as_u64()
            .unwrap()
    };
    let account_index = |env: &Env| {
        let s = env.get("/admin/tokens/stats").json()["data"].clone();
        s["tokens"]
            .as_array()
            .and_then(|t| t.iter().position(|t| t["source"] == "account"))
    };
    for env in [a, b] {
        within(Duration::from_secs(15), "the account's token", || {
            account_index(env).is_some() && shared(env)
        });
    }
    assert_eq!(mock.signins("a@x.io"), 1);
    // Only the failing tokens are left (the account's disabled on A, so on B too): every
    // request fails twice and succeeds never.
    let i = account_index(a).unwrap();
    assert_eq!(
        a.post(&format!("/admin/tokens/disable/{i}"), "").status,
        200
    );
    within(Duration::from_secs(1), "the disable on B", || {
        state(b, account_index(b).unwrap()) == "disabled"
    });
    let m = model(a);
    let fail_once = |env: &Env| {
        let r = env.chat(&chat_body(&m, "x", false));
        assert_ne!(r.status, 200, "{}", r.text());
    };
    fail_once(a);
    within(
        Duration::from_secs(1),
        "A's two failures counted on B",
        || count(b) == 2,
    );
    // An operator's reset on B reaches A.
    assert_eq!(b.post("/admin/tokens/reset-consecutive", "").status, 200);
    within(Duration::from_secs(1), "the reset on A", || count(a) == 0);
    // Two on A and two on B reach the threshold of 4: the count starts again everywhere,
    // and the account is signed in once more, once for the fleet.
    fail_once(a);
    within(Duration::from_secs(1), "A's failures on B", || {
        count(b) == 2
    });
    fail_once(b);
    within(Duration::from_secs(5), "a refresh for the fleet", || {
        mock.signins("a@x.io") == 2
    });
    for env in [a, b] {
        within(Duration::from_secs(1), "the count back to 0", || {
            count(env) == 0
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        mock.signins("a@x.io"),
        2,
        "one sign-in for the fleet's refresh"
    );
}

/// A token an operator adds or removes on one instance is added or removed on every
/// instance (and saved in each one's tokens file), and one that was removed does not come
/// back through a resync.
#[test]
fn tokens_added_or_removed_through_the_admin_api_reach_every_instance() {
    let dir = common::temp_dir("fleet-tokens");
    let f = fleet("tokens", 2, |c| {
        let port = c.server.listen[0].clone();
        let port = port.rsplit(':').next().unwrap().to_string();
        c.pool.tokens_file = Some(dir.join(format!("tokens-{port}.txt")).display().to_string());
    });
    let (a, b) = (&f.instances[0], &f.instances[1]);
    f.all_shared();
    let count = |env: &Env| {
        env.get("/admin/tokens/stats").json()["data"]["tokens"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let r = a.post(
        "/admin/tokens",
        serde_json::json!({"token": "tok-added-by-an-operator"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    within(Duration::from_secs(2), "the added token on B", || {
        count(b) == 3
    });
    within(Duration::from_secs(2), "B's tokens file", || {
        std::fs::read_dir(&dir).unwrap().flatten().any(|e| {
            e.file_name() != format!("tokens-{}.txt", a.port).as_str()
                && std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains("tok-added-by-an-operator")
        })
    });
    // Removed on B (it is the pool's third token there too): gone from A, and a resync
    // (every second here) does not bring it back.
    let r = b.delete("/admin/tokens/2");
    assert_eq!(r.status, 200, "{}", r.text());
    within(Duration::from_secs(2), "the removal on A", || count(a) == 2);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(a), 2);
    assert_eq!(count(b), 2);
}

/// With `fleet.secret`, the tokens the fleet stores in Redis are sealed: Redis never holds
/// them in the clear, and every instance still gets them.
#[test]
fn with_a_fleet_secret_stored_tokens_are_sealed() {
    let f = fleet("sealed", 2, |c| {
        if let Some(fl) = &mut c.fleet {
            fl.secret = Some("fleet-secret-for-the-test-0001".into());
        }
    });
    let (a, b) = (&f.instances[0], &f.instances[1]);
    f.all_shared();
    let r = a.post(
        "/admin/tokens",
        serde_json::json!({"token": "tok-very-secret-added"}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    within(Duration::from_secs(2), "the sealed token on B", || {
        b.get("/admin/tokens/stats").json()["data"]["tokens"]
            .as_array()
            .map_or(0, Vec::len)
            == 3
    });
    let keys = k2proxy::fleet::record::Keys::new("test-sealed");
    let raw = f.redis.command(&["HGETALL", &keys.added_tokens()]).unwrap();
    assert!(raw.contains("s1:"), "{raw}");
    assert!(!raw.contains("tok-very-secret-added"), "{raw}");
}

/// `rediss://`: the link speaks TLS, verifying Redis's certificate against the system's
/// roots (here a private CA given through `SSL_CERT_FILE`, as an operator would).
#[test]
fn a_fleet_links_to_redis_over_tls() {
    let dir = common::temp_dir("fleet-tls");
    let run = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("openssl runs (the TLS test needs the Debian package openssl)");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=k2proxy-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    let port = common::free_port();
    let mut server = std::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &port.to_string()])
        .arg("--tls-cert-file")
        .arg(dir.join("leaf.pem"))
        .arg("--tls-key-file")
        .arg(dir.join("leaf.key"))
        .arg("--tls-ca-cert-file")
        .arg(dir.join("ca.pem"))
        .args([
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem"));
    let env = Env::start(MockConfig::default(), |c| {
        c.fleet = Some(FleetSection {
            name: "tls".into(),
            instance_id: "t0".into(),
            redis_url: format!("rediss://127.0.0.1:{port}"),
            heartbeat_interval: Duration::from_millis(200),
            ..FleetSection::default()
        });
    });
    let linked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(Duration::from_secs(10), "shared mode over TLS", || {
            shared(&env)
        });
        within(Duration::from_secs(3), "its heartbeat read back", || {
            fleet_view(&env)["instances"].as_array().map_or(0, Vec::len) == 1
        });
    }));
    let _ = server.kill();
    let _ = server.wait();
    if let Err(p) = linked {
        std::panic::resume_unwind(p);
    }
}

/// A request that outlives `fleet.lease_ttl` keeps its slot: the link renews its lease
/// (every third of the TTL), so the slot is not given away while the answer is running.
#[test]
fn a_long_request_keeps_its_slot_past_the_lease_ttl() {
    let f = fleet("renewal", 2, |c| {
        c.limits.per_key.concurrency = 1;
        if let Some(fl) = &mut c.fleet {
            fl.lease_ttl = Duration::from_secs(3);
        }
    });
    let (a, b) = (&f.instances[0], &f.instances[1]);
    let m = model(a);
    f.all_shared();
    let rt = runtime();
    rt.block_on(async {
        let body = chat_body(&m, "hold [[mock: gate=long; gate_after=1]]", true);
        let held = tokio::spawn(send_chat(a, &body));
        for _ in 0..300 {
            if !f.mock.requests().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(f.mock.requests().len(), 1);
        // Past the 3 s TTL the slot is still held.
        tokio::time::sleep(Duration::from_millis(4500)).await;
        let r = send_chat(b, &chat_body(&m, "second", false)).await.unwrap();
        assert_eq!(r.status(), 429, "the slot was given away while in use");
        f.mock.open_gate("long");
        assert_eq!(held.await.unwrap().unwrap().status(), 200);
    });
}

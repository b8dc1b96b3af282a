//! Soak: mixed load with faults for a long time, watching the proxy's memory.
//!
//! ```text
//! cargo bench --bench soak                          10 minutes, a report every 30 s
//! cargo bench --bench soak -- --secs 60 --every 10  a short look
//! ```
//!
//! Not part of `cargo test` (the target has `test = false`). The mock (`k2mock`, no request
//! recording) and the proxy run as their own processes; the proxy has four tokens and
//! `pool.max_failures` set high, so the faults below keep coming for the whole run instead of
//! disabling every token in the first minute. `--users N` (default 32) virtual users send,
//! back to back on keep-alive connections, a weighted mix of:
//!
//! - streamed answers (paced 2 ms per event) and JSON answers;
//! - upstream faults asked for in the prompt: a 500 on every attempt, a cut and a stall
//!   mid-stream, garbage and an HTML page instead of SSE, a slow head within the timeout;
//! - client faults: a client that leaves after the first chunk, a broken JSON body, a wrong
//!   API key.
//!
//! Each kind has one right result (a full answer, an error ending without `[DONE]`, or a
//! given status). Every `--every` seconds it prints the requests, results by kind, the
//! proxy's RSS and what its metrics say is open. At the end it checks that the RSS levelled
//! off (the second half of the run grew it by at most 10 %) and that no request got a
//! wrong result; otherwise it exits non-zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rand::Rng;
use support::{connect, free_port, spawn, wait_port, Proc, Sender};

const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";
const KEY: &str = "sk-soak-client-key";

/// One kind of request in the mix: its weight, what is sent, and the one right result.
struct Kind {
    name: &'static str,
    weight: u32,
    stream: bool,
    /// Directives for the mock, in the prompt.
    directives: &'static str,
    body: Option<&'static str>,
    key: &'static str,
    /// Drop the connection after the first chunk of the answer.
    leave: bool,
    expect: Expect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A full answer: `[DONE]` after a normal finish, or a JSON completion.
    Answer,
    /// A stream that ends with `finish_reason: "error"` and no `[DONE]`.
    ErrorEnding,
    Status(u16),
    /// We leave; anything the proxy sent until then is fine.
    Left,
}

const KINDS: &[Kind] = &[
    Kind {
        name: "stream",
        weight: 40,
        stream: true,
        directives: "pace_ms=2; answer_words=30",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::Answer,
    },
    Kind {
        name: "json",
        weight: 20,
        stream: false,
        directives: "answer_words=30",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::Answer,
    },
    Kind {
        name: "upstream_500",
        weight: 5,
        stream: true,
        directives: "fault=500",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::Status(502),
    },
    Kind {
        name: "cut",
        weight: 6,
        stream: true,
        directives: "fault=cut; cut_after=4; reasoning_words=20",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::ErrorEnding,
    },
    Kind {
        name: "stall",
        weight: 3,
        stream: true,
        directives: "fault=stall; cut_after=4; stall_ms=30000; reasoning_words=20",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::ErrorEnding,
    },
    Kind {
        name: "garbage",
        weight: 3,
        stream: false,
        directives: "fault=garbage",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::Status(502),
    },
    Kind {
        name: "html",
        weight: 3,
        stream: true,
        directives: "fault=html",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::Status(502),
    },
    Kind {
        name: "slow_head",
        weight: 3,
        stream: true,
        directives: "fault=slowhead; slowhead_ms=300",
        body: None,
        key: KEY,
        leave: false,
        expect: Expect::Answer,
    },
    Kind {
        name: "client_leaves",
        weight: 8,
        stream: true,
        directives: "pace_ms=20; answer_words=200",
        body: None,
        key: KEY,
        leave: true,
        expect: Expect::Left,
    },
    Kind {
        name: "bad_json",
        weight: 4,
        stream: false,
        directives: "",
        body: Some("{\"model\": \"x\", \"messages\": [tru"),
        key: KEY,
        leave: false,
        expect: Expect::Status(400),
    },
    Kind {
        name: "wrong_key",
        weight: 3,
        stream: false,
        directives: "",
        body: None,
        key: "sk-not-a-key",
        leave: false,
        expect: Expect::Status(401),
    },
];

struct Settings {
    secs: u64,
    every: u64,
    users: usize,
}

fn settings() -> Settings {
    let mut s = Settings {
        secs: 600,
        every: 30,
        users: 32,
    };
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> u64 {
        args.get(i + 1)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{} needs a number", args[i]))
    };
    for (i, a) in args.iter().enumerate() {
        match a.as_str() {
            "--secs" => s.secs = num(i),
            "--every" => s.every = num(i),
            "--users" => s.users = num(i) as usize,
            _ => {}
        }
    }
    s
}

/// Results by kind, then by what happened (`ok` or a description of the wrong result).
#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<&'static str, BTreeMap<String, u64>>,
    wrong: u64,
    first_wrong: Vec<String>,
}

impl Tally {
    fn add(&mut self, kind: &'static str, result: Result<(), String>) {
        let label = match &result {
            Ok(()) => "ok".to_string(),
            Err(e) => e.chars().take(60).collect(),
        };
        *self
            .by_kind
            .entry(kind)
            .or_default()
            .entry(label)
            .or_default() += 1;
        if let Err(e) = result {
            self.wrong += 1;
            if self.first_wrong.len() < 5 {
                self.first_wrong.push(format!("{kind}: {e}"));
            }
        }
    }

    fn total(&self) -> u64 {
        self.by_kind.values().flat_map(|m| m.values()).sum()
    }
}

fn request(kind: &Kind, n: u64) -> http::Request<Full<Bytes>> {
    let body = match kind.body {
        Some(b) => b.to_string(),
        None => serde_json::json!({
            "model": MODEL,
            "stream": kind.stream,
            "messages": [{"role": "user", "content": format!("soak {n} [[mock: {}]]", kind.directives)}],
        })
        .to_string(),
    };
    http::Request::post("/v1/chat/completions")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", kind.key))
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

/// Send one request of `kind` and check its result. `Ok(false)` when the connection must
/// not be reused.
async fn one(sender: &mut Sender, kind: &Kind, n: u64) -> (Result<(), String>, bool) {
    if let Err(e) = sender.ready().await {
        return (Err(format!("connection: {e}")), false);
    }
    let resp = match sender.send_request(request(kind, n)).await {
        Ok(r) => r,
        Err(e) => return (Err(format!("request: {e}")), false),
    };
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    all.extend_from_slice(&d);
                }
            }
            Err(e) => return (Err(format!("body: {e}")), false),
        }
        if kind.leave && !all.is_empty() {
            return (Ok(()), false);
        }
    }
    let text = String::from_utf8_lossy(&all);
    let done = text.trim_end().ends_with("data: [DONE]");
    let error_ending = text.contains("\"finish_reason\":\"error\"") && text.contains("\"error\":{");
    let result = match kind.expect {
        Expect::Answer if status == 200 && kind.stream && done && !error_ending => Ok(()),
        Expect::Answer
            if status == 200 && !kind.stream && text.contains("\"finish_reason\":\"stop\"") =>
        {
            Ok(())
        }
        Expect::ErrorEnding if status == 200 && error_ending && !text.contains("[DONE]") => Ok(()),
        Expect::Status(s) if status == s && text.contains("\"error\":{") => Ok(()),
        Expect::Left => Err(format!("status {status}, the answer ended before we left")),
        _ => Err(format!(
            "status {status}: {}",
            text.chars()
                .rev()
                .take(120)
                .collect::<String>()
                .chars()
                .rev()
                .collect::<String>()
        )),
    };
    (result, true)
}

async fn user(port: u16, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>, seed: u64) {
    let total: u32 = KINDS.iter().map(|k| k.weight).sum();
    let mut n = seed * 1_000_000;
    let mut sender: Option<Sender> = None;
    while !stop.load(Ordering::Relaxed) {
        let mut pick = rand::thread_rng().gen_range(0..total);
        let kind = KINDS
            .iter()
            .find(|k| {
                if pick < k.weight {
                    true
                } else {
                    pick -= k.weight;
                    false
                }
            })
            .unwrap_or(&KINDS[0]);
        n += 1;
        // A connection the proxy closed after the last answer (it does after refusing a
        // request whose body it did not read) is replaced, as any HTTP client does.
        let mut reused = None;
        if let Some(mut s) = sender.take() {
            if s.ready().await.is_ok() {
                reused = Some(s);
            }
        }
        let mut s = match reused {
            Some(s) => s,
            None => match connect(port).await {
                Ok(s) => s,
                Err(e) => {
                    tally.lock().expect("tally").add(kind.name, Err(e));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (result, reuse) = one(&mut s, kind, n).await;
        if reuse {
            sender = Some(s);
        }
        tally.lock().expect("tally").add(kind.name, result);
    }
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(-1, |v| v as i64)
}

async fn scrape(port: u16) -> String {
    let Ok(mut s) = connect(port).await else {
        return String::new();
    };
    let req = http::Request::get("/metrics")
        .header("host", "127.0.0.1")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let Ok(resp) = s.send_request(req).await else {
        return String::new();
    };
    resp.into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default()
}

fn main() -> ExitCode {
    let s = settings();
    let dir = std::env::temp_dir().join(format!("k2proxy-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (mock_port, port, metrics_port) = (free_port(), free_port(), free_port());
    let mut mock = spawn(
        "k2mock",
        env!("CARGO_BIN_EXE_k2mock"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{mock_port}"),
            "--no-record".into(),
            // The old host's personality: its answers end cleanly and keep the connection,
            // so the figures stay comparable with those measured before K2 Horizon.
            "--personality".into(),
            "k2think".into(),
        ],
    );
    wait_port(&mut mock, mock_port);
    let conf = dir.join("k2proxy-soak.yaml");
    std::fs::write(
        &conf,
        format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n\
             upstream:\n  base_url: \"http://127.0.0.1:{mock_port}\"\n  idle_timeout: 1s\n  header_timeout: 2s\n\
             auth:\n  api_keys: [{{name: soak, key: \"{KEY}\"}}]\n\
             pool:\n  tokens: [\"soak-a\", \"soak-b\", \"soak-c\", \"soak-d\"]\n  max_failures: 1000000000\n\
             retry:\n  backoff: 10ms\n\
             metrics:\n  listen: \"127.0.0.1:{metrics_port}\"\n\
             models:\n  - {{id: \"MBZUAI-IFM/K2-Think-v2\", upstream: \"MBZUAI-IFM/K2-Think-v2\"}}\n"
        ),
    )
    .expect("write config");
    let mut proxy: Proc = spawn(
        "k2proxy",
        env!("CARGO_BIN_EXE_k2proxy"),
        &["-c".into(), conf.display().to_string()],
    );
    wait_port(&mut proxy, port);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    println!(
        "soak: {} users for {} s, report every {} s; proxy pid {}",
        s.users,
        s.secs,
        s.every,
        proxy.pid()
    );
    let (rss0, _) = proxy.rss_kib();
    println!("   t(s)   req/s   total   wrong   RSS(MiB)  conns  in-flight  cpu(s)  results");
    println!(
        "      0       -       0       0   {:8.1}",
        rss0 as f64 / 1024.0
    );
    let users: Vec<_> = (0..s.users)
        .map(|i| rt.spawn(user(port, stop.clone(), tally.clone(), i as u64)))
        .collect();
    let started = Instant::now();
    let mut rss: Vec<(u64, u64)> = vec![(0, rss0)];
    let mut last_total = 0;
    let mut t = 0;
    while t < s.secs {
        let step = s.every.min(s.secs - t);
        std::thread::sleep(
            (started + Duration::from_secs(t + step)).saturating_duration_since(Instant::now()),
        );
        t += step;
        if !proxy.alive() {
            println!("the proxy exited");
            return ExitCode::FAILURE;
        }
        let (now_rss, _) = proxy.rss_kib();
        rss.push((t, now_rss));
        let m = rt.block_on(scrape(metrics_port));
        let tl = tally.lock().expect("tally");
        let total = tl.total();
        let results: Vec<String> = tl
            .by_kind
            .iter()
            .map(|(k, v)| format!("{k}={}", v.get("ok").copied().unwrap_or(0)))
            .collect();
        println!(
            "{t:7} {:7.0} {total:7} {:7}   {:8.1} {:6} {:10} {:7.1}  {}",
            (total - last_total) as f64 / step as f64,
            tl.wrong,
            now_rss as f64 / 1024.0,
            metric(&m, "k2proxy_client_connections"),
            metric(&m, "k2proxy_requests_in_flight"),
            proxy.cpu().as_secs_f64(),
            results.join(" ")
        );
        last_total = total;
    }
    stop.store(true, Ordering::Relaxed);
    for u in users {
        let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(40), u).await });
    }
    // Everything the clients opened is closed again on the proxy's side.
    std::thread::sleep(Duration::from_secs(2));
    let m = rt.block_on(scrape(metrics_port));
    let (conns, in_flight) = (
        metric(&m, "k2proxy_client_connections"),
        metric(&m, "k2proxy_requests_in_flight"),
    );
    let tl = tally.lock().expect("tally");
    println!("\nresults by kind:");
    for (k, v) in &tl.by_kind {
        println!("  {k:14} {v:?}");
    }
    let mid = rss
        .iter()
        .find(|(t, _)| *t >= s.secs / 2)
        .map_or(rss0, |r| r.1);
    let peak_late = rss
        .iter()
        .filter(|(t, _)| *t >= s.secs / 2)
        .map(|r| r.1)
        .max()
        .unwrap_or(mid);
    let growth = peak_late as f64 / mid.max(1) as f64 - 1.0;
    println!(
        "\n{} requests, {} wrong; RSS {:.1} MiB at start, {:.1} MiB at half time, peak {:.1} MiB in the second half ({:+.1} %); after the load: {conns} connections, {in_flight} in flight",
        tl.total(),
        tl.wrong,
        rss0 as f64 / 1024.0,
        mid as f64 / 1024.0,
        peak_late as f64 / 1024.0,
        growth * 100.0
    );
    for w in &tl.first_wrong {
        println!("  wrong: {w}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    let levelled = growth <= 0.10;
    if !levelled {
        println!("RSS did not level off");
    }
    if tl.wrong == 0 && levelled && in_flight == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

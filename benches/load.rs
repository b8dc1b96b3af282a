//! Load bench: the proxy against the mock upstream, and the same load straight at the mock.
//!
//! ```text
//! cargo bench --bench load                 full run (about two minutes)
//! cargo bench --bench load -- --quick      short run (what `cargo test --release` does)
//! ```
//!
//! Three processes share the machine: `k2mock` (fast mode: no pacing, no request recording),
//! `k2proxy` (the shipped defaults, user mode with three tokens, access log on to /dev/null)
//! and this load client (closed loop: N virtual users, one keep-alive HTTP/1.1 connection
//! each, a new request as soon as the previous answer is read to its end).
//!
//! Phases (`--only memory|throughput|paced|fleet` runs one):
//! 1. memory: the fresh proxy's RSS idle and with 1,000 concurrent open streams (paced mock);
//! 2. throughput, first through the proxy and then straight at the mock: streamed and
//!    non-streamed completions at concurrency 1, 64 and 256; req/s, latency p50/p99, time
//!    to first token (first non-empty `content` or `reasoning_content` in the body), and
//!    CPU time per request of the server process;
//! 3. added latency: 64 concurrent streams from a paced mock (the machine is not saturated),
//!    so the TTFT difference is the proxy's own work, not CPU queueing. The proxy and the
//!    mock take turns in ten 1 s windows, so that both are measured over the same stretch
//!    of time (this VM's speed drifts more from one window to the next than the difference
//!    being measured).
//!
//! 4. fleet (full runs and `--only fleet`, when `redis-server` is installed): 64 streams
//!    through the proxy alone (no `fleet` section), then split over two instances sharing
//!    one Redis (a unix socket), without and with `limits.per_key`: req/s, latency, TTFT,
//!    CPU of the instances and Redis, and Redis commands per request (`INFO`).
//!
//! `--relay PORT --mock-port PORT` adds a plain reverse proxy (e.g. nginx in front of the
//! mock) to phases 2 and 3. `LOAD_VERBOSE=1` shows the servers' stderr; `LOAD_HOLD_SECS=N`
//! keeps the 1,000 streams open N seconds (to inspect the proxy with heaptrack or smaps).
//!
//! Any failed request makes the run exit non-zero.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::{connect, free_port, spawn, wait_port, Proc, Sender};

const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";
/// The answer every request gets: ~40 reasoning words and ~80 answer words from the mock,
/// cumulative `content` events growing by 8 characters (the mock's defaults).
const PROMPT: &str =
    "Explain how to reverse a linked list in Rust. [[mock: reasoning_words=40; answer_words=80]]";
const PACE_MS: u64 = 20;

#[derive(Clone)]
struct Settings {
    quick: bool,
    /// `--only memory|throughput|paced|anchor|fleet`: run one phase.
    only: Option<String>,
    /// `--proxy-bin PATH`: another k2proxy binary to measure (an older build, to compare
    /// before and after a change in alternating runs); default: this build's.
    proxy_bin: Option<String>,
    /// `--no-work-stealing`: the proxy with `server.work_stealing: false`.
    no_steal: bool,
    /// `--mock-port N`: where the mock listens (default: a free port).
    mock_port: Option<u16>,
    /// `--relay N`: also drive the mock through a plain reverse proxy listening on port N
    /// (for example nginx with `proxy_buffering off`, pointed at `--mock-port`).
    relay: Option<u16>,
    levels: Vec<usize>,
    warmup: Duration,
    measure: Duration,
    paced_users: usize,
    /// Measured time per target in the paced phase, split into `paced_rounds` windows.
    paced_time: Duration,
    paced_rounds: usize,
    paced_warmup: Duration,
    open_streams: usize,
}

impl Settings {
    fn runs(&self, phase: &str) -> bool {
        self.only.as_deref().is_none_or(|o| o == phase)
    }

    fn from_args() -> Settings {
        let args: Vec<String> = std::env::args().collect();
        // `cargo bench` passes `--bench`; `cargo test` does not: run short then.
        let quick = args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let only = value("--only");
        let mock_port = value("--mock-port").and_then(|v| v.parse().ok());
        let proxy_bin = value("--proxy-bin");
        let no_steal = args.iter().any(|a| a == "--no-work-stealing");
        let relay = value("--relay").and_then(|v| v.parse().ok());
        // `--levels 1,64`: other concurrency levels for the throughput phase.
        let levels_arg: Option<Vec<usize>> =
            value("--levels").map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect());
        let s = if quick {
            Settings {
                quick,
                only: only.clone(),
                proxy_bin: proxy_bin.clone(),
                no_steal,
                mock_port,
                relay,
                levels: vec![1, 16],
                warmup: Duration::from_millis(200),
                measure: Duration::from_millis(700),
                paced_users: 16,
                paced_time: Duration::from_secs(2),
                paced_rounds: 2,
                paced_warmup: Duration::from_millis(200),
                open_streams: 100,
            }
        } else {
            Settings {
                quick,
                only: only.clone(),
                proxy_bin: proxy_bin.clone(),
                no_steal,
                mock_port,
                relay,
                levels: vec![1, 64, 256],
                warmup: Duration::from_secs(1),
                measure: Duration::from_secs(5),
                paced_users: 64,
                paced_time: Duration::from_secs(10),
                paced_rounds: 10,
                paced_warmup: Duration::from_millis(300),
                open_streams: 1000,
            }
        };
        Settings {
            levels: levels_arg.unwrap_or(s.levels.clone()),
            ..s
        }
    }
}

// ---------------------------------------------------------------------------------------
// processes

fn start_mock(port: u16) -> Proc {
    let mut p = spawn(
        "k2mock",
        env!("CARGO_BIN_EXE_k2mock"),
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--no-record".into(),
            // The old host's personality: its answers end cleanly and keep the connection,
            // so the figures stay comparable with those measured before K2 Horizon.
            "--personality".into(),
            "k2think".into(),
        ],
    );
    wait_port(&mut p, port);
    p
}

fn start_proxy(
    port: u16,
    mock_port: u16,
    dir: &std::path::Path,
    bin: Option<&str>,
    no_steal: bool,
) -> Proc {
    let metrics = free_port();
    let conf = dir.join("k2proxy-bench.yaml");
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n\
         upstream:\n  base_url: \"http://127.0.0.1:{mock_port}\"\n\
         pool:\n  tokens: [\"bench-a\", \"bench-b\", \"bench-c\"]\n\
         metrics:\n  listen: \"127.0.0.1:{metrics}\"\n\
             models:\n  - {{id: \"MBZUAI-IFM/K2-Think-v2\", upstream: \"MBZUAI-IFM/K2-Think-v2\"}}\n"
    );
    let yaml = if no_steal {
        yaml.replacen("server:\n", "server:\n  work_stealing: false\n", 1)
    } else {
        yaml
    };
    std::fs::write(&conf, yaml).expect("write bench config");
    let mut p = spawn(
        "k2proxy",
        bin.unwrap_or(env!("CARGO_BIN_EXE_k2proxy")),
        &["-c".into(), conf.display().to_string()],
    );
    wait_port(&mut p, port);
    p
}

// ---------------------------------------------------------------------------------------
// load client

#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Proxy,
    Mock,
    /// The mock through a plain reverse proxy (`--relay`).
    Relay,
    /// The mock through the bare Pingora pass-through (`examples/passthrough.rs`).
    Bare,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Proxy => "proxy",
            Via::Mock => "mock",
            Via::Relay => "relay",
            Via::Bare => "pingora",
        }
    }
}

/// What one virtual user sends, over and over.
struct Target {
    port: u16,
    path: &'static str,
    body: Bytes,
    stream: bool,
    via: Via,
}

impl Target {
    fn new(via: Via, port: u16, stream: bool, prompt: &str) -> Target {
        // The OpenAI request and the K2Think one have the same shape here; only the path
        // (and the bearer, see `one`) differ.
        let path = match via {
            Via::Proxy => "/v1/chat/completions",
            Via::Mock | Via::Relay | Via::Bare => "/api/chat/completions",
        };
        let body = serde_json::json!({
            "model": MODEL,
            "stream": stream,
            "messages": [{"role": "user", "content": prompt}],
        });
        Target {
            port,
            path,
            body: Bytes::from(body.to_string()),
            stream,
            via,
        }
    }
}

#[derive(Default)]
struct Samples {
    /// Whole-request latencies, µs.
    latency: Vec<u32>,
    /// Time to first token, µs (streams only).
    ttft: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Samples {
    fn merge(&mut self, o: Samples) {
        self.latency.extend(o.latency);
        self.ttft.extend(o.ttft);
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
}

/// Whether `body` holds a non-empty `content` or `reasoning_content` string.
fn has_token(body: &[u8]) -> bool {
    const PAT: &[u8] = b"content\":\"";
    body.windows(PAT.len() + 1)
        .any(|w| w.starts_with(PAT) && w[PAT.len()] != b'"')
}

/// Whether a complete answer arrived (and not an error ending).
fn answer_ok(t: &Target, body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    let ok = match (t.via, t.stream) {
        (Via::Proxy, true) => {
            text.trim_end().ends_with("data: [DONE]") && !text.contains("\"error\"")
        }
        (Via::Mock | Via::Relay | Via::Bare, true) => {
            text.contains("[DONE]") || text.contains("\"done\":true")
        }
        (_, false) => text.contains("\"content\""),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "incomplete answer: {}",
            text.chars().take(300).collect::<String>()
        ))
    }
}

/// One request on `sender`: (latency, ttft).
async fn one(
    sender: &mut Sender,
    t: &Target,
    first_token: Option<&AtomicUsize>,
) -> Result<(Duration, Option<Duration>), String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let mut req = http::Request::post(t.path)
        .header("host", format!("127.0.0.1:{}", t.port))
        .header("content-type", "application/json");
    req = match t.via {
        Via::Proxy => req,
        Via::Mock | Via::Relay => req.header("authorization", "Bearer bench-a"),
        // The pass-through adds the bearer itself (its one header).
        Via::Bare => req,
    };
    let req = req
        .body(Full::new(t.body.clone()))
        .map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status();
    let mut body = resp.into_body();
    let mut all = Vec::with_capacity(16 * 1024);
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Ok(data) = frame.into_data() {
            let from = all.len().saturating_sub(16);
            all.extend_from_slice(&data);
            if t.stream && ttft.is_none() && has_token(&all[from..]) {
                ttft = Some(t0.elapsed());
                if let Some(n) = first_token {
                    n.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    let latency = t0.elapsed();
    if !status.is_success() {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&all)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    answer_ok(t, &all)?;
    Ok((latency, ttft))
}

/// A virtual user: requests back to back until `stop`; records those that started after
/// `record`.
async fn user(
    t: Arc<Target>,
    delay: Duration,
    record: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Samples {
    tokio::time::sleep(delay).await;
    let mut s = Samples::default();
    let mut sender = None;
    while !stop.load(Ordering::Relaxed) {
        let counting = record.load(Ordering::Relaxed);
        if sender.is_none() {
            match connect(t.port).await {
                Ok(c) => sender = Some(c),
                Err(e) => {
                    s.errors += 1;
                    s.first_error.get_or_insert(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = sender.as_mut() else { continue };
        match one(c, &t, None).await {
            Ok((lat, ttft)) => {
                // A request that started in the window has its first token in it (or
                // close to it): it counts for TTFT even if it ends after `stop`. Req/s and
                // latency count only the requests that ended in the window.
                if counting {
                    if let Some(f) = ttft {
                        s.ttft.push(f.as_micros() as u32);
                    }
                    if !stop.load(Ordering::Relaxed) {
                        s.latency.push(lat.as_micros() as u32);
                    }
                }
            }
            Err(e) => {
                s.errors += 1;
                s.first_error.get_or_insert(e);
                sender = None;
            }
        }
    }
    s
}

struct Run {
    label: String,
    users: usize,
    secs: f64,
    samples: Samples,
    cpu: Duration,
}

impl Run {
    fn rps(&self) -> f64 {
        self.samples.latency.len() as f64 / self.secs
    }
    fn cpu_per_req_us(&self) -> f64 {
        let n = self.samples.latency.len().max(1) as f64;
        self.cpu.as_secs_f64() * 1e6 / n
    }
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i] as f64 / 1000.0
}

fn run_level(
    rt: &tokio::runtime::Runtime,
    t: Arc<Target>,
    users: usize,
    s: &Settings,
    server: &Proc,
    stagger: Duration,
) -> Run {
    let label = format!(
        "{} {}",
        t.via.label(),
        if t.stream { "stream" } else { "json" }
    );
    Run {
        label,
        ..run_split(rt, &[t], users, s, &[server], stagger)
    }
}

/// Open `n` streams at once; once every one has its first token (or 30 s passed), read the
/// proxy's RSS (KiB) and hang up on all of them. Returns the RSS, how many streams had
/// their first token, and the failures.
fn open_streams(
    rt: &tokio::runtime::Runtime,
    t: Arc<Target>,
    n: usize,
    proxy: &Proc,
) -> (u64, usize, Samples) {
    let notify = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (t, notify) = (t.clone(), notify.clone());
            rt.spawn(async move {
                let mut s = Samples::default();
                let res = async {
                    let mut c = connect(t.port).await?;
                    one(&mut c, &t, Some(&notify)).await
                }
                .await;
                match res {
                    Ok((lat, _)) => s.latency.push(lat.as_micros() as u32),
                    Err(e) => {
                        s.errors += 1;
                        s.first_error = Some(e);
                    }
                }
                s
            })
        })
        .collect();
    // Streams stay open for the paced answer's full length (seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    while notify.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = notify.load(Ordering::Relaxed);
    let (rss, _) = proxy.rss_kib();
    if let Some(secs) = std::env::var("LOAD_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        println!(
            "holding {n} streams on proxy pid {} for {secs} s",
            proxy.pid()
        );
        std::thread::sleep(Duration::from_secs(secs));
    }
    // Hang up on every stream (the proxy counts them as client aborts).
    for h in &handles {
        h.abort();
    }
    let mut samples = Samples::default();
    rt.block_on(async {
        for h in handles {
            if let Ok(x) = h.await {
                samples.merge(x);
            }
        }
    });
    (rss, seen, samples)
}

/// The two servers under test.
struct Servers<'a> {
    proxy: &'a Proc,
    proxy_port: u16,
    mock: &'a Proc,
    mock_port: u16,
    relay: Option<u16>,
}

impl<'a> Servers<'a> {
    /// The proxy, the mock, and the relay when given: (how to address it, port, the
    /// process whose CPU time is counted).
    fn both(&self) -> Vec<(Via, u16, &'a Proc)> {
        let mut v = vec![
            (Via::Proxy, self.proxy_port, self.proxy),
            (Via::Mock, self.mock_port, self.mock),
        ];
        if let Some(port) = self.relay {
            v.push((Via::Relay, port, self.mock));
        }
        v
    }
}

/// The proxy's RSS with many open streams, on the fresh proxy. Returns the failures.
fn memory(rt: &tokio::runtime::Runtime, s: &Settings, sv: &Servers<'_>) -> u64 {
    let mut failed = 0;
    let (fresh, _) = sv.proxy.rss_kib();
    let slow = format!("{PROMPT} [[mock: pace_ms=100]]");
    let t = Arc::new(Target::new(Via::Proxy, sv.proxy_port, true, &slow));
    let (rss, seen, samples) = open_streams(rt, t, s.open_streams, sv.proxy);
    failed += samples.errors;
    if let Some(e) = &samples.first_error {
        println!("    first error: {e}");
    }
    println!(
        "proxy RSS: {:.1} MiB at start; {:.1} MiB with {seen}/{} streams open\n",
        fresh as f64 / 1024.0,
        rss as f64 / 1024.0,
        s.open_streams,
    );
    if seen < s.open_streams {
        failed += 1;
        println!(
            "    only {seen} of {} streams got a first token",
            s.open_streams
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    // Pingora's own floor: the bare pass-through holding the same streams.
    if let Some(bin) = passthrough_bin() {
        let (bare, port) = start_passthrough(&bin, sv.mock_port);
        let (fresh, _) = bare.rss_kib();
        let t = Arc::new(Target::new(Via::Bare, port, true, &slow));
        let (rss, seen, samples) = open_streams(rt, t, s.open_streams, &bare);
        failed += samples.errors;
        println!(
            "pingora pass-through RSS: {:.1} MiB at start; {:.1} MiB with {seen}/{} streams open\n",
            fresh as f64 / 1024.0,
            rss as f64 / 1024.0,
            s.open_streams,
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    failed
}

/// Req/s, latency and TTFT at each concurrency level, proxy then mock. Returns the failures.
fn throughput(rt: &tokio::runtime::Runtime, s: &Settings, sv: &Servers<'_>) -> u64 {
    let mut failed = 0;
    let header = format!(
        "{:<13} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>6}",
        "run", "conc", "req/s", "p50 ms", "p99 ms", "ttft p50", "ttft p99", "cpu µs/req", "errors"
    );
    println!("{header}");
    let mut ratios = Vec::new();
    for stream in [true, false] {
        for &users in &s.levels {
            let mut pair = Vec::new();
            for (via, port, server) in sv.both() {
                let t = Arc::new(Target::new(via, port, stream, PROMPT));
                let mut r = run_level(rt, t, users, s, server, Duration::ZERO);
                failed += r.samples.errors;
                let line = format!(
                    "{:<13} {:>5} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>10.0} {:>6}",
                    r.label,
                    r.users,
                    r.rps(),
                    pct(&mut r.samples.latency, 0.5),
                    pct(&mut r.samples.latency, 0.99),
                    pct(&mut r.samples.ttft, 0.5),
                    pct(&mut r.samples.ttft, 0.99),
                    r.cpu_per_req_us(),
                    r.samples.errors
                );
                println!("{line}");
                if let Some(e) = &r.samples.first_error {
                    println!("    first error: {e}");
                }
                pair.push(r);
            }
            let ratio = pair[0].rps() / pair[1].rps().max(f64::MIN_POSITIVE);
            ratios.push(format!(
                "{} at {users}: proxy/mock req/s = {ratio:.2}",
                if stream { "stream" } else { "json" }
            ));
        }
    }
    println!();
    for r in &ratios {
        println!("{r}");
    }

    failed
}

/// Time to first token at `paced_users` streams from a paced mock, through the proxy and
/// straight at the mock: the machine is far from saturated, so the difference is the
/// proxy's own delay. Returns the failures.
///
/// The targets take turns in short windows (`paced_rounds` rounds, the order alternating),
/// so that both are measured over the same stretch of time. This VM's speed drifts by more
/// than the difference being measured from one 5 s window to the next; one long window per
/// target put that drift into the result.
fn paced(rt: &tokio::runtime::Runtime, s: &Settings, sv: &Servers<'_>) -> u64 {
    let mut failed = 0;
    // A short answer (about 25 events, half a second), so that many complete in a window.
    let paced = format!("Explain how to reverse a linked list in Rust. [[mock: pace_ms={PACE_MS}; reasoning_words=6; answer_words=6]]");
    let window = Settings {
        warmup: s.paced_warmup,
        measure: s.paced_time / s.paced_rounds as u32,
        ..s.clone()
    };
    // Pingora's own added time: the bare pass-through in front of the same mock, in turn
    // with the others.
    let bare = passthrough_bin().map(|bin| start_passthrough(&bin, sv.mock_port));
    let mut servers = sv.both();
    if let Some((proc, port)) = &bare {
        servers.push((Via::Bare, *port, proc));
    }
    let targets: Vec<_> = servers
        .into_iter()
        .map(|(via, port, server)| (via, Arc::new(Target::new(via, port, true, &paced)), server))
        .collect();
    // Users start spread over one pace interval, so that their events do not arrive in
    // lockstep bursts.
    let stagger = Duration::from_millis(PACE_MS);
    let mut pooled: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
    // Per round and target: the TTFT p50.
    let mut rounds: Vec<Vec<f64>> = Vec::new();
    for round in 0..s.paced_rounds {
        let mut p50s = vec![f64::NAN; targets.len()];
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let (_, t, server) = &targets[k];
            let mut r = run_level(rt, t.clone(), s.paced_users, &window, server, stagger);
            failed += r.samples.errors;
            if let Some(e) = &r.samples.first_error {
                println!("    first error: {e}");
            }
            p50s[k] = pct(&mut r.samples.ttft, 0.5);
            pooled[k].append(&mut r.samples.ttft);
        }
        rounds.push(p50s);
    }
    println!(
        "\npaced stream ({PACE_MS} ms between events), {} concurrent users, time to first token \
         ({} rounds of {:.1} s per target, taking turns):",
        s.paced_users,
        s.paced_rounds,
        window.measure.as_secs_f64()
    );
    let mock = targets
        .iter()
        .position(|t| t.0 == Via::Mock)
        .unwrap_or_default();
    let (mock_p50, mock_p99) = {
        let m = &mut pooled[mock];
        (pct(m, 0.5), pct(m, 0.99))
    };
    for (k, (via, _, _)) in targets.iter().enumerate() {
        let v = &mut pooled[k];
        let (p50, p99) = (pct(v, 0.5), pct(v, 0.99));
        print!(
            "  {:<6} p50 {p50:.3} ms  p99 {p99:.3} ms  ({} samples)",
            via.label(),
            v.len()
        );
        if *via != Via::Mock {
            let mut added: Vec<f64> = rounds
                .iter()
                .map(|r| r[k] - r[mock])
                .filter(|d| !d.is_nan())
                .collect();
            added.sort_by(f64::total_cmp);
            print!(
                "  -> added {:.3} ms p50, {:.3} ms p99; per round, added p50 {:.3} to {:.3} ms",
                p50 - mock_p50,
                p99 - mock_p99,
                added.first().copied().unwrap_or(f64::NAN),
                added.last().copied().unwrap_or(f64::NAN),
            );
        }
        println!();
    }

    failed
}

fn main() -> ExitCode {
    let s = Settings::from_args();
    let dir = std::env::temp_dir().join(format!("k2proxy-load-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let (mock_port, proxy_port) = (s.mock_port.unwrap_or_else(free_port), free_port());
    let mock = start_mock(mock_port);
    let proxy = start_proxy(
        proxy_port,
        mock_port,
        &dir,
        s.proxy_bin.as_deref(),
        s.no_steal,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "k2proxy load bench ({} mode): {} cores, mock {} + proxy {} + client in one run",
        if s.quick { "quick" } else { "full" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        mock.pid(),
        proxy.pid()
    );
    println!("answer: v1 markup, cumulative content, 8 chars per event; {PROMPT:?}\n");
    let mut failed = 0u64;

    let servers = Servers {
        proxy: &proxy,
        proxy_port,
        mock: &mock,
        mock_port,
        relay: s.relay,
    };
    if s.runs("memory") {
        failed += memory(&rt, &s, &servers);
    }
    if s.runs("throughput") {
        failed += throughput(&rt, &s, &servers);
    }
    if s.runs("paced") {
        failed += paced(&rt, &s, &servers);
    }
    if s.runs("anchor") {
        failed += anchor(&rt, &s, &servers);
    }
    if s.runs("fleet") && (!s.quick || s.only.is_some()) {
        failed += fleet(&rt, &s, &servers, &dir);
    }

    let (rss_end, peak) = proxy.rss_kib();
    println!(
        "\nproxy RSS after all runs: {:.1} MiB (peak {:.1} MiB)",
        rss_end as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    drop(proxy);
    drop(mock);
    let _ = std::fs::remove_dir_all(PathBuf::from(&dir));
    if failed > 0 {
        println!("\nFAILED: {failed} failed requests");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------------
// anchor

/// The pass-through example next to this bench (`target/<profile>/examples/passthrough`),
/// when it was built.
fn passthrough_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join("passthrough");
    bin.is_file().then_some(bin)
}

/// Start the pass-through on a free port in front of the mock: the process and its port.
fn start_passthrough(bin: &std::path::Path, mock_port: u16) -> (Proc, u16) {
    let port = free_port();
    let mut bare = spawn(
        "passthrough",
        &bin.display().to_string(),
        &[
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--upstream".into(),
            format!("127.0.0.1:{mock_port}"),
        ],
    );
    wait_port(&mut bare, port);
    (bare, port)
}

/// k2proxy next to what Pingora itself needs to move the same answer (the bare
/// pass-through, `examples/passthrough.rs`), the mock straight, and nginx with `--relay`:
/// 64 closed-loop streams of a short answer (8 content events), every target taking turns
/// in windows of one run, the order alternating. Returns the failures.
fn anchor(rt: &tokio::runtime::Runtime, s: &Settings, sv: &Servers<'_>) -> u64 {
    let Some(bin) = passthrough_bin() else {
        println!(
            "\nanchor: the pass-through is not built; run `cargo build --release --example passthrough` first"
        );
        return u64::from(s.only.as_deref() == Some("anchor"));
    };
    let (bare, port) = start_passthrough(&bin, sv.mock_port);
    let prompt = "hi [[mock: chunk=16]]";
    let mut targets: Vec<(Via, Arc<Target>, &Proc)> = sv
        .both()
        .into_iter()
        .map(|(via, p, server)| (via, Arc::new(Target::new(via, p, true, prompt)), server))
        .collect();
    targets.insert(
        1,
        (
            Via::Bare,
            Arc::new(Target::new(Via::Bare, port, true, prompt)),
            &bare,
        ),
    );
    let users = if s.quick { 16 } else { 64 };
    let rounds = if s.quick { 2 } else { 6 };
    let window = Settings {
        warmup: if s.quick {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(300)
        },
        measure: if s.quick {
            Duration::from_millis(400)
        } else {
            Duration::from_secs(2)
        },
        ..s.clone()
    };
    let mut failed = 0;
    // Per target: req/s and CPU µs per request of each round.
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); targets.len()];
    let mut p50: Vec<Vec<u32>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..targets.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for k in order {
            let (_, t, server) = &targets[k];
            let mut r = run_split(
                rt,
                std::slice::from_ref(t),
                users,
                &window,
                &[server],
                Duration::ZERO,
            );
            failed += r.samples.errors;
            if let Some(e) = &r.samples.first_error {
                println!("    first error ({}): {e}", t.via.label());
            }
            rps[k].push(r.rps());
            cpu[k].push(r.cpu_per_req_us());
            p50[k].append(&mut r.samples.latency);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "\nanchor: {users} streams, 8 content events per answer, {rounds} rounds of {:.1} s per target (turns); medians of the rounds",
        window.measure.as_secs_f64()
    );
    println!(
        "{:<9} {:>9} {:>9} {:>12} {:>11}  per-round req/s",
        "target", "req/s", "p50 ms", "cpu µs/req", "× pingora"
    );
    let bare_rps = median(&rps[1]);
    for (k, (via, _, _)) in targets.iter().enumerate() {
        let r = median(&rps[k]);
        println!(
            "{:<9} {:>9.0} {:>9.2} {:>12.0} {:>11.2}  {}",
            via.label(),
            r,
            pct(&mut p50[k], 0.5),
            median(&cpu[k]),
            r / bare_rps,
            rps[k]
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // The ratio of each round (both measured in the same stretch), then its median.
    for (k, (via, _, _)) in targets.iter().enumerate().skip(2) {
        if *via == Via::Relay {
            let per_round: Vec<f64> = rps[0].iter().zip(&rps[k]).map(|(a, b)| a / b).collect();
            println!(
                "k2proxy / nginx req/s: {:.2} (median of rounds)",
                median(&per_round)
            );
        }
    }
    let per_round: Vec<f64> = rps[0].iter().zip(&rps[1]).map(|(a, b)| a / b).collect();
    println!(
        "k2proxy / pingora pass-through req/s: {:.2} (median of rounds)",
        median(&per_round)
    );
    drop(bare);
    failed
}

// ---------------------------------------------------------------------------------------
// fleet

/// A `redis-server` on a unix socket in `dir` (no TCP); `None` when it is not installed.
fn start_redis(dir: &std::path::Path) -> Option<(Proc, PathBuf)> {
    let sock = dir.join("redis.sock");
    let child = std::process::Command::new("redis-server")
        .args(["--port", "0", "--unixsocket"])
        .arg(&sock)
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let p = Proc {
        name: "redis-server",
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while redis_command(&sock, &["PING"]).is_none() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Some((p, sock))
}

fn redis_command(sock: &std::path::Path, args: &[&str]) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = vec![0u8; 256 * 1024];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Commands Redis processed so far (commands a script runs count too), and the `EVALSHA`
/// calls among them (the request path's one round trip when limits are set).
fn redis_counts(sock: &std::path::Path) -> (u64, u64) {
    let info = redis_command(sock, &["INFO", "all"]).unwrap_or_default();
    let field = |prefix: &str, key: &str| -> u64 {
        info.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| {
                l.split([':', ','])
                    .find(|p| p.starts_with(key))
                    .and_then(|p| p.split('=').nth(1).or(Some(p)))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    };
    let total = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (total, field("cmdstat_evalsha:", "calls"))
}

fn start_fleet_proxy(
    port: u16,
    mock_port: u16,
    dir: &std::path::Path,
    sock: &std::path::Path,
    id: usize,
    fleet: Option<bool>,
) -> Proc {
    let conf = dir.join(format!("k2proxy-fleet-{id}.yaml"));
    let limits = if fleet == Some(true) {
        "limits:\n  per_key: {concurrency: 100000, rate: 1000000, burst: 1000000}\n"
    } else {
        ""
    };
    let yaml = format!(
        "server:\n  listen: [\"127.0.0.1:{port}\"]\n\
         upstream:\n  base_url: \"http://127.0.0.1:{mock_port}\"\n\
         pool:\n  tokens: [\"bench-a\", \"bench-b\", \"bench-c\"]\n\
         metrics:\n  listen: null\n\
         logging:\n  access_log: false\n\
         {limits}{}\
         models:\n  - {{id: \"MBZUAI-IFM/K2-Think-v2\", upstream: \"MBZUAI-IFM/K2-Think-v2\"}}\n",
        if fleet.is_some() {
            format!(
                "fleet:\n  name: bench\n  instance_id: \"bench-{id}\"\n  redis_url: \"unix://{}\"\n",
                sock.display()
            )
        } else {
            String::new()
        }
    );
    std::fs::write(&conf, yaml).expect("write bench config");
    let mut p = spawn(
        "k2proxy",
        env!("CARGO_BIN_EXE_k2proxy"),
        &["-c".into(), conf.display().to_string()],
    );
    wait_port(&mut p, port);
    p
}

/// `users` closed-loop users split evenly over `targets` (a load balancer's round robin),
/// their starts spread over `stagger`; CPU time summed over `servers`.
fn run_split(
    rt: &tokio::runtime::Runtime,
    targets: &[Arc<Target>],
    users: usize,
    s: &Settings,
    servers: &[&Proc],
    stagger: Duration,
) -> Run {
    let record = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..users)
        .map(|i| {
            let t = targets[i % targets.len()].clone();
            let delay = stagger * i as u32 / users as u32;
            rt.spawn(user(t, delay, record.clone(), stop.clone()))
        })
        .collect();
    std::thread::sleep(s.warmup);
    let cpu = || servers.iter().map(|p| p.cpu()).sum::<Duration>();
    let cpu0 = cpu();
    let t0 = Instant::now();
    record.store(true, Ordering::Relaxed);
    std::thread::sleep(s.measure);
    stop.store(true, Ordering::Relaxed);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu().saturating_sub(cpu0);
    let mut samples = Samples::default();
    rt.block_on(async {
        for h in handles {
            if let Ok(x) = h.await {
                samples.merge(x);
            }
        }
    });
    Run {
        label: String::new(),
        users,
        secs,
        samples,
        cpu,
    }
}

/// 64 streams through one instance without a fleet, then through two sharing Redis,
/// without and with per-key limits. Returns the failures.
fn fleet(
    rt: &tokio::runtime::Runtime,
    s: &Settings,
    sv: &Servers<'_>,
    dir: &std::path::Path,
) -> u64 {
    let Some((redis, sock)) = start_redis(dir) else {
        println!("\nfleet: skipped (redis-server is not installed)");
        return 0;
    };
    let users = 64;
    println!(
        "\nfleet: {users} streams; two instances share one redis-server (unix socket); CPU = the instances' (and Redis's)"
    );
    println!(
        "{:<22} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>13} {:>6}",
        "run",
        "req/s",
        "p50 ms",
        "p99 ms",
        "ttft p50",
        "cpu µs/req",
        "redis µs/req",
        "redis cmd/req",
        "errors"
    );
    let mut failed = 0;
    let mut line = |label: &str, r: &mut Run, redis_cpu: Duration, cmds: Option<(u64, u64)>| {
        failed += r.samples.errors;
        let n = r.samples.latency.len().max(1) as f64;
        let (cmd, eval) = match cmds {
            Some((c, e)) => (
                format!("{:.2}", c as f64 / n),
                format!(" ({:.2} EVALSHA)", e as f64 / n),
            ),
            None => ("-".to_string(), String::new()),
        };
        println!(
            "{:<22} {:>9.0} {:>9.2} {:>9.2} {:>9.2} {:>11.0} {:>11.1} {:>13}{eval} {:>6}",
            label,
            r.rps(),
            pct(&mut r.samples.latency, 0.5),
            pct(&mut r.samples.latency, 0.99),
            pct(&mut r.samples.ttft, 0.5),
            r.cpu_per_req_us(),
            redis_cpu.as_secs_f64() * 1e6 / n,
            cmd,
            r.samples.errors
        );
        if let Some(e) = &r.samples.first_error {
            println!("    first error: {e}");
        }
    };
    let alone = Arc::new(Target::new(Via::Proxy, sv.proxy_port, true, PROMPT));
    let mut r = run_split(rt, &[alone], users, s, &[sv.proxy], Duration::ZERO);
    line("one, no fleet", &mut r, Duration::ZERO, None);
    for (label, fleet) in [
        ("two, no fleet", None),
        ("two, fleet", Some(false)),
        ("two, fleet + limits", Some(true)),
    ] {
        let ports = [free_port(), free_port()];
        let procs: Vec<Proc> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| start_fleet_proxy(*p, sv.mock_port, dir, &sock, i, fleet))
            .collect();
        // Let both link to Redis.
        std::thread::sleep(Duration::from_millis(1500));
        let targets: Vec<Arc<Target>> = ports
            .iter()
            .map(|p| Arc::new(Target::new(Via::Proxy, *p, true, PROMPT)))
            .collect();
        let refs: Vec<&Proc> = procs.iter().collect();
        let (c0, e0) = redis_counts(&sock);
        let redis_cpu0 = redis.cpu();
        let mut r = run_split(rt, &targets, users, s, &refs, Duration::ZERO);
        let redis_cpu = redis.cpu().saturating_sub(redis_cpu0);
        let (c1, e1) = redis_counts(&sock);
        // The warm-up's commands are in the counts too: scale them to the measured share.
        let share = s.measure.as_secs_f64() / (s.measure + s.warmup).as_secs_f64();
        let scale = |d: u64| (d as f64 * share) as u64;
        let counts = (scale(c1.saturating_sub(c0)), scale(e1.saturating_sub(e0)));
        line(label, &mut r, redis_cpu, fleet.map(|_| counts));
    }
    drop(redis);
    failed
}

//! Test harness: the project's mock K2Think upstream plus a real k2proxy server (Pingora
//! `Server::run` with a test shutdown watch), both on loopback ports taken from `:0`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub mod redis;

use async_trait::async_trait;
use k2proxy::config::Config;
use k2proxy::mock::{MockConfig, MockServer, RecordedRequest};
use k2proxy::proxy::{build_server_with, App, RunArgs, ShutdownSignal, ShutdownSignalWatch};
use serde_json::Value;

pub mod grammar;

pub const MODEL: &str = "MBZUAI-IFM/K2-Think-v2";
/// The `models` section an operator of the old host (www.k2think.ai) gets by default, for
/// config files written against the old-host mock (`MockConfig::default()`).
pub const LEGACY_MODELS_YAML: &str = "models:\n\
  - {id: \"MBZUAI-IFM/K2-Think-v2\", upstream: \"MBZUAI-IFM/K2-Think-v2\"}\n\
  - {id: \"MBZUAI-IFM/K2-Think-v2-nothink\", upstream: \"MBZUAI-IFM/K2-Think-v2\", reasoning: false}\n";
pub const NOTHINK: &str = "MBZUAI-IFM/K2-Think-v2-nothink";

struct TestShutdown(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for TestShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().unwrap().take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// A fresh, empty directory under the system temp dir, unique to this test process.
pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("k2p-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Poll `check` until it holds; panics after `limit`. Returns how long it took.
pub fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    within_showing(limit, what, || {
        if check() {
            Ok(())
        } else {
            Err(String::new())
        }
    })
}

/// [`within`], for a check that says what it saw when it fails: the last failure's text
/// is in the panic message.
pub fn within_showing(
    limit: Duration,
    what: &str,
    mut check: impl FnMut() -> Result<(), String>,
) -> Duration {
    let start = Instant::now();
    loop {
        let seen = match check() {
            Ok(()) => return start.elapsed(),
            Err(seen) => seen,
        };
        assert!(
            start.elapsed() < limit,
            "{what}: not within {limit:?}\n{seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port that was free a moment ago and that no other test in this process was given.
///
/// The port is released before the server under test binds it, and the kernel may hand the
/// same port to the next `bind(0)`. Two tests given one port start two proxies on it: the
/// second one's bind fails and is retried in the background, while its test's requests go
/// to the first test's proxy (and its mock). So a port is never given out twice.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<std::collections::BTreeSet<u16>> =
        Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

pub fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("port {port} did not open");
}

/// A response read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }

    /// Assert an OpenAI error body with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].as_str().is_some(), "{v}");
        assert!(e.get("param").is_some(), "{v}");
        assert_eq!(e["code"], code, "{v}");
        v
    }
}

/// An SSE response from the proxy, decoded.
#[derive(Debug, Default)]
pub struct Sse {
    pub status: u16,
    pub raw: String,
    /// Every `data:` payload in order (`[DONE]` kept as a string value).
    pub events: Vec<Value>,
    pub done: bool,
}

impl Sse {
    pub fn parse(raw: &str) -> Sse {
        let mut s = Sse {
            raw: raw.to_string(),
            ..Sse::default()
        };
        for block in raw.split("\n\n").filter(|b| !b.trim().is_empty()) {
            let data = block
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not an SSE data event: {block:?}"));
            assert!(!s.done, "an event after [DONE]: {data}");
            if data == "[DONE]" {
                s.done = true;
                s.events.push(Value::String("[DONE]".into()));
            } else {
                s.events.push(
                    serde_json::from_str(data)
                        .unwrap_or_else(|e| panic!("bad JSON event {data:?}: {e}")),
                );
            }
        }
        s
    }

    fn chunks(&self) -> impl Iterator<Item = &Value> {
        self.events.iter().filter(|e| e.get("choices").is_some())
    }

    pub fn reasoning(&self) -> String {
        self.chunks()
            .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
            .collect()
    }

    pub fn content(&self) -> String {
        self.chunks()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect()
    }

    pub fn finish_reason(&self) -> Option<String> {
        self.chunks()
            .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
            .last()
            .map(str::to_string)
    }

    pub fn error(&self) -> Option<&Value> {
        self.events.iter().find(|e| e.get("error").is_some())
    }

    pub fn usage(&self) -> Option<&Value> {
        self.events
            .iter()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()))
    }

    /// The OpenAI stream contract: one id, role first, finish_reason only on the last
    /// choice chunk, `[DONE]` last.
    pub fn assert_well_formed(&self) {
        let chunks: Vec<&Value> = self.chunks().collect();
        assert!(!chunks.is_empty(), "no chunks: {}", self.raw);
        let id = chunks[0]["id"].as_str().unwrap();
        assert!(id.starts_with("chatcmpl-"), "{id}");
        for c in &chunks {
            assert_eq!(c["id"], id, "one id for the whole response");
            assert_eq!(c["object"], "chat.completion.chunk");
        }
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        for c in &chunks[1..] {
            assert!(
                c["choices"][0]["delta"].get("role").is_none(),
                "role only first"
            );
        }
        let with_choice: Vec<&&Value> = chunks
            .iter()
            .filter(|c| !c["choices"].as_array().unwrap().is_empty())
            .collect();
        let (last, rest) = with_choice.split_last().unwrap();
        assert!(
            last["choices"][0]["finish_reason"].is_string(),
            "{}",
            self.raw
        );
        for c in rest {
            assert!(
                c["choices"][0]["finish_reason"].is_null(),
                "finish only last: {}",
                self.raw
            );
        }
        assert!(self.done, "[DONE] missing: {}", self.raw);
        assert_eq!(self.events.last().unwrap(), "[DONE]");
    }
}

pub struct Env {
    pub rt: tokio::runtime::Runtime,
    pub mock: Option<MockServer>,
    pub app: Arc<App>,
    pub port: u16,
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// A multi-thread runtime for the mock and the test's client.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The project's mock K2Think upstream on a free loopback port.
pub fn start_mock(rt: &tokio::runtime::Runtime, cfg: MockConfig) -> MockServer {
    rt.block_on(MockServer::start("127.0.0.1:0".parse().unwrap(), cfg))
        .unwrap()
}

impl Env {
    /// Mock with `mock_cfg`, proxy with the default config pointed at it, changed by `edit`.
    /// A mock of the old host (it serves no K2 Horizon) gets the old host's catalogue, as
    /// `base_url: https://www.k2think.ai` would.
    pub fn start(mock_cfg: MockConfig, edit: impl FnOnce(&mut Config)) -> Env {
        let rt = runtime();
        let legacy = !mock_cfg
            .models
            .iter()
            .any(|m| m == k2proxy::provider::k2think::HORIZON_MODEL);
        let mock = start_mock(&rt, mock_cfg);
        let base = mock.base_url();
        let mut env = Env::start_with(rt, |c| {
            c.upstream.base_url = base;
            if legacy {
                c.models = k2proxy::config::legacy_models();
            }
            edit(c)
        });
        env.mock = Some(mock);
        env
    }

    /// Proxy only (no mock), with the default config changed by `edit`.
    pub fn start_with(rt: tokio::runtime::Runtime, edit: impl FnOnce(&mut Config)) -> Env {
        let port = free_port();
        let mut config = Config::parse("", "test").unwrap();
        config.server.listen = vec![format!("127.0.0.1:{port}")];
        config.server.threads = 2;
        config.retry.backoff = Duration::from_millis(10);
        config.logging.access_log = false;
        config.metrics.listen = None;
        edit(&mut config);
        Env::launch(rt, None, config, None, port)
    }

    /// Proxy started from a config file (so it can be reloaded), with a mock upstream whose
    /// address and the proxy's port `write_config` receives.
    pub fn start_file(
        mock_cfg: MockConfig,
        path: &std::path::Path,
        write_config: impl Fn(&str, u16) -> String,
    ) -> Env {
        let rt = runtime();
        let mock = start_mock(&rt, mock_cfg);
        let port = free_port();
        std::fs::write(path, write_config(&mock.base_url(), port)).unwrap();
        let config = Config::load(path).unwrap();
        Env::launch(rt, Some(mock), config, Some(path.to_path_buf()), port)
    }

    fn launch(
        rt: tokio::runtime::Runtime,
        mock: Option<MockServer>,
        config: Config,
        path: Option<std::path::PathBuf>,
        port: u16,
    ) -> Env {
        // Many servers run one after another in one test process. Pingora 0.9.1's
        // no-steal runtimes find their threads' handles in a process-wide thread-local
        // keyed by thread id; a later server's threads can be handed an earlier, stopped
        // server's runtime, and its listeners never open. One server per process (the
        // binary) is not affected; in-process servers use work stealing.
        let (server, app) =
            build_server_with(config, path, None, |c| c.work_stealing = true).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(TestShutdown(Mutex::new(Some(rx)))),
            });
        });
        wait_port(port);
        Env {
            rt,
            mock,
            app,
            port,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn mock(&self) -> &MockServer {
        self.mock.as_ref().expect("this env has a mock")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.mock()
            .requests()
            .into_iter()
            .filter(|r| r.path.contains("chat/completions"))
            .collect()
    }

    pub fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        self.rt.block_on(async {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.bytes().await.unwrap().to_vec();
            Resp {
                status,
                headers,
                body,
            }
        })
    }

    pub fn get(&self, path: &str) -> Resp {
        self.send(self.client.get(self.url(path)))
    }

    pub fn delete(&self, path: &str) -> Resp {
        self.send(self.client.delete(self.url(path)))
    }

    pub fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Resp {
        self.send(
            self.client
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
    }

    pub fn chat(&self, body: &Value) -> Resp {
        self.post("/v1/chat/completions", body.to_string())
    }

    pub fn stream(&self, body: &Value) -> Sse {
        let r = self.chat(body);
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.header("content-type")
                .unwrap()
                .starts_with("text/event-stream"),
            "{:?}",
            r.headers
        );
        let mut s = Sse::parse(&r.text());
        s.status = r.status;
        s
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(m) = self.mock.take() {
            self.rt.block_on(m.shutdown());
        }
    }
}

/// A chat request body; `prompt` may carry `[[mock: ...]]` directives.
pub fn chat_body(model: &str, prompt: &str, stream: bool) -> Value {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    })
}

/// Tokens for the pool, as the pool section wants them.
pub fn tokens(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The mock's `(reasoning, answer)` for `prompt` under `directives` (`key=value;...`).
pub fn expected(prompt: &str, directives: &str) -> (String, String) {
    k2proxy::mock::reply_for(prompt, &k2proxy::mock::Directives::parse(directives))
}

pub const PROXY_BIN: &str = env!("CARGO_BIN_EXE_k2proxy");

/// A k2proxy process, killed on drop.
pub struct Proc {
    pub child: std::process::Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The k2proxy binary on `config`, its access log (stdout) piped, diagnostics dropped.
pub fn spawn_proxy(config: &std::path::Path, port: u16) -> Proc {
    spawn_proxy_with(config, port, std::process::Stdio::null())
}

/// Like [`spawn_proxy`], with the diagnostics (stderr) going to `stderr`.
pub fn spawn_proxy_with(config: &std::path::Path, port: u16, stderr: std::process::Stdio) -> Proc {
    spawn_proxy_env(config, port, stderr, &[])
}

/// Like [`spawn_proxy_with`], with these environment variables set (`RUST_LOG` is unset
/// unless given here).
pub fn spawn_proxy_env(
    config: &std::path::Path,
    port: u16,
    stderr: std::process::Stdio,
    env: &[(&str, &str)],
) -> Proc {
    let child = std::process::Command::new(PROXY_BIN)
        .arg("-c")
        .arg(config)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    wait_port(port);
    Proc { child }
}

/// One raw HTTP/1.1 exchange (the request should say `Connection: close`): all the bytes
/// the server sent back.
pub fn raw(port: u16, req: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

//! The binaries as a user runs them: `k2proxy -t`, `k2proxy -c FILE`, `k2mock`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PROXY: &str = env!("CARGO_BIN_EXE_k2proxy");
const MOCK: &str = env!("CARGO_BIN_EXE_k2mock");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("k2p-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A raw HTTP/1.1 exchange (Connection: close); the whole response text. `extra` holds
/// more header lines, each ending in `\r\n`.
fn http(port: u16, method: &str, path: &str, extra: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn check_mode_accepts_the_shipped_config() {
    let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/k2proxy.yaml");
    let out = Command::new(PROXY)
        .args(["-t", "-c", conf])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));
}

#[test]
fn check_mode_names_the_bad_key_and_fails() {
    let cases = [
        (
            "upstream:\n  base_url: https://www.k2think.ai\n  retries: 3\n",
            "upstream.retries",
            "unknown field `retries`",
        ),
        (
            "retry:\n  max_attempts: 0\n",
            "retry.max_attempts",
            "at least 1",
        ),
        (
            "upstream:\n  mode: sometimes\n",
            "upstream.mode",
            "unknown variant `sometimes`",
        ),
        (
            "server:\n  listen: [\"localhost\"]\n",
            "server.listen[0]",
            "not an IP:port",
        ),
    ];
    for (i, (text, key, why)) in cases.iter().enumerate() {
        let f = temp_file(&format!("bad{i}.yaml"), text);
        let out = Command::new(PROXY)
            .arg("-t")
            .arg("-c")
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key) && err.contains(why), "{text} -> {err}");
        assert!(err.contains(&f.display().to_string()), "{err}");
    }
    let out = Command::new(PROXY)
        .args(["-t", "-c", "/nonexistent/k2proxy.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn check_mode_refuses_a_fifo_or_dev_zero_without_hanging() {
    // issue 16, item 4: `-t` on a FIFO must not wait for a writer, on /dev/zero must not
    // read for ever.
    let dir = std::env::temp_dir().join(format!("k2p-cli-kinds-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.yaml");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let zero = dir.join("zero.yaml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    for conf in [&fifo, &zero] {
        let mut child = Kill(
            Command::new(PROXY)
                .arg("-t")
                .arg("-c")
                .arg(conf)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "`k2proxy -t -c {}` hangs",
                conf.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .0
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(2), "{err}");
        assert!(
            err.contains("not a regular file") && err.contains(&conf.display().to_string()),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proxy_and_mock_binaries_serve_a_chat_end_to_end() {
    // the mock, as the README runs it by hand
    let mock_port = common::free_port();
    let mut mock = Kill(
        Command::new(MOCK)
            .args(["--listen", &format!("127.0.0.1:{mock_port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(mock.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    common::wait_port(mock_port);

    // the proxy, pointed at it
    let port = common::free_port();
    let metrics_port = common::free_port();
    let conf = temp_file(
        "serve.yaml",
        &format!(
            "server:\n  listen: [\"127.0.0.1:{port}\"]\n  grace_period: 1s\n\
             metrics:\n  listen: \"127.0.0.1:{metrics_port}\"\n\
             upstream:\n  base_url: \"http://127.0.0.1:{mock_port}\"\n\
             auth:\n  api_keys: [\"sk-cli-test-key\"]\n"
        ),
    );
    let _proxy = Kill(
        Command::new(PROXY)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    common::wait_port(port);
    let health = http(port, "GET", "/health", "", "");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let body = r#"{"model":"MBZUAI-IFM/K2-Think-v2","stream":true,"messages":[{"role":"user","content":"from the binary"}]}"#;
    let resp = http(
        port,
        "POST",
        "/v1/chat/completions",
        "Authorization: Bearer sk-cli-test-key\r\n",
        body,
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("text/event-stream"), "{resp}");
    assert!(
        resp.contains("reasoning_content") && resp.contains("data: [DONE]"),
        "{resp}"
    );
    assert!(resp.contains("\"content\":\"Echo:"), "{resp}");

    let unauth = http(port, "POST", "/v1/chat/completions", "", body);
    assert!(unauth.starts_with("HTTP/1.1 401"), "{unauth}");
}

#[test]
fn a_config_path_linked_to_a_system_file_is_refused_without_echoing_it() {
    // issue 16, item 10: a config path symlinked to /etc/passwd echoed the file's contents
    // in the error (and so in the log and /admin/config/status).
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first = passwd.lines().next().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("k2p-cli-passwd-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("k2proxy.yaml");
    std::os::unix::fs::symlink("/etc/passwd", &conf).unwrap();
    let out = Command::new(PROXY)
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for field in first.split(':').filter(|f| f.len() >= 3) {
        assert!(!err.contains(field), "{field:?} echoed: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Tests start many servers in one process on ports from `common::free_port`; the kernel
/// hands a just-released port out again (136 times in 2,000 binds here), and two servers
/// given one port answer each other's tests.
#[test]
fn the_test_harness_never_hands_out_a_port_twice() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..2000 {
        let port = common::free_port();
        assert!(seen.insert(port), "port {port} handed out twice");
    }
}

//! The operator dashboard (`GET /admin`) driven in a real headless Chromium through
//! chromedriver, over the W3C WebDriver HTTP protocol (a small client below).
//!
//! Chromium and chromedriver are required: a missing binary fails the test.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::redis::RedisServer;
use common::{chat_body, Env, MODEL};
use k2proxy::config::providers::{ProviderEntry, ZaiSection};
use k2proxy::mock::zai::{ZaiMock, ZaiMockConfig};
use k2proxy::mock::MockConfig;
use reqwest::Method;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const KEY: &str = "dashboard-admin-key-1234";
const GOOD: &str = "tok-good-aaaaaaaaaaaaaaaa";
const BAD: &str = "tok-bad-bbbbbbbbbbbbbbbb;fault=401";
const OK: &str = "tok-ok-cccccccccccccccccc";
const NEW: &str = "tok-new-dddddddddddddddddd";
/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
const WAIT: Duration = Duration::from_secs(10);

/// A chromedriver process (and the Chromium profile it uses); killed on drop, after the
/// browser session is deleted so that Chromium exits too, even when the test panics.
struct Driver {
    child: Child,
    port: u16,
    profile: PathBuf,
    session: Option<String>,
}

impl Driver {
    fn start() -> Driver {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the dashboard test needs the Debian packages chromium and chromium-driver"
            );
        }
        let port = common::free_port();
        let profile = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dashboard-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {CHROMEDRIVER}: {e}"));
        common::wait_port(port);
        Driver {
            child,
            port,
            profile,
            session: None,
        }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Delete the session with a plain blocking request (usable from `drop`).
    fn delete_session_blocking(&mut self) {
        let Some(id) = self.session.take() else {
            return;
        };
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let req = format!(
            "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(req.as_bytes()).is_ok() {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.delete_session_blocking();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One WebDriver session.
struct Browser {
    http: reqwest::Client,
    url: String,
}

impl Browser {
    async fn open(driver: &mut Driver) -> Browser {
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    format!("--user-data-dir={}", driver.profile.display()),
                    "--window-size=1280,900",
                ],
            },
        }}});
        let r = http
            .post(format!("{}/session", driver.base()))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers");
        let v: Value = r.json().await.unwrap();
        let id = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_string();
        driver.session = Some(id.clone());
        Browser {
            http,
            url: format!("{}/session/{id}", driver.base()),
        }
    }

    /// A WebDriver command; `Err` carries the W3C error and message.
    async fn try_cmd(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.map_err(|e| e.to_string())?;
        let ok = r.status().is_success();
        let v: Value = r.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(v["value"].clone())
        } else {
            Err(format!(
                "{} ({})",
                v["value"]["error"], v["value"]["message"]
            ))
        }
    }

    async fn cmd(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let what = format!("{method} {path}");
        self.try_cmd(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver {what}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.cmd(Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .cmd(
                Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    async fn find(&self, css: &str) -> Option<String> {
        self.find_all(css).await.into_iter().next()
    }

    async fn must(&self, css: &str) -> String {
        self.find(css)
            .await
            .unwrap_or_else(|| panic!("no element matches {css}"))
    }

    /// Click `el`, scrolled to the middle of the window first so that a toast (bottom
    /// right) does not cover it.
    async fn click(&self, el: &str) {
        self.cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "arguments[0].scrollIntoView({block: 'center', inline: 'center'});",
                "args": [{ELEMENT: el}],
            })),
        )
        .await;
        self.cmd(
            Method::POST,
            &format!("/element/{el}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, el: &str, text: &str) {
        self.cmd(
            Method::POST,
            &format!("/element/{el}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    async fn text(&self, el: &str) -> String {
        let v = self
            .cmd(Method::GET, &format!("/element/{el}/text"), None)
            .await;
        v.as_str().unwrap_or_default().to_string()
    }

    async fn attr(&self, el: &str, name: &str) -> Option<String> {
        let v = self
            .cmd(
                Method::GET,
                &format!("/element/{el}/attribute/{name}"),
                None,
            )
            .await;
        v.as_str().map(str::to_string)
    }

    async fn displayed(&self, el: &str) -> bool {
        let v = self
            .cmd(Method::GET, &format!("/element/{el}/displayed"), None)
            .await;
        v.as_bool().unwrap()
    }

    /// The text of the first element matching `css`, or "" (tolerates re-rendering).
    async fn text_of(&self, css: &str) -> String {
        let Ok(v) = self
            .try_cmd(
                Method::POST,
                "/execute/sync",
                Some(json!({
                    "script": "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';",
                    "args": [css],
                })),
            )
            .await
        else {
            return String::new();
        };
        v.as_str().unwrap_or_default().to_string()
    }

    async fn source(&self) -> String {
        let v = self.cmd(Method::GET, "/source", None).await;
        v.as_str().unwrap().to_string()
    }

    /// Wait for a `confirm()` dialog, accept it and return its text.
    async fn accept_alert(&self) -> String {
        let text = eventually("a confirmation dialog", async || {
            self.try_cmd(Method::GET, "/alert/text", None).await.ok()
        })
        .await;
        self.cmd(Method::POST, "/alert/accept", Some(json!({})))
            .await;
        text.as_str().unwrap_or_default().to_string()
    }

    async fn set_window(&self, width: u32, height: u32) {
        self.cmd(
            Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    async fn screenshot(&self, path: &Path) {
        let v = self.cmd(Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }

    async fn quit(self, driver: &mut Driver) {
        self.cmd(Method::DELETE, "", None).await;
        driver.session = None;
    }
}

/// Poll `probe` every 100 ms until it gives a value; panic after 10 s.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /admin/tokens/stats` with the admin key: the `data` object.
async fn stats(env: &Env) -> Value {
    let r = env
        .client
        .get(env.url("/admin/tokens/stats"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["status"], "success", "{v}");
    v["data"].clone()
}

fn token_by_mask<'a>(stats: &'a Value, masked: &str) -> Option<&'a Value> {
    stats["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["token"] == masked)
}

/// Data rows of the pool table.
async fn rows(b: &Browser) -> Vec<String> {
    b.find_all("#pool-table tbody tr[data-index]").await
}

/// A row of the providers table, as the page shows it.
#[derive(Debug)]
struct ProviderRow {
    ready: String,
    kind: String,
    mode: String,
    /// The badge's text.
    badge: String,
    capacity: String,
    models: String,
    /// The model ids (the models cell's tooltip).
    models_title: String,
    error: String,
}

/// The providers table's row for `name`, once it is there (`None` while it is not).
async fn provider_row(b: &Browser, name: &str) -> Option<ProviderRow> {
    let v = b
        .try_cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "const tr = [...document.querySelectorAll('#providers-table tbody tr[data-provider]')]
                    .find(r => r.dataset.provider === arguments[0]);
                if (!tr) return null;
                const c = tr.cells;
                return {ready: tr.dataset.ready, kind: c[1].innerText, mode: c[2].innerText,
                        badge: c[3].innerText, capacity: c[4].innerText, models: c[5].innerText,
                        models_title: c[5].title, error: c[6].innerText};",
                "args": [name],
            })),
        )
        .await
        .ok()?;
    if v.is_null() {
        return None;
    }
    let f = |k: &str| v[k].as_str().unwrap_or_default().trim().to_string();
    Some(ProviderRow {
        ready: f("ready"),
        kind: f("kind"),
        mode: f("mode"),
        badge: f("badge"),
        capacity: f("capacity"),
        models: f("models"),
        models_title: f("models_title"),
        error: f("error"),
    })
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn dashboard_in_headless_chromium() {
    let started = Instant::now();
    let env = Env::start(MockConfig::default(), |c| {
        c.admin.key = Some(KEY.into());
        c.pool.tokens = common::tokens(&[GOOD, BAD, OK]);
        c.pool.max_failures = 1;
    });
    let bad_masked = k2proxy::secret::mask(BAD);
    let new_masked = k2proxy::secret::mask(NEW);

    // Traffic until the 401 token is struck out.
    let mut bad_index = None;
    for _ in 0..10 {
        let r = env.chat(&chat_body(MODEL, "x", false));
        assert_eq!(r.status, 200, "{}", r.text());
        let s = env.rt.block_on(stats(&env));
        let t = token_by_mask(&s, &bad_masked).expect("bad token listed");
        if t["state"] == "disabled" {
            bad_index = t["index"].as_u64();
            break;
        }
    }
    let bad_index = bad_index.expect("the fault=401 token is disabled after a few requests");

    let mut driver = Driver::start();
    env.rt.block_on(async {
        let b = Browser::open(&mut driver).await;
        b.goto(&env.url("/admin")).await;

        // A wrong key: an error, the key form again, no table.
        let input = b.must("#admin-key").await;
        assert_eq!(b.attr(&input, "type").await.as_deref(), Some("password"));
        b.type_into(&input, "wrong-key-000000000000").await;
        b.click(&b.must("#connect").await).await;
        let error = eventually("the wrong-key error", async || {
            let e = b.find("#login-error").await?;
            b.displayed(&e).await.then_some(())?;
            Some(b.text(&e).await)
        })
        .await;
        assert!(error.contains("refused"), "{error}");
        assert!(!b.displayed(&b.must("#dashboard").await).await);
        assert!(b.displayed(&b.must("#admin-key").await).await);
        assert!(rows(&b).await.is_empty());

        // The right key: the pool with the struck token disabled.
        b.type_into(&b.must("#admin-key").await, KEY).await;
        b.click(&b.must("#connect").await).await;
        let row_css = format!("#pool-table tbody tr[data-index=\"{bad_index}\"]");
        eventually("3 rows with the bad token disabled", async || {
            (rows(&b).await.len() == 3).then_some(())?;
            let row = b.find(&row_css).await?;
            (b.attr(&row, "data-state").await? == "disabled").then_some(())
        })
        .await;
        assert!(!b.displayed(&b.must("#login").await).await);
        let row = b.must(&row_css).await;
        let row_text = b.text(&row).await;
        assert!(row_text.contains(&bad_masked), "{row_text}");
        assert!(row_text.contains("disabled"), "{row_text}");
        assert!(
            row_text.contains("1 / 1"),
            "strikes / max_failures: {row_text}"
        );
        assert_eq!(b.text(&b.must("#sum-total").await).await, "3");
        assert_eq!(b.text(&b.must("#sum-disabled").await).await, "1");
        let status = b.text(&b.must("#status-line").await).await;
        assert!(status.contains("Live"), "{status}");
        let page = b.source().await;
        for raw in [GOOD, BAD, OK, "bbbbbbbb", "aaaaaaaa", KEY] {
            assert!(!page.contains(raw), "{raw} appears in the page");
        }
        assert!(page.contains(&k2proxy::secret::mask(GOOD)));

        // Panels: no accounts configured; the config status.
        eventually("the updater panel", async || {
            b.text_of("#updater-body")
                .await
                .contains("No accounts configured")
                .then_some(())
        })
        .await;
        assert!(!b.displayed(&b.must("#force-refresh").await).await);
        eventually("the config panel", async || {
            b.text_of("#config-body")
                .await
                .contains("Reloads")
                .then_some(())
        })
        .await;

        // The providers panel: K2Think alone, ready, with the pool's counts.
        let k2 = eventually("the k2think provider row", async || {
            provider_row(&b, "k2think").await
        })
        .await;
        assert_eq!(k2.ready, "true", "{k2:?}");
        assert_eq!(k2.badge, "ready", "{k2:?}");
        assert_eq!(k2.kind, "k2think", "{k2:?}");
        assert_eq!(k2.mode, "user", "{k2:?}");
        assert!(
            k2.capacity.contains("3 tokens") && k2.capacity.contains("1 disabled"),
            "{k2:?}"
        );
        let k2_models = env.app.snapshot().config.models.len();
        assert!(k2_models > 0);
        assert_eq!(k2.models, k2_models.to_string(), "{k2:?}");
        assert!(k2.models_title.contains(MODEL), "{k2:?}");
        assert_eq!(k2.error, "—", "{k2:?}");
        assert_eq!(
            b.find_all("#providers-table tbody tr[data-provider]")
                .await
                .len(),
            1
        );
        let h2 = b.text(&b.must("section.card#providers h2").await).await;
        assert_eq!(h2, "Providers");

        b.screenshot(&target_dir().join("dashboard.png")).await;

        // Reset the struck token from its row.
        b.click(
            &b.must(&format!("{row_css} button[data-action=\"reset\"]"))
                .await,
        )
        .await;
        eventually("the reset token active", async || {
            let row = b.find(&row_css).await?;
            (b.attr(&row, "data-state").await? == "active").then_some(())
        })
        .await;
        let s = stats(&env).await;
        let t = &s["tokens"][bad_index as usize];
        assert_eq!(t["token"], bad_masked.as_str(), "{s}");
        assert_eq!(t["state"], "active", "{t}");
        assert_eq!(t["strikes"], 0, "{t}");
        eventually("the reset toast", async || {
            b.text_of("#toasts").await.contains("reset").then_some(())
        })
        .await;

        // Add a token through the form.
        b.type_into(&b.must("#add-token-input").await, NEW).await;
        b.click(&b.must("#add-token").await).await;
        let new_row = eventually("the added token's row", async || {
            let all = rows(&b).await;
            (all.len() == 4).then_some(())?;
            for r in all {
                if b.text(&r).await.contains(&new_masked) {
                    return Some(r);
                }
            }
            None
        })
        .await;
        assert_eq!(
            b.attr(&new_row, "data-state").await.as_deref(),
            Some("active")
        );
        let s = stats(&env).await;
        assert_eq!(s["total_tokens"], 4, "{s}");
        let t = token_by_mask(&s, &new_masked).expect("the new token in the API");
        assert_eq!(t["source"], "file", "{t}");
        let new_index = t["index"].as_u64().unwrap();
        let input = b.must("#add-token-input").await;
        assert_eq!(
            b.cmd(
                Method::GET,
                &format!("/element/{input}/property/value"),
                None
            )
            .await,
            "",
            "the form is cleared"
        );

        // A failed reload (this server has no config file) is shown, not swallowed.
        b.click(&b.must("#reload-config").await).await;
        eventually("the failed reload in the config panel", async || {
            let text = b.text_of("#config-body").await;
            (text.contains("failure") && text.contains("without a configuration file"))
                .then_some(())
        })
        .await;
        eventually("the reload error toast", async || {
            b.text_of("#toasts")
                .await
                .contains("Reload failed")
                .then_some(())
        })
        .await;

        // Remove the added token (after the confirmation dialog).
        let remove = format!(
            "#pool-table tbody tr[data-index=\"{new_index}\"] button[data-action=\"remove\"]"
        );
        b.click(&b.must(&remove).await).await;
        let question = b.accept_alert().await;
        assert!(question.contains(&new_masked), "{question}");
        eventually("the removed token gone", async || {
            (rows(&b).await.len() == 3).then_some(())
        })
        .await;
        let s = stats(&env).await;
        assert_eq!(s["total_tokens"], 3, "{s}");
        assert!(token_by_mask(&s, &new_masked).is_none(), "{s}");

        // A narrow window still works (and is worth a look).
        b.set_window(420, 900).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        b.screenshot(&target_dir().join("dashboard-narrow.png"))
            .await;

        // No fleet section: the fleet card stays hidden, with no rows.
        eventually("a poll after the last action", async || {
            b.text_of("#status-line")
                .await
                .contains("Live")
                .then_some(())
        })
        .await;
        assert!(!b.displayed(&b.must("#fleet").await).await);
        assert!(b
            .find_all("#fleet-table tbody tr[data-instance]")
            .await
            .is_empty());

        // Sign out: the key form again.
        b.click(&b.must("#sign-out").await).await;
        eventually("the key form after signing out", async || {
            b.displayed(&b.must("#login").await).await.then_some(())
        })
        .await;
        let kept = b
            .cmd(
                Method::POST,
                "/execute/sync",
                Some(json!({"script": "return sessionStorage.length;", "args": []})),
            )
            .await;
        assert_eq!(kept, 0, "the key is cleared from sessionStorage");

        b.quit(&mut driver).await;
    });
    drop(driver);
    eprintln!("dashboard test took {:?}", started.elapsed());
}

/// The providers panel with a Z.AI provider in guest mode next to K2Think, and one whose
/// configuration cannot be used (not ready, its error shown).
#[test]
fn dashboard_shows_the_providers_in_headless_chromium() {
    let rt = common::runtime();
    let zai = rt
        .block_on(ZaiMock::start(
            "127.0.0.1:0".parse().unwrap(),
            ZaiMockConfig::default(),
        ))
        .unwrap();
    let zai_base = zai.base_url();
    let k2 = common::start_mock(&rt, MockConfig::horizon());
    let k2_base = k2.base_url();
    let mut env = Env::start_with(rt, |c| {
        c.admin.key = Some(KEY.into());
        c.upstream.base_url = k2_base;
        c.pool.tokens = common::tokens(&[GOOD]);
        let z = ZaiSection {
            base_url: zai_base,
            guests: 2,
            ..ZaiSection::default()
        };
        c.providers
            .insert("zai".to_string(), ProviderEntry::Zai(Box::new(z)));
        c.models.extend(k2proxy::config::zai_models("zai"));
        let broken = ZaiSection {
            base_url: "ftp://nowhere.invalid".to_string(),
            ..ZaiSection::default()
        };
        c.providers.insert(
            "zai-broken".to_string(),
            ProviderEntry::Zai(Box::new(broken)),
        );
    });
    env.mock = Some(k2);
    // One request through Z.AI, so that a guest is live.
    let r = env.chat(&chat_body("GLM-4.7", "hello", false));
    assert_eq!(r.status, 200, "{}", r.text());

    let mut driver = Driver::start();
    env.rt.block_on(async {
        let b = Browser::open(&mut driver).await;
        b.goto(&env.url("/admin")).await;
        b.type_into(&b.must("#admin-key").await, KEY).await;
        b.click(&b.must("#connect").await).await;

        eventually("three provider rows", async || {
            (b.find_all("#providers-table tbody tr[data-provider]")
                .await
                .len()
                == 3)
                .then_some(())
        })
        .await;
        assert!(b.find("#providers-table tbody tr.empty").await.is_none());

        let k2 = provider_row(&b, "k2think").await.expect("the k2think row");
        assert_eq!(
            (k2.ready.as_str(), k2.kind.as_str(), k2.mode.as_str()),
            ("true", "k2think", "user"),
            "{k2:?}"
        );
        assert!(!k2.models_title.contains("GLM"), "{k2:?}");

        let z = provider_row(&b, "zai").await.expect("the zai row");
        assert_eq!(z.ready, "true", "{z:?}");
        assert_eq!(z.badge, "ready", "{z:?}");
        assert_eq!(z.kind, "zai", "{z:?}");
        assert_eq!(z.mode, "guest", "{z:?}");
        assert!(z.capacity.contains("/ 2 guests live"), "{z:?}");
        let zai_models: Vec<String> = k2proxy::config::zai_models("zai")
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert!(!zai_models.is_empty());
        assert_eq!(z.models, zai_models.len().to_string(), "{z:?}");
        for id in &zai_models {
            assert!(z.models_title.contains(id.as_str()), "{id} in {z:?}");
        }
        assert!(z.models_title.contains("GLM-4.7"), "{z:?}");
        assert_eq!(z.error, "—", "{z:?}");
        // The API agrees with the page.
        let api: Value = env
            .client
            .get(env.url("/admin/providers"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let live = api["data"]["zai"]["guests"]["live"].as_u64().unwrap();
        assert!(live >= 1, "{api}");
        assert!(
            z.capacity.starts_with(&format!("{live} / 2")),
            "{z:?} vs {api}"
        );

        let broken = provider_row(&b, "zai-broken")
            .await
            .expect("the zai-broken row");
        assert_eq!(broken.ready, "false", "{broken:?}");
        assert_eq!(broken.badge, "not ready", "{broken:?}");
        assert_eq!(broken.kind, "zai", "{broken:?}");
        assert!(broken.error.contains("ftp://nowhere.invalid"), "{broken:?}");
        let row = b
            .must("#providers-table tbody tr[data-provider=\"zai-broken\"]")
            .await;
        assert_eq!(b.attr(&row, "data-ready").await.as_deref(), Some("false"));

        b.screenshot(&target_dir().join("dashboard-providers.png"))
            .await;
        b.quit(&mut driver).await;
    });
    drop(driver);
}

/// A row of the fleet table, as the page shows it.
#[derive(Debug)]
struct FleetRow {
    instance: String,
    drift: String,
    mode: String,
    /// The whole row's visible text.
    text: String,
    /// Whether the "config differs" marker is displayed.
    drift_marker: bool,
}

async fn fleet_rows(b: &Browser) -> Vec<FleetRow> {
    let v = b
        .try_cmd(
            Method::POST,
            "/execute/sync",
            Some(json!({
                "script": "return [...document.querySelectorAll('#fleet-table tbody tr[data-instance]')].map(tr => ({
                    instance: tr.dataset.instance, drift: tr.dataset.drift, mode: tr.dataset.mode,
                    text: tr.innerText,
                    drift_marker: [...tr.querySelectorAll('.drift')].some(e => e.offsetParent !== null)}));",
                "args": [],
            })),
        )
        .await
        .unwrap_or(Value::Null);
    let f = |r: &Value, k: &str| r[k].as_str().unwrap_or_default().trim().to_string();
    v.as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| FleetRow {
                    instance: f(r, "instance"),
                    drift: f(r, "drift"),
                    mode: f(r, "mode"),
                    text: f(r, "text"),
                    drift_marker: r["drift_marker"].as_bool().unwrap_or(true),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The fleet panel: two instances sharing a real `redis-server`, seen from the first one's
/// dashboard; the reload button reaches the fleet.
#[test]
fn dashboard_shows_the_fleet_in_headless_chromium() {
    let redis = RedisServer::start("dashboard");
    let rt = common::runtime();
    let cfg = MockConfig::default();
    let legacy = !cfg
        .models
        .iter()
        .any(|m| m == k2proxy::provider::k2think::HORIZON_MODEL);
    let mock = common::start_mock(&rt, cfg);
    // One upstream for both, so that their configurations are the same (no drift).
    let instances: Vec<Env> = (0..2)
        .map(|i| {
            Env::start_with(common::runtime(), |c| {
                c.admin.key = Some(KEY.into());
                c.upstream.base_url = mock.base_url();
                if legacy {
                    c.models = k2proxy::config::legacy_models();
                }
                c.pool.tokens = common::tokens(&[GOOD, OK]);
                c.fleet = Some(redis.fleet("test-dashboard", &format!("i{i}")));
            })
        })
        .collect();
    let env = &instances[0];

    let mut driver = Driver::start();
    env.rt.block_on(async {
        // Both instances heard from, in shared mode.
        let view = eventually("two instances in /admin/fleet", async || {
            let v: Value = env
                .client
                .get(env.url("/admin/fleet"))
                .bearer_auth(KEY)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let d = v["data"].clone();
            (d["mode"] == "shared" && d["instances"].as_array()?.len() == 2).then_some(d)
        })
        .await;
        assert_eq!(view["enabled"], true, "{view}");
        assert_eq!(view["instance_id"], "i0", "{view}");

        let b = Browser::open(&mut driver).await;
        b.goto(&env.url("/admin")).await;
        b.type_into(&b.must("#admin-key").await, KEY).await;
        b.click(&b.must("#connect").await).await;

        let rows = eventually("the fleet card with two rows", async || {
            let card = b.find("#fleet").await?;
            b.displayed(&card).await.then_some(())?;
            let rows = fleet_rows(&b).await;
            (rows.len() == 2).then_some(rows)
        })
        .await;
        assert_eq!(b.text(&b.must("#fleet h2").await).await, "Fleet");
        assert_eq!(b.text(&b.must("#fleet-name").await).await, "test-dashboard");
        let badge = b.must("#fleet-mode").await;
        assert_eq!(b.text(&badge).await, "shared");
        let class = b.attr(&badge, "class").await.unwrap_or_default();
        assert!(class.split(' ').any(|c| c == "ready"), "{class}");
        let body = b.text_of("#fleet-body").await;
        assert!(
            body.contains("This instance") && body.contains("i0"),
            "{body}"
        );

        let ids: Vec<&str> = rows.iter().map(|r| r.instance.as_str()).collect();
        assert_eq!(ids, ["i0", "i1"], "{rows:?}");
        for r in &rows {
            assert_eq!(r.mode, "shared", "{r:?}");
            assert!(r.text.contains("shared"), "{r:?}");
            assert_eq!(r.drift, "false", "{r:?}");
            assert!(!r.drift_marker, "{r:?}");
            assert!(!r.text.contains("config differs"), "{r:?}");
            assert!(r.text.contains(env!("CARGO_PKG_VERSION")), "{r:?}");
        }
        assert!(rows[0].text.contains("(this one)"), "{rows:?}");
        assert!(!rows[1].text.contains("(this one)"), "{rows:?}");
        let own = b.must("#fleet-table tbody tr[data-instance=\"i0\"]").await;
        assert_eq!(b.attr(&own, "data-self").await.as_deref(), Some("true"));

        b.cmd(
            Method::POST,
            "/execute/sync",
            Some(
                json!({"script": "document.getElementById('fleet').scrollIntoView();", "args": []}),
            ),
        )
        .await;
        b.screenshot(&target_dir().join("dashboard-fleet.png"))
            .await;

        // The reload button asks the fleet, and says so.
        b.click(&b.must("#fleet-reload").await).await;
        let toast = eventually("the fleet reload toast", async || {
            let t = b.text_of("#toasts").await;
            t.contains("Asked the fleet to reload").then_some(t)
        })
        .await;
        assert!(b.find("#toasts .toast.error").await.is_none(), "{toast}");

        b.quit(&mut driver).await;
    });
    drop(driver);
    drop(instances);
    drop(mock);
    drop(rt);
    drop(redis);
}

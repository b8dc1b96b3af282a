//! Hot reload: three triggers (a change to the file on disk, `SIGHUP`,
//! `POST /admin/config/reload`) call one function, [`App::reload`]. The new file is parsed
//! and validated first and swapped in atomically only when valid; every request keeps the
//! snapshot it started with. A bad edit keeps the old configuration serving.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use log::{error, info, warn};
use notify::{EventKind, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use super::{load_tokens, pool_settings, App, Snapshot};
use crate::config::diff::diff;
use crate::config::Config;

/// Editors write a file in several steps; wait this long after the first event.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The last reload attempt, as `GET /admin/config/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadAttempt {
    /// Unix seconds.
    pub at: u64,
    /// `file`, `sighup`, `admin`.
    pub trigger: String,
    /// `success` or `failure`.
    pub result: &'static str,
    /// Why the file was refused: file, key, line and column.
    pub error: Option<String>,
    /// Changed key paths (values are never shown).
    pub changed: Vec<String>,
    /// Changed keys that take effect only after a restart or graceful upgrade.
    pub need_restart: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadStatus {
    pub config_file: Option<String>,
    /// Unix seconds when the running configuration was loaded.
    pub loaded_at: u64,
    pub reloads: u64,
    pub failures: u64,
    pub last_attempt: Option<ReloadAttempt>,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl App {
    /// Re-read the configuration file (and the tokens file) and apply what is valid.
    pub fn reload(&self, trigger: &str) -> ReloadAttempt {
        let _serial = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut attempt = ReloadAttempt {
            at: unix_now(),
            trigger: trigger.to_string(),
            result: "failure",
            error: None,
            changed: Vec::new(),
            need_restart: Vec::new(),
        };
        match self.try_reload() {
            Ok((changed, need_restart)) => {
                attempt.result = "success";
                if !changed.is_empty() {
                    info!(
                        "config reloaded ({trigger}): changed {}",
                        changed.join(", ")
                    );
                }
                if !need_restart.is_empty() {
                    warn!(
                        "config reload ({trigger}): {} change only after a restart or graceful upgrade",
                        need_restart.join(", ")
                    );
                }
                attempt.changed = changed;
                attempt.need_restart = need_restart;
            }
            Err(e) => {
                error!("config reload ({trigger}) refused, the previous configuration keeps serving: {e}");
                attempt.error = Some(e);
            }
        }
        self.metrics
            .reloads
            .with_label_values(&[attempt.result, trigger])
            .inc();
        let mut status = self.reload_status.lock().unwrap_or_else(|p| p.into_inner());
        status.reloads += 1;
        if attempt.result == "success" {
            status.loaded_at = attempt.at;
            self.metrics.config_loaded_at.set(attempt.at as i64);
        } else {
            status.failures += 1;
        }
        status.last_attempt = Some(attempt.clone());
        attempt
    }

    fn try_reload(&self) -> Result<(Vec<String>, Vec<String>), String> {
        let path = self
            .config_path
            .as_ref()
            .ok_or_else(|| "the server was started without a configuration file".to_string())?;
        let (config, doc) = Config::load_with_document(path).map_err(|e| e.to_string())?;
        let old = self.snapshot();
        for dropped in old.config.check_dropped_guards(&config, &doc)? {
            warn!("config reload from {}: removes {dropped}", path.display());
        }
        let tokens = load_tokens(&config)?;
        let changes = diff(&old.config, &config);
        let level = config.logging.level.clone();
        let settings = pool_settings(&config);
        let snapshot = Snapshot::new(config)?;
        self.pool.set_settings(settings);
        self.pool.set_tokens(tokens);
        self.state.store(Arc::new(snapshot));
        if std::env::var_os("RUST_LOG").is_none() {
            if let Ok(l) = level.parse::<log::LevelFilter>() {
                log::set_max_level(l);
            }
        }
        Ok((changes.changed, changes.need_restart))
    }

    pub fn reload_status(&self) -> ReloadStatus {
        self.reload_status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Reloads when the configuration file or the tokens file changes on disk. Watches their
/// directories, because editors and atomic writers replace files by rename.
pub struct ConfigWatcher {
    pub app: Arc<App>,
}

impl ConfigWatcher {
    /// The files whose change triggers a reload, as the watcher reports them.
    fn watched_files(&self) -> HashSet<PathBuf> {
        let snap = self.app.snapshot();
        let mut files = HashSet::new();
        let candidates = self
            .app
            .config_path
            .iter()
            .cloned()
            .chain(snap.config.pool.tokens_file.iter().map(PathBuf::from));
        for f in candidates {
            files.insert(absolute(&f));
        }
        files
    }
}

/// `path` with its directory made canonical (the file itself may not exist yet).
fn absolute(path: &Path) -> PathBuf {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let dir = dir.canonicalize().unwrap_or(dir);
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let files = self.watched_files();
        if files.is_empty() {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
        let mut watcher = match notify::recommended_watcher(
            move |res: notify::Result<notify::Event>| {
                if let Ok(ev) = res {
                    if !matches!(ev.kind, EventKind::Access(_)) {
                        let _ = tx.send(ev.paths);
                    }
                }
            },
        ) {
            Ok(w) => w,
            Err(e) => {
                warn!("cannot watch the configuration for changes ({e}); SIGHUP and the admin API still reload it");
                return;
            }
        };
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        for d in &dirs {
            if let Err(e) = watcher.watch(d, RecursiveMode::NonRecursive) {
                warn!("cannot watch {} ({e})", d.display());
            }
        }
        info!(
            "watching {} for changes",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                paths = rx.recv() => {
                    let Some(paths) = paths else { break };
                    let files = self.watched_files();
                    if !paths.iter().any(|p| files.contains(&absolute(p))) {
                        continue;
                    }
                    tokio::time::sleep(DEBOUNCE).await;
                    while rx.try_recv().is_ok() {}
                    self.app.reload("file");
                }
            }
        }
    }
}

/// Reloads on `SIGHUP` (what `systemctl reload` sends).
pub struct SighupReload {
    pub app: Arc<App>,
}

#[async_trait]
impl BackgroundService for SighupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!("cannot listen for SIGHUP ({e})");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    self.app.reload("sighup");
                }
            }
        }
    }
}

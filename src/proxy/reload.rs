//! Hot reload: three triggers (a change to the file on disk, `SIGHUP`,
//! `POST /admin/config/reload`) call one function, [`App::reload`]. The new file is parsed
//! and validated first and swapped in atomically only when valid; every request keeps the
//! snapshot it started with. A bad edit keeps the old configuration serving.
//!
//! A reload never blocks a request: it is async, its file work runs on a blocking thread
//! under a deadline, and reloads are serialized by an async lock taken under a deadline, so
//! a file that stalls its reader (a FIFO, a hung network mount) fails the trigger with a
//! clear message after a few seconds while the running configuration keeps serving.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use inotify::{Inotify, WatchDescriptor, WatchMask};
use log::{error, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Serialize;

use tokio::sync::OwnedMutexGuard;

use super::{load_tokens, pool_settings, App, Snapshot};
use crate::config::diff::diff;
use crate::config::Config;
use crate::pool::Source;
use crate::secret::Secret;

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

/// Longest a reload may spend reading the configuration and tokens files. Past it the
/// trigger gets a failure and the running configuration keeps serving; the read itself goes
/// on in the background (a blocking read cannot be cancelled) and its result is dropped.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);

/// Longest a reload waits for the one before it. A healthy reload takes milliseconds; one
/// that waits longer is behind a read that is stuck, and fails rather than queue up.
pub const LOCK_DEADLINE: Duration = Duration::from_secs(2);

/// What a reload reads from disk: the configuration, its YAML document, and the tokens.
type Loaded = (Config, serde_yaml::Value, Vec<(Secret, Source)>);

/// Read the configuration at `path` and the tokens file it names. Blocking file work: it
/// runs on a blocking thread, never on a request worker.
fn read_files(path: &Path) -> Result<Loaded, String> {
    let (config, doc) = Config::load_with_document(path).map_err(|e| e.to_string())?;
    let tokens = load_tokens(&config)?;
    Ok((config, doc, tokens))
}

/// Take the reload lock, waiting at most `deadline`.
async fn lock_within(
    lock: &Arc<tokio::sync::Mutex<()>>,
    deadline: Duration,
) -> Result<OwnedMutexGuard<()>, String> {
    tokio::time::timeout(deadline, lock.clone().lock_owned())
        .await
        .map_err(|_| {
            format!(
                "another reload has been running for over {}s (reading the config file may be stuck); try again later",
                deadline.as_secs_f64()
            )
        })
}

/// Run `work` on a blocking thread while holding `guard`, waiting at most `deadline` for
/// it. The guard travels with the work, so a read that is stuck keeps later reloads out
/// (they fail after [`LOCK_DEADLINE`]) instead of piling more stuck threads up; it is given
/// back with the result, so the caller stays serialized while it applies the result.
async fn blocking_within<T: Send + 'static>(
    guard: OwnedMutexGuard<()>,
    deadline: Duration,
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<(T, OwnedMutexGuard<()>), String> {
    let task = tokio::task::spawn_blocking(move || (work(), guard));
    match tokio::time::timeout(deadline, task).await {
        Err(_) => Err(format!(
            "reading the config file took longer than {}s; the previous configuration keeps serving",
            deadline.as_secs_f64()
        )),
        Ok(Err(e)) => Err(format!("reading the config file failed: {e}")),
        Ok(Ok((result, guard))) => result.map(|v| (v, guard)),
    }
}

impl App {
    /// Re-read the configuration file (and the tokens file) and apply what is valid. The
    /// file work runs on a blocking thread under [`READ_DEADLINE`], so no trigger waits
    /// longer than that and no request worker ever blocks on a file.
    pub async fn reload(&self, trigger: &str) -> ReloadAttempt {
        self.reload_with(trigger, READ_DEADLINE, LOCK_DEADLINE, read_files)
            .await
    }

    /// [`App::reload`] with its deadlines and its file reader given.
    async fn reload_with(
        &self,
        trigger: &str,
        read_deadline: Duration,
        lock_deadline: Duration,
        read: fn(&Path) -> Result<Loaded, String>,
    ) -> ReloadAttempt {
        let mut attempt = ReloadAttempt {
            at: unix_now(),
            trigger: trigger.to_string(),
            result: "failure",
            error: None,
            changed: Vec::new(),
            need_restart: Vec::new(),
        };
        match self.try_reload(read_deadline, lock_deadline, read).await {
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

    async fn try_reload(
        &self,
        read_deadline: Duration,
        lock_deadline: Duration,
        read: fn(&Path) -> Result<Loaded, String>,
    ) -> Result<(Vec<String>, Vec<String>), String> {
        let path = self
            .config_path
            .clone()
            .ok_or_else(|| "the server was started without a configuration file".to_string())?;
        let guard = lock_within(&self.reload_lock, lock_deadline).await?;
        let shown = path.display().to_string();
        let ((config, doc, tokens), _serial) =
            blocking_within(guard, read_deadline, move || read(&path)).await?;
        let old = self.snapshot();
        for dropped in old.config.check_dropped_guards(&config, &doc)? {
            warn!("config reload from {shown}: removes {dropped}");
        }
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

/// What the kernel reports of a watched file's directory: its entries changing (a file
/// created, renamed in or out, deleted: how editors and `mv` replace a file). Never a write
/// to another file in it, so a log file next to the config costs the watcher nothing: not
/// an event, not a read, not a syscall.
const DIR_EVENTS: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::DELETE)
    .union(WatchMask::ONLYDIR);
/// What the kernel reports of a watched file itself: writes in place and their end,
/// attribute changes (`touch`), and the file going away.
const FILE_EVENTS: WatchMask = WatchMask::MODIFY
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

/// The kernel watches of the watched files and their directories, by descriptor.
struct Armed {
    watches: inotify::Watches,
    paths: HashMap<WatchDescriptor, PathBuf>,
}

impl Armed {
    /// Watch every file in `files` and its directory. A file's watch follows its inode, so
    /// it is armed again after each change (a rename put a new file there); a file that
    /// does not exist yet is seen through its directory.
    fn arm(&mut self, files: &HashSet<PathBuf>) {
        for f in files {
            if let Some(dir) = f.parent() {
                if let Ok(wd) = self.watches.add(dir, DIR_EVENTS) {
                    self.paths.insert(wd, dir.to_path_buf());
                }
            }
            if let Ok(wd) = self.watches.add(f, FILE_EVENTS) {
                self.paths.insert(wd, f.clone());
            }
        }
    }

    /// The path an event is about: the directory's entry, or the watched file itself.
    fn path_of(&self, wd: &WatchDescriptor, name: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
        let base = self.paths.get(wd)?;
        Some(match name {
            Some(n) => base.join(n),
            None => base.clone(),
        })
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
        let mut files = self.watched_files();
        if files.is_empty() {
            return;
        }
        let cannot = |e: std::io::Error| {
            warn!("cannot watch the configuration for changes ({e}); SIGHUP and the admin API still reload it");
        };
        let inotify = match Inotify::init() {
            Ok(i) => i,
            Err(e) => return cannot(e),
        };
        let mut armed = Armed {
            watches: inotify.watches(),
            paths: HashMap::new(),
        };
        armed.arm(&files);
        // SAFETY: `Inotify` owns its descriptor, which stays open and the same until the
        // `AsyncFd` (which owns the `Inotify`) is dropped.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(inotify, tokio::io::Interest::READABLE)
        };
        let mut fd = match registered {
            Ok(fd) => fd,
            Err(e) => return cannot(e.into()),
        };
        info!(
            "watching {} for changes",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut buf = [0u8; 4096];
        loop {
            // Only entries of a watched name and the watched files' own events are ours;
            // the paths in `armed` are already canonical, like those in `files`.
            let ours = {
                let mut guard = tokio::select! {
                    _ = shutdown.changed() => break,
                    g = fd.readable_mut() => match g {
                        Ok(g) => g,
                        Err(e) => return cannot(e),
                    },
                };
                let mut ours = false;
                match guard.get_inner_mut().read_events(&mut buf) {
                    Ok(events) => {
                        for ev in events {
                            if let Some(p) = armed.path_of(&ev.wd, ev.name) {
                                ours |= files.contains(&p);
                            }
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => guard.clear_ready(),
                    Err(e) => return cannot(e),
                }
                ours
            };
            if !ours {
                continue;
            }
            tokio::time::sleep(DEBOUNCE).await;
            // What arrived meanwhile belongs to the same change.
            while fd.get_mut().read_events(&mut buf).is_ok() {}
            self.app.reload("file").await;
            // A reload may name another tokens file; a replaced file is a new inode.
            files = self.watched_files();
            armed.arm(&files);
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
                    self.app.reload("sighup").await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_reports_the_watched_files_and_nothing_else_in_their_directory() {
        let dir = std::env::temp_dir().join(format!("k2p-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = dir.canonicalize().unwrap();
        let config = dir.join("k2proxy.yaml");
        std::fs::write(&config, "a: 1\n").unwrap();
        let mut inotify = Inotify::init().unwrap();
        let mut armed = Armed {
            watches: inotify.watches(),
            paths: HashMap::new(),
        };
        let files: HashSet<PathBuf> = [config.clone()].into_iter().collect();
        armed.arm(&files);
        fn seen(inotify: &mut Inotify, armed: &Armed) -> Vec<PathBuf> {
            let mut buf = [0u8; 4096];
            let mut out = Vec::new();
            while let Ok(events) = inotify.read_events(&mut buf) {
                out.extend(events.filter_map(|e| armed.path_of(&e.wd, e.name)));
            }
            out
        }
        // A log file next to the config, written 10,000 times: not one event.
        let log = dir.join("k2proxy.log");
        let mut f = std::fs::File::create(&log).unwrap();
        let _ = seen(&mut inotify, &armed); // its creation is a directory entry
        for i in 0..10_000 {
            use std::io::Write;
            writeln!(f, "line {i}").unwrap();
        }
        assert_eq!(seen(&mut inotify, &armed), Vec::<PathBuf>::new());
        // A write to the config in place, and a replacement by rename, are seen.
        std::fs::write(&config, "a: 2\n").unwrap();
        assert!(seen(&mut inotify, &armed).contains(&config));
        let tmp = dir.join("k2proxy.yaml.new");
        std::fs::write(&tmp, "a: 3\n").unwrap();
        std::fs::rename(&tmp, &config).unwrap();
        assert!(seen(&mut inotify, &armed).contains(&config));
        // The new file is a new inode: armed again, its writes in place are seen too.
        armed.arm(&files);
        std::fs::write(&config, "a: 4\n").unwrap();
        assert!(seen(&mut inotify, &armed).contains(&config));
        let _ = std::fs::remove_dir_all(&dir);
    }

    use pingora::server::configuration::ServerConf;
    use std::time::Instant;

    /// A read that stalls (a hung network mount, a FIFO opened the old way).
    fn stuck(_: &Path) -> Result<Loaded, String> {
        std::thread::sleep(Duration::from_millis(1500));
        Err("a stalled read must never be waited for".to_string())
    }

    #[test]
    fn a_stuck_read_fails_its_trigger_in_time_and_the_next_reload_fails_fast() {
        let dir = std::env::temp_dir().join(format!("k2p-reload-stuck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k2proxy.yaml");
        std::fs::write(&path, "server: {}\n").unwrap();
        let config = Config::load(&path).unwrap();
        let app = App::new(config, Some(path.clone()), &ServerConf::default()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let before = app.snapshot();
            let short = Duration::from_millis(200);
            let started = Instant::now();
            let a = app.reload_with("admin", short, short, stuck).await;
            assert_eq!(a.result, "failure");
            let why = a.error.unwrap_or_default();
            assert!(
                why.contains("reading the config file took longer than 0.2s"),
                "{why}"
            );
            assert!(started.elapsed() < Duration::from_millis(1200));
            assert!(
                Arc::ptr_eq(&before, &app.snapshot()),
                "the old config serves"
            );
            // The stalled read still holds the lock: the next reload fails fast, it does
            // not queue up behind it.
            let started = Instant::now();
            let b = app
                .reload_with("sighup", READ_DEADLINE, short, read_files)
                .await;
            assert_eq!(b.result, "failure");
            let why = b.error.unwrap_or_default();
            assert!(why.contains("another reload has been running"), "{why}");
            assert!(started.elapsed() < Duration::from_millis(1200));
            // Once the stalled read ends, reloads work again.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let c = app.reload("file").await;
            assert_eq!(c.result, "success", "{:?}", c.error);
            let status = app.reload_status();
            assert_eq!((status.reloads, status.failures), (3, 2));
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
}

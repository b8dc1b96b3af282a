//! `k2proxy`: command line and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use k2proxy::config::Config;
use k2proxy::proxy::probe::ProbeOptions;
use pingora::server::configuration::Opt;

/// OpenAI-compatible proxy for the K2Think web chat, built on Pingora.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(
        short = 'c',
        long = "conf",
        default_value = "conf/k2proxy.yaml",
        global = true
    )]
    conf: PathBuf,
    /// Check the configuration and exit (non-zero with the bad key when invalid).
    #[arg(short = 't', long = "test")]
    test: bool,
    /// Run in the background (daemon mode).
    #[arg(short = 'd', long = "daemon")]
    daemon: bool,
    /// Take the listening sockets over from a running k2proxy (graceful upgrade; then send
    /// SIGQUIT to the old process).
    #[arg(short = 'u', long = "upgrade")]
    upgrade: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the configured upstream and report what it answers.
    ///
    /// Asks `/api/models` for the configured upstream model ids, and sends one small chat
    /// per upstream model, streamed and not, with a two-turn history. Exit status 0 when
    /// every check passed (skipped ones allowed), 1 when one failed, 2 for a bad
    /// configuration or usage.
    Probe(ProbeArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Print the report as JSON (for monitoring) instead of a table.
    #[arg(long)]
    json: bool,
    /// Time allowed for each check, from connect to the end of the answer.
    #[arg(long, default_value = "30s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Check only this public model id (or alias); repeatable.
    #[arg(long = "model", value_name = "PUBLIC_ID")]
    models: Vec<String>,
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than zero".to_string()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (examples: 500ms, 30s, 2m)")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(&cli.conf) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("k2proxy: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Probe(args)) = cli.command {
        if cli.test || cli.daemon || cli.upgrade {
            eprintln!("k2proxy: -t, -d and -u do not apply to `probe`");
            return ExitCode::from(2);
        }
        return probe(config, args);
    }
    if cli.test {
        println!("k2proxy: configuration {} is valid", cli.conf.display());
        return ExitCode::SUCCESS;
    }
    init_logging(&config.logging.level);
    let opt = Opt {
        upgrade: cli.upgrade,
        daemon: cli.daemon,
        nocapture: false,
        test: false,
        conf: None,
    };
    match k2proxy::proxy::build_server(config, Some(cli.conf.clone()), Some(opt)) {
        Ok((server, app)) => {
            server.run(k2proxy::proxy::RunArgs::default());
            // The server has stopped (grace period over): the queued access-log lines go
            // out before the process ends.
            app.access_log.close();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("k2proxy: cannot start: {e}");
            ExitCode::from(1)
        }
    }
}

/// `k2proxy probe`: run the checks, print the report, exit 0 (all passed), 1 (a check
/// failed) or 2 (the configuration cannot be probed with).
fn probe(config: Config, args: ProbeArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("k2proxy: cannot start the probe: {e}");
            return ExitCode::from(1);
        }
    };
    let opts = ProbeOptions {
        timeout: args.timeout,
        models: args.models,
    };
    let report = match runtime.block_on(k2proxy::proxy::probe::run(config, &opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("k2proxy probe: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    if report.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn init_logging(level: &str) {
    let env = env_logger::Env::default().default_filter_or(level);
    let inner = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(NoWireTrace(inner))).is_ok() {
        log::set_max_level(max);
    }
}

/// The logger, minus the debug and trace records of [`QUIET_TARGETS`].
struct NoWireTrace(env_logger::Logger);

/// Targets whose debug and trace records never reach the log.
///
/// - `pingora`: at trace level Pingora logs raw request and response heads,
///   `Authorization` headers and upstream bearer tokens included, and at debug level a
///   malformed request head whole. Secrets stay out of the logs at every level.
/// - `notify`, `inotify`, `mio`: the config watcher's machinery logs a record per
///   file-system event (and per poll registration). With the log written into the config's
///   directory each record is itself an event, and the proxy fed itself hundreds of MB a
///   minute.
const QUIET_TARGETS: [&str; 4] = ["pingora", "notify", "inotify", "mio"];

impl NoWireTrace {
    fn allowed(meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::Level::Info
            || !QUIET_TARGETS.iter().any(|t| meta.target().starts_with(t))
    }
}

impl log::Log for NoWireTrace {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        NoWireTrace::allowed(meta) && self.0.enabled(meta)
    }

    fn log(&self, record: &log::Record<'_>) {
        if NoWireTrace::allowed(record.metadata()) {
            self.0.log(record)
        }
    }

    fn flush(&self) {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::NoWireTrace;

    fn allowed(level: log::Level, target: &str) -> bool {
        NoWireTrace::allowed(&log::Metadata::builder().level(level).target(target).build())
    }

    #[test]
    fn wire_and_watcher_machinery_stay_out_of_the_debug_log() {
        use log::Level::{Debug, Error, Info, Trace, Warn};
        for target in [
            "pingora_core::protocols::http::v1::server",
            "pingora_proxy",
            "notify::inotify",
            "inotify",
            "mio::poll",
        ] {
            assert!(!allowed(Trace, target), "{target}");
            assert!(!allowed(Debug, target), "{target}");
            for level in [Info, Warn, Error] {
                assert!(allowed(level, target), "{target} {level}");
            }
        }
        for level in [Trace, Debug, Info] {
            assert!(allowed(level, "k2proxy::proxy::reload"));
        }
    }
}

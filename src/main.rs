//! `k2proxy`: command line and wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use k2proxy::config::Config;
use pingora::server::configuration::Opt;

/// OpenAI-compatible proxy for the K2Think web chat, built on Pingora.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(short = 'c', long = "conf", default_value = "conf/k2proxy.yaml")]
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
        Ok((server, _app)) => server.run_forever(),
        Err(e) => {
            eprintln!("k2proxy: cannot start: {e}");
            ExitCode::from(1)
        }
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

/// The logger, minus Pingora's trace records: at trace level Pingora logs raw request and
/// response heads, `Authorization` headers and upstream bearer tokens included. Secrets
/// stay out of the logs at every level.
struct NoWireTrace(env_logger::Logger);

impl NoWireTrace {
    fn allowed(meta: &log::Metadata<'_>) -> bool {
        meta.level() < log::Level::Trace || !meta.target().starts_with("pingora")
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

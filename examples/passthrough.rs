//! A bare Pingora pass-through: the project's own anchor for what Pingora 0.9.1 itself costs
//! (issue 20). `upstream_peer` names one fixed upstream and `upstream_request_filter` adds
//! one header (a bearer token); nothing else: no body rewrite, no transform, no log line.
//! The load bench (`cargo bench --bench load -- --only anchor`) runs it beside k2proxy on
//! the same upstream in one run, so that k2proxy's figures are ratios measured side by side.
//!
//! ```text
//! cargo build --release --example passthrough
//! target/release/examples/passthrough --listen 127.0.0.1:9500 --upstream 127.0.0.1:9501 [--threads 2]
//! ```
#![allow(clippy::expect_used)]

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct PassThrough {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut (),
    ) -> Result<()> {
        upstream_request.insert_header("authorization", "Bearer bench-a")
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:9500".into());
    let upstream = arg(&args, "--upstream").unwrap_or_else(|| "127.0.0.1:9501".into());
    let threads = arg(&args, "--threads")
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    // Pingora's defaults but for the thread count (k2proxy's default is 2 as well).
    let conf = ServerConf {
        threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let mut proxy = http_proxy_service(&server.configuration, PassThrough { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.bootstrap();
    server.run_forever();
}

//! The Prometheus listener (`metrics.listen`): `GET /metrics` in text format.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use super::App;

pub struct MetricsApp {
    pub app: Arc<App>,
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        if path != "/metrics" {
            return plain(
                404,
                b"not found; metrics are at /metrics\n".to_vec(),
                "text/plain",
            );
        }
        let stats = self.app.pool.stats(Instant::now());
        let m = &self.app.metrics;
        m.pool_tokens
            .with_label_values(&["active"])
            .set(stats.active as i64);
        m.pool_tokens
            .with_label_values(&["cooling"])
            .set(stats.cooling as i64);
        m.pool_tokens
            .with_label_values(&["disabled"])
            .set(stats.disabled as i64);
        match &self.app.fleet {
            None => m.fleet_mode.set(0),
            Some(f) => {
                use std::sync::atomic::Ordering::Relaxed;
                m.fleet_mode.set(match f.mode() {
                    crate::fleet::link::Mode::Shared => 1,
                    crate::fleet::link::Mode::Local => 2,
                });
                for (name, v) in [
                    ("events", &f.events),
                    ("resyncs", &f.resyncs),
                    ("changes_sent", &f.changes_sent),
                    ("changes_dropped", &f.changes_dropped),
                    ("errors", &f.errors),
                ] {
                    m.fleet_link
                        .with_label_values(&[name])
                        .set(v.load(Relaxed) as i64);
                }
                m.fleet_instances.set(f.instances().len() as i64);
            }
        }
        plain(200, m.render(), "text/plain; version=0.0.4; charset=utf-8")
    }
}

fn plain(status: u16, body: Vec<u8>, content_type: &'static str) -> Response<Vec<u8>> {
    let mut r = Response::new(body);
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    let len = r.body().len();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    r
}

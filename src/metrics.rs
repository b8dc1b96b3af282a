//! Prometheus metrics: one registry per server (not the global one, so several servers can
//! live in one process), text exposition format.
//!
//! Labels are few and bounded: routes and outcomes are fixed words, `model` is a configured
//! model id (or `unknown`), statuses are numbers or a fixed word. No tokens, keys or
//! request ids ever become labels.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Seconds; from 5 ms to 2 minutes (prefill on long contexts can take that long).
const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Seconds between two chunks written to a streaming client.
const GAP_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

pub struct Metrics {
    registry: Registry,
    /// Client requests by route, model and status.
    pub requests: IntCounterVec,
    /// Client request duration by route.
    pub request_duration: HistogramVec,
    /// Upstream attempts by their result (`200`, `429`, `timeout`, `connect_error`, `invalid`).
    pub upstream_attempts: IntCounterVec,
    /// Upstream attempts by provider (its name under `providers`) and result.
    pub provider_attempts: IntCounterVec,
    /// Chat requests by the provider that served them (or last failed them) and status.
    pub provider_requests: IntCounterVec,
    /// Attempts after the first one of a request.
    pub retries: IntCounter,
    /// Streams by how they ended: `complete`, `upstream_error`, `client_abort` (a stream
    /// whose client left before the answer started counts as `client_abort` too).
    pub stream_outcomes: IntCounterVec,
    /// Time from request start to the first reasoning/content byte sent.
    pub ttft: Histogram,
    /// Gap between consecutive chunks written to a streaming client.
    pub chunk_gap: Histogram,
    /// Tokens by state (`active`, `cooling`, `disabled`); set at scrape time.
    pub pool_tokens: IntGaugeVec,
    /// Token refreshes (account sign-ins) by outcome (`success`, `failure`).
    pub refreshes: IntCounterVec,
    /// Emulated tool calls parsed out of answers.
    pub tool_calls: IntCounter,
    /// Tool-call blocks that could not be used (returned as content instead).
    pub tool_parse_failures: IntCounter,
    /// Access-log lines dropped because the log writer fell behind.
    pub access_log_dropped: IntCounter,
    /// Configuration reloads by result (`success`, `failure`) and trigger.
    pub reloads: IntCounterVec,
    /// Unix time of the last successful reload (or start).
    pub config_loaded_at: IntGauge,
    /// Client connections open now.
    pub client_connections: IntGauge,
    /// Client requests being handled now.
    pub requests_in_flight: IntGauge,
    /// Connections and requests refused by `limits.max_connections` / `limits.max_requests`.
    pub overload_refusals: IntCounterVec,
    /// Hosted tools left out of `/v1/responses` requests (`responses.hosted_tools: drop`),
    /// by type (`other` for a type this version does not know).
    pub hosted_tools_dropped: IntCounterVec,
    /// Fleet mode: 0 single instance, 1 sharing through Redis, 2 on its own while Redis is
    /// away; set at scrape time.
    pub fleet_mode: IntGauge,
    /// Fleet link counters (`events`, `resyncs`, `changes_sent`, `changes_dropped`,
    /// `errors`); set at scrape time.
    pub fleet_link: IntGaugeVec,
    /// Live instances of the fleet at the last heartbeat read.
    pub fleet_instances: IntGauge,
}

impl Metrics {
    pub fn new(version: &str) -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let requests = counter_vec(
            "k2proxy_requests_total",
            "Client requests by route, model and HTTP status.",
            &["route", "model", "status"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "k2proxy_request_duration_seconds",
                "Client request duration, to the last byte.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )?;
        registry.register(Box::new(request_duration.clone()))?;
        let upstream_attempts = counter_vec(
            "k2proxy_upstream_attempts_total",
            "Upstream attempts by result: HTTP status, timeout, connect_error or invalid.",
            &["result"],
        )?;
        let provider_attempts = counter_vec(
            "k2proxy_provider_attempts_total",
            "Upstream attempts by provider and result (as k2proxy_upstream_attempts_total).",
            &["provider", "result"],
        )?;
        let provider_requests = counter_vec(
            "k2proxy_provider_requests_total",
            "Chat requests by the provider that served them and the status sent.",
            &["provider", "status"],
        )?;
        let retries = IntCounter::new(
            "k2proxy_upstream_retries_total",
            "Upstream attempts made after a failed one, before the client saw a byte.",
        )?;
        registry.register(Box::new(retries.clone()))?;
        let stream_outcomes = counter_vec(
            "k2proxy_stream_outcomes_total",
            "Streaming responses by how they ended.",
            &["outcome"],
        )?;
        let ttft = histogram(
            "k2proxy_time_to_first_token_seconds",
            "Time from the request to the first reasoning or content byte sent to the client.",
            TTFT_BUCKETS,
        )?;
        let chunk_gap = histogram(
            "k2proxy_stream_chunk_gap_seconds",
            "Time between consecutive chunks written to a streaming client.",
            GAP_BUCKETS,
        )?;
        let pool_tokens = IntGaugeVec::new(
            Opts::new("k2proxy_pool_tokens", "Upstream tokens by state."),
            &["state"],
        )?;
        registry.register(Box::new(pool_tokens.clone()))?;
        let refreshes = counter_vec(
            "k2proxy_token_refreshes_total",
            "Token refreshes (account sign-ins) by outcome.",
            &["outcome"],
        )?;
        let tool_calls = IntCounter::new(
            "k2proxy_tool_calls_total",
            "Emulated tool calls parsed out of upstream answers.",
        )?;
        registry.register(Box::new(tool_calls.clone()))?;
        let tool_parse_failures = IntCounter::new(
            "k2proxy_tool_parse_failures_total",
            "Tool-call blocks that were malformed and returned as content.",
        )?;
        registry.register(Box::new(tool_parse_failures.clone()))?;
        let access_log_dropped = IntCounter::new(
            "k2proxy_access_log_dropped_total",
            "Access-log lines dropped because the log writer fell behind (its queue was full).",
        )?;
        registry.register(Box::new(access_log_dropped.clone()))?;
        let reloads = counter_vec(
            "k2proxy_config_reloads_total",
            "Configuration reload attempts by result and trigger.",
            &["result", "trigger"],
        )?;
        let config_loaded_at = IntGauge::new(
            "k2proxy_config_last_reload_success_timestamp_seconds",
            "Unix time the running configuration was loaded.",
        )?;
        registry.register(Box::new(config_loaded_at.clone()))?;
        let client_connections =
            IntGauge::new("k2proxy_client_connections", "Client connections open now.")?;
        registry.register(Box::new(client_connections.clone()))?;
        let requests_in_flight = IntGauge::new(
            "k2proxy_requests_in_flight",
            "Client requests being handled now.",
        )?;
        registry.register(Box::new(requests_in_flight.clone()))?;
        let build = IntGaugeVec::new(
            Opts::new("k2proxy_build_info", "Build information; always 1."),
            &["version"],
        )?;
        registry.register(Box::new(build.clone()))?;
        build.with_label_values(&[version]).set(1);
        for state in ["active", "cooling", "disabled"] {
            pool_tokens.with_label_values(&[state]).set(0);
        }
        let overload_refusals = counter_vec(
            "k2proxy_overload_refusals_total",
            "Connections and chat requests refused with 503 by limits.max_connections and limits.max_requests.",
            &["limit"],
        )?;
        for limit in ["max_connections", "max_requests"] {
            overload_refusals.with_label_values(&[limit]);
        }
        let hosted_tools_dropped = counter_vec(
            "k2proxy_hosted_tools_dropped_total",
            "Hosted tools (web_search, file_search, ...) left out of /v1/responses requests by responses.hosted_tools: drop, by type.",
            &["type"],
        )?;
        for outcome in ["complete", "upstream_error", "client_abort"] {
            stream_outcomes.with_label_values(&[outcome]);
        }
        for outcome in ["success", "failure"] {
            refreshes.with_label_values(&[outcome]);
        }
        let fleet_mode = IntGauge::new(
            "k2proxy_fleet_mode",
            "Fleet mode: 0 single instance, 1 sharing state through Redis, 2 on its own state while Redis is away.",
        )?;
        registry.register(Box::new(fleet_mode.clone()))?;
        let fleet_link = IntGaugeVec::new(
            Opts::new(
                "k2proxy_fleet_link",
                "Fleet link counters since start: events received, resyncs, changes sent and dropped, Redis errors.",
            ),
            &["counter"],
        )?;
        registry.register(Box::new(fleet_link.clone()))?;
        let fleet_instances = IntGauge::new(
            "k2proxy_fleet_instances",
            "Live instances of the fleet at the last heartbeat read.",
        )?;
        registry.register(Box::new(fleet_instances.clone()))?;
        Ok(Metrics {
            fleet_mode,
            fleet_link,
            fleet_instances,
            registry,
            requests,
            request_duration,
            upstream_attempts,
            provider_attempts,
            provider_requests,
            retries,
            stream_outcomes,
            ttft,
            chunk_gap,
            pool_tokens,
            refreshes,
            tool_calls,
            tool_parse_failures,
            access_log_dropped,
            reloads,
            config_loaded_at,
            client_connections,
            requests_in_flight,
            overload_refusals,
            hosted_tools_dropped,
        })
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(8 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            log::warn!("cannot encode metrics: {e}");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::new("1.2.3").unwrap();
        m.requests.with_label_values(&["chat", "m", "200"]).inc();
        m.ttft.observe(0.02);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains("# TYPE k2proxy_requests_total counter"),
            "{text}"
        );
        assert!(
            text.contains("k2proxy_requests_total{model=\"m\",route=\"chat\",status=\"200\"} 1")
        );
        assert!(text.contains("k2proxy_build_info{version=\"1.2.3\"} 1"));
        assert!(text.contains("k2proxy_time_to_first_token_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("k2proxy_pool_tokens{state=\"cooling\"} 0"));
        // two registries do not collide
        assert!(Metrics::new("x").is_ok());
    }
}

//! Every metric sessiongate exports, named in one place and registered on a registry the caller
//! passes in (no global registry), so tests can run many proxies in one process.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Metric names, so dashboards and code agree on one spelling.
pub mod names {
    pub const REQUESTS_TOTAL: &str = "sessiongate_requests_total";
    pub const REQUEST_DURATION: &str = "sessiongate_request_duration_seconds";
    pub const CONNECTIONS_ACTIVE: &str = "sessiongate_connections_active";
    pub const CONNECTIONS_TOTAL: &str = "sessiongate_connections_total";
    pub const CONNECTION_ERRORS_TOTAL: &str = "sessiongate_connection_errors_total";
    pub const UPSTREAM_CONNECTIONS_ACTIVE: &str = "sessiongate_upstream_connections_active";
    pub const CONFIG_RELOADS_TOTAL: &str = "sessiongate_config_reloads_total";
    pub const CONFIG_VERSION: &str = "sessiongate_config_version";
    pub const BUILD_INFO: &str = "sessiongate_build_info";
}

/// Latency buckets from 100 µs to 60 s: proxies add microseconds, CLI turns take seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub connections_active: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub connection_errors_total: IntCounterVec,
    pub upstream_connections_active: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub config_version: IntGauge,
}

impl Metrics {
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        use names::*;
        let requests_total = IntCounterVec::new(
            Opts::new(
                REQUESTS_TOTAL,
                "Requests proxied, by final status code (HTTP) or outcome.",
            ),
            &["listener", "pool", "upstream", "code"],
        )?;
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                REQUEST_DURATION,
                "Time from request received to response head sent.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["listener", "pool", "upstream"],
        )?;
        let connections_active = IntGaugeVec::new(
            Opts::new(CONNECTIONS_ACTIVE, "Client connections currently open."),
            &["listener"],
        )?;
        let connections_total = IntCounterVec::new(
            Opts::new(CONNECTIONS_TOTAL, "Client connections accepted."),
            &["listener"],
        )?;
        let connection_errors_total = IntCounterVec::new(
            Opts::new(
                CONNECTION_ERRORS_TOTAL,
                "Client connections that ended in an error, by kind.",
            ),
            &["listener", "kind"],
        )?;
        let upstream_connections_active = IntGaugeVec::new(
            Opts::new(
                UPSTREAM_CONNECTIONS_ACTIVE,
                "Connections open to each upstream.",
            ),
            &["pool", "upstream"],
        )?;
        let config_reloads_total = IntCounterVec::new(
            Opts::new(CONFIG_RELOADS_TOTAL, "Configuration reloads, by result."),
            &["result"],
        )?;
        let config_version = IntGauge::new(CONFIG_VERSION, "Version of the snapshot now serving.")?;
        let build_info =
            IntGaugeVec::new(Opts::new(BUILD_INFO, "Build information."), &["version"])?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(connection_errors_total.clone()))?;
        registry.register(Box::new(upstream_connections_active.clone()))?;
        registry.register(Box::new(config_reloads_total.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(build_info))?;
        // Export both reload outcomes from the start so rate() works before the first failure.
        for result in ["success", "failure"] {
            config_reloads_total.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            requests_total,
            request_duration,
            connections_active,
            connections_total,
            connection_errors_total,
            upstream_connections_active,
            config_reloads_total,
            config_version,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of everything registered.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

//! Every metric sessiongate exports, named in one place and registered on a registry the caller
//! passes in (no global registry), so tests can run many proxies in one process. Per-session
//! series are bounded by [`session_series`]; series whose labels the config names are created
//! at 0 when a config version goes live ([`Metrics::precreate`]).

mod precreate;
pub mod session_series;

pub use precreate::{
    HEALTH_STATES, HTTP_LIMITED, JSONRPC_OUTCOMES, LINK_FAILURE_KINDS, OTHER_METHOD,
    OWNER_DISCOVERY_RESULTS, PIN_DROP_REASONS, TCP_REFUSED_OUTCOMES, TCP_UPSTREAM_OUTCOMES,
};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Metric names, so dashboards and code agree on one spelling.
pub mod names {
    pub const REQUESTS_TOTAL: &str = "sessiongate_requests_total";
    pub const REQUEST_DURATION: &str = "sessiongate_request_duration_seconds";
    pub const CONNECTIONS_ACTIVE: &str = "sessiongate_connections_active";
    pub const CONNECTIONS_PARKED: &str = "sessiongate_connections_parked";
    pub const CONNECTIONS_TOTAL: &str = "sessiongate_connections_total";
    pub const CONNECTION_ERRORS_TOTAL: &str = "sessiongate_connection_errors_total";
    pub const UPSTREAM_CONNECTIONS_ACTIVE: &str = "sessiongate_upstream_connections_active";
    pub const CONFIG_RELOADS_TOTAL: &str = "sessiongate_config_reloads_total";
    pub const CONFIG_VERSION: &str = "sessiongate_config_version";
    pub const BUILD_INFO: &str = "sessiongate_build_info";
    pub const SESSION_REQUEST_DURATION: &str = "sessiongate_session_request_duration_seconds";
    pub const JSONRPC_REQUEST_DURATION: &str = "sessiongate_jsonrpc_request_duration_seconds";
    pub const PINNED_SESSIONS: &str = "sessiongate_pinned_sessions";
    pub const OWNER_DISCOVERY_TOTAL: &str = "sessiongate_owner_discovery_total";
    pub const PINS_LEARNED_TOTAL: &str = "sessiongate_pins_learned_total";
    pub const SESSIONS_LIVE: &str = "sessiongate_sessions_live";
    pub const PLACEMENT_SPILLS_TOTAL: &str = "sessiongate_placement_spills_total";
    pub const ACCESS_LOG_DROPPED_TOTAL: &str = "sessiongate_access_log_dropped_total";
    pub const SESSIONS_ALREADY_IN_USE_TOTAL: &str = "sessiongate_sessions_already_in_use_total";
    pub const ADMISSION_REJECTED_TOTAL: &str = "sessiongate_admission_rejected_total";
    pub const PINS_DROPPED_TOTAL: &str = "sessiongate_pins_dropped_total";
    pub const JSONRPC_UNKNOWN_METHODS_TOTAL: &str = "sessiongate_jsonrpc_unknown_methods_total";
    pub const FANOUT_SKIPPED_TOTAL: &str = "sessiongate_fanout_skipped_total";
    pub const UPSTREAM_LINK_FAILURES_TOTAL: &str = "sessiongate_upstream_link_failures_total";
    pub const REDISPATCHES_TOTAL: &str = "sessiongate_redispatches_total";
    pub const UPSTREAM_HEALTHY: &str = "sessiongate_upstream_healthy";
    pub const UPSTREAM_DRAINING: &str = "sessiongate_upstream_draining";
    pub const UPSTREAM_PROBE_DURATION: &str = "sessiongate_upstream_probe_duration_seconds";
    pub const UPSTREAM_HEALTH_TRANSITIONS_TOTAL: &str =
        "sessiongate_upstream_health_transitions_total";
    pub const UPSTREAM_EJECTIONS_TOTAL: &str = "sessiongate_upstream_ejections_total";
    pub const REDIS_UP: &str = "sessiongate_redis_up";
    pub const REDIS_ERRORS_TOTAL: &str = "sessiongate_redis_errors_total";
    pub const STORE_FALLBACK_TOTAL: &str = "sessiongate_store_fallback_total";
    pub const CLEANUP_DELETED_SESSIONS_TOTAL: &str = "sessiongate_cleanup_deleted_sessions_total";
    pub const CLEANUP_FREED_BYTES_TOTAL: &str = "sessiongate_cleanup_freed_bytes_total";
    pub const DISCOVERY_LOOKUPS_TOTAL: &str = "sessiongate_discovery_lookups_total";
    pub const DISCOVERY_UPSTREAMS: &str = "sessiongate_discovery_upstreams";
}

/// Unknown JSON-RPC method names that get a label of their own.
pub const UNKNOWN_METHOD_LABELS: usize = 32;

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
    /// Idle HTTP/1.1 connections waiting without a task (`proxy::h1::parked`).
    pub connections_parked: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub connection_errors_total: IntCounterVec,
    pub upstream_connections_active: IntGaugeVec,
    pub config_reloads_total: IntCounterVec,
    pub config_version: IntGauge,
    pub sessions: session_series::SessionSeries,
    pub jsonrpc_request_duration: HistogramVec,
    pub pinned_sessions: IntGaugeVec,
    pub owner_discovery_total: IntCounterVec,
    pub pins_learned_total: IntCounterVec,
    pub sessions_live: IntGaugeVec,
    pub placement_spills_total: IntCounterVec,
    pub admission_rejected_total: IntCounterVec,
    pub sessions_already_in_use_total: IntCounterVec,
    pub access_log_dropped_total: IntCounter,
    pub pins_dropped_total: IntCounterVec,
    jsonrpc_unknown_methods_total: IntCounterVec,
    /// The unknown method names that have a label of their own (the rest count as `other`).
    unknown_method_labels: Arc<Mutex<HashSet<String>>>,
    pub fanout_skipped_total: IntCounterVec,
    pub cleanup_deleted_sessions_total: IntCounterVec,
    pub cleanup_freed_bytes_total: IntCounterVec,
    pub upstream_link_failures_total: IntCounterVec,
    pub redispatches_total: IntCounterVec,
    pub upstream_healthy: IntGaugeVec,
    pub upstream_draining: IntGaugeVec,
    pub upstream_probe_duration: HistogramVec,
    pub upstream_health_transitions_total: IntCounterVec,
    pub upstream_ejections_total: IntCounterVec,
    pub redis_up: IntGauge,
    pub redis_errors_total: IntCounterVec,
    pub store_fallback_total: IntCounterVec,
    pub discovery_lookups_total: IntCounterVec,
    pub discovery_upstreams: IntGaugeVec,
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
        let connections_parked = IntGaugeVec::new(
            Opts::new(
                CONNECTIONS_PARKED,
                "Idle keep-alive client connections parked (counted in connections_active too).",
            ),
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

        let session_request_duration = HistogramVec::new(
            HistogramOpts::new(
                SESSION_REQUEST_DURATION,
                "Request to response time of session-scoped JSON-RPC requests, per session (bounded; overflow in session=\"_other\").",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["pool", "session"],
        )?;
        let jsonrpc_request_duration = HistogramVec::new(
            HistogramOpts::new(
                JSONRPC_REQUEST_DURATION,
                "Request to response time of JSON-RPC requests, by method (unknown methods as \"other\").",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["pool", "method"],
        )?;
        let pinned_sessions = IntGaugeVec::new(
            Opts::new(
                PINNED_SESSIONS,
                "Sessions in the pin table of each pool (approximate).",
            ),
            &["pool"],
        )?;
        let owner_discovery_total = IntCounterVec::new(
            Opts::new(
                OWNER_DISCOVERY_TOTAL,
                "Owner discoveries for sessions without a pin, by result.",
            ),
            &["pool", "result"],
        )?;
        let pins_learned_total = IntCounterVec::new(
            Opts::new(
                PINS_LEARNED_TOTAL,
                "HTTP sessions pinned to the upstream whose response named them (listener learn:).",
            ),
            &["pool", "upstream"],
        )?;
        let sessions_live = IntGaugeVec::new(
            Opts::new(
                SESSIONS_LIVE,
                "Live sessions per upstream (pinned, not idle past session_idle_ttl), as of the last scrape.",
            ),
            &["pool", "upstream"],
        )?;
        let placement_spills_total = IntCounterVec::new(
            Opts::new(
                PLACEMENT_SPILLS_TOTAL,
                "New sessions placed away from the ring's choice (upstream) because it was at its load bound or cap.",
            ),
            &["pool", "upstream"],
        )?;
        let access_log_dropped_total = IntCounter::new(
            ACCESS_LOG_DROPPED_TOTAL,
            "Access log records dropped because the writer was behind (traffic never waits for the log).",
        )?;
        let sessions_already_in_use_total = IntCounterVec::new(
            Opts::new(
                SESSIONS_ALREADY_IN_USE_TOTAL,
                "Sessions a node resumed while another live CLI process held them (the CLI's alreadyInUse): a second writer.",
            ),
            &["pool", "upstream"],
        )?;
        let admission_rejected_total = IntCounterVec::new(
            Opts::new(
                ADMISSION_REJECTED_TOTAL,
                "Requests refused before reaching an upstream, by reason (fleet_full: every node at its session cap; rate_limited; forbidden: a policy or another user's session; busy: the session's turn is taken).",
            ),
            &["listener", "reason"],
        )?;
        let pins_dropped_total = IntCounterVec::new(
            Opts::new(
                PINS_DROPPED_TOTAL,
                "Learned HTTP pins dropped, by reason (deleted: a DELETE the upstream accepted; owner_gone: the pinned upstream was down or removed).",
            ),
            &["pool", "reason"],
        )?;
        let jsonrpc_unknown_methods_total = IntCounterVec::new(
            Opts::new(
                JSONRPC_UNKNOWN_METHODS_TOTAL,
                "JSON-RPC requests for methods not in the method table (sent to the home or session node, never replayed); the first 32 names seen get their own label, the rest method=\"other\".",
            ),
            &["pool", "method"],
        )?;
        let fanout_skipped_total = IntCounterVec::new(
            Opts::new(
                FANOUT_SKIPPED_TOTAL,
                "Nodes skipped by a fan-out (session.list, discovery) for not answering in time.",
            ),
            &["pool", "upstream"],
        )?;
        let cleanup_deleted_sessions_total = IntCounterVec::new(
            Opts::new(
                CLEANUP_DELETED_SESSIONS_TOTAL,
                "Sessions deleted by fleet-wide cleanup (sessions.pruneOld), per node.",
            ),
            &["pool", "upstream"],
        )?;
        let cleanup_freed_bytes_total = IntCounterVec::new(
            Opts::new(
                CLEANUP_FREED_BYTES_TOTAL,
                "Bytes freed by fleet-wide cleanup (sessions.pruneOld), per node.",
            ),
            &["pool", "upstream"],
        )?;
        let discovery_lookups_total = IntCounterVec::new(
            Opts::new(
                DISCOVERY_LOOKUPS_TOTAL,
                "Upstream discovery lookups (discover:), by result: changed, unchanged, empty, error.",
            ),
            &["pool", "result"],
        )?;
        let discovery_upstreams = IntGaugeVec::new(
            Opts::new(
                DISCOVERY_UPSTREAMS,
                "Upstreams a discovered pool has (the last good answer).",
            ),
            &["pool"],
        )?;
        let upstream_link_failures_total = IntCounterVec::new(
            Opts::new(
                UPSTREAM_LINK_FAILURES_TOTAL,
                "JSON-RPC upstream links that failed to connect or dropped, by kind.",
            ),
            &["pool", "upstream", "kind"],
        )?;
        let redispatches_total = IntCounterVec::new(
            Opts::new(
                REDISPATCHES_TOTAL,
                "JSON-RPC requests sent to another upstream because `upstream` refused the link.",
            ),
            &["pool", "upstream"],
        )?;

        let upstream_healthy = IntGaugeVec::new(
            Opts::new(
                UPSTREAM_HEALTHY,
                "1 if the upstream passes its probes and is not ejected.",
            ),
            &["pool", "upstream"],
        )?;
        let upstream_draining = IntGaugeVec::new(
            Opts::new(
                UPSTREAM_DRAINING,
                "1 if the upstream takes no new keys or sessions.",
            ),
            &["pool", "upstream"],
        )?;
        let upstream_probe_duration = HistogramVec::new(
            HistogramOpts::new(UPSTREAM_PROBE_DURATION, "Duration of active health probes.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["pool", "upstream"],
        )?;
        let upstream_health_transitions_total = IntCounterVec::new(
            Opts::new(
                UPSTREAM_HEALTH_TRANSITIONS_TOTAL,
                "Upstream health flips, by new state.",
            ),
            &["pool", "upstream", "to"],
        )?;
        let upstream_ejections_total = IntCounterVec::new(
            Opts::new(
                UPSTREAM_EJECTIONS_TOTAL,
                "Passive ejections after live-traffic failures.",
            ),
            &["pool", "upstream"],
        )?;
        // The shared store (`crate::store`): its label values are created by the store itself,
        // and only when Redis is configured.
        let redis_up = IntGauge::new(
            REDIS_UP,
            "1 while the shared store's Redis answers, 0 before the first answer and during outages (only meaningful with Redis configured).",
        )?;
        let redis_errors_total = IntCounterVec::new(
            Opts::new(
                REDIS_ERRORS_TOTAL,
                "Shared store operations whose Redis call failed or timed out, by operation.",
            ),
            &["op"],
        )?;
        let store_fallback_total = IntCounterVec::new(
            Opts::new(
                STORE_FALLBACK_TOTAL,
                "Shared store operations served in-process because Redis was down or failed, by operation.",
            ),
            &["op"],
        )?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(redis_errors_total.clone()))?;
        registry.register(Box::new(store_fallback_total.clone()))?;
        registry.register(Box::new(upstream_healthy.clone()))?;
        registry.register(Box::new(upstream_draining.clone()))?;
        registry.register(Box::new(upstream_probe_duration.clone()))?;
        registry.register(Box::new(upstream_health_transitions_total.clone()))?;
        registry.register(Box::new(upstream_ejections_total.clone()))?;
        registry.register(Box::new(requests_total.clone()))?;
        registry.register(Box::new(request_duration.clone()))?;
        registry.register(Box::new(connections_active.clone()))?;
        registry.register(Box::new(connections_parked.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(connection_errors_total.clone()))?;
        registry.register(Box::new(upstream_connections_active.clone()))?;
        registry.register(Box::new(config_reloads_total.clone()))?;
        registry.register(Box::new(config_version.clone()))?;
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(session_request_duration.clone()))?;
        registry.register(Box::new(jsonrpc_request_duration.clone()))?;
        registry.register(Box::new(pinned_sessions.clone()))?;
        registry.register(Box::new(owner_discovery_total.clone()))?;
        registry.register(Box::new(pins_learned_total.clone()))?;
        registry.register(Box::new(sessions_live.clone()))?;
        registry.register(Box::new(placement_spills_total.clone()))?;
        registry.register(Box::new(admission_rejected_total.clone()))?;
        registry.register(Box::new(sessions_already_in_use_total.clone()))?;
        registry.register(Box::new(access_log_dropped_total.clone()))?;
        registry.register(Box::new(pins_dropped_total.clone()))?;
        registry.register(Box::new(jsonrpc_unknown_methods_total.clone()))?;
        registry.register(Box::new(fanout_skipped_total.clone()))?;
        registry.register(Box::new(cleanup_deleted_sessions_total.clone()))?;
        registry.register(Box::new(cleanup_freed_bytes_total.clone()))?;
        registry.register(Box::new(upstream_link_failures_total.clone()))?;
        registry.register(Box::new(discovery_lookups_total.clone()))?;
        registry.register(Box::new(discovery_upstreams.clone()))?;
        registry.register(Box::new(redispatches_total.clone()))?;
        // Export both reload outcomes from the start so rate() works before the first failure.
        for result in ["success", "failure"] {
            config_reloads_total.with_label_values(&[result]);
        }
        Ok(Metrics {
            registry,
            requests_total,
            request_duration,
            connections_active,
            connections_parked,
            connections_total,
            connection_errors_total,
            upstream_connections_active,
            config_reloads_total,
            config_version,
            sessions: session_series::SessionSeries::new(session_request_duration),
            jsonrpc_request_duration,
            pinned_sessions,
            owner_discovery_total,
            pins_learned_total,
            sessions_live,
            placement_spills_total,
            admission_rejected_total,
            sessions_already_in_use_total,
            access_log_dropped_total,
            pins_dropped_total,
            jsonrpc_unknown_methods_total,
            unknown_method_labels: Arc::default(),
            fanout_skipped_total,
            cleanup_deleted_sessions_total,
            cleanup_freed_bytes_total,
            upstream_link_failures_total,
            redispatches_total,
            upstream_healthy,
            upstream_draining,
            upstream_probe_duration,
            upstream_health_transitions_total,
            upstream_ejections_total,
            redis_up,
            redis_errors_total,
            store_fallback_total,
            discovery_lookups_total,
            discovery_upstreams,
        })
    }

    /// Count a request for a method the table does not know. Names a client sends are
    /// unbounded: only the first [`UNKNOWN_METHOD_LABELS`] well-formed ones get a label.
    pub fn unknown_method(&self, pool: &str, method: &str) {
        let well_formed = !method.is_empty()
            && method.len() <= 64
            && method
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/$".contains(&b));
        let label = {
            let mut labels = self
                .unknown_method_labels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if well_formed
                && (labels.contains(method)
                    || (labels.len() < UNKNOWN_METHOD_LABELS && labels.insert(method.to_owned())))
            {
                method
            } else {
                "other"
            }
        };
        self.jsonrpc_unknown_methods_total
            .with_label_values(&[pool, label])
            .inc();
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

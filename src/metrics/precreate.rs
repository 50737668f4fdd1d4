//! Every labelled series whose label values the config names is exported at 0 from the moment a
//! config version goes live ([`Metrics::precreate`]), not from its first event. A series that
//! appears only when it first counts breaks `rate()` and `increase()` (the first increment is
//! lost), makes alerts like `rate(x[5m]) > 0` blind until then, and hides from a dashboard the
//! difference between "nothing happened" and "not exported". Series whose labels come from
//! traffic (sessions, HTTP status codes, unknown method names) are not created here, except
//! their overflow values (`_other`, `other`), which are known in advance.
//!
//! Creating a series that exists already changes nothing, so this runs on every activation
//! (start and each reload) and only adds what the new config names.

use std::collections::HashSet;

use crate::config::{Config, PoolConfig, Protocol};

use super::Metrics;

/// `sessiongate_requests_total{code}` outcomes of a JSON-RPC listener.
pub const JSONRPC_OUTCOMES: &[&str] = &["ok", "error", "unavailable", "timeout"];
/// `sessiongate_requests_total{code}` outcomes of a TCP listener with an upstream...
pub const TCP_UPSTREAM_OUTCOMES: &[&str] = &["closed"];
/// ...and those counted against upstream `none` (no key, or no upstream could take it).
pub const TCP_REFUSED_OUTCOMES: &[&str] = &["no_key", "no_upstream"];
/// `sessiongate_requests_total{code}` of an HTTP listener with `limits:`, against upstream `none`.
pub const HTTP_LIMITED: &[&str] = &["429"];
/// `sessiongate_upstream_link_failures_total{kind}`.
pub const LINK_FAILURE_KINDS: &[&str] = &["connect", "dropped", "malformed"];
/// `sessiongate_owner_discovery_total{result}`.
pub const OWNER_DISCOVERY_RESULTS: &[&str] = &["found", "not_found"];
/// `sessiongate_pins_dropped_total{reason}`.
pub const PIN_DROP_REASONS: &[&str] = &["deleted", "owner_gone"];
/// `sessiongate_upstream_health_transitions_total{to}`.
pub const HEALTH_STATES: &[&str] = &["up", "down"];
/// The overflow label of per-method series (methods outside the table, names past the first 32).
pub const OTHER_METHOD: &str = "other";

impl Metrics {
    /// Export at 0 every series `config` names the labels of (see the module doc). Called when a
    /// config version goes live, so a refused reload creates nothing.
    ///
    /// Which series a pool or listener gets follows what can happen to it: JSON-RPC series for
    /// pools a JSON-RPC listener routes into, learned-pin series for pools an HTTP listener
    /// learns into, spills for pools placing by load or caps, `fleet_full` refusals for
    /// listeners in front of capped upstreams, ejections unless `passive:` is off, cleanup with
    /// `cleanup:`, TLS handshake errors on TLS listeners.
    pub fn precreate(&self, config: &Config) {
        let mut jsonrpc_pools: HashSet<&str> = HashSet::new();
        let mut learning_pools: HashSet<&str> = HashSet::new();
        for l in &config.listeners {
            let listener = l.name.as_str();
            self.connections_active.with_label_values(&[listener]);
            if l.protocol == Protocol::Http && l.tls.is_none() {
                self.connections_parked.with_label_values(&[listener]);
            }
            self.connections_total.with_label_values(&[listener]);
            self.connection_errors_total
                .with_label_values(&[listener, "accept"]);
            if l.tls.is_some() {
                self.connection_errors_total
                    .with_label_values(&[listener, "tls_handshake"]);
            }
            let pools: Vec<&PoolConfig> = l.pools().filter_map(|p| config.pool(p)).collect();
            if l.protocol != Protocol::Tcp
                && pools
                    .iter()
                    .any(|p| p.upstreams.iter().any(|u| u.max_sessions.is_some()))
            {
                self.admission_rejected_total
                    .with_label_values(&[listener, "fleet_full"]);
            }
            if l.protocol != Protocol::Tcp && l.limits.any() {
                self.admission_rejected_total
                    .with_label_values(&[listener, "rate_limited"]);
            }
            if l.protocol != Protocol::Tcp && l.identity.is_some() {
                self.admission_rejected_total
                    .with_label_values(&[listener, "forbidden"]);
            }
            if l.protocol == Protocol::JsonRpc && pools.iter().any(|p| p.turns.is_some()) {
                self.admission_rejected_total
                    .with_label_values(&[listener, "busy"]);
            }
            for pool in pools {
                let p = pool.name.as_str();
                match l.protocol {
                    Protocol::JsonRpc => {
                        jsonrpc_pools.insert(p);
                    }
                    Protocol::Http if !l.learn.is_empty() => {
                        learning_pools.insert(p);
                    }
                    _ => {}
                }
                // HTTP's codes are the upstreams' statuses, unknown in advance; the snapshot
                // already creates code="200" (the data path's own handle). A rate limit's 429
                // is the proxy's own answer, counted against upstream `none`.
                let (per_upstream, refused): (&[&str], &[&str]) = match l.protocol {
                    Protocol::JsonRpc => (JSONRPC_OUTCOMES, &[]),
                    Protocol::Tcp => (TCP_UPSTREAM_OUTCOMES, TCP_REFUSED_OUTCOMES),
                    Protocol::Http if l.limits.any() => (&[], HTTP_LIMITED),
                    Protocol::Http => (&[], &[]),
                };
                for u in &pool.upstreams {
                    let upstream = u.name.as_str();
                    self.request_duration
                        .with_label_values(&[listener, p, upstream]);
                    for code in per_upstream {
                        self.requests_total
                            .with_label_values(&[listener, p, upstream, code]);
                    }
                }
                if !refused.is_empty() {
                    self.request_duration
                        .with_label_values(&[listener, p, "none"]);
                }
                for code in refused {
                    self.requests_total
                        .with_label_values(&[listener, p, "none", code]);
                }
            }
        }

        for pool in config.pools.values() {
            let p = pool.name.as_str();
            self.pinned_sessions.with_label_values(&[p]);
            if pool.discover.is_some() {
                // A discovered pool starts empty: 0 upstreams until its first answer.
                self.discovery_upstreams.with_label_values(&[p]);
                for result in crate::discovery::RESULTS {
                    self.discovery_lookups_total.with_label_values(&[p, result]);
                }
            }
            let jsonrpc = jsonrpc_pools.contains(p);
            let learns = learning_pools.contains(p);
            let places_by_load = pool.load_factor.is_some()
                || pool.upstreams.iter().any(|u| u.max_sessions.is_some());
            if jsonrpc {
                self.jsonrpc_request_duration
                    .with_label_values(&[p, OTHER_METHOD]);
                self.jsonrpc_unknown_methods_total
                    .with_label_values(&[p, OTHER_METHOD]);
                self.sessions.precreate(p);
                for result in OWNER_DISCOVERY_RESULTS {
                    self.owner_discovery_total.with_label_values(&[p, result]);
                }
            }
            if learns {
                for reason in PIN_DROP_REASONS {
                    self.pins_dropped_total.with_label_values(&[p, reason]);
                }
            }
            for u in &pool.upstreams {
                let labels = [p, u.name.as_str()];
                self.upstream_connections_active.with_label_values(&labels);
                self.upstream_healthy.with_label_values(&labels);
                self.upstream_draining.with_label_values(&labels);
                self.upstream_probe_duration.with_label_values(&labels);
                self.sessions_live.with_label_values(&labels);
                for to in HEALTH_STATES {
                    self.upstream_health_transitions_total
                        .with_label_values(&[labels[0], labels[1], to]);
                }
                if pool.passive.is_some() {
                    self.upstream_ejections_total.with_label_values(&labels);
                }
                if places_by_load {
                    self.placement_spills_total.with_label_values(&labels);
                }
                if pool.cleanup.is_some() {
                    self.cleanup_deleted_sessions_total
                        .with_label_values(&labels);
                    self.cleanup_freed_bytes_total.with_label_values(&labels);
                }
                if learns {
                    self.pins_learned_total.with_label_values(&labels);
                }
                if jsonrpc {
                    self.redispatches_total.with_label_values(&labels);
                    self.fanout_skipped_total.with_label_values(&labels);
                    self.sessions_already_in_use_total
                        .with_label_values(&labels);
                    for kind in LINK_FAILURE_KINDS {
                        self.upstream_link_failures_total
                            .with_label_values(&[labels[0], labels[1], kind]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use prometheus::Registry;

    use super::*;

    fn config(yaml: &str) -> Config {
        Config::parse(yaml, Path::new("test.yaml")).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The sample lines (no comments) of `name` in `text`.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .collect()
    }

    const BASE: &str = "
admin: { listen: 127.0.0.1:0 }
listeners:
  - { name: cli, listen: 127.0.0.1:0, protocol: jsonrpc, pool: fleet }
  - { name: web, listen: 127.0.0.1:0, protocol: http, pool: api, key: [ { header: X-Session-Id } ] }
pools:
  fleet:
    health: { probe: tcp }
    upstreams:
      - { name: n1, addr: \"127.0.0.1:1\" }
      - { name: n2, addr: \"127.0.0.1:2\" }
  api:
    passive: { consecutive_failures: 0 }
    upstreams:
      - { name: a1, addr: \"127.0.0.1:3\" }
";

    #[test]
    fn config_named_series_exist_at_zero() {
        let metrics = Metrics::new(Registry::new()).expect("metrics");
        metrics.precreate(&config(BASE));
        let text = metrics.encode();
        for (name, count) in [
            ("sessiongate_redispatches_total", 2),
            ("sessiongate_fanout_skipped_total", 2),
            ("sessiongate_upstream_link_failures_total", 6),
            ("sessiongate_upstream_health_transitions_total", 6),
            ("sessiongate_connection_errors_total", 2),
            ("sessiongate_requests_total", 8),
            ("sessiongate_owner_discovery_total", 2),
            ("sessiongate_jsonrpc_unknown_methods_total", 1),
            ("sessiongate_sessions_live", 3),
            // Passive ejection is on by default, off in `api`.
            ("sessiongate_upstream_ejections_total", 2),
        ] {
            let lines = samples(&text, name);
            assert_eq!(lines.len(), count, "{name}: {lines:?}");
            assert!(lines.iter().all(|l| l.ends_with(" 0")), "{name}: {lines:?}");
        }
        // Series for what this config cannot do stay out.
        for name in [
            "sessiongate_placement_spills_total",
            "sessiongate_admission_rejected_total",
            "sessiongate_pins_dropped_total",
            "sessiongate_cleanup_deleted_sessions_total",
        ] {
            assert!(samples(&text, name).is_empty(), "{name} in:\n{text}");
        }
        assert!(
            !text.contains("pool=\"api\",upstream=\"a1\",kind="),
            "an HTTP pool has no JSON-RPC link series"
        );
    }

    #[test]
    fn a_reload_adds_the_new_upstreams_and_keeps_counts() {
        let metrics = Metrics::new(Registry::new()).expect("metrics");
        metrics.precreate(&config(BASE));
        metrics
            .redispatches_total
            .with_label_values(&["fleet", "n1"])
            .inc();
        let grown = BASE.replace(
            "      - { name: n2, addr: \"127.0.0.1:2\" }\n",
            "      - { name: n2, addr: \"127.0.0.1:2\" }\n      - { name: n3, addr: \"127.0.0.1:4\", max_sessions: 5 }\n",
        );
        metrics.precreate(&config(&grown));
        let text = metrics.encode();
        assert!(
            text.contains("sessiongate_redispatches_total{pool=\"fleet\",upstream=\"n1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sessiongate_redispatches_total{pool=\"fleet\",upstream=\"n3\"} 0"),
            "{text}"
        );
        assert_eq!(
            samples(&text, "sessiongate_placement_spills_total").len(),
            3,
            "a cap makes the pool place by load"
        );
        assert!(
            text.contains(
                "sessiongate_admission_rejected_total{listener=\"cli\",reason=\"fleet_full\"} 0"
            ),
            "{text}"
        );
    }

    /// Prometheus naming: counters end in `_total`, durations are histograms in `_seconds`,
    /// byte counts say `_bytes`, the info gauge ends in `_info` with value 1. Checked over
    /// every family, with every optional feature configured so each has a series.
    #[test]
    fn every_family_follows_the_naming_conventions() {
        use prometheus::proto::MetricType;
        let everything = BASE
            .replace(
                "    health: { probe: tcp }\n",
                "    health: { probe: tcp }\n    passive: { consecutive_failures: 1, eject_for: 1s }\n    \
                 cleanup: { older_than: 7d, every: 24h }\n    max_sessions_per_upstream: 5\n",
            )
            .replace(
                "key: [ { header: X-Session-Id } ] }",
                "key: [ { header: X-Session-Id } ], learn: [ { response_header: Mcp-Session-Id } ] }",
            );
        let metrics = Metrics::new(Registry::new()).expect("metrics");
        metrics.precreate(&config(&everything));
        // The store creates its own series, only with Redis configured.
        metrics.redis_errors_total.with_label_values(&["bind"]);
        metrics.store_fallback_total.with_label_values(&["bind"]);
        let families = metrics.registry().gather();
        assert_eq!(families.len(), 35, "every family has a series");
        for f in &families {
            let name = f.get_name();
            assert!(name.starts_with("sessiongate_"), "{name}");
            match f.get_field_type() {
                MetricType::COUNTER => assert!(name.ends_with("_total"), "counter {name}"),
                MetricType::HISTOGRAM => {
                    assert!(name.ends_with("_seconds"), "histogram {name}")
                }
                MetricType::GAUGE if name.ends_with("_info") => {
                    for m in f.get_metric() {
                        assert_eq!(m.get_gauge().get_value(), 1.0, "{name}");
                    }
                }
                MetricType::GAUGE => assert!(!name.ends_with("_total"), "gauge {name}"),
                other => panic!("{name}: unexpected type {other:?}"),
            }
            for unit in ["millis", "_ms", "micro", "kb", "mib", "minutes"] {
                assert!(!name.contains(unit), "{name}: not a base unit");
            }
            if name.contains("bytes") {
                assert!(
                    name.ends_with("_bytes") || name.ends_with("_bytes_total"),
                    "{name}"
                );
            }
        }
    }
}

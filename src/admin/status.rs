//! `GET /` on the admin listener: one self-contained HTML status page (inline CSS, no script,
//! no external asset; it refreshes itself every 5 s) showing what the JSON endpoints report:
//! pools with ring shares, each upstream's health, drain, live sessions and last probe,
//! listeners with open connections, the top sessions by p99 latency, and the recent reloads
//! with their diff. Every inserted value is escaped ([`super::html`]). Protected like
//! `/admin/*` (it shows session ids).

use std::fmt::Write;
use std::time::SystemTime;

use super::html::{escape, Table};
use super::sessions::{top, By};
use crate::server::Server;
use crate::upstream::Upstream;

/// Sessions in the page's top list.
const TOP_SESSIONS: usize = 10;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
.meta{color:#666}
table{border-collapse:collapse;background:#fff;margin-bottom:.6em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.healthy,td.ok,td.success{color:#137333;font-weight:600}
td.down,td.ejected,td.failure,td.failed{color:#b3261e;font-weight:600}
td.draining{color:#a56a00;font-weight:600}
code,td.mono{font-family:ui-monospace,monospace;font-size:.92em}
";

pub(super) fn page(server: &Server) -> String {
    let snapshot = server.snapshot();
    let metrics = server.metrics();
    let now = humantime::format_rfc3339_seconds(SystemTime::now());
    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <title>sessiongate status</title><style>{STYLE}</style></head><body>\
         <h1>sessiongate</h1><p class=\"meta\">config version {} · {} · generated {} · \
         refreshes every 5 s</p>",
        snapshot.version,
        escape(&snapshot.source.display().to_string()),
        now
    );

    let mut pools: Vec<_> = snapshot.pools().collect();
    pools.sort_by(|a, b| a.name().cmp(b.name()));
    html.push_str("<h2>Pools</h2>");
    for p in &pools {
        let _ = write!(
            html,
            "<h3 class=\"pool\" id=\"pool-{0}\">pool {0}</h3><p class=\"meta\">{1} vnodes · {2} live sessions (bound {3})</p>",
            escape(p.name()),
            p.config.vnodes,
            p.pins.live_total(),
            p.pins.capacity()
        );
        let mut t = Table::new(
            "upstreams",
            &[
                "upstream",
                "address",
                "weight",
                "ring share",
                "health",
                "drain",
                "live sessions",
                "open connections",
                "last probe",
            ],
        );
        for (u, share) in p.upstreams.iter().zip(p.ring.shares()) {
            let (health, health_class) = health(u);
            let drain = if u.state.is_draining() {
                ("draining", "draining")
            } else {
                ("no", "")
            };
            let open = metrics
                .upstream_connections_active
                .with_label_values(&[p.name(), u.name()])
                .get();
            let (probe, probe_class) = match u.state.last_probe() {
                None => ("none yet".to_owned(), ""),
                Some(r) => {
                    let at = humantime::format_rfc3339_seconds(r.at);
                    match (r.ok, r.error) {
                        (true, _) => (format!("ok in {:.1} ms at {at}", r.latency_ms), "ok"),
                        (false, e) => (
                            format!("failed at {at}: {}", e.unwrap_or_default()),
                            "failed",
                        ),
                    }
                }
            };
            t.row_classed(&[
                (u.name().to_owned(), "mono"),
                (u.addr().to_owned(), "mono"),
                (u.config.weight.to_string(), ""),
                (format!("{:.1}%", share * 100.0), ""),
                (health.to_owned(), health_class),
                (drain.0.to_owned(), drain.1),
                (p.pins.live_on(u.name()).to_string(), ""),
                (open.to_string(), ""),
                (probe, probe_class),
            ]);
        }
        html.push_str(&t.finish());
    }

    html.push_str("<h2>Listeners</h2>");
    let mut t = Table::new(
        "listeners",
        &[
            "listener",
            "protocol",
            "address",
            "pool",
            "open connections",
        ],
    );
    let bound: std::collections::HashMap<String, String> = server
        .lock_listeners()
        .iter()
        .map(|(n, r)| (n.clone(), r.bound.to_string()))
        .collect();
    for l in &snapshot.config.listeners {
        let open = metrics
            .connections_active
            .with_label_values(&[&l.name])
            .get();
        t.row(&[
            l.name.clone(),
            l.protocol.as_str().to_owned(),
            bound
                .get(&l.name)
                .cloned()
                .unwrap_or_else(|| l.listen.to_string()),
            l.pool.clone().unwrap_or_else(|| "(by tenant)".into()),
            open.to_string(),
        ]);
    }
    html.push_str(&t.finish());

    let (rows, live) = top(&snapshot, By::P99, TOP_SESSIONS);
    let _ = write!(
        html,
        "<h2>Top sessions by p99 latency</h2><p class=\"meta\">{live} live sessions; \
         <code>/admin/sessions/{{id}}</code> has the details</p>"
    );
    let mut t = Table::new(
        "sessions",
        &[
            "session",
            "pool",
            "node",
            "requests",
            "errors",
            "in flight",
            "p50 ms",
            "p99 ms",
            "max ms",
            "last activity",
        ],
    );
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    for row in &rows {
        let v = row.session.stats.view();
        t.row_classed(&[
            (row.session.id.to_string(), "mono session"),
            (row.pool.to_string(), ""),
            (row.session.pin.upstream.to_string(), "mono"),
            (v.requests.to_string(), ""),
            (v.errors.to_string(), ""),
            (v.in_flight.to_string(), ""),
            (ms(v.latency_ms.p50), ""),
            (ms(v.latency_ms.p99), ""),
            (ms(v.latency_ms.max), ""),
            (v.last_activity, ""),
        ]);
    }
    html.push_str(&t.finish());

    html.push_str("<h2>Recent reloads</h2>");
    let reloads = server.reloads.recent();
    if reloads.is_empty() {
        html.push_str("<p class=\"meta\">no reload since start</p>");
    }
    let mut t = Table::new("reloads", &["at", "version", "result", "changes / error"]);
    for r in &reloads {
        let changes = match &r.error {
            Some(e) => e.clone(),
            None => {
                let mut parts: Vec<String> = r
                    .pools
                    .iter()
                    .map(|d| {
                        format!(
                            "{}: +[{}] −[{}], keyspace moved {:.1}%",
                            d.pool,
                            d.added.join(", "),
                            d.removed.join(", "),
                            d.moved_share * 100.0
                        )
                    })
                    .collect();
                if !r.listeners_added.is_empty() {
                    parts.push(format!("listeners added: {}", r.listeners_added.join(", ")));
                }
                if !r.listeners_removed.is_empty() {
                    parts.push(format!(
                        "listeners removed: {}",
                        r.listeners_removed.join(", ")
                    ));
                }
                parts.join("; ")
            }
        };
        t.row_classed(&[
            (r.at.clone(), "reload"),
            (r.version.map_or_else(|| "-".into(), |v| v.to_string()), ""),
            (r.result.to_owned(), r.result),
            (changes, ""),
        ]);
    }
    html.push_str(&t.finish());
    html.push_str("</body></html>\n");
    html
}

/// An upstream's health as a word and the CSS class that colours it.
fn health(u: &Upstream) -> (&'static str, &'static str) {
    if u.state.is_ejected() {
        ("ejected", "ejected")
    } else if u.state.is_healthy() {
        ("healthy", "healthy")
    } else {
        ("down", "down")
    }
}

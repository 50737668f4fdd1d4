//! Validation of a pool's `discover:` block: exactly one of `dns_srv` and `dns`, `port` only
//! (and always) with `dns`, a positive `every`, a nameserver address; and what discovered
//! upstreams inherit from the pool (its `token_env`, its `max_sessions_per_upstream`).

use super::super::schema::RawDiscover;
use super::*;

/// Kubernetes' default for headless Services is a handful of seconds of DNS TTL; 10s keeps
/// lookups cheap and scale changes prompt.
const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// The typed `discover:` of pool `path` (`pools.NAME`), or `None` if absent or invalid (the
/// errors are recorded). `static_upstreams`: the pool also lists `upstreams:`.
pub(super) fn discover(
    errs: &mut Errors,
    path: &str,
    raw: Option<RawDiscover>,
    token_env: Option<&str>,
    max_sessions: Option<usize>,
    static_upstreams: bool,
) -> Option<DiscoverConfig> {
    let raw = raw?;
    let at = format!("{path}.discover");
    if static_upstreams {
        errs.push(
            format!("{path}.upstreams"),
            "not allowed with discover: (the upstreams are discovered)",
        );
    }
    let target = match (raw.dns_srv, raw.dns) {
        (Some(name), None) => {
            if raw.port.is_some() {
                errs.push(
                    format!("{at}.port"),
                    "only with dns: (SRV records carry their port)",
                );
            }
            dns_name(errs, &format!("{at}.dns_srv"), &name).then_some(DiscoverTarget::Srv(name))
        }
        (None, Some(name)) => {
            let port = match raw.port {
                Some(0) => {
                    errs.push(format!("{at}.port"), "must be between 1 and 65535");
                    None
                }
                None => {
                    errs.push(format!("{at}.port"), "required with dns:");
                    None
                }
                port => port,
            };
            let valid = dns_name(errs, &format!("{at}.dns"), &name);
            port.filter(|_| valid)
                .map(|port| DiscoverTarget::Dns { name, port })
        }
        _ => {
            errs.push(at.as_str(), "set exactly one of dns_srv, dns");
            None
        }
    };
    let every = errs.duration(&format!("{at}.every"), raw.every.as_deref(), DEFAULT_EVERY);
    let resolver = raw.resolver.as_deref().and_then(|text| {
        // A bare IP means the DNS port, as in resolv.conf.
        let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
            text.parse::<std::net::IpAddr>()
                .ok()
                .map(|ip| (ip, 53).into())
        });
        if parsed.is_none() {
            errs.push(
                format!("{at}.resolver"),
                format!("invalid address {text:?}; expected ip or ip:port"),
            );
        }
        parsed
    });
    let token = match token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Some(Secret(value.into())),
            _ => {
                errs.push(
                    format!("{path}.token_env"),
                    format!("environment variable {var} is not set"),
                );
                None
            }
        },
    };
    Some(DiscoverConfig {
        target: target?,
        every,
        resolver,
        token,
        max_sessions,
    })
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_` (SRV names start with
/// `_service._proto`), optionally fully qualified with a trailing dot.
fn dns_name(errs: &mut Errors, path: &str, name: &str) -> bool {
    let labels: Vec<&str> = name.strip_suffix('.').unwrap_or(name).split('.').collect();
    let valid = name.len() <= 253
        && labels.iter().all(|l| {
            (1..=63).contains(&l.len())
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        errs.push(path, format!("invalid DNS name {name:?}"));
    }
    valid
}

//! One discovery lookup with hickory-resolver: SRV records (each target host at the record's
//! port, named by the host) or A/AAAA records (each address at the configured port, named by
//! `ip:port`). The resolver's own cache is cleared before each lookup: the lookup interval is
//! the cache, and a cached answer would hide a scale change until its TTL ran out.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::{DiscoverConfig, DiscoverTarget};

/// Why a lookup gave no usable set. Both keep the last good set.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// NXDOMAIN, or an answer without records (a headless Service with no ready pods).
    #[error("no records for {0}")]
    Empty(String),
    /// Timeout, SERVFAIL, refused, unreachable nameserver, unreadable resolv.conf.
    #[error("{0}")]
    Failed(String),
}

/// A resolver for one pool's `discover:`.
pub struct Lookup {
    resolver: TokioResolver,
    target: DiscoverTarget,
}

impl Lookup {
    /// The resolver `config` asks: its `resolver:` nameserver, else the system's.
    pub fn new(config: &DiscoverConfig) -> Result<Lookup, LookupError> {
        let provider = TokioRuntimeProvider::default();
        let builder = match config.resolver {
            Some(addr) => {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut server.connections {
                    c.port = addr.port();
                }
                let servers = ResolverConfig::from_parts(None, vec![], vec![server]);
                TokioResolver::builder_with_config(servers, provider)
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| LookupError::Failed(format!("system resolver: {e}")))?,
        };
        // A lookup must not outlast the interval by much: a silent nameserver is a failure to
        // count, not a reason for the loop to stall (two attempts of at most 5s each).
        let mut builder = builder;
        builder.options_mut().timeout = config
            .every
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        let resolver = builder
            .build()
            .map_err(|e| LookupError::Failed(format!("resolver: {e}")))?;
        Ok(Lookup {
            resolver,
            target: config.target.clone(),
        })
    }

    /// The upstreams the records name now: `(ring name, ip:port)`, sorted by name.
    /// `previous` (name → addr) stands in for an SRV target whose address lookup failed.
    pub async fn run(
        &self,
        previous: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, LookupError> {
        self.resolver.clear_cache();
        let found = match &self.target {
            DiscoverTarget::Srv(name) => self.srv(name, previous).await?,
            DiscoverTarget::Dns { name, port } => self
                .ips(name)
                .await?
                .into_iter()
                .map(|ip| {
                    let addr = SocketAddr::new(ip, *port).to_string();
                    (addr.clone(), addr)
                })
                .collect(),
        };
        if found.is_empty() {
            return Err(LookupError::Empty(self.target.to_string()));
        }
        Ok(found)
    }

    async fn srv(
        &self,
        name: &str,
        previous: &BTreeMap<String, String>,
    ) -> Result<Vec<(String, String)>, LookupError> {
        let answer = self
            .resolver
            .srv_lookup(absolute(name))
            .await
            .map_err(|e| classify(name, e))?;
        let mut targets: BTreeMap<String, u16> = BTreeMap::new();
        for record in answer.answers() {
            if let RData::SRV(srv) = &record.data {
                let host = srv.target.to_ascii();
                let host = host.trim_end_matches('.');
                // "." means "no service here" (RFC 2782).
                if !host.is_empty() {
                    targets.insert(host.to_owned(), srv.port);
                }
            }
        }
        let lookups = targets.iter().map(|(host, port)| async move {
            let ip = self
                .ips(host)
                .await
                .ok()
                .and_then(|ips| ips.first().copied());
            let addr = match ip {
                Some(ip) => Some(SocketAddr::new(ip, *port).to_string()),
                // A pod whose name does not resolve for a moment keeps its last address;
                // one never resolved is left out until it does.
                None => previous.get(host).cloned(),
            };
            addr.map(|a| (host.clone(), a))
        });
        Ok(futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .flatten()
            .collect())
    }

    /// The addresses of `host`, in a stable order (the first is the one used for a target).
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, LookupError> {
        let answer = self
            .resolver
            .lookup_ip(absolute(host))
            .await
            .map_err(|e| classify(host, e))?;
        let mut ips: Vec<IpAddr> = answer.iter().collect();
        ips.sort();
        ips.dedup();
        Ok(ips)
    }
}

/// Names in `discover:` are absolute: no search domains (Kubernetes' `ndots: 5` would try
/// several wrong names first).
fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn classify(name: &str, e: hickory_resolver::net::NetError) -> LookupError {
    if e.is_no_records_found() {
        LookupError::Empty(name.to_owned())
    } else {
        LookupError::Failed(format!("{name}: {e}"))
    }
}

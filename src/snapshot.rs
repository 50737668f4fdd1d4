//! The immutable routing state of one config version. Everything a request needs (listener
//! settings, key sources, TLS acceptor, pools with their rings and upstreams) is in one
//! [`Snapshot`] behind one `ArcSwap`; the data path loads it once per request or message, and
//! new snapshots are built off the data path by the reload code.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, ListenerConfig, PoolConfig, Protocol, Who};
use crate::identity::{Identities, Identity};
use crate::key::HttpKeys;
use crate::listener::tls;
use crate::metrics::Metrics;
use crate::ring::{FirstUsable, Ring, RingSelection};
use crate::sessions::{Pin, SessionPins};
use crate::store::Store;
use crate::upstream::Upstream;

/// The one shared handle to the snapshot now serving.
pub type Shared = Arc<ArcSwap<Snapshot>>;

pub struct Snapshot {
    pub version: u64,
    pub config: Arc<Config>,
    /// The file this snapshot was read from; reloads read it again.
    pub source: PathBuf,
    pools: HashMap<String, Arc<Pool>>,
    listeners: HashMap<String, Arc<ListenerRuntime>>,
    /// Known callers (`identities:`), loaded from the tokens file with this snapshot.
    pub identities: Option<Arc<Identities>>,
}

/// What a snapshot loads from the files its config names, one acceptor slot per listener.
struct Files {
    identities: Option<Arc<Identities>>,
    acceptors: Vec<Option<TlsAcceptor>>,
}

/// A pool of upstreams and the ring that spreads keys over them.
pub struct Pool {
    pub config: PoolConfig,
    pub ring: Ring,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Where sessions live (JSON-RPC sessions, and HTTP sessions learned from responses);
    /// carried across reloads by pool name.
    pub pins: SessionPins,
    /// An HTTP listener learns pins into this pool (`learn:`): HTTP requests into it follow
    /// pins, and pins on a removed upstream stay after its drain (answered per
    /// `on_owner_down`, since no other upstream holds those sessions).
    pub learned_pins: bool,
}

/// Per-listener runtime settings derived from its config.
pub struct ListenerRuntime {
    pub config: ListenerConfig,
    /// The pool of callers no `tenants:` entry names; `None`: they are refused.
    pub pool: Option<PoolRoute>,
    /// Callers with a pool of their own.
    pub tenants: Vec<(Who, PoolRoute)>,
    pub http_keys: HttpKeys,
    pub tls: Option<TlsAcceptor>,
}

/// A pool as one listener routes into it.
pub struct PoolRoute {
    pub pool: Arc<Pool>,
    /// Metric handles per upstream of `pool` (same index), resolved once per snapshot so the
    /// data path does not hash label values per request.
    pub stats: Vec<UpstreamStats>,
}

impl ListenerRuntime {
    /// Where a caller's requests go: its tenant's (or user's) pool, else the listener's pool.
    pub fn route_for(&self, caller: Option<&Identity>) -> Option<&PoolRoute> {
        if let Some(who) = caller {
            let tenant = who.tenant.as_deref();
            if let Some((_, route)) = self
                .tenants
                .iter()
                .find(|(w, _)| w.names(&who.user, tenant))
            {
                return Some(route);
            }
        }
        self.pool.as_ref()
    }

    /// The route of callers without a pool of their own (listeners without `tenants:` have
    /// only this one).
    pub fn default_pool(&self) -> Option<&Arc<Pool>> {
        self.pool.as_ref().map(|r| &r.pool)
    }

    /// Every route of this listener.
    pub fn routes(&self) -> impl Iterator<Item = &PoolRoute> {
        self.pool.iter().chain(self.tenants.iter().map(|(_, r)| r))
    }
}

/// Where a new session goes ([`Pool::place_new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewPlacement {
    /// `upstreams[index]`; `spilled_from`: the node the ring would have chosen, passed over
    /// because it was at its bound or cap.
    At {
        index: usize,
        spilled_from: Option<usize>,
    },
    /// Every node that can take work is at its cap.
    Full,
    /// No node can take work.
    NoNode,
}

/// The most live sessions a node may hold under bounded load: `ceil(factor × m / n)`.
pub fn load_bound(factor: f64, m: usize, n: usize) -> usize {
    ((factor * m as f64) / n as f64).ceil() as usize
}

/// Walk `candidates` (ring order from the key) for the first usable node under its cap and the
/// bound. When the bound leaves no node (rounding, with caps), the cap alone decides.
pub fn choose_new(
    candidates: impl Iterator<Item = usize> + Clone,
    usable: &[bool],
    live: &[usize],
    caps: &[Option<usize>],
    bound: Option<usize>,
) -> NewPlacement {
    let under_cap = |i: usize| caps[i].is_none_or(|cap| live[i] < cap);
    let under_bound = |i: usize| bound.is_none_or(|b| live[i] < b);
    let Some(first) = candidates.clone().find(|&i| usable[i]) else {
        return NewPlacement::NoNode;
    };
    let chosen = candidates
        .clone()
        .find(|&i| usable[i] && under_cap(i) && under_bound(i))
        .or_else(|| candidates.clone().find(|&i| usable[i] && under_cap(i)));
    match chosen {
        Some(index) => NewPlacement::At {
            index,
            spilled_from: (index != first).then_some(first),
        },
        None => NewPlacement::Full,
    }
}

/// The per-request metric series of one listener × upstream.
pub struct UpstreamStats {
    pub duration: Histogram,
    /// `requests_total` with code 200, by far the most common series.
    pub ok: IntCounter,
}

impl Pool {
    fn build(
        config: &PoolConfig,
        previous: Option<&Pool>,
        metrics: &Metrics,
        learned_pins: bool,
        store: &Store,
    ) -> Pool {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let prev = previous.and_then(|p| p.upstream(&u.name));
                Upstream::build(config, u, prev, metrics, previous.map(|p| &p.config))
            })
            .collect();
        let ring = Ring::build(
            config.upstreams.iter().map(|u| (u.name.as_str(), u.weight)),
            config.vnodes,
        );
        let pins = match previous {
            Some(p) => p
                .pins
                .with_policy(config.session_idle_ttl, config.max_pinned_sessions),
            None => SessionPins::new(config.session_idle_ttl, config.max_pinned_sessions)
                .with_shared(store.shared_pins(&config.name, config.session_idle_ttl)),
        };
        Pool {
            config: config.clone(),
            ring,
            upstreams,
            pins,
            learned_pins,
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The upstream that should take new work for `key`: its ring owner, or the next upstream
    /// clockwise that is healthy and not draining. `None` when no upstream can take work.
    pub fn route(&self, key: &[u8]) -> Option<&Arc<Upstream>> {
        self.route_index(key).map(|i| &self.upstreams[i])
    }

    /// Like [`Pool::route`], as an index into `upstreams`.
    pub fn route_index(&self, key: &[u8]) -> Option<usize> {
        self.route_index_avoiding(key, &[])
    }

    /// Like [`Pool::route`], passing over the upstreams named in `avoid` (ones that just
    /// refused a connection, before health checks have noticed).
    pub fn route_avoiding(&self, key: &[u8], avoid: &[Arc<str>]) -> Option<&Arc<Upstream>> {
        self.route_index_avoiding(key, avoid)
            .map(|i| &self.upstreams[i])
    }

    fn route_index_avoiding(&self, key: &[u8], avoid: &[Arc<str>]) -> Option<usize> {
        FirstUsable.select(&self.ring, key, &|i| {
            let u = &self.upstreams[i];
            u.state.accepts_new_work() && !avoid.iter().any(|name| **name == *u.name())
        })
    }

    /// Where a NEW session with key `key` goes. Without `load_factor` or caps: as
    /// [`Pool::route`]. With them, the first node clockwise from the key that can take work,
    /// is under its cap and under the load bound `ceil(load_factor × m / n)` (`m` live sessions
    /// in the pool counting this one, `n` nodes that can take work); existing sessions never
    /// move. Under caps alone, full nodes are passed over.
    pub fn place_new(&self, key: &[u8]) -> NewPlacement {
        if !self.places_by_load() {
            return match self.route_index(key) {
                Some(index) => NewPlacement::At {
                    index,
                    spilled_from: None,
                },
                None => NewPlacement::NoNode,
            };
        }
        let usable: Vec<bool> = self
            .upstreams
            .iter()
            .map(|u| u.state.accepts_new_work())
            .collect();
        let live: Vec<usize> = self
            .upstreams
            .iter()
            .map(|u| self.pins.placed_on(u.name()))
            .collect();
        let caps: Vec<Option<usize>> = self
            .upstreams
            .iter()
            .map(|u| u.config.max_sessions)
            .collect();
        let bound = self.config.load_factor.map(|factor| {
            let n = usable.iter().filter(|&&u| u).count().max(1);
            load_bound(factor, self.pins.placed_total() + 1, n)
        });
        choose_new(self.ring.candidates(key), &usable, &live, &caps, bound)
    }

    /// New sessions are placed by load or caps (not by the ring alone).
    pub fn places_by_load(&self) -> bool {
        self.config.load_factor.is_some()
            || self
                .upstreams
                .iter()
                .any(|u| u.config.max_sessions.is_some())
    }

    /// Route a request that carries no key: a uniformly random point on the ring.
    pub fn route_random(&self) -> Option<&Arc<Upstream>> {
        self.route(&rand::random::<u64>().to_le_bytes())
    }

    /// Like [`Pool::route_random`], as an index into `upstreams`.
    pub fn route_random_index(&self) -> Option<usize> {
        self.route_index(&rand::random::<u64>().to_le_bytes())
    }

    /// The ring owner of `key`, ignoring health and drain.
    pub fn owner(&self, key: &[u8]) -> Option<&Arc<Upstream>> {
        self.ring.owner(key).map(|i| &self.upstreams[i])
    }

    /// The node `pin` points at: the pool's upstream of that name, or, for one a reload removed
    /// and that still drains, its pinned address with the token it had.
    /// Where `session` lives: its pin here, else (with `redis:`) the pin another replica
    /// recorded, kept here from then on. `None`: no replica knows it (or Redis did not answer),
    /// or it names a node this pool no longer has.
    pub async fn recall_pin(&self, session: &str) -> Option<Pin> {
        if let Some(pin) = self.pins.get(session) {
            return Some(pin);
        }
        let node = self.pins.shared()?.lookup(session).await?;
        let pin = match self.upstream(&node) {
            Some(u) => u.endpoint.pin(),
            None => self.pins.retired(&node)?.endpoint.pin(),
        };
        self.pins.adopt(session, pin.clone());
        Some(pin)
    }

    pub fn pinned_endpoint(&self, pin: &Pin) -> crate::upstream::Endpoint {
        match self.upstream(&pin.upstream) {
            Some(u) => u.endpoint.clone(),
            None => crate::upstream::Endpoint {
                name: pin.upstream.clone(),
                addr: pin.addr.clone(),
                token: self.pins.retired_token(&pin.upstream),
            },
        }
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<Upstream>> {
        self.upstreams.iter().find(|u| u.name() == name)
    }

    /// Can any upstream take new work?
    pub fn routable(&self) -> bool {
        self.upstreams.iter().any(|u| u.state.accepts_new_work())
    }

    pub fn upstream_names(&self) -> Vec<&str> {
        self.upstreams.iter().map(|u| u.name()).collect()
    }
}

impl Snapshot {
    /// Build a snapshot for `config`, carrying upstream state and warm connection pools over from
    /// `previous` by upstream name. Reads TLS files; fails without side effects.
    pub fn build(
        config: Config,
        source: &Path,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        store: &Store,
    ) -> Result<Snapshot, ConfigError> {
        let files = Snapshot::load_files(&config, source)?;
        Ok(Snapshot::assemble(
            config, source, previous, metrics, store, files,
        ))
    }

    /// This snapshot with pool `pool`'s upstreams replaced (discovery): the next version, with
    /// the same files (TLS, tokens) and nothing read from disk, so it cannot fail.
    pub fn with_upstreams(
        &self,
        pool: &str,
        upstreams: Vec<crate::config::UpstreamConfig>,
        metrics: &Metrics,
        store: &Store,
    ) -> Snapshot {
        let mut config = (*self.config).clone();
        if let Some(p) = config.pools.get_mut(pool) {
            p.upstreams = upstreams;
        }
        let files = Files {
            identities: self.identities.clone(),
            acceptors: config
                .listeners
                .iter()
                .map(|l| self.listeners.get(&l.name).and_then(|r| r.tls.clone()))
                .collect(),
        };
        Snapshot::assemble(config, &self.source, Some(self), metrics, store, files)
    }

    /// The files a config names (tokens, TLS): the only steps of a build that can fail, done
    /// before anything registers metrics.
    fn load_files(config: &Config, source: &Path) -> Result<Files, ConfigError> {
        let identities = match &config.identities {
            Some(ids) => Some(Arc::new(Identities::load(ids).map_err(|message| {
                ConfigError::File {
                    file: source.to_owned(),
                    path: "identities.tokens_file".into(),
                    message,
                }
            })?)),
            None => None,
        };
        let mut acceptors = Vec::with_capacity(config.listeners.len());
        for (i, l) in config.listeners.iter().enumerate() {
            let Some(files) = &l.tls else {
                acceptors.push(None);
                continue;
            };
            let alpn: &[&[u8]] = match l.protocol {
                Protocol::Http => &[b"h2", b"http/1.1"],
                _ => &[],
            };
            let acceptor =
                tls::acceptor(files, alpn).map_err(|(field, message)| ConfigError::File {
                    file: source.to_owned(),
                    path: format!("listeners[{i}].tls.{field}"),
                    message,
                })?;
            acceptors.push(Some(acceptor));
        }
        Ok(Files {
            identities,
            acceptors,
        })
    }

    fn assemble(
        config: Config,
        source: &Path,
        previous: Option<&Snapshot>,
        metrics: &Metrics,
        store: &Store,
        files: Files,
    ) -> Snapshot {
        let Files {
            identities,
            acceptors,
        } = files;
        let learning: HashSet<&str> = config
            .listeners
            .iter()
            .filter(|l| !l.learn.is_empty())
            .flat_map(|l| l.pools())
            .collect();
        let pools: HashMap<String, Arc<Pool>> = config
            .pools
            .values()
            .map(|p| {
                let prev = previous.and_then(|s| s.pools.get(&p.name)).map(|p| &**p);
                let learns = learning.contains(p.name.as_str());
                (
                    p.name.clone(),
                    Arc::new(Pool::build(p, prev, metrics, learns, store)),
                )
            })
            .collect();
        let mut listeners = HashMap::new();
        for (l, tls) in config.listeners.iter().zip(acceptors) {
            // Validation guarantees the pools exist.
            let route = |name: &str| {
                let pool = pools[name].clone();
                let ok_code = match l.protocol {
                    Protocol::JsonRpc => "ok",
                    _ => "200",
                };
                let stats = pool
                    .upstreams
                    .iter()
                    .map(|u| {
                        let labels = [l.name.as_str(), pool.name(), u.name()];
                        UpstreamStats {
                            duration: metrics.request_duration.with_label_values(&labels),
                            ok: metrics
                                .requests_total
                                .with_label_values(&[labels[0], labels[1], labels[2], ok_code]),
                        }
                    })
                    .collect();
                PoolRoute { pool, stats }
            };
            let runtime = ListenerRuntime {
                config: l.clone(),
                pool: l.pool.as_deref().map(route),
                tenants: l
                    .tenants
                    .iter()
                    .map(|t| (t.who.clone(), route(&t.pool)))
                    .collect(),
                http_keys: HttpKeys::from_config(&l.key),
                tls,
            };
            listeners.insert(l.name.clone(), Arc::new(runtime));
        }
        Snapshot {
            version: previous.map_or(1, |p| p.version + 1),
            config: Arc::new(config),
            source: source.to_owned(),
            pools,
            listeners,
            identities,
        }
    }

    /// Make this snapshot's settings live in the state it shares with the one serving before it:
    /// each upstream's drain by config, the bounds on per-session series, and every metric
    /// series the config names, at 0. Called once the snapshot is stored (never by
    /// [`Snapshot::build`], so a refused reload changes nothing).
    pub fn activate(&self, metrics: &Metrics) {
        metrics.precreate(&self.config);
        for pool in self.pools.values() {
            for u in &pool.upstreams {
                u.state.set_config_drain(u.config.drain);
            }
        }
        metrics.sessions.set_limits(
            self.config.metrics.max_session_series,
            self.config.metrics.session_series_idle,
        );
    }

    /// Undo what building `self` registered, for a snapshot that will never serve: the metric
    /// series of listener × upstream pairs and of upstreams that `current` does not have.
    pub fn discard(self, current: &Snapshot, metrics: &Metrics) {
        for (name, l) in &self.listeners {
            let live = current.listener(name);
            for route in l.routes() {
                let pool = route.pool.name();
                let live_pool = live.and_then(|c| c.routes().find(|r| r.pool.name() == pool));
                for u in &route.pool.upstreams {
                    if live_pool.is_some_and(|r| r.pool.upstream(u.name()).is_some()) {
                        continue;
                    }
                    let labels = [name.as_str(), pool, u.name()];
                    let _ = metrics.request_duration.remove_label_values(&labels);
                    for code in ["200", "ok"] {
                        let _ = metrics
                            .requests_total
                            .remove_label_values(&[labels[0], labels[1], labels[2], code]);
                    }
                }
            }
        }
        for pool in self.pools.values() {
            let live = current.pool(pool.name());
            for u in &pool.upstreams {
                if live.is_none_or(|p| p.upstream(u.name()).is_none()) {
                    let _ = metrics
                        .upstream_connections_active
                        .remove_label_values(&[pool.name(), u.name()]);
                }
            }
        }
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.pools.values()
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRuntime>> {
        self.listeners.get(name)
    }

    /// Every pool has an upstream that can take work.
    pub fn ready(&self) -> bool {
        self.pools.values().all(|p| p.routable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_load_bound_is_the_ceiling_of_factor_times_mean() {
        let cases = [
            (1.25, 1, 4, 1),
            (1.25, 4, 4, 2),
            (1.25, 100, 4, 32),
            (1.25, 2000, 4, 625),
            (2.0, 9, 3, 6),
            (1.01, 10, 10, 2),
        ];
        for (factor, m, n, expected) in cases {
            assert_eq!(load_bound(factor, m, n), expected, "{factor} {m} {n}");
        }
    }

    #[test]
    fn new_sessions_go_to_the_first_node_under_bound_and_cap() {
        use NewPlacement::*;
        let walk = [2usize, 0, 3, 1];
        // (usable, live, caps, bound, expected)
        type Case = (
            [bool; 4],
            [usize; 4],
            [Option<usize>; 4],
            Option<usize>,
            NewPlacement,
        );
        let at = |index, from| At {
            index,
            spilled_from: from,
        };
        let cases: [Case; 8] = [
            ([true; 4], [0; 4], [None; 4], None, at(2, None)),
            ([true; 4], [0, 0, 5, 0], [None; 4], Some(5), at(0, Some(2))),
            ([true; 4], [5, 0, 5, 0], [None; 4], Some(5), at(3, Some(2))),
            (
                [false, true, true, true],
                [0, 0, 0, 0],
                [None; 4],
                Some(1),
                at(2, None),
            ),
            ([true; 4], [1, 1, 3, 1], [Some(3); 4], None, at(0, Some(2))),
            ([true; 4], [3; 4], [Some(3); 4], None, Full),
            // The bound leaves nothing (all at it): the cap alone decides.
            ([true; 4], [2; 4], [Some(3); 4], Some(2), at(2, None)),
            ([false; 4], [0; 4], [None; 4], None, NoNode),
        ];
        for (usable, live, caps, bound, expected) in cases {
            let got = choose_new(walk.iter().copied(), &usable, &live, &caps, bound);
            assert_eq!(got, expected, "{usable:?} {live:?} {caps:?} {bound:?}");
        }
    }
}

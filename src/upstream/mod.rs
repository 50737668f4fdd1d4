//! Upstreams: one [`Upstream`] per configured server, carrying its HTTP connection pool and the
//! state that must survive reloads (health, drain).

pub mod conns;
pub mod health;
pub mod idle;
pub mod pool;
pub mod prober;
pub mod state;

use std::sync::Arc;

use crate::config::{PoolConfig, Secret, UpstreamConfig};
use crate::metrics::Metrics;

pub use conns::IdleConns;
pub use pool::{HttpPool, PooledBody, UpstreamError};
pub use state::UpstreamState;

/// Where a connection to an upstream goes: shared handles, cloned without allocating on the
/// data path.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: Arc<str>,
    pub addr: Arc<str>,
    pub token: Option<Secret>,
}

impl Endpoint {
    /// A pin to this node.
    pub fn pin(&self) -> crate::sessions::Pin {
        crate::sessions::Pin {
            upstream: self.name.clone(),
            addr: self.addr.clone(),
        }
    }
}

/// One upstream server of a pool.
#[derive(Debug)]
pub struct Upstream {
    pub pool: String,
    pub config: UpstreamConfig,
    pub endpoint: Endpoint,
    pub state: Arc<UpstreamState>,
    /// The HTTP/2 path's hyper client connections.
    pub http: HttpPool,
    /// The owned HTTP/1.1 path's idle sockets.
    pub conns: IdleConns,
}

impl Upstream {
    /// Build an upstream, reusing `previous` (its connection pool and state) when the settings
    /// that shape the pool are unchanged, so a reload keeps warm keep-alive connections.
    pub fn build(
        pool: &PoolConfig,
        config: &UpstreamConfig,
        previous: Option<&Arc<Upstream>>,
        metrics: &Metrics,
        previous_pool: Option<&PoolConfig>,
    ) -> Arc<Upstream> {
        // Health and drain state follow the upstream's name, unless it now points elsewhere.
        // The config's `drain` is applied when the snapshot goes live (`Snapshot::activate`):
        // this state may be the one serving now, and a refused reload must leave it alone.
        let state = match previous {
            Some(p) if p.config.addr == config.addr => p.state.clone(),
            _ => Arc::new(UpstreamState::new(pool.health.initial_healthy)),
        };
        let same_pool_settings = previous_pool.is_some_and(|old| {
            old.connect_timeout == pool.connect_timeout
                && old.pool_max_idle_per_upstream == pool.pool_max_idle_per_upstream
                && old.pool_idle_timeout == pool.pool_idle_timeout
        });
        let (http, conns) = match previous {
            Some(p) if p.config.addr == config.addr && same_pool_settings => {
                (p.http.clone(), p.conns.clone())
            }
            _ => (
                HttpPool::new(pool, config, metrics),
                IdleConns::new(pool, config, metrics),
            ),
        };
        Arc::new(Upstream {
            pool: pool.name.clone(),
            config: config.clone(),
            endpoint: Endpoint {
                name: Arc::from(config.name.as_str()),
                addr: Arc::from(config.addr.as_str()),
                token: config.token.clone(),
            },
            state,
            http,
            conns,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn addr(&self) -> &str {
        &self.config.addr
    }
}

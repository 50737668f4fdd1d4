//! Upstream connections of the owned HTTP/1.1 path: per upstream, raw keep-alive sockets on
//! the upstream's idle stack ([`super::idle`]). A socket is lent to one exchange at a time and given back only when its
//! response was read to the end and the upstream keeps it open, so an idle socket is always
//! between messages. `sessiongate_upstream_connections_active` counts open sockets exactly
//! (shared with the HTTP/2 path's [`super::HttpPool`]).

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::TcpStream;

use super::idle::{self, ConnectError, IdleStack};
use crate::config::{PoolConfig, UpstreamConfig};
use crate::metrics::Metrics;

/// One upstream's idle sockets; cheap to clone (a reload keeps it when the address and pool
/// settings are unchanged, so warm connections survive).
#[derive(Clone)]
pub struct IdleConns(Arc<Inner>);

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConns")
            .field("addr", &self.0.addr)
            .field("idle", &self.0.idle.len())
            .finish()
    }
}

struct Inner {
    addr: Arc<str>,
    connect_timeout: Duration,
    idle: Arc<IdleStack<UpstreamConn>>,
    open: IntGauge,
}

/// An open socket to an upstream, counted in the open-connections gauge while it lives.
pub struct UpstreamConn {
    pub stream: TcpStream,
    /// It served an exchange before (a request on it may meet a close the upstream sent while
    /// it was idle).
    pub reused: bool,
    open: IntGauge,
}

impl Drop for UpstreamConn {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl IdleConns {
    pub fn new(pool: &PoolConfig, upstream: &UpstreamConfig, metrics: &Metrics) -> IdleConns {
        IdleConns(Arc::new(Inner {
            addr: Arc::from(upstream.addr.as_str()),
            connect_timeout: pool.connect_timeout,
            // A socket is checked where a request needs it to be open (see `h1::conn`).
            idle: IdleStack::new(
                pool.pool_max_idle_per_upstream,
                pool.pool_idle_timeout,
                |_| true,
            ),
            open: metrics
                .upstream_connections_active
                .with_label_values(&[&pool.name, &upstream.name]),
        }))
    }

    /// The most recently used idle socket still within its idle timeout, if any.
    pub fn checkout(&self) -> Option<UpstreamConn> {
        self.0.idle.pop()
    }

    /// A new socket (`TCP_NODELAY`), within the pool's connect timeout.
    pub async fn connect(&self) -> Result<UpstreamConn, ConnectError> {
        let stream = idle::connect(&self.0.addr, self.0.connect_timeout).await?;
        self.0.open.inc();
        Ok(UpstreamConn {
            stream,
            reused: false,
            open: self.0.open.clone(),
        })
    }

    /// Keep a socket that is between messages for the next exchange.
    pub fn give_back(&self, mut conn: UpstreamConn) {
        conn.reused = true;
        self.0.idle.push(conn);
    }
}

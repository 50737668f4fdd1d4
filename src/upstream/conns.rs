//! Upstream connections of the owned HTTP/1.1 path: per upstream, a stack of idle keep-alive
//! sockets, newest on top, bounded by `pool_max_idle_per_upstream` and closed after
//! `pool_idle_timeout`. A socket is lent to one exchange at a time and given back only when its
//! response was read to the end and the upstream keeps it open, so an idle socket is always
//! between messages. `sessiongate_upstream_connections_active` counts open sockets exactly
//! (shared with the HTTP/2 path's [`super::HttpPool`]).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::net::TcpStream;

use crate::config::{PoolConfig, UpstreamConfig};
use crate::metrics::Metrics;

/// Why no connection to an upstream could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Failed {
        addr: Arc<str>,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    TimedOut { addr: Arc<str>, after: Duration },
}

/// One upstream's idle sockets; cheap to clone (a reload keeps it when the address and pool
/// settings are unchanged, so warm connections survive).
#[derive(Clone)]
pub struct IdleConns(Arc<Inner>);

impl std::fmt::Debug for IdleConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleConns")
            .field("addr", &self.0.addr)
            .field("idle", &self.0.idle().conns.len())
            .finish()
    }
}

struct Inner {
    addr: Arc<str>,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<IdleStack>,
    open: IntGauge,
}

#[derive(Default)]
struct IdleStack {
    conns: Vec<(UpstreamConn, Instant)>,
    /// A sweeper task is closing sockets idle past the timeout.
    sweeping: bool,
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
            max_idle: pool.pool_max_idle_per_upstream,
            idle_timeout: pool.pool_idle_timeout,
            idle: Mutex::default(),
            open: metrics
                .upstream_connections_active
                .with_label_values(&[&pool.name, &upstream.name]),
        }))
    }

    /// The most recently used idle socket still within its idle timeout, if any.
    pub fn checkout(&self) -> Option<UpstreamConn> {
        let mut idle = self.0.idle();
        while let Some((conn, since)) = idle.conns.pop() {
            if since.elapsed() < self.0.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    /// A new socket (`TCP_NODELAY`), within the pool's connect timeout.
    pub async fn connect(&self) -> Result<UpstreamConn, ConnectError> {
        let inner = &self.0;
        let addr = inner.addr.clone();
        let connect = TcpStream::connect(&*addr);
        let stream = match tokio::time::timeout(inner.connect_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ConnectError::Failed { addr, source }),
            Err(_) => {
                let after = inner.connect_timeout;
                return Err(ConnectError::TimedOut { addr, after });
            }
        };
        let _ = stream.set_nodelay(true);
        inner.open.inc();
        Ok(UpstreamConn {
            stream,
            reused: false,
            open: inner.open.clone(),
        })
    }

    /// Keep a socket that is between messages for the next exchange.
    pub fn give_back(&self, mut conn: UpstreamConn) {
        let inner = &self.0;
        if inner.max_idle == 0 {
            return;
        }
        conn.reused = true;
        let mut idle = inner.idle();
        if idle.conns.len() >= inner.max_idle {
            return;
        }
        idle.conns.push((conn, Instant::now()));
        if !idle.sweeping {
            idle.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(inner), inner.idle_timeout));
        }
    }
}

impl Inner {
    fn idle(&self) -> MutexGuard<'_, IdleStack> {
        // The lock guards plain pushes and pops; a panic while holding it cannot leave the
        // stack half-changed, so a poisoned lock is still usable.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Close sockets idle past the timeout, until the stack is empty or the pool is gone.
async fn sweep(pool: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.idle();
        let timeout = pool.idle_timeout;
        idle.conns.retain(|(_, since)| since.elapsed() < timeout);
        if idle.conns.is_empty() {
            idle.sweeping = false;
            return;
        }
    }
}

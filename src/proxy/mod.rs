//! The data path, one module per listener protocol: [`http`] (hyper service, HTTP/1.1 and h2),
//! [`tcp`] (L4 passthrough keyed by SNI or client IP) and [`jsonrpc`] (per-message routing for
//! CLI fleets); [`idle`] parks idle plain-TCP HTTP/1 keep-alive connections without hyper's
//! buffers.

pub mod http;
pub mod idle;
pub mod jsonrpc;
pub mod tcp;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::Shared;

/// What every connection handler needs: the snapshot handle, metrics and shutdown signal.
#[derive(Clone)]
pub struct Context {
    pub shared: Shared,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
}

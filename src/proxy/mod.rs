//! The data path, one module per listener protocol: [`http`] (routing decisions for HTTP, and
//! hyper for HTTP/2) with [`h1`] (the owned HTTP/1.1 connections), [`tcp`] (L4 passthrough
//! keyed by SNI or client IP) and [`jsonrpc`] (per-message routing for CLI fleets).

pub mod h1;
pub mod http;
pub mod jsonrpc;
pub mod tcp;

use std::ops::Deref;
use std::sync::Arc;

use crate::access_log::AccessLog;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::snapshot::Shared;
use crate::store::Store;
use jsonrpc::turns::TurnQueues;

/// What every connection handler needs: the snapshot handle, metrics and shutdown signal.
///
/// One allocation shared by every connection: a clone is one reference count, and a parked
/// connection holds a pointer rather than its own copy of some twenty metric handles.
#[derive(Clone)]
pub struct Context(Arc<Handles>);

/// The contents of a [`Context`].
pub struct Handles {
    pub shared: Shared,
    pub metrics: Metrics,
    pub shutdown: Shutdown,
    /// State shared with other replicas: ownership bindings, rate limits, session locks.
    pub store: Store,
    /// Sends waiting for their session's turn on this replica.
    pub turn_queues: Arc<TurnQueues>,
    pub access_log: AccessLog,
    /// Idle HTTP/1.1 connections waiting without a task.
    pub parking: h1::Parking,
}

impl Context {
    pub fn new(
        shared: Shared,
        metrics: Metrics,
        shutdown: Shutdown,
        store: Store,
        access_log: AccessLog,
    ) -> Context {
        Context(Arc::new(Handles {
            shared,
            metrics,
            shutdown,
            store,
            turn_queues: Arc::default(),
            access_log,
            parking: h1::Parking::default(),
        }))
    }
}

impl Deref for Context {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

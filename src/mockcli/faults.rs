//! Fault injection for proxy tests: a [`Fault`] armed per method on a [`MockCli`] (hang, delay,
//! garbage on the wire, close) and the per-method request counts behind
//! [`MockCli::requests_for`]. Both live beside the server's state, so they apply to every
//! connection and survive [`MockCli::kill`] + [`MockCli::revive`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{handle_request, Flow, Inner, MockCli};

/// Bytes a [`Fault::Garbage`] puts on the wire: a complete header block whose only line has no
/// colon, so any LSP frame decoder fails on it at once instead of waiting for more.
pub(super) const GARBAGE: &[u8] = b"\x00\x01garbage\r\n\r\n";

/// What the server does with a request whose method has a fault armed (the request is counted
/// either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Never answered; the connection stays open and keeps serving other requests.
    Hang,
    /// Handled (and so answered) after the delay, without holding up other requests on this or
    /// any other connection: later answers may overtake it. Dropped if the connection closed
    /// meanwhile.
    Delay(Duration),
    /// Instead of an answer, bytes that cannot be a frame header (`\x00\x01garbage\r\n\r\n`);
    /// the connection stays open.
    Garbage,
    /// The server closes the connection without answering.
    Close,
}

#[derive(Default)]
pub(super) struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Default)]
struct FaultState {
    armed: HashMap<String, Fault>,
    /// Requests received per method, across connections and incarnations.
    seen: HashMap<String, u64>,
}

impl Faults {
    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a request for `method`; returns the fault armed for it, if any.
    pub(super) fn on_request(&self, method: &str) -> Option<Fault> {
        let mut st = self.lock();
        *st.seen.entry(method.to_owned()).or_default() += 1;
        st.armed.get(method).copied()
    }
}

impl MockCli {
    /// Arms `fault` for every later request named `method`, on every connection, until
    /// [`MockCli::clear_faults`]; replaces a fault already armed for it.
    pub fn set_fault(&self, method: &str, fault: Fault) {
        self.inner
            .faults
            .lock()
            .armed
            .insert(method.to_owned(), fault);
    }

    /// Disarms every fault; requests already hung or delayed stay so.
    pub fn clear_faults(&self) {
        self.inner.faults.lock().armed.clear();
    }

    /// Requests named `method` this server has received, on all connections and incarnations,
    /// faulted or rejected ones included.
    pub fn requests_for(&self, method: &str) -> u64 {
        self.inner
            .faults
            .lock()
            .seen
            .get(method)
            .copied()
            .unwrap_or(0)
    }
}

/// Applies `fault` to the request `id` (named `method`, whole frame `body`) that arrived on `conn`.
pub(super) fn inject(
    inner: &Arc<Inner>,
    conn: u64,
    fault: Fault,
    method: &str,
    id: &RawValue,
    body: &Bytes,
) -> Flow {
    match fault {
        Fault::Hang => {}
        Fault::Delay(delay) => {
            let (inner, method, id, body) = (
                inner.clone(),
                method.to_owned(),
                id.to_owned(),
                body.clone(),
            );
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                handle_request(&inner, conn, &method, &id, &body);
            });
        }
        Fault::Garbage => inner.lock().queue(conn, Bytes::from_static(GARBAGE)),
        Fault::Close => {
            inner.lock().drop_conn(conn);
            return Flow::Close;
        }
    }
    Flow::Continue
}

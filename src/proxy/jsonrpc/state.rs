//! The state of one client connection, owned by its connection task: requests waiting for an
//! answer (with their timeouts, paused while the node waits for the client), requests the proxy
//! sent on its own (setup replay, fan-out questions), requests nodes sent the client, the
//! recorded setup calls, open batches, and exchanges a node began. Fields are private; the
//! methods keep the invariants (a deadline for every waiting request that is not paused, the
//! next sweep no later than the earliest deadline, bounded tables).
//!
//! Timeouts are deadlines swept lazily rather than timers in a wheel: answering a request costs
//! nothing, and the one sweep due at the earliest deadline expires what is due and finds the
//! next earliest (requests answered meanwhile only make that sweep find nothing).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::methods::{Learn, Replay};

/// Distinct setup calls remembered per connection (one per method for `Replay::Latest`); more
/// are forwarded but not replayed.
pub const MAX_SETUP_CALLS: usize = 32;
/// Requests one node may have waiting for the client; beyond it the proxy answers the node.
pub const MAX_SERVER_REQUESTS: usize = 1024;
/// Exchanges (LLM inference requests) the connection remembers; the oldest go first.
pub const MAX_EXCHANGES: usize = 1024;

/// The connection's maps: keyed by what clients and nodes send, hashed with a per-process
/// random seed (foldhash), much cheaper than SipHash for these short keys.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A client request id, as its JSON text (`1`, `"a"`).
pub type ClientId = Box<str>;

/// Where an answer goes: straight to the client, or into its place in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyTo {
    Direct,
    Batch { batch: u64, index: usize },
}

/// A client request waiting for its answer.
#[derive(Debug)]
pub struct Pending {
    /// The node it was sent to.
    pub upstream: Arc<str>,
    /// The method's name if it is in the table, else `other` (a bounded metric label).
    pub method: &'static str,
    pub learn: Learn,
    pub session: Option<Arc<str>>,
    pub started: Instant,
    pub reply: ReplyTo,
    /// The request as sent, kept when a "not found" should start owner discovery.
    pub discover: Option<Bytes>,
    /// Set when any node may answer: the request as the client sent it (before a node's token
    /// went in) and the nodes that refused the link for it.
    pub redispatch: Option<Redispatch>,
    /// A create placed by load or caps: counted on its node until answered.
    pub reservation: Option<Box<crate::sessions::Reservation>>,
    /// The request's size as the client sent it (for the access log).
    pub bytes_in: u32,
    /// The session's figures, counting this request in flight until it is dropped.
    pub stats: Option<crate::sessions::stats::InFlight>,
    timer: Timer,
}

#[derive(Debug)]
pub struct Redispatch {
    pub body: Bytes,
    pub refused: Vec<Arc<str>>,
}

/// A waiting request's timeout: running until a deadline, or paused with what was left of it.
#[derive(Debug)]
enum Timer {
    Running(Instant),
    Paused(Duration),
}

impl Pending {
    pub fn new(upstream: Arc<str>, method: &'static str, reply: ReplyTo) -> Pending {
        Pending {
            upstream,
            method,
            learn: Learn::Nothing,
            session: None,
            started: Instant::now(),
            reply,
            discover: None,
            redispatch: None,
            reservation: None,
            bytes_in: 0,
            stats: None,
            timer: Timer::Paused(Duration::ZERO),
        }
    }
}

/// A request the proxy sent a node on its own behalf.
#[derive(Debug)]
pub enum Internal {
    /// One of the setup calls replayed on a new link.
    Replay,
    /// A fan-out's question: the answer goes to the waiting task (`None`: none came).
    Ask(oneshot::Sender<Option<Bytes>>),
    /// A setup call copied to an already open link: its answer is dropped.
    Discard,
}

/// A request a node sent the client, under the proxy id the client sees.
#[derive(Debug)]
pub struct ServerRequest {
    pub upstream: Arc<str>,
    pub id: Box<RawValue>,
    pub session: Option<Arc<str>>,
}

/// A recorded setup call, as the client sent it (each link puts its own node's token in).
#[derive(Debug, Clone)]
pub struct SetupCall {
    pub method: &'static str,
    pub body: Bytes,
}

struct Batch {
    slots: Vec<Option<Bytes>>,
    left: usize,
}

#[derive(Default)]
pub struct ConnState {
    pending: HashMap<ClientId, Pending>,
    internal: HashMap<u64, (Arc<str>, Internal, Instant)>,
    next_internal: u64,
    server_requests: HashMap<u64, ServerRequest>,
    next_server_request: u64,
    /// Server requests waiting for the client, per (node, session): while any is open, the
    /// timeouts of that node's requests for that session (all of them, for `None`) are paused.
    waiting_on_client: HashMap<(Arc<str>, Option<Arc<str>>), usize>,
    setup: Vec<SetupCall>,
    batches: HashMap<u64, Batch>,
    next_batch: u64,
    exchanges: HashMap<Box<str>, Arc<str>>,
    /// The order exchanges began in, to forget the oldest first.
    exchange_order: std::collections::VecDeque<Box<str>>,
    /// Ids of requests a task of the connection answers (fan-outs, owner discovery).
    elsewhere: std::collections::HashSet<ClientId, foldhash::fast::RandomState>,
    /// When the earliest deadline may pass (never later than it; `None`: nothing waits).
    next_sweep: Option<Instant>,
}

impl ConnState {
    // ---- client requests ------------------------------------------------------------------

    /// Is a request with this id still unanswered (waiting on a node or in a task)?
    pub fn is_pending(&self, id: &str) -> bool {
        self.pending.contains_key(id) || self.elsewhere.contains(id)
    }

    /// Requests waiting on nodes.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn pending_is_empty(&self) -> bool {
        self.pending.is_empty() && self.elsewhere.is_empty()
    }

    /// A task of the connection now answers `id` (it stays taken until [`ConnState::returned`]).
    pub fn lent(&mut self, id: ClientId) {
        self.elsewhere.insert(id);
    }

    /// The task that answered `id` is done with it.
    pub fn returned(&mut self, id: &str) {
        self.elsewhere.remove(id);
    }

    /// Start waiting for the answer to `id`, for at most `timeout` of the node's time.
    pub fn wait(&mut self, id: ClientId, mut pending: Pending, timeout: Duration) {
        pending.timer = Timer::Paused(timeout);
        if !self.paused(&pending) {
            pending.timer = Timer::Running(self.deadline_in(timeout));
        }
        self.pending.insert(id, pending);
    }

    /// A deadline `timeout` from now, with the next sweep brought forward to it if needed.
    fn deadline_in(&mut self, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        if self.next_sweep.is_none_or(|next| deadline < next) {
            self.next_sweep = Some(deadline);
        }
        deadline
    }

    /// The answer to `id` came: stop waiting.
    pub fn take(&mut self, id: &str) -> Option<Pending> {
        self.pending.remove(id)
    }

    /// The answer to `id` came from `node`: stop waiting, if `id` waits on that node.
    pub fn take_answered(&mut self, id: &str, node: &str) -> Option<Pending> {
        match self.pending.get(id) {
            Some(p) if &*p.upstream == node => self.pending.remove(id),
            _ => None,
        }
    }

    /// Every request waiting on `node` (its link failed), removed.
    pub fn take_all_on(&mut self, node: &str) -> Vec<(ClientId, Pending)> {
        self.ids_on(node)
            .into_iter()
            .filter_map(|id| self.take(&id).map(|p| (id, p)))
            .collect()
    }

    /// Is a request to its node paused because that node waits for the client?
    fn paused(&self, p: &Pending) -> bool {
        let node = p.upstream.clone();
        self.waiting_on_client.contains_key(&(node.clone(), None))
            || p.session.as_ref().is_some_and(|s| {
                self.waiting_on_client
                    .contains_key(&(node, Some(s.clone())))
            })
    }

    /// The ids of the requests waiting on `node`.
    fn ids_on(&self, node: &str) -> Vec<ClientId> {
        self.pending
            .iter()
            .filter(|(_, p)| &*p.upstream == node)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Pause or restart the timeouts of `node`'s requests after its server requests changed.
    fn retime(&mut self, node: &str) {
        let now = Instant::now();
        for id in self.ids_on(node) {
            let paused = self.paused(&self.pending[&id]);
            let timer = match (&self.pending[&id].timer, paused) {
                (Timer::Running(deadline), true) => {
                    Timer::Paused(deadline.saturating_duration_since(now))
                }
                (Timer::Paused(left), false) => Timer::Running(self.deadline_in(*left)),
                _ => continue,
            };
            if let Some(p) = self.pending.get_mut(&id) {
                p.timer = timer;
            }
        }
    }

    // ---- requests the proxy sends ------------------------------------------------------------

    /// Register a request of the proxy's own to `node`; its id (as a JSON string) goes into
    /// the request. Unanswered after `timeout` it expires (an `Ask` then gets `None`).
    pub fn add_internal(&mut self, node: Arc<str>, kind: Internal, timeout: Duration) -> String {
        self.next_internal += 1;
        let n = self.next_internal;
        let deadline = self.deadline_in(timeout);
        self.internal.insert(n, (node, kind, deadline));
        internal_id(n)
    }

    /// The proxy's request `n` was answered by `node` (only the node it went to counts).
    pub fn take_internal(&mut self, n: u64, node: &str) -> Option<Internal> {
        match self.internal.get(&n) {
            Some((to, _, _)) if &**to == node => self.internal.remove(&n).map(|(_, k, _)| k),
            _ => None,
        }
    }

    /// Forget the proxy's request with this id (as it went into the request): it was never
    /// sent.
    pub fn drop_internal(&mut self, id: &str) {
        if let Some(n) = id
            .strip_prefix(INTERNAL_PREFIX)
            .and_then(|n| n.parse().ok())
        {
            self.internal.remove(&n);
        }
    }

    /// Every request of the proxy's own waiting on `node`, removed.
    pub fn take_internal_on(&mut self, node: &str) -> Vec<Internal> {
        let ns: Vec<u64> = self
            .internal
            .iter()
            .filter(|(_, (n, _, _))| &**n == node)
            .map(|(n, _)| *n)
            .collect();
        ns.into_iter()
            .filter_map(|n| self.internal.remove(&n).map(|(_, kind, _)| kind))
            .collect()
    }

    // ---- requests nodes send the client ------------------------------------------------------

    /// The proxy id the next request a node sends the client will have, or `None` when that
    /// node already has too many waiting.
    pub fn next_server_request(&mut self, node: &str) -> Option<u64> {
        let waiting = self
            .server_requests
            .values()
            .filter(|r| &*r.upstream == node)
            .count();
        if waiting >= MAX_SERVER_REQUESTS {
            return None;
        }
        self.next_server_request += 1;
        Some(self.next_server_request)
    }

    /// The request a node sent the client went out as `n`: wait for the client's answer.
    pub fn add_server_request(&mut self, n: u64, request: ServerRequest) {
        let key = (request.upstream.clone(), request.session.clone());
        let node = request.upstream.clone();
        *self.waiting_on_client.entry(key).or_default() += 1;
        self.server_requests.insert(n, request);
        self.retime(&node);
    }

    /// The client answered server request `n`.
    pub fn take_server_request(&mut self, n: u64) -> Option<ServerRequest> {
        let request = self.server_requests.remove(&n)?;
        self.client_answered(&request);
        Some(request)
    }

    fn client_answered(&mut self, request: &ServerRequest) {
        let key = (request.upstream.clone(), request.session.clone());
        if let Some(count) = self.waiting_on_client.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.waiting_on_client.remove(&key);
            }
        }
        self.retime(&request.upstream);
    }

    /// `node`'s link is gone: its requests to the client can no longer be answered.
    pub fn forget_server_requests_of(&mut self, node: &str) {
        let ns: Vec<u64> = self
            .server_requests
            .iter()
            .filter(|(_, r)| &*r.upstream == node)
            .map(|(n, _)| *n)
            .collect();
        for n in ns {
            self.take_server_request(n);
        }
        self.exchanges.retain(|_, n| &**n != node);
    }

    /// The client can answer nothing any more (it finished sending): every request nodes sent
    /// it, removed (their nodes' requests run on against their timeouts again).
    pub fn take_all_server_requests(&mut self) -> Vec<ServerRequest> {
        let ns: Vec<u64> = self.server_requests.keys().copied().collect();
        ns.into_iter()
            .filter_map(|n| self.take_server_request(n))
            .collect()
    }

    // ---- exchanges -------------------------------------------------------------------------

    /// A node began an exchange the client answers with requests of its own. The oldest one
    /// is forgotten when too many are open (exchanges a client abandoned never end).
    pub fn begin_exchange(&mut self, request_id: &str, node: Arc<str>) {
        if self.exchanges.len() >= MAX_EXCHANGES {
            while let Some(oldest) = self.exchange_order.pop_front() {
                if self.exchanges.remove(&oldest).is_some() {
                    break;
                }
            }
        }
        let id: Box<str> = Box::from(request_id);
        self.exchange_order.push_back(id.clone());
        self.exchanges.insert(id, node);
    }

    pub fn end_exchange(&mut self, request_id: &str) {
        self.exchanges.remove(request_id);
        if self.exchange_order.len() > 2 * MAX_EXCHANGES {
            let live = &self.exchanges;
            self.exchange_order.retain(|id| live.contains_key(id));
        }
    }

    pub fn exchanges(&self) -> &HashMap<Box<str>, Arc<str>> {
        &self.exchanges
    }

    // ---- setup -----------------------------------------------------------------------------

    /// Remember a setup call for replay: with `Replay::Latest` a repeat replaces its method's
    /// earlier call in place; the list is bounded.
    pub fn record_setup(&mut self, call: SetupCall, replay: Replay) {
        if replay == Replay::Latest {
            if let Some(slot) = self.setup.iter_mut().find(|c| c.method == call.method) {
                *slot = call;
                return;
            }
        }
        if self.setup.len() < MAX_SETUP_CALLS {
            self.setup.push(call);
        } else {
            tracing::debug!(
                method = call.method,
                "too many setup calls; this one is not replayed on new links"
            );
        }
    }

    /// The recorded setup calls to replay on a new link, leaving out the latest of method
    /// `except` (a setup call being sent there goes as itself).
    pub fn setup_calls(&self, except: Option<&str>) -> Vec<SetupCall> {
        let skip = except.and_then(|m| self.setup.iter().rposition(|c| c.method == m));
        self.setup
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != skip)
            .map(|(_, c)| c.clone())
            .collect()
    }

    // ---- batches ---------------------------------------------------------------------------

    /// A client batch with `answers` answers to collect.
    pub fn new_batch(&mut self, answers: usize) -> u64 {
        self.next_batch += 1;
        self.batches.insert(
            self.next_batch,
            Batch {
                slots: vec![None; answers],
                left: answers,
            },
        );
        self.next_batch
    }

    /// Deliver an answer: itself for a direct reply, the whole array once its batch is full.
    pub fn fill(&mut self, reply: ReplyTo, body: Bytes) -> Option<Bytes> {
        let ReplyTo::Batch { batch: b, index } = reply else {
            return Some(body);
        };
        let batch = self.batches.get_mut(&b)?;
        let slot = batch.slots.get_mut(index)?;
        if slot.replace(body).is_none() {
            batch.left -= 1;
        }
        if batch.left > 0 {
            return None;
        }
        let batch = self.batches.remove(&b)?;
        let mut out = BytesMut::new();
        out.extend_from_slice(b"[");
        for (i, s) in batch.slots.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b",");
            }
            out.extend_from_slice(s.as_deref().unwrap_or(b"null"));
        }
        out.extend_from_slice(b"]");
        Some(out.freeze())
    }

    // ---- timeouts ---------------------------------------------------------------------------

    /// When [`ConnState::sweep`] should next run.
    pub fn next_sweep(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// Take out everything whose deadline has passed at `now`, and find the next deadline.
    pub fn sweep(&mut self, now: Instant) -> Vec<Fired> {
        let mut fired = Vec::new();
        let mut next: Option<Instant> = None;
        let mut keep = |deadline: Instant| {
            if next.is_none_or(|n| deadline < n) {
                next = Some(deadline);
            }
        };
        let due: Vec<ClientId> = self
            .pending
            .iter()
            .filter_map(|(id, p)| match p.timer {
                Timer::Running(deadline) if deadline <= now => Some(id.clone()),
                Timer::Running(deadline) => {
                    keep(deadline);
                    None
                }
                Timer::Paused(_) => None,
            })
            .collect();
        let due_internal: Vec<u64> = self
            .internal
            .iter()
            .filter_map(|(n, (_, _, deadline))| {
                if *deadline <= now {
                    Some(*n)
                } else {
                    keep(*deadline);
                    None
                }
            })
            .collect();
        self.next_sweep = next;
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                fired.push(Fired::Request(id, Box::new(p)));
            }
        }
        for n in due_internal {
            if let Some((node, kind, _)) = self.internal.remove(&n) {
                fired.push(Fired::Internal(node, kind));
            }
        }
        fired
    }
}

/// A timeout that passed.
#[derive(Debug)]
pub enum Fired {
    /// The client request `id` got no answer in time.
    Request(ClientId, Box<Pending>),
    /// A request of the proxy's own got no answer in time.
    Internal(Arc<str>, Internal),
}

/// Prefix of the ids of requests the proxy sends on its own behalf; the CLI echoes string ids.
const INTERNAL_PREFIX: &str = "sessiongate-";

/// The id of a proxy-internal request, as it goes into the request (a string).
fn internal_id(n: u64) -> String {
    format!("{INTERNAL_PREFIX}{n}")
}

/// Does a client's request id collide with the ids the proxy gives its own requests?
pub fn is_reserved_id(raw: &str) -> bool {
    raw.strip_prefix('"')
        .is_some_and(|rest| rest.starts_with(INTERNAL_PREFIX))
}

/// `Some(n)` if `raw` (an id as JSON text) is the id of a proxy-internal request.
pub fn parse_internal_id(raw: &str) -> Option<u64> {
    raw.strip_prefix('"')?
        .strip_suffix('"')?
        .strip_prefix(INTERNAL_PREFIX)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests;

//! Parked connections. A plain-TCP HTTP/1.1 client connection that has waited [`PARK_AFTER`]
//! for its next request leaves its task and tokio's reactor: its socket goes to the parker, one
//! thread blocked in an epoll instance of its own (mio) that watches every parked socket,
//! closes those idle past their deadline, and spawns a new connection task on the runtime for
//! each that becomes readable. A parked connection costs a slab entry
//! (its socket, the per-connection facts and its deadline) instead of a task, a reactor
//! registration and a timer, which is what makes thousands of idle keep-alive clients cheap.
//! Busy connections never park: a client that sends its next request within `PARK_AFTER` pays
//! nothing; one that waits longer pays a hand-off (two epoll changes and a spawn) per wait.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use prometheus::IntGaugeVec;
use slab::Slab;
use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};

use crate::proxy::http::Conn;
use crate::shutdown::Shutdown;

/// How long a connection waits for its next request in its own task before it parks. A
/// hand-off costs about what one request does, so a client waiting longer than this between
/// requests spends at most a few hundredths of a percent of a core on it.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// Readiness events taken from the epoll instance per wait.
const EVENTS: usize = 256;
/// The token of the parker's waker (new arrivals, shutdown); slab keys never reach it.
const WAKE: Token = Token(usize::MAX);

/// A connection waiting for its next request without a task.
pub(super) struct Parked {
    pub(super) stream: std::net::TcpStream,
    pub(super) conn: Conn,
    /// When it closes if no request has begun (`header_read_timeout` after its wait began).
    pub(super) deadline: Instant,
    /// No request has been read yet (its first bytes may still be the HTTP/2 preface).
    pub(super) first: bool,
    pub(super) span: tracing::Span,
}

/// The way to the parker, started by the first connection that parks.
#[derive(Default)]
pub struct Parking {
    /// `None`: the parker could not start; connections then wait in their own tasks.
    parker: OnceLock<Option<ToParker>>,
}

struct ToParker {
    arrivals: mpsc::Sender<Parked>,
    waker: Arc<Waker>,
}

impl Drop for ToParker {
    /// The proxy is gone: the parker sees its arrivals closed and ends.
    fn drop(&mut self) {
        let _ = self.waker.wake();
    }
}

impl Parking {
    /// Whether connections can park (starting the parker on first use).
    pub(super) fn available(&self, shutdown: &Shutdown, gauge: &IntGaugeVec) -> bool {
        self.parker
            .get_or_init(|| match start(shutdown, gauge.clone()) {
                Ok(parker) => Some(parker),
                Err(e) => {
                    warn!(error = %e, "idle connections cannot park; they stay in their tasks");
                    None
                }
            })
            .is_some()
    }

    /// Hand a connection to the parker. Once shutdown has stopped the parker the connection is
    /// dropped, which closes it, as shutdown closes every idle connection.
    pub(super) fn park(&self, parked: Parked) {
        if let Some(Some(parker)) = self.parker.get() {
            if parker.arrivals.send(parked).is_ok() {
                let _ = parker.waker.wake();
            }
        }
    }
}

fn start(shutdown: &Shutdown, gauge: IntGaugeVec) -> std::io::Result<ToParker> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let (arrivals, from_tasks) = mpsc::channel();
    let runtime = Handle::current();
    let stop = Arc::new(AtomicBool::new(false));
    let (done, closed_all) = tokio::sync::oneshot::channel::<()>();
    let parker = Parker {
        poll,
        parked: Slab::new(),
        deadlines: BinaryHeap::new(),
        gauge,
        tracker: shutdown.tracker.clone(),
        runtime: runtime.clone(),
    };
    let stopped = stop.clone();
    std::thread::Builder::new()
        .name("sessiongate-parker".into())
        .spawn(move || {
            // Resumed sockets register with this runtime's reactor.
            let _runtime = runtime.enter();
            parker.run(&from_tasks, &stopped);
            drop(done);
        })?;
    // Shutdown stops the parker, and waits (as for every connection task) until it has closed
    // the parked connections.
    let token = shutdown.token.clone();
    let wake = waker.clone();
    shutdown.tracker.spawn(async move {
        token.cancelled().await;
        stop.store(true, Ordering::Release);
        let _ = wake.wake();
        let _ = closed_all.await;
    });
    Ok(ToParker { arrivals, waker })
}

/// The parker thread's state; it alone touches the parked connections.
struct Parker {
    poll: Poll,
    parked: Slab<Parked>,
    /// Deadlines by slab key, soonest first. Entries whose connection has left are skipped
    /// when they come up, and dropped in bulk when they outnumber the live ones.
    deadlines: BinaryHeap<Reverse<(Instant, usize)>>,
    /// `sessiongate_connections_parked`, by listener.
    gauge: IntGaugeVec,
    tracker: TaskTracker,
    runtime: Handle,
}

impl Parker {
    fn run(mut self, arrivals: &mpsc::Receiver<Parked>, stop: &AtomicBool) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = self
                .deadlines
                .peek()
                .map(|Reverse((at, _))| at.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "the parked connections' epoll failed; closing them");
                break;
            }
            if stop.load(Ordering::Acquire) {
                break;
            }
            for event in events.iter() {
                if event.token() != WAKE {
                    self.wake(event.token().0);
                }
            }
            loop {
                match arrivals.try_recv() {
                    Ok(parked) => self.admit(parked),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return self.close_all(),
                }
            }
            self.expire();
        }
        self.close_all();
    }

    fn admit(&mut self, parked: Parked) {
        let entry = self.parked.vacant_entry();
        let key = entry.key();
        let fd = parked.stream.as_raw_fd();
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&fd), Token(key), Interest::READABLE)
        {
            // Closing an idle keep-alive connection is allowed at any time (RFC 9112 §9.6).
            debug!(error = %e, "could not park an idle connection; closing it");
            return;
        }
        self.gauge.with_label_values(&[&parked.conn.listener]).inc();
        self.deadlines.push(Reverse((parked.deadline, key)));
        entry.insert(parked);
    }

    /// Take a connection out of the parker.
    fn release(&mut self, key: usize) -> Option<Parked> {
        let parked = self.parked.try_remove(key)?;
        let fd = parked.stream.as_raw_fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        self.gauge.with_label_values(&[&parked.conn.listener]).dec();
        Some(parked)
    }

    /// Bytes (or the end) arrived: the connection gets a task again.
    fn wake(&mut self, key: usize) {
        let Some(parked) = self.release(key) else {
            return;
        };
        if self.deadlines.len() > 2 * self.parked.len() + 64 {
            let live = &self.parked;
            self.deadlines
                .retain(|Reverse((at, key))| live.get(*key).is_some_and(|p| p.deadline == *at));
        }
        let Parked {
            stream,
            conn,
            deadline,
            first,
            span,
        } = parked;
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(e) => {
                debug!(error = %e, "could not resume a parked connection; closing it");
                return;
            }
        };
        let task = super::conn::resume(stream, conn, deadline, first).instrument(span);
        self.tracker.spawn_on(task, &self.runtime);
    }

    /// Close the connections whose deadline has passed.
    fn expire(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, key))) = self.deadlines.peek() {
            if at > now {
                break;
            }
            self.deadlines.pop();
            if self.parked.get(key).is_some_and(|p| p.deadline == at) {
                self.release(key); // dropped: closed
            }
        }
    }

    /// Shutdown (or the proxy gone): every parked connection closes.
    fn close_all(&mut self) {
        for parked in self.parked.drain() {
            self.gauge.with_label_values(&[&parked.conn.listener]).dec();
        }
        self.deadlines.clear();
    }
}

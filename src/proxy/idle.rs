//! Parked HTTP/1 keep-alive connections: a plain-TCP HTTP/1 client connection is served in
//! rounds, and between rounds it holds only its socket. A round waits for the socket to become
//! readable, runs a hyper HTTP/1 connection over it, and once that hyper connection is waiting
//! for the next request head (at once, or after [`BUSY_PARK_DELAY`] for a client that has been
//! sending requests back to back) asks it to close while keeping the socket, so hyper's read and
//! write buffers (8 KiB each) and its connection state are freed while the client is idle. This module owns that loop, the signals that tell when hyper is
//! between requests (its header-read timer, the bytes handed to it, a pending upgrade), the
//! socket wrapper that replays bytes carried over from one round to the next, and the check for
//! the HTTP/2 prior-knowledge preface that sends h2c connections to the ordinary hyper path
//! instead. TLS connections are not parked: a TLS stream has no way to wait for readability
//! without holding its buffers.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::rt::{Sleep, Timer};
use hyper::server::conn::http1;
use hyper::service::Service;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection whose last request came within this long of its previous response is busy: it
/// waits this long for its next request before it is parked, so that a busy keep-alive client
/// does not pay for a new hyper connection (about 1.5 µs of CPU) on every request. Any other
/// connection is parked as soon as it waits for a request.
pub const BUSY_PARK_DELAY: Duration = Duration::from_millis(100);

/// The first bytes of every HTTP/2 connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How a new plain-TCP connection opens, judged from its first bytes without consuming them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opening {
    /// Anything but the HTTP/2 preface: HTTP/1 (hyper answers garbage with a 400 as usual).
    Http1,
    /// The HTTP/2 prior-knowledge preface, or too few bytes of it to tell yet.
    MaybeH2c,
    /// Closed, failed, shut down or silent past `head_by` before a byte arrived.
    Closed,
}

/// Wait for a new connection's first bytes and tell HTTP/1 from h2c, the way hyper-util's
/// auto builder does but by peeking, so nothing is consumed and nothing is buffered.
async fn opening(stream: &TcpStream, head_by: Instant, shutdown: &CancellationToken) -> Opening {
    let mut first = [0u8; H2_PREFACE.len()];
    let peeked = tokio::select! {
        biased;
        _ = shutdown.cancelled() => return Opening::Closed,
        peeked = stream.peek(&mut first) => peeked,
        _ = tokio::time::sleep_until(head_by) => return Opening::Closed,
    };
    match peeked {
        Ok(0) | Err(_) => Opening::Closed,
        // A partial match stays with hyper-util, which reads until it can tell (peeking again
        // would see the same bytes at once and spin).
        Ok(n) if first[..n] == H2_PREFACE[..n] => Opening::MaybeH2c,
        Ok(_) => Opening::Http1,
    }
}

/// A plain-TCP HTTP/1 client connection served in parked rounds.
///
/// Everything it needs lives in this value, which the connection's task holds while parked;
/// the socket and service are lent to hyper during a round and come back when it is parked.
pub struct Http1<S> {
    stream: Option<TcpStream>,
    service: Option<UpgradeWatch<S>>,
    /// Bytes hyper read past the last request it served: the start of the next request's head.
    carried: Option<Box<[u8]>>,
    /// Bounds both the wait for a request head and the idle time between requests (hyper
    /// starts its header-read timer as soon as a connection goes idle).
    header_read_timeout: Duration,
    /// How long a busy connection waits for a request before it is parked.
    busy_park_delay: Duration,
    /// When hyper began waiting for the request head that is due next (the connection's start
    /// for its first).
    idle_since: Instant,
    activity: Arc<Activity>,
    /// hyper connections run on this socket so far: one per stretch of requests between parks.
    rounds: u64,
}

impl<S, B> Http1<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// A connection whose first request head is due `header_read_timeout` from now, parked
    /// when idle (after [`BUSY_PARK_DELAY`] when busy).
    pub fn new(stream: TcpStream, service: S, header_read_timeout: Duration) -> Http1<S> {
        let activity = Arc::new(Activity::default());
        Http1 {
            stream: Some(stream),
            service: Some(UpgradeWatch {
                inner: service,
                activity: activity.clone(),
            }),
            carried: None,
            header_read_timeout,
            busy_park_delay: BUSY_PARK_DELAY,
            idle_since: Instant::now(),
            activity,
            rounds: 0,
        }
    }

    /// Use `delay` instead of [`BUSY_PARK_DELAY`] (zero: always park as soon as hyper waits for
    /// a request head).
    pub fn busy_park_delay(mut self, delay: Duration) -> Http1<S> {
        self.busy_park_delay = delay;
        self
    }

    /// hyper connections run on this socket so far: one per stretch of requests between parks
    /// (the connection's first, and one after each park).
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// When the next request head is due.
    fn head_by(&self) -> Instant {
        self.idle_since + self.header_read_timeout
    }

    /// Wait for the first bytes and tell HTTP/1 from h2c (see [`opening`]).
    pub async fn opening(&self, shutdown: &CancellationToken) -> Opening {
        match &self.stream {
            Some(stream) => opening(stream, self.head_by(), shutdown).await,
            None => Opening::Closed,
        }
    }

    /// The header-read timeout this connection was made with.
    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
    }

    /// The socket and service, untouched, for a connection that is not HTTP/1 after all.
    pub fn take(&mut self) -> Option<(TcpStream, S)> {
        Some((self.stream.take()?, self.service.take()?.inner))
    }

    /// Serve requests in parked rounds until the connection closes, fails, is upgraded or
    /// `shutdown` is signalled.
    ///
    /// Takes `&mut self`, and waits inline rather than in a function of its own, so that the
    /// parked connection's state is stored once, in the caller's future.
    pub async fn serve(&mut self, shutdown: &CancellationToken) {
        while self.round(shutdown).await {
            let Some(stream) = self.stream.as_ref() else {
                return;
            };
            // Parked: wait, holding nothing but the socket, until the client sends something (or
            // closes: the next round's hyper sees the end of stream). In a block of its own so
            // that the timer and waiter live across this await only, and share their space in
            // this future with the round's.
            let readable = {
                let idle_timeout = tokio::time::sleep_until(self.head_by());
                let cancelled = shutdown.cancelled();
                tokio::pin!(idle_timeout, cancelled);
                poll_fn(|cx| {
                    if cancelled.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    // `poll_read_ready` keeps its waker in the socket's registration, so unlike
                    // `readable()` it stores no waiter in this future.
                    if let Poll::Ready(ready) = stream.poll_read_ready(cx) {
                        return Poll::Ready(ready.is_ok());
                    }
                    if idle_timeout.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(false);
                    }
                    Poll::Pending
                })
                .await
            };
            if !readable {
                debug!("closing an idle client connection (header_read_timeout or shutdown)");
                if let Some(stream) = self.stream.as_mut() {
                    let _ = stream.shutdown().await;
                }
                return;
            }
            let busy = self.idle_since.elapsed() < self.busy_park_delay;
            self.activity.busy.store(busy, Relaxed);
        }
    }

    /// One hyper HTTP/1 connection over the socket, until it is idle (then it is closed, the
    /// socket comes back and this returns `true`) or the connection is over.
    async fn round(&mut self, shutdown: &CancellationToken) -> bool {
        let (Some(stream), Some(service)) = (self.stream.take(), self.service.take()) else {
            return false;
        };
        self.activity.start_round();
        self.rounds += 1;
        let mut conn = self.connection(stream, service);
        let activity = &self.activity;
        let result = drive(&mut conn, activity, shutdown).await;
        let parking = activity.parking.load(Relaxed);
        match result {
            Ok(()) if parking => {
                // `None` only after an upgrade, and `Activity::idle` never parks with one
                // pending.
                let Some(parts) = conn.into_parts() else {
                    return false;
                };
                let io = parts.io.into_inner();
                if activity.read_any.load(Relaxed) {
                    // hyper began waiting for the next head when the last exchange ended: just
                    // now, or the busy delay ago for a busy connection (parked only after it).
                    let now = Instant::now();
                    self.idle_since = if activity.busy.load(Relaxed) {
                        now.checked_sub(self.busy_park_delay).unwrap_or(now)
                    } else {
                        now
                    };
                }
                self.carried = carry(parts.read_buf, io.carried);
                self.stream = Some(io.stream);
                self.service = Some(parts.service);
                true
            }
            // hyper closed the connection (and shut the socket down), or handed it to an
            // upgrade.
            Ok(()) => false,
            Err(e) => {
                debug!(error = %e, "client connection ended with an error");
                if parking {
                    // The error came after the park request, so hyper's shutdown of the socket
                    // was skipped: do it here.
                    if let Some(mut stream) = conn.into_parts().map(|p| p.io.into_inner().stream) {
                        let _ = stream.shutdown().await;
                    }
                }
                false
            }
        }
    }

    /// This round's hyper connection. Boxed: the task's future is as large as its largest
    /// await, and a parked connection should not carry an inline hyper connection's worth of
    /// space (made in a function of its own so the builder is not kept across an await either).
    fn connection(&mut self, stream: TcpStream, service: UpgradeWatch<S>) -> Box<Round<S>> {
        let io = TokioIo::new(ParkIo {
            stream,
            carried: self.carried.take().map(Bytes::from).unwrap_or_default(),
            activity: self.activity.clone(),
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(HeadTimer {
                activity: self.activity.clone(),
                first_head_by: self.head_by(),
                header_read_timeout: self.header_read_timeout,
                busy_park_delay: self.busy_park_delay,
            })
            .header_read_timeout(self.header_read_timeout)
            .keep_alive(true)
            // One `write` of head and body together rather than a `writev`, as for upstreams.
            .writev(false);
        Box::new(builder.serve_connection(io, service).with_upgrades())
    }
}

/// One round's hyper connection.
type Round<S> = http1::UpgradeableConnection<TokioIo<ParkIo>, UpgradeWatch<S>>;

/// Poll the round's hyper connection to its end, asking it to close once it is due to park or
/// when shutdown is signalled (then in-flight requests finish and new ones are refused).
async fn drive<I, S, B>(
    conn: &mut http1::UpgradeableConnection<I, S>,
    activity: &Activity,
    shutdown: &CancellationToken,
) -> hyper::Result<()>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: Body + 'static,
    B::Error: Into<BoxError>,
{
    let cancelled = shutdown.cancelled();
    tokio::pin!(cancelled);
    let mut closing = false;
    poll_fn(|cx| loop {
        if let Poll::Ready(done) = Pin::new(&mut *conn).poll(cx) {
            return Poll::Ready(done);
        }
        if closing {
            return Poll::Pending;
        }
        if activity.due_to_park() {
            activity.parking.store(true, Relaxed);
        } else if cancelled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Idle: hyper closes at once, and the loop polls it to its end. Shutting down: hyper
        // finishes the request in flight first, then closes.
        closing = true;
        Pin::new(&mut *conn).graceful_shutdown();
    })
    .await
}

/// The bytes to replay next round: what hyper read but did not use, then what it never asked
/// for of the previous carry. Copied, so the parked connection does not keep hyper's read
/// buffer alive through a `Bytes` view into it.
fn carry(read_buf: Bytes, unread: Bytes) -> Option<Box<[u8]>> {
    if read_buf.is_empty() && unread.is_empty() {
        return None;
    }
    let mut bytes = Vec::with_capacity(read_buf.len() + unread.len());
    bytes.extend_from_slice(&read_buf);
    bytes.extend_from_slice(&unread);
    Some(bytes.into_boxed_slice())
}

/// What the current round's hyper connection has done, as seen from its socket, its timer and
/// its service. hyper polls the socket, starts, polls and drops its timers and calls the service
/// while this connection's task polls it, so relaxed ordering is enough; these are atomics only
/// because hyper wants its socket, timer and service to be `Send + Sync`.
#[derive(Debug, Default)]
struct Activity {
    /// Header-read timers started this round: one per request head hyper began waiting for.
    head_waits: AtomicU32,
    /// Header-read timers alive: hyper drops its timer when a head is parsed, so a live one means
    /// hyper is waiting for a head.
    head_timers: AtomicU32,
    /// The live header-read timer has run for the park delay (none unless busy).
    park_due: AtomicBool,
    /// The connection's last request came within the busy park delay of its previous response.
    /// Kept across rounds.
    busy: AtomicBool,
    /// Bytes were handed to hyper this round (from the carry or the socket).
    read_any: AtomicBool,
    /// A request this round left hyper holding a pending upgrade.
    upgrade_pending: AtomicBool,
    /// The round is being parked: hyper's shutdown of the socket must leave it open.
    parking: AtomicBool,
}

impl Activity {
    fn start_round(&self) {
        self.head_waits.store(0, Relaxed);
        self.head_timers.store(0, Relaxed);
        self.park_due.store(false, Relaxed);
        self.read_any.store(false, Relaxed);
        self.upgrade_pending.store(false, Relaxed);
        self.parking.store(false, Relaxed);
    }

    /// Whether to park now: hyper is idle and has waited for the next head for the park delay.
    fn due_to_park(&self) -> bool {
        self.park_due.load(Relaxed) && self.idle()
    }

    /// Whether hyper is between requests, such that `graceful_shutdown` closes it at once
    /// without finishing, or marking `Connection: close` on, any response (hyper closes at once
    /// only when its keep-alive state is idle, or when it has read and written nothing).
    ///
    /// That is: hyper waits for a request head (a header-read timer is alive), and either this is
    /// not the round's first head (hyper waits for another head only after the previous request
    /// was read to its end and its response written to its end, which is its idle state; any
    /// response bytes not yet flushed are flushed before it closes) or nothing was read this
    /// round. Never with an upgrade pending: hyper would hand the socket to it instead of
    /// returning it.
    fn idle(&self) -> bool {
        !self.upgrade_pending.load(Relaxed)
            && self.head_timers.load(Relaxed) > 0
            && match self.head_waits.load(Relaxed) {
                0 => false,
                1 => !self.read_any.load(Relaxed),
                _ => true,
            }
    }
}

/// hyper's timer for one round. hyper's HTTP/1 server uses its timer only for the header-read
/// timeout: it starts one each time it begins waiting for a request head and drops it once the
/// head is parsed, which is how [`Activity`] knows hyper is between requests. On a busy
/// connection each timer also wakes the connection once after the busy park delay (hyper polls
/// it only while its read of the socket is pending, so that wake-up finds hyper still waiting),
/// and when it is dropped it records whether the wait it timed was a busy one.
struct HeadTimer {
    activity: Arc<Activity>,
    /// The deadline for the round's first head, which was already being waited for while parked.
    first_head_by: Instant,
    header_read_timeout: Duration,
    busy_park_delay: Duration,
}

impl Timer for HeadTimer {
    /// tokio's clock, which tests can pause.
    fn now(&self) -> std::time::Instant {
        Instant::now().into_std()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        let now = Instant::now();
        self.head_wait(now, now + duration)
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        let deadline = Instant::from_std(deadline);
        // hyper asks for `now + header_read_timeout`: no need to read the clock again.
        let now = deadline
            .checked_sub(self.header_read_timeout)
            .unwrap_or(deadline);
        self.head_wait(now, deadline)
    }
}

impl HeadTimer {
    /// A header-read timer started at `now`, due at `deadline`.
    fn head_wait(&self, now: Instant, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let activity = &self.activity;
        let first = activity.head_waits.fetch_add(1, Relaxed) == 0;
        // Parking must not give a client more time for a head than hyper alone would.
        let deadline = if first {
            deadline.min(self.first_head_by)
        } else {
            deadline
        };
        activity.head_timers.fetch_add(1, Relaxed);
        let delay = if activity.busy.load(Relaxed) {
            self.busy_park_delay
        } else {
            Duration::ZERO
        };
        activity.park_due.store(delay.is_zero(), Relaxed);
        let park_at = (!delay.is_zero() && now + delay < deadline).then_some(now + delay);
        Box::pin(HeadSleep {
            sleep: Box::pin(tokio::time::sleep_until(park_at.unwrap_or(deadline))),
            deadline: park_at.map(|_| deadline),
            // The round's first head was waited for while parked: the unpark judges that gap.
            idle_since: (!first).then_some(now),
            busy_park_delay: self.busy_park_delay,
            activity: self.activity.clone(),
        })
    }
}

/// One header-read timeout; counted alive in [`Activity::head_timers`] until dropped.
struct HeadSleep {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The header-read deadline while `sleep` is set for the earlier park wake-up.
    deadline: Option<Instant>,
    /// When hyper, having finished an exchange, began waiting for this head.
    idle_since: Option<Instant>,
    busy_park_delay: Duration,
    activity: Arc<Activity>,
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.sleep.as_mut().poll(cx));
            let Some(deadline) = self.deadline.take() else {
                return Poll::Ready(());
            };
            // The park wake-up: hyper is still waiting for this head. Tell the connection's
            // driver, which looks right after this poll, and go on to the real deadline.
            self.activity.park_due.store(true, Relaxed);
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        let activity = &self.activity;
        activity.head_timers.fetch_sub(1, Relaxed);
        activity.park_due.store(false, Relaxed);
        // Dropped because its head was parsed (when parking, the unpark judges the gap). A busy
        // connection stays busy: had this wait outlasted the delay, it would have been parked.
        if let (Some(since), false) = (self.idle_since, activity.parking.load(Relaxed)) {
            if !activity.busy.load(Relaxed) && since.elapsed() < self.busy_park_delay {
                activity.busy.store(true, Relaxed);
            }
        }
    }
}

/// The connection's service, noting requests for which hyper holds a pending upgrade (an
/// HTTP/1.1 request with `Upgrade`, or `CONNECT`). hyper keeps that upgrade until its connection
/// ends, even when the response is not a 101, and a connection ending with one pending gives its
/// socket to the upgrade; so such a round is not parked and runs as an ordinary hyper connection
/// until it closes or is upgraded.
#[derive(Clone)]
struct UpgradeWatch<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Service<Request<Incoming>> for UpgradeWatch<S>
where
    S: Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> S::Future {
        if req.extensions().get::<OnUpgrade>().is_some() {
            self.activity.upgrade_pending.store(true, Relaxed);
        }
        self.inner.call(req)
    }
}

/// The socket as one round's hyper connection sees it: the bytes carried over from the previous
/// round first, then the socket. Shutting it down while the round is being parked does nothing,
/// since hyper shuts its IO down whenever its connection closes.
struct ParkIo {
    stream: TcpStream,
    carried: Bytes,
    activity: Arc<Activity>,
}

impl AsyncRead for ParkIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.carried.is_empty() {
            let n = this.carried.len().min(buf.remaining());
            buf.put_slice(&this.carried[..n]);
            this.carried.advance(n);
            this.activity.read_any.store(true, Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read_any.store(true, Relaxed);
        }
        read
    }
}

impl AsyncWrite for ParkIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carry_copies_out_of_the_read_buffer() {
        let big = Bytes::from(vec![b'x'; 8192]);
        let carried = carry(big.slice(8000..), Bytes::new()).expect("bytes");
        assert_eq!(carried.len(), 192);
        assert_eq!(carry(Bytes::new(), Bytes::new()), None);
        assert_eq!(
            carry(Bytes::new(), Bytes::from_static(b"GE")).as_deref(),
            Some(&b"GE"[..])
        );
        assert_eq!(
            carry(Bytes::from_static(b"GE"), Bytes::from_static(b"T /")).as_deref(),
            Some(&b"GET /"[..])
        );
    }

    #[test]
    fn idle_needs_a_live_head_timer_after_an_exchange_or_before_any_byte() {
        let a = Activity::default();
        assert!(!a.idle(), "no head wait yet");
        a.head_waits.store(1, Relaxed);
        a.head_timers.store(1, Relaxed);
        assert!(a.idle(), "fresh, nothing read");
        a.read_any.store(true, Relaxed);
        assert!(!a.idle(), "first head partly read: hyper is not idle");
        a.head_waits.store(2, Relaxed);
        assert!(a.idle(), "waiting for the second head");
        assert!(!a.due_to_park(), "not waited for the park delay yet");
        a.park_due.store(true, Relaxed);
        assert!(a.due_to_park());
        a.head_timers.store(0, Relaxed);
        assert!(!a.idle(), "head parsed");
        a.head_timers.store(1, Relaxed);
        a.upgrade_pending.store(true, Relaxed);
        assert!(!a.idle(), "upgrade pending");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connections_head_timer_wakes_once_at_the_park_delay_then_runs_to_its_deadline()
    {
        let activity = Arc::new(Activity::default());
        activity.busy.store(true, Relaxed);
        let timer = HeadTimer {
            activity: activity.clone(),
            first_head_by: Instant::now() + Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(30),
            busy_park_delay: Duration::from_millis(100),
        };
        let started = tokio::time::Instant::now();
        let mut sleep = timer.sleep(Duration::from_secs(30));
        assert_eq!(activity.head_timers.load(Relaxed), 1);
        assert!(!activity.park_due.load(Relaxed));
        // Polled the way hyper polls it: the park wake-up is a wake with nothing to report.
        let woke = poll_fn(|cx| match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(false),
            Poll::Pending if activity.park_due.load(Relaxed) => Poll::Ready(true),
            Poll::Pending => Poll::Pending,
        })
        .await;
        assert!(
            woke,
            "the header-read timeout fired before the park wake-up"
        );
        assert_eq!(started.elapsed(), Duration::from_millis(100));
        sleep.as_mut().await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(sleep);
        assert_eq!(activity.head_timers.load(Relaxed), 0);
        assert!(!activity.park_due.load(Relaxed));
    }
}

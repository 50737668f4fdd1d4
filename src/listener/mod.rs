//! Listeners: binding, the accept loop (connection limit, backoff on accept errors), and the
//! per-connection dispatch to a protocol handler, each connection inside a tracing span with
//! its peer and listener. TLS termination is in [`tls`].

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
use futures_util::FutureExt;
use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, warn, Instrument};

use crate::config::Protocol;
use crate::proxy::{self, Context};

/// Bind `addr` with `SO_REUSEADDR` (tokio's default on Unix) and a deep accept backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Open connections of one listener, and a wake-up for an accept loop waiting at the limit.
#[derive(Default)]
struct Occupancy {
    open: AtomicUsize,
    freed: Notify,
}

/// One open connection's place in its listener's count and in the connections gauge, given
/// back when the connection ends: with its task, or with its parked entry
/// (`proxy::h1::parked`), or when either is dropped at shutdown.
pub(crate) struct Slot {
    occupancy: Arc<Occupancy>,
    active: IntGauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.active.dec();
        self.occupancy.open.fetch_sub(1, Ordering::AcqRel);
        self.occupancy.freed.notify_one();
    }
}

/// Accept connections on `listener` until `stop` (this listener removed) or shutdown.
pub async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    ctx: Context,
    stop: CancellationToken,
) {
    let occupancy = Arc::new(Occupancy::default());
    let mut backoff = Duration::from_millis(5);
    let active = ctx.metrics.connections_active.with_label_values(&[&name]);
    let total = ctx.metrics.connections_total.with_label_values(&[&name]);
    loop {
        // Read the limit from the snapshot so a reload can change it without rebinding.
        let limit = ctx
            .shared
            .load()
            .listener(&name)
            .map_or(usize::MAX, |l| l.config.max_connections);
        if occupancy.open.load(Ordering::Acquire) >= limit {
            tokio::select! {
                _ = occupancy.freed.notified() => continue,
                _ = stop.cancelled() => return,
                _ = ctx.shutdown.token.cancelled() => return,
            }
        }
        let (stream, peer) = tokio::select! {
            // Checked first: once stopped, a connection already in the backlog is not accepted.
            biased;
            _ = stop.cancelled() => return,
            _ = ctx.shutdown.token.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning; connections closing
                    // will free descriptors.
                    warn!(listener = %name, error = %e, "accept failed; backing off {backoff:?}");
                    ctx.metrics
                        .connection_errors_total
                        .with_label_values(&[&*name, "accept"])
                        .inc();
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(5);
        occupancy.open.fetch_add(1, Ordering::AcqRel);
        total.inc();
        active.inc();
        let slot = Slot {
            occupancy: occupancy.clone(),
            active: active.clone(),
        };
        let span = info_span!("conn", listener = %name, peer = %peer);
        // The work future is made here and wrapped, not awaited in an `async` block: that
        // block would keep its own dead copies of the socket, the address and the handles (or
        // of the work future itself) beside the work, for as long as the client stays
        // connected.
        let work = span.in_scope(|| handle(stream, peer, ctx.clone(), name.clone(), slot));
        ctx.shutdown.tracker.spawn(work.instrument(span));
    }
}

/// The connection's work, by listener protocol.
///
/// Not an `async fn`, and every path but plain HTTP is boxed: a task's future is as large as its
/// largest await plus an async fn's arguments, and an idle plain-HTTP connection waits in this
/// task until it parks. The slot goes with the connection: plain HTTP carries it into a
/// parked entry and back; the other paths hold it until their future ends.
fn handle(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Context,
    name: Arc<str>,
    slot: Slot,
) -> Either<impl Future<Output = ()> + Send, Pin<Box<dyn Future<Output = ()> + Send>>> {
    let _ = stream.set_nodelay(true);
    let Some(runtime) = ctx.shared.load_full().listener(&name).cloned() else {
        return Either::Right(Box::pin(std::future::ready(())));
    };
    let Some(acceptor) = runtime.tls.clone() else {
        return match runtime.config.protocol {
            Protocol::Http => Either::Left(proxy::http::serve_tcp(stream, ctx, name, peer, slot)),
            Protocol::Tcp => Either::Right(Box::pin(
                proxy::tcp::serve(stream, ctx, name, peer).map(move |()| drop(slot)),
            )),
            Protocol::JsonRpc => Either::Right(Box::pin(
                proxy::jsonrpc::serve(stream, ctx, name, peer, runtime, None)
                    .map(move |()| drop(slot)),
            )),
        };
    };
    let timeout = runtime
        .config
        .tls
        .as_ref()
        .map_or(Duration::from_secs(10), |t| t.handshake_timeout);
    Either::Right(Box::pin(async move {
        let _slot = slot;
        let tls = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => return tls_failed(&ctx, &name, &e.to_string()),
            Err(_) => return tls_failed(&ctx, &name, "handshake timed out"),
        };
        // A client certificate was verified against the listener's client_ca by the handshake.
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(crate::identity::from_cert);
        match runtime.config.protocol {
            Protocol::JsonRpc => proxy::jsonrpc::serve(tls, ctx, name, peer, runtime, cert).await,
            _ => {
                // ALPN chose HTTP/2, or the owned HTTP/1.1 path serves it.
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                proxy::http::serve_tls(tls, h2, ctx, name, peer, cert).await
            }
        }
    }))
}

fn tls_failed(ctx: &Context, listener: &str, why: &str) {
    debug!(error = why, "TLS handshake failed");
    ctx.metrics
        .connection_errors_total
        .with_label_values(&[listener, "tls_handshake"])
        .inc();
}

//! Upstreams whose life the test controls: an HTTP node that can be killed and restarted on the
//! same port (counting the requests that reach it), and one that accepts connections and then
//! resets them. Both bind 127.0.0.1:0 and stop when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::upstream::{self, named, Mock};

/// A named HTTP upstream (answers every request with its name in `x-upstream`, `/healthz`
/// included) that can die and come back on the same address.
pub struct HttpNode {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    life: Mutex<Option<Life>>,
}

struct Life {
    stop: CancellationToken,
    accept: JoinHandle<()>,
    conns: TaskTracker,
}

impl HttpNode {
    pub async fn start(name: &str) -> HttpNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let node = HttpNode {
            name: name.to_owned(),
            addr: listener.local_addr().expect("addr"),
            hits: Arc::new(AtomicU64::new(0)),
            life: Mutex::new(None),
        };
        node.go_live(listener);
        node
    }

    /// `(name, addr)`, as the config helpers take upstreams.
    pub fn member(&self) -> (String, SocketAddr) {
        (self.name.clone(), self.addr)
    }

    /// Requests served other than `GET /healthz` (the probes).
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }

    fn go_live(&self, listener: TcpListener) {
        let stop = CancellationToken::new();
        let conns = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            self.name.clone(),
            self.hits.clone(),
            stop.clone(),
            conns.clone(),
        ));
        *self.life.lock().expect("lock") = Some(Life {
            stop,
            accept,
            conns,
        });
    }

    /// Die: when this returns the port refuses connections and every open connection is closed.
    pub async fn kill(&self) {
        let life = self.life.lock().expect("lock").take();
        if let Some(life) = life {
            life.stop.cancel();
            let _ = life.accept.await;
            life.conns.close();
            life.conns.wait().await;
        }
    }

    /// Come back on the same address.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr)
            .await
            .expect("rebind same port");
        self.go_live(listener);
    }
}

impl Drop for HttpNode {
    fn drop(&mut self) {
        if let Some(life) = self.life.lock().unwrap_or_else(|e| e.into_inner()).take() {
            life.stop.cancel();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    hits: Arc<AtomicU64>,
    stop: CancellationToken,
    conns: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let (name, hits, stop) = (name.clone(), hits.clone(), stop.clone());
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                if req.uri().path() != "/healthz" {
                    hits.fetch_add(1, Ordering::SeqCst);
                }
                let resp = named(&name, format!("{name} {}\n", req.uri()));
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(stream), service) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// An upstream that accepts a connection, reads what the client sends, then resets it (RST).
/// `requests` counts the connections on which something was sent (live requests, not the bare
/// connects of `tcp` probes).
pub struct Resetter {
    pub mock: Mock,
    requests: Arc<AtomicU64>,
}

impl Resetter {
    pub async fn start() -> Resetter {
        let requests = Arc::new(AtomicU64::new(0));
        let counted = requests.clone();
        let mock = upstream::serve_streams(move |stream| {
            let counted = counted.clone();
            async move {
                let mut buf = [0u8; 4096];
                // Peek, so the request stays unread: closing a socket with unread input
                // sends RST instead of FIN.
                if matches!(stream.peek(&mut buf).await, Ok(n) if n > 0) {
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                drop(stream);
            }
        })
        .await;
        Resetter { mock, requests }
    }

    pub fn addr(&self) -> SocketAddr {
        self.mock.addr
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

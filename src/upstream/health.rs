//! Active health probes, one small trait with three kinds: `tcp` (connect), `http` (GET a path;
//! 2xx/3xx or `expect_status` is healthy) and `jsonrpc` (a framed `ping` on a kept-open link
//! that reconnects, sending the node's token in `connect` first when one is configured).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use crate::config::{HealthConfig, ProbeKind, Secret};
use crate::wire::codec::FrameCodec;
use crate::wire::message::{parse_envelope, MessageKind};

/// One way of asking an upstream whether it is healthy.
pub trait HealthCheck: Send + Sync {
    /// `Ok` if healthy; `Err` says why not. Must finish within `timeout`.
    fn probe(&self, timeout: Duration) -> BoxFuture<'_, Result<(), String>>;
}

/// The probe `config` asks for, aimed at `addr`.
pub fn for_config(
    addr: &str,
    config: &HealthConfig,
    token: Option<Secret>,
) -> Box<dyn HealthCheck> {
    let addr = addr.to_owned();
    match config.probe {
        ProbeKind::Tcp => Box::new(TcpCheck { addr }),
        ProbeKind::Http => Box::new(HttpCheck {
            addr,
            path: config.path.clone(),
            expect_status: config.expect_status,
        }),
        ProbeKind::JsonRpc => Box::new(JsonRpcCheck {
            addr,
            token,
            link: tokio::sync::Mutex::new(None),
            next_id: AtomicU64::new(1),
        }),
    }
}

async fn within<T>(
    timeout: Duration,
    what: &str,
    f: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, f)
        .await
        .unwrap_or_else(|_| Err(format!("{what} timed out after {timeout:?}")))
}

struct TcpCheck {
    addr: String,
}

impl HealthCheck for TcpCheck {
    fn probe(&self, timeout: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(within(timeout, "tcp connect", async {
            TcpStream::connect(&self.addr)
                .await
                .map(drop)
                .map_err(|e| format!("connect: {e}"))
        }))
    }
}

struct HttpCheck {
    addr: String,
    path: String,
    expect_status: Option<u16>,
}

impl HealthCheck for HttpCheck {
    fn probe(&self, timeout: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(within(timeout, "http probe", async {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
            tokio::spawn(conn);
            let req = http::Request::get(&self.path)
                .header(http::header::HOST, &self.addr)
                .header(http::header::USER_AGENT, "sessiongate-health")
                .body(Empty::<Bytes>::new())
                .map_err(|e| e.to_string())?;
            let status = sender
                .send_request(req)
                .await
                .map_err(|e| format!("http: {e}"))?
                .status();
            let ok = match self.expect_status {
                Some(code) => status.as_u16() == code,
                None => status.is_success() || status.is_redirection(),
            };
            if ok {
                Ok(())
            } else {
                Err(format!("GET {} answered {status}", self.path))
            }
        }))
    }
}

struct JsonRpcCheck {
    addr: String,
    token: Option<Secret>,
    link: tokio::sync::Mutex<Option<Framed<TcpStream, FrameCodec>>>,
    next_id: AtomicU64,
}

impl JsonRpcCheck {
    /// Send `method` and wait for its answer, skipping the notifications in between.
    async fn call(
        &self,
        link: &mut Framed<TcpStream, FrameCodec>,
        method: &str,
        params: serde_json::Value,
    ) -> Result<(), String> {
        let id = format!(
            "sessiongate-probe-{}",
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let body = json!({ "jsonrpc": "2.0", "id": &id, "method": method, "params": params });
        let body = Bytes::from(serde_json::to_vec(&body).map_err(|e| e.to_string())?);
        link.send(body).await.map_err(|e| format!("write: {e}"))?;
        let quoted = format!("\"{id}\"");
        loop {
            let frame = link
                .next()
                .await
                .ok_or("connection closed")?
                .map_err(|e| format!("read: {e}"))?;
            let Ok(env) = parse_envelope(&frame) else {
                continue;
            };
            if env.kind == MessageKind::Response && env.id.is_some_and(|raw| raw.get() == quoted) {
                return if env.has_error {
                    Err(format!(
                        "{method} answered an error: {}",
                        String::from_utf8_lossy(&frame)
                    ))
                } else {
                    Ok(())
                };
            }
        }
    }
}

impl HealthCheck for JsonRpcCheck {
    fn probe(&self, timeout: Duration) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut guard = self.link.lock().await;
            let result = within(timeout, "jsonrpc ping", async {
                if guard.is_none() {
                    let stream = TcpStream::connect(&self.addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                    let mut link = Framed::new(stream, FrameCodec::default());
                    let params = match &self.token {
                        Some(t) => json!({ "token": t.expose() }),
                        None => json!({}),
                    };
                    self.call(&mut link, "connect", params).await?;
                    *guard = Some(link);
                }
                let link = guard.as_mut().ok_or("no link")?;
                self.call(link, "ping", json!({ "message": "sessiongate health" }))
                    .await
            })
            .await;
            if result.is_err() {
                // Start from a fresh connection next time.
                *guard = None;
            }
            result
        })
    }
}

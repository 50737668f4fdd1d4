//! A small hyper client for the tests: one connection, HTTP/1.1 or HTTP/2 (h2c by prior
//! knowledge or h2 over TLS), over any stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Request and response bodies used by the tests' clients and mock upstreams.
pub type Body = BoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// One client connection.
pub struct Client {
    sender: Sender,
    authority: String,
    scheme: &'static str,
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(resp: Response<Incoming>) -> Result<Reply, BoxError> {
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// The `x-upstream` header the mock upstreams set to their name.
    pub fn upstream(&self) -> &str {
        self.headers
            .get("x-upstream")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("no x-upstream header in {self:?}"))
    }
}

impl Client {
    /// HTTP/1.1 over plain TCP.
    pub async fn h1(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client::handshake(tcp, &addr.to_string(), "http", Version::HTTP_11)
            .await
            .expect("h1 handshake")
    }

    /// HTTP/2 with prior knowledge (h2c) over plain TCP.
    pub async fn h2c(addr: SocketAddr) -> Client {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Client::handshake(tcp, &addr.to_string(), "http", Version::HTTP_2)
            .await
            .expect("h2 handshake")
    }

    /// Speak `version` over `io`; `authority` and `scheme` go into request targets.
    pub async fn handshake<IO>(
        io: IO,
        authority: &str,
        scheme: &'static str,
        version: Version,
    ) -> hyper::Result<Client>
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let io = TokioIo::new(io);
        let sender = if version == Version::HTTP_2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(io).await?;
            tokio::spawn(conn.with_upgrades());
            Sender::H1(sender)
        };
        Ok(Client {
            sender,
            authority: authority.to_owned(),
            scheme,
        })
    }

    /// A request builder for `path` with the target form this connection's version needs.
    pub fn request(&self, method: Method, path: &str) -> http::request::Builder {
        match self.sender {
            Sender::H1(_) => Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, &self.authority),
            Sender::H2(_) => Request::builder()
                .method(method)
                .version(Version::HTTP_2)
                .uri(format!("{}://{}{path}", self.scheme, self.authority)),
        }
    }

    pub async fn send(&mut self, req: Request<Body>) -> hyper::Result<Response<Incoming>> {
        match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    pub async fn try_get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Reply, BoxError> {
        let mut builder = self.request(Method::GET, path);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let resp = self.send(builder.body(empty())?).await?;
        Reply::read(resp).await
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.try_get(path, headers)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }
}

/// Whether `addr` refuses service: the connection is refused, or closed without an answer to a
/// request sent on it. A connection accepted and then held open counts as served.
pub async fn refused(addr: SocketAddr) -> bool {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return true;
    };
    let attempt = async {
        let mut client =
            Client::handshake(tcp, &addr.to_string(), "http", Version::HTTP_11).await?;
        client.try_get("/", &[]).await
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(_)) | Err(_) => false,
        Ok(Err(_)) => true,
    }
}

/// One GET on a fresh HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    Client::h1(addr).await.get(path, headers).await
}

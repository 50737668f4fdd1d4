//! `protocol: tcp`: the key is the SNI peeked from the ClientHello (TLS passes through to real
//! TLS upstreams untouched) or, for clients that do not speak TLS, the client IP; half-close
//! works both ways.

mod support;

use std::collections::{HashMap, HashSet};

use support::tls::{self, TestCert};
use support::upstream::{self, Mock};
use support::{admin_route, within, Proxy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

/// Read until the client half-closes, then answer `<name> <bytes read>` and close.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, name: &str) {
    let mut sink = Vec::new();
    if stream.read_to_end(&mut sink).await.is_err() {
        return;
    }
    let _ = stream
        .write_all(format!("{name} {}\n", sink.len()).as_bytes())
        .await;
    let _ = stream.shutdown().await;
}

/// An upstream that terminates TLS itself when the client speaks TLS, and talks plain TCP
/// otherwise.
async fn tcp_upstream(name: &'static str, acceptor: TlsAcceptor) -> Mock {
    upstream::serve_streams(move |stream: TcpStream| {
        let acceptor = acceptor.clone();
        async move {
            let mut first = [0u8; 1];
            if stream.peek(&mut first).await.is_err() {
                return;
            }
            if first[0] == 0x16 {
                if let Ok(tls) = acceptor.accept(stream).await {
                    converse(tls, name).await;
                }
            } else {
                converse(stream, name).await;
            }
        }
    })
    .await
}

struct Setup {
    proxy: Proxy,
    cert: TestCert,
    _upstreams: Vec<Mock>,
}

async fn setup() -> Setup {
    let cert = TestCert::new(&["*.sni.test"]);
    let mut upstreams = Vec::new();
    let mut list = Vec::new();
    for name in ["t1", "t2", "t3"] {
        let mock = tcp_upstream(name, cert.acceptor()).await;
        list.push((name.to_owned(), mock.addr));
        upstreams.push(mock);
    }
    let yaml = format!(
        "admin:
  listen: 127.0.0.1:0
listeners:
  - name: raw
    listen: 127.0.0.1:0
    protocol: tcp
    pool: fleet
    key:
      - sni: true
      - client_ip: true
pools:
  fleet:
    upstreams:
{}",
        support::upstreams_yaml(&list)
    );
    Setup {
        proxy: Proxy::start_yaml(&yaml).await,
        cert,
        _upstreams: upstreams,
    }
}

/// Send `payload`, half-close, and read the upstream's whole answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, payload: &[u8]) -> String {
    stream.write_all(payload).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .await
        .expect("read answer");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_route_by_sni_end_to_end() {
    within(60, async {
        let s = setup().await;
        let mut admin = s.proxy.admin_client().await;
        let config = s.cert.client_config(&[]);
        let mut landed: HashMap<String, String> = HashMap::new();
        for round in 0..2 {
            for i in 0..24 {
                let sni = format!("s{i}.sni.test");
                let stream = tls::connect(s.proxy.addr("raw"), config.clone(), &sni)
                    .await
                    .unwrap_or_else(|e| panic!("TLS through the proxy for {sni}: {e}"));
                let answer = exchange(stream, b"ping").await;
                let (name, bytes) = answer.trim_end().split_once(' ').expect("name and count");
                assert_eq!(bytes, "4", "payload through TLS for {sni}");
                if round == 0 {
                    assert_eq!(name, admin_route(&mut admin, "fleet", &sni).await, "{sni}");
                    landed.insert(sni, name.to_owned());
                } else {
                    assert_eq!(name, landed[&sni], "{sni} moved between connections");
                }
            }
        }
        let spread: HashSet<&String> = landed.values().collect();
        assert_eq!(
            spread.len(),
            3,
            "24 server names over 3 upstreams: {landed:?}"
        );
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_route_by_client_ip_and_half_close_works() {
    within(30, async {
        let s = setup().await;
        let mut admin = s.proxy.admin_client().await;
        let owner = admin_route(&mut admin, "fleet", "127.0.0.1").await;
        let mut payload = b"hello, not TLS".to_vec();
        payload.extend((0..100_000u32).map(|i| (i % 253) as u8));
        for _ in 0..3 {
            let stream = TcpStream::connect(s.proxy.addr("raw")).await.unwrap();
            // The client has stopped writing; the reply still reaches it.
            let answer = exchange(stream, &payload).await;
            assert_eq!(answer, format!("{owner} {}\n", payload.len()));
        }
    })
    .await
}

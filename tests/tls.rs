//! TLS termination with a generated certificate: HTTP/1.1 and h2 chosen by ALPN, garbage on the
//! TLS port leaves other clients alone, and reload re-reads certificates (a bad one is refused
//! while the old one keeps serving).

mod support;

use std::time::Duration;

use http::Version;
use rand::RngCore;
use support::client::Client;
use support::tls::{self, TestCert};
use support::upstream::{self, Mock};
use support::{within, ConfigDir, Proxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that reports the protocol the proxy said the client used.
async fn proto_upstream() -> Mock {
    upstream::serve_fn(|req| async move {
        let proto = req
            .headers()
            .get("x-forwarded-proto")
            .map_or("-".into(), |v| v.to_str().unwrap().to_owned());
        upstream::named("tls-up", format!("proto={proto}"))
    })
    .await
}

/// A TLS listener `secure` using `cert.pem` / `key.pem` from the config folder.
fn tls_config(upstream: &Mock) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
listeners:
  - name: secure
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    tls: {{ cert: cert.pem, key: key.pem }}
pools:
  api:
    upstreams:
      - {{ name: tls-up, addr: \"{}\" }}
",
        upstream.addr
    )
}

async fn start(upstream: &Mock, cert: &TestCert) -> Proxy {
    let dir = ConfigDir::new(&tls_config(upstream));
    dir.file("cert.pem", &cert.cert_pem);
    dir.file("key.pem", &cert.key_pem);
    Proxy::start(dir).await
}

/// A TLS client offering `alpn`, speaking the protocol the server picked.
async fn connect(proxy: &Proxy, cert: &TestCert, alpn: &[&[u8]]) -> (Client, Option<String>) {
    let stream = tls::connect(proxy.addr("secure"), cert.client_config(alpn), "localhost")
        .await
        .expect("TLS handshake");
    let negotiated = tls::alpn(&stream);
    let version = if negotiated.as_deref() == Some("h2") {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let client = Client::handshake(stream, "localhost", "https", version)
        .await
        .expect("HTTP handshake");
    (client, negotiated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_h2_chosen_by_alpn() {
    within(30, async {
        let up = proto_upstream().await;
        let cert = TestCert::new(&["localhost"]);
        let proxy = start(&up, &cert).await;

        for (offered, expected_alpn, expected_version) in [
            (
                &[b"h2".as_slice(), b"http/1.1"][..],
                Some("h2"),
                Version::HTTP_2,
            ),
            (
                &[b"http/1.1".as_slice()][..],
                Some("http/1.1"),
                Version::HTTP_11,
            ),
            (&[][..], None, Version::HTTP_11),
        ] {
            let (mut client, negotiated) = connect(&proxy, &cert, offered).await;
            assert_eq!(negotiated.as_deref(), expected_alpn);
            for _ in 0..3 {
                let reply = client.get("/", &[]).await;
                assert_eq!(reply.status, 200);
                assert_eq!(reply.version, expected_version);
                assert_eq!(reply.body, "proto=https");
            }
        }

        // A client that does not trust the certificate is turned away at the handshake.
        let stranger = TestCert::new(&["localhost"]);
        let refused = tls::connect(
            proxy.addr("secure"),
            stranger.client_config(&[]),
            "localhost",
        )
        .await;
        assert!(refused.is_err(), "handshake with an untrusted certificate");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tls_port_does_not_disturb_other_clients() {
    within(30, async {
        let up = proto_upstream().await;
        let cert = TestCert::new(&["localhost"]);
        let proxy = start(&up, &cert).await;
        let (mut before, _) = connect(&proxy, &cert, &[b"h2"]).await;
        assert_eq!(before.get("/", &[]).await.status, 200);

        for round in 0..6 {
            let mut junk = vec![0u8; 4096];
            rand::thread_rng().fill_bytes(&mut junk);
            if round % 2 == 0 {
                // Not a TLS record type at all.
                junk[0] = 0;
            } else {
                // A complete handshake record holding a complete "ClientHello" of random bytes.
                junk[..9].copy_from_slice(&[0x16, 0x03, 0x01, 0x0f, 0xfb, 0x01, 0x00, 0x0f, 0xf7]);
            }
            let mut raw = TcpStream::connect(proxy.addr("secure")).await.unwrap();
            // The proxy may close before reading it all; a failed write is fine.
            let _ = raw.write_all(&junk).await;
            // The proxy hangs up (EOF or reset) instead of waiting for more.
            let mut buf = Vec::new();
            let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf));
            assert!(closed.await.is_ok(), "garbage connection left open");
        }

        assert_eq!(before.get("/", &[]).await.status, 200, "open h2 client");
        let (mut after, alpn) = connect(&proxy, &cert, &[b"http/1.1"]).await;
        assert_eq!(alpn.as_deref(), Some("http/1.1"));
        assert_eq!(after.get("/", &[]).await.body, "proto=https");

        let errors = proxy
            .server
            .metrics()
            .connection_errors_total
            .with_label_values(&["secure", "tls_handshake"]);
        support::eventually("6 TLS handshake errors counted", || errors.get() == 6).await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_certificates_and_refuses_bad_ones() {
    within(30, async {
        let up = proto_upstream().await;
        let first = TestCert::new(&["localhost"]);
        let proxy = start(&up, &first).await;
        let (mut open, _) = connect(&proxy, &first, &[b"h2"]).await;

        // Garbage in place of the certificate: refused; the first certificate keeps serving.
        proxy
            .config
            .file("cert.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n");
        let err = proxy.server.reload().await.expect_err("bad certificate");
        assert!(err.to_string().contains("listeners[0].tls.cert"), "{err}");
        // A certificate that does not match the key: refused too.
        let second = TestCert::new(&["localhost"]);
        proxy.config.file("cert.pem", &second.cert_pem);
        let err = proxy.server.reload().await.expect_err("mismatched key");
        assert!(err.to_string().contains("listeners[0].tls.key"), "{err}");
        let (mut fresh, _) = connect(&proxy, &first, &[b"http/1.1"]).await;
        assert_eq!(fresh.get("/", &[]).await.status, 200);

        // A good new pair is picked up by new connections; open ones are untouched.
        proxy.config.file("key.pem", &second.key_pem);
        proxy.server.reload().await.expect("new certificate");
        let (mut renewed, _) = connect(&proxy, &second, &[b"h2"]).await;
        assert_eq!(renewed.get("/", &[]).await.status, 200);
        let old_trust =
            tls::connect(proxy.addr("secure"), first.client_config(&[]), "localhost").await;
        assert!(old_trust.is_err(), "the old certificate is still presented");
        assert_eq!(
            open.get("/", &[]).await.status,
            200,
            "connection from before"
        );
    })
    .await
}

//! Identities from mTLS client certificates on a JSON-RPC listener: a certificate signed by
//! `client_ca` names the caller (SAN URI, else SAN DNS, else subject CN); without one, with one
//! from another CA, or with an expired one, a listener that requires certificate identities
//! refuses the TLS handshake (no JSON-RPC answer at all); one that also takes tokens lets the
//! handshake through and answers -32002 when neither is there.

mod support;

use std::sync::Arc;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use serde_json::{json, Value};
use sessiongate::identity::token_hash;
use sessiongate::wire::codec::FrameCodec;
use support::jsonrpc::{CliFleet, WAIT};
use support::tls::TestCert;
use support::{eventually, upstreams_yaml, within, ConfigDir, Proxy};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;

/// A certificate authority for client certificates.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA");
        Ca { cert, key }
    }

    /// A client certificate with these SANs and CN, valid now unless `expired`.
    fn client(&self, sans: Vec<SanType>, cn: &str, expired: bool) -> ClientCert {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.subject_alt_names = sans;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        ClientCert {
            der: cert.der().clone(),
            key: key.serialize_der(),
        }
    }
}

struct ClientCert {
    der: CertificateDer<'static>,
    key: Vec<u8>,
}

fn dns(name: &str) -> SanType {
    SanType::DnsName(rcgen::Ia5String::try_from(name).expect("ia5"))
}

fn uri(name: &str) -> SanType {
    SanType::URI(rcgen::Ia5String::try_from(name).expect("ia5"))
}

/// A client trusting `server`, showing `cert` if given.
fn client_config(server: &TestCert, cert: Option<&ClientCert>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(server.cert_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
    let config = match cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(
                vec![c.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(c.key.clone())),
            )
            .expect("client cert"),
    };
    Arc::new(config)
}

type Conn = Framed<TlsStream<TcpStream>, FrameCodec>;

/// A TLS connection to the listener (the handshake as the client sees it).
async fn tls_connect(proxy: &Proxy, config: Arc<ClientConfig>) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(proxy.addr("cli")).await?;
    let name = ServerName::try_from("localhost").expect("name");
    let tls = TlsConnector::from(config).connect(name, tcp).await?;
    Ok(Framed::new(tls, FrameCodec::default()))
}

async fn send(conn: &mut Conn, msg: Value) {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(msg.to_string().as_bytes());
    // The codec's encoder adds the framing.
    let _ = conn.send(buf.freeze()).await;
}

/// The next frame, `None` when the connection ended (closed or failed).
async fn next(conn: &mut Conn) -> Option<Value> {
    let frame = tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("a frame or the end in time");
    match frame {
        Some(Ok(body)) => Some(serde_json::from_slice(&body).expect("JSON")),
        _ => None,
    }
}

/// The answer to request `id` (server notifications skipped).
async fn call(conn: &mut Conn, id: u64, method: &str, params: Value) -> Value {
    send(
        conn,
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
    )
    .await;
    loop {
        let msg = next(conn)
            .await
            .unwrap_or_else(|| panic!("closed before the answer to {method}"));
        if msg.get("method").is_none() && msg["id"] == id {
            return msg;
        }
    }
}

const TOKEN: &str = "dave-token";

/// A JSON-RPC listener with TLS and `client_ca`, identities `from`, required; a policy that
/// denies `sessions.getSizes` to every certificate identity used here, so the refusal names
/// the identity the proxy derived.
async fn start(fleet: &CliFleet, server: &TestCert, ca: &Ca, from: &str) -> Proxy {
    let yaml = format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
identities:
  tokens_file: tokens.yaml
  policies:
    - {{ user: \"spiffe://acme/alice\", deny: [sessions.getSizes] }}
    - {{ user: bob.example, deny: [sessions.getSizes] }}
    - {{ user: carol-cn, deny: [sessions.getSizes] }}
listeners:
  - name: cli
    listen: 127.0.0.1:0
    protocol: jsonrpc
    pool: fleet
    tls: {{ cert: cert.pem, key: key.pem, client_ca: ca.pem }}
    identity: {{ from: [{from}], required: true }}
pools:
  fleet:
    fanout_timeout: 500ms
    upstreams:
{}",
        upstreams_yaml(&fleet.members())
    );
    let dir = ConfigDir::new(&yaml);
    dir.file("cert.pem", &server.cert_pem);
    dir.file("key.pem", &server.key_pem);
    dir.file("ca.pem", ca.cert.pem());
    dir.file(
        "tokens.yaml",
        format!("- {{ sha256: {}, user: dave }}\n", token_hash(TOKEN)),
    );
    Proxy::start(dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_caller() {
    let fleet = CliFleet::start(2).await;
    let server = TestCert::new(&["localhost"]);
    let ca = Ca::new("client ca");
    let proxy = start(&fleet, &server, &ca, "client_cert").await;
    within(30, async {
        let alice = ca.client(
            vec![uri("spiffe://acme/alice"), dns("alice.example")],
            "alice-cn",
            false,
        );
        let bob = ca.client(vec![dns("bob.example")], "bob-cn", false);
        let carol = ca.client(vec![], "carol-cn", false);
        for (cert, name) in [
            (&alice, "spiffe://acme/alice"),
            (&bob, "bob.example"),
            (&carol, "carol-cn"),
        ] {
            let mut c = tls_connect(&proxy, client_config(&server, Some(cert)))
                .await
                .expect("handshake");
            // The certificate is the identity: no connect needed first.
            let sizes = call(&mut c, 0, "sessions.getSizes", json!({})).await;
            assert_eq!(sizes["error"]["code"], -32003, "{sizes}");
            let message = sizes["error"]["message"].as_str().unwrap();
            assert!(
                message.ends_with(&format!("not allowed for {name}")),
                "{message}"
            );
            let session = format!("{}-s", name.replace(['/', ':'], "_"));
            let made = call(&mut c, 1, "session.create", json!({ "sessionId": session })).await;
            assert_eq!(made["result"]["sessionId"], session.as_str(), "{made}");
            // connect goes through too (a token is not needed).
            let hello = call(&mut c, 2, "connect", json!({})).await;
            assert!(hello.get("result").is_some(), "{hello}");
        }
        // Sessions belong to the certificate's identity.
        let mut c = tls_connect(&proxy, client_config(&server, Some(&bob)))
            .await
            .expect("handshake");
        let resp = call(
            &mut c,
            0,
            "session.getMessages",
            json!({ "sessionId": "spiffe___acme_alice-s" }),
        )
        .await;
        assert_eq!(resp["error"]["code"], -32003, "{resp}");
        let list = call(&mut c, 1, "sessions.list", json!({})).await;
        let ids: Vec<&str> = list["result"]["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["sessionId"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["bob.example-s"], "{list}");
    })
    .await
}

/// A listener that takes only certificate identities refuses a client without a good one at
/// the TLS handshake: the client gets no JSON-RPC frame, and the proxy counts a handshake
/// error. (With TLS 1.3 the client's side of the handshake may finish first; the refusal then
/// arrives as an alert on its first read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_valid_certificate_the_handshake_fails() {
    let fleet = CliFleet::start(1).await;
    let server = TestCert::new(&["localhost"]);
    let ca = Ca::new("client ca");
    let stranger = Ca::new("another ca");
    let proxy = start(&fleet, &server, &ca, "client_cert").await;
    within(30, async {
        let cases = [
            ("no certificate", None),
            (
                "another CA's certificate",
                Some(stranger.client(vec![dns("alice.example")], "alice", false)),
            ),
            (
                "an expired certificate",
                Some(ca.client(vec![dns("alice.example")], "alice", true)),
            ),
        ];
        for (what, cert) in &cases {
            match tls_connect(&proxy, client_config(&server, cert.as_ref())).await {
                Err(_) => {}
                Ok(mut c) => {
                    send(
                        &mut c,
                        json!({"jsonrpc": "2.0", "id": 0, "method": "connect",
                               "params": { "token": TOKEN }}),
                    )
                    .await;
                    let answer = next(&mut c).await;
                    assert!(answer.is_none(), "{what}: answered {answer:?}");
                }
            }
        }
        let errors = proxy
            .server
            .metrics()
            .connection_errors_total
            .with_label_values(&["cli", "tls_handshake"]);
        eventually("3 handshake errors counted", || errors.get() == 3).await;
        assert_eq!(fleet.clis[0].requests_served(), 0);

        // A good certificate still gets in.
        let good = ca.client(vec![dns("alice.example")], "alice", false);
        let mut c = tls_connect(&proxy, client_config(&server, Some(&good)))
            .await
            .expect("handshake");
        let hello = call(&mut c, 0, "connect", json!({})).await;
        assert!(hello.get("result").is_some(), "{hello}");
    })
    .await
}

/// With tokens as a second source, a certificate is optional at the handshake; a caller with
/// neither is refused with -32002, and one with a token gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_too_a_missing_certificate_is_a_missing_identity() {
    let fleet = CliFleet::start(1).await;
    let server = TestCert::new(&["localhost"]);
    let ca = Ca::new("client ca");
    let proxy = start(&fleet, &server, &ca, "client_cert, token").await;
    within(30, async {
        let mut c = tls_connect(&proxy, client_config(&server, None))
            .await
            .expect("handshake without a certificate");
        let resp = call(&mut c, 0, "connect", json!({})).await;
        assert_eq!(resp["error"]["code"], -32002, "{resp}");
        assert!(next(&mut c).await.is_none(), "closed after the refusal");

        let mut c = tls_connect(&proxy, client_config(&server, None))
            .await
            .expect("handshake without a certificate");
        let hello = call(&mut c, 0, "connect", json!({ "token": TOKEN })).await;
        assert!(hello.get("result").is_some(), "{hello}");
        let made = call(
            &mut c,
            1,
            "session.create",
            json!({ "sessionId": "dave-1" }),
        )
        .await;
        assert_eq!(made["result"]["sessionId"], "dave-1", "{made}");

        // A certificate from another CA is still refused at the handshake.
        let stranger = Ca::new("another ca");
        let cert = stranger.client(vec![dns("x.example")], "x", false);
        if let Ok(mut c) = tls_connect(&proxy, client_config(&server, Some(&cert))).await {
            send(
                &mut c,
                json!({"jsonrpc": "2.0", "id": 0, "method": "connect", "params": {"token": TOKEN}}),
            )
            .await;
            assert!(next(&mut c).await.is_none(), "a stranger's certificate");
        }
    })
    .await
}

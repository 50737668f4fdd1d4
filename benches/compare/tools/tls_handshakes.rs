//! `tls-handshakes`: full TLS handshakes in a loop (fresh TCP connection, no session resumption),
//! `--concurrency` at a time, for `--secs` or `--max` handshakes. By default the client skips
//! certificate verification (like `openssl s_time`), so the client's CPU goes to the handshake
//! itself and the server side is what the number measures; `--ca` verifies the chain instead.
//! Prints `START`, `STOP` and `RESULT {json}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{loopback, percentiles, say};

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    addr: String,
    #[arg(long, default_value = "localhost")]
    server_name: String,
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Hard cap on handshakes.
    #[arg(long, default_value_t = 2_000_000)]
    max: u64,
    /// Verify the server's chain against this CA (PEM) instead of skipping verification.
    #[arg(long)]
    ca: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let target = loopback(&args.addr)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut config = match &args.ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).context("reading --ca")? {
                roots.add(cert?)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(args.server_name.clone())?;

    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.secs);
    say("START");
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (connector, name, done, errors) = (
            connector.clone(),
            name.clone(),
            done.clone(),
            errors.clone(),
        );
        let max = args.max;
        tasks.push(tokio::spawn(async move {
            let mut sample = Vec::new();
            while Instant::now() < deadline && done.load(Ordering::Relaxed) < max {
                let t = Instant::now();
                match handshake(&connector, target, name.clone()).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        sample.push(t.elapsed().as_micros() as u32);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            sample
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    say("STOP");
    let n = done.load(Ordering::Relaxed);
    let mut result = serde_json::json!({
        "handshakes": n,
        "errors": errors.load(Ordering::Relaxed),
        "secs": secs,
        "rate": n as f64 / secs,
        "concurrency": args.concurrency,
        "verified": args.ca.is_some(),
    });
    result
        .as_object_mut()
        .unwrap()
        .extend(percentiles(&mut latencies).as_object().unwrap().clone());
    say(format_args!("RESULT {result}"));
    Ok(())
}

async fn handshake(
    connector: &TlsConnector,
    target: std::net::SocketAddr,
    name: ServerName<'static>,
) -> anyhow::Result<()> {
    let tcp = TcpStream::connect(target).await?;
    tcp.set_nodelay(true)?;
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .context("handshake timed out")??;
    // close_notify, then close: the server finishes its side (tickets, close) on its own.
    let _ = tls.shutdown().await;
    Ok(())
}

/// Accepts any certificate and signature: load generation only, never a real client.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

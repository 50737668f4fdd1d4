//! Layer-4 passthrough: the key is the TLS SNI read from the ClientHello (without terminating
//! TLS) or the client IP; the bytes read while looking are replayed to the upstream, then bytes
//! are copied both ways with half-close honoured.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::Context;
use crate::config::{KeySource, NoKey};
use crate::key::sni::{peek_sni, SniPeek, MAX_HELLO_BYTES};

pub async fn serve(mut client: TcpStream, ctx: Context, listener: Arc<str>, peer: SocketAddr) {
    let snapshot = ctx.shared.load_full();
    let Some(runtime) = snapshot.listener(&listener) else {
        return;
    };
    // TCP listeners have no tenants (validation): their one pool.
    let Some(pool) = runtime.default_pool().cloned() else {
        return;
    };
    let read_timeout = runtime.config.header_read_timeout;
    let mut hello = Vec::new();
    let mut key: Option<Vec<u8>> = None;
    for source in &runtime.config.key {
        key = match source {
            KeySource::Sni => match read_sni(&mut client, &mut hello, read_timeout).await {
                Some(name) => Some(name.into_bytes()),
                None => continue,
            },
            KeySource::ClientIp => Some(peer.ip().to_string().into_bytes()),
            _ => continue,
        };
        break;
    }
    let upstream = match &key {
        Some(k) => pool.route(k).cloned(),
        None if runtime.config.no_key == NoKey::Reject => {
            debug!("no key for tcp connection; closing (no_key: reject)");
            return count(&ctx, &listener, pool.name(), "none", "no_key");
        }
        None => pool.route_random().cloned(),
    };
    drop(snapshot);
    let Some(upstream) = upstream else {
        warn!(pool = pool.name(), "no upstream available; closing");
        return count(&ctx, &listener, pool.name(), "none", "no_upstream");
    };

    let connect = tokio::time::timeout(
        pool.config.connect_timeout,
        TcpStream::connect(upstream.addr()),
    );
    let mut server = match connect.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(upstream = upstream.name(), error = %e, "upstream connect failed");
            return count(
                &ctx,
                &listener,
                pool.name(),
                upstream.name(),
                "connect_error",
            );
        }
        Err(_) => {
            warn!(upstream = upstream.name(), "upstream connect timed out");
            return count(
                &ctx,
                &listener,
                pool.name(),
                upstream.name(),
                "connect_timeout",
            );
        }
    };
    let _ = server.set_nodelay(true);
    let open = ctx
        .metrics
        .upstream_connections_active
        .with_label_values(&[pool.name(), upstream.name()]);
    open.inc();
    let result = async {
        server.write_all(&hello).await?;
        drop(hello);
        tokio::io::copy_bidirectional(&mut client, &mut server).await
    }
    .await;
    open.dec();
    match result {
        Ok((up, down)) => debug!(bytes_up = up, bytes_down = down, "tcp connection closed"),
        Err(e) => debug!(error = %e, "tcp connection ended with an error"),
    }
    count(&ctx, &listener, pool.name(), upstream.name(), "closed");
}

fn count(ctx: &Context, listener: &str, pool: &str, upstream: &str, outcome: &str) {
    ctx.metrics
        .requests_total
        .with_label_values(&[listener, pool, upstream, outcome])
        .inc();
}

/// Read until the ClientHello is complete (or clearly absent); `buf` keeps every byte read.
async fn read_sni(client: &mut TcpStream, buf: &mut Vec<u8>, limit: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match peek_sni(buf) {
            SniPeek::Found(name) => return Some(name),
            SniPeek::Absent => return None,
            SniPeek::NeedMore => {}
        }
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout_at(deadline, client.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HELLO_BYTES {
            return None;
        }
    }
}

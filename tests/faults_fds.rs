//! Fault injection: file descriptors exhausted. The real binary runs under `prlimit
//! --nofile=64:64`; the test opens connections until accept fails (`EMFILE`). The proxy must stay
//! up, back off, count the failures in `sessiongate_connection_errors_total{kind="accept"}`, and
//! serve new connections again once the test closes its own.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::binary::Binary;
use support::client::Client;
use support::faults::{sample, until_sample};
use support::nodes::HttpNode;
use support::{poll_until, web_config, within, ConfigDir};
use tokio::net::TcpStream;

/// Connections the test opens: well past what 64 descriptors allow.
const FLOOD: usize = 150;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .count()
}

/// Whether a fresh connection to `addr` gets an answer within 2s.
async fn served(addr: SocketAddr) -> bool {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.ok()?;
        let mut client = Client::handshake(tcp, &addr.to_string(), "http", http::Version::HTTP_11)
            .await
            .ok()?;
        client.try_get("/", &[]).await.ok()
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(reply)) if reply.status == 200
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_descriptors_back_off_accept_and_recover() {
    within(60, async {
        let node = HttpNode::start("ok").await;
        let dir = ConfigDir::new(&web_config(&[node.member()], "", ""));
        let mut proxy = Binary::spawn_under(&["prlimit", "--nofile=64:64", "--"], dir.path(), &[]);
        let web = proxy.listener_addr("web").await;
        let admin = proxy.listener_addr("admin").await;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", proxy.pid()))
            .expect("read /proc/PID/limits");
        let nofile = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .expect("Max open files line");
        assert_eq!(nofile, "64", "the limit did not apply: {limits}");
        assert!(served(web).await, "not serving before the flood");
        let at_rest = open_fds(proxy.pid());

        let mut flood = Vec::new();
        for _ in 0..FLOOD {
            // The kernel completes the handshake from the listen backlog whether or not the
            // proxy can accept, so these connects succeed.
            flood.push(TcpStream::connect(web).await.expect("connect"));
        }
        let line = proxy
            .wait_log_where(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("accept failed"))
            })
            .await;
        assert!(proxy.is_running(), "the proxy died at EMFILE");
        let exhausted = open_fds(proxy.pid());

        let freed = Instant::now();
        drop(flood);
        poll_until("new connections are served again", 15, || served(web)).await;
        let recovered = freed.elapsed();
        assert!(proxy.is_running());
        let errors = sample(
            admin,
            "sessiongate_connection_errors_total",
            &[("listener", "web"), ("kind", "accept")],
        )
        .await;
        assert!(errors >= 1.0, "accept errors counted: {errors}");
        until_sample(admin, "sessiongate_connections_active", &[("listener", "web")], 0.0, 5)
            .await;
        assert!(served(web).await);
        eprintln!(
            "fd exhaustion: {at_rest} fds at rest, {exhausted} at the flood ({FLOOD} connections, \
             limit 64); first error: {}; {errors} accept errors counted; served again {recovered:?} \
             after the test closed its connections",
            line["fields"]["error"]
        );
    })
    .await
}

//! Fault injection: a reload storm. 1,000 reloads through `POST /admin/reload`, each moving part
//! of both rings (one upstream's weight alternates between 1 and 2), while HTTP and JSON-RPC
//! clients keep sending: not one request fails, and `/metrics` counts every reload applied.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::binary::Binary;
use support::client::{self, Client, Reply};
use support::faults::sample;
use support::jsonrpc::{session_params, CliFleet, RpcClient};
use support::upstream::Fleet;
use support::{within, ConfigDir};

const RELOADS: usize = 1000;
const CLIENTS: usize = 4;

fn config(http: &Fleet, cli: &CliFleet, weight: u32) -> String {
    let weighted = |i: usize, name: &str, addr| {
        let weight = if i == 0 { weight } else { 1 };
        format!("      - {{ name: {name}, addr: \"{addr}\", weight: {weight} }}\n")
    };
    let api: String = http
        .members
        .iter()
        .enumerate()
        .map(|(i, (n, a))| weighted(i, n, a))
        .collect();
    let fleet: String = cli
        .members()
        .iter()
        .enumerate()
        .map(|(i, (n, a))| weighted(i, n, a))
        .collect();
    format!(
        "admin:
  listen: 127.0.0.1:0
shutdown_grace: 2s
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - header: X-Session-Id
  - name: cli
    listen: 127.0.0.1:0
    protocol: jsonrpc
    pool: fleet
pools:
  api:
    upstreams:
{api}  fleet:
    fanout_timeout: 500ms
    upstreams:
{fleet}"
    )
}

/// `POST /admin/reload` on a kept-alive admin connection, which must apply it.
async fn reload(admin: &mut Client) {
    let req = admin
        .request(http::Method::POST, "/admin/reload")
        .body(client::empty())
        .expect("request");
    let resp = admin.send(req).await.expect("POST /admin/reload");
    let reply = Reply::read(resp).await.expect("reload answer");
    assert_eq!(reply.status, 200, "reload: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_reloads_under_http_and_jsonrpc_load_fail_no_request() {
    within(150, async {
        let http = Fleet::start(&["api-0", "api-1", "api-2"]).await;
        let cli = CliFleet::start(3).await;
        let dir = ConfigDir::new(&config(&http, &cli, 1));
        let mut proxy = Binary::spawn(dir.path());
        let web = proxy.listener_addr("web").await;
        let cli_addr = proxy.listener_addr("cli").await;
        let admin_addr = proxy.listener_addr("admin").await;

        let stop = Arc::new(AtomicBool::new(false));
        let mut http_tasks = Vec::new();
        let mut rpc_tasks = Vec::new();
        for t in 0..CLIENTS {
            let (http_stop, rpc_stop) = (stop.clone(), stop.clone());
            let stop = http_stop;
            http_tasks.push(tokio::spawn(async move {
                let mut client = Client::h1(web).await;
                let (mut ok, mut failed) = (0u64, Vec::new());
                for i in 0..1_000_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("key-{t}-{}", i % 100);
                    match client.try_get("/", &[("x-session-id", &key)]).await {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(format!("{}: {}", r.status, r.body)),
                        Err(e) => {
                            failed.push(e.to_string());
                            client = Client::h1(web).await;
                        }
                    }
                }
                (ok, failed)
            }));
            let stop = rpc_stop;
            rpc_tasks.push(tokio::spawn(async move {
                let mut client = RpcClient::connect(cli_addr).await;
                let ids: Vec<String> = (0..5).map(|_| uuid::Uuid::new_v4().to_string()).collect();
                let (mut ok, mut failed) = (0u64, Vec::new());
                for id in &ids {
                    let made = client
                        .call("session.create", session_params(id, json!({})))
                        .await;
                    match made.get("result") {
                        Some(_) => ok += 1,
                        None => failed.push(made.to_string()),
                    }
                }
                for i in 0..1_000_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let id = &ids[i % ids.len()];
                    let resp = client
                        .call("session.getMessages", session_params(id, json!({})))
                        .await;
                    match resp.get("result") {
                        Some(_) => ok += 1,
                        None => failed.push(resp.to_string()),
                    }
                    client.forget_kept();
                }
                (ok, failed)
            }));
        }

        let mut admin = Client::h1(admin_addr).await;
        let started = Instant::now();
        for i in 0..RELOADS {
            dir.write(&config(&http, &cli, 1 + (i as u32 + 1) % 2));
            reload(&mut admin).await;
        }
        let storm = started.elapsed();
        stop.store(true, Ordering::SeqCst);

        let (mut http_ok, mut rpc_ok) = (0, 0);
        let mut failures = Vec::new();
        for task in http_tasks {
            let (ok, failed) = task.await.expect("http client");
            http_ok += ok;
            failures.extend(failed);
        }
        for task in rpc_tasks {
            let (ok, failed) = task.await.expect("jsonrpc client");
            rpc_ok += ok;
            failures.extend(failed);
        }
        let applied = sample(
            admin_addr,
            "sessiongate_config_reloads_total",
            &[("result", "success")],
        )
        .await;
        let refused = sample(
            admin_addr,
            "sessiongate_config_reloads_total",
            &[("result", "failure")],
        )
        .await;
        eprintln!(
            "reload storm: {RELOADS} reloads in {storm:?}; {http_ok} HTTP and {rpc_ok} JSON-RPC \
             requests answered meanwhile, {} failed; reloads applied per /metrics: {applied}",
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "failed requests: {:?}",
            &failures[..failures.len().min(10)]
        );
        assert!(http_ok > 0 && rpc_ok > 0, "no load ran");
        assert_eq!(applied, RELOADS as f64);
        assert_eq!(refused, 0.0);
        assert!(storm < Duration::from_secs(120), "the storm took {storm:?}");
    })
    .await
}

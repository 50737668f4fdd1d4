//! The access log (`access_log:`): one line per HTTP request and per JSON-RPC request, with
//! listener, pool, upstream, session, user, method, outcome, latency and bytes; HTTP keys as
//! their source and a short hash unless `log_keys: true`; tokens never; sampling; reopened on
//! SIGUSR1 after the file was rotated away.

mod support;

use std::path::{Path, PathBuf};

use http::Method;
use serde_json::{json, Value};
use support::client::full;
use support::jsonrpc::{create, jsonrpc_config, send, CliFleet, RpcClient, RpcYaml};
use support::upstream::Fleet;
use support::{metric_value, poll_until, web_config, within, ConfigDir, Proxy};

/// The token of user `alice`, and its SHA-256.
const ALICE: &str = "alice-secret";
const TOKENS: &str =
    "- { sha256: 0c848abb03307b06cf70cd4e29c157dc81af5e94ab3eb1d0c59a120269572376, user: alice }\n";

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Wait until the log at `path` has `n` lines (the writer is behind a channel).
async fn wait_lines(path: &Path, n: usize) -> Vec<Value> {
    poll_until(&format!("{n} access log lines"), 10, || async {
        lines(path).len() >= n
    })
    .await;
    lines(path)
}

/// A proxy in front of `fleet` logging to a file, with `fields` added to `access_log:` (after
/// `path`): the proxy and the log's path.
async fn logging_proxy(fleet: &Fleet, fields: &str) -> (Proxy, PathBuf) {
    let dir = ConfigDir::new("");
    let log = dir.file("access.log", "");
    let access_log = format!("access_log: {{ path: {}, {fields} }}\n", log.display());
    dir.write(&format!(
        "{access_log}{}",
        web_config(&fleet.members, "", "")
    ));
    (Proxy::start(dir).await, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_requests_are_logged_with_hashed_keys() {
    within(30, async {
        let fleet = Fleet::start(&["a", "b"]).await;
        let (proxy, log) = logging_proxy(&fleet, "format: json").await;
        let mut client = proxy.client("web").await;
        let reply = client
            .get("/x?y=1", &[("cookie", "session_id=cookie-value-secret")])
            .await;
        let req = client
            .request(Method::POST, "/upload")
            .header("x-session-id", "s-header")
            .body(full("twelve bytes"))
            .unwrap();
        let posted = client.send(req).await.expect("post");
        assert_eq!(posted.status(), 200);
        drop(posted);
        let logged = wait_lines(&log, 2).await;
        assert_eq!(logged.len(), 2, "{logged:?}");
        let get = &logged[0];
        assert_eq!(get["protocol"], "http");
        assert_eq!(get["listener"], "web");
        assert_eq!(get["pool"], "api");
        assert_eq!(get["upstream"], reply.upstream());
        assert_eq!(get["method"], "GET /x");
        assert_eq!(get["outcome"], "200");
        let session = get["session"].as_str().expect("session");
        assert!(session.starts_with("cookie session_id#"), "{session}");
        assert_eq!(session.len(), "cookie session_id#".len() + 8);
        assert!(get["latency_ms"].as_f64().expect("latency") > 0.0);
        let post = &logged[1];
        assert_eq!(post["method"], "POST /upload");
        assert_eq!(post["bytes_in"], 12);
        assert!(post["session"]
            .as_str()
            .unwrap()
            .starts_with("header x-session-id#"));
        let raw = std::fs::read_to_string(&log).unwrap();
        assert!(!raw.contains("cookie-value-secret") && !raw.contains("s-header"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_keys_writes_the_key_and_text_lines_are_key_value_pairs() {
    within(30, async {
        let fleet = Fleet::start(&["a"]).await;
        let (proxy, log) = logging_proxy(&fleet, "format: text, log_keys: true").await;
        let mut client = proxy.client("web").await;
        client.get("/", &[("x-session-id", "visible-key")]).await;
        poll_until("one text line", 10, || async {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .count()
                == 1
        })
        .await;
        let line = std::fs::read_to_string(&log).unwrap();
        for field in [
            " protocol=http ",
            " listener=web ",
            " pool=api ",
            " upstream=a ",
            " session=\"header x-session-id=visible-key\" ",
            " method=\"GET /\" ",
            " outcome=200 ",
            " bytes_in=- ",
        ] {
            assert!(line.contains(field), "{field:?} in {line}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsonrpc_requests_are_logged_per_request_with_the_user_and_never_the_token() {
    within(30, async {
        let fleet = CliFleet::start(2).await;
        let dir = ConfigDir::new("");
        let log = dir.file("access.log", "");
        let tokens = dir.file("tokens.yaml", TOKENS);
        let top = format!(
            "access_log: {{ format: json, path: {} }}\nidentities:\n  tokens_file: {}\n  \
             policies:\n    - {{ user: alice, deny: [\"models.list\"] }}\n",
            log.display(),
            tokens.display()
        );
        let extra = RpcYaml {
            top: &top,
            listener: "    identity:\n      from: [token]\n      required: true\n",
            ..RpcYaml::default()
        };
        dir.write(&jsonrpc_config(&fleet.members(), extra));
        let proxy = Proxy::start(dir).await;
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        let connected = c.call("connect", json!({ "token": ALICE })).await;
        assert!(connected.get("result").is_some(), "{connected}");
        let sid = uuid::Uuid::new_v4().to_string();
        create(&mut c, &sid, json!({})).await;
        send(&mut c, &sid).await;
        let listed = c.call("session.list", json!({})).await;
        assert!(listed.get("result").is_some(), "{listed}");
        let denied = c.call("models.list", json!({})).await;
        assert!(denied.get("error").is_some(), "{denied}");

        let logged = wait_lines(&log, 5).await;
        let by_method =
            |m: &str| -> Vec<&Value> { logged.iter().filter(|l| l["method"] == m).collect() };
        for l in &logged {
            assert_eq!(l["protocol"], "jsonrpc", "{l}");
            assert_eq!(l["user"], "alice", "{l}");
            assert_eq!(l["listener"], "cli", "{l}");
        }
        let created = by_method("session.create");
        assert_eq!(created.len(), 1, "{logged:?}");
        assert_eq!(created[0]["session"], sid.as_str());
        assert_eq!(created[0]["outcome"], "ok");
        let node = created[0]["upstream"].as_str().expect("upstream");
        assert_eq!(fleet.holders(&sid), [node]);
        assert!(created[0]["bytes_in"].as_u64().unwrap() > 0);
        assert!(created[0]["bytes_out"].as_u64().unwrap() > 0);
        let list = by_method("session.list");
        assert_eq!(list.len(), 1, "a fan-out is one line: {logged:?}");
        assert_eq!(
            (&list[0]["upstream"], &list[0]["outcome"]),
            (&Value::Null, &json!("ok"))
        );
        let refused = by_method("models.list");
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0]["outcome"], "refused");
        assert_eq!(by_method("connect").len(), 1);
        let raw = std::fs::read_to_string(&log).unwrap();
        assert!(!raw.contains(ALICE), "the token is never logged");
        let refused = [("listener", "cli"), ("reason", "forbidden")];
        let text = proxy.metrics_text().await;
        assert_eq!(
            metric_value(&text, "sessiongate_admission_rejected_total", &refused),
            Some(1.0),
            "the policy refusal is counted"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_logs_about_that_fraction() {
    within(60, async {
        let fleet = Fleet::start(&["a"]).await;
        let (proxy, log) = logging_proxy(&fleet, "format: json, sample: 0.25").await;
        let mut client = proxy.client("web").await;
        for i in 0..400 {
            client.get(&format!("/{i}"), &[]).await;
        }
        // The last request is logged with probability 1/4; wait for the writer by logging on.
        let marker = loop {
            let reply = client.get("/marker", &[]).await;
            assert_eq!(reply.status, 200);
            if lines(&log).iter().any(|l| l["method"] == "GET /marker") {
                break lines(&log).len();
            }
            tokio::task::yield_now().await;
        };
        let sampled = lines(&log)
            .iter()
            .filter(|l| l["method"] != "GET /marker")
            .count();
        // Binomial(400, 0.25): mean 100, sd 8.7; outside 50..=150 is a 6-sigma event.
        assert!((50..=150).contains(&sampled), "{sampled} of 400 logged");
        assert!(marker > sampled);
    })
    .await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_rotation() {
    within(30, async {
        let fleet = Fleet::start(&["a"]).await;
        let (proxy, log) = logging_proxy(&fleet, "format: json").await;
        let rotated = log.with_extension("log.1");
        let mut client = proxy.client("web").await;
        client.get("/before", &[]).await;
        wait_lines(&log, 1).await;
        std::fs::rename(&log, &rotated).expect("rotate");
        let status = std::process::Command::new("kill")
            .args(["-USR1", &std::process::id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        // Until the writer has reopened, lines still go to the rotated file: keep sending
        // until one lands in the new file.
        poll_until("a line in the reopened file", 10, || async {
            client_get(&proxy, "/after").await;
            log.exists() && !lines(&log).is_empty()
        })
        .await;
        assert_eq!(lines(&rotated)[0]["method"], "GET /before");
        assert!(lines(&log).iter().all(|l| l["method"] == "GET /after"));
    })
    .await;
}

async fn client_get(proxy: &Proxy, path: &str) {
    let reply = proxy.client("web").await.get(path, &[]).await;
    assert_eq!(reply.status, 200);
}

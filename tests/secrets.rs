//! Secrets stay secret: client tokens (known and unknown), the nodes' connection token, the
//! admin token and a Redis password never appear in the proxy's log (at debug level), in the
//! errors clients get, in `/metrics` or in admin output, through a run that uses each of them.

mod support;

use serde_json::json;
use support::binary::Binary;
use support::client;
use support::jsonrpc::{jsonrpc_config, CliFleet, RpcClient, RpcYaml};
use support::{within, ConfigDir};

const CLIENT_TOKEN: &str = "client-tok-A1b2C3d4";
const UNKNOWN_TOKEN: &str = "unknown-tok-Z9y8X7w6";
const NODE_TOKEN: &str = "node-tok-Q5r6S7t8";
const ADMIN_TOKEN: &str = "admin-tok-M1n2O3p4";
const REDIS_PASSWORD: &str = "redis-pw-K4j5H6g7";

const SECRETS: [&str; 5] = [
    CLIENT_TOKEN,
    UNKNOWN_TOKEN,
    NODE_TOKEN,
    ADMIN_TOKEN,
    REDIS_PASSWORD,
];

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
    }
}

/// A loopback port with nothing listening: Redis calls fail, and their errors get logged.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_errors_metrics_or_admin_output() {
    within(60, async {
        let fleet = CliFleet::start_with_token(2, Some(NODE_TOKEN)).await;
        let top = format!(
            "identities:\n  tokens_file: tokens.yaml\nredis:\n  url: redis://:{REDIS_PASSWORD}@127.0.0.1:{}\n",
            closed_port()
        );
        let listener = "    identity:\n      from: [token]\n      required: true\n";
        let yaml = jsonrpc_config(
            &fleet.members(),
            RpcYaml {
                top: &top,
                listener,
                pool: "    token_env: SG_SECRETS_NODE_TOKEN\n",
            },
        )
        .replace(
            "  listen: 127.0.0.1:0\nshutdown_grace",
            "  listen: 127.0.0.1:0\n  token_env: SG_SECRETS_ADMIN_TOKEN\nshutdown_grace",
        );
        assert!(yaml.contains("SG_SECRETS_ADMIN_TOKEN"));
        let config = ConfigDir::new(&yaml);
        let hash = sessiongate::identity::token_hash(CLIENT_TOKEN);
        config.file("tokens.yaml", format!("- {{ sha256: {hash}, user: alice }}\n"));
        let mut proxy = Binary::spawn_env(
            config.path(),
            &[
                ("RUST_LOG", "trace"),
                ("SG_SECRETS_NODE_TOKEN", NODE_TOKEN),
                ("SG_SECRETS_ADMIN_TOKEN", ADMIN_TOKEN),
            ],
        );
        let cli = proxy.listener_addr("cli").await;
        let admin = proxy.listener_addr("admin").await;

        // A caller with a known token works (so the node token was used upstream)...
        let mut alice = RpcClient::connect(cli).await;
        let connected = alice.call("connect", json!({ "token": CLIENT_TOKEN })).await;
        assert!(connected.get("result").is_some(), "{connected}");
        let created = alice
            .call("session.create", json!({ "sessionId": "secret-test-1" }))
            .await;
        assert!(created.get("result").is_some(), "{created}");
        assert_no_secret("answers", &created.to_string());

        // ...an unknown one is refused without being repeated.
        let mut mallory = RpcClient::connect(cli).await;
        let refused = mallory
            .call("connect", json!({ "token": UNKNOWN_TOKEN }))
            .await;
        assert_eq!(refused["error"]["code"], -32002, "{refused}");
        assert_no_secret("the refusal", &refused.to_string());

        let bearer = format!("Bearer {ADMIN_TOKEN}");
        let auth = [("authorization", bearer.as_str())];
        for path in [
            "/metrics",
            "/admin/upstreams",
            "/admin/ring?pool=fleet",
            "/admin/route?pool=fleet&key=secret-test-1",
            "/admin/nothing-here",
        ] {
            let reply = client::get(admin, path, &auth).await;
            assert!(reply.status.as_u16() < 500, "{path}: {}", reply.status);
            assert_no_secret(path, &reply.body);
        }
        let unauthorized = client::get(admin, "/admin/upstreams", &[("authorization", "Bearer nope")]).await;
        assert_eq!(unauthorized.status, 401);

        proxy.signal("TERM").await;
        assert!(proxy.wait().await.success());
        let log = proxy.whole_log().await;
        assert!(log.contains("caller refused"), "the refusal was logged:\n{log}");
        assert!(log.contains("redis"), "the Redis outage was logged:\n{log}");
        assert_no_secret("the log", &log);
    })
    .await
}

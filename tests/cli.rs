//! The command line: `check` (summary and exit 0; exit 2 naming the file and the line/column or
//! field path) and `route` (offline, matching the running proxy's ring).

mod support;

use std::process::{Command, Output};

use support::upstream::Fleet;
use support::{admin_route, within, ConfigDir, Proxy};

fn sessiongate(args: &[&str], config: &ConfigDir) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .args(args)
        .arg("--config")
        .arg(config.path())
        .output()
        .expect("run sessiongate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const VALID: &str = "admin:
  listen: 127.0.0.1:0
listeners:
  - name: web
    listen: 127.0.0.1:0
    protocol: http
    pool: api
    key:
      - header: X-Session-Id
  - name: raw
    listen: 127.0.0.1:0
    protocol: tcp
    pool: api
    key:
      - sni: true
      - client_ip: true
pools:
  api:
    hash:
      vnodes: 100
    upstreams:
      - { name: api-1, addr: 127.0.0.1:18081 }
      - { name: api-2, addr: 127.0.0.1:18082, weight: 2 }
      - { name: api-3, addr: 127.0.0.1:18083 }
";

#[test]
fn check_accepts_a_valid_file_and_prints_a_summary() {
    let config = ConfigDir::new(VALID);
    let out = sessiongate(&["check"], &config);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    for expected in [
        "listener web: 127.0.0.1:0 http -> pool api (keys: header x-session-id)",
        "listener raw: 127.0.0.1:0 tcp -> pool api (keys: TLS SNI, client IP)",
        "pool api: 3 upstream(s), 100 vnodes",
        "upstream api-2 127.0.0.1:18082 weight 2",
    ] {
        assert!(stdout.contains(expected), "{expected:?} in:\n{stdout}");
    }
}

#[test]
fn check_reports_yaml_syntax_errors_with_file_line_and_column() {
    let config = ConfigDir::new("admin:\n  listen: 127.0.0.1:0\nlisteners:\n  - name: [web\n");
    let out = sessiongate(&["check"], &config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    let prefix = format!("{}:", config.path().display());
    let rest = stderr
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("starts with the file name: {stderr}"));
    let mut parts = rest.splitn(3, ':');
    let line: usize = parts.next().unwrap().parse().expect("line number");
    let column: usize = parts.next().unwrap().parse().expect("column number");
    assert!(line >= 4 && column >= 1, "{stderr}");

    // Unknown fields are errors too, located the same way.
    let config = ConfigDir::new("admin:\n  listen: 127.0.0.1:0\n  lsiten: 127.0.0.1:1\n");
    let out = sessiongate(&["check"], &config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:3:", config.path().display())),
        "{stderr}"
    );
    assert!(stderr.contains("lsiten"), "{stderr}");
}

#[test]
fn check_reports_semantic_errors_by_field_path() {
    let config =
        ConfigDir::new(&VALID.replace("    hash:\n", "    health:\n      fall: 0\n    hash:\n"));
    let out = sessiongate(&["check"], &config);
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&*config.path().to_string_lossy()),
        "{stderr}"
    );
    assert!(
        stderr.contains("pools.api.health.fall: must be >= 1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_prints_name_and_address_per_key_like_the_running_proxy() {
    within(30, async {
        // Live upstreams, so the running proxy's health view cannot steer keys elsewhere.
        let fleet = Fleet::start(&["api-1", "api-2", "api-3"]).await;
        let mut yaml = VALID.to_owned();
        for (i, (_, addr)) in fleet.members.iter().enumerate() {
            yaml = yaml.replace(&format!("127.0.0.1:1808{}", i + 1), &addr.to_string());
        }
        let config = ConfigDir::new(&yaml);
        let keys: Vec<String> = (0..40).map(|i| format!("session-{i}")).collect();
        let mut args = vec!["route", "--pool", "api"];
        args.extend(keys.iter().map(String::as_str));
        let out = sessiongate(&args, &config);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), keys.len(), "{stdout}");

        let proxy = Proxy::start(config).await;
        let mut admin = proxy.admin_client().await;
        let snapshot = proxy.server.snapshot();
        let pool = snapshot.pool("api").expect("pool api");
        for (key, line) in keys.iter().zip(lines) {
            let fields: Vec<&str> = line.split('\t').collect();
            let owner = pool.owner(key.as_bytes()).expect("ring owner");
            assert_eq!(fields, [key.as_str(), owner.name(), owner.addr()], "{line}");
            assert_eq!(admin_route(&mut admin, "api", key).await, owner.name());
        }
    })
    .await
}

#[test]
fn check_refuses_an_open_admin_listener_without_a_token() {
    let cases = [
        (
            VALID.replace(
                "  listen: 127.0.0.1:0\nlisteners",
                "  listen: 0.0.0.0:0\nlisteners",
            ),
            "admin.listen: 0.0.0.0:0 is not a loopback address",
        ),
        (
            VALID.replace(
                "  listen: 127.0.0.1:0\nlisteners",
                "  listen: 127.0.0.1:0\n  protect_probes: true\nlisteners",
            ),
            "admin.protect_probes: needs admin.token_env",
        ),
        (
            VALID.replace(
                "  listen: 127.0.0.1:0\nlisteners",
                "  listen: 0.0.0.0:0\n  token_env: SG_CLI_TEST_UNSET_ADMIN_TOKEN\nlisteners",
            ),
            "admin.token_env: environment variable SG_CLI_TEST_UNSET_ADMIN_TOKEN is not set",
        ),
    ];
    for (yaml, expected) in cases {
        let out = sessiongate(&["check"], &ConfigDir::new(&yaml));
        assert_eq!(out.status.code(), Some(2), "{expected}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains(expected), "{expected}\n{stderr}");
    }
}

#[test]
fn hash_token_reads_stdin_and_prints_what_tokens_yaml_lists() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sessiongate"))
        .arg("hash-token")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sessiongate");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret-token\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let printed = text(&out.stdout);
    assert_eq!(
        printed.trim(),
        sessiongate::identity::token_hash("s3cret-token")
    );
    assert_eq!(printed.trim().len(), 64);
    assert!(!printed.contains("s3cret"));
}

#[test]
fn check_names_bad_learn_sources_by_field_path() {
    let cases = [
        (
            VALID.replace(
                "      - header: X-Session-Id\n",
                "      - header: X-Session-Id\n    learn:\n      - { response_header: A, set_cookie: b }\n      - set_cookie: \"a=b\"\n",
            ),
            vec![
                "listeners[0].learn[0]: set exactly one of response_header, set_cookie",
                "listeners[0].learn[1].set_cookie: not a valid cookie name",
            ],
        ),
        (
            VALID.replace(
                "      - client_ip: true\n",
                "      - client_ip: true\n    learn:\n      - response_header: Mcp-Session-Id\n",
            ),
            vec!["listeners[1].learn: only for protocol http"],
        ),
    ];
    for (yaml, expected) in cases {
        let out = sessiongate(&["check"], &ConfigDir::new(&yaml));
        assert_eq!(out.status.code(), Some(2));
        let stderr = text(&out.stderr);
        for e in expected {
            assert!(stderr.contains(e), "{e}\n{stderr}");
        }
    }
}

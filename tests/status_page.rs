//! The status page at `/` in a real browser: headless Chromium loads it from a running proxy
//! (after traffic and a reload) and the rendered DOM must show the pool, its upstreams and
//! their health, a session from the top list (escaped: ids are user input), the listener and
//! the reload with its diff. Also keeps a screenshot at `target/status-page.png`.
//!
//! Chromium is required (tests/tools.sh installs Debian's `chromium`): without it this test
//! fails, it does not skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::jsonrpc::{create, jsonrpc_config, session_params, CliFleet, RpcClient, RpcYaml};
use support::{client, within, Proxy};

const CHROMIUM: &str = "/usr/bin/chromium";

/// Run headless Chromium on `url` with `args`; its stdout. Fails the test if it cannot run or
/// takes more than a minute.
fn chromium(url: &str, args: &[&str], profile: &Path) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the status page test needs a real browser. Install it with \
         tests/tools.sh (Debian package `chromium`)"
    );
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait for chromium").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_pools_health_sessions_listeners_and_reloads_in_chromium() {
    let fleet = CliFleet::start(3).await;
    let members = fleet.members();
    let proxy = Proxy::start_yaml(&jsonrpc_config(&members[..2], RpcYaml::default())).await;
    let admin = proxy.admin();
    // A session id with markup in it: the page must show it as text.
    let tricky = "status-<i>&\"quoted\"";
    let plain = "status-plain-session";
    let mut c = within(30, async {
        let mut c = RpcClient::connect(proxy.addr("cli")).await;
        for sid in [tricky, plain] {
            create(&mut c, sid, json!({})).await;
            for _ in 0..3 {
                c.result("session.getMessages", session_params(sid, json!({})))
                    .await;
            }
        }
        // A reload adding cli-2: the page lists it with its diff.
        let report = proxy
            .reload_with(&jsonrpc_config(&members, RpcYaml::default()))
            .await
            .expect("reload");
        assert_eq!(report.pools[0].added, ["cli-2"]);
        c
    })
    .await;

    // The page as served: HTML, escaped, self-contained.
    let reply = client::get(admin, "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
    assert!(
        reply
            .body
            .contains("status-&lt;i&gt;&amp;&quot;quoted&quot;"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("<i>"), "unescaped id: {}", reply.body);
    for external in ["src=", "href=", "<script", "@import"] {
        assert!(!reply.body.contains(external), "{external} in the page");
    }

    let profile = tempfile::tempdir().expect("profile dir");
    let url = format!("http://{admin}/");
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let _ = std::fs::remove_file(&shot);
    let (dom, shot) = {
        let (url, profile_path) = (url.clone(), profile.path().to_owned());
        tokio::task::spawn_blocking(move || {
            let dom = chromium(&url, &["--dump-dom"], &profile_path);
            let screenshot = format!("--screenshot={}", shot.display());
            chromium(
                &url,
                &[&screenshot, "--window-size=1280,900"],
                &profile_path,
            );
            (dom, shot)
        })
        .await
        .expect("chromium task")
    };

    // What the browser rendered.
    assert!(dom.contains("<title>sessiongate status</title>"), "{dom}");
    assert!(dom.contains("pool fleet"), "the pool: {dom}");
    for name in ["cli-0", "cli-1", "cli-2"] {
        assert!(
            dom.contains(&format!(">{name}</td>")),
            "upstream {name}: {dom}"
        );
    }
    assert!(
        dom.contains("<td class=\"healthy\">healthy</td>"),
        "a health state: {dom}"
    );
    assert!(dom.contains("%</td>"), "ring shares: {dom}");
    // The top list, the tricky id as text (the DOM serialiser escapes <, > and &).
    assert!(
        dom.contains(&format!(">{plain}</td>")),
        "a top session: {dom}"
    );
    assert!(
        dom.contains("status-&lt;i&gt;&amp;\"quoted\""),
        "the tricky id as text: {dom}"
    );
    assert!(!dom.contains("<i>"), "markup from an id rendered: {dom}");
    // The listener with its one open connection (our client).
    let listener = format!(
        "<td>cli</td><td>jsonrpc</td><td>{}</td><td>fleet</td><td>1</td>",
        proxy.addr("cli")
    );
    assert!(
        dom.contains(&listener),
        "the listener, one connection: {dom}"
    );
    // The reload and its diff.
    assert!(dom.contains("<td class=\"success\">success</td>"), "{dom}");
    assert!(dom.contains("fleet: +[cli-2]"), "the reload's diff: {dom}");

    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("screenshot {}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    // The client stays connected until the browser has seen it.
    c.shutdown_write().await;
}

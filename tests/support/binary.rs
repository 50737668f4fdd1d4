//! The real `sessiongate` binary as a child process, logging JSON to stderr; the tests learn its
//! ports from the `listener bound` lines and follow other events through the log.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long to wait for any one expected log line.
const LOG_WAIT: Duration = Duration::from_secs(20);

pub struct Binary {
    child: Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<Value>,
    /// Every log line received so far (printed if the test fails).
    seen: Vec<Value>,
    /// Index into `seen` where [`Binary::wait_log`] resumes.
    cursor: usize,
}

impl Binary {
    /// Start `sessiongate --log-format json --config <config>`.
    pub fn spawn(config: &Path) -> Binary {
        Binary::spawn_env(config, &[])
    }

    /// Like [`Binary::spawn`], with extra environment variables (`RUST_LOG` included).
    pub fn spawn_env(config: &Path, env: &[(&str, &str)]) -> Binary {
        Binary::spawn_under(&[], config, env)
    }

    /// Like [`Binary::spawn_env`], run through `wrapper` (a program and its arguments that
    /// exec the rest of the command line, such as `prlimit --nofile=64:64 --`): the process is
    /// the wrapper's, so [`Binary::pid`] is sessiongate's once the wrapper has exec'd.
    pub fn spawn_under(wrapper: &[&str], config: &Path, env: &[(&str, &str)]) -> Binary {
        let bin = env!("CARGO_BIN_EXE_sessiongate");
        let (program, before) = match wrapper.split_first() {
            Some((program, args)) => (*program, [args, &[bin]].concat()),
            None => (bin, Vec::new()),
        };
        let mut child = Command::new(program)
            .args(before)
            .arg("--log-format")
            .arg("json")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sessiongate");
        let pid = child.id().expect("pid");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let value = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Binary {
            child,
            pid,
            lines,
            seen: Vec::new(),
            cursor: 0,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    async fn next_line(&mut self) -> Value {
        match tokio::time::timeout(LOG_WAIT, self.lines.recv()).await {
            Ok(Some(v)) => {
                self.seen.push(v.clone());
                v
            }
            Ok(None) => panic!("sessiongate exited; log:\n{}", self.log()),
            Err(_) => panic!("no log line within {LOG_WAIT:?}; log:\n{}", self.log()),
        }
    }

    /// The next log line after the previous match whose `fields.message` is `message` and which
    /// satisfies `pred`.
    pub async fn wait_log(&mut self, message: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_where(|l| l["fields"]["message"] == message && pred(l))
            .await
    }

    /// The next log line after the previous match that satisfies `pred` (for messages that
    /// carry a value, such as `accept failed; backing off 5ms`).
    pub async fn wait_log_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            while self.cursor < self.seen.len() {
                let line = &self.seen[self.cursor];
                self.cursor += 1;
                if pred(line) {
                    return line.clone();
                }
            }
            self.next_line().await;
        }
    }

    /// How many log lines received so far have `fields.message` equal to `message` (lines
    /// still in the pipe are not counted: wait for a later line first).
    pub fn count_log(&self, message: &str) -> usize {
        self.seen
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .count()
    }

    /// The address listener `name` was (most recently) bound to, waiting for it if needed.
    pub async fn listener_addr(&mut self, name: &str) -> SocketAddr {
        let is_bind = |l: &Value| {
            l["fields"]["message"] == "listener bound" && l["fields"]["listener"] == name
        };
        loop {
            if let Some(line) = self.seen.iter().rev().find(|l| is_bind(l)) {
                let addr = line["fields"]["addr"].as_str().expect("addr field");
                return addr.parse().expect("socket address");
            }
            self.next_line().await;
        }
    }

    /// Send a signal (`HUP`, `TERM`, …) with kill(1), once the process handles them.
    pub async fn signal(&self, signal: &str) {
        self.wait_for_signal_handlers().await;
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }

    /// The binary installs its SIGHUP/SIGINT/SIGTERM handlers only after it starts serving, and
    /// logs nothing when it has; until then these signals would kill it outright. The kernel
    /// shows the installed handlers in `SigCgt`, so wait for those bits (polling: there is no
    /// event to wait on).
    async fn wait_for_signal_handlers(&self) {
        // Bit n-1 stands for signal n: HUP = 1, INT = 2, TERM = 15.
        let wanted: u64 = (1 << 0) | (1 << 1) | (1 << 14);
        for _ in 0..1000 {
            let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
                .expect("read /proc/PID/status");
            let caught = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .expect("SigCgt line");
            if caught & wanted == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("sessiongate installed no signal handlers within 10s");
    }

    /// Wait for the process to exit.
    pub async fn wait(&mut self) -> ExitStatus {
        match tokio::time::timeout(LOG_WAIT, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("sessiongate did not exit; log:\n{}", self.log()),
        }
    }

    /// Every line the process logged, once it has exited ([`Binary::wait`]).
    pub async fn whole_log(&mut self) -> String {
        while let Ok(Some(line)) = tokio::time::timeout(LOG_WAIT, self.lines.recv()).await {
            self.seen.push(line);
        }
        self.log()
    }

    /// Peak resident set size (`VmHWM`) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// Resident set size now (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} line"))
    }

    /// Whether the process is still running (not exited, not reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn log(&self) -> String {
        self.seen
            .iter()
            .map(|l| l.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("sessiongate log:\n{}", self.log());
        }
    }
}

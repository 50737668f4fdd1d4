//! A real `redis-server` (Debian's `redis-server` package) on a free loopback port, with nothing
//! saved to disk; killed on drop. [`RedisServer::stop`] and [`RedisServer::restart`] (same
//! port) stage an outage, [`RedisServer::freeze`] and [`RedisServer::thaw`] a hung server.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BINARY: &str = "redis-server";

/// How long a started server gets to answer PING.
const READY_WAIT: Duration = Duration::from_secs(10);

/// Ports tried before giving up (another process may take a port between our probe and Redis'
/// bind).
const PORT_ATTEMPTS: usize = 5;

pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    /// Redis' working directory, so nothing lands in the repository.
    dir: TempDir,
}

impl RedisServer {
    /// Start a server on a free port and wait until it answers PING.
    pub async fn start() -> RedisServer {
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let mut server = RedisServer {
                port,
                child: Some(spawn(port, &dir)),
                dir,
            };
            if server.wait_ready().await {
                return server;
            }
            // Dropping `server` kills it; try another port.
        }
        panic!("redis-server did not start on any of {PORT_ATTEMPTS} ports");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kill the server (its clients' connections drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port, empty, and wait until it answers PING.
    pub async fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port, &self.dir));
        assert!(
            self.wait_ready().await,
            "redis-server did not restart on port {}",
            self.port
        );
    }

    /// Suspend the server (SIGSTOP): connections stay open and nothing is answered.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// Resume a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} {pid}: {status}");
    }

    /// Poll the port with PING until it answers PONG, the process exits, or [`READY_WAIT`].
    async fn wait_ready(&mut self) -> bool {
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        while tokio::time::Instant::now() < deadline {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))));
            if exited {
                return false;
            }
            if ping(self.port).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn spawn(port: u16, dir: &TempDir) -> Child {
    let port = port.to_string();
    Command::new(BINARY)
        .args(["--port", &port, "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {BINARY} ({e}): install Debian's redis-server package \
                 (tests/tools.sh does)"
            )
        })
}

/// Whether a Redis on `port` answers PING.
async fn ping(port: u16) -> bool {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut answer = [0u8; 7];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(&answer == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Ok(true))
    )
}

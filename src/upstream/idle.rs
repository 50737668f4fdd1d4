//! What both kinds of upstream connection pool share: a stack of idle connections, newest on
//! top, bounded by `pool_max_idle_per_upstream`, closed after `pool_idle_timeout` by a sweeper
//! task that runs only while the stack holds any; and opening a new TCP connection within
//! `connect_timeout`. The owned HTTP/1.1 path keeps raw sockets in it
//! ([`super::conns::IdleConns`]), the HTTP/2 path hyper's client connections
//! ([`super::HttpPool`]).

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Why no connection to an upstream could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr}: {source}")]
    Failed {
        addr: Arc<str>,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out after {after:?}")]
    TimedOut { addr: Arc<str>, after: Duration },
}

/// A new TCP connection to `addr` (`TCP_NODELAY`), within `timeout`.
pub async fn connect(addr: &Arc<str>, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let addr = addr.clone();
    match tokio::time::timeout(timeout, TcpStream::connect(&*addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(source)) => Err(ConnectError::Failed { addr, source }),
        Err(_) => Err(ConnectError::TimedOut {
            addr,
            after: timeout,
        }),
    }
}

/// Idle connections of one upstream.
pub struct IdleStack<C> {
    max_idle: usize,
    idle_timeout: Duration,
    /// Whether an idle connection is still worth keeping (not closed by its peer).
    usable: fn(&C) -> bool,
    stack: Mutex<Stack<C>>,
}

struct Stack<C> {
    conns: Vec<(C, Instant)>,
    /// A sweeper task is closing connections idle past the timeout.
    sweeping: bool,
}

impl<C: Send + 'static> IdleStack<C> {
    pub fn new(max_idle: usize, idle_timeout: Duration, usable: fn(&C) -> bool) -> Arc<Self> {
        Arc::new(IdleStack {
            max_idle,
            idle_timeout,
            usable,
            stack: Mutex::new(Stack {
                conns: Vec::new(),
                sweeping: false,
            }),
        })
    }

    /// The most recently used idle connection still within its idle timeout and usable.
    pub fn pop(&self) -> Option<C> {
        let mut stack = self.lock();
        while let Some((conn, since)) = stack.conns.pop() {
            if since.elapsed() < self.idle_timeout && (self.usable)(&conn) {
                return Some(conn);
            }
        }
        None
    }

    /// Keep a connection that is between messages, unless the stack is full.
    pub fn push(self: &Arc<Self>, conn: C) {
        if self.max_idle == 0 || !(self.usable)(&conn) {
            return;
        }
        let mut stack = self.lock();
        if stack.conns.len() >= self.max_idle {
            return;
        }
        stack.conns.push((conn, Instant::now()));
        if !stack.sweeping {
            stack.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
    }

    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Stack<C>> {
        // The lock guards plain pushes and pops; a panic while holding it cannot leave the
        // stack half-changed, so a poisoned lock is still usable.
        self.stack.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Close connections idle past the timeout, until the stack is empty or the pool is gone.
async fn sweep<C: Send + 'static>(idle: Weak<IdleStack<C>>) {
    let Some(every) = idle.upgrade().map(|i| i.idle_timeout) else {
        return;
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(idle) = idle.upgrade() else { return };
        let mut stack = idle.lock();
        stack
            .conns
            .retain(|(conn, since)| since.elapsed() < every && (idle.usable)(conn));
        if stack.conns.is_empty() {
            stack.sweeping = false;
            return;
        }
    }
}

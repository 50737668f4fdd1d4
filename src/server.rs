//! The running proxy: it owns the shared snapshot, the bound listeners and the admin listener,
//! and is what reloads and shutdown act on. Library users (tests, `demo`, `main`) start one with
//! [`Server::start`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::access_log::AccessLog;
use crate::cleanup::CleanupSupervisor;
use crate::config::Config;
use crate::discovery::DiscoverySupervisor;
use crate::error::StartError;
use crate::listener;
use crate::metrics::Metrics;
use crate::proxy::Context;
use crate::shutdown::Shutdown;
use crate::snapshot::{Shared, Snapshot};
use crate::store::Store;
use crate::upstream::prober::HealthSupervisor;

/// A listener the server is accepting on.
pub(crate) struct Running {
    /// The address in the config (may have port 0); a reload rebinds only if this changes.
    pub configured: SocketAddr,
    pub bound: SocketAddr,
    pub stop: CancellationToken,
}

pub struct Server {
    pub(crate) ctx: Context,
    pub(crate) listeners: Mutex<HashMap<String, Running>>,
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    pub(crate) health: HealthSupervisor,
    pub(crate) cleanup: CleanupSupervisor,
    pub(crate) discovery: DiscoverySupervisor,
    /// The last reloads, for the status page.
    pub(crate) reloads: crate::reload::history::ReloadHistory,
    admin_addr: SocketAddr,
    /// Ends the access log writer once connections have drained (see [`Server::shutdown`]).
    access_log_stop: CancellationToken,
    access_log_writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Server {
    /// Load `config_path`, bind the admin listener and every proxy listener, and start serving.
    /// Any bind or config error stops the start before anything serves.
    pub async fn start(
        config_path: &Path,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Result<Arc<Server>, StartError> {
        let config = Config::load(config_path)?;
        Server::start_with(config, config_path, metrics, shutdown).await
    }

    /// Like [`Server::start`] with an already validated config that came from `source`.
    pub async fn start_with(
        config: Config,
        source: &Path,
        metrics: Metrics,
        shutdown: Shutdown,
    ) -> Result<Arc<Server>, StartError> {
        let store = match &config.redis {
            Some(redis) => Store::with_redis(redis.url.expose(), &metrics).map_err(|e| {
                StartError::Config(crate::config::ConfigError::Invalid {
                    file: source.to_owned(),
                    errors: vec![crate::config::FieldError {
                        path: "redis.url".into(),
                        message: e.to_string(),
                    }],
                })
            })?,
            None => {
                for pool in config.pools.values() {
                    if pool.storage == crate::config::Storage::Shared {
                        warn!(
                            pool = %pool.name,
                            "storage: shared without redis: a restarted proxy or another replica \
                             does not know where sessions are open and can open a second writer \
                             of a session on another node"
                        );
                    }
                }
                if shares_state(&config) {
                    warn!(
                        "no redis: configured: session owners, locks and rate limits are kept in \
                         this process only (other replicas do not see them, a restart forgets them)"
                    );
                }
                Store::local()
            }
        };
        let access_log_stop = CancellationToken::new();
        let (access_log, access_log_writer) = AccessLog::start(
            &config.access_log,
            metrics.access_log_dropped_total.clone(),
            access_log_stop.clone(),
        )
        .map_err(|e| {
            StartError::Config(crate::config::ConfigError::Invalid {
                file: source.to_owned(),
                errors: vec![crate::config::FieldError {
                    path: "access_log.path".into(),
                    message: format!("cannot open for appending: {e}"),
                }],
            })
        })?;
        let snapshot = Snapshot::build(config, source, None, &metrics, &store)?;
        let admin_listen = snapshot.config.admin_listen;
        let admin = listener::bind(admin_listen).map_err(|source| StartError::Bind {
            what: "admin listener".into(),
            addr: admin_listen,
            source,
        })?;
        let mut bound = Vec::new();
        for l in &snapshot.config.listeners {
            let tcp = listener::bind(l.listen).map_err(|source| StartError::Bind {
                what: format!("listener {}", l.name),
                addr: l.listen,
                source,
            })?;
            bound.push((l.name.clone(), l.listen, tcp));
        }
        metrics.config_version.set(snapshot.version as i64);
        snapshot.activate(&metrics);
        let health = HealthSupervisor::new(metrics.clone(), shutdown.token.clone());
        health.sync(&snapshot);
        let shared: Shared = Arc::new(ArcSwap::from_pointee(snapshot));
        let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
            what: "admin listener".into(),
            addr: admin_listen,
            source,
        })?;
        // Discovery tasks apply their answers through the server: they hold a weak handle.
        let server = Arc::new_cyclic(|weak| Server {
            health,
            cleanup: CleanupSupervisor::new(),
            discovery: DiscoverySupervisor::new(weak.clone()),
            reloads: Default::default(),
            ctx: Context::new(shared, metrics, shutdown, store, access_log),
            access_log_stop,
            access_log_writer: Mutex::new(access_log_writer),
            listeners: Mutex::new(HashMap::new()),
            reload_lock: tokio::sync::Mutex::new(()),
            admin_addr,
        });
        let serving = server.ctx.shared.load_full();
        server.cleanup.sync(&server.ctx, &serving);
        server.discovery.sync(&server.ctx, &serving);
        for (name, configured, tcp) in bound {
            server.run_listener(name, configured, tcp);
        }
        info!(listener = "admin", addr = %server.admin_addr, "listener bound");
        tokio::spawn(crate::admin::serve(admin, server.clone()));
        Ok(server)
    }

    /// Start the accept loop for a freshly bound listener and remember it.
    pub(crate) fn run_listener(&self, name: String, configured: SocketAddr, tcp: TcpListener) {
        let bound = tcp.local_addr().unwrap_or(configured);
        info!(listener = %name, addr = %bound, "listener bound");
        let stop = CancellationToken::new();
        tokio::spawn(listener::accept_loop(
            tcp,
            Arc::from(name.as_str()),
            self.ctx.clone(),
            stop.clone(),
        ));
        let running = Running {
            configured,
            bound,
            stop,
        };
        if let Some(old) = self.lock_listeners().insert(name, running) {
            old.stop.cancel();
        }
    }

    pub(crate) fn lock_listeners(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep going.
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The address a proxy listener is bound to (useful with port 0).
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.lock_listeners().get(name).map(|r| r.bound)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.ctx.shared.load_full()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    pub fn config_path(&self) -> PathBuf {
        self.ctx.shared.load().source.clone()
    }

    /// Stop accepting and give open connections up to the configured grace to finish.
    /// Returns the number of connections abandoned at the deadline.
    pub async fn shutdown(&self) -> usize {
        let grace = self.ctx.shared.load().config.shutdown_grace;
        for running in self.lock_listeners().values() {
            running.stop.cancel();
        }
        info!(grace = ?grace, "stopped accepting; draining connections");
        let abandoned = self.ctx.shutdown.drain(grace).await;
        // What the drained requests logged is written before the process goes.
        self.access_log_stop.cancel();
        let writer = self
            .access_log_writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(writer) = writer {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), writer).await;
        }
        abandoned
    }
}

/// Does this config keep state other replicas would need to see (owners, locks, limits)?
fn shares_state(config: &Config) -> bool {
    config.identities.is_some()
        || config.pools.values().any(|p| p.turns.is_some())
        || config.listeners.iter().any(|l| l.limits.any())
}

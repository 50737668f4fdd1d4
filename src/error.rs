//! Errors of the running proxy: why a reload was refused and why the proxy could not start.
//! Each subsystem has a `thiserror` enum carrying the context an operator needs (file, field
//! path, upstream name): [`ConfigError`] lives with the config; `anyhow` is confined to
//! `main.rs`.

use crate::config::ConfigError;

/// Why a reload was refused. The old snapshot keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("listener {listener}: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what}: cannot bind {addr}: {source}")]
    Bind {
        what: String,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
}

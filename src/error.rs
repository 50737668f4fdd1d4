//! Library error types. Each subsystem has a `thiserror` enum carrying the context an operator
//! needs (file, field path, upstream name); `anyhow` is confined to `main.rs`.

use std::path::PathBuf;

use crate::config::FieldError;

/// Why a configuration could not be loaded or turned into a runnable snapshot.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: invalid configuration:\n{}", list(.errors))]
    Invalid {
        file: PathBuf,
        errors: Vec<FieldError>,
    },
    #[error("{file}: {path}: {message}")]
    Tls {
        file: PathBuf,
        path: String,
        message: String,
    },
}

fn list(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

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

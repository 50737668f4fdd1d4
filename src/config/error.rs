//! Why a configuration could not be loaded, validated or turned into a runnable snapshot: every
//! variant names the file, and the field path or line where the problem is.

use std::path::PathBuf;

use super::FieldError;

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
    /// A file the configuration names (tokens, certificates, keys) cannot be used.
    #[error("{file}: {path}: {message}")]
    File {
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

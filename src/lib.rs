#![forbid(unsafe_code)]
pub mod config;
pub mod error;
pub mod ring;

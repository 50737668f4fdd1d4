//! The owned HTTP/1.1 data path. One task per client connection reads a request head with
//! `httparse` into a reused buffer ([`parse`], strict RFC 9112), lets
//! [`crate::proxy::http::Conn`] decide where it goes, rewrites its fields, takes an upstream
//! socket from that upstream's idle stack ([`crate::upstream::IdleConns`]) and drives it in the
//! same task: the head, the body ([`relay`], [`chunked`]), the response head and body back,
//! then the next request. Between requests a plain-TCP connection holds only its socket, and
//! after [`PARK_AFTER`] not even a task ([`parked`]). An `Upgrade` answered with 101 becomes a
//! byte tunnel in the same task; an HTTP/2 prior-knowledge preface hands the connection to
//! hyper.

mod buffers;
pub mod chunked;
mod client;
mod conn;
mod forward;
mod parked;
pub mod parse;
pub mod relay;
mod respond;
pub mod write;

pub(crate) use client::Client;
pub(crate) use conn::serve;
pub use parked::{Parking, PARK_AFTER};

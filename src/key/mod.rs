//! Key extraction: where a listener finds the session or user id it hashes onto the ring.
//! HTTP sources read the request head ([`http`]); TCP sources read the TLS ClientHello without
//! terminating it, or the peer address ([`sni`]). JSON-RPC keys come from each message and live
//! with that protocol.

pub mod http;
pub mod sni;

pub use self::http::{HttpKeySource, HttpKeys};

//! The JSON-RPC wire format the Copilot CLI speaks, below everything that uses it (the proxy's
//! JSON-RPC path, the health prober, the mock CLI): [`codec`] frames bytes like LSP
//! (`Content-Length: N\r\n\r\n` then N bytes), [`message`] reads the routing view of a JSON-RPC
//! 2.0 message without copying and makes the few rewrites a router needs, and [`reader`] reads
//! frames from a socket with a deadline on each frame once it has begun.

pub mod codec;
pub mod message;
pub mod reader;

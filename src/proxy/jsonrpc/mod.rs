//! JSON-RPC over LSP-style framing for Copilot CLI fleets (work in progress).

pub mod codec;
pub mod message;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::Context;
use crate::snapshot::ListenerRuntime;

pub async fn serve(
    _stream: TcpStream,
    _ctx: Context,
    _name: Arc<str>,
    _peer: SocketAddr,
    _rt: Arc<ListenerRuntime>,
) {
    todo!("jsonrpc listener")
}

//! JSON-RPC for Copilot CLI fleets: one client connection fans out over per-client links to many
//! CLI nodes, each message routed on its own. Messages carrying `params.sessionId` go to the node
//! holding that session (pin table first, else the ring owner, else owner discovery); global
//! reads and connection setup go to the connection's home node; `session.list` fans out and
//! merges. Server-initiated requests get proxy-unique ids on the client side.
//!
//! - `route`: which node a client message goes to.
//! - `conn`: the per-client connection: state, client loop, replies and batches.
//! - `link`: one upstream link: connect, replay setup, write, read and dispatch.
//! - `fanout`: `session.list` merge and owner discovery across nodes.

mod conn;
mod fanout;
mod link;
mod route;

pub use conn::serve;

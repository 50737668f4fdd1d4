//! JSON-RPC for Copilot CLI fleets: one client connection fans out over per-client links to many
//! CLI nodes, each message routed on its own by the routing class of its method. Session-scoped
//! messages go to the node holding the session (pin, else ring owner, else owner discovery);
//! connection setup goes home and is replayed on every new link; global reads go home; methods
//! about every session fan out and merge; methods over a list of sessions are split by owner.
//! Server-initiated requests get proxy-unique ids on the client side.
//!
//! - [`methods`]: the method table: each method's routing class.
//! - [`route`]: the routing decision, a pure function of request, pool and connection facts.
//! - `conn`: the connection task, sole owner of the connection's state (its client side,
//!   its links, and what comes back from nodes in submodules).
//! - `state`: that state: waiting requests and their timeouts, setup calls, batches.
//! - `link`: one upstream link, an I/O-only task.
//! - `fanout`: fan-outs, splits, resume-last and owner discovery, as tasks of the connection.
//! - [`merge`]: the pure merge rules of fan-out and split answers.
//! - `turns`: one turn at a time per session: the turn lock and the line of sends waiting.

mod conn;
mod fanout;
mod link;
pub mod merge;
pub mod methods;
/// Public for the fuzz targets and benches, which drive the routing decision from bytes.
pub mod route;
mod state;
pub(crate) mod turns;

pub use conn::serve;

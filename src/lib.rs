//! sessiongate: a session-aware L4/L7 reverse proxy for fleets of headless agent-CLI servers
//! (JSON-RPC over LSP framing) and HTTP services. It terminates TLS, extracts a session or user
//! key, hashes it onto a hot-reloadable consistent-hash ring of upstreams, and keeps each session
//! on the server that holds it.
//!
//! Data flow: listener → (TLS) → protocol handler → key → ring → upstream. Control plane: config
//! file → validate → [`snapshot::Snapshot`] → one `ArcSwap` store, read once per request.
//!
//! # Layout
//!
//! - [`access_log`]: one structured line per request, written off the data path.
//! - [`admin`]: the admin HTTP listener (`/metrics`, `/healthz`, `/readyz`, `/admin/*`, `/`).
//! - [`admin::sessions`]: session drill-down, `/admin/sessions/{id}` and the top lists.
//! - `admin::status`: the HTML status page at `/`; `admin::html`: its escaping table builder.
//! - [`cleanup`]: fleet-wide session cleanup (`sessions.pruneOld` on every node of a pool), on
//!   a schedule and on `POST /admin/cleanup`.
//! - [`config`]: YAML schema (serde, `deny_unknown_fields`), validation into typed config, and
//!   [`config::ConfigError`].
//! - [`demo`]: the built-in demo fleet behind `sessiongate demo` (feature `demo`).
//! - [`discovery`]: upstreams of a pool looked up in DNS (SRV or A/AAAA) on a schedule, each
//!   change applied like a reload of that pool.
//! - [`error`]: `thiserror` error enums for reload and start-up.
//! - [`identity`]: who a caller is: hashed tokens, client certificates, method policy, owners.
//! - [`key`]: where a request's key comes from (header, cookie, query, path, SNI, client IP).
//! - [`limits`]: rate limits per caller, session and method, for both protocols.
//! - [`listener`]: binding, accept loop with connection limit, TLS termination.
//! - [`metrics`]: every metric name and the registry-passing `Metrics` handle.
//! - [`mockcli`]: an in-process mock Copilot CLI server for tests, benches and the demo (feature
//!   `demo`; not in the product build).
//! - [`ownership`]: who may use a session: its creator's, claimed once across replicas.
//! - [`proxy`]: the data path per protocol: HTTP, TCP passthrough, JSON-RPC.
//! - [`proxy::h1`]: the owned HTTP/1.1 connections: strict head parsing, chunked bodies, the
//!   relay.
//! - [`reload`]: rebuild and swap the snapshot on SIGHUP or `POST /admin/reload`; the diff.
//! - [`reload::history`]: the last 10 reloads and their diffs, for the status page.
//! - [`ring`]: the hashring-based consistent-hash ring and clockwise selection.
//! - [`schedule`]: when periodic tasks run next: jitter, first delay, backoff.
//! - [`server`]: the running proxy: shared snapshot, listeners, start and shutdown.
//! - [`sessions`]: session pins, the bounded TTL cache of which node holds each session.
//! - [`sessions::stats`]: each live session's figures (requests, errors, in flight, latency,
//!   last methods), kept in its pin entry; [`sessions::histogram`]: their fixed latency
//!   histogram.
//! - [`shutdown`]: cancellation token, connection tracker and grace deadline.
//! - [`snapshot`]: the immutable per-version routing state behind one `ArcSwap`.
//! - [`store`]: state shared by proxy replicas (session owners and pins, rate limits, session
//!   locks) in Redis, with an in-process fallback.
//! - [`upstream`]: upstreams, their connection pools, and state carried across reloads.
//! - [`wire`]: the CLI's wire format: LSP framing and the JSON-RPC envelope.

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod cleanup;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod discovery;
pub mod error;
pub mod identity;
pub mod key;
pub mod limits;
pub mod listener;
pub mod metrics;
#[cfg(feature = "demo")]
pub mod mockcli;
pub mod ownership;
pub mod proxy;
pub mod reload;
pub mod ring;
pub mod schedule;
pub mod server;
pub mod sessions;
pub mod shutdown;
pub mod snapshot;
pub mod store;
pub mod upstream;
pub mod wire;

//! Helper programs for the side-by-side load harness (`benches/compare/run.sh`). One binary, built
//! as a `harness = false` bench target so it lives in `benches/` and links the library:
//!
//! - `mockfleet`: N in-process mock Copilot CLI servers (`sessiongate::mockcli`) on fixed ports;
//! - `jsonrpc-load`: a pipelined JSON-RPC load client (LSP framing) that creates sessions, then
//!   sends session-routed requests for a fixed time, closed-loop (`--depth` in flight) or
//!   open-loop (`--rate`, latency from the intended send times);
//! - `idle-conns`: opens N HTTP keep-alive connections, one request each, and holds them idle;
//! - `tls-handshakes`: full TLS handshakes in a loop (no resumption), bounded in time and count;
//! - `soak-sessions`: session create/resume/delete lifecycles through a proxy while watching its
//!   RSS, fds and `/metrics` for leaks (`benches/soak/sessions.sh`).
//!
//! Every loop here is bounded in count and time, and every address is expected to be loopback.
//! Run by hand: `cargo bench --bench compare_tools -- <command> --help`.

mod idle_conns;
mod jsonrpc_load;
mod jsonrpc_open_loop;
mod mockfleet;
mod soak_sessions;
mod tls_handshakes;

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "compare_tools",
    about = "Load-harness helpers for sessiongate benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Mockfleet(mockfleet::Args),
    JsonrpcLoad(jsonrpc_load::Args),
    IdleConns(idle_conns::Args),
    TlsHandshakes(tls_handshakes::Args),
    SoakSessions(soak_sessions::Args),
}

fn main() -> ExitCode {
    // `cargo bench` with no `--bench` filter runs every bench target with `--bench`: nothing to
    // measure here on its own, so say how to use it and succeed.
    let args: Vec<String> = std::env::args().collect();
    if args.len() <= 2 && args.get(1).is_none_or(|a| a == "--bench") {
        eprintln!("compare_tools: helper for benches/compare/run.sh; see benches/README.md");
        return ExitCode::SUCCESS;
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match cli.command {
            Command::Mockfleet(a) => mockfleet::run(a).await,
            Command::JsonrpcLoad(a) => jsonrpc_load::run(a).await,
            Command::IdleConns(a) => idle_conns::run(a).await,
            Command::TlsHandshakes(a) => tls_handshakes::run(a).await,
            Command::SoakSessions(a) => soak_sessions::run(a).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare_tools: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Refuse anything but loopback targets: these tools generate load.
pub fn loopback(addr: &str) -> anyhow::Result<SocketAddr> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("{addr:?}: {e} (expected ip:port)"))?;
    let ok = match a.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    anyhow::ensure!(ok, "{a}: only loopback addresses are allowed");
    Ok(a)
}

/// Print a line and flush at once: the harness reads these markers to time its CPU samples.
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Percentiles (in µs) of a latency sample, sorted in place.
pub fn percentiles(sample: &mut [u32]) -> serde_json::Value {
    sample.sort_unstable();
    let at = |q: f64| -> u32 {
        if sample.is_empty() {
            return 0;
        }
        let i = ((sample.len() as f64 - 1.0) * q).round() as usize;
        sample[i]
    };
    serde_json::json!({
        "p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99),
        "p999_us": at(0.999), "max_us": at(1.0),
    })
}

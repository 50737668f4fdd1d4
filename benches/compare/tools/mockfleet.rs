//! `mockfleet`: start N mock Copilot CLI servers on consecutive ports and keep them up until stdin
//! closes, a signal arrives, or `--max-secs` passes. Prints `MOCK <name> <addr>` per server, then
//! `READY`; on exit, how many requests each served.

use std::time::Duration;

use anyhow::Context as _;
use sessiongate::mockcli::{MockCli, MockCliOptions};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::{loopback, say};

#[derive(clap::Args)]
pub struct Args {
    /// Address of the first server; the others take the following ports.
    #[arg(long, default_value = "127.0.0.1:27001")]
    listen: String,
    /// How many servers.
    #[arg(long, default_value_t = 4)]
    count: u16,
    /// Stop after this long whatever happens.
    #[arg(long, default_value_t = 3600)]
    max_secs: u64,
    /// Also stop when standard input closes (the harness holds a pipe open).
    #[arg(long)]
    watch_stdin: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let first = loopback(&args.listen)?;
    let stop = CancellationToken::new();
    let mut fleet = Vec::new();
    for i in 0..args.count {
        let mut addr = first;
        addr.set_port(first.port() + i);
        let opts = MockCliOptions {
            name: format!("cli-{}", i + 1),
            ..MockCliOptions::default()
        };
        let mock = MockCli::start(addr, opts, stop.clone())
            .await
            .with_context(|| format!("binding {addr}"))?;
        say(format_args!("MOCK {} {}", mock.name(), mock.addr()));
        fleet.push(mock);
    }
    say("READY");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let watch_stdin = args.watch_stdin;
    let stdin_closed = async move {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while !matches!(stdin.read(&mut buf).await, Ok(0) | Err(_)) {}
    };
    tokio::select! {
        _ = stdin_closed => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = tokio::time::sleep(Duration::from_secs(args.max_secs)) => {}
    }
    for mock in &fleet {
        say(format_args!(
            "SERVED {} {}",
            mock.name(),
            mock.requests_served()
        ));
        mock.shutdown();
    }
    stop.cancel();
    Ok(())
}

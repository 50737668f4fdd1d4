//! The `sessiongate` command: `run` (the default) serves a config file; `check` validates one;
//! `route` shows where keys land, offline; `methods` prints the JSON-RPC method table; `demo`
//! starts a demo fleet with the proxy in front.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use sessiongate::config::{Config, Secret};
use sessiongate::metrics::Metrics;
use sessiongate::server::Server;
use sessiongate::shutdown::Shutdown;
use sessiongate::snapshot::Snapshot;
use sessiongate::store::Store;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

/// `println!` that ignores a closed stdout (`sessiongate check | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "sessiongate",
    version,
    about = "Session-aware reverse proxy for CLI fleets and HTTP services"
)]
struct Cli {
    /// Configuration file (YAML).
    #[arg(
        long,
        short,
        global = true,
        default_value = "/etc/sessiongate/sessiongate.yaml"
    )]
    config: PathBuf,
    /// Log format; the filter comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the configuration (the default).
    Run,
    /// Validate the configuration and print a summary; exit 2 if it is invalid.
    Check {
        /// Also ask a running sessiongate (its admin URL, e.g. http://127.0.0.1:9901) what
        /// applying this file would do: keyspace moved per upstream, pinned sessions at stake.
        #[arg(long, value_name = "ADMIN_URL")]
        against: Option<String>,
    },
    /// Print the upstream each key maps to, offline, with the proxy's own ring code.
    Route {
        /// The pool whose ring to use.
        #[arg(long)]
        pool: String,
        /// Keys to look up.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print the JSON-RPC method table: each method the Copilot SDK can send, and its routing
    /// class (one per line, tab-separated).
    Methods,
    /// Read a token from stdin (one line) and print the `sha256` that `tokens.yaml` lists for
    /// it. From stdin, so the token stays out of shell history and the process list.
    HashToken,
    /// Start a demo fleet and the proxy in front of it (uses the built-in demo config; needs a
    /// build with `--features demo`).
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => load(&cli.config).and_then(|c| serve(c, &cli.config, None)),
        Command::Check { against } => load(&cli.config).and_then(|c| {
            check(&c, &cli.config);
            match against {
                // The admin token of the file being checked (the same variable as the running
                // proxy's, in the usual rollout).
                Some(url) => dry_run_against(&url, &cli.config, c.admin_auth.token.as_ref()),
                None => Ok(()),
            }
        }),
        Command::Route { pool, keys } => {
            load(&cli.config).and_then(|c| route(c, &cli.config, &pool, &keys))
        }
        Command::HashToken => {
            let mut line = String::new();
            match std::io::stdin().read_line(&mut line) {
                Ok(_) => {
                    let token = line.trim_end_matches(['\r', '\n']);
                    outln!("{}", sessiongate::identity::token_hash(token));
                    Ok(())
                }
                Err(e) => Err(anyhow::anyhow!("reading the token from stdin: {e}").into()),
            }
        }
        Command::Methods => {
            for (name, class) in sessiongate::proxy::jsonrpc::methods::all() {
                outln!("{name}\t{}", class.describe());
            }
            Ok(())
        }
        Command::Demo => demo(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Invalid(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("sessiongate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Invalid input (config, certificates) exits 2; anything else exits 1.
enum Failure {
    Invalid(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

fn load(path: &Path) -> Result<Config, Failure> {
    Config::load(path).map_err(|e| Failure::Invalid(e.into()))
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(false).init(),
    }
}

fn check(config: &Config, path: &Path) {
    outln!("{}: ok", path.display());
    outln!("admin: {}", config.admin_listen);
    for l in &config.listeners {
        let tls = if l.tls.is_some() { " tls" } else { "" };
        let keys: Vec<String> = l.key.iter().map(|k| k.to_string()).collect();
        outln!(
            "listener {}: {} {}{} -> pool {} (keys: {})",
            l.name,
            l.listen,
            l.protocol.as_str(),
            tls,
            l.pool.as_deref().unwrap_or("(by tenant)"),
            if keys.is_empty() {
                "-".into()
            } else {
                keys.join(", ")
            }
        );
    }
    for p in config.pools.values() {
        outln!(
            "pool {}: {} upstream(s), {} vnodes per weight, health {:?} every {:?}",
            p.name,
            p.upstreams.len(),
            p.vnodes,
            p.health.probe,
            p.health.interval
        );
        for u in &p.upstreams {
            outln!("  upstream {} {} weight {}", u.name, u.addr, u.weight);
        }
        if let Some(d) = &p.discover {
            outln!("  upstreams discovered: {} every {:?}", d.target, d.every);
        }
    }
}

/// POST the file to a running proxy's dry-run endpoint and print its prediction.
fn dry_run_against(url: &str, path: &Path, token: Option<&Secret>) -> Result<(), Failure> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let authority = url
        .trim_end_matches('/')
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("--against takes an http:// admin URL, got {url:?}"))?
        .to_owned();
    let rt = runtime(Some(1))?;
    let (status, body) = rt.block_on(async move {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect(&authority)
            .await
            .with_context(|| format!("connecting to {authority}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = http::Request::post("/admin/reload?dry_run=true")
            .header(http::header::HOST, &authority)
            .header(http::header::CONTENT_TYPE, "application/yaml");
        if let Some(token) = token {
            let bearer = format!("Bearer {}", token.expose().trim());
            req = req.header(http::header::AUTHORIZATION, bearer);
        }
        let req = req.body(http_body_util::Full::new(bytes::Bytes::from(text)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, body))
    })?;
    outln!(
        "\ndry run against {url}:\n{}",
        String::from_utf8_lossy(&body)
    );
    if status.is_success() {
        Ok(())
    } else {
        Err(Failure::Invalid(anyhow::anyhow!(
            "the running proxy refused this configuration ({status})"
        )))
    }
}

fn route(config: Config, path: &Path, pool: &str, keys: &[String]) -> Result<(), Failure> {
    let metrics = Metrics::new(prometheus::Registry::new()).map_err(anyhow::Error::from)?;
    let snapshot = Snapshot::build(config, path, None, &metrics, &Store::local())
        .map_err(|e| Failure::Invalid(e.into()))?;
    let p = snapshot.pool(pool).ok_or_else(|| {
        Failure::Invalid(anyhow::anyhow!(
            "{}: no pool named {pool:?}",
            path.display()
        ))
    })?;
    if p.places_by_load() {
        // Printed to stderr so the key lines stay parseable.
        eprintln!(
            "note: pool {pool} places new sessions by load or caps: a new session may land \
             elsewhere than its ring owner below (pins and owner discovery find it)"
        );
    }
    for key in keys {
        match p.owner(key.as_bytes()) {
            Some(u) => outln!("{key}\t{}\t{}", u.name(), u.addr()),
            None => outln!("{key}\t-\t-"),
        }
    }
    Ok(())
}

fn runtime(worker_threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

/// The demo's upstreams, started inside the runtime before the proxy: HTTP servers for pools
/// behind HTTP listeners, mock CLI servers for pools behind JSON-RPC listeners.
#[cfg_attr(not(feature = "demo"), allow(dead_code))]
struct DemoFleet {
    http: Vec<(String, std::net::SocketAddr)>,
    cli: Vec<(String, std::net::SocketAddr)>,
}

/// Run the proxy until SIGTERM or SIGINT; SIGHUP reloads.
fn serve(config: Config, path: &Path, demo: Option<DemoFleet>) -> Result<(), Failure> {
    let rt = runtime(config.worker_threads)?;
    rt.block_on(async move {
        if let Some(fleet) = &demo {
            start_demo_fleet(fleet).await?;
        }
        let find = |name: &str| {
            config
                .listeners
                .iter()
                .find(|l| l.name == name)
                .map(|l| l.listen)
        };
        let (web, cli) = (find("web"), find("cli"));
        let admin = config.admin_listen;
        let signals = Signals::install()?;
        let metrics = Metrics::new(prometheus::Registry::new()).map_err(anyhow::Error::from)?;
        let server = match Server::start_with(config, path, metrics, Shutdown::new()).await {
            Ok(s) => s,
            Err(e @ sessiongate::error::StartError::Config(_)) => {
                return Err(Failure::Invalid(e.into()))
            }
            Err(e) => return Err(Failure::Other(e.into())),
        };
        if demo.is_some() {
            print_demo_help(web, cli, admin);
        }
        wait_for_signals(&server, signals)
            .await
            .map_err(Failure::Other)?;
        let abandoned = server.shutdown().await;
        if abandoned > 0 {
            error!(
                abandoned,
                "shutdown grace expired with connections still open"
            );
        }
        info!("stopped");
        Ok(())
    })
}

/// The signals the proxy acts on, installed before anything serves so that a SIGHUP or SIGTERM
/// arriving during start-up is handled rather than killing the process.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
        })
    }
}

async fn wait_for_signals(server: &Arc<Server>, signals: Signals) -> anyhow::Result<()> {
    let Signals {
        mut hup,
        mut term,
        mut int,
    } = signals;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                // Errors are logged and counted inside reload; the old config keeps serving.
                let _ = server.reload().await;
            }
            _ = term.recv() => { info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { info!("SIGINT: shutting down"); return Ok(()) }
        }
    }
}

/// The demo's upstreams: HTTP servers that answer with their name, and mock CLIs.
#[cfg(feature = "demo")]
async fn start_demo_fleet(fleet: &DemoFleet) -> anyhow::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    sessiongate::demo::start_http_upstreams(&fleet.http, &stop)
        .await
        .context("starting the demo HTTP upstreams")?;
    for (name, addr) in &fleet.cli {
        let opts = sessiongate::mockcli::MockCliOptions {
            name: name.clone(),
            ..Default::default()
        };
        sessiongate::mockcli::MockCli::start(*addr, opts, stop.clone())
            .await
            .with_context(|| format!("starting demo CLI {name} on {addr}"))?;
    }
    Ok(())
}

#[cfg(not(feature = "demo"))]
async fn start_demo_fleet(_: &DemoFleet) -> anyhow::Result<()> {
    anyhow::bail!(NO_DEMO)
}

#[cfg(not(feature = "demo"))]
const NO_DEMO: &str =
    "this build has no demo fleet; run `cargo run --release --features demo -- demo`";

#[cfg(not(feature = "demo"))]
fn demo() -> Result<(), Failure> {
    Err(Failure::Other(anyhow::anyhow!(NO_DEMO)))
}

#[cfg(feature = "demo")]
fn demo() -> Result<(), Failure> {
    // Prefer the repo's config/demo.yaml so SIGHUP reloads edits to it; else the built-in copy.
    let path = Path::new("config/demo.yaml");
    let path = if path.exists() {
        path.to_owned()
    } else {
        let dir = std::env::temp_dir().join(format!("sessiongate-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).context("creating a folder for the demo config")?;
        let file = dir.join("demo.yaml");
        std::fs::write(&file, sessiongate::demo::DEMO_CONFIG).context("writing the demo config")?;
        file
    };
    let config = load(&path)?;
    let mut fleet = DemoFleet {
        http: vec![],
        cli: vec![],
    };
    for pool in config.pools.values() {
        let jsonrpc = config.listeners.iter().any(|l| {
            l.pools().any(|p| p == pool.name)
                && l.protocol == sessiongate::config::Protocol::JsonRpc
        });
        let list = if jsonrpc {
            &mut fleet.cli
        } else {
            &mut fleet.http
        };
        list.extend(
            pool.upstreams
                .iter()
                .filter_map(|u| u.addr.parse().ok().map(|a| (u.name.clone(), a))),
        );
    }
    serve(config, &path, Some(fleet))
}

fn print_demo_help(
    web: Option<std::net::SocketAddr>,
    cli: Option<std::net::SocketAddr>,
    admin: std::net::SocketAddr,
) {
    let Some(web) = web else { return };
    let cli = cli.map_or_else(String::new, |cli| {
        format!(
            "\n  JSON-RPC (three mock Copilot CLI servers behind {cli}); with the Copilot SDK:\
             \n    new CopilotClient({{ connection: RuntimeConnection.forUri(\"{cli}\") }})\
             \n  or by hand, in bash:\
             \n    exec 3<>/dev/tcp/{}/{}; printf 'Content-Length: 40\\r\\n\\r\\n{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}}' >&3; timeout 1 cat <&3\n",
            cli.ip(),
            cli.port()
        )
    });
    outln!(
        "\nsessiongate demo is up. Try:\n\
         \n  curl -s -H 'X-Session-Id: alice' http://{web}/hello     # always the same upstream\
         \n  curl -s -H 'X-Session-Id: bob'   http://{web}/hello\
         \n  curl -s 'http://{web}/sessions/s-42/messages'             # key from the path\
         \n  curl -s 'http://{admin}/admin/route?pool=web&key=alice'\
         \n  curl -s 'http://{admin}/admin/ring?pool=web'\
         \n  curl -s http://{admin}/metrics | grep sessiongate_requests_total\
         \n  kill -HUP $(pgrep -f 'sessiongate demo')                  # reload config/demo.yaml\
         \n{cli}\nCtrl-C stops it.\n"
    );
}

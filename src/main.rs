//! `amity-gateway`: serve, sim, demo, check-config.

mod allocator;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use amity_gateway::app::Gateway;
use amity_gateway::config::{Config, Env, FileConfig, LogFormat, Secret};
use amity_gateway::logging;
use amity_gateway::server::shutdown_signal;
use amity_gateway::sim::{SimConfig, Simulator};
use clap::{Parser, Subcommand};

/// mimalloc instead of the system allocator: requests allocate and free many small objects
/// across layers, which glibc's malloc serves measurably slower (see README, Performance).
#[global_allocator]
static ALLOCATOR: allocator::Mimalloc = allocator::Mimalloc;

#[derive(Parser)]
#[command(
    name = "amity-gateway",
    version,
    about = "API gateway in front of the Amity Social Cloud session endpoint"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
    /// Run the upstream simulator alone.
    Sim {
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        #[arg(long, env = "AMITY_API_KEY", hide_env_values = true)]
        api_key: String,
        /// Added latency per request, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// Simulator and gateway in one process, on loopback, with curl commands to try.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:8081")]
        sim_listen: SocketAddr,
    },
    /// Validate the config and print it, secrets masked, with the effective route table.
    CheckConfig {
        #[arg(long, default_value = "config/gateway.toml")]
        config: PathBuf,
    },
}

/// The file with environment overrides applied (what is in effect), and its validated form.
fn load(path: &std::path::Path) -> Result<(FileConfig, Config), String> {
    FileConfig::load_effective(path, &Env::from_process()).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` reads its config first: the runtime's shape is part of it.
    let (command, worker_threads) = match cli.command {
        Command::Serve { config: path } => match load(&path) {
            Ok((_, config)) => {
                let threads = config.worker_threads;
                (Run::Serve(Box::new(config), path), threads)
            }
            Err(e) => return fail(&e),
        },
        other => (Run::Other(other), 0),
    };
    let runtime = match amity_gateway::runtime::build(worker_threads) {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async move {
        match command {
            Run::Serve(config, path) => serve(*config, path).await,
            Run::Other(command) => run(command).await,
        }
    });
    // Worker threads wrote their batches when they stopped; this thread may hold one too.
    drop(runtime);
    logging::sink::on_stop();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// A command with what it needs before the runtime starts.
enum Run {
    Serve(Box<Config>, PathBuf),
    Other(Command),
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve { config } => serve(load(&config)?.1, config).await,
        Command::Sim {
            listen,
            api_key,
            latency_ms,
        } => sim(listen, api_key, latency_ms).await,
        Command::Demo {
            listen,
            admin_listen,
            sim_listen,
        } => demo(listen, admin_listen, sim_listen).await,
        Command::CheckConfig { config } => check_config(config),
    }
}

fn fail(e: &str) -> ExitCode {
    eprintln!("amity-gateway: {e}");
    ExitCode::FAILURE
}

/// Runs the gateway on `config`, read from `path`, which is followed from then on: SIGHUP or a
/// change of the file on disk reloads it (see `amity_gateway::live`).
async fn serve(config: Config, path: PathBuf) -> Result<(), String> {
    logging::init(config.log.format, &config.log.level);
    let hash = config.hash.clone();
    let mut gateway = Gateway::bind(config).await.map_err(|e| e.to_string())?;
    gateway.follow_config(path)?;
    let bound = gateway.bound();
    tracing::info!(listen = %bound.addr, admin = %bound.admin_addr, config_hash = %hash, "gateway listening");
    gateway.run(shutdown_signal()).await;
    Ok(())
}

async fn sim(listen: SocketAddr, api_key: String, latency_ms: u64) -> Result<(), String> {
    logging::init(LogFormat::Pretty, "info");
    let mut cfg = SimConfig::new(api_key);
    cfg.latency = Duration::from_millis(latency_ms);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    tracing::info!(%listen, "upstream simulator listening");
    Simulator::new(cfg).serve(listener, shutdown_signal()).await;
    Ok(())
}

async fn demo(
    listen: SocketAddr,
    admin_listen: SocketAddr,
    sim_listen: SocketAddr,
) -> Result<(), String> {
    const DEMO_KEY: &str = "demo-api-key";
    let sim = Simulator::new(SimConfig::new(DEMO_KEY));
    let sim_handle = sim
        .clone()
        .spawn(sim_listen)
        .await
        .map_err(|e| format!("cannot listen on {sim_listen}: {e}"))?;
    let mut file = FileConfig::default();
    file.server.listen = listen.to_string();
    file.server.admin_listen = admin_listen.to_string();
    file.server.drain_timeout_secs = 2;
    file.upstream.url = format!("http://{}", sim_handle.addr);
    file.api_key.value = Some(Secret(DEMO_KEY.into()));
    file.log.format = LogFormat::Pretty;
    let config = file
        .resolve(&Default::default())
        .map_err(|e| e.to_string())?;
    logging::init(config.log.format, &config.log.level);
    let gateway = Gateway::bind(config).await.map_err(|e| e.to_string())?;
    let b = gateway.bound();
    println!("{}", demo_banner(b.addr, b.admin_addr, sim_handle.addr));
    gateway.run(shutdown_signal()).await;
    sim_handle.stop().await;
    Ok(())
}

fn demo_banner(gw: SocketAddr, admin: SocketAddr, sim: SocketAddr) -> String {
    format!(
        r#"amity-gateway demo: gateway on http://{gw}, admin on http://{admin}, upstream simulator on http://{sim}
The gateway injects the simulator's API key; clients never send one.

# a valid session (200, the simulator's answer):
curl -s http://{gw}/api/v3/sessions -H 'content-type: application/json' -d '{{"userId":"user-123","deviceId":"device-abc-0001","deviceInfo":{{"kind":"ios","model":"iPhone15,2","sdkVersion":"6.35.3"}},"displayName":"Alice"}}'

# an invalid one (422, every violation listed, nothing forwarded):
curl -s http://{gw}/api/v3/sessions -H 'content-type: application/json' -d '{{"userId":"","deviceInfo":{{"kind":"toaster"}},"displayName":7}}'

# what the simulator received (note the injected x-api-key):
curl -s http://{sim}/_sim/requests

# health and metrics:
curl -s http://{admin}/readyz; curl -s http://{admin}/metrics | head

Ctrl-C stops the demo."#
    )
}

fn check_config(path: PathBuf) -> Result<(), String> {
    let (file, config) = load(&path)?;
    print!("{}", file.to_masked_toml());
    // The table as the matcher reads it: most specific first.
    print!(
        "\n{}",
        config
            .routes
            .render()
            .lines()
            .map(|l| format!("# {l}\n"))
            .collect::<String>()
    );
    eprintln!("config OK: {} (hash {})", path.display(), config.hash);
    Ok(())
}

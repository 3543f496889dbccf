//! The `ferry` command: serve, check a configuration, mint development tokens.

use clap::{Parser, Subcommand};
use ferry::auth::{mint, TokenRequest};
use ferry::config::{Config, LogFormat, Override};
use ferry::protocol::Role;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "ferry",
    version,
    about = "Real-time server for cross-border livestream commerce"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct ConfigArgs {
    /// Configuration file (TOML); see config/ferry.toml for every key.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override any key: --set limits.max_connections=50000 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a Ferry node.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Listen address (server.listen).
        #[arg(long)]
        listen: Option<String>,
        /// Node name (server.node_id).
        #[arg(long)]
        node_id: Option<String>,
    },
    /// Load and validate the configuration, print it, and exit.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Mint an HS256 token with the configured secret (development and scripts).
    Token {
        #[command(flatten)]
        config: ConfigArgs,
        /// Room id or pattern (`*` matches anything).
        #[arg(long)]
        room: String,
        /// User id.
        #[arg(long)]
        user: String,
        /// Display name (defaults to the user id).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "viewer")]
        role: Role,
        #[arg(long)]
        lang: Option<String>,
        #[arg(long)]
        market: Option<String>,
        /// Lifetime, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
}

fn load(args: &ConfigArgs, extra: Vec<Override>) -> Result<Config, String> {
    let mut overrides = args.set.clone();
    overrides.extend(extra);
    Config::load(args.config.as_deref(), std::env::vars(), &overrides).map_err(|e| e.to_string())
}

fn init_logging(cfg: &Config) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::EnvFilter>().ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&cfg.log.level));
    // Colours only on a terminal: log files and pipelines get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::CheckConfig { config } => match load(&config, vec![]) {
            Ok(cfg) => {
                match toml::to_string_pretty(&cfg) {
                    Ok(text) => println!("{text}"),
                    Err(e) => eprintln!("configuration is valid but cannot be printed: {e}"),
                }
                eprintln!("configuration OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Token {
            config,
            room,
            user,
            name,
            role,
            lang,
            market,
            ttl,
        } => {
            let cfg = match load(&config, vec![]) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            let req = TokenRequest {
                room,
                user,
                name,
                role,
                lang,
                market,
                ttl,
            };
            match mint(&cfg.auth, &req) {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Serve {
            config,
            listen,
            node_id,
        } => {
            let mut extra = Vec::new();
            if let Some(l) = listen {
                extra.push(Override {
                    key: "server.listen".into(),
                    value: l,
                });
            }
            if let Some(n) = node_id {
                extra.push(Override {
                    key: "server.node_id".into(),
                    value: n,
                });
            }
            let cfg = match load(&config, extra) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: Config) -> ExitCode {
    raise_fd_limit();
    let server = match ferry::server::start(cfg).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
    }
    server.drain().await;
    ExitCode::SUCCESS
}

/// Many connections need many descriptors: raise the soft limit to the hard limit.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
    }
}

//! The `ferry-loadtest` command line.
//!
//! ```text
//! ferry-loadtest run loadtest/scenarios/smoke.toml --spawn target/release/ferry \
//!     --json out.json --html out.html [--baseline old.json]
//! ```
//!
//! Exit codes: 0 every threshold passed; 99 a threshold failed (as k6 does); 2 bad usage,
//! scenario or target; 1 the run could not be carried out (server did not start, not enough
//! file descriptors); 3 the watchdog stopped a run that overran its deadline.

use clap::{Parser, Subcommand};
use ferry_loadtest::{run, RunError, RunOptions, Scenario, SpawnConfig};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Exit code when the run completed but a threshold failed.
const EXIT_THRESHOLDS_FAILED: u8 = 99;
/// Exit code for usage, scenario and target errors.
const EXIT_USAGE: u8 = 2;
/// Exit code when the watchdog ends an overrunning run.
const EXIT_WATCHDOG: i32 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "ferry-loadtest",
    version,
    about = "Load-test harness for Ferry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a scenario file.
    Run(RunArgs),
    /// Check a scenario file and print its arrival schedule summary.
    Check { scenario: PathBuf },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// The scenario (TOML).
    scenario: PathBuf,
    /// A node to load, ws://127.x.y.z:PORT/ws (repeatable; viewers are spread round-robin).
    #[arg(long = "target", value_name = "URL")]
    targets: Vec<String>,
    /// Start this `ferry` binary on a free loopback port for the run, and stop it afterwards.
    #[arg(long, value_name = "PATH")]
    spawn: Option<PathBuf>,
    /// Extra `--set key=value` for the spawned server (repeatable; after the scenario's).
    #[arg(long = "server-set", value_name = "KEY=VALUE")]
    server_sets: Vec<String>,
    /// Sample this local server process's CPU and RSS (a node started outside the harness).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Compare with an earlier JSON report and print the differences.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// HS256 secret for the viewers' tokens (the server's `auth.hs256_secret`).
    #[arg(long, env = "FERRY_AUTH__HS256_SECRET", default_value = ferry_loadtest::runner::DEV_SECRET, hide_env_values = true)]
    secret: String,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Load-generator worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { scenario } => match Scenario::load(&scenario) {
            Ok(s) => {
                let schedule =
                    ferry_loadtest::schedule::ArrivalSchedule::new(&s.phases, s.run.max_viewers);
                println!(
                    "{}: valid; {} viewers arrive over {:.1} s; deadline {:.0} s; {} thresholds",
                    s.name,
                    schedule.len(),
                    schedule.span().as_secs_f64(),
                    s.deadline().as_secs_f64(),
                    s.thresholds.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Run(args) => run_command(args),
    }
}

fn run_command(args: RunArgs) -> ExitCode {
    let scenario = match Scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Read the baseline first: a typo in its path should not cost a whole run.
    let baseline = match &args.baseline {
        Some(path) => match std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).map_err(|e| e.to_string()))
        {
            Ok(v) => Some(v),
            Err(e) => {
                eprintln!("error: baseline {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => None,
    };
    // The watchdog: whatever happens inside the run, the process ends shortly after the
    // scenario's deadline (the run stops itself at the deadline; this is the backstop).
    let hard_stop = scenario.deadline() + Duration::from_secs(45);
    std::thread::spawn(move || {
        std::thread::sleep(hard_stop);
        eprintln!("ferry-loadtest: watchdog: still running {hard_stop:?} after start; exiting");
        let _ = std::io::stderr().flush();
        std::process::exit(EXIT_WATCHDOG);
    });
    let options = RunOptions {
        targets: args.targets,
        spawn: args.spawn.map(|bin| SpawnConfig {
            bin,
            sets: args.server_sets,
            ..SpawnConfig::default()
        }),
        server_pid: args.server_pid,
        progress: !args.quiet,
        scenario_file: Some(args.scenario.display().to_string()),
        secret: args.secret,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(&scenario, options));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let report = match outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return match e {
                RunError::Scenario(_) | RunError::Target(_) | RunError::NoTargets => {
                    ExitCode::from(EXIT_USAGE)
                }
                _ => ExitCode::FAILURE,
            };
        }
    };
    print!("{}", report.summary());
    if let Some(baseline) = &baseline {
        match ferry_loadtest::report::baseline_diff(baseline, &report) {
            Ok(diff) => print!("{diff}"),
            Err(e) => eprintln!("error: baseline: {e}"),
        }
    }
    if let Some(path) = &args.json {
        match std::fs::write(path, report.to_json() + "\n") {
            Ok(()) => eprintln!("ferry-loadtest: wrote {}", path.display()),
            Err(e) => eprintln!("error: cannot write {}: {e}", path.display()),
        }
    }
    if let Some(path) = &args.html {
        match std::fs::write(path, ferry_loadtest::html::render(&report)) {
            Ok(()) => eprintln!("ferry-loadtest: wrote {}", path.display()),
            Err(e) => eprintln!("error: cannot write {}: {e}", path.display()),
        }
    }
    if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_THRESHOLDS_FAILED)
    }
}

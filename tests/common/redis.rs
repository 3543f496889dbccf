//! Real `redis-server` processes for integration tests.
//!
//! [`RedisServer`] is a standalone server on a free loopback port with its own fresh data
//! directory. It can be killed (SIGKILL), shut down gracefully, restarted on the same port and
//! directory (so an AOF is reloaded), paused with SIGSTOP (Redis is unreachable: connections are
//! accepted by the kernel but nothing answers) and resumed with SIGCONT.
//!
//! [`RedisCluster`] is a 3-master, 0-replica Redis Cluster built from three such servers.
//!
//! Everything here is blocking (std only): call it from a test body before or between awaits.
//! Dropping a server or cluster kills its processes (a paused one too) and removes its
//! directories. The binaries are looked up on `PATH` (`redis-server`, `redis-cli`).
#![allow(dead_code)]

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a server may take to answer `PING` after being started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a cluster may take to report `cluster_state:ok` on every node.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a graceful shutdown may take before the process is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default timeout of one `redis-cli` invocation made by [`RedisServer::cli`].
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How many fresh ports to try when the chosen one turns out to be taken.
const PORT_ATTEMPTS: usize = 10;
/// Cluster nodes must have a port below this, so that the bus port (port + 10000) is valid.
const CLUSTER_PORT_LIMIT: u16 = 55000;
/// Redis Cluster's bus port is the client port plus this offset.
const CLUSTER_BUS_OFFSET: u16 = 10000;
/// Name of the file (in the server's directory) that receives the server's stdout and stderr.
const LOG_FILE: &str = "redis.log";

/// What one `redis-cli` invocation produced.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status of `redis-cli`.
    pub status: ExitStatus,
    /// Its standard output (replies, including error replies when not on a terminal).
    pub stdout: String,
    /// Its standard error (connection errors and the like).
    pub stderr: String,
}

/// Run `redis-cli ARGS`, killing it after `timeout`. `None` if it timed out or could not run.
///
/// Output is drained by reader threads, so a large reply cannot fill the pipe and stall.
fn run_cli<I, S>(args: I, timeout: Duration) -> Option<CliOutput>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut child = Command::new("redis-cli")
        .args(args.into_iter().map(Into::into))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    Some(CliOutput {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Read a child's pipe to the end on a separate thread; the thread yields what was read.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Send a signal (`-STOP`, `-CONT`, `-KILL`, ...) to a process with the `kill` command.
fn signal(pid: u32, sig: &str) {
    // The exit status is ignored on purpose: signalling a process that already exited is fine.
    let _status = Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the `kill` command runs");
}

/// Whether `127.0.0.1:port` can be bound right now.
fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A loopback port that is free right now (bind 127.0.0.1:0, read the port, release it).
///
/// For a cluster node (`cluster_bus`), the port is below 55000 and port + 10000 is free too.
fn free_port(cluster_bus: bool) -> u16 {
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .expect("bind an ephemeral loopback port");
        if !cluster_bus {
            return port;
        }
        if port < CLUSTER_PORT_LIMIT && port_is_free(port + CLUSTER_BUS_OFFSET) {
            return port;
        }
    }
    // Ephemeral ports kept landing too high: scan a low range from a varying starting point.
    let span = 12_000u64;
    let start = unique_number() % span;
    (0..span)
        .map(|i| 20_000 + ((start + i) % span) as u16)
        .find(|&port| port_is_free(port) && port_is_free(port + CLUSTER_BUS_OFFSET))
        .expect("a free port pair (port, port + 10000) for a cluster node")
}

/// A number that differs between calls and between test processes.
fn unique_number() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    u64::from(std::process::id()) * 1_000_003
        + COUNTER.fetch_add(1, Ordering::Relaxed) * 7919
        + u64::from(nanos)
}

/// Create a new, empty directory under the system temp dir for one server.
fn fresh_dir() -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir =
            std::env::temp_dir().join(format!("ferry-redis-{}-{n}-{nanos:09}", std::process::id()));
        // `create_dir` (not `_all`) fails if it exists: the directory is guaranteed fresh.
        if std::fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    panic!(
        "could not create a fresh directory under {}",
        std::env::temp_dir().display()
    )
}

/// Why a launch attempt failed.
enum LaunchError {
    /// The port was taken (the server exited, or another server answers there): try another.
    PortTaken(String),
    /// Anything else (e.g. no `PONG` within the timeout).
    Fatal(String),
}

/// A `redis-server` process on a free loopback port with its own data directory.
#[derive(Debug)]
pub struct RedisServer {
    /// Client port on 127.0.0.1.
    port: u16,
    /// The server's `--dir`: AOF, `nodes.conf` and the log live here.
    dir: PathBuf,
    /// Whether AOF (`--appendonly yes --appendfsync always`) is on.
    aof: bool,
    /// Extra command-line arguments (cluster mode).
    extra: Vec<String>,
    /// The running process, if any.
    child: Option<Child>,
    /// Whether the process was stopped with SIGSTOP and not continued since.
    paused: AtomicBool,
}

impl RedisServer {
    /// Start a standalone server (blocking until it answers `PING`, at most 10 s).
    ///
    /// With `aof`, every write is appended and fsynced before the reply
    /// (`--appendonly yes --appendfsync always`), so it survives [`RedisServer::kill`] +
    /// [`RedisServer::restart`]. Panics with the server log if the server does not come up.
    pub fn start(aof: bool) -> RedisServer {
        Self::start_with(aof, Vec::new(), false)
    }

    /// Start a server with extra arguments; `cluster_bus` also reserves port + 10000.
    ///
    /// If the chosen port turns out to be taken (someone grabbed it between the check and
    /// the server's bind), a new port and directory are tried.
    fn start_with(aof: bool, extra: Vec<String>, cluster_bus: bool) -> RedisServer {
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let mut server = RedisServer {
                port: free_port(cluster_bus),
                dir: fresh_dir(),
                aof,
                extra: extra.clone(),
                child: None,
                paused: AtomicBool::new(false),
            };
            match server.launch() {
                Ok(()) => return server,
                // Dropping `server` kills whatever is left and removes its directory.
                Err(LaunchError::PortTaken(log)) => last_error = log,
                Err(LaunchError::Fatal(log)) => panic!("{log}"),
            }
        }
        panic!("redis-server could not get a free port in {PORT_ATTEMPTS} attempts; last failure:\n{last_error}")
    }

    /// Spawn `redis-server` on `self.port` in `self.dir` and wait until it answers `PING`.
    ///
    /// Makes sure the server answering is ours (its `process_id` matches the child's pid).
    fn launch(&mut self) -> Result<(), LaunchError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(LOG_FILE))
            .expect("open the redis log file");
        let log_err = log.try_clone().expect("clone the redis log file handle");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--daemonize", "no"])
            .args(["--logfile", ""])
            .arg("--dir")
            .arg(&self.dir);
        if self.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        cmd.args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let child = cmd.spawn().expect("spawn redis-server (is it installed?)");
        let pid = child.id();
        self.child = Some(child);
        self.paused.store(false, Ordering::SeqCst);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(LaunchError::PortTaken(format!(
                        "redis-server on port {} exited during startup ({status}):\n{}",
                        self.port,
                        self.log()
                    )));
                }
            }
            let pong = self
                .try_cli(&["ping"], Duration::from_secs(1))
                .is_some_and(|out| out.trim() == "PONG");
            if pong {
                let info = self.cli(&["info", "server"]);
                let ours = info
                    .lines()
                    .any(|line| line.trim() == format!("process_id:{pid}"));
                if ours {
                    return Ok(());
                }
                // Another server answers on this port; ours will fail to bind and exit.
                self.kill();
                return Err(LaunchError::PortTaken(format!(
                    "another redis-server answers on port {}:\n{}",
                    self.port,
                    self.log()
                )));
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(LaunchError::Fatal(format!(
                    "redis-server on port {} did not answer PONG within {START_TIMEOUT:?}; log:\n{}",
                    self.port,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `127.0.0.1:PORT`, as `redis-cli --cluster` and cluster topologies spell it.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's data directory (`--dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid of the running process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is currently stopped by [`RedisServer::pause`].
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Everything the server has logged so far (across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(LOG_FILE)).unwrap_or_default()
    }

    /// Run `redis-cli -p PORT ARGS` and return its stdout (e.g. `"PONG\n"`).
    ///
    /// Gives up after [`CLI_TIMEOUT`] (10 s) and then returns an empty string, so a call on a
    /// paused server does not hang forever. Use [`RedisServer::try_cli`] to tell the cases apart.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args, CLI_TIMEOUT).unwrap_or_default()
    }

    /// Run `redis-cli -p PORT ARGS`, killing it after `timeout`; its stdout, or `None` on
    /// timeout (e.g. the server is paused) or if `redis-cli` could not run.
    pub fn try_cli(&self, args: &[&str], timeout: Duration) -> Option<String> {
        self.cli_output(args, timeout).map(|out| out.stdout)
    }

    /// Run `redis-cli -p PORT ARGS`, killing it after `timeout`; status, stdout and stderr.
    pub fn cli_output(&self, args: &[&str], timeout: Duration) -> Option<CliOutput> {
        let port = self.port.to_string();
        let all = ["-p", port.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        run_cli(all, timeout)
    }

    /// Kill the process with SIGKILL (continuing it first if paused) and wait for it to exit.
    ///
    /// Nothing is flushed; with `appendfsync always` every acknowledged write is already on
    /// disk. Does nothing if the server is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused.swap(false, Ordering::SeqCst) {
                signal(child.id(), "-CONT");
            }
            // `Child::kill` sends SIGKILL (like `kill -KILL PID`) and keeps the pid reserved
            // until `wait` reaps it, so the signal cannot hit a recycled pid.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Graceful shutdown (`redis-cli -p PORT shutdown`; with AOF the data persists), then wait
    /// for the process to exit. Falls back to SIGKILL after 10 s. Resumes a paused server first.
    pub fn shutdown(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.resume();
        // SHUTDOWN closes the connection without a reply; the outcome is the process exiting.
        let _ = self.try_cli(&["shutdown"], SHUTDOWN_TIMEOUT);
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + SHUTDOWN_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => return,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return;
                    }
                }
            }
        }
    }

    /// Start the server again on the SAME port and directory (an AOF is reloaded), blocking
    /// until it answers `PING`. A still-running server is killed first (SIGKILL); call
    /// [`RedisServer::shutdown`] before for a graceful stop. Panics with the log on failure
    /// (e.g. someone else took the port meanwhile).
    pub fn restart(&mut self) {
        self.kill();
        match self.launch() {
            Ok(()) => {}
            Err(LaunchError::PortTaken(log) | LaunchError::Fatal(log)) => {
                panic!(
                    "restarting redis-server on port {} failed: {log}",
                    self.port
                )
            }
        }
    }

    /// Stop the process with SIGSTOP: the port still accepts connections (kernel backlog) but
    /// nothing is answered — an unreachable Redis. Does nothing if the server is not running.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-STOP");
            self.paused.store(true, Ordering::SeqCst);
        }
    }

    /// Continue the process with SIGCONT after [`RedisServer::pause`]; it answers again.
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, "-CONT");
            self.paused.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for RedisServer {
    /// Kill the process (continuing it first if paused) and remove the data directory.
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of 3 masters and no replicas, all on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    /// The three masters, in creation order.
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Start three cluster-enabled servers, join them with `redis-cli --cluster create` (slots
    /// split evenly, no replicas) and wait until every node reports `cluster_state:ok` and knows
    /// all three nodes (at most 20 s). Panics with the node logs on failure.
    pub fn start() -> RedisCluster {
        let cluster_args: Vec<String> = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| RedisServer::start_with(false, cluster_args.clone(), true))
            .collect();
        let cluster = RedisCluster { nodes };

        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.nodes.iter().map(RedisServer::addr));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        match run_cli(args, Duration::from_secs(60)) {
            Some(out) if out.status.success() => {}
            Some(out) => panic!(
                "redis-cli --cluster create failed ({}):\n{}\n{}\n{}",
                out.status,
                out.stdout,
                out.stderr,
                cluster.logs()
            ),
            None => panic!(
                "redis-cli --cluster create timed out or could not run\n{}",
                cluster.logs()
            ),
        }

        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let infos: Vec<String> = cluster
                .nodes
                .iter()
                .map(|n| n.cli(&["cluster", "info"]))
                .collect();
            let ready = infos.iter().all(|info| {
                info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == "cluster_known_nodes:3")
            });
            if ready {
                return cluster;
            }
            if Instant::now() >= deadline {
                panic!(
                    "cluster not ok within {CLUSTER_TIMEOUT:?}:\n{}\n{}",
                    infos.join("\n---\n"),
                    cluster.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:PORT/` of every node (seed URLs for a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The three nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// One node, mutably (to kill, restart, pause or resume it). Panics if `i >= 3`.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// Run `redis-cli -c -p P1 ARGS` (cluster mode: follows MOVED/ASK) against the first
    /// node and return its stdout; empty after a 10 s timeout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        self.nodes[0].cli(&all)
    }

    /// Every node's log, labelled by port (for panic messages).
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("=== redis-server :{} ===\n{}", n.port(), n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

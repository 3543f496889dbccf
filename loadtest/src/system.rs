//! The machine side of a run: loopback-only targets, source addresses, the file-descriptor
//! limit, `/proc` sampling of the server and of ourselves, and starting a Ferry node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `/proc/PID/stat` reports CPU times in USER_HZ, fixed at 100 on Linux ABIs.
const USER_HZ: f64 = 100.0;

/// Why a target URL is refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("target `{0}` is not a ws:// URL like ws://127.0.0.1:8080/ws")]
    NotWebSocket(String),
    #[error(
        "target `{url}` resolves to {addr}, outside 127.0.0.0/8: ferry-loadtest only loads \
         servers on this machine (loopback), so it cannot flood a remote host by mistake"
    )]
    NotLoopback { url: String, addr: String },
    #[error("target `{url}`: {message}")]
    Invalid { url: String, message: String },
}

/// Check that `url` is `ws://<loopback>:<port>/...` and return its socket address.
/// `localhost` is accepted and taken as 127.0.0.1.
pub fn loopback_target(url: &str) -> Result<SocketAddr, TargetError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| TargetError::NotWebSocket(url.to_owned()))?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p),
        _ => (authority, "80"),
    };
    let port: u16 = port.parse().map_err(|_| TargetError::Invalid {
        url: url.to_owned(),
        message: format!("`{port}` is not a port"),
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| TargetError::NotLoopback {
            url: url.to_owned(),
            addr: host.to_owned(),
        })?
    };
    let loopback_v4 = matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 127);
    if !loopback_v4 {
        return Err(TargetError::NotLoopback {
            url: url.to_owned(),
            addr: ip.to_string(),
        });
    }
    Ok(SocketAddr::new(ip, port))
}

/// The source address of connection `index`: 127.0.0.1 for the first `per_source`, then
/// 127.0.0.2, ... (each address has its own ~28k ephemeral ports towards one server).
pub fn source_address(index: usize, per_source: usize) -> IpAddr {
    let n = (index / per_source.max(1)).min(249) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n))
}

/// Raise the soft RLIMIT_NOFILE as far as the hard limit allows (and try to raise the hard
/// limit to `wanted` first, which needs CAP_SYS_RESOURCE). Returns the soft limit now.
pub fn raise_fd_limit(wanted: u64) -> Result<u64, String> {
    use rlimit::Resource;
    let (_, hard) = Resource::NOFILE
        .get()
        .map_err(|e| format!("getrlimit: {e}"))?;
    if wanted > hard {
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard);
        let target = wanted.min(nr_open);
        // Without CAP_SYS_RESOURCE this fails; the soft limit still rises to the hard one.
        let _ = Resource::NOFILE.set(target, target);
    }
    rlimit::increase_nofile_limit(u64::MAX).map_err(|e| format!("setrlimit: {e}"))
}

/// utime + stime of a process in seconds (`pid` = "self" for this process).
pub fn process_cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state).
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Resident set size of a process in MiB.
pub fn process_rss_mib(pid: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// Machine-wide CPU time from `/proc/stat`, seconds over all cores: (busy, of which irq and
/// softirq, total). Interrupt time (loopback TCP is processed in softirq) is charged to no
/// process, so it is kept apart from other processes' CPU.
pub fn machine_cpu_secs() -> Option<(f64, f64, f64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let [user, nice, system, idle, iowait, irq, softirq, steal] = v.as_slice() else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    let total = busy + idle + iowait;
    Some((
        busy as f64 / USER_HZ,
        (irq + softirq) as f64 / USER_HZ,
        total as f64 / USER_HZ,
    ))
}

/// Cores and memory of this machine (for the report).
pub fn machine() -> (usize, f64) {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1_048_576.0);
    (cores, mem_gib)
}

/// How to start a Ferry node for a run (`--spawn`).
#[derive(Clone, Debug, Default)]
pub struct SpawnConfig {
    /// The `ferry` binary.
    pub bin: PathBuf,
    /// `--set key=value` overrides, after the harness's own (later ones win).
    pub sets: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Where the server's log goes (default: a file under the temp dir).
    pub log: Option<PathBuf>,
}

/// A Ferry node started by the harness. Killed when dropped.
#[derive(Debug)]
pub struct SpawnedServer {
    child: tokio::process::Child,
    pub pid: u32,
    pub url: String,
    pub log: PathBuf,
}

/// A loopback port that was free a moment ago (another process may take it before use).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl SpawnedServer {
    /// Start `ferry serve` on a free loopback port and wait (up to 20 s) for `/healthz`.
    /// The harness sets `rooms.auto_create=any` and raises the connection and join limits to
    /// the run's size; `config.sets` come after and win.
    ///
    /// The port is picked free, then released for the server to bind: another process may
    /// take it in between, so a start that fails with "Address already in use" is retried
    /// on a new port. Unless `config.env` says otherwise, the server's commerce journal goes
    /// to a fresh temp file (runs must not share one).
    pub async fn start(config: &SpawnConfig, connections: usize) -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::start_once(config, connections).await {
                Ok(server) => return Ok(server),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn start_once(config: &SpawnConfig, connections: usize) -> Result<Self, String> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = config.log.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "ferry-loadtest-server-{}-{port}.log",
                std::process::id()
            ))
        });
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err_file = file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = tokio::process::Command::new(&config.bin);
        cmd.arg("serve").arg("--listen").arg(addr.to_string());
        let own = [
            "rooms.auto_create=any".to_owned(),
            format!("limits.max_connections={}", connections.max(1000)),
        ];
        for set in own.iter().chain(&config.sets) {
            cmd.arg("--set").arg(set);
        }
        cmd.env(
            "FERRY_COMMERCE__JOURNAL_PATH",
            std::env::temp_dir().join(format!(
                "ferry-loadtest-{}-{port}/commerce.journal",
                std::process::id()
            )),
        );
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        cmd.env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", config.bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| format!("{} exited at once", config.bin.display()))?;
        let mut server = SpawnedServer {
            child,
            pid,
            url: format!("ws://{addr}/ws"),
            log,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{} exited during start ({status}); its log {}:\n{}",
                    config.bin.display(),
                    server.log.display(),
                    tail(&server.log, 20)
                ));
            }
            if http_status(addr, "/healthz").await == Some(200) {
                return Ok(server);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer /healthz on {addr} within 20 s; see {}",
                    config.bin.display(),
                    server.log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns how it ended.
    pub async fn stop(mut self, grace: Duration) -> String {
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => format!("exited after SIGTERM: {status}"),
            Ok(Err(e)) => format!("wait failed: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("still running {grace:?} after SIGTERM; killed")
            }
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The HTTP status of `GET path` (HTTP/1.0, 2 s timeout).
async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 32];
        let n = s.read(&mut head).await.ok()?;
        let text = std::str::from_utf8(head.get(..n)?).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_pass() {
        assert_eq!(
            loopback_target("ws://127.0.0.1:8080/ws").expect("loopback"),
            "127.0.0.1:8080".parse().expect("addr")
        );
        assert!(loopback_target("ws://127.3.4.5:9/ws").is_ok());
        assert!(loopback_target("ws://localhost:8080/ws").is_ok());
        let err = loopback_target("ws://10.0.0.10:8080/ws").expect_err("remote");
        assert!(err.to_string().contains("127.0.0.0/8"), "{err}");
        assert!(loopback_target("ws://example.com/ws").is_err());
        assert!(loopback_target("http://127.0.0.1:8080/ws").is_err());
        assert!(loopback_target("ws://[::1]:8080/ws").is_err());
    }

    #[test]
    fn source_addresses_fill_one_at_a_time() {
        assert_eq!(source_address(0, 100).to_string(), "127.0.0.1");
        assert_eq!(source_address(99, 100).to_string(), "127.0.0.1");
        assert_eq!(source_address(100, 100).to_string(), "127.0.0.2");
        assert_eq!(source_address(usize::MAX / 2, 1).to_string(), "127.0.0.250");
    }

    #[test]
    fn proc_sampling_reads_this_process() {
        assert!(process_cpu_secs("self").is_some());
        assert!(process_rss_mib("self").is_some_and(|m| m > 0.0));
        let (busy, interrupts, total) = machine_cpu_secs().expect("/proc/stat");
        assert!(interrupts <= busy && busy <= total && total > 0.0);
    }
}

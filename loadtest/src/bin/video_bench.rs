//! `video-bench`: the SFU fan-out benchmark.
//!
//! One synthetic publisher (the Rust SDK's `media` feature: VP8-shaped video at `--bitrate`
//! and `--fps`, plus Opus-shaped audio) sends into one room of a Ferry node this program
//! spawns; N synthetic WHEP subscribers (str0m peers in this process, each on its own UDP
//! socket) receive. For each N in `--subscribers`, after a warm-up, it measures for
//! `--duration`: packets the server forwarded per second (its `/metrics`), the server's CPU
//! time (`/proc/PID/stat`), packets forwarded per server CPU-second, and the subscribers' loss
//! (sequence numbers never received). Everything stays on 127.0.0.1 and every phase has a
//! deadline.
//!
//! Baseline (`--baseline`, same run): a no-logic UDP relay process (no ICE, DTLS, SRTP, RTCP or
//! per-viewer state: `recv` then one `send_to` per subscriber) forwards the same packet sizes
//! at the same rate to N plain UDP sinks. Its packets per CPU-second is the floor the kernel
//! sets for "one syscall per packet per viewer" on this machine.
//!
//! ```text
//! CARGO_TARGET_DIR=/tmp/bench-target cargo build --release -p ferry -p ferry-loadtest
//! /tmp/bench-target/release/video-bench --ferry /tmp/bench-target/release/ferry \
//!     --subscribers 50,100,200 --duration 10s --baseline
//! ```

use clap::Parser;
use ferry_client::media::{self, PublishOptions, SubscribeOptions, Subscriber, VideoCodec};
use ferry_loadtest::admin::Claims;
use ferry_loadtest::system::{
    machine, machine_cpu_secs, process_cpu_secs, SpawnConfig, SpawnedServer,
};
use ferry_loadtest::video::{self, Loss};
use serde::Serialize;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "SFU fan-out benchmark: one publisher, N WHEP subscribers")]
struct Args {
    /// The ferry binary to spawn.
    #[arg(long, default_value = "target/release/ferry")]
    ferry: PathBuf,
    /// Subscriber counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "25,50,100")]
    subscribers: Vec<usize>,
    /// Measurement window per step.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Video bitrate of the publisher, bits/s.
    #[arg(long, default_value_t = 1_500_000)]
    bitrate: u64,
    #[arg(long, default_value_t = 30)]
    fps: u32,
    /// Also measure the no-logic UDP relay baseline at each N.
    #[arg(long)]
    baseline: bool,
    /// Stop increasing N once loss exceeds this fraction.
    #[arg(long, default_value_t = 0.01)]
    max_loss: f64,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: run as the baseline relay (prints its port, relays until stdin closes).
    #[arg(long, hide = true)]
    relay: bool,
}

#[derive(Serialize, Debug, Clone)]
struct Step {
    target: &'static str,
    subscribers: usize,
    seconds: f64,
    /// Packets the server sent to subscribers per second (Ferry: its metrics; baseline: the relay's count).
    forwarded_per_sec: f64,
    /// Server process CPU, in cores (CPU-seconds per second).
    server_cores: f64,
    forwarded_per_cpu_sec: f64,
    /// Packets received by all subscribers per second.
    received_per_sec: f64,
    /// Lost / expected over the whole run (after a 2 s drain), all subscribers.
    loss: f64,
    /// Subscribers that connected.
    connected: usize,
    /// This process (publisher + subscribers) CPU, cores.
    loadgen_cores: f64,
    /// Whole machine busy, cores (other helpers included).
    machine_busy_cores: f64,
}

/// A token signed with Ferry's development secret.
fn token(room: &str, user: &str, role: &str) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(ferry_loadtest::runner::DEV_SECRET.as_bytes());
    Claims::new(user, role, room).mint(&key).unwrap_or_default()
}

/// The server's packets forwarded so far (0 when `/metrics` cannot be read).
async fn forwarded(base: &str) -> f64 {
    video::server_metric(base, "ferry_sfu_packets_forwarded_total")
        .await
        .unwrap_or(0.0)
}

/// Every subscriber's packet counts, summed.
fn totals(subs: &[Subscriber]) -> Loss {
    subs.iter().fold(Loss::default(), |mut sum, s| {
        sum.add(&Loss::of(&s.stats()));
        sum
    })
}

async fn ferry_step(args: &Args, n: usize) -> Result<Step, String> {
    let spawn = SpawnConfig {
        bin: args.ferry.clone(),
        sets: vec![
            "sfu.udp_listen=127.0.0.1:0".into(),
            format!("sfu.max_sessions={}", n + 16),
            "log.level=warn".into(),
        ],
        ..SpawnConfig::default()
    };
    let server = SpawnedServer::start(&spawn, n + 100).await?;
    let base = video::http_base(&server.url).map_err(|e| e.to_string())?;
    let pid = server.pid.to_string();
    let room = "bench";
    let opts = PublishOptions {
        codec: VideoCodec::Vp8,
        video_bitrate_bps: args.bitrate,
        fps: args.fps,
        keyframe_interval: Duration::from_secs(2),
        ..PublishOptions::default()
    };
    let publisher = video::start_publisher(
        &base,
        room,
        &token(room, "host", "host"),
        opts,
        Duration::from_secs(10),
    )
    .await?;
    let mut subs = Vec::with_capacity(n);
    let connect_deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..n {
        if Instant::now() > connect_deadline {
            break;
        }
        match media::subscribe(
            &base,
            room,
            &token(room, &format!("v{i}"), "viewer"),
            SubscribeOptions::default(),
        )
        .await
        {
            Ok(s) => subs.push(s),
            Err(e) => eprintln!("subscriber {i}: {e}"),
        }
    }
    for s in &mut subs {
        let _ = s.wait_connected(Duration::from_secs(10)).await;
    }
    let connected = subs.iter().filter(|s| s.stats().connected).count();
    // Warm up: keyframes requested, bandwidth estimates settled.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = totals(&subs);
    let f0 = forwarded(&base).await;
    let c0 = process_cpu_secs(&pid).unwrap_or(0.0);
    let g0 = process_cpu_secs("self").unwrap_or(0.0);
    let m0 = machine_cpu_secs().map_or(0.0, |m| m.0);
    let t0 = Instant::now();
    tokio::time::sleep(args.duration).await;
    let secs = t0.elapsed().as_secs_f64();
    // Metrics are copied once a second: read after the next copy.
    let after = totals(&subs);
    let c1 = process_cpu_secs(&pid).unwrap_or(0.0);
    let g1 = process_cpu_secs("self").unwrap_or(0.0);
    let m1 = machine_cpu_secs().map_or(0.0, |m| m.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let f1 = forwarded(&base).await;
    let forwarded = (f1 - f0) / (secs + 1.1);
    let cores = (c1 - c0) / secs;
    // A subscriber that fell behind has packets waiting in its socket: they are neither
    // received nor (yet) gaps. Stop the publisher, let them drain, then count the whole run.
    publisher.abort();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let whole_run = totals(&subs);
    let recv = after.packets - before.packets;
    let step = Step {
        target: "ferry",
        subscribers: n,
        seconds: secs,
        forwarded_per_sec: forwarded,
        server_cores: cores,
        forwarded_per_cpu_sec: if cores > 0.0 { forwarded / cores } else { 0.0 },
        received_per_sec: recv as f64 / secs,
        loss: whole_run.pct() / 100.0,
        connected,
        loadgen_cores: (g1 - g0) / secs,
        machine_busy_cores: (m1 - m0) / secs,
    };
    drop(subs);
    let _ = server.stop(Duration::from_secs(5)).await;
    Ok(step)
}

/// The relay process: `recv` from the source, `send_to` every registered sink.
fn run_relay() -> ExitCode {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return ExitCode::FAILURE;
    };
    let Ok(addr) = sock.local_addr() else {
        return ExitCode::FAILURE;
    };
    println!("{}", addr.port());
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        s2.store(true, Relaxed);
    });
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sinks: Vec<SocketAddr> = Vec::new();
    let mut buf = [0u8; 2048];
    while !stop.load(Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        if &buf[..n] == b"SUB" {
            sinks.push(from);
            continue;
        }
        for s in &sinks {
            let _ = sock.send_to(&buf[..n], s);
        }
    }
    ExitCode::SUCCESS
}

async fn baseline_step(args: &Args, n: usize) -> Result<Step, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = std::process::Command::new(exe)
        .arg("--relay")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id().to_string();
    let port: u16 = {
        use std::io::BufRead;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim().parse().map_err(|_| "relay port".to_owned())?
    };
    let relay = SocketAddr::from(([127, 0, 0, 1], port));
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sinks = Vec::new();
    for _ in 0..n {
        let s = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        s.send_to(b"SUB", relay).await.map_err(|e| e.to_string())?;
        let (r, st) = (received.clone(), stop.clone());
        sinks.push(tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while !st.load(Relaxed) {
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(200), s.recv_from(&mut buf)).await
                {
                    r.fetch_add(1, Relaxed);
                }
            }
        }));
    }
    // The source: the publisher's packet sizes and rate (video frames split in ≤1100-byte
    // packets at `fps`, plus 50 audio packets of 80 bytes per second).
    let src = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let frame = (args.bitrate / 8 / u64::from(args.fps.max(1))) as usize;
    let sent = Arc::new(AtomicU64::new(0));
    let (s2, st2) = (sent.clone(), stop.clone());
    let fps = args.fps.max(1);
    let source = tokio::spawn(async move {
        let mut video = tokio::time::interval(Duration::from_secs(1) / fps);
        let mut audio = tokio::time::interval(Duration::from_millis(20));
        let pkt = vec![0x55u8; 1100];
        while !st2.load(Relaxed) {
            tokio::select! {
                _ = video.tick() => {
                    let mut left = frame;
                    while left > 0 {
                        let n = left.min(1060);
                        let _ = src.send_to(&pkt[..n + 40], relay).await;
                        s2.fetch_add(1, Relaxed);
                        left -= n;
                    }
                }
                _ = audio.tick() => {
                    let _ = src.send_to(&pkt[..80], relay).await;
                    s2.fetch_add(1, Relaxed);
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (r0, p0) = (received.load(Relaxed), sent.load(Relaxed));
    let c0 = process_cpu_secs(&pid).unwrap_or(0.0);
    let g0 = process_cpu_secs("self").unwrap_or(0.0);
    let m0 = machine_cpu_secs().map_or(0.0, |m| m.0);
    let t0 = Instant::now();
    tokio::time::sleep(args.duration).await;
    let secs = t0.elapsed().as_secs_f64();
    let (r1, p1) = (received.load(Relaxed), sent.load(Relaxed));
    let c1 = process_cpu_secs(&pid).unwrap_or(0.0);
    let g1 = process_cpu_secs("self").unwrap_or(0.0);
    let m1 = machine_cpu_secs().map_or(0.0, |m| m.0);
    stop.store(true, Relaxed);
    let _ = source.await;
    for s in sinks {
        let _ = s.await;
    }
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        let _ = stdin.write_all(b"stop\n");
    }
    let _ = child.wait();
    let recv = (r1 - r0) as f64;
    let expected = ((p1 - p0) * n as u64) as f64;
    let cores = (c1 - c0) / secs;
    Ok(Step {
        target: "baseline-udp-relay",
        subscribers: n,
        seconds: secs,
        forwarded_per_sec: recv / secs,
        server_cores: cores,
        forwarded_per_cpu_sec: if cores > 0.0 {
            recv / secs / cores
        } else {
            0.0
        },
        received_per_sec: recv / secs,
        loss: if expected > 0.0 {
            (1.0 - recv / expected).max(0.0)
        } else {
            0.0
        },
        connected: n,
        loadgen_cores: (g1 - g0) / secs,
        machine_busy_cores: (m1 - m0) / secs,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.relay {
        return run_relay();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = ferry_loadtest::system::raise_fd_limit(20_000);
    let (cores, mem) = machine();
    println!(
        "machine: {cores} cores, {mem:.1} GiB; publisher {} bit/s at {} fps",
        args.bitrate, args.fps
    );
    println!(
        "{:<20} {:>5} {:>10} {:>7} {:>12} {:>10} {:>7} {:>8} {:>8}",
        "target", "subs", "fwd/s", "cores", "fwd/CPU-s", "recv/s", "loss%", "loadgen", "machine"
    );
    let mut steps = Vec::new();
    // Hard deadline for the whole run.
    let budget = Duration::from_secs(120)
        + (args.duration + Duration::from_secs(90))
            * args.subscribers.len() as u32
            * if args.baseline { 2 } else { 1 };
    let result = rt.block_on(async {
        tokio::time::timeout(budget, async {
            for &n in &args.subscribers {
                let mut targets = vec![false];
                if args.baseline {
                    targets.push(true);
                }
                let mut stop = false;
                for baseline in targets {
                    let step = if baseline {
                        baseline_step(&args, n).await
                    } else {
                        ferry_step(&args, n).await
                    };
                    match step {
                        Ok(s) => {
                            println!(
                                "{:<20} {:>5} {:>10.0} {:>7.2} {:>12.0} {:>10.0} {:>7.3} {:>8.2} {:>8.2}",
                                s.target,
                                s.subscribers,
                                s.forwarded_per_sec,
                                s.server_cores,
                                s.forwarded_per_cpu_sec,
                                s.received_per_sec,
                                s.loss * 100.0,
                                s.loadgen_cores,
                                s.machine_busy_cores
                            );
                            if !baseline && s.loss > args.max_loss {
                                stop = true;
                            }
                            steps.push(s);
                        }
                        Err(e) => {
                            eprintln!("step {n}: {e}");
                            stop = true;
                        }
                    }
                }
                if stop {
                    break;
                }
            }
        })
        .await
    });
    if result.is_err() {
        eprintln!("run deadline passed; reporting what was measured");
    }
    if let Some(path) = &args.json {
        let _ = std::fs::write(
            path,
            serde_json::to_string_pretty(&steps).unwrap_or_default(),
        );
    }
    rt.shutdown_timeout(Duration::from_secs(2));
    ExitCode::SUCCESS
}

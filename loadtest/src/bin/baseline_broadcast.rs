//! A no-logic WebSocket broadcast server: the floor `fanout-bench` compares Ferry against.
//!
//! Every text message any client sends is re-broadcast verbatim to every connected client
//! (the sender included). No auth, no rooms, no parsing beyond recognising a `join` command,
//! which is ignored. It uses the same socket settings as Ferry (4 KiB tungstenite read buffer,
//! write buffer 0, 16 KiB frame limit, TCP_NODELAY on accepted sockets) and the
//! same writer shape (one task per connection that writes whatever is queued, up to 64 frames,
//! with one flush). Messages travel as shared `Utf8Bytes` through one
//! `tokio::sync::broadcast` channel whose capacity plays the part of Ferry's per-connection
//! send queue: a receiver that lags behind it is closed as a slow consumer (3001), as Ferry
//! would.
//!
//! `baseline-broadcast --listen 127.0.0.1:9100`; stops on SIGTERM or Ctrl-C and prints its
//! counters to stderr.

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Parser, Debug)]
#[command(
    name = "baseline-broadcast",
    about = "No-logic WebSocket broadcast baseline"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Messages a connection may fall behind before it is closed (Ferry: send_queue_frames).
    #[arg(long, default_value_t = 256)]
    queue: usize,
    /// tungstenite read buffer per connection (Ferry: websocket.read_buffer_bytes).
    #[arg(long, default_value_t = 4096)]
    read_buffer: usize,
    /// Largest frame accepted (Ferry: limits.max_frame_bytes).
    #[arg(long, default_value_t = 16384)]
    max_frame: usize,
    /// Most frames written per flush (Ferry writes up to 64 queued frames per flush).
    #[arg(long, default_value_t = 64)]
    max_flush: usize,
    /// Leave Nagle on for accepted sockets (Ferry sets TCP_NODELAY, so by default we do too).
    #[arg(long)]
    no_nodelay: bool,
    /// Worker threads (default: one per core, like Ferry's runtime).
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Default)]
struct Counters {
    open: AtomicU64,
    accepted: AtomicU64,
    handshake_failed: AtomicU64,
    messages_in: AtomicU64,
    joins_ignored: AtomicU64,
    frames_out: AtomicU64,
    slow_consumers: AtomicU64,
    write_failures: AtomicU64,
}

impl Counters {
    fn summary(&self) -> String {
        format!(
            "open={} accepted={} handshake_failed={} messages_in={} joins_ignored={} frames_out={} slow_consumers={} write_failures={}",
            self.open.load(Relaxed),
            self.accepted.load(Relaxed),
            self.handshake_failed.load(Relaxed),
            self.messages_in.load(Relaxed),
            self.joins_ignored.load(Relaxed),
            self.frames_out.load(Relaxed),
            self.slow_consumers.load(Relaxed),
            self.write_failures.load(Relaxed),
        )
    }
}

struct Shared {
    tx: broadcast::Sender<Utf8Bytes>,
    config: WebSocketConfig,
    max_flush: usize,
    nodelay: bool,
    counters: Counters,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("baseline-broadcast: cannot raise the file descriptor limit: {e}");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("baseline-broadcast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> ExitCode {
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("baseline-broadcast: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let (tx, _) = broadcast::channel(args.queue.max(1));
    let config = WebSocketConfig::default()
        .read_buffer_size(args.read_buffer)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024 + args.max_frame)
        .max_message_size(Some(args.max_frame))
        .max_frame_size(Some(args.max_frame));
    let shared = Arc::new(Shared {
        tx,
        config,
        max_flush: args.max_flush.max(1),
        nodelay: !args.no_nodelay,
        counters: Counters::default(),
    });
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("baseline-broadcast: cannot listen for SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("baseline-broadcast: listening on {}", args.listen);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(connection(shared.clone(), stream));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off briefly instead of spinning.
                    eprintln!("baseline-broadcast: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    eprintln!(
        "baseline-broadcast: stopping: {}",
        shared.counters.summary()
    );
    ExitCode::SUCCESS
}

/// Whether a client frame is a `join` command (ignored: there are no rooms).
fn is_join(text: &str) -> bool {
    text.contains("\"cmd\":\"join\"")
}

async fn connection(shared: Arc<Shared>, stream: TcpStream) {
    let c = &shared.counters;
    if shared.nodelay {
        let _ = stream.set_nodelay(true);
    }
    let mut ws =
        match tokio_tungstenite::accept_async_with_config(stream, Some(shared.config)).await {
            Ok(ws) => ws,
            Err(_) => {
                c.handshake_failed.fetch_add(1, Relaxed);
                return;
            }
        };
    // Subscribe once the handshake is done: from here on this client gets every message.
    let mut rx = shared.tx.subscribe();
    c.accepted.fetch_add(1, Relaxed);
    c.open.fetch_add(1, Relaxed);
    loop {
        tokio::select! {
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    c.messages_in.fetch_add(1, Relaxed);
                    if is_join(text.as_str()) {
                        c.joins_ignored.fetch_add(1, Relaxed);
                    } else {
                        // No receivers is not an error worth reporting.
                        let _ = shared.tx.send(text);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            out = rx.recv() => match out {
                Ok(first) => {
                    let mut batch = 1usize;
                    let write = async {
                        ws.feed(Message::Text(first)).await?;
                        while batch < shared.max_flush {
                            match rx.try_recv() {
                                Ok(next) => {
                                    batch += 1;
                                    ws.feed(Message::Text(next)).await?;
                                }
                                Err(_) => break,
                            }
                        }
                        ws.flush().await
                    };
                    match tokio::time::timeout(Duration::from_secs(5), write).await {
                        Ok(Ok(())) => {
                            c.frames_out.fetch_add(batch as u64, Relaxed);
                        }
                        _ => {
                            c.write_failures.fetch_add(1, Relaxed);
                            break;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    c.slow_consumers.fetch_add(1, Relaxed);
                    let frame = CloseFrame {
                        code: CloseCode::from(3001),
                        reason: Utf8Bytes::from_static("slow consumer, reconnect"),
                    };
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        ws.send(Message::Close(Some(frame))),
                    )
                    .await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        }
    }
    c.open.fetch_sub(1, Relaxed);
}

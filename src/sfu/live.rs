//! A room's live state in the engine, as this node keeps it: the live lease of every room whose
//! publisher is connected here, the `stream_started`/`stream_ended` events, and the sweep that
//! ends streams whose hosting node stopped renewing its lease (crashed, or cut off).
//!
//! The lease lives in the engine next to the room's `live` flag ([`Engine::claim_live`]); it
//! names the hosting node and its public URL (WHEP requests at other nodes are redirected
//! there). It is taken before `stream_started` is published, renewed every third of
//! `sfu.live_lease`, and ended with `stream_ended` through [`StateChange::LiveEnd`] (refused
//! when the publisher moved to another node meanwhile). Every node sweeps every half lease:
//! [`StateChange::LiveLapsed`] is checked atomically by the engine, so one sweeper publishes the
//! lapse's `stream_ended` (reason `timeout`).
//!
//! One tokio task; it must not touch media (the driver sends it [`Lifecycle`] events).
//!
//! [`Engine::claim_live`]: crate::engine::Engine::claim_live

use super::metrics::SfuMetrics;
use super::router::EndReason;
use super::Lifecycle;
use crate::engine::{EngineError, LiveHost, StateChange};
use crate::hub::Hub;
use ferry_client::protocol::{RoomEvent, RoomId, StreamEndReason, UserRef};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Rooms read from the engine per lapse sweep (the rest wait for the next sweep).
const SWEEP_BATCH: usize = 64;

/// Who this node is, as leases record it, and how long a lease lasts.
#[derive(Clone, Debug)]
pub struct LiveConfig {
    pub host: LiveHost,
    pub lease: Duration,
}

/// A room whose publisher is connected here.
#[derive(Debug, Clone)]
struct Hosted {
    lease: Lease,
    /// Who went live (for a `stream_started` after our own lease lapsed).
    by: UserRef,
    /// Whether `stream_started` went out. When the engine was unreachable as the host went
    /// live, it is published with the next successful claim or renewal, or the room would
    /// never show live (and its end, refused as "not live", would never be announced).
    announced: bool,
}

/// What this node knows of a room's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// The engine has our claim; renew it.
    Held,
    /// The claim failed (engine unreachable): claim again on the next tick.
    Unclaimed,
}

/// The task: until the driver's lifecycle channel closes.
pub async fn run(
    hub: Arc<Hub>,
    cfg: LiveConfig,
    metrics: Arc<SfuMetrics>,
    mut rx: mpsc::UnboundedReceiver<Lifecycle>,
) {
    let lease = cfg.lease.max(Duration::from_millis(300));
    let mut renew = tokio::time::interval(lease / 3);
    let mut sweep = tokio::time::interval(lease / 2);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut hosted: HashMap<RoomId, Hosted> = HashMap::new();
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Lifecycle::Started { room, by }) => {
                    let state = claim(&hub, &cfg, lease, &metrics, &room).await;
                    let announced = announce(&hub, &room, &by).await;
                    hosted.insert(room, Hosted { lease: state, by, announced });
                    metrics.live_leases.store(hosted.len() as i64, Relaxed);
                }
                Some(Lifecycle::Ended { room, reason }) => {
                    hosted.remove(&room);
                    metrics.live_leases.store(hosted.len() as i64, Relaxed);
                    let event = RoomEvent::StreamEnded { reason: wire_reason(reason) };
                    let change = StateChange::LiveEnd { node: cfg.host.node.clone() };
                    log_publish(&room, &event, hub.publish_with(&room, &event, Some(change)).await);
                }
                None => break,
            },
            _ = renew.tick() => renew_all(&hub, &cfg, lease, &metrics, &mut hosted).await,
            _ = sweep.tick() => sweep_lapsed(&hub, &hosted, &metrics).await,
        }
    }
}

fn wire_reason(reason: EndReason) -> StreamEndReason {
    match reason {
        EndReason::Left => StreamEndReason::Left,
        EndReason::Timeout => StreamEndReason::Timeout,
        EndReason::Replaced => StreamEndReason::Replaced,
        EndReason::Shutdown => StreamEndReason::Shutdown,
    }
}

async fn claim(
    hub: &Hub,
    cfg: &LiveConfig,
    lease: Duration,
    metrics: &SfuMetrics,
    room: &RoomId,
) -> Lease {
    match hub.engine().claim_live(room, &cfg.host, lease).await {
        Ok(()) => Lease::Held,
        Err(e) => {
            metrics.lease_errors.fetch_add(1, Relaxed);
            tracing::warn!(%room, error = %e, "cannot take the live lease; retrying");
            Lease::Unclaimed
        }
    }
}

/// Renew every lease we hold; claim again those that failed. A lease we lost is either
/// another node's now (the publisher moved: stop renewing) or lapsed and swept while our
/// publisher is still here (we were too slow): take it again and say the stream is back.
async fn renew_all(
    hub: &Hub,
    cfg: &LiveConfig,
    lease: Duration,
    metrics: &SfuMetrics,
    hosted: &mut HashMap<RoomId, Hosted>,
) {
    let engine = hub.engine();
    let rooms: Vec<(RoomId, Hosted)> = hosted.iter().map(|(r, h)| (r.clone(), h.clone())).collect();
    for (room, h) in rooms {
        let result = match h.lease {
            Lease::Unclaimed => {
                let state = claim(hub, cfg, lease, metrics, &room).await;
                let announced =
                    h.announced || (state == Lease::Held && announce(hub, &room, &h.by).await);
                hosted.insert(
                    room,
                    Hosted {
                        lease: state,
                        by: h.by,
                        announced,
                    },
                );
                continue;
            }
            Lease::Held => {
                if !h.announced && announce(hub, &room, &h.by).await {
                    if let Some(entry) = hosted.get_mut(&room) {
                        entry.announced = true;
                    }
                }
                engine.renew_live(&room, &cfg.host.node, lease).await
            }
        };
        match result {
            Ok(true) => {}
            Ok(false) => match engine.room(&room).await {
                Ok(Some(rec)) if rec.live_host.is_some() => {
                    tracing::info!(%room, "another node took the live lease; no longer renewing");
                    hosted.remove(&room);
                }
                Ok(Some(rec)) if !rec.closed => {
                    tracing::warn!(%room, "our live lease lapsed while the publisher is here; taking it again");
                    let state = claim(hub, cfg, lease, metrics, &room).await;
                    let announced = rec.live || announce(hub, &room, &h.by).await;
                    hosted.insert(
                        room.clone(),
                        Hosted {
                            lease: state,
                            by: h.by,
                            announced,
                        },
                    );
                }
                Ok(_) => {
                    hosted.remove(&room);
                }
                Err(e) => {
                    metrics.lease_errors.fetch_add(1, Relaxed);
                    tracing::warn!(%room, error = %e, "cannot read the room after a lost lease");
                }
            },
            Err(e) => {
                metrics.lease_errors.fetch_add(1, Relaxed);
                tracing::warn!(%room, error = %e, "cannot renew the live lease");
            }
        }
    }
    metrics.live_leases.store(hosted.len() as i64, Relaxed);
}

/// End the streams whose lease lapsed (not ours: ours are renewed above).
async fn sweep_lapsed(hub: &Hub, hosted: &HashMap<RoomId, Hosted>, metrics: &SfuMetrics) {
    let rooms = match hub.engine().lapsed_live(SWEEP_BATCH).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "live lease sweep skipped");
            return;
        }
    };
    for room in rooms {
        if hosted.contains_key(&room) {
            continue;
        }
        let event = RoomEvent::StreamEnded {
            reason: StreamEndReason::Timeout,
        };
        match hub
            .publish_with(&room, &event, Some(StateChange::LiveLapsed))
            .await
        {
            Ok(_) => {
                metrics.lease_lapses.fetch_add(1, Relaxed);
                tracing::warn!(%room, "the hosting node stopped renewing the live lease: stream ended");
            }
            // Renewed meanwhile, or another sweeper was first; or the room was closed or is
            // gone (the engine drops it from the sweep's list).
            Err(
                EngineError::LiveElsewhere
                | EngineError::NotLive
                | EngineError::RoomClosed
                | EngineError::RoomNotFound,
            ) => {}
            Err(e) => tracing::warn!(%room, error = %e, "cannot end a lapsed stream"),
        }
    }
}

/// Publish `stream_started` for `room`; whether it went out.
async fn announce(hub: &Hub, room: &RoomId, by: &UserRef) -> bool {
    let event = RoomEvent::StreamStarted { by: by.clone() };
    let result = hub.publish(room, &event).await;
    let published = result.is_ok();
    log_publish(room, &event, result);
    published
}

fn log_publish<T>(room: &RoomId, event: &RoomEvent, result: Result<T, EngineError>) {
    match result {
        Ok(_) => tracing::info!(%room, event = ?event, "stream event published"),
        // Our stream already ended by a lapse, or the publisher moved to another node.
        Err(e @ (EngineError::LiveElsewhere | EngineError::NotLive)) => {
            tracing::info!(%room, event = ?event, reason = %e, "stream event not published")
        }
        Err(e) => tracing::warn!(%room, error = %e, "cannot publish stream event"),
    }
}

//! Resume after a network drop: every missed event exactly once, or an explicit
//! "cannot recover" — never a silent gap.

mod common;

use common::*;
use ferry::protocol::{Role, RoomEvent};
use ferry_client::{ClientOptions, Event};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

async fn drop_and_resume(
    node_cache: usize,
    history: usize,
    missed: usize,
) -> (Vec<String>, Option<bool>, ferry_client::Client) {
    let s = TestServer::start(|c| {
        c.history.node_cache = node_cache;
        c.history.size = history;
        // The host publishes in bulk; the command limit is not under test.
        c.limits.command_rate = 1e6;
        c.limits.command_burst = 1e6;
    })
    .await;
    let proxy = Proxy::start(s.addr()).await;
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let mut opts = ClientOptions::new(proxy.url(), s.token("r", "viewer", Role::Viewer));
    opts.min_backoff = Duration::from_millis(50);
    opts.max_backoff = Duration::from_millis(100);
    let (viewer, mut ve) = ferry_client::Client::connect(opts);
    viewer.join("r").await.expect("join");
    for i in 0..10 {
        host.comment("r", format!("before {i}"))
            .await
            .expect("comment");
    }
    let mut seen = collect_comments(&mut ve, "r", 10).await;
    proxy.go_down();
    wait_for(&mut ve, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    for i in 0..missed {
        host.comment("r", format!("during {i}"))
            .await
            .expect("comment");
    }
    proxy.come_up();
    let recovered = wait_for(&mut ve, |e| match e {
        Event::Joined { reply, .. } => Some(reply.recovered),
        _ => None,
    })
    .await;
    if recovered == Some(true) {
        seen.extend(collect_comments(&mut ve, "r", missed).await);
    }
    host.comment("r", "after").await.expect("comment");
    let after = wait_for(&mut ve, |e| match e {
        Event::Room {
            event: RoomEvent::Comment { text, .. },
            ..
        } => Some(text.clone()),
        _ => None,
    })
    .await;
    seen.push(after);
    (seen, recovered, viewer)
}

fn expected(missed: usize) -> Vec<String> {
    let mut v: Vec<String> = (0..10).map(|i| format!("before {i}")).collect();
    v.extend((0..missed).map(|i| format!("during {i}")));
    v.push("after".into());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_node_cache_has_no_gap_and_no_duplicate() {
    let (seen, recovered, viewer) = drop_and_resume(256, 1000, 25).await;
    assert_eq!(recovered, Some(true));
    assert_eq!(seen, expected(25));
    assert_eq!(viewer.stats().duplicates.load(Relaxed), 0);
    assert_eq!(viewer.stats().gaps.load(Relaxed), 0);
    assert!(viewer.stats().connects.load(Relaxed) >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_node_cache_reads_engine_history() {
    // The node keeps 4 frames; 40 were missed: the joiner reads the rest from the engine.
    let (seen, recovered, viewer) = drop_and_resume(4, 1000, 40).await;
    assert_eq!(recovered, Some(true));
    assert_eq!(seen, expected(40));
    assert_eq!(viewer.stats().duplicates.load(Relaxed), 0);
    assert_eq!(viewer.stats().gaps.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_beyond_history_window_says_cannot_recover() {
    // History keeps 5 events; 30 were missed: the client is told, not silently skipped.
    let (seen, recovered, viewer) = drop_and_resume(4, 5, 30).await;
    assert_eq!(recovered, Some(false));
    // Only what was seen before, then live events after the explicit reset.
    let mut want: Vec<String> = (0..10).map(|i| format!("before {i}")).collect();
    want.push("after".into());
    assert_eq!(seen, want);
    assert_eq!(viewer.stats().unrecovered.load(Relaxed), 1);
    assert_eq!(viewer.stats().duplicates.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_epoch_is_never_trusted() {
    let s = TestServer::start(|_| {}).await;
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    host.comment("r", "x").await.expect("comment");
    // A raw resume from another epoch (e.g. before a restart of the memory engine).
    let (viewer, _ve) = s.client("r", "v", Role::Viewer);
    let reply = viewer
        .request(ferry::protocol::Command::Join {
            room: "r".into(),
            since: Some(ferry::protocol::StreamPosition {
                epoch: ferry::protocol::Epoch("old-epoch".into()),
                offset: ferry::protocol::Offset(1),
            }),
        })
        .await
        .expect("join");
    match reply {
        ferry::protocol::ReplyBody::Joined(j) => {
            assert_eq!(j.recovered, Some(false));
            assert_eq!(j.missed, 0);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_left_are_not_rejoined_after_reconnect() {
    let s = TestServer::start(|c| c.rooms.auto_create = ferry::config::AutoCreate::Any).await;
    let proxy = Proxy::start(s.addr()).await;
    let mut opts = ClientOptions::new(proxy.url(), s.token("*", "v", Role::Viewer));
    opts.min_backoff = Duration::from_millis(20);
    let (viewer, mut ve) = ferry_client::Client::connect(opts);
    viewer.join("a").await.expect("join a");
    viewer.join("b").await.expect("join b");
    viewer.leave("a").await.expect("leave a");
    // A failed join of another room does not make the client forget "b".
    assert!(viewer.join("bad room").await.is_err());
    proxy.go_down();
    wait_for(&mut ve, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    proxy.come_up();
    let rejoined = wait_for(&mut ve, |e| match e {
        Event::Joined { room, .. } => Some(room.clone()),
        _ => None,
    })
    .await;
    assert_eq!(rejoined.as_str(), "b");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.server.state.hub.local_members(&"a".into()), 0);
    assert_eq!(s.server.state.hub.local_members(&"b".into()), 1);
    while let Some(e) = ve.try_recv() {
        assert!(
            !matches!(e, Event::Joined { ref room, .. } if room.as_str() == "a"),
            "rejoined a"
        );
    }
}

/// An application that kept a position (a page reload, another device) resumes with an
/// explicit `join` + `since`: the missed events arrive as room events, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_resume_delivers_the_missed_events() {
    let s = TestServer::start(|_| {}).await;
    let (host, mut host_events) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let first = host.comment("r", "one").await.expect("comment");
    for text in ["two", "three"] {
        host.comment("r", text).await.expect("comment");
    }
    // Once the room has fanned "three" out, the node knows every position up to it (a
    // client claiming a position the node has not seen yet is told "cannot recover").
    collect_comments(&mut host_events, "r", 3).await;
    let (viewer, mut events) = s.client("r", "v", Role::Viewer);
    let reply = viewer
        .request(ferry::protocol::Command::Join {
            room: "r".into(),
            since: Some(first),
        })
        .await
        .expect("join");
    match reply {
        ferry::protocol::ReplyBody::Joined(j) => {
            // What the room had delivered by then follows as missed events; anything newer
            // follows live. Either way each comment arrives once, in order.
            assert_eq!(j.recovered, Some(true));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        collect_comments(&mut events, "r", 2).await,
        vec!["two".to_string(), "three".to_string()]
    );
    assert_eq!(viewer.stats().duplicates.load(Relaxed), 0);
}

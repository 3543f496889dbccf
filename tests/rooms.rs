//! Live rooms over real sockets: fan-out, likes, viewer counts, moderation, limits.

mod common;

use common::*;
use ferry::protocol::{ErrorCode, Offset, Role, RoomEvent};
use ferry_client::{ClientError, Event};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comments_fan_out_to_every_viewer_in_order() {
    // The host sends 40 comments back to back on top of its join and clock pings: room in
    // the command bucket, so a fast machine does not trip the (separately tested) limit.
    let s = TestServer::start(|c| c.limits.command_burst = 100.0).await;
    let (host, mut host_events) = s.client("live", "host", Role::Host);
    host.join("live")
        .await
        .expect("host joins (creates the room)");
    let mut viewers = Vec::new();
    for i in 0..60 {
        let (c, e) = s.client("live", &format!("v{i}"), Role::Viewer);
        c.join("live").await.expect("viewer joins");
        viewers.push((c, e));
    }
    let n = 40;
    for i in 0..n {
        host.comment("live", format!("comment {i}"))
            .await
            .expect("comment");
    }
    let expected: Vec<String> = (0..n).map(|i| format!("comment {i}")).collect();
    for (c, e) in viewers.iter_mut() {
        assert_eq!(collect_comments(e, "live", n).await, expected);
        assert_eq!(
            c.stats()
                .duplicates
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        assert_eq!(c.stats().gaps.load(std::sync::atomic::Ordering::Relaxed), 0);
    }
    assert_eq!(
        collect_comments(&mut host_events, "live", n).await,
        expected
    );
    assert!(s.metric("ferry_events_delivered_total") >= (61 * n) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn likes_are_aggregated_and_viewer_counts_pushed() {
    let s = TestServer::start(|_| {}).await;
    let (host, mut host_events) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let mut viewers = Vec::new();
    for i in 0..5 {
        let (c, e) = s.client("r", &format!("v{i}"), Role::Viewer);
        c.join("r").await.expect("join");
        viewers.push((c, e));
    }
    // The host sees the count reach 6.
    wait_for(&mut host_events, |e| match e {
        Event::Viewers { count: 6, .. } => Some(()),
        _ => None,
    })
    .await;
    for (c, _) in &viewers {
        for _ in 0..10 {
            c.like("r", 2).await.expect("like");
        }
    }
    // 100 likes arrive as a handful of aggregated events, not 50 frames.
    let mut total = 0;
    let mut like_events = 0;
    tokio::time::timeout(WAIT, async {
        while total < 100 {
            if let Some(Event::Room {
                event: RoomEvent::Likes { count },
                ..
            }) = host_events.recv().await
            {
                total += count;
                like_events += 1;
            }
        }
    })
    .await
    .expect("likes arrive");
    assert_eq!(total, 100);
    assert!(like_events <= 10, "{like_events} like events for 100 likes");
    // Late joiners get the total in the join state.
    let (late, _e) = s.client("r", "late", Role::Viewer);
    let reply = late.join("r").await.expect("join");
    assert_eq!(reply.state.likes, 100);
    assert!(reply.state.viewers >= 6);
    // Join notices are aggregated too.
    let joined = wait_for(&mut host_events, |e| match e {
        Event::Room {
            event: RoomEvent::Joined { count, sample },
            ..
        } if sample.iter().any(|u| u.id.as_str() == "late") => Some(*count),
        _ => None,
    })
    .await;
    assert!(joined >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_rate_limit_and_slow_mode() {
    let s = TestServer::start(|_| {}).await;
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let (viewer, _ve) = s.client("r", "v", Role::Viewer);
    viewer.join("r").await.expect("join");
    for i in 0..5 {
        viewer
            .comment("r", format!("hi {i}"))
            .await
            .expect("within burst");
    }
    let err = viewer
        .comment("r", "one too many")
        .await
        .expect_err("limited");
    let ClientError::Server(body) = err else {
        panic!("{err:?}")
    };
    assert_eq!(body.code, ErrorCode::RateLimited.code());
    assert!(body.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 1000));
    // Hosts are exempt.
    for i in 0..20 {
        host.comment("r", format!("host {i}"))
            .await
            .expect("host unlimited");
    }
    // Slow mode: one comment per interval per viewer.
    host.slow_mode("r", 30).await.expect("slow mode");
    let (v2, _e2) = s.client("r", "v2", Role::Viewer);
    v2.join("r").await.expect("join");
    v2.comment("r", "first").await.expect("first passes");
    let err = v2.comment("r", "second").await.expect_err("slow");
    assert_eq!(err.code(), Some(ErrorCode::SlowMode.code()));
    let reply = v2.join("r").await.expect_err("already joined");
    assert_eq!(reply.code(), Some(ErrorCode::AlreadyJoined.code()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderation_delete_mute_ban() {
    let s = TestServer::start(|_| {}).await;
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let (mod_, _me) = s.client("r", "mod", Role::Moderator);
    mod_.join("r").await.expect("join");
    let (viewer, mut ve) = s.client("r", "v", Role::Viewer);
    viewer.join("r").await.expect("join");
    let (troll, mut te) = s.client("r", "troll", Role::Viewer);
    troll.join("r").await.expect("join");

    let pos = troll.comment("r", "spam spam").await.expect("comment");
    mod_.delete_comment("r", pos.offset).await.expect("delete");
    let deleted = wait_for(&mut ve, |e| match e {
        Event::Room {
            event: RoomEvent::CommentDeleted { offset, .. },
            ..
        } => Some(*offset),
        _ => None,
    })
    .await;
    assert_eq!(deleted, pos.offset);

    mod_.mute("r", "troll", Some(60)).await.expect("mute");
    wait_for(&mut te, |e| {
        matches!(
            e,
            Event::Room {
                event: RoomEvent::UserMuted { .. },
                ..
            }
        )
        .then_some(())
    })
    .await;
    let err = troll.comment("r", "let me speak").await.expect_err("muted");
    assert_eq!(err.code(), Some(ErrorCode::Muted.code()));
    mod_.unmute("r", "troll").await.expect("unmute");
    wait_for(&mut te, |e| {
        matches!(
            e,
            Event::Room {
                event: RoomEvent::UserUnmuted { .. },
                ..
            }
        )
        .then_some(())
    })
    .await;
    troll.comment("r", "sorry").await.expect("unmuted");

    // Viewers cannot moderate.
    let err = viewer.ban("r", "troll").await.expect_err("forbidden");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden.code()));
    assert_eq!(
        viewer
            .delete_comment("r", Offset(1))
            .await
            .expect_err("forbidden")
            .code(),
        Some(ErrorCode::Forbidden.code())
    );

    host.ban("r", "troll").await.expect("ban");
    // The troll is disconnected (3506, terminal) and cannot come back.
    let code = wait_for(&mut te, |e| match e {
        Event::Closed { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, Some(3506));
    let (again, _ae) = s.client("r", "troll", Role::Viewer);
    let err = again.join("r").await.expect_err("banned");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden.code()));
    // Others are unaffected.
    host.comment("r", "back to the baskets")
        .await
        .expect("comment");
    wait_for(&mut ve, |e| match e {
        Event::Room {
            event: RoomEvent::Comment { text, .. },
            ..
        } if text == "back to the baskets" => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_and_pins_reach_late_joiners() {
    let s = TestServer::start(|_| {}).await;
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    let (viewer, mut ve) = s.client("r", "v", Role::Viewer);
    viewer.join("r").await.expect("join");
    host.announce("r", "Flash sale in 5 minutes")
        .await
        .expect("announce");
    host.pin("r", "Rattan basket ¥59").await.expect("pin");
    wait_for(&mut ve, |e| {
        matches!(
            e,
            Event::Room {
                event: RoomEvent::Announcement { .. },
                ..
            }
        )
        .then_some(())
    })
    .await;
    wait_for(&mut ve, |e| {
        matches!(
            e,
            Event::Room {
                event: RoomEvent::Pinned { .. },
                ..
            }
        )
        .then_some(())
    })
    .await;
    let (late, _le) = s.client("r", "late", Role::Viewer);
    let reply = late.join("r").await.expect("join");
    assert_eq!(
        reply.state.pinned.map(|p| p.text),
        Some("Rattan basket ¥59".into())
    );
    host.unpin("r").await.expect("unpin");
    let (later, _le2) = s.client("r", "later", Role::Viewer);
    // The unpin is applied once the room task has seen it; allow it to flow through.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(later.join("r").await.expect("join").state.pinned, None);
    let err = viewer
        .announce("r", "I am the host now")
        .await
        .expect_err("forbidden");
    assert_eq!(err.code(), Some(ErrorCode::Forbidden.code()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_must_exist_for_viewers_and_clock_sync_works() {
    let s = TestServer::start(|_| {}).await;
    let (viewer, _ve) = s.client("*", "v", Role::Viewer);
    let err = viewer.join("nowhere").await.expect_err("no room");
    assert_eq!(err.code(), Some(ErrorCode::RoomNotFound.code()));
    let estimate = viewer.sync_clock().await.expect("clock sample");
    // Same machine, same clock: the offset is tiny and the RTT small.
    assert!(estimate.offset_ms.abs() < 50.0, "{estimate:?}");
    assert!(
        estimate.rtt_ms >= 0.0 && estimate.rtt_ms < 200.0,
        "{estimate:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_spikes_get_retry_later_not_collapse() {
    let s = TestServer::start(|c| {
        c.limits.join_rate = 1.0;
        c.limits.join_burst = 3.0;
        c.rooms.auto_create = ferry::config::AutoCreate::Any;
    })
    .await;
    let mut ok = 0;
    let mut limited = 0;
    let mut clients = Vec::new();
    for i in 0..6 {
        let (c, e) = s.client("r", &format!("v{i}"), Role::Viewer);
        match c.join("r").await {
            Ok(_) => ok += 1,
            Err(ClientError::Server(b)) if b.code == ErrorCode::JoinRateLimited.code() => {
                assert!(b.retry_after_ms.is_some());
                limited += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
        clients.push((c, e));
    }
    assert_eq!(ok, 3);
    assert_eq!(limited, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn comment_limits_are_per_user_across_connections() {
    let s = TestServer::start(|_| {}).await;
    let (host, _he) = s.client("r", "host", Role::Host);
    host.join("r").await.expect("join");
    // The same user in two tabs shares one budget of 5.
    let (tab1, _e1) = s.client("r", "ann", Role::Viewer);
    let (tab2, _e2) = s.client("r", "ann", Role::Viewer);
    tab1.join("r").await.expect("join");
    tab2.join("r").await.expect("join");
    let mut accepted = 0;
    for i in 0..10 {
        let tab = if i % 2 == 0 { &tab1 } else { &tab2 };
        if tab.comment("r", format!("hi {i}")).await.is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 5);
    // Another user is not affected.
    let (bo, _e3) = s.client("r", "bo", Role::Viewer);
    bo.join("r").await.expect("join");
    bo.comment("r", "hello").await.expect("own budget");
}

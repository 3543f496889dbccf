//! Live video through the real server: synthetic WHIP publishers and WHEP subscribers (the
//! SDK's `media` feature, str0m on real UDP sockets), the room events viewers get over the
//! WebSocket, and the WHIP/WHEP HTTP contract (RFC 9725) status by status.

mod common;

use common::{wait_for, wait_stats, wait_stream_ended, TestServer, WAIT};
use ferry::protocol::{Role, RoomEvent, StreamEndReason};
use ferry_client::media::http::{request, HttpResponse};
use ferry_client::media::{
    self, Layer, PublishOptions, Publisher, SubscribeOptions, Subscriber, SubscriberStats,
    VideoCodec,
};
use ferry_client::Event;
use std::time::{Duration, Instant};

fn base(s: &TestServer) -> String {
    format!("http://{}", s.addr())
}

fn light(tag: u32) -> PublishOptions {
    PublishOptions {
        video_bitrate_bps: 300_000,
        fps: 30,
        // Long GOP: a viewer that starts quickly was served by a keyframe request.
        keyframe_interval: Duration::from_secs(30),
        tag,
        ..PublishOptions::default()
    }
}

async fn publish(s: &TestServer, room: &str, user: &str, opts: PublishOptions) -> Publisher {
    let token = s.token(room, user, Role::Host);
    let mut p = media::publish(&base(s), room, &token, opts)
        .await
        .expect("publish");
    p.wait_connected(WAIT).await.expect("publisher connects");
    p
}

async fn subscribe(s: &TestServer, room: &str, user: &str) -> Subscriber {
    let token = s.token(room, user, Role::Viewer);
    let mut v = media::subscribe(&base(s), room, &token, SubscribeOptions::default())
        .await
        .expect("subscribe");
    v.wait_connected(WAIT).await.expect("subscriber connects");
    v
}

fn assert_clean(st: &SubscriberStats) {
    assert_eq!(st.frames_out_of_order, 0, "{st:#?}");
    assert_eq!(st.seq_gaps, 0, "no packet skipped on loopback: {st:#?}");
    assert_eq!(st.duplicates, 0, "{st:#?}");
    assert_eq!(st.packets_lost, 0, "{st:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_in_order_and_late_joiners_get_a_keyframe_fast() {
    let s = TestServer::start(|_| {}).await;
    let host = publish(&s, "live-1", "host", light(1)).await;
    let mut viewers = Vec::new();
    for i in 0..4 {
        viewers.push(subscribe(&s, "live-1", &format!("v{i}")).await);
    }
    for v in &viewers {
        let st = wait_stats(v, "30 video frames", |st| {
            st.video_frames >= 30 && st.audio_frames >= 20
        })
        .await;
        assert_clean(&st);
        assert!(st.keyframes >= 1);
        let ttff = st.time_to_first_frame.expect("first frame");
        // Joins within one keyframe_interval (1 s) share one request: at most ~1 s + setup.
        assert!(ttff < Duration::from_secs(3), "first frame after {ttff:?}");
    }
    // A late joiner, long after the publisher's only periodic keyframe: served by a
    // (merged, throttled) keyframe request.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = subscribe(&s, "live-1", "late").await;
    let st = wait_stats(&late, "late joiner's frames", |st| st.video_frames >= 10).await;
    assert_clean(&st);
    let ttff = st.time_to_first_frame.expect("first frame");
    assert!(
        ttff < Duration::from_secs(3),
        "late joiner's first frame after {ttff:?} (the GOP is 30 s)"
    );
    assert!(host.stats().keyframe_requests >= 1, "{:?}", host.stats());
    assert!(
        host.stats().keyframe_requests <= 4,
        "requests are merged and throttled: {:?}",
        host.stats()
    );
    // Metrics moved.
    let text = {
        let mut t = String::new();
        if let Some(sfu) = &s.server.state.sfu {
            sfu.metrics.render("test-node", &mut t);
        }
        t
    };
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let _ = text;
    let mut text = String::new();
    if let Some(sfu) = &s.server.state.sfu {
        sfu.metrics.render("test-node", &mut text);
    }
    assert_eq!(
        common::metric_value(&text, "ferry_sfu_publishers{"),
        1.0,
        "{text}"
    );
    assert_eq!(common::metric_value(&text, "ferry_sfu_subscribers{"), 5.0);
    assert!(common::metric_value(&text, "ferry_sfu_packets_forwarded_total{") > 500.0);
    assert!(
        common::metric_value(
            &text,
            "ferry_sfu_keyframe_requests_total{node=\"test-node\",direction=\"out\"}"
        ) >= 1.0
    );
    for v in viewers {
        assert_eq!(v.close().await.expect("delete"), 200);
    }
    assert_eq!(host.close().await.expect("delete"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_events_reach_websocket_viewers_and_a_restarted_publisher_resumes() {
    let s = TestServer::start(|c| c.sfu.viewer_linger = Duration::from_secs(20)).await;
    let room = "live-2";
    let (_ws, mut events) = s.client(room, "chat-viewer", Role::Viewer);
    let _host_ws = s.client(room, "host", Role::Host); // creates the room by joining
    _host_ws.0.join(room).await.expect("host joins");
    _ws.join(room).await.expect("viewer joins");
    let v = subscribe(&s, room, "watcher").await;

    let first = publish(&s, room, "host", light(0xA)).await;
    let by = wait_for(&mut events, |e| match e {
        Event::Room {
            event: RoomEvent::StreamStarted { by },
            ..
        } => Some(by.clone()),
        _ => None,
    })
    .await;
    assert_eq!(by.id.as_str(), "host");
    // A late WebSocket joiner learns the room is live from the join reply.
    let (late_ws, _late_events) = s.client(room, "late-chat", Role::Viewer);
    let state = late_ws.join(room).await.expect("late join");
    assert!(state.state.live, "join reply says live");
    wait_stats(&v, "frames from the first session", |st| {
        st.video_frames >= 20
    })
    .await;

    // The host leaves: viewers are told, the WHEP session stays.
    assert_eq!(first.close().await.expect("delete"), 200);
    assert_eq!(wait_stream_ended(&mut events).await, StreamEndReason::Left);
    let (after_ws, _) = s.client(room, "after-chat", Role::Viewer);
    assert!(!after_ws.join(room).await.expect("join").state.live);
    // Packets already on their way land; then nothing more comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let frames_before = v.stats().video_frames;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(v.stats().video_frames, frames_before, "media stopped");
    assert_eq!(v.state(), media::PeerState::Connected);

    // The host comes back (new session, new sequence numbers): the same viewer resumes.
    let second = publish(&s, room, "host", light(0xB)).await;
    wait_for(&mut events, |e| {
        matches!(
            e,
            Event::Room {
                event: RoomEvent::StreamStarted { .. },
                ..
            }
        )
        .then_some(())
    })
    .await;
    let st = wait_stats(&v, "frames from the second session", |st| {
        st.publishers.contains(&0xB) && st.video_frames >= frames_before + 20
    })
    .await;
    assert_eq!(st.publishers, vec![0xA, 0xB]);
    // Numbers continue across the restart: no gap, nothing out of order.
    assert_clean(&st);
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_viewers_get_one_layer_chosen_from_their_bandwidth() {
    // Without bandwidth estimation a viewer stays on what the initial budget fits.
    let s = TestServer::start(|c| {
        c.sfu.bwe = false;
        c.sfu.initial_bitrate_bps = 400_000;
    })
    .await;
    let opts = PublishOptions {
        simulcast: vec![
            Layer {
                rid: "q".into(),
                bitrate_bps: 150_000,
            },
            Layer {
                rid: "h".into(),
                bitrate_bps: 600_000,
            },
            Layer {
                rid: "f".into(),
                bitrate_bps: 1_500_000,
            },
        ],
        fps: 20,
        ..light(7)
    };
    let _host = publish(&s, "live-3", "host", opts).await;
    let token = s.token("live-3", "v", Role::Viewer);
    let mut v = media::subscribe(
        &base(&s),
        "live-3",
        &token,
        SubscribeOptions {
            keep_frames: 256,
            ..SubscribeOptions::default()
        },
    )
    .await
    .expect("subscribe");
    v.wait_connected(WAIT).await.expect("connects");
    let mut layers = Vec::new();
    let deadline = Instant::now() + WAIT;
    while layers.len() < 40 {
        let f = tokio::time::timeout_at(deadline.into(), v.next_frame())
            .await
            .expect("frames in time")
            .expect("open");
        if f.kind == media::Kind::Video {
            layers.push(f.layer);
        }
    }
    // Layer rates are measured first (a viewer may start on any layer before that), then
    // it settles on the lowest layer (150 kbit/s fits 85% of 400 kbit/s; 600 does not).
    assert_eq!(layers.last(), Some(&0), "{layers:?}");
    let st = v.stats();
    assert_eq!(st.frames_out_of_order, 0, "{st:#?}");
    assert_eq!(
        st.seq_gaps, 0,
        "a layer switch keeps numbers contiguous: {st:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_publishers_are_forwarded_too() {
    let s = TestServer::start(|_| {}).await;
    let _host = publish(
        &s,
        "live-4",
        "host",
        PublishOptions {
            codec: VideoCodec::H264,
            ..light(3)
        },
    )
    .await;
    let v = subscribe(&s, "live-4", "v").await;
    let st = wait_stats(&v, "H.264 frames", |st| st.video_frames >= 20).await;
    assert_clean(&st);
    assert!(st.keyframes >= 1 && st.keyframe_starts >= 1);
}

// ---------------------------------------------------------------------------------------
// The WHIP/WHEP HTTP contract.

/// A minimal WHIP offer (str0m-made): audio + video, sendonly.
async fn offer_sdp(send: bool) -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::Rtc::builder().build(Instant::now());
    let c = str0m::Candidate::host("127.0.0.1:9999".parse().expect("addr"), "udp").expect("cand");
    rtc.add_local_candidate(c);
    let mut api = rtc.sdp_api();
    let dir = if send {
        Direction::SendOnly
    } else {
        Direction::RecvOnly
    };
    api.add_media(MediaKind::Video, dir, None, None, None);
    api.add_media(MediaKind::Audio, dir, None, None, None);
    let (offer, _) = api.apply().expect("offer");
    offer.to_sdp_string()
}

async fn call(
    s: &TestServer,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> HttpResponse {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = extra.to_vec();
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    request(&base(s), method, path, &headers, body.as_bytes())
        .await
        .expect("http")
}

fn error_code(r: &HttpResponse) -> String {
    serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_follow_the_http_contract() {
    let s = TestServer::start(|c| {
        c.sfu.ice_servers = vec![
            "stun:stun.example.test:3478".into(),
            "turn:turn.example.test".into(),
        ];
        c.sfu.ice_username = "u".into();
        c.sfu.ice_credential = "p".into();
    })
    .await;
    let host = s.token("r1", "host", Role::Host);
    let host2 = s.token("r1", "other-host", Role::Host);
    let viewer = s.token("r1", "viewer", Role::Viewer);
    let elsewhere = s.token("r2", "host", Role::Host);
    let sdp_ct = [("Content-Type", "application/sdp")];
    let offer = offer_sdp(true).await;

    // Preflight: no auth, CORS for any origin, what the endpoint accepts.
    let r = call(
        &s,
        "OPTIONS",
        "/whip/r1",
        None,
        &[("Origin", "https://shop.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r
        .header("access-control-allow-methods")
        .is_some_and(|m| m.contains("PATCH")));
    assert!(r
        .header("access-control-allow-headers")
        .is_some_and(|h| h.contains("If-Match")));
    assert!(r
        .header("access-control-expose-headers")
        .is_some_and(|h| h.contains("Location") && h.contains("ETag")));
    assert_eq!(r.header("accept-post"), Some("application/sdp"));

    // Authentication and authorization.
    let r = call(&s, "POST", "/whip/r1", None, &sdp_ct, &offer).await;
    assert_eq!((r.status, error_code(&r).as_str()), (401, "unauthorized"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("*"),
        "errors carry CORS too"
    );
    let r = call(&s, "POST", "/whip/r1", Some("garbage"), &sdp_ct, &offer).await;
    assert_eq!(r.status, 401);
    let r = call(&s, "POST", "/whip/r1", Some(&viewer), &sdp_ct, &offer).await;
    assert_eq!((r.status, error_code(&r).as_str()), (403, "forbidden"));
    let r = call(&s, "POST", "/whip/r1", Some(&elsewhere), &sdp_ct, &offer).await;
    assert_eq!(r.status, 403);
    // Content type, bad SDP, wrong direction.
    let r = call(
        &s,
        "POST",
        "/whip/r1",
        Some(&host),
        &[("Content-Type", "application/json")],
        &offer,
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (415, "unsupported_media_type")
    );
    let r = call(
        &s,
        "POST",
        "/whip/r1",
        Some(&host),
        &sdp_ct,
        "v=0\r\nm=video 9 nonsense\r\n",
    )
    .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "bad_sdp"));
    let r = call(
        &s,
        "POST",
        "/whip/r1",
        Some(&host),
        &sdp_ct,
        &offer_sdp(false).await,
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (400, "bad_sdp"),
        "a recvonly offer cannot publish"
    );
    let r = call(&s, "GET", "/whip/r1", Some(&host), &[], "").await;
    assert_eq!(r.status, 405);
    // WHEP into a room that does not exist yet.
    let r = call(
        &s,
        "POST",
        "/whep/nowhere",
        Some(&s.token("nowhere", "v", Role::Viewer)),
        &sdp_ct,
        &offer_sdp(false).await,
    )
    .await;
    assert_eq!((r.status, error_code(&r).as_str()), (404, "room_not_found"));

    // A real publisher: 201 with the answer, Location, ETag, Link.
    let r = call(&s, "POST", "/whip/r1", Some(&host), &sdp_ct, &offer).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/sdp"));
    assert!(r.text().starts_with("v=0"));
    assert!(r.text().contains("a=ice-lite"));
    let location = r.header("location").expect("location").to_owned();
    assert!(location.starts_with("/whip/r1/"), "{location}");
    let etag = r.header("etag").expect("etag").to_owned();
    let links: Vec<&str> = r.headers_named("link").collect();
    assert_eq!(links.len(), 2, "{links:?}");
    assert!(links[0].starts_with("<stun:stun.example.test:3478>; rel=\"ice-server\""));
    assert!(links[1].contains("username=\"u\"") && links[1].contains("credential=\"p\""));
    assert_eq!(
        r.header("accept-patch"),
        Some("application/trickle-ice-sdpfrag")
    );

    // Another host user is refused while the first publishes.
    let r = call(
        &s,
        "POST",
        "/whip/r1",
        Some(&host2),
        &sdp_ct,
        &offer_sdp(true).await,
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (409, "already_publishing")
    );

    // PATCH rules.
    let frag_ct = [("Content-Type", "application/trickle-ice-sdpfrag")];
    let ufrag = r_ufrag(&offer);
    let trickle = format!("a=ice-ufrag:{ufrag}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9998 typ host\r\na=end-of-candidates\r\n");
    let r = call(&s, "PATCH", &location, Some(&host), &frag_ct, &trickle).await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (428, "precondition_required")
    );
    fn with_etag(e: &str) -> Vec<(&'static str, &str)> {
        vec![
            ("Content-Type", "application/trickle-ice-sdpfrag"),
            ("If-Match", e),
        ]
    }
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &with_etag("\"nope\""),
        &trickle,
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (412, "precondition_failed")
    );
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &[("Content-Type", "application/sdp"), ("If-Match", &etag)],
        &trickle,
    )
    .await;
    assert_eq!(r.status, 415);
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &with_etag(&etag),
        "not a fragment",
    )
    .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "bad_fragment"));
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host2),
        &with_etag(&etag),
        &trickle,
    )
    .await;
    assert_eq!(r.status, 403, "another user's session");
    let r = call(&s, "PATCH", &location, None, &with_etag(&etag), &trickle).await;
    assert_eq!(r.status, 401);
    let r = call(
        &s,
        "PATCH",
        "/whip/r1/0000",
        Some(&host),
        &with_etag(&etag),
        &trickle,
    )
    .await;
    assert_eq!(
        (r.status, error_code(&r).as_str()),
        (404, "session_not_found")
    );
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &with_etag(&etag),
        &trickle,
    )
    .await;
    assert_eq!(r.status, 204, "trickle: {}", r.text());
    // ICE restart: new credentials, If-Match: *; answered with ours and a new ETag.
    let restart = "a=ice-ufrag:newfrag\r\na=ice-pwd:newpasswordnewpassword12\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 9997 typ host\r\n";
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &with_etag("*"),
        restart,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/trickle-ice-sdpfrag")
    );
    let new_etag = r.header("etag").expect("new etag").to_owned();
    assert_ne!(new_etag, etag);
    let body = r.text();
    assert!(
        body.contains("a=ice-ufrag:")
            && body.contains("a=ice-pwd:")
            && body.contains("a=candidate:"),
        "{body}"
    );
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &with_etag(&etag),
        "a=ice-ufrag:newfrag\r\n",
    )
    .await;
    assert_eq!(r.status, 412, "the old ETag is stale after a restart");
    let r = call(
        &s,
        "PATCH",
        &location,
        Some(&host),
        &with_etag(&new_etag),
        "a=ice-ufrag:newfrag\r\n",
    )
    .await;
    assert_eq!(r.status, 204);

    // OPTIONS on the session; DELETE ends it once.
    let r = call(&s, "OPTIONS", &location, None, &[], "").await;
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("accept-patch"),
        Some("application/trickle-ice-sdpfrag")
    );
    let r = call(&s, "DELETE", &location, Some(&host2), &[], "").await;
    assert_eq!(r.status, 403);
    let r = call(&s, "DELETE", &location, Some(&host), &[], "").await;
    assert_eq!(r.status, 200);
    let r = call(&s, "DELETE", &location, Some(&host), &[], "").await;
    assert_eq!(r.status, 404);
    // The room is free again.
    let r = call(
        &s,
        "POST",
        "/whip/r1",
        Some(&host2),
        &sdp_ct,
        &offer_sdp(true).await,
    )
    .await;
    assert_eq!(r.status, 201);

    // WHEP: any role the token allows in the room; a sendonly offer cannot play.
    let r = call(
        &s,
        "POST",
        "/whep/r1",
        Some(&viewer),
        &sdp_ct,
        &offer_sdp(false).await,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(r
        .header("location")
        .expect("location")
        .starts_with("/whep/r1/"));
    let r = call(
        &s,
        "POST",
        "/whep/r1",
        Some(&viewer),
        &sdp_ct,
        &offer_sdp(true).await,
    )
    .await;
    assert_eq!((r.status, error_code(&r).as_str()), (400, "bad_sdp"));
}

fn r_ufrag(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=ice-ufrag:"))
        .expect("ufrag")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn co_hosts_when_configured_and_session_limits() {
    let s = TestServer::start(|c| {
        c.sfu.max_publishers_per_room = 2;
        c.sfu.publisher_roles = vec!["host".into(), "moderator".into()];
        c.sfu.max_sessions = 3;
    })
    .await;
    let a = publish(&s, "co", "host", light(1)).await;
    let token = s.token("co", "mod", Role::Moderator);
    let b = media::publish(&base(&s), "co", &token, light(2))
        .await
        .expect("a moderator co-hosts");
    let v = subscribe(&s, "co", "v").await;
    // Fourth session: over sfu.max_sessions.
    let token = s.token("co", "v2", Role::Viewer);
    match media::subscribe(&base(&s), "co", &token, SubscribeOptions::default()).await {
        Err(media::MediaError::Refused { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("sfu_full"), "{body}");
        }
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    // The viewer's one video m-line watches the first host.
    let st = wait_stats(&v, "frames", |st| st.video_frames >= 10).await;
    assert_eq!(st.publishers, vec![1]);
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_video_sessions() {
    let s = TestServer::start(|_| {}).await;
    let _host = publish(&s, "drain", "host", light(1)).await;
    let mut v = subscribe(&s, "drain", "v").await;
    wait_stats(&v, "frames", |st| st.video_frames >= 5).await;
    let TestServer { server, .. } = s;
    server.drain().await;
    v.wait_closed(WAIT)
        .await
        .expect("viewer's session closed by the server");
}

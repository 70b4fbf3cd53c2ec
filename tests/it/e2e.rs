//! End to end on loopback: real WebRTC peers publish colours and tones; the test checks what
//! each one sees and hears.

use crate::common::client::{Client, ClientOptions};
use crate::common::webrtcbin::WebrtcbinClient;
use crate::common::{Received, TestServer, close_to, init_logging, test_config, tone_db, wait_for};
use std::time::{Duration, Instant};

pub(crate) const RED: (u32, [u8; 3]) = (0xffff0000, [255, 0, 0]);
pub(crate) const GREEN: (u32, [u8; 3]) = (0xff00ff00, [0, 255, 0]);
pub(crate) const BLUE: (u32, [u8; 3]) = (0xff0000ff, [0, 0, 255]);
pub(crate) const TONES: [f32; 3] = [500.0, 800.0, 1300.0];
/// How far a decoded colour may drift from the sent one (two lossy encodes, I420 round trips).
const COLOUR_TOLERANCE: f32 = 48.0;
/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(30);

/// Every participant's colour (by WHIP `Location`) covers its tile in what `viewer` decodes.
pub(crate) async fn assert_tiles(
    server: &TestServer,
    room: &str,
    viewer: &Received,
    who: &[(&str, [u8; 3])],
) {
    let mut last = String::new();
    for _ in 0..50 {
        let frame = viewer.frame().expect("a decoded frame");
        let mut ok = frame.width == 640 && frame.height == 360;
        last = format!("frame {}x{}", frame.width, frame.height);
        for (location, rgb) in who {
            let tile = server.tile_of(room, location).await.expect("tile");
            let mean = frame.mean(tile);
            last.push_str(&format!("; tile {tile:?} mean {mean:?} want {rgb:?}"));
            ok &= close_to(mean, *rgb, COLOUR_TOLERANCE);
        }
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("colours not in their tiles: {last}");
}

/// The listener hears each of `present` and not `absent` (at least 20 dB below the others).
pub(crate) fn assert_hears(who: &str, c: &Received, present: &[f32], absent: &[f32]) {
    let audio = c.recent_audio(48_000);
    assert!(audio.len() >= 24_000, "{who}: only {} samples", audio.len());
    let weakest_present = present
        .iter()
        .map(|f| tone_db(&audio, *f))
        .fold(f32::INFINITY, f32::min);
    assert!(
        weakest_present > -30.0,
        "{who}: a tone is missing ({weakest_present} dB)"
    );
    for f in absent {
        let own = tone_db(&audio, *f);
        assert!(
            weakest_present - own >= 20.0,
            "{who}: {f} Hz at {own} dB, only {} dB under the others",
            weakest_present - own
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_participants_see_every_tile_and_hear_everyone_but_themselves() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "three";
    let a = Client::join(&base, room, ClientOptions::participant(RED.0, TONES[0])).await;
    let b = Client::join(&base, room, ClientOptions::participant(GREEN.0, TONES[1])).await;
    // The third participant runs GStreamer's webrtcbin: another WebRTC stack.
    let c = WebrtcbinClient::join(&base, room, BLUE.0, TONES[2]).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;

    let all: [(&str, &Received); 4] = [
        ("a", &a.received),
        ("b", &b.received),
        ("c (webrtcbin)", &c.received),
        ("viewer", &viewer.received),
    ];
    for (name, r) in all {
        wait_for(&format!("{name} decodes the composite"), LIMIT, || async {
            r.frame_count() > 30 && r.audio_packet_count() > 100
        })
        .await;
    }
    // Let every tile settle on its colour, then look and listen.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let everyone = [
        (a.location.as_str(), RED.1),
        (b.location.as_str(), GREEN.1),
        (c.location.as_str(), BLUE.1),
    ];
    for (_, r) in all {
        assert_tiles(&server, room, r, &everyone).await;
    }
    assert_hears("a", &a.received, &[TONES[1], TONES[2]], &[TONES[0]]);
    assert_hears("b", &b.received, &[TONES[0], TONES[2]], &[TONES[1]]);
    assert_hears("c", &c.received, &[TONES[0], TONES[1]], &[TONES[2]]);
    assert_hears("viewer", &viewer.received, &TONES, &[]);

    // B leaves: the grid re-lays out for two, and the others never stall.
    let left_at = Instant::now();
    assert_eq!(b.leave().await, 200);
    wait_for("two tiles", LIMIT, || async {
        server.room_info(room).await.is_some_and(|i| {
            i["participants"]
                .as_array()
                .is_some_and(|p| p.iter().filter(|p| !p["tile"].is_null()).count() == 2)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let two = [(a.location.as_str(), RED.1), (c.location.as_str(), BLUE.1)];
    for r in [&a.received, &c.received, &viewer.received] {
        assert_tiles(&server, room, r, &two).await;
        let (video_gap, audio_gap) = r.max_gaps(left_at);
        assert!(
            video_gap < Duration::from_secs(1),
            "video stalled {video_gap:?}"
        );
        assert!(
            audio_gap < Duration::from_secs(1),
            "audio stalled {audio_gap:?}"
        );
    }
    assert_hears(
        "a after b left",
        &a.received,
        &[TONES[2]],
        &[TONES[0], TONES[1]],
    );

    // Everyone leaves: the room, its pipeline, its tasks and its ports are gone.
    assert_eq!(c.leave().await, 200);
    for cl in [a, viewer] {
        assert_eq!(cl.leave().await, 200);
    }
    let rooms = server.state.rooms.clone();
    wait_for("room teardown", LIMIT, || async {
        rooms.room_count() == 0 && rooms.live_rooms() == 0 && rooms.peers().sessions_open() == 0
    })
    .await;
    assert_eq!(
        mixdown::mixer::video::live_pipelines(),
        0,
        "a pipeline is left"
    );
    // Each encoder's pacing thread ends once its pipeline is freed.
    wait_for("pacing threads end", LIMIT, || async {
        mixdown::mixer::video::live_pacers() == 0
    })
    .await;
    // The shared media sockets stay (they serve the next room); nothing else is bound.
    let media = server.state.rooms.peers().media_addrs();
    assert_eq!(media.len(), 1, "one media address: {media:?}");
    assert_eq!(
        crate::common::udp_sockets_on_port(media[0].port()),
        server.state.rooms.config().rtc.udp_shards(),
        "one socket per shard on the media port"
    );

    // A new room on the same server works.
    let d = Client::join(
        &base,
        "again",
        ClientOptions::participant(GREEN.0, TONES[1]),
    )
    .await;
    wait_for("the new room mixes", LIMIT, || async {
        d.received.frame_count() > 10
    })
    .await;
    assert_tiles(
        &server,
        "again",
        &d.received,
        &[(d.location.as_str(), GREEN.1)],
    )
    .await;
    d.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h264_and_vp8_senders_share_a_room_and_an_h264_only_receiver_gets_h264() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "codecs";
    let mut h264_only = ClientOptions::participant(GREEN.0, TONES[0]);
    h264_only.send_codec = mixdown::media::VideoCodec::H264;
    h264_only.codecs = vec![mixdown::media::VideoCodec::H264];
    let x = Client::join(&base, room, h264_only).await;
    let y = Client::join(&base, room, ClientOptions::participant(RED.0, TONES[1])).await;
    for r in [&x.received, &y.received] {
        wait_for("both decode", LIMIT, || async {
            r.frame_count() > 30 && r.audio_packet_count() > 50
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        x.received.video_codec.lock().unwrap().as_deref(),
        Some("video/H264"),
        "the H.264-only receiver must get H.264"
    );
    assert_eq!(
        y.received.video_codec.lock().unwrap().as_deref(),
        Some("video/VP8")
    );
    let both = [(x.location.as_str(), GREEN.1), (y.location.as_str(), RED.1)];
    assert_tiles(&server, room, &x.received, &both).await;
    assert_tiles(&server, room, &y.received, &both).await;
    assert_hears("h264 receiver", &x.received, &[TONES[1]], &[TONES[0]]);
    let info = server.room_info(room).await.unwrap();
    assert_eq!(info["encoders"].as_array().unwrap().len(), 2, "{info}");
    x.leave().await;
    y.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_participant_is_removed_and_the_mix_keeps_going() {
    init_logging();
    let mut config = test_config();
    config.rtc.ice_timeout_s = 4;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "vanish";
    let a = Client::join(&base, room, ClientOptions::participant(RED.0, TONES[0])).await;
    let b = Client::join(&base, room, ClientOptions::participant(GREEN.0, TONES[1])).await;
    wait_for("a decodes", LIMIT, || async {
        a.received.frame_count() > 30
    })
    .await;
    let gone_at = Instant::now();
    b.close().await; // no DELETE: like a closed tab
    wait_for("b removed", Duration::from_secs(15), || async {
        server
            .room_info(room)
            .await
            .is_some_and(|i| i["participants"].as_array().is_some_and(|p| p.len() == 1))
    })
    .await;
    let removed_after = gone_at.elapsed();
    tracing::info!(?removed_after, "vanished participant removed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (video_gap, audio_gap) = a.received.max_gaps(gone_at);
    assert!(
        video_gap < Duration::from_secs(1),
        "video stalled {video_gap:?}"
    );
    assert!(
        audio_gap < Duration::from_secs(1),
        "audio stalled {audio_gap:?}"
    );
    assert_tiles(&server, room, &a.received, &[(a.location.as_str(), RED.1)]).await;
    a.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_only_and_video_only_participants() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "partial";
    let mut audio_only = ClientOptions::participant(0, TONES[0]);
    audio_only.colour = None;
    let mut video_only = ClientOptions::participant(RED.0, 0.0);
    video_only.tone_hz = None;
    let a = Client::join(&base, room, audio_only).await;
    let v = Client::join(&base, room, video_only).await;
    for r in [&a.received, &v.received] {
        wait_for("both decode video", LIMIT, || async {
            r.frame_count() > 30
        })
        .await;
    }
    wait_for("the video-only participant hears audio", LIMIT, || async {
        v.received.audio_packet_count() > 100
    })
    .await;
    // The audio-only participant has a visible placeholder tile (grey-blue, not black).
    const PLACEHOLDER: [u8; 3] = [0x3a, 0x3f, 0x4b];
    let tiles = [
        (a.location.as_str(), PLACEHOLDER),
        (v.location.as_str(), RED.1),
    ];
    assert_tiles(&server, room, &v.received, &tiles).await;
    assert_tiles(&server, room, &a.received, &tiles).await;
    assert_hears("video-only", &v.received, &[TONES[0]], &[]);
    a.leave().await;
    v.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_input_never_breaks_the_mix_for_the_others() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "corrupt";
    let good = Client::join(&base, room, ClientOptions::participant(RED.0, TONES[0])).await;
    let mut bad = ClientOptions::participant(GREEN.0, TONES[1]);
    bad.corrupt_video = true;
    let bad = Client::join(&base, room, bad).await;
    // OBS-style: publishes only, receives nothing.
    let mut publisher = ClientOptions::participant(BLUE.0, TONES[2]);
    publisher.receive = false;
    let publisher = Client::join(&base, room, publisher).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    let t = Instant::now();
    while !(viewer.received.frame_count() > 30 && viewer.received.audio_packet_count() > 100) {
        // What the viewer got, and what the room says, if it never gets there.
        if t.elapsed() >= LIMIT {
            let rtp_frames = viewer.received.rtp_frames.lock().unwrap().len();
            let info = server.room_info(room).await;
            panic!(
                "the viewer decodes: {} frames, {rtp_frames} RTP frames, {} audio packets; room: {info:?}",
                viewer.received.frame_count(),
                viewer.received.audio_packet_count(),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let watch_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let healthy = [
        (good.location.as_str(), RED.1),
        (publisher.location.as_str(), BLUE.1),
    ];
    assert_tiles(&server, room, &viewer.received, &healthy).await;
    assert_tiles(&server, room, &good.received, &healthy).await;
    let (video_gap, audio_gap) = viewer.received.max_gaps(watch_from);
    assert!(
        video_gap < Duration::from_millis(500),
        "video stalled {video_gap:?}"
    );
    assert!(
        audio_gap < Duration::from_millis(500),
        "audio stalled {audio_gap:?}"
    );
    assert_hears("good", &good.received, &[TONES[1], TONES[2]], &[TONES[0]]);
    assert_eq!(
        publisher.received.frame_count() + publisher.received.audio_packet_count(),
        0,
        "a send-only publisher receives nothing"
    );
    for c in [good, bad, publisher, viewer] {
        assert_eq!(c.leave().await, 200);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_receiver_gets_a_keyframe_on_demand() {
    init_logging();
    let mut config = test_config();
    // Periodic keyframes only every minute: a late joiner depends on a forced one.
    config.video.keyframe_interval_s = 60;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "late";
    let a = Client::join(&base, room, ClientOptions::participant(RED.0, TONES[0])).await;
    wait_for("a decodes", LIMIT, || async {
        a.received.frame_count() > 30
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let joined = Instant::now();
    let late = Client::join(&base, room, ClientOptions::viewer()).await;
    wait_for(
        "the late viewer decodes",
        Duration::from_secs(10),
        || async { late.received.frame_count() > 0 },
    )
    .await;
    tracing::info!(first_frame_after = ?joined.elapsed(), "late viewer");
    assert_tiles(
        &server,
        room,
        &late.received,
        &[(a.location.as_str(), RED.1)],
    )
    .await;
    a.leave().await;
    late.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishers_before_any_viewer_are_seen_once_one_joins() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "dormant";
    // OBS-style publishers: nobody receives video yet, so the room does not compose.
    let mut first = ClientOptions::participant(RED.0, TONES[0]);
    first.receive = false;
    let first = Client::join(&base, room, first).await;
    let mut second = ClientOptions::participant(BLUE.0, TONES[1]);
    second.receive = false;
    let second = Client::join(&base, room, second).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    wait_for("the viewer decodes", LIMIT, || async {
        viewer.received.frame_count() > 30 && viewer.received.audio_packet_count() > 50
    })
    .await;
    let tiles = [
        (first.location.as_str(), RED.1),
        (second.location.as_str(), BLUE.1),
    ];
    assert_tiles(&server, room, &viewer.received, &tiles).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_hears("viewer", &viewer.received, &[TONES[0], TONES[1]], &[]);
    for c in [first, second, viewer] {
        c.leave().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_as_the_last_one_leaves_opens_the_room_again() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "revolving";
    // Each join's POST goes out together with the DELETE of the room's only participant:
    // when the DELETE lands first, the join reaches a room that is closing. It must land in
    // a fresh room, never be refused.
    let viewer = || ClientOptions {
        decode: false,
        ..ClientOptions::viewer()
    };
    let url = server.url(&format!("/whep/{room}"));
    let mut refused = Vec::new();
    let mut last = Client::join(&base, room, viewer()).await;
    for i in 0..60 {
        let (prev, base_c, url_c) = (last.location.clone(), base.clone(), url.clone());
        let joined = Client::connect(&base, viewer(), async move |offer: String| {
            let (left, joined) = tokio::join!(
                crate::common::client::delete_session(&base_c, &prev),
                crate::common::client::whip_exchange(&url_c, offer)
            );
            assert_eq!(left, 200, "the previous viewer leaves");
            joined
        })
        .await;
        last.close().await;
        last = match joined {
            Ok(c) => c,
            Err(e) => {
                refused.push(format!("{i}: {e}"));
                Client::join(&base, room, viewer()).await
            }
        };
    }
    assert!(refused.is_empty(), "joins refused: {refused:?}");
    last.leave().await;
    server.stop().await;
}

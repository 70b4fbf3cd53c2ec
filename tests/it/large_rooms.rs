//! Large rooms: only the visible publishers are decoded, a pin shows a hidden one, only the
//! loudest voices are mixed (and decoded), and the layout changes at runtime without
//! renegotiation. Checked as a person would: colours in tiles, tones in what each one hears.

use crate::common::client::{Client, ClientOptions};
use crate::common::{Received, TestServer, close_to, init_logging, test_config, tone_db, wait_for};
use crate::e2e::{BLUE, GREEN, RED, assert_tiles};
use mixdown_bench::media::load_or_generate;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(40);

fn session_of(location: &str) -> String {
    mixdown::ids::SessionId::public_in_location(location)
        .unwrap_or_default()
        .to_owned()
}

fn participant_info<'a>(info: &'a Value, location: &str) -> Option<&'a Value> {
    let s = session_of(location);
    info["participants"]
        .as_array()?
        .iter()
        .find(|p| p["session"] == s.as_str())
}

async fn put_layout(server: &TestServer, room: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(server.url(&format!("/api/rooms/{room}/layout")))
        .json(&body)
        .send()
        .await
        .expect("PUT layout");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn tiles_composed(info: &Value) -> usize {
    info["participants"]
        .as_array()
        .map_or(0, |p| p.iter().filter(|p| !p["tile"].is_null()).count())
}

/// Whether `frame`'s mean colour in `tile` is `rgb`.
fn shows(r: &Received, tile: [u32; 4], rgb: [u8; 3]) -> bool {
    r.frame().is_some_and(|f| close_to(f.mean(tile), rgb, 48.0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_visible_publishers_are_decoded_and_a_pin_shows_a_hidden_one() {
    init_logging();
    let mut config = test_config();
    config.video.max_tiles = 9;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "hundred";
    let cache = std::env::temp_dir().join("mixdown-bench-smoke-cache");
    let clips = Arc::new(load_or_generate(&cache, 6).expect("clips generate"));
    // 23 synthetic publishers (the benchmark's generator: a VP8 clip and a quiet microphone
    // sending the audio-level extension), send-only.
    let mut crowd = Vec::new();
    for _ in 0..23 {
        let mut o = ClientOptions::participant(0, 0.0);
        o.clips = Some(clips.clone());
        o.silent = true;
        o.receive = false;
        o.decode = false;
        crowd.push(Client::join(&base, room, o).await);
    }
    // The 24th joins last, so join order leaves it off screen: a red camera.
    let mut o = ClientOptions::participant(RED.0, 440.0);
    o.tone_hz = None;
    o.receive = false;
    let red = Client::join(&base, room, o).await;
    let probes = [
        Client::join(&base, room, ClientOptions::viewer()).await,
        Client::join(&base, room, ClientOptions::viewer()).await,
    ];
    for p in &probes {
        wait_for("the probe decodes the composite", LIMIT, || async {
            p.received.frame_count() > 30
        })
        .await;
    }
    wait_for("every publisher's video to arrive", LIMIT, || async {
        server.room_info(room).await.is_some_and(|i| {
            i["participants"].as_array().is_some_and(|ps| {
                ps.iter()
                    .filter(|p| p["role"] == "whip")
                    .all(|p| !p["video_packets"].is_null())
            })
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = server.room_info(room).await.expect("room info");
    assert_eq!(tiles_composed(&info), 9, "nine tiles composed");
    assert_eq!(info["layout"]["tiles"].as_array().map(Vec::len), Some(9));
    assert_eq!(info["video_decoders"], 9, "nine video decoders run");
    let publishers: Vec<&Value> = info["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["role"] == "whip")
        .collect();
    assert_eq!(publishers.len(), 24);
    let (visible, hidden): (Vec<&Value>, Vec<&Value>) =
        publishers.iter().partition(|p| p["visible"] == true);
    assert_eq!(visible.len(), 9);
    for p in &visible {
        assert!(
            p["video_packets"]["decoded"].as_u64() > Some(0),
            "a visible publisher is decoded: {p}"
        );
    }
    for p in &hidden {
        assert_eq!(
            p["video_packets"]["decoded"], 0,
            "a hidden publisher's packets never reach a decoder: {p}"
        );
        assert!(p["video_packets"]["dropped"].as_u64() > Some(0), "{p}");
    }
    let red_info = participant_info(&info, &red.location).expect("red listed");
    assert_eq!(red_info["visible"], false, "the last to join is off screen");

    // Pin it: its colour shows in a tile, and it is still nine tiles and nine decoders.
    let pinned_at = Instant::now();
    let (status, layout) = put_layout(
        &server,
        room,
        serde_json::json!({ "pin": [session_of(&red.location)] }),
    )
    .await;
    assert_eq!(status, 200, "{layout}");
    assert_eq!(layout["pin"][0], session_of(&red.location).as_str());
    let tile = server
        .tile_of(room, &red.location)
        .await
        .expect("a pinned participant has a tile");
    wait_for("red in its tile for both probes", LIMIT, || async {
        probes.iter().all(|p| shows(&p.received, tile, RED.1))
    })
    .await;
    let shown_after = pinned_at.elapsed();
    println!("pin → colour in the tile: {shown_after:?}");
    assert!(
        shown_after < Duration::from_secs(3),
        "the pinned participant took {shown_after:?} to show"
    );
    let info = server.room_info(room).await.expect("room info");
    assert_eq!(tiles_composed(&info), 9);
    assert_eq!(info["video_decoders"], 9);

    for c in crowd.into_iter().chain([red]).chain(probes) {
        c.close().await;
    }
    server.stop().await;
}

/// Six tones, each its own loudness: 400 Hz loudest … 1750 Hz quietest.
const SIX_TONES: [f32; 6] = [400.0, 600.0, 850.0, 1100.0, 1400.0, 1750.0];
const SIX_AMPLITUDES: [f32; 6] = [0.4, 0.3, 0.2, 0.1, 0.05, 0.02];

/// What `who` hears: every tone of `present` within 15 dB of the loudest, none of `absent`
/// (each at least 20 dB under the weakest present).
fn assert_hears_only(who: &str, r: &Received, present: &[f32], absent: &[f32]) {
    let audio = r.recent_audio(48_000);
    assert!(audio.len() >= 24_000, "{who}: only {} samples", audio.len());
    let weakest = present
        .iter()
        .map(|f| tone_db(&audio, *f))
        .fold(f32::INFINITY, f32::min);
    assert!(weakest > -35.0, "{who}: a tone is missing ({weakest} dB)");
    for f in absent {
        let db = tone_db(&audio, *f);
        assert!(
            weakest - db >= 20.0,
            "{who}: {f} Hz at {db} dB, only {} dB under the weakest present",
            weakest - db
        );
    }
}

/// Participant i (sending `SIX_TONES[i]`) hears each of `loud` but its own, and none of the
/// other tones.
fn everyone_hears_only(people: &[Client], loud: &[f32], when: &str) {
    for (p, own) in people.iter().zip(SIX_TONES) {
        let present: Vec<f32> = loud.iter().copied().filter(|f| *f != own).collect();
        let absent: Vec<f32> = SIX_TONES
            .iter()
            .copied()
            .filter(|f| !present.contains(f))
            .collect();
        assert_hears_only(&format!("{own} Hz{when}"), &p.received, &present, &absent);
    }
}

/// How far the high-frequency energy of any 5 ms of `samples` stands out from the 100 ms
/// on either side of it. A click is a step, broadband, and stands far out of its
/// neighbourhood; a voice fading in or out raises the energy gradually, which its
/// neighbourhood shares. The fourth difference is the high-pass: it passes 6 kHz about 120
/// times more than the loudest tone here (1750 Hz).
fn click_ratio(samples: &[f32]) -> f32 {
    let second =
        |x: &[f32]| -> Vec<f32> { x.windows(3).map(|w| w[2] - 2.0 * w[1] + w[0]).collect() };
    let hf = second(&second(samples));
    let energy: Vec<f32> = hf
        .chunks_exact(240)
        .map(|c| c.iter().map(|x| x * x).sum())
        .collect();
    let mut worst = 0.0f32;
    for i in 0..energy.len() {
        let mut around: Vec<f32> = energy[i.saturating_sub(20)..i]
            .iter()
            .chain(energy.get(i + 1..(i + 21).min(energy.len())).unwrap_or(&[]))
            .copied()
            .collect();
        if around.is_empty() {
            continue;
        }
        around.sort_by(f32::total_cmp);
        worst = worst.max(energy[i] / around[around.len() / 2].max(1e-12));
    }
    worst
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_loudest_are_heard_and_a_louder_fourth_replaces_the_quietest() {
    init_logging();
    let mut config = test_config();
    config.audio.max_speakers = 3;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "six-voices";
    let mut people = Vec::new();
    let mut options = Vec::new();
    for (hz, a) in SIX_TONES.iter().zip(SIX_AMPLITUDES) {
        let mut o = ClientOptions::participant(0, *hz);
        o.colour = None;
        o.audio_only = true;
        o.set_amplitude(a);
        options.push(o.clone());
        people.push(Client::join(&base, room, o).await);
    }
    for p in &people {
        wait_for("everyone hears the mix", LIMIT, || async {
            p.received.audio_packet_count() > 100
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    everyone_hears_only(&people, &SIX_TONES[..3], "");
    let info = server.room_info(room).await.expect("room info");
    let in_mix = |info: &Value| -> Vec<bool> {
        people
            .iter()
            .map(|p| participant_info(info, &p.location).expect("listed")["in_mix"] == true)
            .collect()
    };
    assert_eq!(in_mix(&info), [true, true, true, false, false, false]);
    assert_eq!(info["audio_decoders"], 3, "silent sources are not decoded");

    // The quietest gets louder than anyone: it replaces the quietest of the three.
    let louder_at = Instant::now();
    options[5].set_amplitude(0.5);
    wait_for("1750 Hz in the mix instead of 850 Hz", LIMIT, || async {
        server
            .room_info(room)
            .await
            .is_some_and(|i| in_mix(&i) == [true, true, false, false, false, true])
    })
    .await;
    let replaced_after = louder_at.elapsed();
    println!("louder fourth → in the mix: {replaced_after:?}");
    // What a listener outside the mix heard across the change (it reaches the listener
    // about 100 ms after the mixer made it).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let across = people[3].received.recent_audio(48_000 + 24_000);
    assert!(
        replaced_after < Duration::from_secs(3),
        "replacing took {replaced_after:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    everyone_hears_only(
        &people,
        &[SIX_TONES[0], SIX_TONES[1], SIX_TONES[5]],
        " after",
    );
    // No click across the change: the switch's high-frequency burst stands out from the
    // steady tones no more than their own codec noise does.
    let ratio = click_ratio(&across);
    println!("click ratio across the change: {ratio:.1}");
    assert!(
        ratio < 15.0,
        "a click: the loudest 5 ms has {ratio:.1}× the typical high-frequency energy"
    );
    for p in people {
        p.close().await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaker_mode_features_the_speaker_and_bad_layouts_are_refused() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "speaker";
    let quiet = |colour: u32| {
        let mut o = ClientOptions::participant(colour, 0.0);
        o.tone_hz = None;
        o.receive = false;
        o
    };
    let red = Client::join(&base, room, quiet(RED.0)).await;
    let mut o = ClientOptions::participant(GREEN.0, 700.0);
    o.receive = false;
    let green = Client::join(&base, room, o).await;
    let blue = Client::join(&base, room, quiet(BLUE.0)).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    wait_for("the viewer decodes the composite", LIMIT, || async {
        viewer.received.frame_count() > 30
    })
    .await;

    let (status, layout) = put_layout(&server, room, serde_json::json!({"mode": "speaker"})).await;
    assert_eq!(status, 200, "{layout}");
    assert_eq!(layout["mode"], "speaker");
    // The one speaking gets the large region.
    wait_for("green featured in the large region", LIMIT, || async {
        let Some(info) = server.room_info(room).await else {
            return false;
        };
        let tile =
            participant_info(&info, &green.location).and_then(|p| p["tile"].as_array().cloned());
        info["layout"]["featured"] == session_of(&green.location).as_str()
            && tile.is_some_and(|t| t[2].as_u64() > Some(320) && t[3].as_u64() > Some(180))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let everyone = [
        (red.location.as_str(), RED.1),
        (green.location.as_str(), GREEN.1),
        (blue.location.as_str(), BLUE.1),
    ];
    assert_tiles(&server, room, &viewer.received, &everyone).await;
    // The layout metadata clients get says the same as the pixels.
    let info = server.room_info(room).await.expect("room info");
    let green_tile = server.tile_of(room, &green.location).await.expect("tile");
    let meta = info["layout"]["tiles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == session_of(&green.location).as_str())
        .cloned()
        .expect("green in the layout metadata");
    let px = |k: &str, total: f64| (meta[k].as_f64().unwrap() * total).round() as u32;
    assert_eq!(
        [
            px("x", 640.0),
            px("y", 360.0),
            px("w", 640.0),
            px("h", 360.0)
        ],
        green_tile
    );
    assert!(
        green_tile[2] * green_tile[3] > 4 * 128 * 72,
        "large: {green_tile:?}"
    );

    // Bad requests: 400 naming the problem, and nothing changes.
    let frames_before = viewer.received.frame_count();
    for (body, needle) in [
        (serde_json::json!({"mode": "mosaic"}), "unknown layout mode"),
        (
            serde_json::json!({"mode": "custom", "regions": [{"x": 0.7, "y": 0, "w": 0.5, "h": 1}]}),
            "off the canvas",
        ),
        (
            serde_json::json!({"pin": ["0123456789abcdef"]}),
            "no publisher",
        ),
        (
            serde_json::json!({"pin": ["not-a-session"]}),
            "no publisher",
        ),
    ] {
        let (status, err) = put_layout(&server, room, body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        let msg = err["error"].as_str().unwrap_or_default();
        assert!(msg.contains(needle), "{body}: {msg}");
    }
    let layout: Value = reqwest::get(server.url(&format!("/api/rooms/{room}/layout")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        layout["mode"], "speaker",
        "a refused layout changes nothing"
    );
    wait_for("the composite keeps going", LIMIT, || async {
        viewer.received.frame_count() > frames_before + 30
    })
    .await;

    // A custom layout of two regions: two tiles, where the regions say.
    let (status, layout) = put_layout(
        &server,
        room,
        serde_json::json!({"mode": "custom", "regions": [
            {"x": 0, "y": 0, "w": 0.5, "h": 1},
            {"x": 0.5, "y": 0, "w": 0.5, "h": 1}
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{layout}");
    assert_eq!(layout["tiles"].as_array().map(Vec::len), Some(2));
    // Back to the grid: everyone again.
    let (status, layout) = put_layout(&server, room, serde_json::json!({"mode": "grid"})).await;
    assert_eq!(status, 200, "{layout}");
    assert_eq!(layout["tiles"].as_array().map(Vec::len), Some(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_tiles(&server, room, &viewer.received, &everyone).await;

    for c in [red, green, blue, viewer] {
        c.close().await;
    }
    server.stop().await;
}

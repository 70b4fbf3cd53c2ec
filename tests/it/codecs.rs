//! Every codec WebRTC promises, with Chromium: VP9 in and out, G.711 (PCMU, PCMA) next to
//! Opus, an offer whose audio section Mixdown cannot take, and the `mixdown` data channel of
//! a WHEP viewer. The Chromium peers live in one page (`codec_page.html`), each with its own
//! colour (a canvas) and tone (an oscillator), forced to its codecs by `setCodecPreferences`;
//! the test asks the page what each decodes and hears.

use crate::common::cdp::Cdp;
use crate::common::client::{Client, ClientOptions};
use crate::common::fake_media::colour_of;
use crate::common::{TestServer, close_to, init_logging, test_config, tone_db, wait_for};
use crate::e2e::{BLUE, GREEN, RED};
use crate::signalling::WsParticipant;
use serde_json::{Value, json};
use std::time::Duration;

const PAGE: &str = include_str!("codec_page.html");
/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(40);
/// How far a decoded colour may drift from the sent one (two lossy encodes).
const COLOUR_TOLERANCE: f32 = 48.0;

/// Headless Chromium with the codec page open.
struct Browser {
    cdp: Cdp,
    page: String,
    _child: tokio::process::Child,
    _site: tokio::task::JoinHandle<()>,
    profile: std::path::PathBuf,
}

impl Browser {
    async fn start(name: &str) -> Self {
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(|| async { axum::response::Html(PAGE) }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let site = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let profile =
            std::env::temp_dir().join(format!("mixdown-codecs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let (child, cdp) = Cdp::launch(&profile, &[]).await;
        let page = cdp.open(&format!("http://{addr}/")).await;
        wait_for("the codec page loads", LIMIT, || async {
            cdp.eval(&page, "typeof window.join === 'function'").await == json!(true)
        })
        .await;
        Self {
            cdp,
            page,
            _child: child,
            _site: site,
            profile,
        }
    }

    async fn eval(&self, expr: &str) -> Value {
        self.cdp.eval(&self.page, expr).await
    }

    /// Joins a peer (see `join` in the page); its index, after checking it joined.
    async fn join(&self, options: Value) -> (usize, Value) {
        let r = self.eval(&format!("window.join({options})")).await;
        assert!(r["error"].is_null(), "join {options}: {r}");
        (r["index"].as_u64().unwrap() as usize, r)
    }

    async fn stats(&self, i: usize) -> Value {
        self.eval(&format!("window.stats({i})")).await
    }

    /// The mean colour of the server's tile `rect` (pixels of a `canvas`-sized picture) in
    /// what peer `i` decodes.
    async fn colour(&self, i: usize, rect: [u32; 4], canvas: (u32, u32)) -> Option<[f32; 3]> {
        let f = [
            rect[0] as f64 / canvas.0 as f64,
            rect[1] as f64 / canvas.1 as f64,
            rect[2] as f64 / canvas.0 as f64,
            rect[3] as f64 / canvas.1 as f64,
        ];
        colour_of(&self.eval(&format!("window.colour({i}, {f:?})")).await)
    }

    /// The level (dB) of each of `hzs` in what peer `i` hears.
    async fn tones(&self, i: usize, hzs: &[f32]) -> Vec<f64> {
        let v = self.eval(&format!("window.tones({i}, {hzs:?})")).await;
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default()
    }

    async fn leave_all(&self) {
        self.eval("Promise.all(window.peers.map((_, i) => window.leave(i)))")
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

fn canvas(server: &TestServer) -> (u32, u32) {
    let v = &server.state.rooms.config().video;
    (v.width, v.height)
}

fn rgb(c: [u8; 3]) -> Value {
    json!([c[0], c[1], c[2]])
}

/// `colour` covers the tile of the session at `location` in what page peer `i` decodes.
async fn assert_page_sees(
    server: &TestServer,
    browser: &Browser,
    room: &str,
    i: usize,
    location: &str,
    colour: [u8; 3],
    what: &str,
) {
    let last = std::sync::Mutex::new(None);
    wait_for(what, LIMIT, || async {
        let Some(rect) = server.tile_of(room, location).await else {
            return false;
        };
        let seen = browser.colour(i, rect, canvas(server)).await;
        *last.lock().unwrap() = seen;
        seen.is_some_and(|c| close_to(c, colour, COLOUR_TOLERANCE))
    })
    .await;
    println!("{what}: {:?}", last.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vp9_chromium_is_decoded_and_receives_vp9_next_to_a_vp8_peer() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "vp9";
    let whip = server.url(&format!("/whip/{room}"));
    let browser = Browser::start("vp9").await;
    // Chromium takes and sends only VP9; the webrtc-rs participant only VP8.
    let (vp9, joined) = browser
        .join(json!({"url": whip, "colour": rgb(BLUE.1), "tone": 660, "video": "VP9", "audio": "opus"}))
        .await;
    let vp9_location = joined["location"].as_str().unwrap().to_owned();
    let vp8 = Client::join(
        &server.url(""),
        room,
        ClientOptions::participant(RED.0, 440.0),
    )
    .await;

    wait_for("both publishers decoded by the server", LIMIT, || async {
        server.room_info(room).await.is_some_and(|info| {
            info["participants"]
                .as_array()
                .is_some_and(|p| p.iter().filter(|p| p["video_started"] == true).count() == 2)
        })
    })
    .await;
    // The VP8 participant sees Chromium's blue (decoded from VP9) in its tile.
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        "blue in the VP9 publisher's tile, at the VP8 peer",
        LIMIT,
        || async {
            let (Some(rect), Some(frame)) = (
                server.tile_of(room, &vp9_location).await,
                vp8.received.frame(),
            ) else {
                return false;
            };
            let mean = frame.mean(rect);
            *last.lock().unwrap() = format!("{mean:?} in {rect:?}");
            close_to(mean, BLUE.1, COLOUR_TOLERANCE)
        },
    )
    .await;
    println!(
        "the VP8 peer sees the VP9 publisher as {}",
        last.lock().unwrap()
    );
    // Chromium gets the composite in VP9 and decodes every colour in it.
    assert_page_sees(
        &server,
        &browser,
        room,
        vp9,
        &vp8.location,
        RED.1,
        "red at the VP9 receiver",
    )
    .await;
    assert_page_sees(
        &server,
        &browser,
        room,
        vp9,
        &vp9_location,
        BLUE.1,
        "its own blue at the VP9 receiver",
    )
    .await;
    wait_for("the VP9 receiver decodes 45 frames", LIMIT, || async {
        browser.stats(vp9).await["framesDecoded"]
            .as_u64()
            .unwrap_or(0)
            > 45
    })
    .await;
    let s = browser.stats(vp9).await;
    println!("VP9 receiver: {s}");
    assert_eq!(s["videoCodec"], "video/VP9", "{s}");
    assert_eq!(s["sentVideoCodec"], "video/VP9", "{s}");
    // Picture IDs and the P bit are right: Chromium counts keyframes, not every frame.
    let (frames, keys) = (
        s["framesDecoded"].as_u64().unwrap_or(0),
        s["keyFramesDecoded"].as_u64().unwrap_or(0),
    );
    assert!(frames > 30 && keys * 5 < frames, "{s}");
    // The room runs one VP9 encode for Chromium and one VP8 encode for the other, and says why.
    let info = server.room_info(room).await.unwrap();
    let encodes = info["encodes"].as_array().unwrap();
    let codecs: Vec<&str> = encodes.iter().filter_map(|e| e["codec"].as_str()).collect();
    assert!(codecs.contains(&"vp9") && codecs.contains(&"vp8"), "{info}");
    let vp9_encode = encodes.iter().find(|e| e["codec"] == "vp9").unwrap();
    assert_eq!(vp9_encode["receivers"], 1, "{vp9_encode}");
    assert!(
        vp9_encode["reason"]
            .as_str()
            .is_some_and(|r| r.contains("accept no codec before VP9")),
        "{vp9_encode}"
    );
    browser.leave_all().await;
    vp8.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_and_pcma_chromiums_hear_the_others_and_not_themselves() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "g711";
    let whip = server.url(&format!("/whip/{room}"));
    let browser = Browser::start("g711").await;
    const PCMU_HZ: f32 = 500.0;
    const PCMA_HZ: f32 = 800.0;
    const OPUS_HZ: f32 = 1300.0;
    let (pcmu, _) = browser
        .join(json!({"url": whip, "tone": PCMU_HZ, "audio": "PCMU", "video": "none"}))
        .await;
    let (pcma, _) = browser
        .join(json!({"url": whip, "tone": PCMA_HZ, "audio": "PCMA", "video": "none"}))
        .await;
    let mut opts = ClientOptions::participant(GREEN.0, OPUS_HZ);
    opts.audio_only = true;
    let opus = Client::join(&server.url(""), room, opts).await;
    let hzs = [PCMU_HZ, PCMA_HZ, OPUS_HZ];
    // Each Chromium hears the other two, 20 dB above itself.
    for (i, own, codec) in [(pcmu, 0, "audio/PCMU"), (pcma, 1, "audio/PCMA")] {
        let last = std::sync::Mutex::new(Vec::new());
        wait_for(&format!("{codec} peer hears the others"), LIMIT, || async {
            let db = browser.tones(i, &hzs).await;
            *last.lock().unwrap() = db.clone();
            db.len() == 3
                && (0..3)
                    .filter(|k| *k != own)
                    .all(|k| db[k] > -70.0 && db[k] - db[own] >= 20.0)
        })
        .await;
        let s = browser.stats(i).await;
        println!(
            "{codec} peer hears {hzs:?} Hz at {:?} dB; {s}",
            last.lock().unwrap()
        );
        assert_eq!(s["audioCodec"], codec, "{s}");
        assert_eq!(s["sentAudioCodec"], codec, "{s}");
    }
    // The Opus participant hears both G.711 tones and not its own.
    wait_for("the Opus peer hears both G.711 tones", LIMIT, || async {
        let a = opus.received.recent_audio(24_000);
        a.len() >= 24_000
            && tone_db(&a, PCMU_HZ) > -40.0
            && tone_db(&a, PCMA_HZ) > -40.0
            && tone_db(&a, PCMU_HZ) - tone_db(&a, OPUS_HZ) >= 20.0
    })
    .await;
    let a = opus.received.recent_audio(24_000);
    println!(
        "the Opus peer hears {:.1} / {:.1} / {:.1} dB",
        tone_db(&a, PCMU_HZ),
        tone_db(&a, PCMA_HZ),
        tone_db(&a, OPUS_HZ)
    );
    let info = server.room_info(room).await.unwrap();
    let codecs: Vec<Value> = info["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["audio_codec"].clone())
        .collect();
    for c in ["pcmu", "pcma", "opus"] {
        assert!(codecs.contains(&json!(c)), "{info}");
    }
    browser.leave_all().await;
    opus.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_with_g722_only_audio_joins_with_its_audio_refused() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "g722";
    let whip = server.url(&format!("/whip/{room}"));
    let browser = Browser::start("g722").await;
    // max-bundle is what WHIP clients use, and what broke on a port-0 first section.
    let (i, joined) = browser
        .join(
            json!({"url": whip, "colour": rgb(BLUE.1), "tone": 500, "audio": "G722",
                      "video": "VP8", "bundle": "max-bundle"}),
        )
        .await;
    let answer = joined["answer"].as_str().unwrap();
    let audio = answer
        .split("m=")
        .find(|s| s.starts_with("audio"))
        .unwrap_or_else(|| panic!("no audio section: {answer}"));
    assert!(
        audio.starts_with("audio 0 ") || audio.contains("a=inactive"),
        "the audio section is not refused: {answer}"
    );
    assert!(!audio.contains("a=sendrecv"), "{answer}");
    assert_eq!(joined["refused"][0]["kind"], "audio", "{joined}");
    assert_eq!(joined["refused"][0]["codecs"][0], "G722/8000", "{joined}");
    let location = joined["location"].as_str().unwrap().to_owned();
    wait_for("the page decodes the composite", LIMIT, || async {
        let s = browser.stats(i).await;
        s["state"] == "connected" && s["framesDecoded"].as_u64().unwrap_or(0) > 20
    })
    .await;
    assert_page_sees(
        &server,
        &browser,
        room,
        i,
        &location,
        BLUE.1,
        "its own blue, sent with its audio refused",
    )
    .await;
    let s = browser.stats(i).await;
    assert_eq!(s["audioPackets"], 0, "{s}");
    let info = server.room_info(room).await.unwrap();
    let p = &info["participants"][0];
    assert_eq!(p["publishes_audio"], false, "{p}");
    assert_eq!(p["refused"][0]["codecs"][0], "G722/8000", "{p}");
    browser.leave_all().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_viewer_gets_room_messages_on_its_data_channel() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "datachannel";
    let ws = WsParticipant::join(
        &server,
        room,
        "Ada",
        ClientOptions::participant(RED.0, 440.0),
    )
    .await;
    let browser = Browser::start("dc").await;
    let whep = server.url(&format!("/whep/{room}"));
    let (viewer, _) = browser
        .join(json!({"url": whep, "dc": true, "video": "VP8", "audio": "opus"}))
        .await;
    // The layout names Ada's tile, and Ada's red is there in the picture.
    let messages = || async { browser.eval(&format!("window.messages({viewer})")).await };
    let tile = std::sync::Mutex::new(None);
    wait_for("a layout naming Ada's tile", LIMIT, || async {
        let m = messages().await;
        let found = m.as_array().and_then(|m| {
            m.iter()
                .rev()
                .find(|m| m["type"] == "layout")
                .and_then(|l| {
                    l["tiles"]
                        .as_array()?
                        .iter()
                        .find(|t| t["id"] == ws.id.as_str())
                        .cloned()
                })
        });
        let ok = found.is_some();
        *tile.lock().unwrap() = found;
        ok
    })
    .await;
    let t = tile.lock().unwrap().clone().unwrap();
    let rect = ["x", "y", "w", "h"].map(|k| t[k].as_f64().unwrap_or(0.0));
    let last = std::sync::Mutex::new(None);
    wait_for("red where the layout puts Ada", LIMIT, || async {
        let v = browser
            .eval(&format!("window.colour({viewer}, {rect:?})"))
            .await;
        let c = colour_of(&v);
        *last.lock().unwrap() = c;
        c.is_some_and(|c| close_to(c, RED.1, COLOUR_TOLERANCE))
    })
    .await;
    println!("Ada's tile {t} at the viewer: {:?}", last.lock().unwrap());
    // A chat from the WebSocket reaches the channel; one from the channel reaches the socket.
    ws.send(json!({"type": "chat", "text": "hello viewers"}));
    wait_for("Ada's chat on the data channel", LIMIT, || async {
        messages().await.as_array().is_some_and(|m| {
            m.iter()
                .any(|m| m["type"] == "chat" && m["text"] == "hello viewers" && m["name"] == "Ada")
        })
    })
    .await;
    browser
        .eval(&format!(
            r#"window.dcSend({viewer}, JSON.stringify({{type: "chat", text: "hello Ada"}}))"#
        ))
        .await;
    wait_for("the viewer's chat at Ada", LIMIT, || async {
        ws.last("chat", |m| m["text"] == "hello Ada").is_some()
    })
    .await;
    // Malformed messages get errors back, and the channel goes on.
    for (text, code) in [
        ("not json", "bad-json"),
        (r#"{"type":"dance"}"#, "unknown-type"),
        (r#"{"type":"offer","sdp":"v=0"}"#, "unknown-type"),
        (r#"{"type":"layout","mode":"mosaic"}"#, "bad-field"),
    ] {
        browser
            .eval(&format!("window.dcSend({viewer}, {})", json!(text)))
            .await;
        wait_for(&format!("error {code} for {text}"), LIMIT, || async {
            messages()
                .await
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["type"] == "error" && m["code"] == code))
        })
        .await;
    }
    // It is still a viewer: counted as one, not listed as a participant.
    let info = server.room_info(room).await.unwrap();
    assert!(
        ws.last("viewers", |m| m["count"] == 1).is_some(),
        "viewers: {info}"
    );
    browser.leave_all().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_main_profile_publisher_is_decoded() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "h264main";
    let whip = server.url(&format!("/whip/{room}"));
    let browser = Browser::start("h264").await;
    let (i, joined) = browser
        .join(json!({"url": whip, "colour": rgb(GREEN.1), "tone": 500,
                      "video": "H264;profile-level-id=4d001f", "audio": "opus"}))
        .await;
    // The answer names only profiles Mixdown sends (its constrained baseline decodes on each).
    let answer = joined["answer"].as_str().unwrap();
    let profiles: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.split("profile-level-id=").nth(1))
        .map(|p| p.split(';').next().unwrap_or(p).trim())
        .collect();
    assert!(!profiles.is_empty(), "{answer}");
    for p in &profiles {
        assert!(
            mixdown::sdp::H264_PROFILES
                .iter()
                .any(|k| k[..4].eq_ignore_ascii_case(&p[..4])),
            "answered profile {p}: {answer}"
        );
    }
    let location = joined["location"].as_str().unwrap().to_owned();
    let viewer = Client::join(&server.url(""), room, ClientOptions::viewer()).await;
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        "the main-profile publisher's green, at a viewer",
        LIMIT,
        || async {
            let (Some(rect), Some(frame)) = (
                server.tile_of(room, &location).await,
                viewer.received.frame(),
            ) else {
                return false;
            };
            let mean = frame.mean(rect);
            *last.lock().unwrap() = format!("{mean:?}");
            close_to(mean, GREEN.1, COLOUR_TOLERANCE)
        },
    )
    .await;
    let s = browser.stats(i).await;
    println!(
        "main-profile publisher {s}, seen as {}",
        last.lock().unwrap()
    );
    assert_eq!(s["sentVideoCodec"], "video/H264", "{s}");
    assert!(
        s["sentVideoFmtp"]
            .as_str()
            .is_some_and(|f| f.contains("profile-level-id=4d")),
        "{s}"
    );
    browser.leave_all().await;
    viewer.close().await;
    server.stop().await;
}

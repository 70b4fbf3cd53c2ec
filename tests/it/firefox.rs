//! Firefox and Chromium in one room through the web app: headless Firefox ESR (driven over
//! WebDriver BiDi, `common::firefox`) with its fake camera (a saturated colour walking round
//! the hue circle) and a 500 Hz fake microphone, and Chromium (DevTools) with a blue camera
//! and an 800 Hz microphone from files. Each decodes the composite with the other's tile,
//! hears the other, and chat crosses both ways.

use crate::common::cdp::Cdp;
use crate::common::fake_media::{
    canvas_probe, colour_of as colour, solid_y4m, tone_probe, tone_wav,
};
use crate::common::firefox::Firefox;
use crate::common::{TestServer, close_to, init_logging, test_config, wait_for};
use serde_json::Value;
use std::time::Duration;

/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(60);
const BLUE: [u8; 3] = [0, 0, 255];
const FIREFOX_TONE: f32 = 500.0;
const CHROMIUM_TONE: f32 = 800.0;
/// The name card of a tile without video (what a participant whose camera is not decoded
/// shows).
const NAME_CARD: [u8; 3] = [58, 63, 75];
/// A screenshot of Firefox's room page (a build artefact).
const SCREENSHOT: &str = "target/artefacts/firefox-room.png";

fn chat_seen(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#chat-messages .chat-message')].some((e) => e.textContent.includes({text:?}))"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firefox_and_chromium_meet_in_the_web_app() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let room = "browsers";
    let dir = std::env::temp_dir().join(format!("mixdown-firefox-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let y4m = dir.join("blue.y4m");
    std::fs::write(&y4m, solid_y4m(320, 180, BLUE)).unwrap();
    let wav = dir.join("tone.wav");
    std::fs::write(&wav, tone_wav(CHROMIUM_TONE)).unwrap();
    let profile = dir.join("chromium");
    let (mut chromium, cdp) = Cdp::launch(&profile, &Cdp::fake_devices(&y4m, &wav)).await;
    let firefox = Firefox::launch(FIREFOX_TONE as u32).await;

    let chrome = cdp
        .open(&server.url(&format!("/?room={room}&name=Chromium&autojoin=1")))
        .await;
    let fox = firefox
        .open(&server.url(&format!("/?room={room}&name=Firefox&autojoin=1")))
        .await;

    // Both decode the composite, with both participants in it.
    wait_for("both pages decode the composite with two tiles", LIMIT, || async {
        let expr = "({f: window.mixdown && window.mixdown.stats.framesDecoded, \
                    t: window.mixdown && window.mixdown.layout && window.mixdown.layout.tiles.length})";
        let c = cdp.eval(&chrome, expr).await;
        let f = firefox.eval_json(&fox, expr).await;
        c["f"].as_u64().unwrap_or(0) > 30
            && f["f"].as_u64().unwrap_or(0) > 30
            && c["t"] == 2
            && f["t"] == 2
    })
    .await;

    // The server decodes both cameras (else their tiles are name cards).
    wait_for("the server decodes both cameras", LIMIT, || async {
        server.room_info(room).await.is_some_and(|info| {
            info["participants"]
                .as_array()
                .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["video_started"] == true))
        })
    })
    .await;
    // Firefox sees Chromium's blue in Chromium's tile.
    let last = std::sync::Mutex::new(None);
    let t = std::time::Instant::now();
    loop {
        let c = colour(&firefox.eval_json(&fox, &canvas_probe()).await);
        *last.lock().unwrap() = c;
        if c.is_some_and(|c| close_to(c, BLUE, 48.0)) {
            break;
        }
        if t.elapsed() > LIMIT {
            // What Firefox decodes and what the room says, to tell a frozen picture from a
            // missing tile.
            let stats = firefox
                .eval_json(
                    &fox,
                    "({s: window.mixdown.stats, l: window.mixdown.layout, id: window.mixdown.id})",
                )
                .await;
            let info = server.room_info(room).await;
            firefox
                .screenshot(&fox, std::path::Path::new(SCREENSHOT))
                .await;
            panic!(
                "Chromium's blue never showed in Firefox's picture: last {c:?}; Firefox: {stats}; room: {info:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!("Firefox sees Chromium's tile as {:?}", last.lock().unwrap());
    // Chromium sees Firefox's camera in Firefox's tile: a saturated colour (it walks round
    // the hue circle), not the grey name card.
    wait_for("Firefox's camera in Chromium's picture", LIMIT, || async {
        let c = colour(&cdp.eval(&chrome, &canvas_probe()).await);
        *last.lock().unwrap() = c;
        c.is_some_and(|c| {
            let (max, min) = (
                c.iter().cloned().fold(0.0, f32::max),
                c.iter().cloned().fold(255.0, f32::min),
            );
            max - min > 100.0 && !close_to(c, NAME_CARD, 40.0)
        })
    })
    .await;
    println!("Chromium sees Firefox's tile as {:?}", last.lock().unwrap());

    // Each hears the other and not itself. Chromium's audio processing takes about 20 dB off
    // its own fake microphone, so its tone arrives weaker than Firefox's.
    let probe = tone_probe(&[FIREFOX_TONE, CHROMIUM_TONE]);
    let heard = std::sync::Mutex::new((Value::Null, Value::Null));
    wait_for(
        "each hears the other's tone, not its own",
        LIMIT,
        || async {
            let at_fox = firefox.eval_json(&fox, &probe).await;
            let at_chrome = cdp.eval(&chrome, &probe).await;
            let db = |v: &Value, k: usize| v[k].as_f64().unwrap_or(-200.0);
            let ok = db(&at_fox, 1) > -50.0
                && db(&at_fox, 1) - db(&at_fox, 0) >= 15.0
                && db(&at_chrome, 0) > -50.0
                && db(&at_chrome, 0) - db(&at_chrome, 1) >= 15.0;
            *heard.lock().unwrap() = (at_fox, at_chrome);
            ok
        },
    )
    .await;
    let (at_fox, at_chrome) = heard.lock().unwrap().clone();
    println!(
        "Firefox hears [{FIREFOX_TONE}, {CHROMIUM_TONE}] Hz at {at_fox} dB; Chromium at {at_chrome} dB"
    );

    // Chat crosses both ways.
    cdp.eval(&chrome, "window.mixdown.sendChat('hello from Chromium')")
        .await;
    firefox
        .eval_json(&fox, "window.mixdown.sendChat('hello from Firefox')")
        .await;
    wait_for("Firefox shows Chromium's chat", LIMIT, || async {
        firefox
            .eval_json(&fox, &chat_seen("hello from Chromium"))
            .await
            == true
    })
    .await;
    wait_for("Chromium shows Firefox's chat", LIMIT, || async {
        cdp.eval(&chrome, &chat_seen("hello from Firefox")).await == true
    })
    .await;

    firefox
        .screenshot(&fox, std::path::Path::new(SCREENSHOT))
        .await;
    for line in firefox.console().await {
        println!("firefox console: {line}");
    }
    firefox.eval_json(&fox, "window.mixdown.leave()").await;
    cdp.eval(&chrome, "window.mixdown.leave()").await;
    wait_for("the room is closed", LIMIT, || async {
        server.room_info(room).await.is_none()
    })
    .await;
    drop(firefox);
    let _ = chromium.kill().await;
    let _ = std::fs::remove_dir_all(&dir);
    server.stop().await;
}

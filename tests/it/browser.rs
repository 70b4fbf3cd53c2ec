//! A real browser: headless Chromium (Debian's package) joins a room over WHIP from a page on
//! another origin (CORS), with fake camera and microphone, next to a webrtc-rs participant
//! playing a tone. The page reports what Chromium decoded, from `getStats`.

use crate::common::client::{Client, ClientOptions};
use crate::common::netns::NetNs;
use crate::common::{CHROMIUM, CHROMIUM_FLAGS, TestServer, init_logging, test_config, wait_for};
use axum::routing::{get, post};
use std::time::Duration;
use tokio::sync::mpsc;

const PAGE: &str = include_str!("chromium_page.html");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_joins_over_whip_and_decodes_the_mix() {
    init_logging();
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `make test` installs Debian's chromium package"
    );
    let server = TestServer::start(test_config()).await;
    let room = "browser";
    let tone = Client::join(
        &server.url(""),
        room,
        ClientOptions::participant(0xffff0000, 700.0),
    )
    .await;

    let (report, joined) =
        chromium_report(&server, room, "127.0.0.1".parse().unwrap(), None, "").await;
    assert!(joined, "the server never decoded Chromium's camera");
    let last = assert_decoded_the_mix(&report);
    tracing::info!(%last, "chromium report");

    // The page sent DELETE: only the tone participant is left.
    wait_for(
        "chromium's session to end",
        Duration::from_secs(15),
        || async {
            server
                .room_info(room)
                .await
                .is_some_and(|i| i["participants"].as_array().is_some_and(|p| p.len() == 1))
        },
    )
    .await;
    tone.leave().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_joins_over_https_with_a_self_signed_certificate_and_a_token() {
    init_logging();
    let secret = "a-test-secret-that-is-at-least-32-bytes-long";
    let mut config = test_config();
    config.server.self_signed = true;
    config.auth.keys.insert("APIbrowser".into(), secret.into());
    let server = TestServer::start(config).await;
    assert_eq!(server.scheme, "https");
    let room = "tls";
    let now = mixdown::auth::now_unix();
    let token = mixdown::auth::mint(
        &mixdown::auth::Claims {
            iss: "APIbrowser".into(),
            sub: "chromium".into(),
            name: "Chromium".into(),
            nbf: Some(now - 1),
            exp: now + 600,
            video: mixdown::auth::VideoGrant {
                room: room.into(),
                room_join: true,
                ..Default::default()
            },
        },
        secret,
    );
    let mut tone = ClientOptions::participant(0xffff0000, 700.0);
    tone.token = Some(token.clone());
    // The webrtc-rs participant signals over plain TCP to the same port: refused (TLS only).
    assert!(
        Client::try_join(&format!("http://{}", server.addr), room, tone.clone())
            .await
            .is_err()
    );
    // Chromium, told to trust the certificate's key, joins over HTTPS with its token and
    // decodes the composite (its own camera) at the canvas size.
    let (report, _) = chromium_report(
        &server,
        room,
        "127.0.0.1".parse().unwrap(),
        None,
        &format!("&token={token}"),
    )
    .await;
    assert!(report.get("error").is_none(), "page error: {report}");
    let samples = report["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    let frames: Vec<u64> = samples
        .iter()
        .map(|s| s["framesDecoded"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        frames.windows(2).rev().take(6).all(|w| w[1] > w[0]),
        "frames decoded stopped rising: {frames:?}"
    );
    assert_eq!(last["width"], 640, "{last}");
    server.stop().await;
}

/// Runs the test page in headless Chromium (inside `ns` if given), joining `room` over WHIP,
/// with the page served from `page_ip` (`query` adds page parameters: `&seconds=20&w=640`).
/// Returns the page's report and whether the server decoded Chromium's camera meanwhile.
pub(crate) async fn chromium_report(
    server: &TestServer,
    room: &str,
    page_ip: std::net::IpAddr,
    ns: Option<&NetNs>,
    query: &str,
) -> (serde_json::Value, bool) {
    // The test page comes from another origin; the page posts its figures back here.
    let (report_tx, mut reports) = mpsc::channel::<String>(1);
    let page_app = axum::Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route(
            "/report",
            post(move |body: String| {
                let tx = report_tx.clone();
                async move {
                    let _ = tx.send(body).await;
                    ""
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind((page_ip, 0)).await.unwrap();
    let page_addr = listener.local_addr().unwrap();
    let page_task = tokio::spawn(async move { axum::serve(listener, page_app).await });

    let profile = std::env::temp_dir().join(format!("mixdown-chromium-{}", std::process::id()));
    let url = format!(
        "http://{page_addr}/?whip={}&report=http://{page_addr}/report{query}",
        server.url(&format!("/whip/{room}"))
    );
    let mut command = match ns {
        Some(ns) => ns.command(CHROMIUM),
        None => tokio::process::Command::new(CHROMIUM),
    };
    // getUserMedia needs a secure context: loopback is one, another address is not.
    let secure = format!("--unsafely-treat-insecure-origin-as-secure=http://{page_addr}");
    // A server on HTTPS with its own certificate: Chromium trusts that key, and only it.
    if let Some(spki) = &server.spki {
        command.arg(format!("--ignore-certificate-errors-spki-list={spki}"));
    }
    let mut chromium = command
        .args(CHROMIUM_FLAGS)
        .arg(secure)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");

    let mut joined = false;
    let report = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            tokio::select! {
                r = reports.recv() => return r,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    // While the page runs, the server must be decoding Chromium's camera.
                    if !joined && let Some(info) = server.room_info(room).await {
                        joined = info["participants"].as_array().is_some_and(|p| {
                            p.iter().filter(|p| p["video_started"] == true).count() == 2
                        });
                    }
                }
            }
        }
    })
    .await
    .expect("the page reports within 60 s")
    .expect("a report");
    let _ = chromium.kill().await;
    page_task.abort();
    let _ = std::fs::remove_dir_all(&profile);

    (serde_json::from_str(&report).unwrap(), joined)
}

/// The page decoded the 640x360 composite, frames still rising at the end, with audio.
/// Returns the last sample.
pub(crate) fn assert_decoded_the_mix(report: &serde_json::Value) -> serde_json::Value {
    assert!(report.get("error").is_none(), "page error: {report}");
    let samples = report["samples"].as_array().unwrap();
    let last = samples.last().unwrap();
    let frames: Vec<u64> = samples
        .iter()
        .map(|s| s["framesDecoded"].as_u64().unwrap_or(0))
        .collect();
    let rising = frames.windows(2).rev().take(6).all(|w| w[1] > w[0]);
    assert!(
        rising,
        "frames decoded stopped rising: {frames:?}; last sample: {last}"
    );
    assert_eq!(last["width"], 640, "{last}");
    assert_eq!(last["height"], 360, "{last}");
    assert!(
        last["audioEnergy"].as_f64().unwrap_or(0.0) > 0.0
            && last["audioLevel"].as_f64().unwrap_or(0.0) > 0.0,
        "no audio: {last}"
    );
    last.clone()
}

/// What the server received of a publisher's video so far (bytes), and its REMB ceiling.
async fn received_video(server: &TestServer, room: &str, session: &str) -> Option<(u64, u64)> {
    let info = server.room_info(room).await?;
    let p = info["participants"]
        .as_array()?
        .iter()
        .find(|p| p["session"] == session)?
        .clone();
    Some((
        p["video_packets"]["bytes"].as_u64()?,
        p["publish_cap_kbps"].as_u64()?,
    ))
}

/// Kbit/s of a publisher's video arriving over `window`.
async fn arriving_kbps(server: &TestServer, room: &str, session: &str, window: Duration) -> f64 {
    let (a, _) = received_video(server, room, session).await.expect("listed");
    tokio::time::sleep(window).await;
    let (b, _) = received_video(server, room, session).await.expect("listed");
    (b - a) as f64 * 8.0 / window.as_secs_f64() / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_publisher_off_screen_is_asked_for_a_trickle() {
    init_logging();
    let mut config = test_config();
    config.video.max_tiles = 1;
    let server = std::sync::Arc::new(TestServer::start(config).await);
    let room = "trickle";
    // Chromium joins first: with one tile it is on screen, and asked for what a full canvas
    // needs. Then a webrtc-rs participant joins and is pinned: Chromium goes off screen.
    let s = server.clone();
    let watcher = tokio::spawn(async move {
        let chromium = loop {
            if let Some(info) = s.room_info(room).await
                && let Some(p) = info["participants"].as_array().and_then(|p| {
                    p.iter()
                        .find(|p| p["video_started"] == true && !p["video_packets"].is_null())
                })
            {
                break p["session"].as_str().unwrap_or_default().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Let Chromium's bandwidth estimate climb, then measure it on screen.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (_, cap_on) = received_video(&s, room, &chromium).await.expect("listed");
        let on = arriving_kbps(&s, room, &chromium, Duration::from_secs(3)).await;
        let other = Client::join(
            &s.url(""),
            room,
            ClientOptions::participant(0xff00ff00, 500.0),
        )
        .await;
        let pin = serde_json::json!({ "pin": [mixdown::ids::SessionId::public_in_location(&other.location).unwrap()] });
        let r = reqwest::Client::new()
            .put(s.url(&format!("/api/rooms/{room}/layout")))
            .json(&pin)
            .send()
            .await
            .expect("PUT layout");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (_, cap_off) = received_video(&s, room, &chromium).await.expect("listed");
        let off = arriving_kbps(&s, room, &chromium, Duration::from_secs(3)).await;
        other.close().await;
        (cap_on, on, cap_off, off)
    });
    let (report, _) = chromium_report(
        &server,
        room,
        "127.0.0.1".parse().unwrap(),
        None,
        "&seconds=20&w=640&h=480",
    )
    .await;
    assert!(report.get("error").is_none(), "page error: {report}");
    let (cap_on, on, cap_off, off) = watcher.await.expect("the watcher ran");
    let targets: Vec<f64> = report["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["targetBitrate"].as_f64().unwrap_or(0.0) / 1000.0)
        .collect();
    println!(
        "chromium on screen: asked ≤ {cap_on} kbit/s, sent {on:.0}; off screen: asked ≤ {cap_off} kbit/s, sent {off:.0}; its encoder's targets (kbit/s): {targets:.0?}"
    );
    assert_eq!(cap_off, mixdown::room::layout::HIDDEN_PUBLISH_KBPS as u64);
    assert!(cap_on > cap_off, "on screen it may send more: {cap_on}");
    // RTP and SRTP headers on top of the payload ceiling: at most a fifth more.
    assert!(
        off <= cap_off as f64 * 1.2,
        "off screen Chromium still sends {off:.0} kbit/s (asked ≤ {cap_off})"
    );
    assert!(
        on >= 2.0 * off,
        "on screen it sent {on:.0} kbit/s, barely more than off screen ({off:.0})"
    );
    match std::sync::Arc::try_unwrap(server) {
        Ok(server) => server.stop().await,
        Err(_) => panic!("the server is still shared"),
    }
}

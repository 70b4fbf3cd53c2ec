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

    let (report, joined) = chromium_report(&server, room, "127.0.0.1".parse().unwrap(), None).await;
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

/// Runs the test page in headless Chromium (inside `ns` if given), joining `room` over WHIP,
/// with the page served from `page_ip`. Returns the page's report and whether the server
/// decoded Chromium's camera meanwhile.
pub(crate) async fn chromium_report(
    server: &TestServer,
    room: &str,
    page_ip: std::net::IpAddr,
    ns: Option<&NetNs>,
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
        "http://{page_addr}/?whip={}&report=http://{page_addr}/report",
        server.url(&format!("/whip/{room}"))
    );
    let mut command = match ns {
        Some(ns) => ns.command(CHROMIUM),
        None => tokio::process::Command::new(CHROMIUM),
    };
    // getUserMedia needs a secure context: loopback is one, another address is not.
    let secure = format!("--unsafely-treat-insecure-origin-as-secure=http://{page_addr}");
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

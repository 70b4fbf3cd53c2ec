//! Server-added latency on loopback, measured with markers: the sender switches colour every
//! 500 ms (and knows which encoded frame is the first of the new colour) and sends a 40 ms
//! burst every 500 ms; a WHEP viewer timestamps the first decoded frame of the new colour and
//! the first loud packet. The figures include loopback transport and the viewer's decode, so
//! they bound the server's share from above. Printed, not asserted: timing goals belong to the
//! benchmarks; the assertions only check that every marker gets through (a hang guard).

use crate::common::client::{Client, ClientOptions};
use crate::common::{TestServer, close_to, init_logging, test_config, wait_for};
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(name: &str, mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return format!("{name}: n=0");
    }
    v.sort();
    format!(
        "{name}: n={} p50={:?} p90={:?} max={:?}",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        v.last().unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markers_cross_the_mix_and_latency_is_reported() {
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let room = "latency";
    let mut opts = ClientOptions::participant(0xffff0000, 1000.0);
    opts.marker_colour = Some(0xff0000ff);
    let sender = Client::join(&base, room, opts).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    wait_for("the viewer decodes", Duration::from_secs(30), || async {
        viewer.received.frame_count() > 30
    })
    .await;
    let tile = server.tile_of(room, &sender.location).await.expect("tile");
    *viewer.received.watch.lock().unwrap() = Some(tile);
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(8)).await;

    let colours = viewer.received.colours.lock().unwrap().clone();
    let marks: Vec<_> = sender
        .video_marks
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t > start)
        .copied()
        .collect();
    let mut video = Vec::new();
    for (i, (t, rgb)) in marks.iter().enumerate() {
        let next = marks.get(i + 1).map(|m| m.0).unwrap_or(Instant::now());
        if let Some((seen, _)) = colours.iter().find(|(at, c)| {
            *at >= *t && *at < next + Duration::from_secs(1) && close_to(*c, *rgb, 60.0)
        }) {
            video.push(*seen - *t);
        }
    }
    let loudness = viewer.received.loudness.lock().unwrap().clone();
    let audio_marks: Vec<Instant> = sender
        .audio_marks
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t > start)
        .copied()
        .collect();
    let mut audio = Vec::new();
    for t in &audio_marks {
        if let Some((seen, _)) = loudness.iter().find(|(at, rms)| *at >= *t && *rms > 0.05) {
            audio.push(*seen - *t);
        }
    }
    let report = format!(
        "{}; {} ({} video marks, {} frames logged, {} audio marks, {} packets)",
        summary("video (colour change)", video.clone()),
        summary("audio (burst onset)", audio.clone()),
        marks.len(),
        colours.len(),
        audio_marks.len(),
        loudness.len()
    );
    println!("latency on loopback: {report}");
    tracing::info!("latency on loopback: {report}");
    assert!(
        marks.len() >= 12 && video.len() + 1 >= marks.len(),
        "video markers lost: {report}"
    );
    assert!(
        audio_marks.len() >= 12 && audio.len() + 1 >= audio_marks.len(),
        "audio markers lost: {report}"
    );
    let hang = Duration::from_secs(1);
    assert!(video.iter().chain(&audio).all(|d| *d < hang), "{report}");
    sender.leave().await;
    viewer.leave().await;
    server.stop().await;
}

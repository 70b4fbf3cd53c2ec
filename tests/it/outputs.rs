//! Recordings, HLS and RTMP, checked the way a person would: decode what was written and look
//! for both participants' colours in their tiles and both tones in the audio.

use crate::common::client::{Client, ClientOptions};
use crate::common::media_file::{Decoded, decode, header_duration};
use crate::common::{TestServer, close_to, init_logging, test_config, tone_db, wait_for};
use mixdown::config::Config;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const RED: (u32, [u8; 3]) = (0xffff0000, [255, 0, 0]);
const GREEN: (u32, [u8; 3]) = (0xff00ff00, [0, 255, 0]);
const TONES: [f32; 2] = [500.0, 800.0];
/// Two lossy encodes and I420 round trips.
const COLOUR_TOLERANCE: f32 = 48.0;
/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(30);

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("mixdown-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn output_config(dir: &Path) -> Config {
    let mut c = test_config();
    c.recording.dir = dir.join("recordings");
    c.hls.dir = dir.join("hls");
    c
}

async fn send(method: reqwest::Method, url: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("HTTP answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    send(reqwest::Method::POST, url, Some(body)).await
}

async fn delete(url: &str) -> (u16, Value) {
    send(reqwest::Method::DELETE, url, None).await
}

fn sender(colour: u32, tone: f32) -> ClientOptions {
    let mut o = ClientOptions::participant(colour, tone);
    o.receive = false;
    o
}

/// Two publishers (red/500 Hz, green/800 Hz) whose video has reached the mixer; their tiles.
async fn two_publishers(base: &str, room: &str) -> (Client, Client, [[u32; 4]; 2]) {
    let a = Client::join(base, room, sender(RED.0, TONES[0])).await;
    let b = Client::join(base, room, sender(GREEN.0, TONES[1])).await;
    let start = Instant::now();
    loop {
        if let Some(tiles) = started_tiles(base, room, [&a, &b]).await {
            return (a, b, tiles);
        }
        assert!(
            start.elapsed() < LIMIT,
            "both videos did not reach the mixer"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The tiles of both publishers once the mixer decodes both.
async fn started_tiles(base: &str, room: &str, who: [&Client; 2]) -> Option<[[u32; 4]; 2]> {
    let info: Value = reqwest::get(format!("{base}/api/rooms/{room}"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let mut tiles = [[0; 4]; 2];
    for (i, c) in who.iter().enumerate() {
        let session = mixdown::ids::SessionId::public_in_location(&c.location)?;
        let p = info["participants"]
            .as_array()?
            .iter()
            .find(|p| p["session"] == session)?;
        if p["video_started"] != true {
            return None;
        }
        let t: Vec<u32> = p["tile"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|v| v as u32)
            .collect();
        if t.len() != 4 {
            return None;
        }
        tiles[i] = [t[0], t[1], t[2], t[3]];
    }
    Some(tiles)
}

/// What a person checks in a recording: it plays for about `expected`, shows both colours in
/// their tiles, carries both tones, and starts audio and video together.
fn assert_recording(what: &str, d: &Decoded, expected: Duration, tiles: &[[u32; 4]; 2]) {
    assert_content(what, d, expected, tiles);
    let (v, a) = (
        d.video_first().expect("video"),
        d.audio_first_pts.expect("audio timestamps"),
    );
    assert!(
        v.abs_diff(a) <= Duration::from_millis(100),
        "{what}: audio starts at {a:?}, video at {v:?}"
    );
}

/// Both colours in their tiles and both tones, in what was decoded (a file or a live stream
/// joined midway).
fn assert_content(what: &str, d: &Decoded, expected: Duration, tiles: &[[u32; 4]; 2]) {
    assert!(d.error.is_none(), "{what}: decode error {:?}", d.error);
    let span = d.video_span();
    assert!(
        span + Duration::from_millis(1500) >= expected
            && span <= expected + Duration::from_millis(1500),
        "{what}: video lasts {span:?}, expected about {expected:?}"
    );
    let frame = d
        .last_frame()
        .unwrap_or_else(|| panic!("{what}: no video frame"));
    for (tile, (_, rgb)) in tiles.iter().zip([RED, GREEN]) {
        let mean = frame.mean(*tile);
        assert!(
            close_to(mean, rgb, COLOUR_TOLERANCE),
            "{what}: tile {tile:?} is {mean:?}, expected {rgb:?}"
        );
    }
    assert!(
        d.audio.len() >= 48_000,
        "{what}: only {} audio samples",
        d.audio.len()
    );
    let last_second = &d.audio[d.audio.len() - 48_000..];
    for f in TONES {
        let db = tone_db(last_second, f);
        assert!(db > -30.0, "{what}: {f} Hz tone at {db} dB");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_in_every_format_show_both_participants() {
    init_logging();
    let dir = temp_dir("formats");
    let server = TestServer::start(output_config(&dir)).await;
    let base = server.url("");
    let room = "rec";
    let (a, b, tiles) = two_publishers(&base, room).await;
    let api = server.url(&format!("/api/rooms/{room}/recordings"));
    let mut started = Vec::new();
    for format in ["webm", "mkv", "mp4"] {
        let (status, info) = post(
            &api,
            json!({ "format": format, "name": format!("meeting-{format}") }),
        )
        .await;
        assert_eq!(status, 201, "{format}: {info}");
        assert_eq!(info["format"], format);
        started.push(info);
    }
    let t0 = Instant::now();
    // Someone joins and leaves mid-recording: the recordings neither stall nor gap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let c = Client::join(&base, room, sender(0xff0000ff, 1300.0)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.leave().await, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, list) = send(reqwest::Method::GET, &api, None).await;
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(|l| l.len()), Some(3), "{list}");
    for l in list.as_array().unwrap() {
        assert_eq!(l["state"], "recording", "{l}");
        assert!(l["bytes"].as_u64().unwrap_or(0) > 10_000, "{l}");
    }
    let mut finished = Vec::new();
    for info in &started {
        let id = info["id"].as_str().unwrap();
        let (status, done) = delete(&format!("{api}/{id}")).await;
        assert_eq!(status, 200, "{done}");
        assert_eq!(done["state"], "finished", "{done}");
        finished.push(done);
    }
    let elapsed = t0.elapsed();
    // Stopping twice is a conflict, not a crash.
    let id = started[0]["id"].as_str().unwrap();
    let (status, e) = delete(&format!("{api}/{id}")).await;
    assert_eq!(status, 409, "{e}");

    for done in &finished {
        let format = done["format"].as_str().unwrap();
        let path = PathBuf::from(done["path"].as_str().unwrap());
        assert_eq!(
            path.file_name().and_then(|f| f.to_str()),
            Some(format!("meeting-{format}.{format}").as_str())
        );
        let reported = Duration::from_secs_f64(done["duration_s"].as_f64().unwrap());
        let d = decode(&format!("filesrc location={}", path.display()), LIMIT).await;
        assert_recording(format, &d, elapsed, &tiles);
        assert!(
            d.max_video_gap() < Duration::from_millis(500),
            "{format}: a join and a leave left a video gap of {:?}",
            d.max_video_gap()
        );
        assert!(
            d.audio_span().abs_diff(d.video_span()) < Duration::from_millis(500),
            "{format}: audio {:?} vs video {:?}",
            d.audio_span(),
            d.video_span()
        );
        assert!(
            d.video_span().abs_diff(reported) <= Duration::from_millis(500),
            "{format}: the API says {reported:?}, the file plays {:?}",
            d.video_span()
        );
        let codec = d.video_caps.clone().unwrap_or_default();
        let header = header_duration(&path);
        assert!(
            header.is_some_and(|h| h.abs_diff(reported) <= Duration::from_millis(1000)),
            "{format}: a finalised file states its duration ({header:?} vs {reported:?}; {codec})"
        );
    }
    a.close().await;
    b.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_stretch_is_absent_and_auto_recording_starts_with_the_room() {
    init_logging();
    let dir = temp_dir("pause");
    let mut config = output_config(&dir);
    config.recording.auto_format = Some(mixdown::output::spec::RecordFormat::Webm);
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "paused";
    let (a, b, tiles) = two_publishers(&base, room).await;
    let api = server.url(&format!("/api/rooms/{room}/recordings"));
    let (_, list) = send(reqwest::Method::GET, &api, None).await;
    let id = list[0]["id"]
        .as_str()
        .expect("an automatic recording")
        .to_owned();
    let rec = format!("{api}/{id}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, p) = post(&format!("{rec}/pause"), json!({})).await;
    assert_eq!((status, p["state"].as_str()), (200, Some("paused")), "{p}");
    let (status, _) = post(&format!("{rec}/pause"), json!({})).await;
    assert_eq!(status, 409, "pausing twice");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, r) = post(&format!("{rec}/resume"), json!({})).await;
    assert_eq!(status, 200, "{r}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, done) = delete(&rec).await;
    assert_eq!(status, 200, "{done}");
    let path = done["path"].as_str().unwrap().to_owned();
    let d = decode(&format!("filesrc location={path}"), LIMIT).await;
    // About 2 s + 2 s of the 7 s: the 3 s pause is not in the file, and nothing stalls.
    let expected = Duration::from_secs(4);
    assert_recording("paused webm", &d, expected, &tiles);
    assert!(
        d.max_video_gap() < Duration::from_millis(500),
        "the pause left a gap of {:?}",
        d.max_video_gap()
    );
    assert!(
        d.audio_span().abs_diff(d.video_span()) < Duration::from_millis(500),
        "audio {:?} vs video {:?}",
        d.audio_span(),
        d.video_span()
    );
    a.close().await;
    b.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_leaves_playable_files_and_sigterm_finalises() {
    init_logging();
    gstreamer::init().expect("GStreamer for the test clients");
    let dir = temp_dir("kill");
    let bin = Path::new(env!("CARGO_BIN_EXE_mixdown"));
    let ports = test_config().rtc;
    let extra = format!("[recording]\ndir = \"{}\"\n", dir.display());
    let server =
        mixdown_bench::run::ServerProcess::start(bin, (ports.udp_port, ports.udp_port), &extra)
            .await
            .expect("server process");
    let room = "crash";
    let (a, b, _) = two_publishers(&server.base, room).await;
    let api = format!("{}/api/rooms/{room}/recordings", server.base);
    let mut paths = Vec::new();
    for format in ["webm", "mp4"] {
        let (status, info) = post(&api, json!({ "format": format })).await;
        assert_eq!(status, 201, "{info}");
        paths.push(PathBuf::from(info["path"].as_str().unwrap()));
    }
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = std::process::Command::new("kill")
        .args(["-9", &server.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let recorded = t0.elapsed();
    a.close().await;
    b.close().await;
    drop(server);
    for path in &paths {
        let d = decode(&format!("filesrc location={}", path.display()), LIMIT).await;
        eprintln!(
            "after kill -9 at {recorded:?}: {} plays video {:?}, audio {:?}",
            path.display(),
            d.video_span(),
            d.audio_span()
        );
        assert!(
            d.video_span() + Duration::from_secs(2) >= recorded,
            "{}: plays {:?} of {recorded:?} before the kill",
            path.display(),
            d.video_span()
        );
        assert!(
            d.audio_span() + Duration::from_secs(2) >= recorded,
            "{}: audio {:?}",
            path.display(),
            d.audio_span()
        );
    }

    // SIGTERM: the recording is finalised (its header states the duration) before exit.
    let ports = test_config().rtc;
    let server =
        mixdown_bench::run::ServerProcess::start(bin, (ports.udp_port, ports.udp_port), &extra)
            .await
            .expect("server process");
    let a = Client::join(&server.base, "term", sender(RED.0, TONES[0])).await;
    let api = format!("{}/api/rooms/term/recordings", server.base);
    let (status, info) = post(&api, json!({ "format": "mkv", "name": "sigterm" })).await;
    assert_eq!(status, 201, "{info}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(server); // sends SIGTERM and waits for the exit
    a.close().await;
    let path = dir.join("sigterm.mkv");
    let header = header_duration(&path);
    assert!(
        header.is_some_and(|h| h >= Duration::from_secs(2)),
        "a finalised Matroska file states its duration: {header:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn playlist_segments(playlist: &str) -> Vec<String> {
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn media_sequence(playlist: &str) -> u64 {
    playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-MEDIA-SEQUENCE:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hls_is_served_as_a_sliding_window_of_decodable_segments() {
    init_logging();
    let dir = temp_dir("hls");
    let mut config = output_config(&dir);
    config.hls.segment_s = 1;
    config.hls.playlist_length = 3;
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "live";
    let (a, b, tiles) = two_publishers(&base, room).await;
    let api = server.url(&format!("/api/rooms/{room}/streams"));
    let (status, info) = post(&api, json!({ "kind": "hls" })).await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(info["url"], format!("/hls/{room}/index.m3u8"));
    let (status, e) = post(&api, json!({ "kind": "hls" })).await;
    assert_eq!(status, 409, "one HLS stream per room: {e}");
    let playlist_url = server.url(info["url"].as_str().unwrap());
    let mut playlist = String::new();
    let start = Instant::now();
    while media_sequence(&playlist) < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "the window never slid: {playlist}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Ok(r) = reqwest::get(&playlist_url).await
            && r.status().is_success()
        {
            playlist = r.text().await.unwrap_or_default();
        }
    }
    let segments = playlist_segments(&playlist);
    assert_eq!(segments.len(), 3, "{playlist}");
    for l in playlist.lines().filter_map(|l| l.strip_prefix("#EXTINF:")) {
        let secs: f64 = l
            .trim_end_matches(',')
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(secs <= 2.5, "segment of {secs} s in {playlist}");
    }
    // Old segments are deleted from disk and no longer served.
    let on_disk = std::fs::read_dir(dir.join("hls").join(room))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "ts"))
        })
        .count();
    // The playlist's 3, 3 more kept for players still fetching them, and the one being written.
    assert!(on_disk <= 7, "{on_disk} segments kept");
    let (status, _) = send(
        reqwest::Method::GET,
        &server.url(&format!("/hls/{room}/segment00000.ts")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = send(
        reqwest::Method::GET,
        &server.url(&format!("/hls/{room}/..%2Fx.ts")),
        None,
    )
    .await;
    assert_eq!(status, 404);
    // The window's segments, fetched over HTTP, decode to the composite and the mix.
    let joined = dir.join("window.ts");
    let mut bytes = Vec::new();
    for s in &segments {
        let r = reqwest::get(server.url(&format!("/hls/{room}/{s}")))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{s}");
        assert_eq!(r.headers()["content-type"], "video/mp2t");
        bytes.extend_from_slice(&r.bytes().await.unwrap());
    }
    std::fs::write(&joined, &bytes).unwrap();
    let d = decode(&format!("filesrc location={}", joined.display()), LIMIT).await;
    assert!(
        d.video_caps
            .as_deref()
            .is_some_and(|c| c.starts_with("video/"))
    );
    assert_content(
        "HLS window",
        &d,
        d.video_span().max(Duration::from_secs(2)),
        &tiles,
    );
    let id = info["id"].as_str().unwrap();
    let (status, done) = delete(&format!("{api}/{id}")).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("finished")),
        "{done}"
    );
    a.close().await;
    b.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Debian's nginx with the RTMP module, on a loopback port, in the foreground.
struct Nginx {
    child: std::process::Child,
}

impl Nginx {
    fn start(dir: &Path, port: u16) -> Self {
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
                 daemon off;\nmaster_process off;\nworker_processes 1;\n\
                 error_log {0}/error.log;\npid {0}/nginx.pid;\n\
                 events {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen 127.0.0.1:{port}; application live {{ live on; record off; }} }} }}\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx libnginx-mod-rtmp)");
        Self { child }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn stream_state(url: &str) -> String {
    let (_, v) = send(reqwest::Method::GET, url, None).await;
    v["state"].as_str().unwrap_or("").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_reaches_a_real_server_and_survives_losing_it() {
    init_logging();
    let dir = temp_dir("rtmp");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let nginx = Nginx::start(&dir, port);
    let mut config = output_config(&dir);
    config.rtmp.max_retry_s = 2;
    // A loopback server is refused unless the operator lists it.
    config.rtmp.allow = vec![format!("rtmp://127.0.0.1:{port}/")];
    let server = TestServer::start(config).await;
    let base = server.url("");
    let room = "cast";
    let (a, b, tiles) = two_publishers(&base, room).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    let api = server.url(&format!("/api/rooms/{room}/streams"));
    let url = format!("rtmp://127.0.0.1:{port}/live/mixdown-secret");
    let (status, info) = post(&api, json!({ "kind": "rtmp", "url": url })).await;
    assert_eq!(status, 201, "{info}");
    assert_eq!(
        info["url"],
        format!("rtmp://127.0.0.1:{port}/live/…"),
        "the stream key is hidden"
    );
    let stream = format!("{api}/{}", info["id"].as_str().unwrap());
    wait_for("the RTMP stream goes live", LIMIT, || async {
        stream_state(&stream).await == "live"
    })
    .await;
    // Read it back from nginx like a viewer of the broadcast.
    let d = decode(&format!("rtmp2src location={url}"), Duration::from_secs(6)).await;
    assert!(
        d.video_pts.len() >= 30,
        "{} frames read back ({:?})",
        d.video_pts.len(),
        d.error
    );
    assert!(
        d.video_caps.is_some() && d.audio_caps.is_some(),
        "video {:?} audio {:?}",
        d.video_caps,
        d.audio_caps
    );
    assert_content("RTMP", &d, d.video_span(), &tiles);

    // The server goes away: the output reports it and retries; the room keeps going.
    drop(nginx);
    wait_for("the RTMP stream reports the loss", LIMIT, || async {
        stream_state(&stream).await == "retrying"
    })
    .await;
    let (_, v) = send(reqwest::Method::GET, &stream, None).await;
    // One fixed sentence, not GStreamer's (which would tell a closed port from an open one).
    assert_eq!(
        v["error"].as_str(),
        Some(mixdown::output::destination::RTMP_UNREACHABLE),
        "{v}"
    );
    let before = viewer.received.frame_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        viewer.received.frame_count() >= before + 15,
        "the room stalled without the RTMP server"
    );
    let _nginx = Nginx::start(&dir, port);
    wait_for("the RTMP stream comes back", LIMIT, || async {
        stream_state(&stream).await == "live"
    })
    .await;
    let (status, done) = delete(&stream).await;
    assert_eq!(
        (status, done["state"].as_str()),
        (200, Some("finished")),
        "{done}"
    );
    a.close().await;
    b.close().await;
    viewer.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtmp_destinations_outside_the_policy_are_refused_before_anything_starts() {
    init_logging();
    let dir = temp_dir("rtmp-policy");
    // Something listens on the port, so a refusal cannot come from a failed connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let refused_streams = |server: &TestServer, cases: Vec<(String, &'static str)>| {
        let api = server.url("/api/rooms/guarded/streams");
        async move {
            for (url, why) in cases {
                let (status, e) = post(&api, json!({ "kind": "rtmp", "url": url })).await;
                assert_eq!(status, 400, "{url}: {e}");
                let message = e["error"].as_str().unwrap_or_default();
                assert!(
                    message.starts_with("RTMP destination rtmp") && message.contains(why),
                    "{url}: {message}"
                );
                assert!(!message.contains("s3cret"), "the key is shown: {message}");
            }
            // Nothing was started.
            let (status, list) = send(reqwest::Method::GET, &api, None).await;
            assert_eq!((status, &list), (200, &json!([])), "{list}");
        }
    };

    // No allow list: public addresses only.
    let server = TestServer::start(output_config(&dir)).await;
    let viewer = Client::join(&server.url(""), "guarded", ClientOptions::viewer()).await;
    refused_streams(
        &server,
        vec![
            (
                format!("rtmp://127.0.0.1:{port}/live/s3cret-key"),
                "127.0.0.1 is a loopback address (list it in rtmp.allow to permit it)",
            ),
            (
                "rtmp://169.254.169.254/live/s3cret-key".into(),
                "169.254.169.254 is a link-local address",
            ),
            // A name is resolved and its addresses checked.
            (
                format!("rtmp://localhost:{port}/live/s3cret-key"),
                "is a loopback address",
            ),
            (
                "rtmp://s3cret-user:s3cret-pass@10.1.2.3/live?key=s3cret-key".into(),
                "rtmp://…@10.1.2.3/live?… refused: 10.1.2.3 is a private address",
            ),
            (
                "rtmps://[::ffff:192.168.0.1]/app/s3cret-key".into(),
                "::ffff:192.168.0.1 is a private address",
            ),
            (
                "rtmp://[fd00::1]:1935/app/s3cret-key".into(),
                "fd00::1 is a private (unique local) address",
            ),
        ],
    )
    .await;
    viewer.close().await;
    server.stop().await;

    // An allow list: only its prefixes, whatever their address.
    let mut config = output_config(&dir);
    config.rtmp.allow = vec![format!("rtmp://127.0.0.1:{port}/live/")];
    let server = TestServer::start(config).await;
    let viewer = Client::join(&server.url(""), "guarded", ClientOptions::viewer()).await;
    refused_streams(
        &server,
        vec![
            (
                format!("rtmp://127.0.0.1:{port}/other/s3cret-key"),
                "refused: not in rtmp.allow",
            ),
            (
                "rtmp://127.0.0.1/live/s3cret-key".into(),
                "refused: not in rtmp.allow",
            ),
            (
                "rtmp://a.rtmp.youtube.com/live2/s3cret-key".into(),
                "refused: not in rtmp.allow",
            ),
        ],
    )
    .await;
    viewer.close().await;
    server.stop().await;
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_errors_are_clear_and_leave_the_room_alone() {
    init_logging();
    let dir = temp_dir("errors");
    let mut config = output_config(&dir);
    // A directory that cannot be created: its parent is a regular file.
    std::fs::write(dir.join("file"), b"x").unwrap();
    config.hls.dir = dir.join("file").join("hls");
    let server = TestServer::start(config).await;
    let base = server.url("");
    let api = |room: &str, what: &str| server.url(&format!("/api/rooms/{room}/{what}"));

    let (status, e) = post(&api("nobody", "recordings"), json!({ "format": "webm" })).await;
    assert_eq!(status, 404, "{e}");
    let (status, _) = post(&api("nobody", "streams"), json!({ "kind": "hls" })).await;
    assert_eq!(status, 404);
    let (status, _) = send(reqwest::Method::GET, &api("nobody", "recordings"), None).await;
    assert_eq!(status, 404);

    let viewer = Client::join(&base, "err", ClientOptions::viewer()).await;
    let rec = api("err", "recordings");
    let (status, e) = post(&rec, json!({ "format": "avi" })).await;
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("webm, mkv, mp4"),
        "{e}"
    );
    let (status, e) = post(&rec, json!({ "format": "webm", "name": "../x" })).await;
    assert_eq!(status, 400, "{e}");
    assert!(!dir.join("x.webm").exists());
    let (status, _) = post(&rec, json!({ "format": "webm", "extra": 1 })).await;
    assert_eq!(status, 400, "unknown field");
    let r = reqwest::Client::new()
        .post(&rec)
        .body("{\"format\":")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "malformed JSON");
    let r = reqwest::Client::new()
        .post(&rec)
        .body("format=webm")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);
    let (status, _) = post(&format!("{rec}/0123456789abcdef/pause"), json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = delete(&format!("{rec}/nope")).await;
    assert_eq!(status, 404);
    let (status, first) = post(&rec, json!({ "format": "webm", "name": "same" })).await;
    assert_eq!(status, 201, "{first}");
    let (status, e) = post(&rec, json!({ "format": "webm", "name": "same" })).await;
    assert_eq!(
        status, 409,
        "an existing recording is never overwritten: {e}"
    );

    let streams = api("err", "streams");
    let (status, e) = post(&streams, json!({ "kind": "hls" })).await;
    assert_eq!(status, 500, "unwritable HLS directory: {e}");
    assert!(e["error"].as_str().unwrap().contains("cannot write"), "{e}");
    let (status, _) = post(&streams, json!({ "kind": "dash" })).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &streams,
        json!({ "kind": "rtmp", "url": "http://example.com/x" }),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(&streams, json!({ "kind": "rtmp" })).await;
    assert_eq!(status, 400);
    let rec_id = first["id"].as_str().unwrap();
    let (status, _) = post(&format!("{streams}/{rec_id}/pause"), json!({})).await;
    assert_eq!(status, 404, "a recording is not a stream");

    // The room was not disturbed by any of it.
    let before = viewer.received.frame_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        viewer.received.frame_count() >= before + 15,
        "the room stalled"
    );
    viewer.close().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small tmpfs, so the test can fill a disk (the tests run as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs at {} (needs root)", path.display());
        Self(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_the_recording_not_the_room() {
    init_logging();
    let dir = temp_dir("full");
    let disk = Tmpfs::mount(&dir.join("recordings"), "2m");
    let server = TestServer::start(output_config(&dir)).await;
    let base = server.url("");
    let room = "full";
    let (a, b, _) = two_publishers(&base, room).await;
    let viewer = Client::join(&base, room, ClientOptions::viewer()).await;
    let api = server.url(&format!("/api/rooms/{room}/recordings"));
    let (status, info) = post(&api, json!({ "format": "webm" })).await;
    assert_eq!(status, 201, "{info}");
    let rec = format!("{api}/{}", info["id"].as_str().unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Fill the disk.
    {
        use std::io::Write;
        let mut filler = std::fs::File::create(disk.0.join("filler")).unwrap();
        while filler.write_all(&[0u8; 16 * 1024]).is_ok() {}
    }
    wait_for("the recording reports the full disk", LIMIT, || async {
        let (_, v) = send(reqwest::Method::GET, &rec, None).await;
        v["state"] == "failed"
    })
    .await;
    let (_, v) = send(reqwest::Method::GET, &rec, None).await;
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    let (status, e) = post(&api, json!({ "format": "webm" })).await;
    assert_eq!(status, 507, "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("No space left"),
        "{e}"
    );
    let (status, _) = delete(&rec).await;
    assert_eq!(status, 409, "a failed recording cannot be stopped again");
    let before = viewer.received.frame_count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        viewer.received.frame_count() >= before + 15,
        "the room stalled"
    );
    a.close().await;
    b.close().await;
    viewer.close().await;
    server.stop().await;
    drop(disk);
    let _ = std::fs::remove_dir_all(&dir);
}

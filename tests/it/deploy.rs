//! Deployment (issue 16): what an operator's stack relies on.

use crate::common::{TestServer, init_logging, test_config};
use crate::signalling::{connect, recv, send};
use base64::Engine as _;
use serde_json::json;

const TURN_SECRET: &str = "a shared secret for coturn";
const TURN_URL: &str = "turn:127.0.0.1:23478?transport=udp";

/// Whether `credential` is coturn's password for `username` under the secret, and the
/// username's expiry is `ttl` from now (within the test's own few seconds).
fn check_turn(username: &str, credential: &str, identity: &str, ttl: u64) {
    let (expiry, who) = username.split_once(':').expect("<expiry>:<identity>");
    assert_eq!(who, identity, "{username}");
    let expiry: u64 = expiry.parse().expect("Unix seconds");
    let now = mixdown::auth::now_unix();
    assert!(
        expiry >= now + ttl - 10 && expiry <= now + ttl + 1,
        "expires at {expiry}, now {now}, ttl {ttl}"
    );
    assert_turn_password(TURN_SECRET, username, credential);
}

/// `credential` is coturn's REST-API password for `username` under `secret`: the base64
/// HMAC-SHA1 of the username (checked apart from the server's own code path).
pub(crate) fn assert_turn_password(secret: &str, username: &str, credential: &str) {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let tag = base64::engine::general_purpose::STANDARD
        .decode(credential)
        .expect("a base64 credential");
    ring::hmac::verify(&key, username.as_bytes(), &tag).expect("the credential verifies");
}

/// `Link` headers of a WHIP answer and WebSocket welcomes hand out TURN credentials that
/// verify against the shared secret and expire `ttl_s` from now, named after the caller;
/// the secret itself appears nowhere. Without `[rtc.turn]`, no TURN entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_verify_against_the_secret_and_expire() {
    init_logging();
    let mut c = test_config();
    c.rtc.turn.urls = vec![TURN_URL.into()];
    c.rtc.turn.secret = TURN_SECRET.into();
    c.rtc.turn.ttl_s = 600;
    c.rtc.ice_servers = vec![mixdown::config::IceServer {
        urls: vec!["stun:stun.example.org:3478".into()],
        ..Default::default()
    }];
    let server = TestServer::start(c).await;
    let offer = crate::security::real_offer(&server.url("")).await;
    let res = reqwest::Client::new()
        .post(server.url("/whip/turnroom"))
        .header("Content-Type", "application/sdp")
        .body(offer.clone())
        .send()
        .await
        .expect("the server answers");
    assert_eq!(res.status().as_u16(), 201);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let links: Vec<String> = res
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert!(
        links
            .iter()
            .any(|l| l.starts_with("<stun:stun.example.org:3478>; rel=\"ice-server\"")),
        "{links:?}"
    );
    let turn = links
        .iter()
        .find(|l| l.starts_with(&format!("<{TURN_URL}>; rel=\"ice-server\"")))
        .unwrap_or_else(|| panic!("no TURN link in {links:?}"));
    let field = |name: &str| {
        let start = turn.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
        turn[start..].split('"').next().unwrap().to_owned()
    };
    assert!(turn.contains("credential-type=\"password\""), "{turn}");
    let public = mixdown::ids::SessionId::public_in_location(&location).expect("public id");
    check_turn(&field("username"), &field("credential"), public, 600);
    assert!(!links.iter().any(|l| l.contains(TURN_SECRET)));

    // The WebSocket welcome: the same, named after the participant's id.
    let mut ws = connect(&server).await;
    send(
        &mut ws,
        json!({"type": "join", "room": "turnroom", "name": "Ada"}),
    )
    .await;
    let welcome = recv(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let servers = welcome["ice_servers"].as_array().expect("ice_servers");
    let t = servers
        .iter()
        .find(|s| s["urls"][0] == TURN_URL)
        .unwrap_or_else(|| panic!("no TURN entry in {welcome}"));
    check_turn(
        t["username"].as_str().unwrap(),
        t["credential"].as_str().unwrap(),
        welcome["id"].as_str().unwrap(),
        600,
    );
    assert!(!welcome.to_string().contains(TURN_SECRET));
    drop(ws);
    server.stop().await;

    // Without [rtc.turn]: the static servers only.
    let server = TestServer::start(test_config()).await;
    let res = reqwest::Client::new()
        .post(server.url("/whip/plain"))
        .header("Content-Type", "application/sdp")
        .body(offer)
        .send()
        .await
        .expect("the server answers");
    assert_eq!(res.status().as_u16(), 201);
    assert_eq!(res.headers().get_all("link").iter().count(), 0);
    server.stop().await;
}

/// A sample: name, sorted labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// The scrape, parsed by a Prometheus text-format parser (`prometheus-parse`): each sample's
/// name and labels with its value.
async fn scrape(server: &TestServer) -> Vec<Sample> {
    let res = reqwest::get(server.url("/metrics")).await.expect("scrape");
    assert_eq!(res.status().as_u16(), 200);
    let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let text = res.text().await.unwrap();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the scrape parses");
    assert!(parsed.samples.len() > 30, "{text}");
    parsed
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(0.0, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            (s.metric, labels, value)
        })
        .collect()
}

/// One sample's value (0 when absent), by name and `key=value` labels.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map_or(0.0, |s| s.2)
}

/// `/metrics` after a two-person room with a recording: the gauges say what runs (a room,
/// two publishers, two decoders, the canvas encoder, a recording), the counters moved by what
/// happened (two joins, datagrams both ways, about 30 composite frames a second, a join's
/// duration observed twice), and when everyone has left the gauges fall back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_say_what_a_room_with_a_recording_does() {
    use crate::common::client::{Client, ClientOptions};
    use crate::common::wait_for;
    use std::time::{Duration, Instant};
    init_logging();
    let dir = std::env::temp_dir().join(format!("mixdown-it-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = test_config();
    c.recording.dir = dir.join("recordings");
    let server = TestServer::start(c).await;
    let before = scrape(&server).await;
    let counter = |s: &[Sample], name: &str| value(s, name, &[]);
    assert_eq!(counter(&before, "mixdown_rooms"), 0.0);

    let base = server.url("");
    let a = Client::join(
        &base,
        "metered",
        ClientOptions::participant(0xffff0000, 500.0),
    )
    .await;
    let b = Client::join(
        &base,
        "metered",
        ClientOptions::participant(0xff0000ff, 700.0),
    )
    .await;
    wait_for(
        "both decode the composite",
        Duration::from_secs(30),
        || async { a.received.frame_count() > 10 && b.received.frame_count() > 10 },
    )
    .await;
    let res = reqwest::Client::new()
        .post(server.url("/api/rooms/metered/recordings"))
        .json(&json!({ "format": "webm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let t0 = Instant::now();
    let mid0 = scrape(&server).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mid = scrape(&server).await;
    let secs = t0.elapsed().as_secs_f64();

    assert_eq!(counter(&mid, "mixdown_rooms"), 1.0);
    assert_eq!(
        value(&mid, "mixdown_participants", &[("role", "publisher")]),
        2.0
    );
    assert_eq!(
        value(&mid, "mixdown_participants", &[("role", "viewer")]),
        0.0
    );
    assert_eq!(counter(&mid, "mixdown_video_decoders"), 2.0);
    assert_eq!(
        value(
            &mid,
            "mixdown_video_encoders",
            &[("codec", "VP8"), ("tier", "0")]
        ),
        1.0
    );
    assert_eq!(
        value(&mid, "mixdown_video_receivers", &[("tier", "0")]),
        2.0
    );
    assert_eq!(
        value(
            &mid,
            "mixdown_outputs",
            &[("format", "webm"), ("state", "recording")]
        ),
        1.0
    );
    assert!(
        counter(&mid, "mixdown_recording_bytes") > 10_000.0,
        "{mid:?}"
    );
    let delta = |name: &str| counter(&mid, name) - counter(&before, name);
    assert_eq!(delta("mixdown_joins_total"), 2.0);
    assert_eq!(delta("mixdown_join_duration_seconds_count"), 2.0);
    assert!(delta("mixdown_udp_datagrams_received_total") > 500.0);
    assert!(delta("mixdown_udp_datagrams_sent_total") > 500.0);
    assert!(delta("mixdown_udp_sent_bytes_total") > 100_000.0);
    // The canvas encoder at 30 fps over the 4 s between the middle scrapes.
    let frames = counter(&mid, "mixdown_composite_frames_total")
        - counter(&mid0, "mixdown_composite_frames_total");
    assert!(
        frames / secs > 20.0 && frames / secs < 40.0,
        "{frames} composite frames in {secs:.1} s"
    );
    assert!(counter(&mid, "mixdown_keyframes_forced_total") >= 1.0);
    assert!(counter(&mid, "process_resident_memory_bytes") > 20e6);
    assert!(counter(&mid, "process_cpu_seconds_total") > 0.0);

    a.leave().await;
    b.leave().await;
    wait_for("the room to close", Duration::from_secs(15), || async {
        let s = scrape(&server).await;
        counter(&s, "mixdown_rooms") == 0.0
    })
    .await;
    let after = scrape(&server).await;
    assert_eq!(
        value(&after, "mixdown_participants", &[("role", "publisher")]),
        0.0
    );
    assert_eq!(counter(&after, "mixdown_video_decoders"), 0.0);
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM to the real binary during a call with a recording: `/readyz` turns 503 and new
/// joins get 503 with `Retry-After`, the WebSocket participant is told `shutting-down`, the
/// call goes on until the drain time is up, then the process exits 0 and the recording is
/// finalised (its header has a duration) and plays the publisher's red. Its log, in
/// `--log-format json`, is one JSON object a line with the join and the drain in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_tells_the_call_finalises_the_recording_and_exits_0() {
    use crate::common::client::{Client, ClientOptions};
    use crate::common::media_file::{decode, header_duration};
    use crate::common::wait_for;
    use futures_util::{SinkExt, StreamExt};
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;
    init_logging();
    // The test's own clients and decoder (the server is another process).
    mixdown::mixer::init().unwrap();
    let dir = std::env::temp_dir().join(format!("mixdown-it-drain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp_port = test_config().rtc.udp_port;
    let config = dir.join("mixdown.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhost = \"127.0.0.1\"\nhttp_port = {http_port}\ndrain_s = 3\n\
             [rtc]\nudp_port = {udp_port}\n[video]\nwidth = 640\nheight = 360\n\
             bitrate_kbps = 800\n[recording]\ndir = \"{}\"\n",
            dir.join("recordings").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mixdown"))
        .arg("--config")
        .arg(&config)
        .args(["--log-format", "json"])
        .env("RUST_LOG", "mixdown=info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the server starts");
    let base = format!("http://127.0.0.1:{http_port}");
    wait_for("the server to listen", Duration::from_secs(20), || async {
        reqwest::get(format!("{base}/readyz"))
            .await
            .is_ok_and(|r| r.status().as_u16() == 200)
    })
    .await;

    let offer = crate::security::real_offer(&base).await;
    let red = Client::join(
        &base,
        "drain",
        ClientOptions::participant(0xffff0000, 500.0),
    )
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{http_port}/ws"))
        .await
        .expect("websocket");
    ws.send(Message::Text(
        json!({"type": "join", "room": "drain", "name": "Ada"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{base}/api/rooms/drain/recordings"))
        .json(&json!({ "format": "webm" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    wait_for("the call to run", Duration::from_secs(20), || async {
        red.received.frame_count() > 30
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // SAFETY: kill sends a signal to our own child.
    let pid = child.id().expect("running") as libc::pid_t;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();

    // The WebSocket participant is told (other room events may come first).
    let told = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "shutting-down" {
                    return v;
                }
            }
        }
        serde_json::Value::Null
    })
    .await
    .expect("told within 5 s");
    assert!(
        told["retry_after_s"].as_u64().is_some_and(|s| s >= 3),
        "{told}"
    );
    // Not ready, and joins refused with Retry-After; the call still runs.
    let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.headers().contains_key("retry-after"));
    let refused = http
        .post(format!("{base}/whip/drain"))
        .header("Content-Type", "application/sdp")
        .body(offer)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let frames = red.received.frame_count();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        red.received.frame_count() > frames + 15,
        "the call goes on while draining"
    );

    // The drain time is up: the process ends by itself, with 0.
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within the drain time and 20 s")
        .unwrap();
    let took = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took >= Duration::from_secs(3), "drained for {took:?}");
    drop(red);
    let files: Vec<_> = std::fs::read_dir(dir.join("recordings"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "webm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let header = header_duration(&files[0]).expect("a finalised file has a duration");
    assert!(header > Duration::from_secs(4), "{header:?}");
    let d = decode(
        &format!("filesrc location={}", files[0].display()),
        Duration::from_secs(30),
    )
    .await;
    assert!(d.error.is_none(), "{:?}", d.error);
    assert!(
        d.video_span() > Duration::from_secs(4),
        "{:?}",
        d.video_span()
    );
    let last = d.last_frame().expect("frames");
    let mean = last.mean([
        last.width / 4,
        last.height / 4,
        last.width / 2,
        last.height / 2,
    ]);
    assert!(
        crate::common::close_to(mean, [255, 0, 0], 60.0),
        "the recording's last frame is {mean:?}, not the publisher's red"
    );
    let log = std::fs::read_to_string(dir.join("server.log")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    let has = |message: &str, key: &str, value: &str| {
        lines.iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message))
                && l[key] == value
        })
    };
    assert!(has("joined", "room", "drain"), "{log}");
    assert!(has("shutting down: draining", "level", "INFO"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /api/rooms/{room}/participants/{id}/stats`: a publisher's media arrives and its
/// video is decoded at the rate it sends (15 fps); a viewer gets the canvas tier and the bytes it is sent; an
/// unknown id is 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_stats_show_rates_decoding_and_the_tier() {
    use crate::common::client::{Client, ClientOptions};
    use crate::common::wait_for;
    use std::time::Duration;
    init_logging();
    let server = TestServer::start(test_config()).await;
    let base = server.url("");
    let mut red = ClientOptions::participant(0xffff0000, 500.0);
    red.receive = false;
    let red = Client::join(&base, "stats", red).await;
    let viewer = Client::join(&base, "stats", ClientOptions::viewer()).await;
    wait_for("the viewer decodes", Duration::from_secs(30), || async {
        viewer.received.frame_count() > 30
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = |location: &str| {
        let id = mixdown::ids::SessionId::public_in_location(location).expect("id");
        let url = server.url(&format!("/api/rooms/stats/participants/{id}/stats"));
        async move {
            let r = reqwest::get(url).await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    let p = stats(&red.location).await;
    // The test client sends a solid colour at 320x240, 15 fps (tens of kbit/s), and a tone.
    let received = p["received_kbps"].as_f64().expect("received_kbps");
    assert!(received > 30.0, "{p}");
    let fps = p["decode_fps"].as_f64().expect("decode_fps");
    assert!((10.0..=20.0).contains(&fps), "{p}");
    assert!(
        p["tier"].is_null(),
        "a publisher that receives nothing has no tier: {p}"
    );
    let v = stats(&viewer.location).await;
    assert_eq!(v["tier"], 0, "{v}");
    assert_eq!(v["quality"], "360p", "{v}");
    assert!(v["sent_kbps"].as_f64().is_some_and(|k| k > 30.0), "{v}");
    assert!(v["decode_fps"].is_null(), "{v}");
    let missing = reqwest::get(server.url("/api/rooms/stats/participants/0123456789abcdef/stats"))
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    red.leave().await;
    viewer.leave().await;
    server.stop().await;
}

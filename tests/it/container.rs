//! The container stack of `docker/` for real (issue 16): the image built from this build's
//! binary (`scripts/container.sh`, rootful podman, no registry), `docker/compose.yaml` started
//! on loopback with its own ports, and a call through it: headless Chromium runs the web app
//! **relay-only**, so every packet of its media goes through the coturn container with the
//! short-lived credentials Mixdown handed it, next to a webrtc-rs participant on loopback.
//! Checked as a person would: each sees the other's colour in the other's tile and hears the
//! other's tone; a recording lands in the host folder mounted as the recordings volume; the
//! stack stops on SIGTERM with exit status 0 and leaves nothing behind.
//!
//! Needs root and a network to Debian's mirror and PyPI the first time (podman, mmdebstrap,
//! podman-compose, the Debian base image: cached in /var/tmp/mixdown-podman afterwards);
//! without them it prints `SKIPPED: <reason>` and passes.

use crate::common::cdp::Cdp;
use crate::common::client::{Client, ClientOptions};
use crate::common::fake_media::{canvas_probe, colour_of, solid_y4m, tone_wav};
use crate::common::{CHROMIUM, close_to, init_logging, tone_db, wait_for};
use mixdown::auth::{VideoGrant, mint, now_unix};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Loopback ports of the stack, apart from the other tests' (21000 upwards) and outside the
/// kernel's ephemeral range.
const HTTP_PORT: u16 = 23480;
const MEDIA_PORT: u16 = 23481;
const TURN_PORT: u16 = 23478;
const RELAY_PORTS: (u16, u16) = (23500, 23549);
/// A compose project of its own, so a stack someone runs from docker/ is never touched.
const PROJECT: &str = "mixdown-test";
const API_KEY: &str = "APIcontainer";
const API_SECRET: &str = "a-container-test-secret-of-at-least-32-bytes";
const TURN_SECRET: &str = "a-turn-secret-for-the-container-test";
/// The webrtc-rs participant: red, 500 Hz. Chromium's fake devices play blue and 800 Hz.
const RED: (u32, [u8; 3]) = (0xffff0000, [255, 0, 0]);
const BLUE: [u8; 3] = [0, 0, 255];
const RUST_TONE: f32 = 500.0;
const CHROMIUM_TONE: f32 = 800.0;
/// Two lossy encodes and a colour-space round trip (as in e2e.rs).
const COLOUR_TOLERANCE: f32 = 48.0;
/// Hang guard only.
const LIMIT: Duration = Duration::from_secs(60);

/// Runs before the web app's own script: every `RTCPeerConnection` it makes is kept, with
/// the configuration it was given, for the test to inspect (the app itself is made
/// relay-only by `?relay=1`).
const RELAY_ONLY: &str = r#"(() => {
  const Native = window.RTCPeerConnection;
  const seen = (window.__relay = { configs: [], pcs: [] });
  window.RTCPeerConnection = class extends Native {
    constructor(config = {}, ...rest) {
      super(config, ...rest);
      seen.configs.push(JSON.parse(JSON.stringify(config)));
      seen.pcs.push(this);
    }
  };
})();"#;

/// The page's own tile in the web app's layout (fractions of the canvas).
const OWN_TILE: &str =
    "(l => l && l.tiles.find(t => t.id === window.mixdown.id))(window.mixdown.layout)";

/// The selected ICE pair of the web app's latest connection, from Chromium's own stats, and
/// what all its pairs carried: through relay candidates, and through any other kind.
const SELECTED_PAIR: &str = r#"(async () => {
  const pc = window.__relay && window.__relay.pcs[window.__relay.pcs.length - 1];
  if (!pc) return null;
  const stats = await pc.getStats();
  const out = { relayBytesReceived: 0, otherBytesReceived: 0, otherPairs: 0 };
  stats.forEach((r) => {
    if (r.type === 'candidate-pair') {
      const local = stats.get(r.localCandidateId);
      if (local && local.candidateType === 'relay') out.relayBytesReceived += r.bytesReceived || 0;
      else { out.otherPairs += 1; out.otherBytesReceived += r.bytesReceived || 0; }
    }
    if (r.type !== 'transport' || !r.selectedCandidatePairId) return;
    const pair = stats.get(r.selectedCandidatePairId);
    const local = pair && stats.get(pair.localCandidateId);
    const remote = pair && stats.get(pair.remoteCandidateId);
    if (!local || !remote) return;
    Object.assign(out, { localType: local.candidateType, relayProtocol: local.relayProtocol || null,
      turnUrl: local.url || null, local: `${local.address}:${local.port}`,
      remoteType: remote.candidateType, remote: `${remote.address}:${remote.port}`,
      protocol: remote.protocol });
  });
  return out;
})()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_a_relay_only_browser_through_coturn() {
    init_logging();
    let started = Instant::now();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("SKIPPED: the container test needs root (rootful podman)");
        return;
    }
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: `make test` installs Debian's chromium package"
    );
    // The Rust participant encodes and decodes with GStreamer in this process.
    mixdown::mixer::init().expect("GStreamer and its plugins");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("scripts/container.sh");

    // podman, the base image (cached), the images from this build's binary.
    let t = Instant::now();
    let setup = Command::new("bash")
        .arg(&script)
        .arg("setup")
        .output()
        .expect("bash runs");
    match setup.status.code() {
        Some(0) => {}
        Some(3) => {
            println!("SKIPPED: {}", last_line(&setup.stderr));
            return;
        }
        _ => panic!("container.sh setup failed: {}", text(&setup)),
    }
    let setup_time = t.elapsed();
    let t = Instant::now();
    let build = Command::new("bash")
        .arg(&script)
        .args(["build", env!("CARGO_BIN_EXE_mixdown")])
        .output()
        .expect("bash runs");
    assert!(build.status.success(), "image build: {}", text(&build));
    let build_time = t.elapsed();

    // The stack's own configuration, with the TURN URLs the browser reaches on loopback.
    let dir = std::env::temp_dir().join(format!("mixdown-container-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config_dir = dir.join("config");
    let recordings = dir.join("recordings");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&recordings).unwrap();
    // The image's `mixdown` user (docker/Dockerfile) owns what it writes to.
    std::os::unix::fs::chown(&recordings, Some(10001), Some(10001)).unwrap();
    let turn_urls = [
        format!("turn:127.0.0.1:{TURN_PORT}?transport=udp"),
        format!("turn:127.0.0.1:{TURN_PORT}?transport=tcp"),
    ];
    let config = stack_config(&root.join("docker/config/mixdown.toml"), &turn_urls);
    std::fs::write(config_dir.join("mixdown.toml"), config).unwrap();

    let mut stack = Stack {
        script: script.clone(),
        env: vec![
            ("MIXDOWN_HOST", "127.0.0.1".into()),
            ("MIXDOWN_HTTP_PORT", HTTP_PORT.to_string()),
            ("MIXDOWN_UDP_PORT", MEDIA_PORT.to_string()),
            ("MIXDOWN_CONFIG_DIR", config_dir.display().to_string()),
            ("MIXDOWN_RECORDINGS", recordings.display().to_string()),
            ("MIXDOWN_API_KEY", API_KEY.into()),
            ("MIXDOWN_API_SECRET", API_SECRET.into()),
            ("TURN_SECRET", TURN_SECRET.into()),
            ("TURN_PORT", TURN_PORT.to_string()),
            ("TURN_MIN_PORT", RELAY_PORTS.0.to_string()),
            ("TURN_MAX_PORT", RELAY_PORTS.1.to_string()),
            // Loopback only, and relays may reach Mixdown on loopback: for this test only.
            (
                "TURN_EXTRA_ARGS",
                "--allow-loopback-peers --listening-ip=127.0.0.1 --relay-ip=127.0.0.1".into(),
            ),
        ],
        dir: dir.clone(),
        up: false,
    };
    // Whatever an interrupted earlier run left.
    stack.compose(&["down", "-v", "-t", "5"]);
    let t = Instant::now();
    let up = stack.compose(&["up", "-d", "--no-build"]);
    stack.up = true;
    assert!(up.status.success(), "compose up: {}", text(&up));
    let up_time = t.elapsed();

    // Health checks do not run under podman without systemd: poll both services.
    let base = format!("http://127.0.0.1:{HTTP_PORT}");
    let http = reqwest::Client::new();
    wait_for("Mixdown's /healthz in the container", LIMIT, || async {
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    wait_for("coturn answering STUN", LIMIT, || stun_answers(TURN_PORT)).await;
    let ready_time = t.elapsed();
    // The image's HEALTHCHECK itself: podman runs it on request (never on a timer here).
    let health = stack.podman(&["healthcheck", "run", &format!("{PROJECT}_mixdown_1")]);
    assert!(health.status.success(), "health check: {}", text(&health));

    // The webrtc-rs participant, directly on loopback.
    let room = "container";
    let mut rust = ClientOptions::participant(RED.0, RUST_TONE);
    rust.token = Some(token(room, "rust", |_| {}));
    let rust = Client::join(&base, room, rust).await;

    // Chromium: the web app from the container, relay-only, its camera and microphone fake
    // devices playing a blue picture and an 800 Hz tone from files.
    let y4m = dir.join("blue.y4m");
    std::fs::write(&y4m, solid_y4m(320, 180, BLUE)).unwrap();
    let wav = dir.join("tone.wav");
    std::fs::write(&wav, tone_wav(CHROMIUM_TONE)).unwrap();
    let profile = dir.join("profile");
    let (mut chromium, cdp) = Cdp::launch(&profile, &Cdp::fake_devices(&y4m, &wav)).await;
    let t = Instant::now();
    let page = cdp
        .open_with(
            &format!(
                "{base}/?room={room}&name=Relay&autojoin=1&relay=1&token={}",
                token(room, "relay", |_| {})
            ),
            RELAY_ONLY,
        )
        .await;
    wait_for(
        "the web app decodes the composite, with audio",
        LIMIT,
        || async {
            let s = cdp
                .eval(&page, "window.mixdown && window.mixdown.stats")
                .await;
            s["framesDecoded"].as_u64().unwrap_or(0) > 30
                && s["audioLevel"].as_f64().unwrap_or(0.0) > 0.0
        },
    )
    .await;
    let join_time = t.elapsed();

    // Its media went through coturn: a relay candidate, to Mixdown's media port, and it has
    // no other kind of candidate pair.
    wait_for("100 kB received through the relay", LIMIT, || async {
        let pair = cdp.eval(&page, SELECTED_PAIR).await;
        pair["relayBytesReceived"].as_u64().unwrap_or(0) > 100_000
    })
    .await;
    let pair = cdp.eval(&page, SELECTED_PAIR).await;
    println!("chromium's selected pair: {pair}");
    assert_eq!(pair["localType"], "relay", "{pair}");
    assert_eq!(pair["remote"], format!("127.0.0.1:{MEDIA_PORT}"), "{pair}");
    assert!(
        pair["turnUrl"]
            .as_str()
            .is_some_and(|u| u.contains(&format!("127.0.0.1:{TURN_PORT}"))),
        "{pair}"
    );
    assert_eq!(pair["otherPairs"], 0, "{pair}");
    // With credentials Mixdown made for this member: `<expiry>:<its token's identity>`, an
    // hour (ttl_s) ahead, and the HMAC of that under the secret both got from TURN_SECRET.
    let config = cdp
        .eval(
            &page,
            "window.__relay.configs[window.__relay.configs.length - 1]",
        )
        .await;
    assert_eq!(
        config["iceTransportPolicy"], "relay",
        "the app's ?relay=1: {config}"
    );
    let turn = config["iceServers"]
        .as_array()
        .and_then(|s| {
            s.iter().find(|s| {
                s["urls"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|u| u == &json!(turn_urls[0])))
            })
        })
        .unwrap_or_else(|| panic!("no TURN server handed to the web app: {config}"))
        .clone();
    let username = turn["username"].as_str().unwrap_or_default();
    let (expiry, identity) = username.split_once(':').expect("<expiry>:<identity>");
    assert_eq!(identity, "relay", "{username}");
    let ttl = expiry
        .parse::<u64>()
        .unwrap_or(0)
        .saturating_sub(now_unix());
    assert!(
        (3500..=3600).contains(&ttl),
        "{username}: valid for {ttl} s"
    );
    crate::deploy::assert_turn_password(
        TURN_SECRET,
        username,
        turn["credential"].as_str().unwrap_or_default(),
    );
    assert!(!config.to_string().contains(TURN_SECRET));

    // What each sees and hears. The web app's layout names Chromium's tile (fractions of the
    // canvas); the Rust participant finds blue there and hears 800 Hz but not itself.
    let last = std::sync::Mutex::new(String::new());
    wait_for(
        "blue in Chromium's tile, as the Rust participant decodes it",
        LIMIT,
        || async {
            let tile = cdp.eval(&page, OWN_TILE).await;
            let Some(frame) = rust.received.frame() else {
                return false;
            };
            let f = |k: &str, scale: u32| {
                (tile[k].as_f64().unwrap_or(0.0) * scale as f64).round() as u32
            };
            let rect = [
                f("x", frame.width),
                f("y", frame.height),
                f("w", frame.width),
                f("h", frame.height),
            ];
            if rect[2] == 0 || rect[3] == 0 {
                return false;
            }
            let mean = frame.mean(rect);
            *last.lock().unwrap() = format!(
                "tile {rect:?} of {}x{}: mean {mean:?}",
                frame.width, frame.height
            );
            close_to(mean, BLUE, COLOUR_TOLERANCE)
        },
    )
    .await;
    let last = last.into_inner().unwrap();
    println!("chromium's tile at the rust participant: {last}");
    // Chromium's audio processing takes about 20 dB off its fake microphone's tone (measured
    // -26 to -30 dB, steady over 24 s); the participant's own tone stays near -100 dB.
    wait_for(
        "the Rust participant hears Chromium's tone",
        LIMIT,
        || async {
            let audio = rust.received.recent_audio(48_000);
            audio.len() >= 24_000
                && tone_db(&audio, CHROMIUM_TONE) > -40.0
                && tone_db(&audio, CHROMIUM_TONE) - tone_db(&audio, RUST_TONE) >= 20.0
        },
    )
    .await;
    let audio = rust.received.recent_audio(48_000);
    println!(
        "the rust participant hears chromium at {:.1} dB and itself at {:.1} dB",
        tone_db(&audio, CHROMIUM_TONE),
        tone_db(&audio, RUST_TONE)
    );
    // And Chromium sees red in the Rust participant's tile of what it plays.
    wait_for(
        "red in the Rust participant's tile, in Chromium",
        LIMIT,
        || async {
            let v = cdp.eval(&page, &canvas_probe()).await;
            colour_of(&v).is_some_and(|c| close_to(c, RED.1, COLOUR_TOLERANCE))
        },
    )
    .await;

    // A recording lands in the host folder mounted as the recordings volume.
    let api = format!("{base}/api/rooms/{room}/recordings");
    let ops = token(room, "ops", |g| {
        g.room_join = false;
        g.room_record = true;
    });
    let res = http
        .post(&api)
        .bearer_auth(&ops)
        .json(&json!({"format": "webm", "name": "container"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    let rec: Value = res.json().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let res = http
        .delete(format!("{api}/{}", rec["id"].as_str().unwrap()))
        .bearer_auth(&ops)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let file = recordings.join("container.webm");
    let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    assert!(size > 10_000, "{} has {size} bytes", file.display());

    // Leave, then stop: SIGTERM ends Mixdown cleanly (status 0) and coturn through its init.
    cdp.eval(&page, "window.mixdown.leave()").await;
    rust.leave().await;
    let _ = chromium.kill().await;
    let t = Instant::now();
    let stop = stack.compose(&["stop", "-t", "20"]);
    assert!(stop.status.success(), "compose stop: {}", text(&stop));
    let stop_time = t.elapsed();
    let status = stack.podman(&[
        "inspect",
        "--format",
        "{{.State.ExitCode}}",
        &format!("{PROJECT}_mixdown_1"),
    ]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.trim(), "0", "Mixdown's exit status after SIGTERM");
    let t = Instant::now();
    stack.down();
    let down_time = t.elapsed();
    let label = format!("label=io.podman.compose.project={PROJECT}");
    for what in ["ps", "pod", "volume"] {
        let args: &[&str] = match what {
            "ps" => &["ps", "-aq", "--filter", &label],
            "pod" => &["pod", "ps", "-q", "--filter", &label],
            _ => &["volume", "ls", "-q", "--filter", &label],
        };
        let left = stack.podman(args);
        let left = String::from_utf8_lossy(&left.stdout);
        assert!(
            left.trim().is_empty(),
            "{what} left by compose down: {left}"
        );
    }
    println!(
        "container stack timings: setup {setup_time:.1?}, image build {build_time:.1?}, compose up {up_time:.1?} \
         (ready {ready_time:.1?}), page open → composite {join_time:.1?}, stop {stop_time:.1?}, down {down_time:.1?}, \
         test {:.1?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The compose project; `Drop` takes it down (containers, pod, volumes) even on a panic, and
/// shows the containers' logs first when the test failed.
struct Stack {
    script: PathBuf,
    env: Vec<(&'static str, String)>,
    dir: PathBuf,
    up: bool,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg(&self.script)
            .args(["compose", "-p", PROJECT])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("bash runs")
    }

    /// `podman ARGS` with container.sh's configuration.
    fn podman(&self, args: &[&str]) -> Output {
        Command::new("bash")
            .arg("-c")
            .arg(r#"eval "$(bash "$0" env)" && exec podman "$@""#)
            .arg(&self.script)
            .args(args)
            .output()
            .expect("bash runs")
    }

    fn down(&mut self) {
        if std::mem::take(&mut self.up) {
            let down = self.compose(&["down", "-v", "-t", "5"]);
            assert!(down.status.success(), "compose down: {}", text(&down));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.up {
            if std::thread::panicking() {
                let logs = self.compose(&["logs"]);
                eprintln!("container logs:\n{}", text(&logs));
            }
            self.up = false;
            let _ = self.compose(&["down", "-v", "-t", "5"]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// docker/config/mixdown.toml as shipped, with `rtc.turn.urls` pointing at the test's coturn.
/// It must parse and validate as Mixdown's own configuration.
fn stack_config(path: &Path, turn_urls: &[String]) -> String {
    let text = std::fs::read_to_string(path).expect("docker/config/mixdown.toml");
    let mut table: toml::Table = toml::from_str(&text).expect("TOML");
    let turn = table
        .get_mut("rtc")
        .and_then(|r| r.get_mut("turn"))
        .and_then(|t| t.as_table_mut())
        .expect("docker/config/mixdown.toml has [rtc.turn]");
    turn.insert(
        "urls".into(),
        toml::Value::Array(
            turn_urls
                .iter()
                .map(|u| toml::Value::String(u.clone()))
                .collect(),
        ),
    );
    let out = toml::to_string(&table).unwrap();
    let mut parsed = mixdown::config::Config::from_toml(&out, "the container test's config")
        .expect("the stack's configuration parses");
    parsed.rtc.turn.secret = TURN_SECRET.into();
    parsed
        .validate()
        .expect("the stack's configuration validates");
    out
}

/// A token for `room` with key API_KEY (`roomJoin`, plus what `grant` adds).
fn token(room: &str, who: &str, grant: impl FnOnce(&mut VideoGrant)) -> String {
    mint(
        &crate::security::claims_for(API_KEY, who, who, room, grant),
        API_SECRET,
    )
}

/// Whether something answers a STUN binding request on loopback `port` (UDP).
async fn stun_answers(port: u16) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind("127.0.0.1:0").await else {
        return false;
    };
    // Binding request, no attributes, the magic cookie, a transaction id.
    let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    request.extend_from_slice(b"mixdown-test");
    if socket.send_to(&request, ("127.0.0.1", port)).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(
        tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await,
        Ok(Ok(n)) if n >= 20 && buf[0..2] == [0x01, 0x01] && &buf[8..20] == b"mixdown-test"
    )
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n{}{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("container.sh setup could not run")
        .to_owned()
}

//! Shared test harness: a server on loopback, WebRTC clients (webrtc-rs in `client.rs`,
//! GStreamer's webrtcbin in `webrtcbin.rs`) that send a solid colour and a sine tone and decode
//! what they receive, and the measurements a person would make: colours in tiles, tones in the
//! audio.

pub mod cdp;
pub mod fake_media;
pub mod firefox;
pub mod media_file;
pub use mixdown_bench::netns;
pub mod webrtcbin;

pub use mixdown_bench::client;
pub use mixdown_bench::received::{Received, tone_db};

use mixdown::app::Server;
use mixdown::config::Config;
use mixdown::http::AppState;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use mixdown_bench::weak::{CHROMIUM, CHROMIUM_FLAGS};

/// Each test server gets its own media port, so tests never share one (a closed socket's
/// port is never reused by the next test).
static NEXT_PORT: AtomicU16 = AtomicU16::new(21000);

pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.http_port = 0;
    c.rtc.udp_port = NEXT_PORT.fetch_add(1, Ordering::SeqCst);
    c.video.width = 640;
    c.video.height = 360;
    c.video.bitrate_kbps = 800;
    // Stopping a test server closes its rooms at once (the drain is tested on its own).
    c.server.drain_s = 0;
    c
}

/// UDP sockets of this machine (this network namespace) bound to local `port`, from
/// `/proc/net/udp` and `/proc/net/udp6`: what `ss -uan` would list.
pub fn udp_sockets_on_port(port: u16) -> usize {
    let hex = format!(":{port:04X}");
    mixdown_bench::measure::count_udp_sockets(|f| f.get(1).is_some_and(|l| l.ends_with(&hex)))
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// base64 SHA-256 of the certificate's public key, when serving HTTPS.
    pub spki: Option<String>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.addr;
        let state = server.state.clone();
        let scheme = server.scheme();
        let spki = server.tls.as_ref().map(|t| t.spki_sha256.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async move {
                    let _ = stopped.await;
                })
                .await
                .expect("server runs");
        });
        Self {
            addr,
            state,
            scheme,
            spki,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr, path)
    }

    /// What `GET /api/rooms/{room}` shows, read in-process (so it works whatever the
    /// server's tokens and TLS).
    pub async fn room_info(&self, room: &str) -> Option<serde_json::Value> {
        let id = mixdown::ids::RoomId::parse(room).ok()?;
        let info = self.state.rooms.room_info(&id).await?;
        serde_json::to_value(info).ok()
    }

    /// The tile `[x, y, w, h]` of the participant whose WHIP `Location` is `location`.
    pub async fn tile_of(&self, room: &str, location: &str) -> Option<[u32; 4]> {
        let info = self.room_info(room).await?;
        let session = mixdown::ids::SessionId::public_in_location(location)?;
        let p = info["participants"]
            .as_array()?
            .iter()
            .find(|p| p["session"] == session)?;
        let t = p["tile"].as_array()?;
        let v: Vec<u32> = t
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect();
        (v.len() == 4).then(|| [v[0], v[1], v[2], v[3]])
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(20), t).await;
        }
    }
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `limit` (a hang guard,
/// not a timing assertion).
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn close_to(actual: [f32; 3], expected: [u8; 3], tolerance: f32) -> bool {
    actual
        .iter()
        .zip(expected)
        .all(|(a, e)| (a - e as f32).abs() <= tolerance)
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "mixdown=info".into()),
        )
        .with_test_writer()
        .try_init();
}

#[test]
fn tone_detector_separates_tones() {
    let s: Vec<f32> = (0..24_000)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 500.0 * i as f32 / 48_000.0).sin())
        .collect();
    let on = tone_db(&s, 500.0);
    let off = tone_db(&s, 800.0);
    assert!(on > -15.0, "{on}");
    assert!(on - off > 40.0, "{on} vs {off}");
}

//! Shared test harness: a server on loopback, WebRTC clients (webrtc-rs in `client.rs`,
//! GStreamer's webrtcbin in `webrtcbin.rs`) that send a solid colour and a sine tone and decode
//! what they receive, and the measurements a person would make: colours in tiles, tones in the
//! audio.

pub mod client;
pub mod webrtcbin;

use mixdown::app::Server;
use mixdown::config::Config;
use mixdown::http::AppState;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Each test server gets its own media port range, so tests never share ports.
static NEXT_RANGE: AtomicU16 = AtomicU16::new(21000);

pub fn test_config() -> Config {
    let base = NEXT_RANGE.fetch_add(100, Ordering::SeqCst);
    let mut c = Config::default();
    c.server.http_port = 0;
    c.rtc.port_min = base;
    c.rtc.port_max = base + 99;
    c.video.width = 640;
    c.video.height = 360;
    c.video.bitrate_kbps = 800;
    c
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub state: AppState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        let server = Server::bind(config).await.expect("server binds");
        let addr = server.addr;
        let state = server.state.clone();
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
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn room_info(&self, room: &str) -> Option<serde_json::Value> {
        let r = reqwest::get(self.url(&format!("/api/rooms/{room}")))
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.json().await.ok()
    }

    /// The tile `[x, y, w, h]` of the participant whose WHIP `Location` is `location`.
    pub async fn tile_of(&self, room: &str, location: &str) -> Option<[u32; 4]> {
        let info = self.room_info(room).await?;
        let session = location.rsplit('/').next()?;
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

/// A decoded RGB frame.
#[derive(Clone)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// Mean colour of the central half of `[x, y, w, h]`.
    pub fn mean(&self, rect: [u32; 4]) -> [f32; 3] {
        let [x, y, w, h] = rect;
        let (x0, x1) = (x + w / 4, x + 3 * w / 4);
        let (y0, y1) = (y + h / 4, y + 3 * h / 4);
        let mut sum = [0f64; 3];
        let mut n = 0f64;
        for yy in y0..y1.min(self.height) {
            for xx in x0..x1.min(self.width) {
                let i = ((yy * self.width + xx) * 3) as usize;
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += self.data[i + c] as f64;
                }
                n += 1.0;
            }
        }
        [
            (sum[0] / n) as f32,
            (sum[1] / n) as f32,
            (sum[2] / n) as f32,
        ]
    }
}

/// What a client has received, as a person would perceive it.
#[derive(Default)]
pub struct Received {
    pub last_frame: Mutex<Option<RgbFrame>>,
    pub frames: Mutex<Vec<Instant>>,
    pub audio: Mutex<VecDeque<f32>>,
    pub audio_packets: Mutex<Vec<Instant>>,
    pub video_codec: Mutex<Option<String>>,
    /// A rectangle whose mean colour is logged for every decoded frame (latency probes).
    pub watch: Mutex<Option<[u32; 4]>>,
    pub colours: Mutex<Vec<(Instant, [f32; 3])>>,
    /// RMS of every received audio packet, with its arrival time.
    pub loudness: Mutex<Vec<(Instant, f32)>>,
}

/// Audio kept per client for analysis: 2 s at 48 kHz.
const AUDIO_KEPT: usize = 96_000;

impl Received {
    pub fn push_frame(&self, f: RgbFrame) {
        let now = Instant::now();
        if let Some(rect) = *self.watch.lock().unwrap() {
            self.colours.lock().unwrap().push((now, f.mean(rect)));
        }
        *self.last_frame.lock().unwrap() = Some(f);
        self.frames.lock().unwrap().push(now);
    }

    pub fn push_audio(&self, pcm: &[f32]) {
        let rms = (pcm.iter().map(|x| x * x).sum::<f32>() / pcm.len().max(1) as f32).sqrt();
        self.loudness.lock().unwrap().push((Instant::now(), rms));
        let mut a = self.audio.lock().unwrap();
        a.extend(pcm);
        let excess = a.len().saturating_sub(AUDIO_KEPT);
        a.drain(..excess);
        self.audio_packets.lock().unwrap().push(Instant::now());
    }

    pub fn frame_count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    pub fn audio_packet_count(&self) -> usize {
        self.audio_packets.lock().unwrap().len()
    }

    pub fn frame(&self) -> Option<RgbFrame> {
        self.last_frame.lock().unwrap().clone()
    }

    /// The last `n` audio samples.
    pub fn recent_audio(&self, n: usize) -> Vec<f32> {
        let a = self.audio.lock().unwrap();
        a.iter().skip(a.len().saturating_sub(n)).copied().collect()
    }

    /// Longest gap between consecutive video frames, and between audio packets, after `since`.
    pub fn max_gaps(&self, since: Instant) -> (Duration, Duration) {
        fn gap(times: &[Instant], since: Instant) -> Duration {
            times
                .windows(2)
                .filter(|w| w[1] >= since)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or(Duration::MAX)
        }
        (
            gap(&self.frames.lock().unwrap(), since),
            gap(&self.audio_packets.lock().unwrap(), since),
        )
    }
}

/// Power of `freq` in `samples` (48 kHz), in dB relative to a full-scale sine (Goertzel).
pub fn tone_db(samples: &[f32], freq: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f32, 0f32);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len().max(1) as f32;
    let normalised = power / (n * n / 4.0);
    10.0 * normalised.max(1e-12).log10()
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

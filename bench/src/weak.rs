//! Weak links, shared by the tests and the benchmark: headless Chromium receiving a room over
//! WHEP from inside a network namespace whose link is shaped ([`crate::netns::NetNs::shape`]),
//! reporting what it decodes every 500 ms from `getStats`; the figures a person would notice
//! over a stretch of those samples ([`window`]); and the link-profile benchmark
//! ([`link_profiles`]).

use crate::client::{Client, ClientOptions};
use crate::media::Clips;
use crate::netns::NetNs;
use crate::run::ServerProcess;
use axum::routing::{get, post};
use serde_json::Value;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Debian's Chromium, installed by `make test`.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium as a WebRTC peer on loopback: no sandbox (root), no background network,
/// fake camera and microphone granted without a prompt, loopback candidates allowed, autoplay.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--autoplay-policy=no-user-gesture-required",
];

const PAGE: &str = include_str!("weak_link_page.html");

/// Headless Chromium receiving a room over WHEP from inside a namespace; its samples
/// accumulate until [`stop`](Self::stop) (or drop, which kills it).
pub struct ChromiumReceiver {
    samples: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    chromium: tokio::process::Child,
    page: tokio::task::JoinHandle<std::io::Result<()>>,
    profile: std::path::PathBuf,
    /// Chromium's stderr, for the error when it decodes nothing.
    log: std::path::PathBuf,
}

impl ChromiumReceiver {
    /// Joins `whep_url` (the server's `/whep/{room}`) from inside `ns`; the page is served
    /// from this side of the link.
    pub async fn start(whep_url: &str, ns: &NetNs, tag: &str) -> anyhow::Result<Self> {
        let samples: Arc<Mutex<Vec<Value>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&samples), Arc::clone(&stop));
        let app = axum::Router::new()
            .route("/", get(|| async { axum::response::Html(PAGE) }))
            .route(
                "/report",
                post(move |body: String| {
                    let (s, st) = (Arc::clone(&s), Arc::clone(&st));
                    async move {
                        if let Ok(v) = serde_json::from_str::<Value>(&body)
                            && let Ok(mut s) = s.lock()
                        {
                            s.push(v);
                        }
                        if st.load(Ordering::SeqCst) {
                            "stop"
                        } else {
                            "go"
                        }
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind((ns.host_ip, 0)).await?;
        let addr = listener.local_addr()?;
        let page = tokio::spawn(async move { axum::serve(listener, app).await });
        let profile =
            std::env::temp_dir().join(format!("mixdown-weak-{tag}-{}", std::process::id()));
        let url = format!("http://{addr}/?whep={whep_url}&report=http://{addr}/report");
        let log =
            std::env::temp_dir().join(format!("mixdown-weak-{tag}-{}.log", std::process::id()));
        let stderr = std::fs::File::create(&log)?;
        let chromium = ns
            .command(CHROMIUM)
            .args(CHROMIUM_FLAGS)
            .arg(format!(
                "--unsafely-treat-insecure-origin-as-secure=http://{addr}"
            ))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(&url)
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self {
            samples,
            stop,
            chromium,
            page,
            profile,
            log,
        })
    }

    pub fn samples(&self) -> Vec<Value> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The newest sample; an error if the page reported one.
    pub fn last(&self) -> anyhow::Result<Option<Value>> {
        let s = self.samples();
        if let Some(e) = s.iter().find(|v| v.get("error").is_some()) {
            anyhow::bail!("page error: {e}");
        }
        Ok(s.last().cloned())
    }

    /// The page's clock now (seconds since it connected).
    pub fn now(&self) -> f64 {
        self.last()
            .ok()
            .flatten()
            .and_then(|s| s["t"].as_f64())
            .unwrap_or(0.0)
    }

    /// The session's WHEP `Location`, once the page has one.
    pub fn location(&self) -> Option<String> {
        self.samples()
            .iter()
            .find_map(|s| s["location"].as_str().map(str::to_owned))
    }

    /// Waits (at most `limit`) until Chromium has decoded a frame.
    pub async fn wait_decoding(&self, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let last = self.last()?;
            if last
                .as_ref()
                .is_some_and(|s| s["framesDecoded"].as_u64().unwrap_or(0) > 0)
            {
                return Ok(());
            }
            if start.elapsed() > limit {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(8).collect();
                anyhow::bail!(
                    "Chromium decoded nothing in {limit:?}: last sample {last:?}; its stderr ends: {}",
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Tells the page to leave (it sends `DELETE`), then ends Chromium.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = self.chromium.kill().await;
        self.page.abort();
        let _ = std::fs::remove_dir_all(&self.profile);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// What a person would have seen over the samples in `[from, to]` (page seconds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub seconds: f64,
    pub fps: f64,
    /// The longest time without a new decoded frame (at the 500 ms sampling).
    pub longest_stall: f64,
    /// Freezes as Chromium counts them (`freezeCount`).
    pub freezes: f64,
    /// Share of audio samples concealed.
    pub concealed: f64,
    /// The decoded picture's height at the end.
    pub height: u64,
    /// Video arriving, kbit/s.
    pub kbps: f64,
    /// Video jitter-buffer delay per frame, milliseconds (Chromium's playout delay; not
    /// glass-to-glass).
    pub playout_ms: f64,
}

/// Figures over the samples in `[from, to]`; `None` with fewer than four samples there.
pub fn window(samples: &[Value], from: f64, to: f64) -> Option<Window> {
    let s: Vec<&Value> = samples
        .iter()
        .filter(|v| v["t"].as_f64().is_some_and(|t| t >= from && t <= to))
        .collect();
    if s.len() < 4 {
        return None;
    }
    let f = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let (a, b) = (s[0], s[s.len() - 1]);
    let dt = f(b, "t") - f(a, "t");
    let mut longest = 0.0f64;
    let mut since = f(a, "t");
    for w in s.windows(2) {
        if f(w[1], "framesDecoded") > f(w[0], "framesDecoded") {
            since = f(w[1], "t");
        }
        longest = longest.max(f(w[1], "t") - since);
    }
    let delta = |k: &str| f(b, k) - f(a, k);
    let samples_in = delta("audioSamples");
    let emitted = delta("jitterEmitted");
    Some(Window {
        seconds: dt,
        fps: delta("framesDecoded") / dt,
        longest_stall: longest,
        freezes: delta("freezeCount"),
        concealed: if samples_in > 0.0 {
            delta("concealed") / samples_in
        } else {
            1.0
        },
        height: b["height"].as_u64().unwrap_or(0),
        kbps: delta("videoBytes") * 8.0 / 1000.0 / dt,
        playout_ms: if emitted > 0.0 {
            delta("jitterDelay") * 1000.0 / emitted
        } else {
            f64::NAN
        },
    })
}

/// The `quality` the server reports for the session at `location`.
pub async fn quality(base: &str, room: &str, location: &str) -> Value {
    let session = mixdown::ids::SessionId::public_in_location(location).unwrap_or_default();
    let info: Value = match reqwest::get(format!("{base}/api/rooms/{room}")).await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    info["participants"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["session"] == session))
        .map(|p| p["quality"].clone())
        .unwrap_or(Value::Null)
}

/// A receiver that decodes, with one more try: a headless Chromium that never loaded its
/// page happened once in a dozen starts (a measurement of the link needs a receiver, not
/// that).
async fn decoding_receiver(whep: &str, ns: &NetNs, tag: &str) -> anyhow::Result<ChromiumReceiver> {
    let mut last = None;
    for attempt in 0..2 {
        let r = ChromiumReceiver::start(whep, ns, &format!("{tag}-{attempt}")).await?;
        match r.wait_decoding(Duration::from_secs(30)).await {
            Ok(()) => return Ok(r),
            Err(e) => {
                tracing::warn!("receiver {tag}, attempt {attempt}: {e:#}");
                last = Some(e);
                r.stop().await;
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no receiver")))
}

/// One link profile's result.
#[derive(Debug, Clone)]
pub struct LinkResult {
    pub kbit: u32,
    pub loss: f64,
    /// The tier the server reports at the end ("720p", "audio only", …).
    pub tier: String,
    pub window: Window,
}

/// Link profiles measured: (kbit/s, loss).
pub const PROFILES: &[(u32, f64)] = &[
    (300, 0.0),
    (500, 0.0),
    (500, 0.05),
    (1000, 0.0),
    (1000, 0.05),
    (2000, 0.0),
    (2000, 0.05),
    (2000, 0.20),
    (300, 0.20),
];

/// How long a profile settles before it is measured, and how long it is measured.
pub const SETTLE: Duration = Duration::from_secs(10);
pub const MEASURE: Duration = Duration::from_secs(20);

/// The server with the default configuration (1280x720 canvas, 360p and 180p tiers) on the
/// host end of a shaped link, two publishers of natural-entropy clips, and for each profile a
/// fresh Chromium receiver behind the link: it settles, then is measured. Ends with the
/// climb: behind 300 kbit/s, then the link lifted to 5 Mbit/s; returns the seconds until
/// Chromium decodes the canvas again (`None` if not within 60 s). Needs root.
pub async fn link_profiles(
    bin: &Path,
    clips: &Arc<Clips>,
    ports: (u16, u16),
) -> anyhow::Result<(Vec<LinkResult>, Option<f64>)> {
    let ns = NetNs::create(&format!("mdbw{}", std::process::id() % 100_000), 83)
        .map_err(|e| anyhow::anyhow!(e))?;
    let server = ServerProcess::start_on(bin, ns.host_ip.into(), ports, "").await?;
    let room = "links";
    let mut publishers = Vec::new();
    for (i, colour) in [0xffff0000u32, 0xff00ff00].into_iter().enumerate() {
        publishers.push(
            Client::try_join(
                &server.base,
                room,
                ClientOptions {
                    clips: Some(Arc::clone(clips)),
                    receive: false,
                    clip_markers: i == 0,
                    bind_ip: ns.host_ip.into(),
                    ..ClientOptions::participant(colour, 500.0 + 200.0 * i as f32)
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("publisher {i}: {e}"))?,
        );
    }
    let whep = format!("{}/whep/{room}", server.base);
    let mut results = Vec::new();
    for &(kbit, loss) in PROFILES {
        // Connect on the shaped link, loss added once media flows.
        ns.shape(kbit, 0.0).map_err(|e| anyhow::anyhow!(e))?;
        let r = decoding_receiver(&whep, &ns, &format!("{kbit}")).await?;
        ns.shape(kbit, loss).map_err(|e| anyhow::anyhow!(e))?;
        let t0 = r.now();
        tokio::time::sleep(SETTLE + MEASURE).await;
        let from = t0 + SETTLE.as_secs_f64();
        let w = window(&r.samples(), from, from + MEASURE.as_secs_f64());
        let tier = match r.location() {
            Some(l) => quality(&server.base, room, &l).await["label"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
            None => "?".into(),
        };
        r.stop().await;
        let window = w.ok_or_else(|| anyhow::anyhow!("{kbit} kbit/s: too few samples"))?;
        tracing::info!(kbit, loss, %tier, ?window, "link profile");
        results.push(LinkResult {
            kbit,
            loss,
            tier,
            window,
        });
    }
    // The climb back.
    ns.shape(300, 0.0).map_err(|e| anyhow::anyhow!(e))?;
    let r = decoding_receiver(&whep, &ns, "climb").await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    ns.shape(5000, 0.0).map_err(|e| anyhow::anyhow!(e))?;
    let lifted = Instant::now();
    let mut climb = None;
    while lifted.elapsed() < Duration::from_secs(60) {
        if r.last()?.is_some_and(|s| s["height"].as_u64() == Some(720)) {
            climb = Some(lifted.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    r.stop().await;
    for p in publishers {
        p.close().await;
    }
    drop(server);
    drop(ns);
    Ok((results, climb))
}

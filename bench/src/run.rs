//! The scenarios: a Mixdown server process under synthetic load, a bare `gst-launch-1.0`
//! pipeline doing the same video work, idle rooms. Each run returns what was measured.

use crate::client::{Client, ClientOptions};
use crate::measure::{CpuWindow, late_frames, pacing, rss_mib};
use crate::media::{CLICK_HZ, ClipCodec, Clips, HEIGHT, PATCH, WIDTH};
use anyhow::{Context, anyhow};
use mixdown::media::VideoCodec;
use mixdown::room::layout::grid;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The composite canvas of every benchmark run (the server's default).
pub const CANVAS: (u32, u32) = (1280, 720);
/// A frame later than this against the RTP timeline counts as late.
pub const LATE: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct RunResult {
    pub cpu_cores: f64,
    /// CPU of the load generator (this process) over the same window: it shares the machine.
    pub generator_cores: f64,
    pub rss_mib: f64,
    pub fps: f64,
    pub late_share: f64,
    /// Share of frames that were late within 200 ms after a keyframe (encode spikes).
    pub late_after_keyframe: f64,
    /// Keyframes the probe received in the window.
    pub keyframes: usize,
    pub video_latency_ms: Vec<f64>,
    pub audio_latency_ms: Vec<f64>,
    pub join_ms: Vec<f64>,
    /// Composite encodes running at the end of the window (codec × tier).
    pub encodes: usize,
    /// What the join flood sent and got, when there was one.
    pub flood: Option<crate::flood::FloodStats>,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `mixdown` child process with its own configuration, stopped with SIGTERM on drop.
pub struct ServerProcess {
    child: Child,
    pub base: String,
    dir: PathBuf,
    /// Sent with the harness's own API reads, on a server with `[auth] keys`.
    pub admin_token: Option<String>,
}

impl ServerProcess {
    /// `extra` is appended to the generated configuration (TOML; `{http_port}` in it becomes
    /// the server's HTTP port). The server's media port is
    /// the first of `media_ports` (one port serves every connection); the range is the unit
    /// the bench hands out so consecutive servers, and Janus, never share ports.
    pub async fn start(bin: &Path, media_ports: (u16, u16), extra: &str) -> anyhow::Result<Self> {
        Self::start_on(
            bin,
            std::net::Ipv4Addr::LOCALHOST.into(),
            media_ports,
            extra,
        )
        .await
    }

    /// [`start`](Self::start) with HTTP and media on `host`.
    pub async fn start_on(
        bin: &Path,
        host: std::net::IpAddr,
        media_ports: (u16, u16),
        extra: &str,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("mixdown-bench-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("mixdown.toml");
        std::fs::write(
            &config,
            format!(
                // No drain: dropping the process SIGTERMs it and waits 5 s at most, and
                // a measurement's server has no callers to spare.
                "[server]\nhost = \"{host}\"\nhttp_port = {port}\ndrain_s = 0\n\
                 [rtc]\nudp_port = {}\n\
                 [room]\nmax_participants = 200\n\
                 [video]\nwidth = {}\nheight = {}\n{}\n",
                media_ports.0,
                CANVAS.0,
                CANVAS.1,
                // A cluster node names its own address.
                extra.replace("{http_port}", &port.to_string())
            ),
        )?;
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env(
                "RUST_LOG",
                std::env::var("MIXDOWN_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let base = format!("http://{host}:{port}");
        let server = Self {
            child,
            base,
            dir,
            admin_token: None,
        };
        let health = format!("{}/healthz", server.base);
        for _ in 0..100 {
            if reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(anyhow!("the server did not answer /healthz within 10 s"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `GET /api/rooms/{room}` (with the admin token on a server with keys).
    pub async fn room_info(&self, room: &str) -> Option<serde_json::Value> {
        let mut r = reqwest::Client::new().get(format!("{}/api/rooms/{room}", self.base));
        if let Some(t) = &self.admin_token {
            r = r.bearer_auth(t);
        }
        r.send().await.ok()?.json().await.ok()
    }

    pub async fn tile_of(&self, room: &str, location: &str) -> Option<[u32; 4]> {
        let info = self.room_info(room).await?;
        let session = mixdown::ids::SessionId::public_in_location(location)?;
        let p = info["participants"]
            .as_array()?
            .iter()
            .find(|p| p["session"] == session)?;
        let t: Vec<u32> = p["tile"]
            .as_array()?
            .iter()
            .filter_map(|v| v.as_u64().map(|v| v as u32))
            .collect();
        (t.len() == 4).then(|| [t[0], t[1], t[2], t[3]])
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // `MIXDOWN_BENCH_LOGS=DIR` keeps each server's log (its warnings and errors) there.
        if let Ok(dir) = std::env::var("MIXDOWN_BENCH_LOGS") {
            let _ = std::fs::create_dir_all(&dir);
            let name = format!("server-{}.log", self.child.id());
            let _ = std::fs::copy(self.dir.join("server.log"), Path::new(&dir).join(name));
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where participant 0's marker patch lands in the composite, given its tile (the clip is
/// scaled into the tile with its aspect ratio kept).
fn patch_in_tile(tile: [u32; 4]) -> [u32; 4] {
    let [x, y, w, h] = tile.map(|v| v as f64);
    let scale = (w / WIDTH as f64).min(h / HEIGHT as f64);
    let (ox, oy) = (
        x + (w - WIDTH as f64 * scale) / 2.0,
        y + (h - HEIGHT as f64 * scale) / 2.0,
    );
    let (px, py, ps) = (PATCH.0 as f64, PATCH.1 as f64, PATCH.2 as f64);
    [
        (ox + px * scale) as u32,
        (oy + py * scale) as u32,
        (ps * scale).max(2.0) as u32,
        (ps * scale).max(2.0) as u32,
    ]
}

/// For each mark, the delay to the first observation after it that `hit` accepts (and
/// before the next mark).
fn delays<T: Copy>(marks: &[Instant], seen: &[(Instant, T)], hit: impl Fn(T) -> bool) -> Vec<f64> {
    let mut out = Vec::new();
    for (i, t) in marks.iter().enumerate() {
        let until = marks
            .get(i + 1)
            .copied()
            .unwrap_or(*t + Duration::from_secs(1));
        if let Some((at, _)) = seen
            .iter()
            .find(|(at, v)| *at >= *t && *at < until && hit(*v))
        {
            out.push(at.duration_since(*t).as_secs_f64() * 1000.0);
        }
    }
    out
}

fn participant(clips: &Arc<Clips>, out: VideoCodec, markers: bool) -> ClientOptions {
    let mut o = ClientOptions::participant(0, 0.0);
    o.clips = Some(clips.clone());
    o.codecs = vec![out];
    o.send_codec = out;
    o.decode = false;
    o.clip_markers = markers;
    o
}

/// One run: `n` participants sending the VP8 clip and (if `audio`) speech, all receiving
/// `out`, and one decoding WHEP probe.
/// A directory removed when the value is dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A recording or stream started through the API once the room is full: `endpoint` is
/// `recordings` or `streams`, `body` the JSON request.
#[derive(Clone, Debug)]
pub struct OutputSpec {
    pub endpoint: &'static str,
    pub body: serde_json::Value,
}

/// What a run adds to a plain room: outputs started once everyone is in, and lines for the
/// server's `[video]` section (say, `pacing_margin_ms = 0`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Extras<'a> {
    pub outputs: &'a [OutputSpec],
    pub video: &'a str,
    /// Extra WHEP viewers (not decoding), each held at most at this ladder rung
    /// (`?max_tier=`): how a run makes the room run lower tiers.
    pub viewers: &'a [usize],
    /// Only the first this many participants speak; the others send silence (a muted-by-
    /// habit microphone), as in a large meeting. `None`: everyone speaks.
    pub speakers: Option<usize>,
    /// Tokens on (`[auth] keys`), and this many tasks flooding `POST /whip` with no token or
    /// a bad one through the measured window (0: tokens on, no flood).
    pub flood: Option<usize>,
    /// The flood goes to a second server on the same machine instead (a control).
    pub flood_elsewhere: bool,
    /// The last this many participants (never the first, whose audio carries the latency
    /// markers) publish and receive G.711 (PCMU) instead of Opus.
    pub g711: usize,
}

#[allow(clippy::too_many_arguments)]
pub async fn server_run(
    bin: &Path,
    clips: &Arc<Clips>,
    n: usize,
    out: VideoCodec,
    audio: bool,
    timing: &Timing,
    ports: (u16, u16),
    extras: Extras<'_>,
) -> anyhow::Result<RunResult> {
    let outputs = extras.outputs;
    // H.264 out: the server prefers H.264 for everyone who accepts it (participants still
    // send VP8 in the same video section).
    let mut extra = match out {
        VideoCodec::H264 => "send_codecs = [\"h264\", \"vp8\"]",
        VideoCodec::Vp9 => "send_codecs = [\"vp9\", \"vp8\"]",
        VideoCodec::Vp8 => "",
    }
    .to_owned();
    extra.push('\n');
    extra.push_str(extras.video);
    let out_dir = std::env::temp_dir().join(format!(
        "mixdown-bench-outputs-{}-{}",
        std::process::id(),
        ports.0
    ));
    if !outputs.is_empty() {
        extra.push_str(&format!(
            "\n[recording]\ndir = \"{}\"\n[hls]\ndir = \"{}\"\n",
            out_dir.join("recordings").display(),
            out_dir.join("hls").display()
        ));
    }
    if extras.flood.is_some() {
        // Tokens on: the room's people carry valid ones, the flood none or bad ones; every
        // generator session comes from 127.0.0.1, so the per-address limit is off.
        extra.push_str(&format!(
            "\n[auth]\nkeys = {{ \"{}\" = \"{}\" }}\n[limits]\nsessions_per_address = 0\n",
            crate::flood::KEY,
            crate::flood::SECRET
        ));
    }
    // Recordings and HLS segments of this run go when it ends, however it ends.
    let _cleanup = RemoveOnDrop(out_dir);
    let mut server = ServerProcess::start(bin, ports, &extra).await?;
    // The control variant floods a second server on the same machine, not this one: what
    // the attacker costs the machine rather than what refusing costs the server.
    let decoy = if extras.flood_elsewhere {
        Some(ServerProcess::start(bin, (ports.0 + 150, ports.1), &extra).await?)
    } else {
        None
    };
    let room = "bench";
    let token = extras.flood.map(|_| {
        server.admin_token = Some(crate::flood::token(room, true));
        crate::flood::token(room, false)
    });
    let mut clients = Vec::new();
    let mut join_starts = Vec::new();
    for i in 0..n {
        join_starts.push(Instant::now());
        let mut opts = participant(clips, out, i == 0);
        if !audio {
            opts.tone_hz = None;
        }
        if extras.speakers.is_some_and(|s| i >= s) {
            opts.silent = true;
        }
        opts.token = token.clone();
        if out != VideoCodec::Vp8 {
            // VP8 in, H.264 or VP9 out: participants send VP8 and accept both.
            opts.send_codec = VideoCodec::Vp8;
            opts.codecs = vec![VideoCodec::Vp8, out];
        }
        if i >= n - extras.g711.min(n - 1) {
            // A SIP gateway's callers: PCMU, a tone each (they speak, so they are mixed).
            opts.audio_codec = mixdown::media::AudioCodec::Pcmu;
            opts.tone_hz = Some(300.0 + 100.0 * i as f32);
        }
        clients.push(
            Client::try_join(&server.base, room, opts)
                .await
                .map_err(|e| anyhow!("participant {i}: {e}"))?,
        );
    }
    let mut probe_opts = ClientOptions::viewer();
    probe_opts.codecs = vec![out];
    probe_opts.token = token.clone();
    let probe = Client::try_join(&server.base, room, probe_opts)
        .await
        .map_err(|e| anyhow!("probe: {e}"))?;
    *probe.received.probe_hz.lock().unwrap() = Some(CLICK_HZ);
    let mut viewers = Vec::new();
    for (i, tier) in extras.viewers.iter().enumerate() {
        let mut opts = ClientOptions::viewer();
        opts.codecs = vec![out];
        opts.decode = false;
        opts.query = format!("?max_tier={tier}");
        opts.token = token.clone();
        viewers.push(
            Client::try_join(&server.base, room, opts)
                .await
                .map_err(|e| anyhow!("viewer {i}: {e}"))?,
        );
    }
    let http = reqwest::Client::new();
    for o in outputs {
        let r = http
            .post(format!("{}/api/rooms/{room}/{}", server.base, o.endpoint))
            .json(&o.body)
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            return Err(anyhow!(
                "starting {}: {} {}",
                o.body,
                r.status(),
                r.text().await.unwrap_or_default()
            ));
        }
    }
    tokio::time::sleep(timing.warmup).await;
    if let Some(tile) = server.tile_of(room, &clients[0].location).await {
        *probe.received.watch.lock().unwrap() = Some(patch_in_tile(tile));
    }
    // Join floods (anonymous and bad-token WHIP POSTs) for the whole window, from their own
    // process.
    let attacker = match extras.flood.filter(|n| *n > 0) {
        Some(n) => Some(crate::flood::spawn_attacker(
            &format!(
                "{}/whip/{room}",
                decoy.as_ref().map_or(&server.base, |d| &d.base)
            ),
            n,
            timing.window,
        )?),
        None => None,
    };
    let attacker_cpu = attacker
        .as_ref()
        .and_then(|c| c.id())
        .and_then(CpuWindow::start);
    let pid = server.pid();
    let cpu = CpuWindow::start(pid).ok_or_else(|| anyhow!("cannot read server CPU"))?;
    let own = CpuWindow::start(std::process::id());
    let window_start = Instant::now();
    tokio::time::sleep(timing.window).await;
    let cpu_cores = cpu.cores().unwrap_or(f64::NAN);
    let generator_cores = own.and_then(|o| o.cores()).unwrap_or(f64::NAN);
    let rss = rss_mib(pid).unwrap_or(f64::NAN);
    let attacker_cores = attacker_cpu.and_then(|c| c.cores());
    let flood = match attacker {
        Some(child) => {
            let out = child.wait_with_output().await?;
            crate::flood::FloodStats::from_json(&String::from_utf8_lossy(&out.stdout)).map(
                |mut f| {
                    f.attacker_cores = attacker_cores.unwrap_or(f64::NAN);
                    f
                },
            )
        }
        None => None,
    };
    let encodes = server
        .room_info(room)
        .await
        .and_then(|v| v["encodes"].as_array().map(|a| a.len()))
        .unwrap_or(0);

    let frames: Vec<(Instant, u32)> = probe
        .received
        .rtp_frames
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= window_start)
        .copied()
        .collect();
    let (fps, late_share) = pacing(&frames, 90000.0, LATE).unwrap_or((0.0, 1.0));
    let first_ts = frames.first().map(|f| f.1);
    let keys: Vec<u32> = probe
        .received
        .keyframes
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|k| first_ts.is_some_and(|t0| k.wrapping_sub(t0) < u32::MAX / 2))
        .collect();
    let near_key = late_frames(&frames, 90000.0, LATE)
        .iter()
        .filter(|ts| keys.iter().any(|k| ts.wrapping_sub(*k) < 90000 / 5))
        .count();
    let late_after_keyframe = near_key as f64 / frames.len().max(1) as f64;
    let video_marks: Vec<Instant> = clients[0]
        .video_marks
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t)
        .filter(|t| *t >= window_start)
        .collect();
    let colours = probe.received.colours.lock().unwrap().clone();
    let video_latency_ms = delays(&video_marks, &colours, |c: [f32; 3]| {
        (c[0] + c[1] + c[2]) / 3.0 > 128.0
    });
    let audio_marks: Vec<Instant> = clients[0]
        .audio_marks
        .lock()
        .unwrap()
        .iter()
        .copied()
        .filter(|t| *t >= window_start)
        .collect();
    let power = probe.received.probe_power.lock().unwrap().clone();
    let audio_latency_ms = delays(&audio_marks, &power, |db: f32| db > -25.0);
    let join_ms = clients
        .iter()
        .zip(&join_starts)
        .filter_map(|(c, start)| {
            let first = c.received.rtp_frames.lock().unwrap().first().map(|f| f.0)?;
            Some(first.duration_since(*start).as_secs_f64() * 1000.0)
        })
        .collect();
    for c in clients {
        c.close().await;
    }
    probe.close().await;
    for v in viewers {
        v.close().await;
    }
    drop(server);
    drop(decoy);
    Ok(RunResult {
        cpu_cores,
        generator_cores,
        rss_mib: rss,
        fps,
        late_share,
        late_after_keyframe,
        keyframes: keys.len(),
        video_latency_ms,
        audio_latency_ms,
        join_ms,
        encodes,
        flood,
    })
}

/// The description of a bare GStreamer pipeline that decodes `n` copies of the clip, composes
/// them on the same grid and encodes like the server, paced in real time.
pub fn bare_pipeline(clip: &Path, n: usize, out: VideoCodec) -> String {
    let tiles = grid(n, CANVAS.0, CANVAS.1);
    let mut d = String::from("compositor name=c background=black");
    for (i, t) in tiles.iter().enumerate() {
        d.push_str(&format!(
            " sink_{i}::xpos={} sink_{i}::ypos={} sink_{i}::width={} sink_{i}::height={}",
            t.x, t.y, t.w, t.h
        ));
    }
    let enc = match out {
        VideoCodec::Vp8 => {
            "vp8enc deadline=1 cpu-used=-6 threads=1 end-usage=cbr lag-in-frames=0 \
             error-resilient=default target-bitrate=1500000 keyframe-max-dist=300"
        }
        VideoCodec::H264 => {
            "x264enc tune=zerolatency speed-preset=ultrafast threads=1 bframes=0 bitrate=1500 \
             key-int-max=300"
        }
        VideoCodec::Vp9 => {
            "vp9enc deadline=1 cpu-used=8 threads=1 end-usage=cbr lag-in-frames=0 \
             error-resilient=default aq-mode=3 target-bitrate=1500000 keyframe-max-dist=300"
        }
    };
    d.push_str(&format!(
        " ! video/x-raw,format=I420,width={},height={},framerate=30/1 ! {enc} ! fakesink sync=true",
        CANVAS.0, CANVAS.1
    ));
    for (i, t) in tiles.iter().enumerate() {
        d.push_str(&format!(
            " filesrc location={} ! {} ! {} ! videoconvert ! videoscale method=bilinear add-borders=true \
             ! video/x-raw,format=I420,width={},height={},pixel-aspect-ratio=1/1 ! c.sink_{i}",
            clip.display(),
            ClipCodec::Vp8.demuxer(),
            ClipCodec::Vp8.decoder(),
            t.w,
            t.h
        ));
    }
    d
}

pub async fn bare_run(
    clip: &Path,
    n: usize,
    out: VideoCodec,
    timing: &Timing,
) -> anyhow::Result<RunResult> {
    // gst-launch-1.0 wants the description as separate words (no value contains a space).
    let mut child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(bare_pipeline(clip, n, out).split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting gst-launch-1.0")?;
    let pid = child.id();
    tokio::time::sleep(timing.warmup).await;
    if let Ok(Some(status)) = child.try_wait() {
        return Err(anyhow!("gst-launch-1.0 exited during warm-up: {status}"));
    }
    let result = async {
        let cpu = CpuWindow::start(pid).ok_or_else(|| anyhow!("gst-launch-1.0 exited early"))?;
        tokio::time::sleep(timing.window).await;
        let cores = cpu
            .cores()
            .ok_or_else(|| anyhow!("gst-launch-1.0 exited early"))?;
        if let Ok(Some(status)) = child.try_wait() {
            return Err(anyhow!("gst-launch-1.0 exited during the window: {status}"));
        }
        Ok(RunResult {
            cpu_cores: cores,
            rss_mib: rss_mib(pid).unwrap_or(f64::NAN),
            ..Default::default()
        })
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// `rooms` rooms, each joined by one participant who then leaves: the server's cost once
/// they are empty.
pub async fn idle_run(
    bin: &Path,
    clips: &Arc<Clips>,
    rooms: usize,
    timing: &Timing,
    ports: (u16, u16),
) -> anyhow::Result<RunResult> {
    let server = ServerProcess::start(bin, ports, "").await?;
    for r in 0..rooms {
        let c = Client::try_join(
            &server.base,
            &format!("idle-{r}"),
            participant(clips, VideoCodec::Vp8, false),
        )
        .await
        .map_err(|e| anyhow!("room {r}: {e}"))?;
        c.leave().await;
    }
    tokio::time::sleep(timing.warmup).await;
    let pid = server.pid();
    let cpu = CpuWindow::start(pid).ok_or_else(|| anyhow!("cannot read server CPU"))?;
    tokio::time::sleep(timing.window).await;
    Ok(RunResult {
        cpu_cores: cpu.cores().unwrap_or(f64::NAN),
        rss_mib: rss_mib(pid).unwrap_or(f64::NAN),
        ..Default::default()
    })
}

/// Which server an audio-only room runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioServer {
    Mixdown,
    JanusAudioBridge,
}

fn audio_participant(clips: &Arc<Clips>, speaking: bool) -> ClientOptions {
    let mut o = ClientOptions::participant(0, 0.0);
    o.colour = None;
    o.audio_only = true;
    o.clips = Some(clips.clone());
    o.decode = false;
    o.silent = !speaking;
    o
}

/// An audio-only room of `n` participants, `speakers` of them talking (speech clip), the rest
/// sending silence: the server's CPU.
pub async fn audio_room_run(
    server: AudioServer,
    bin: &Path,
    clips: &Arc<Clips>,
    n: usize,
    speakers: usize,
    timing: &Timing,
    ports: (u16, u16),
) -> anyhow::Result<RunResult> {
    let mut clients = Vec::new();
    let (pid, _keep): (u32, Box<dyn std::any::Any + Send>) = match server {
        AudioServer::Mixdown => {
            let s = ServerProcess::start(bin, ports, "").await?;
            for i in 0..n {
                let c = Client::try_join(&s.base, "audio", audio_participant(clips, i < speakers))
                    .await
                    .map_err(|e| anyhow!("participant {i}: {e}"))?;
                clients.push(c);
            }
            (s.pid(), Box::new(s))
        }
        AudioServer::JanusAudioBridge => {
            let janus = crate::janus::Janus::start(free_port()?, ports).await?;
            let admin = crate::janus::Handle::attach(&janus.base).await?;
            admin.create_room().await?;
            for i in 0..n {
                let handle = crate::janus::Handle::attach(&janus.base).await?;
                let mut opts = audio_participant(clips, i < speakers);
                opts.bind_ip = crate::janus::HOST_IP.parse()?;
                let c = Client::connect(&janus.base, opts, async move |offer: String| {
                    let answer = handle.join(offer).await.map_err(|e| format!("{e:#}"))?;
                    Ok((String::new(), answer))
                })
                .await
                .map_err(|e| anyhow!("participant {i}: {e}"))?;
                clients.push(c);
            }
            (janus.pid(), Box::new(janus))
        }
    };
    tokio::time::sleep(timing.warmup).await;
    let received: usize = clients
        .iter()
        .map(|c| c.received.audio_packet_count())
        .sum();
    if received == 0 {
        return Err(anyhow!("{server:?}: no participant received any audio"));
    }
    let cpu = CpuWindow::start(pid).ok_or_else(|| anyhow!("cannot read server CPU"))?;
    tokio::time::sleep(timing.window).await;
    let result = RunResult {
        cpu_cores: cpu.cores().unwrap_or(f64::NAN),
        rss_mib: rss_mib(pid).unwrap_or(f64::NAN),
        ..Default::default()
    };
    for c in clients {
        c.close().await;
    }
    Ok(result)
}

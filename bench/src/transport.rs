//! The transport alone: N connections, each sending and receiving 150 packets/s (25 video
//! frames of 4,400 bytes, four packets each, and 50 Opus-sized packets), served by
//!
//! - **new**: Mixdown's transport (`mixdown::rtc`: one UDP port, sans-IO `rtc` connections,
//!   batched I/O), or
//! - **old**: the transport Mixdown had before it: the async `webrtc` crate, a socket per
//!   connection from a port range, `TrackLocalStaticSample` writers and `TrackRemote`
//!   readers (the code of `src/rtc/session.rs` at 5177a93, reduced to what moves packets).
//!
//! Both run in a child process (`mixdown-bench --transport-server old|new`) that decodes and
//! mixes nothing: its CPU, memory and syscalls are the transport's. The load peers are
//! webrtc-rs connections in the bench process.

use crate::client::sample;
use crate::measure::{CpuWindow, rss_mib};
use anyhow::{Context, anyhow};
use axum::routing::{get, post};
use bytes::Bytes;
use mixdown::ids::SessionId;
use mixdown::media::{EncodedFrame, RtpSink, SharedRtpSink, VideoCodec};
use mixdown::rtc::{
    PeerFactory, RtcSettings, SessionEvent, SessionMedia, opus_params, sample_track,
    video_codec_params,
};
use rtc::interceptor::Registry;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodecParameters, RtpCodecKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
};

/// Video frames per second and bytes per frame (four packets at a 1,200-byte MTU).
const VIDEO_FPS: u64 = 25;
const VIDEO_BYTES: usize = 4400;
const VIDEO_PACKETS_PER_FRAME: u64 = 4;
/// Audio packets per second and bytes per packet (Opus at ~40 kbit/s).
const AUDIO_PPS: u64 = 50;
const AUDIO_BYTES: usize = 100;
/// Packets each way per connection per second.
pub const PACKETS_PER_S: u64 = VIDEO_FPS * VIDEO_PACKETS_PER_FRAME + AUDIO_PPS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Impl {
    Old,
    New,
}

impl std::fmt::Display for Impl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Impl::Old => "old (webrtc crate, a socket per connection)",
            Impl::New => "new (one UDP port, sans-IO rtc, batched I/O)",
        })
    }
}

/// Counts packets pushed into it.
struct Counter(Arc<AtomicU64>);

impl RtpSink for Counter {
    fn push_rtp(&self, _packet: Bytes) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the server process shares between its handlers.
#[derive(Clone)]
struct ServerState {
    imp: Impl,
    received: Arc<AtomicU64>,
    video: broadcast::Sender<EncodedFrame>,
    audio: Arc<Mutex<Vec<mpsc::Sender<EncodedFrame>>>>,
    new: Option<PeerFactory>,
    old_ports: Arc<AtomicUsize>,
    udp: (u16, u16),
    /// Keeps every session alive until the process ends.
    sessions: Arc<Mutex<Vec<Box<dyn std::any::Any + Send>>>>,
}

fn random_bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|_| rand::random::<u8>()).collect::<Vec<u8>>())
}

/// The server process: answers `POST /offer`, sends every connection the same video frames
/// and audio packets, counts what it receives (`GET /stats`).
pub async fn serve(imp: Impl, http_port: u16, udp: (u16, u16)) -> anyhow::Result<()> {
    let (video, _) = broadcast::channel(16);
    let new = match imp {
        Impl::New => Some(PeerFactory::bind(RtcSettings {
            bind_ip: Ipv4Addr::LOCALHOST.into(),
            public_ip: None,
            udp_port: udp.0,
            udp_shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ice_timeout: Duration::from_secs(8),
            link_ceiling_bps: mixdown::room::tiers::link_ceiling_bps(1500),
            packets_per_second: mixdown::config::DEFAULT_PACKETS_PER_SECOND,
        })?),
        Impl::Old => None,
    };
    let state = ServerState {
        imp,
        received: Arc::default(),
        video: video.clone(),
        audio: Arc::default(),
        new,
        old_ports: Arc::default(),
        udp,
        sessions: Arc::default(),
    };
    let frame = random_bytes(VIDEO_BYTES);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / VIDEO_FPS));
        for n in 1.. {
            tick.tick().await;
            let d = Duration::from_millis(1000 / VIDEO_FPS);
            let _ = video.send(EncodedFrame::new(frame.clone(), d, true).numbered(n));
        }
    });
    let audio = Arc::clone(&state.audio);
    let packet = random_bytes(AUDIO_BYTES);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / AUDIO_PPS));
        loop {
            tick.tick().await;
            let list = audio.lock().unwrap().clone();
            // One frame for everyone, as the mixer's full mix is.
            let f = EncodedFrame::new(
                packet.clone(),
                Duration::from_millis(1000 / AUDIO_PPS),
                false,
            );
            for tx in list {
                let _ = tx.try_send(f.clone());
            }
        }
    });
    let app = axum::Router::new()
        .route("/offer", post(offer))
        .route(
            "/stats",
            get(
                |axum::extract::State(s): axum::extract::State<ServerState>| async move {
                    s.received.load(Ordering::Relaxed).to_string()
                },
            ),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn offer(
    axum::extract::State(s): axum::extract::State<ServerState>,
    body: String,
) -> Result<String, (axum::http::StatusCode, String)> {
    let fail = |e: String| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e);
    let (audio_tx, audio_rx) = mpsc::channel(8);
    s.audio.lock().unwrap().push(audio_tx);
    match s.imp {
        Impl::New => {
            let summary = mixdown::sdp::parse_offer(&body).map_err(|e| fail(e.to_string()))?;
            let (events, mut ev_rx) = mpsc::channel::<SessionEvent>(64);
            let media = SessionMedia {
                video: Some((VideoCodec::Vp8, 0, s.video.subscribe())),
                audio: Some((mixdown::media::AudioCodec::Opus, audio_rx)),
                data: None,
            };
            let factory = s.new.as_ref().ok_or_else(|| fail("no factory".into()))?;
            let (session, answer) = factory
                .answer(SessionId::random(), body, &summary, media, events)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let received = Arc::clone(&s.received);
            tokio::spawn(async move {
                while let Some(ev) = ev_rx.recv().await {
                    if let SessionEvent::TrackStarted { reply, .. } = ev {
                        let sink: SharedRtpSink = Arc::new(Counter(Arc::clone(&received)));
                        let _ = reply.send(Some(sink));
                    }
                }
            });
            s.sessions.lock().unwrap().push(Box::new(session));
            Ok(answer)
        }
        Impl::Old => {
            let i = s.old_ports.fetch_add(1, Ordering::Relaxed);
            let port = s.udp.0 + (i % (s.udp.1 - s.udp.0 + 1) as usize) as u16;
            let (pc, answer) = old_answer(
                body,
                port,
                s.video.subscribe(),
                audio_rx,
                Arc::clone(&s.received),
            )
            .await
            .map_err(|e| fail(e.to_string()))?;
            s.sessions.lock().unwrap().push(Box::new(pc));
            Ok(answer)
        }
    }
}

fn engine() -> MediaEngine {
    let mut m = MediaEngine::default();
    // Mixdown's own codec parameters register on an empty engine.
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_params(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )
    .expect("opus registers");
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: video_codec_params(VideoCodec::Vp8),
            payload_type: 96,
        },
        RtpCodecKind::Video,
    )
    .expect("vp8 registers");
    m
}

struct Gathered(Mutex<Option<oneshot::Sender<()>>>, Arc<AtomicU64>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Gathered {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(tx) = self.0.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let count = Arc::clone(&self.1);
        tokio::spawn(async move {
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(_) = ev {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}

/// A webrtc-crate connection with Mixdown's codecs and webrtc-rs' default interceptors on
/// `bind`; `gathered` fires when its candidates are complete, `received` counts RTP.
async fn connection(
    bind: SocketAddr,
    gathered: oneshot::Sender<()>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<Box<dyn PeerConnection>> {
    let mut engine = engine();
    let registry = register_default_interceptors(Registry::new(), &mut engine)?;
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(engine)
        .with_setting_engine(
            SettingEngineBuilder::new()
                .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                .with_include_loopback_candidate(true)
                .build(),
        )
        .with_interceptor_registry(registry)
        .with_handler(Arc::new(Gathered(Mutex::new(Some(gathered)), received))
            as Arc<dyn PeerConnectionEventHandler>)
        .with_udp_addrs(vec![bind])
        .build()
        .await?;
    Ok(Box::new(pc))
}

/// A video and an audio sample track named `{stream}-video`/`-audio`, added to `pc`.
async fn tracks(
    pc: &dyn PeerConnection,
    stream: &str,
) -> anyhow::Result<(Arc<TrackLocalStaticSample>, Arc<TrackLocalStaticSample>)> {
    let v = Arc::new(sample_track(
        RtpCodecKind::Video,
        video_codec_params(VideoCodec::Vp8),
        stream,
        "video",
    )?);
    let a = Arc::new(sample_track(
        RtpCodecKind::Audio,
        opus_params(),
        stream,
        "audio",
    )?);
    pc.add_track(v.clone() as Arc<dyn TrackLocal>).await?;
    pc.add_track(a.clone() as Arc<dyn TrackLocal>).await?;
    Ok((v, a))
}

/// The old transport's answer: a webrtc-crate connection on its own port, writers fed by the
/// shared sources, readers counting.
async fn old_answer(
    offer: String,
    port: u16,
    mut video: broadcast::Receiver<EncodedFrame>,
    mut audio: mpsc::Receiver<EncodedFrame>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<(Box<dyn PeerConnection>, String)> {
    let (tx, rx) = oneshot::channel();
    let bind = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port);
    let pc = connection(bind, tx, received).await?;
    pc.set_remote_description(RTCSessionDescription::offer(offer)?)
        .await?;
    let (v, a) = tracks(pc.as_ref(), "old").await?;
    let answer = pc.create_answer(None).await?;
    pc.set_local_description(answer).await?;
    tokio::time::timeout(Duration::from_secs(3), rx)
        .await
        .map_err(|_| anyhow!("gathering timed out"))?
        .ok();
    let sdp = pc.local_description().await.context("no answer")?.sdp;
    let (vs, as_) = (v.ssrcs().await[0], a.ssrcs().await[0]);
    tokio::spawn(async move {
        while let Ok(f) = video.recv().await {
            let _ = v
                .write_sample(vs, 96, &sample(f.data, f.duration), &[])
                .await;
        }
    });
    tokio::spawn(async move {
        while let Some(f) = audio.recv().await {
            let _ = a
                .write_sample(as_, 111, &sample(f.data, f.duration), &[])
                .await;
        }
    });
    Ok((pc, sdp))
}

/// One load peer: sends 150 packets/s, counts what it receives.
struct LoadPeer {
    pc: Box<dyn PeerConnection>,
    video: Arc<TrackLocalStaticSample>,
    audio: Arc<TrackLocalStaticSample>,
    ssrcs: (u32, u32),
}

async fn load_peer(url: &str, received: Arc<AtomicU64>) -> anyhow::Result<LoadPeer> {
    let (tx, rx) = oneshot::channel();
    let pc = connection(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        tx,
        received,
    )
    .await?;
    let (video, audio) = tracks(pc.as_ref(), "load").await?;
    let offer = pc.create_offer(None).await?;
    pc.set_local_description(offer).await?;
    tokio::time::timeout(Duration::from_secs(3), rx)
        .await
        .map_err(|_| anyhow!("gathering timed out"))?
        .ok();
    let sdp = pc.local_description().await.context("no offer")?.sdp;
    let answer = reqwest::Client::new()
        .post(url)
        .body(sdp)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    pc.set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    let ssrcs = (video.ssrcs().await[0], audio.ssrcs().await[0]);
    Ok(LoadPeer {
        pc,
        video,
        audio,
        ssrcs,
    })
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
pub struct TransportResult {
    pub cores: f64,
    /// Server CPU per packet, in and out together.
    pub us_per_packet: f64,
    pub syscalls_per_s: Option<f64>,
    /// Syscalls per packet handled (in + out).
    pub syscalls_per_packet: Option<f64>,
    pub mib_per_connection: f64,
    /// Share of the expected packets that did not arrive, at the server and at the peers.
    pub loss_in: f64,
    pub loss_out: f64,
    pub udp_sockets: usize,
}

/// A transport server child process, killed on drop.
struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn udp_sockets_of(pid: u32) -> usize {
    // Inodes of the process's sockets, matched against /proc/net/udp{,6}.
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    let inodes: std::collections::HashSet<String> = fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .map(str::to_owned)
        })
        .collect();
    crate::measure::count_udp_sockets(|f| f.get(9).is_some_and(|i| inodes.contains(*i)))
}

/// Syscalls the process made in `window`, counted by `strace -c -f` attached meanwhile (its
/// own overhead is why this window is separate from the CPU window).
fn count_syscalls(pid: u32, window: Duration) -> Option<f64> {
    let out = std::env::temp_dir().join(format!("mixdown-strace-{pid}.txt"));
    let mut child = Command::new("strace")
        .args(["-c", "-f", "-q", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(window);
    // SAFETY: kill(2) with strace's pid: SIGINT makes it detach and write its summary.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
    let text = std::fs::read_to_string(&out).ok()?;
    let _ = std::fs::remove_file(&out);
    // The summary's last line: "100.00 <seconds> <usecs/call> <calls> <errors> total".
    let total = text
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))?;
    let fields: Vec<&str> = total.split_whitespace().collect();
    let calls: f64 = fields.get(fields.len().checked_sub(3)?)?.parse().ok()?;
    Some(calls / window.as_secs_f64())
}

/// One run: a server of `imp`, `n` load peers, a CPU window, then a syscall window.
pub async fn run(
    imp: Impl,
    n: usize,
    warmup: Duration,
    window: Duration,
    udp: (u16, u16),
) -> anyhow::Result<TransportResult> {
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let me = std::env::current_exe()?;
    let child = Command::new(&me)
        .args(["--transport-server", &format!("{imp:?}").to_lowercase()])
        .args(["--transport-http-port", &http_port.to_string()])
        .args(["--transport-udp", &format!("{}-{}", udp.0, udp.1)])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", me.display()))?;
    let pid = child.id();
    let server = ServerChild(child);
    let base = format!("http://127.0.0.1:{http_port}");
    for _ in 0..100 {
        if reqwest::get(format!("{base}/stats")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss0 = rss_mib(pid).context("server RSS")?;
    let received = Arc::new(AtomicU64::new(0));
    let mut peers = Vec::with_capacity(n);
    for _ in 0..n {
        peers.push(load_peer(&format!("{base}/offer"), Arc::clone(&received)).await?);
    }
    let peers = Arc::new(peers);
    // One ticker writes every peer's media.
    let feeder = {
        let peers = Arc::clone(&peers);
        tokio::spawn(async move {
            let frame = random_bytes(VIDEO_BYTES);
            let packet = random_bytes(AUDIO_BYTES);
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / AUDIO_PPS));
            let mut i = 0u64;
            loop {
                tick.tick().await;
                let video_due = i.is_multiple_of(AUDIO_PPS / VIDEO_FPS);
                i += 1;
                for p in peers.iter() {
                    let d = Duration::from_millis(1000 / AUDIO_PPS);
                    let _ = p
                        .audio
                        .write_sample(p.ssrcs.1, 111, &sample(packet.clone(), d), &[])
                        .await;
                    if video_due {
                        let d = Duration::from_millis(1000 / VIDEO_FPS);
                        let _ = p
                            .video
                            .write_sample(p.ssrcs.0, 96, &sample(frame.clone(), d), &[])
                            .await;
                    }
                }
            }
        })
    };
    tokio::time::sleep(warmup).await;
    let stats = async || -> anyhow::Result<u64> {
        Ok(reqwest::get(format!("{base}/stats"))
            .await?
            .text()
            .await?
            .trim()
            .parse()?)
    };
    let in0 = stats().await?;
    let out0 = received.load(Ordering::Relaxed);
    let cpu = CpuWindow::start(pid).context("server CPU")?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let cores = cpu.cores().context("server CPU")?;
    let secs = t0.elapsed().as_secs_f64();
    let got_in = (stats().await? - in0) as f64;
    let got_out = (received.load(Ordering::Relaxed) - out0) as f64;
    let rss = rss_mib(pid).context("server RSS")?;
    let udp_sockets = udp_sockets_of(pid);
    let expected = n as f64 * PACKETS_PER_S as f64 * secs;
    let syscalls =
        tokio::task::spawn_blocking(move || count_syscalls(pid, Duration::from_secs(3))).await?;
    feeder.abort();
    for p in peers.iter() {
        let _ = p.pc.close().await;
    }
    drop(server);
    let per_s = (got_in + got_out) / secs;
    Ok(TransportResult {
        cores,
        us_per_packet: cores * 1e6 / per_s.max(1.0),
        syscalls_per_s: syscalls,
        syscalls_per_packet: syscalls.map(|s| s / per_s.max(1.0)),
        mib_per_connection: (rss - rss0) / n as f64,
        loss_in: (1.0 - got_in / expected).max(0.0),
        loss_out: (1.0 - got_out / expected).max(0.0),
        udp_sockets,
    })
}

/// Parses `A-B` into a port range.
pub fn parse_range(s: &str) -> anyhow::Result<(u16, u16)> {
    let (a, b) = s.split_once('-').context("a range is A-B")?;
    Ok((a.parse()?, b.parse()?))
}

//! A WebRTC client built on webrtc-rs: publishes a solid colour (VP8 or H.264, encoded by
//! GStreamer) and a sine tone (Opus), and decodes the composite and the mix it receives.

use crate::media::Clips;
use crate::received::{Received, RgbFrame};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use mixdown::media::{AudioCodec, VideoCodec};
use mixdown::mixer::g711;
use mixdown::rtc::{audio_codec_params, sample_track, video_codec_params};
use rtc::interceptor::Registry;
use rtc::media::Sample;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_VP9, MediaEngine,
};
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::shared::marshal::Marshal;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
};

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// ARGB colour to publish, or no video.
    pub colour: Option<u32>,
    pub send_codec: VideoCodec,
    /// Sine tone to publish, or no audio.
    pub tone_hz: Option<f32>,
    /// The one audio codec the client offers (G.711 publishers send the tone live, never
    /// the speech clip, which is Opus).
    pub audio_codec: AudioCodec,
    pub receive: bool,
    /// Video codecs the client accepts (its offer lists only these).
    pub codecs: Vec<VideoCodec>,
    /// `whip` or `whep`.
    pub endpoint: &'static str,
    /// Latency markers instead of steady media: the video alternates between `colour` and
    /// `marker_colour` every 500 ms, the audio is silence with a 40 ms 1 kHz burst every 500 ms.
    pub marker_colour: Option<u32>,
    /// Corrupt every second video frame (random bytes after the first 10), as a broken
    /// encoder or a hostile client would.
    pub corrupt_video: bool,
    /// Send pre-encoded clips (video of `send_codec`, speech) instead of live sources; the
    /// clip markers are recorded in `video_marks`/`audio_marks`.
    pub clips: Option<Arc<Clips>>,
    /// Decode what is received (false: only count packets and log frame arrivals).
    pub decode: bool,
    /// With `clips`: keep the audio markers audible (one participant per room should).
    pub clip_markers: bool,
    /// With `clips`: send the silence clip instead of speech (a listener whose microphone
    /// still sends packets).
    pub silent: bool,
    /// Offer no video section at all.
    pub audio_only: bool,
    /// Where the client's media socket binds.
    pub bind_ip: std::net::IpAddr,
    /// Appended to the WHIP/WHEP URL (`?max_tier=1`).
    pub query: String,
    /// The tone's amplitude (an `f32`'s bits), changeable while the client runs.
    pub amplitude: Arc<AtomicU32>,
    /// Send the RFC 6464 audio-level extension in every audio packet, as browsers do.
    pub audio_level: bool,
    /// Sent as `Authorization: Bearer` with the offer (servers with `[auth] keys`).
    pub token: Option<String>,
}

/// Below this REMB ceiling (bit/s) a clip publisher sends the small clip: a browser asked
/// for a trickle (off screen) drops to a tiny picture.
pub const SMALL_CLIP_BELOW_BPS: u64 = 150_000;

/// What the server asked of a publishing client: a ceiling (REMB, bit/s; 0 before any) and
/// keyframes (PLI/FIR, counted).
#[derive(Default)]
struct Feedback {
    cap_bps: AtomicU64,
    keyframes: AtomicU64,
}

/// Reads the RTCP the server sends about a published track into `feedback`.
async fn read_feedback(track: Arc<TrackLocalStaticSample>, feedback: Arc<Feedback>) {
    use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
    use webrtc::media_stream::track_local::TrackLocalEvent;
    while let Some(ev) = track.poll().await {
        let TrackLocalEvent::OnRtcpPacket(packets) = ev else {
            continue;
        };
        for p in packets {
            if let Some(remb) = p.as_any().downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
                feedback
                    .cap_bps
                    .store(remb.bitrate as u64, Ordering::Relaxed);
            } else if mixdown::rtc::keyframe_interceptor::is_keyframe_request(p.as_ref()) {
                feedback.keyframes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The tone's amplitude unless set otherwise (about -13 dBFS RMS).
pub const DEFAULT_AMPLITUDE: f32 = 0.3;

impl ClientOptions {
    pub fn participant(colour: u32, tone_hz: f32) -> Self {
        Self {
            colour: Some(colour),
            send_codec: VideoCodec::Vp8,
            tone_hz: Some(tone_hz),
            audio_codec: AudioCodec::Opus,
            receive: true,
            codecs: vec![VideoCodec::Vp8],
            endpoint: "whip",
            marker_colour: None,
            corrupt_video: false,
            clips: None,
            decode: true,
            clip_markers: false,
            silent: false,
            audio_only: false,
            bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            query: String::new(),
            amplitude: Arc::new(AtomicU32::new(DEFAULT_AMPLITUDE.to_bits())),
            audio_level: true,
            token: None,
        }
    }

    pub fn viewer() -> Self {
        Self {
            colour: None,
            send_codec: VideoCodec::Vp8,
            tone_hz: None,
            audio_codec: AudioCodec::Opus,
            receive: true,
            codecs: vec![VideoCodec::Vp8],
            endpoint: "whep",
            marker_colour: None,
            corrupt_video: false,
            clips: None,
            decode: true,
            clip_markers: false,
            silent: false,
            audio_only: false,
            bind_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            query: String::new(),
            amplitude: Arc::new(AtomicU32::new(DEFAULT_AMPLITUDE.to_bits())),
            audio_level: true,
            token: None,
        }
    }

    /// Sets the tone's amplitude now (also while the client runs).
    pub fn set_amplitude(&self, a: f32) {
        self.amplitude.store(a.to_bits(), Ordering::Relaxed);
    }
}

/// The audio-level extension of one packet (`level`: -dBov), or none when not sent.
fn level_extension(send: bool, level: u8) -> Vec<rtc::rtp::extension::HeaderExtension> {
    use rtc::rtp::extension::HeaderExtension;
    use rtc::rtp::extension::audio_level_extension::AudioLevelExtension;
    if !send {
        return Vec::new();
    }
    vec![HeaderExtension::AudioLevel(AudioLevelExtension {
        level,
        voice: level < 50,
    })]
}

/// When a colour change was handed to the transport, and the colour it changed to.
pub type VideoMark = (Instant, [u8; 3]);

pub struct Client {
    pub location: String,
    pub received: Arc<Received>,
    /// When each video marker (first frame of a new colour) and audio marker (first frame of
    /// a burst) was handed to the transport, with the colour the video changed to.
    pub video_marks: Arc<Mutex<Vec<VideoMark>>>,
    pub audio_marks: Arc<Mutex<Vec<Instant>>>,
    pc: Box<dyn PeerConnection>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
    base: String,
}

/// A sending track of `kind` for the client, built like the server's own.
/// The payload type the client offers its audio codec with (G.711's are static).
fn audio_payload_type(codec: AudioCodec) -> u8 {
    match codec {
        AudioCodec::Opus => 111,
        AudioCodec::Pcmu => 0,
        AudioCodec::Pcma => 8,
    }
}

fn track(kind: RtpCodecKind, codec: RTCRtpCodec) -> Arc<TrackLocalStaticSample> {
    // Mixdown's codecs all have a packetizer.
    Arc::new(sample_track(kind, codec, "client", &kind.to_string()).expect("a packetizer"))
}

struct Handler {
    gathered: Mutex<Option<oneshot::Sender<()>>>,
    received: Arc<Received>,
    pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
    decode: bool,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(tx) = self.gathered.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let received = self.received.clone();
        let pipelines = self.pipelines.clone();
        let decode = self.decode;
        tokio::spawn(async move { receive(track, received, pipelines, decode).await });
    }
}

async fn receive(
    track: Arc<dyn TrackRemote>,
    received: Arc<Received>,
    pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
    decode: bool,
) {
    let ssrc = track.ssrcs().await.first().copied().unwrap_or(0);
    let mime = track
        .codec(ssrc)
        .await
        .map(|c| c.mime_type)
        .unwrap_or_default();
    let law = if mime.eq_ignore_ascii_case(MIME_TYPE_PCMU) {
        Some(g711::Law::Mu)
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_PCMA) {
        Some(g711::Law::A)
    } else {
        None
    };
    if let Some(law) = law {
        let mut up = g711::Upsampler::new();
        let (mut pcm8k, mut pcm) = (Vec::new(), Vec::new());
        while let Some(ev) = track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                if !decode {
                    received.audio_packets.lock().unwrap().push(Instant::now());
                    continue;
                }
                pcm8k.clear();
                pcm.clear();
                g711::decode(law, &p.payload, &mut pcm8k);
                up.process(&pcm8k, &mut pcm);
                received.push_audio(&pcm);
            }
        }
        return;
    }
    if mime.eq_ignore_ascii_case(MIME_TYPE_OPUS) {
        let mut decoder = opus::Decoder::new(48000, opus::Channels::Mono).unwrap();
        let mut pcm = vec![0f32; 5760];
        while let Some(ev) = track.poll().await {
            if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                if !decode {
                    received.audio_packets.lock().unwrap().push(Instant::now());
                } else if let Ok(n) = decoder.decode_float(&p.payload, &mut pcm, false) {
                    received.push_audio(&pcm[..n]);
                }
            }
        }
        return;
    }
    *received.video_codec.lock().unwrap() = Some(mime.clone());
    let codec = if mime.eq_ignore_ascii_case(MIME_TYPE_H264) {
        VideoCodec::H264
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_VP9) {
        VideoCodec::Vp9
    } else {
        VideoCodec::Vp8
    };
    let mut appsrc: Option<gst_app::AppSrc> = None;
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(p) = ev else {
            continue;
        };
        if p.header.marker {
            received
                .rtp_frames
                .lock()
                .unwrap()
                .push((Instant::now(), p.header.timestamp));
        }
        if codec == VideoCodec::Vp8 && vp8_keyframe(&p.payload) == Some(true) {
            received.keyframes.lock().unwrap().push(p.header.timestamp);
        }
        if !decode {
            continue;
        }
        if appsrc.is_none() {
            let (pipeline, src) = decoder(codec, p.header.payload_type, received.clone());
            pipelines.lock().unwrap().push(pipeline);
            appsrc = Some(src);
        }
        if let (Some(src), Ok(bytes)) = (&appsrc, p.marshal()) {
            let _ = src.push_buffer(gst::Buffer::from_slice(bytes.freeze()));
        }
    }
}

/// appsrc (RTP) → jitter buffer → depayloader → decoder → RGB appsink.
pub fn decoder(
    codec: VideoCodec,
    pt: u8,
    received: Arc<Received>,
) -> (gst::Pipeline, gst_app::AppSrc) {
    let chain = match codec {
        VideoCodec::Vp8 => "rtpvp8depay ! vp8dec",
        VideoCodec::H264 => "rtph264depay ! h264parse ! avdec_h264",
        VideoCodec::Vp9 => "rtpvp9depay ! vp9dec",
    };
    let desc = format!(
        "appsrc name=src is-live=true format=time do-timestamp=true ! \
         {chain} ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    src.set_caps(Some(
        &gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("clock-rate", 90000i32)
            .field("encoding-name", codec.encoding_name())
            .field("payload", pt as i32)
            .build(),
    ));
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let caps = sample.caps().ok_or(gst::FlowError::Error)?;
                let st = caps.structure(0).ok_or(gst::FlowError::Error)?;
                let width = st.get::<i32>("width").map_err(|_| gst::FlowError::Error)? as u32;
                let height = st.get::<i32>("height").map_err(|_| gst::FlowError::Error)? as u32;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                // RGB rows are padded to 4 bytes by videoconvert: repack tightly.
                let stride = (width as usize * 3).div_ceil(4) * 4;
                let mut data = Vec::with_capacity(width as usize * height as usize * 3);
                for row in 0..height as usize {
                    let start = row * stride;
                    data.extend_from_slice(&map[start..start + width as usize * 3]);
                }
                received.push_frame(RgbFrame {
                    width,
                    height,
                    data,
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, src)
}

/// A live GStreamer encoder of a solid colour, whose frames arrive on the returned channel.
pub fn colour_encoder(
    colour: u32,
    codec: VideoCodec,
) -> (gst::Pipeline, mpsc::Receiver<(Bytes, bool)>) {
    let enc = match codec {
        VideoCodec::Vp8 => {
            "vp8enc deadline=1 cpu-used=-8 keyframe-max-dist=15 target-bitrate=300000 lag-in-frames=0"
        }
        VideoCodec::H264 => {
            "x264enc tune=zerolatency speed-preset=ultrafast key-int-max=15 bitrate=300 ! \
             video/x-h264,profile=constrained-baseline,stream-format=byte-stream,alignment=au"
        }
        VideoCodec::Vp9 => {
            "video/x-raw,format=I420 ! vp9enc deadline=1 cpu-used=8 keyframe-max-dist=15 \
             target-bitrate=300000 lag-in-frames=0 ! video/x-vp9,profile=(string)0"
        }
    };
    let desc = format!(
        "videotestsrc is-live=true pattern=solid-color foreground-color={colour} ! \
         video/x-raw,width=320,height=240,framerate=15/1 ! {enc} ! appsink name=sink sync=false"
    );
    let pipeline = gst::parse::launch(&desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let rx = encoded_frames(&sink);
    pipeline.set_state(gst::State::Playing).unwrap();
    (pipeline, rx)
}

/// Encoded frames (data, keyframe) from an appsink, through a bounded channel (30 frames; a
/// full channel drops the frame, as a congested sender would).
fn encoded_frames(sink: &gst_app::AppSink) -> mpsc::Receiver<(Bytes, bool)> {
    let (tx, rx) = mpsc::channel(30);
    sink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let buffer = sample.buffer().ok_or(gst::FlowError::Error)?;
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let key = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
                let _ = tx.try_send((Bytes::copy_from_slice(&map), key));
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    rx
}

fn rgb(argb: u32) -> [u8; 3] {
    [(argb >> 16) as u8, (argb >> 8) as u8, argb as u8]
}

/// A solid I420 frame (BT.601) of `argb`.
fn i420(argb: u32, w: usize, h: usize) -> Vec<u8> {
    let [r, g, b] = rgb(argb).map(|c| c as f32);
    let y = (0.257 * r + 0.504 * g + 0.098 * b + 16.0) as u8;
    let u = (-0.148 * r - 0.291 * g + 0.439 * b + 128.0) as u8;
    let v = (0.439 * r - 0.368 * g - 0.071 * b + 128.0) as u8;
    let mut f = vec![y; w * h];
    f.extend(std::iter::repeat_n(u, w * h / 4));
    f.extend(std::iter::repeat_n(v, w * h / 4));
    f
}

/// Frames per colour in marker mode (500 ms at 30 fps).
const MARK_FRAMES: u64 = 15;

/// A VP8 encoder fed with raw frames alternating between two colours, so the sender knows
/// exactly which encoded frame is the first of a new colour.
fn marker_encoder(
    colours: [u32; 2],
) -> (
    gst::Pipeline,
    mpsc::Receiver<(Bytes, bool)>,
    tokio::task::JoinHandle<()>,
) {
    let desc = "appsrc name=src is-live=true format=time do-timestamp=true \
        caps=video/x-raw,format=I420,width=320,height=240,framerate=30/1 \
        ! vp8enc deadline=1 cpu-used=-8 lag-in-frames=0 keyframe-max-dist=30 target-bitrate=300000 \
        ! appsink name=sink sync=false";
    let pipeline = gst::parse::launch(desc)
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
    let src = pipeline
        .by_name("src")
        .unwrap()
        .downcast::<gst_app::AppSrc>()
        .unwrap();
    let sink = pipeline
        .by_name("sink")
        .unwrap()
        .downcast::<gst_app::AppSink>()
        .unwrap();
    let rx = encoded_frames(&sink);
    pipeline.set_state(gst::State::Playing).unwrap();
    let frames = [i420(colours[0], 320, 240), i420(colours[1], 320, 240)];
    let feeder = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(33_333));
        for i in 0u64.. {
            tick.tick().await;
            let f = &frames[((i / MARK_FRAMES) % 2) as usize];
            if src.push_buffer(gst::Buffer::from_slice(f.clone())).is_err() {
                break;
            }
        }
    });
    (pipeline, rx, feeder)
}

/// POSTs `offer` to a WHIP/WHEP endpoint; returns the `Location` and the answer.
pub async fn whip_exchange(url: &str, offer: String) -> Result<(String, String), String> {
    whip_exchange_with(url, offer, None).await
}

/// [`whip_exchange`] with an access token.
pub async fn whip_exchange_with(
    url: &str,
    offer: String,
    token: Option<&str>,
) -> Result<(String, String), String> {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/sdp");
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let response = request
        .body(offer)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status() != reqwest::StatusCode::CREATED {
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        return Err(format!("{status}: {body}"));
    }
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location")?
        .to_owned();
    let answer = response.text().await.map_err(|e| e.to_string())?;
    Ok((location, answer))
}

/// Whether a VP8 RTP payload starts a keyframe (RFC 7741 descriptor, then the frame
/// header's P bit); `None` when the packet does not start a frame.
pub fn vp8_keyframe(payload: &[u8]) -> Option<bool> {
    let frame = mixdown::picture::vp8_frame_start(payload)?;
    Some(*frame.first()? & 0x01 == 0)
}

/// `DELETE {base}{location}`: ends a WHIP/WHEP session. Returns the HTTP status (0 when the
/// request failed).
pub async fn delete_session(base: &str, location: &str) -> u16 {
    // A cluster node answers with an absolute Location (the node that serves the room).
    let url = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    };
    reqwest::Client::new()
        .delete(url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A frame to write to a sample track, stamped now.
pub fn sample(data: Bytes, duration: Duration) -> Sample {
    Sample {
        data,
        timestamp: Instant::now(),
        duration,
        packet_timestamp: 0,
        prev_dropped_packets: 0,
        prev_padding_packets: 0,
    }
}

impl Client {
    /// Joins `room` on the server at `base` (`http://127.0.0.1:port`). Panics on failure.
    pub async fn join(base: &str, room: &str, opts: ClientOptions) -> Client {
        Self::try_join(base, room, opts)
            .await
            .expect("client joins")
    }

    pub async fn try_join(base: &str, room: &str, opts: ClientOptions) -> Result<Client, String> {
        let url = format!("{base}/{}/{room}{}", opts.endpoint, opts.query);
        let token = opts.token.clone();
        Self::connect(base, opts, async move |offer: String| {
            whip_exchange_with(&url, offer, token.as_deref()).await
        })
        .await
    }

    /// Builds the peer connection and hands the complete offer to `signal`, which returns the
    /// session's location and the answer (WHIP/WHEP here; Janus's API in the benchmarks).
    pub async fn connect(
        base: &str,
        opts: ClientOptions,
        signal: impl AsyncFnOnce(String) -> Result<(String, String), String>,
    ) -> Result<Client, String> {
        if opts.clips.is_some() && opts.send_codec == VideoCodec::Vp9 {
            return Err("the clips are VP8 and H.264; a VP9 publisher sends its colour".into());
        }
        let mut engine = MediaEngine::default();
        engine
            .register_codec(
                RTCRtpCodecParameters {
                    rtp_codec: audio_codec_params(opts.audio_codec),
                    payload_type: audio_payload_type(opts.audio_codec),
                },
                RtpCodecKind::Audio,
            )
            .unwrap();
        for (i, c) in opts.codecs.iter().enumerate() {
            engine
                .register_codec(
                    RTCRtpCodecParameters {
                        rtp_codec: video_codec_params(*c),
                        payload_type: 96 + 2 * i as u8,
                    },
                    RtpCodecKind::Video,
                )
                .unwrap();
        }
        if opts.audio_level {
            engine
                .register_header_extension(
                    rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                        uri: mixdown::rtc::AUDIO_LEVEL_URI.to_owned(),
                    },
                    RtpCodecKind::Audio,
                    None,
                )
                .unwrap();
        }
        // PLI and REMB from the server reach the publishing tasks (a browser obeys both).
        let registry = register_default_interceptors(Registry::new(), &mut engine)
            .unwrap()
            .with(
                rtc::interceptor::Slot::from(14_000),
                mixdown::rtc::keyframe_interceptor::KeyframeRequestForwarder::default(),
            );
        let received = Arc::new(Received::default());
        let pipelines = Arc::new(Mutex::new(Vec::new()));
        let (gathered_tx, gathered_rx) = oneshot::channel();
        let handler = Arc::new(Handler {
            gathered: Mutex::new(Some(gathered_tx)),
            received: received.clone(),
            pipelines: pipelines.clone(),
            decode: opts.decode,
        });
        let pc = PeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_setting_engine(
                SettingEngineBuilder::new()
                    .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
                    .with_include_loopback_candidate(opts.bind_ip.is_loopback())
                    .build(),
            )
            .with_interceptor_registry(registry)
            .with_handler(handler as Arc<dyn PeerConnectionEventHandler>)
            .with_udp_addrs(vec![std::net::SocketAddr::new(opts.bind_ip, 0)])
            .build()
            .await
            .map_err(|e| e.to_string())?;
        let pc: Box<dyn PeerConnection> = Box::new(pc);
        let direction = if opts.receive {
            RTCRtpTransceiverDirection::Sendrecv
        } else {
            RTCRtpTransceiverDirection::Sendonly
        };
        // One section per kind: a sending track (sendrecv or sendonly), or receive-only.
        let mut senders = Vec::new();
        let video = opts.colour.map(|_| video_codec_params(opts.send_codec));
        let sections = [
            (
                "video",
                RtpCodecKind::Video,
                video,
                opts.receive && !opts.audio_only,
            ),
            (
                "audio",
                RtpCodecKind::Audio,
                opts.tone_hz.map(|_| audio_codec_params(opts.audio_codec)),
                opts.receive,
            ),
        ];
        for (name, kind, send, receive) in sections {
            match send {
                Some(codec) => {
                    let t = track(kind, codec);
                    let init = RTCRtpTransceiverInit {
                        direction,
                        streams: vec![],
                        send_encodings: vec![],
                    };
                    pc.add_transceiver_from_track(t.clone() as Arc<dyn TrackLocal>, Some(init))
                        .await
                        .map_err(|e| e.to_string())?;
                    senders.push((name, t));
                }
                None if receive => {
                    let init = RTCRtpTransceiverInit {
                        direction: RTCRtpTransceiverDirection::Recvonly,
                        streams: vec![],
                        send_encodings: vec![],
                    };
                    pc.add_transceiver_from_kind(kind, Some(init))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                None => {}
            }
        }
        let offer = pc.create_offer(None).await.map_err(|e| e.to_string())?;
        pc.set_local_description(offer)
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(Duration::from_secs(5), gathered_rx)
            .await
            .map_err(|_| "gathering timed out".to_string())?
            .ok();
        let sdp = pc
            .local_description()
            .await
            .ok_or("no local description")?
            .sdp;
        let (location, answer) = match signal(sdp).await {
            Ok(ok) => ok,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        pc.set_remote_description(
            RTCSessionDescription::answer(answer).map_err(|e| e.to_string())?,
        )
        .await
        .map_err(|e| e.to_string())?;

        let mut tasks = Vec::new();
        let video_marks = Arc::new(Mutex::new(Vec::new()));
        let audio_marks = Arc::new(Mutex::new(Vec::new()));
        for (kind, t) in senders {
            let ssrc = t.ssrcs().await[0];
            let feedback = Arc::new(Feedback::default());
            if kind == "video" {
                tasks.push(tokio::spawn(read_feedback(t.clone(), feedback.clone())));
            }
            let pt = match kind {
                "video" => {
                    96 + 2 * opts
                        .codecs
                        .iter()
                        .position(|c| *c == opts.send_codec)
                        .unwrap_or(0) as u8
                }
                _ => audio_payload_type(opts.audio_codec),
            };
            let live_audio = kind == "audio" && opts.audio_codec != AudioCodec::Opus;
            if let Some(clips) = opts.clips.clone().filter(|_| !live_audio) {
                let (clip, marks_v, marks_a) = match kind {
                    "video" => (
                        match opts.send_codec {
                            // VP9 with clips was refused above.
                            VideoCodec::Vp8 | VideoCodec::Vp9 => clips.vp8.clone(),
                            VideoCodec::H264 => clips.h264.clone(),
                        },
                        Some(video_marks.clone()),
                        None,
                    ),
                    _ if opts.silent => (clips.silence.clone(), None, None),
                    _ => (clips.speech.clone(), None, Some(audio_marks.clone())),
                };
                let marked = opts.clip_markers || kind == "video";
                let levels = opts.audio_level && kind == "audio";
                // Capped to a trickle (off screen), a browser sends a small picture: so does
                // the generator, switching clips at a keyframe of the one it goes to.
                let small = (kind == "video" && opts.send_codec == VideoCodec::Vp8)
                    .then(|| clips.vp8_small.clone());
                tasks.push(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(clip.frame_duration);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    let mut on_small = false;
                    for i in 0usize.. {
                        tick.tick().await;
                        if let Some(small) = &small {
                            let cap = feedback.cap_bps.load(Ordering::Relaxed);
                            let want = cap > 0 && cap < SMALL_CLIP_BELOW_BPS;
                            let target = if want { small } else { &clip };
                            let key = target.frames[i % target.frames.len()]
                                .data
                                .first()
                                .is_some_and(|b| b & 1 == 0);
                            if want != on_small && key {
                                on_small = want;
                            }
                        }
                        let clip = match &small {
                            Some(s) if on_small => s,
                            _ => &clip,
                        };
                        let mut frame = &clip.frames[i % clip.frames.len()];
                        // Only a marked participant's audio markers are audible: the others
                        // replace the marker packets by speech from 200 ms later.
                        if !marked && frame.marker {
                            frame = &clip.frames[(i + 10) % clip.frames.len()];
                        }
                        let frame = frame;
                        let _ = t
                            .write_sample(
                                ssrc,
                                pt,
                                &sample(frame.data.clone(), clip.frame_duration),
                                &level_extension(levels, frame.level),
                            )
                            .await;
                        if frame.marker && i > 0 {
                            let now = Instant::now();
                            if let Some(m) = &marks_v {
                                m.lock().unwrap().push((now, [255, 255, 255]));
                            }
                            if let Some(m) = &marks_a {
                                m.lock().unwrap().push(now);
                            }
                        }
                    }
                }));
                continue;
            }
            if kind == "video" {
                let (pipeline, mut frames, feeder) = match opts.marker_colour {
                    Some(second) => {
                        let (p, rx, feeder) = marker_encoder([opts.colour.unwrap(), second]);
                        (p, rx, Some(feeder))
                    }
                    None => {
                        let (p, rx) = colour_encoder(opts.colour.unwrap(), opts.send_codec);
                        (p, rx, None)
                    }
                };
                let encoder_sink = pipeline.by_name("sink");
                pipelines.lock().unwrap().push(pipeline);
                tasks.extend(feeder);
                let marks = video_marks.clone();
                let feedback = feedback.clone();
                let colours = [opts.colour.unwrap(), opts.marker_colour.unwrap_or(0)];
                let markers = opts.marker_colour.is_some();
                let corrupt = opts.corrupt_video;
                tasks.push(tokio::spawn(async move {
                    let mut index = 0u64;
                    let mut keyframes_asked = 0;
                    while let Some((mut data, _key)) = frames.recv().await {
                        // The server's PLI: a keyframe now, as a browser would.
                        let asked = feedback.keyframes.load(Ordering::Relaxed);
                        if asked != keyframes_asked {
                            keyframes_asked = asked;
                            if let Some(sink) = &encoder_sink {
                                sink.send_event(
                                    gstreamer_video::UpstreamForceKeyUnitEvent::builder()
                                        .all_headers(true)
                                        .build(),
                                );
                            }
                        }
                        if corrupt && index % 2 == 1 && data.len() > 10 {
                            let mut bad = data.to_vec();
                            for b in &mut bad[10..] {
                                *b = rand::random();
                            }
                            data = Bytes::from(bad);
                        }
                        let d = if markers { 33 } else { 66 };
                        let _ = t
                            .write_sample(ssrc, pt, &sample(data, Duration::from_millis(d)), &[])
                            .await;
                        if markers && index > 0 && index.is_multiple_of(MARK_FRAMES) {
                            let colour = colours[((index / MARK_FRAMES) % 2) as usize];
                            marks.lock().unwrap().push((Instant::now(), rgb(colour)));
                        }
                        index += 1;
                    }
                }));
            } else {
                let hz = opts.tone_hz.unwrap();
                let markers = opts.marker_colour.is_some();
                let marks = audio_marks.clone();
                let gain = opts.amplitude.clone();
                let levels = opts.audio_level;
                let law = match opts.audio_codec {
                    AudioCodec::Opus => None,
                    AudioCodec::Pcmu => Some(g711::Law::Mu),
                    AudioCodec::Pcma => Some(g711::Law::A),
                };
                tasks.push(tokio::spawn(async move {
                    let mut enc =
                        opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Audio)
                            .unwrap();
                    let mut down = g711::Downsampler::new();
                    let (mut pcm8k, mut bytes) = (Vec::new(), Vec::new());
                    let mut out = vec![0u8; 4000];
                    let mut phase = 0u64;
                    // A change of loudness is a ramp over one frame, as a voice's is, never a
                    // step (which would click in the source itself).
                    let mut previous = f32::from_bits(gain.load(Ordering::Relaxed));
                    let mut tick = tokio::time::interval(Duration::from_millis(20));
                    loop {
                        tick.tick().await;
                        let frame = phase / 960;
                        // Markers: 2 loud frames out of every 25 (40 ms every 500 ms).
                        let amplitude = match (markers, frame % 25) {
                            (false, _) => f32::from_bits(gain.load(Ordering::Relaxed)),
                            (true, 0 | 1) => 0.5,
                            (true, _) => 0.0,
                        };
                        let from = if markers { amplitude } else { previous };
                        previous = amplitude;
                        let pcm: Vec<f32> = (0..960)
                            .map(|i| {
                                let n = (phase + i) as f32;
                                let a = from + (amplitude - from) * i as f32 / 960.0;
                                a * (2.0 * std::f32::consts::PI * hz * n / 48000.0).sin()
                            })
                            .collect();
                        phase += 960;
                        let payload = match law {
                            None => {
                                let n = enc.encode_float(&pcm, &mut out).unwrap();
                                Bytes::copy_from_slice(&out[..n])
                            }
                            Some(law) => {
                                pcm8k.clear();
                                bytes.clear();
                                down.process(&pcm, &mut pcm8k);
                                g711::encode(law, &pcm8k, &mut bytes);
                                Bytes::copy_from_slice(&bytes)
                            }
                        };
                        let _ = t
                            .write_sample(
                                ssrc,
                                pt,
                                &sample(payload, Duration::from_millis(20)),
                                &level_extension(levels, crate::media::audio_level(&pcm)),
                            )
                            .await;
                        if markers && frame.is_multiple_of(25) && frame > 0 {
                            marks.lock().unwrap().push(Instant::now());
                        }
                    }
                }));
            }
        }
        Ok(Client {
            location,
            received,
            video_marks,
            audio_marks,
            pc,
            tasks,
            pipelines,
            base: base.to_owned(),
        })
    }

    /// `DELETE` on the Location, then close. Returns the HTTP status.
    pub async fn leave(self) -> u16 {
        let status = delete_session(&self.base, &self.location).await;
        self.close().await;
        status
    }

    /// Disappears without telling the server (like a closed tab).
    pub async fn close(self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = self.pc.close().await;
        for p in self.pipelines.lock().unwrap().drain(..) {
            let _ = p.set_state(gst::State::Null);
        }
    }
}

impl Drop for Client {
    /// A client dropped without [`close`](Self::close) (a run that failed half way) stops
    /// sending: its tasks would otherwise go on loading this process for the runs after it.
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Ok(mut pipelines) = self.pipelines.lock() {
            for p in pipelines.drain(..) {
                let _ = p.set_state(gst::State::Null);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframes_are_found_behind_the_payload_descriptor() {
        // S=1, PID=0, no extensions; frame header P bit 0: keyframe.
        assert_eq!(vp8_keyframe(&[0x10, 0x50, 0x01]), Some(true));
        assert_eq!(vp8_keyframe(&[0x10, 0x51, 0x01]), Some(false));
        // X=1 with a 15-bit picture ID (I, M set) before the header.
        assert_eq!(vp8_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x50]), Some(true));
        assert_eq!(vp8_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x51]), Some(false));
        // Not the start of a frame.
        assert_eq!(vp8_keyframe(&[0x00, 0x50]), None);
        assert_eq!(vp8_keyframe(&[]), None);
    }
}

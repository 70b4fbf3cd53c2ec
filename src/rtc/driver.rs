//! One peer connection's task: it owns the sans-IO `rtc` connection and is the only code that
//! touches it. It feeds the connection what the socket reader routed to it, the room's frames
//! and the decoders' keyframe wishes; it sends what the connection writes (in `sendmmsg`
//! batches), pushes received RTP into the room's sinks and reports events. It never waits
//! on the room: everything it tells the room goes by `try_send`.

use super::codecs::{audio_codec_params, track_kind, video_codec_params};
use super::estimate::ProbeOutcome;
use super::keyframe_interceptor::is_keyframe_request;
use super::router::{Datagram, MAX_STUN_ADDRS_PER_SESSION, Peer};
use super::session::{
    DATA_CHANNEL_LABEL, DataIn, DataPipe, MAX_REMOTE_CANDIDATES, SessionEvent, SharedEstimator,
};
use super::stun::{DatagramKind, classify};
use super::{RtcError, Transport, udp};
use crate::ids::SessionId;
use crate::media::{
    AudioCodec, EncodedFrame, LINK_REPORT_INTERVAL, LinkReport, PLI_QUEUE, SharedRtpSink,
    VideoCodec,
};
use crate::room::keyframe::KeyframeGate;
use ::rtc::peer_connection::RTCPeerConnection;
use ::rtc::peer_connection::configuration::media_engine::{MIME_TYPE_VP8, MIME_TYPE_VP9};
use ::rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent};
use ::rtc::peer_connection::message::RTCMessage;
use ::rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use ::rtc::peer_connection::transport::{RTCDtlsTransport, RTCIceCandidateInit};
use ::rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use ::rtc::rtp_transceiver::rtp_sender::RTCRtpCodec;
use ::rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use ::rtc::sansio::Protocol;
use ::rtc::shared::marshal::Marshal;
use ::rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// At most one PLI to a publisher per this interval.
const PLI_INTERVAL: Duration = Duration::from_millis(500);
/// RTP packet size the payloads are cut for (what browsers use; leaves room for SRTP and
/// TURN), and the fixed RTP header within it.
const RTP_MTU: usize = 1200;
const RTP_HEADER: usize = 12;
/// Datagrams handled before the connection's output is flushed (bounds the batch latency).
const READ_BURST: usize = 64;
/// Replies about published tracks (one per track) waiting for the driver.
const SINK_QUEUE: usize = 4;
/// A STUN Binding Success Response's type (RFC 5389 §6).
const BINDING_SUCCESS: [u8; 2] = [0x01, 0x01];
/// When nothing is due, wake anyway this often (nothing is lost: it only re-arms the timer).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// Room messages held for a data channel the peer has not opened yet (the oldest go first).
const DATA_PENDING: usize = 64;
/// Bytes sent on the data channel and not yet acknowledged beyond which room messages are
/// dropped: a peer that does not read must not grow the server's memory.
const DATA_BACKLOG: usize = 256 * 1024;

/// The session's `mixdown` data channel: the room's side, and the channel once open.
struct DataOut {
    pipe: DataPipe,
    channel: Option<::rtc::data_channel::RTCDataChannelId>,
    pending: std::collections::VecDeque<String>,
}

pub(super) enum Command {
    Candidate(RTCIceCandidateInit, oneshot::Sender<Result<(), RtcError>>),
    Video(VideoCommand),
    /// Ask the publisher to send its video at most this fast (bit/s), by REMB.
    PublishCap(f64),
    Close,
}

/// A connected receiver still waiting for a keyframe (to start, or to move to another tier)
/// asks again this often: the keyframe its first request was served by may have left before
/// it was connected or subscribed (a request within 60 ms of a forced keyframe is served by
/// that keyframe), and the periodic one is seconds away.
const KEYFRAME_RETRY: Duration = Duration::from_millis(500);

/// A publisher's ceiling is repeated this often (as receivers repeat REMB), so a lost packet
/// or a sender that restarted its estimate still gets it.
const REMB_INTERVAL: Duration = Duration::from_secs(1);

pub(super) enum VideoCommand {
    /// Move to another encode at its next keyframe.
    Switch {
        tier: usize,
        frames: broadcast::Receiver<EncodedFrame>,
    },
    /// Send no video (audio only).
    Pause,
    /// Pad the stream up to this rate for a moment.
    Probe { bps: f64 },
}

/// Loss on the path from which audio packets are sent twice, and below which they stop
/// (the path's own loss, from transport feedback: what the receiver reports after the
/// copies have done their work is lower).
const AUDIO_DUPLICATE_ON: f64 = 0.05;
const AUDIO_DUPLICATE_OFF: f64 = 0.02;
/// Padding is sent in steps this far apart while a probe runs.
const PROBE_TICK: Duration = Duration::from_millis(10);
/// A padding-only packet on the wire: RTP header, transport-wide sequence number
/// extension, 4 bytes of padding, SRTP tag, UDP and IPv4 headers.
const PADDING_WIRE_BYTES: f64 = (12 + 8 + 4 + super::estimate::WIRE_OVERHEAD) as f64;
/// At most this many padding packets per step (caps a probe at ~3.5 Mbit/s of padding).
const MAX_PADDING_PER_TICK: usize = 64;

/// What the driver talks to.
pub(super) struct Io {
    pub inbound: mpsc::Receiver<Datagram>,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<SessionEvent>,
    pub transport: Arc<Transport>,
    /// `limits.packets_per_second`.
    pub packets_per_second: u32,
}

/// One outgoing RTP stream: this receiver's SSRC, sequence numbers and timestamps, over
/// payloads cut once per frame and shared by every receiver of the same encode.
struct RtpOut {
    codec: RTCRtpCodec,
    pt: u8,
    ssrc: u32,
    seq: u16,
    ts: u32,
    /// The timestamp of presentation time zero, for frames that carry one (video: every
    /// tier's copy of a picture has the same, so switching tiers keeps time continuous).
    origin: u32,
    /// The timestamp of the last frame sent: each frame sent goes out later than it.
    last_sent: Option<u32>,
}

impl RtpOut {
    fn new(codec: RTCRtpCodec, pt: u8, ssrc: u32) -> Self {
        let origin = rand::random();
        Self {
            codec,
            pt,
            ssrc,
            seq: rand::random(),
            ts: origin,
            origin,
            last_sent: None,
        }
    }

    /// Sets the timestamp from the frame's presentation time, when it has one.
    fn stamp(&mut self, frame: &EncodedFrame) {
        if let Some(pts) = frame.pts {
            let ticks = (pts.as_nanos() * self.codec.clock_rate as u128 / 1_000_000_000) as u32;
            self.ts = self.origin.wrapping_add(ticks);
        }
    }

    /// A padding-only packet (a probe's filler): the next sequence number, the last
    /// frame's timestamp, no payload. Receivers count it and discard it.
    fn padding(&mut self) -> ::rtc::rtp::Packet {
        let p = ::rtc::rtp::Packet {
            header: ::rtc::rtp::header::Header {
                version: 2,
                padding: true,
                marker: false,
                payload_type: self.pt,
                sequence_number: self.seq,
                timestamp: self.ts,
                ssrc: self.ssrc,
                ..Default::default()
            },
            payload: bytes::Bytes::new(),
        };
        self.seq = self.seq.wrapping_add(1);
        p
    }

    /// The frame's packets for this receiver (the payloads are shared, not copied), and the
    /// timestamp moved on by the frame's duration.
    fn packets(&mut self, frame: &EncodedFrame, out: &mut Vec<::rtc::rtp::Packet>) {
        self.stamp(frame);
        // At a tier move, the new encode's first keyframe is often a picture the old encode
        // already sent (same presentation time, so the same timestamp). Chromium drops a
        // keyframe whose picture ID is older (each encode numbers its own) unless its
        // timestamp is newer, and then decodes nothing until its own PLI three seconds
        // later. One tick later is newer, and the frames after it are back on their own
        // times.
        if let Some(last) = self.last_sent
            && (self.ts.wrapping_sub(last) as i32) <= 0
        {
            self.ts = last.wrapping_add(1);
        }
        self.last_sent = Some(self.ts);
        let payloads = frame.payloads.get_or_init(|| {
            // Cutting must come out the same whoever does it first: VP8 and VP9 take their
            // picture IDs from the frame's number, the others need no state across frames (a
            // fresh payloader per frame).
            if self.codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_VP8) {
                return super::vp8::payloads(
                    &frame.data,
                    frame.number as u16,
                    RTP_MTU - RTP_HEADER,
                );
            }
            if self.codec.mime_type.eq_ignore_ascii_case(MIME_TYPE_VP9) {
                let size = frame
                    .keyframe
                    .then(|| super::vp9::frame_size(&frame.data))
                    .flatten();
                return super::vp9::payloads(
                    &frame.data,
                    frame.number as u16,
                    frame.keyframe,
                    size,
                    RTP_MTU - RTP_HEADER,
                );
            }
            self.codec
                .payloader()
                .and_then(|mut p| p.payload(RTP_MTU - RTP_HEADER, &frame.data))
                .unwrap_or_default()
        });
        let last = payloads.len().saturating_sub(1);
        for (i, payload) in payloads.iter().enumerate() {
            out.push(::rtc::rtp::Packet {
                header: ::rtc::rtp::header::Header {
                    version: 2,
                    marker: i == last,
                    payload_type: self.pt,
                    sequence_number: self.seq,
                    timestamp: self.ts,
                    ssrc: self.ssrc,
                    ..Default::default()
                },
                payload: payload.clone(),
            });
            self.seq = self.seq.wrapping_add(1);
        }
        self.skip(frame);
    }

    /// Moves the timestamp on without sending (a frame the receiver does not get).
    fn skip(&mut self, frame: &EncodedFrame) {
        self.stamp(frame);
        if frame.pts.is_none() {
            self.ts = self.ts.wrapping_add(samples(frame, self.codec.clock_rate));
        }
    }
}

/// The composite going to the receiver.
struct VideoOut {
    sender: RTCRtpSenderId,
    rtp: RtpOut,
    codec: VideoCodec,
    /// The encode being sent (`None`: paused, audio only) and its ladder rung.
    frames: Option<broadcast::Receiver<EncodedFrame>>,
    tier: usize,
    /// The encode to move to at its next keyframe.
    next: Option<(usize, broadcast::Receiver<EncodedFrame>)>,
    /// Start (and restart after a gap) on a keyframe.
    need_keyframe: bool,
}

/// Bytes of media sent over the last second (for the padding a probe adds).
#[derive(Default)]
struct RateMeter {
    sent: std::collections::VecDeque<(Instant, usize)>,
    bytes: usize,
}

impl RateMeter {
    const WINDOW: Duration = Duration::from_secs(1);

    fn add(&mut self, now: Instant, bytes: usize) {
        self.sent.push_back((now, bytes));
        self.bytes += bytes;
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        while let Some(&(t, b)) = self.sent.front() {
            if now.saturating_duration_since(t) <= Self::WINDOW {
                break;
            }
            self.sent.pop_front();
            self.bytes -= b;
        }
    }

    fn bps(&mut self, now: Instant) -> f64 {
        self.expire(now);
        self.bytes as f64 * 8.0
    }
}

/// The mix-minus going to the receiver.
struct AudioOut {
    sender: RTCRtpSenderId,
    rtp: RtpOut,
    frames: mpsc::Receiver<EncodedFrame>,
}

enum Sink {
    /// No packet yet, or the room has not answered.
    Waiting {
        asked: bool,
    },
    Ready(SharedRtpSink),
    Declined,
}

/// A track the peer publishes.
struct InTrack {
    receiver: RTCRtpReceiverId,
    ssrc: u32,
    sink: Sink,
    /// The negotiated id of the RFC 6464 audio-level extension on this track, if any.
    audio_level_id: Option<u8>,
}

/// Forgets the session's routes when the driver ends, however it ends.
struct RouteGuard {
    transport: Arc<Transport>,
    peer: Peer,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.transport.router.unregister(self.peer);
    }
}

pub(super) struct Driver {
    id: SessionId,
    peer: Peer,
    pc: RTCPeerConnection,
    io: Io,
    _routes: RouteGuard,
    video: Option<VideoOut>,
    audio: Option<AudioOut>,
    data: Option<DataOut>,
    tracks: HashMap<String, InTrack>,
    sink_tx: mpsc::Sender<(String, Option<SharedRtpSink>)>,
    sink_rx: mpsc::Receiver<(String, Option<SharedRtpSink>)>,
    pli_tx: mpsc::Sender<()>,
    pli_rx: mpsc::Receiver<()>,
    gate: KeyframeGate,
    remote_candidates: usize,
    /// Datagrams beyond `limits.packets_per_second` are dropped before decryption.
    budget: crate::limits::PacketBudget,
    connected: bool,
    gone: bool,
    /// Where DTLS and media are accepted from: addresses that passed ICE.
    validated: HashSet<SocketAddr>,
    /// Addresses this session exchanges STUN with, told to the router once each.
    stun_addrs: HashSet<SocketAddr>,
    /// Datagrams the connection wrote, waiting for one `sendmmsg`.
    out: Vec<TaggedBytesMut>,
    /// A frame's RTP packets on their way into the connection (reused).
    rtp_out: Vec<::rtc::rtp::Packet>,
    estimator: SharedEstimator,
    /// Media bytes sent, for the padding a probe adds.
    meter: RateMeter,
    /// Media bytes received from the peer (a plain count on the packet path), and the count
    /// at the last few link reports, for its rate over about a second.
    received: u64,
    received_at: std::collections::VecDeque<(Instant, u64)>,
    /// Interarrival jitter of our streams, from the peer's reports.
    jitter_ms: Option<f64>,
    /// While a probe runs: when to send the next padding, and when the last went.
    probe_tick: Option<Instant>,
    last_pad: Instant,
    pad_debt: f64,
    next_report: Instant,
    /// When this receiver last asked for a keyframe while waiting for one.
    keyframe_asked: Option<Instant>,
    /// The ceiling asked of this publisher's video (bit/s), and when to repeat it.
    publish_cap: Option<f64>,
    next_remb: Instant,
    /// From the receiver's RTCP reports on our streams.
    reported_loss: f64,
    rtt_ms: Option<f64>,
    /// Audio goes twice (a lossy path).
    duplicate_audio: bool,
}

/// The payload type to send `mime` with: the first negotiated one of that codec, or for
/// H.264 the negotiated entry Mixdown's stream suits best (packetization-mode 1, the
/// profile first in [`crate::sdp::H264_PROFILES`]).
fn payload_type(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId, mime: &str) -> Option<u8> {
    let mut s = pc.rtp_sender(sender)?;
    let params = s.get_parameters();
    let codecs = params
        .rtp_parameters
        .codecs
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime));
    if mime
        .eq_ignore_ascii_case(::rtc::peer_connection::configuration::media_engine::MIME_TYPE_H264)
    {
        return codecs
            .filter_map(|c| {
                crate::sdp::h264_profile_rank(&c.rtp_codec.sdp_fmtp_line)
                    .map(|rank| (rank, c.payload_type))
            })
            .min()
            .map(|(_, pt)| pt);
    }
    codecs.map(|c| c.payload_type).next()
}

/// RFC 6464: the level (-dBov, 0..=127) in header extension `id` (the V bit masked off), when
/// the packet carries that extension with at least one byte.
pub(crate) fn audio_level(header: &::rtc::rtp::header::Header, id: Option<u8>) -> Option<u8> {
    id.and_then(|id| header.get_extension(id))
        .and_then(|b| b.first().map(|v| v & 0x7f))
}

/// The middle 32 bits of the NTP time of `t` (RFC 3550's LSR/DLSR units: 1/65536 s).
fn ntp_middle(t: std::time::SystemTime) -> u32 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = ((d.subsec_nanos() as u64) << 32) / 1_000_000_000;
    (((secs << 32) | frac) >> 16) as u32
}

fn samples(frame: &EncodedFrame, clock_rate: u32) -> u32 {
    (frame.duration.as_secs_f64() * clock_rate as f64).round() as u32
}

/// Where a video frame came from: the encode being sent, or the one being moved to.
enum VideoSource {
    Current,
    Next,
}

/// The next frame of either encode the receiver follows.
async fn next_video(
    v: &mut Option<VideoOut>,
) -> (
    VideoSource,
    Result<EncodedFrame, broadcast::error::RecvError>,
) {
    let Some(v) = v.as_mut() else {
        return std::future::pending().await;
    };
    match (v.frames.as_mut(), v.next.as_mut()) {
        (Some(cur), Some((_, next))) => tokio::select! {
            f = cur.recv() => (VideoSource::Current, f),
            f = next.recv() => (VideoSource::Next, f),
        },
        (Some(cur), None) => (VideoSource::Current, cur.recv().await),
        (None, Some((_, next))) => (VideoSource::Next, next.recv().await),
        (None, None) => std::future::pending().await,
    }
}

async fn next_audio(a: &mut Option<AudioOut>) -> Option<EncodedFrame> {
    match a {
        Some(a) => a.frames.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_data(d: &mut Option<DataOut>) -> Option<String> {
    match d {
        Some(d) => d.pipe.outbound.recv().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    /// `offered`: remote candidates the offer brought (they count against the trickle's
    /// budget of [`MAX_REMOTE_CANDIDATES`]).
    pub(super) fn new(
        id: SessionId,
        peer: Peer,
        pc: RTCPeerConnection,
        offered: usize,
        estimator: SharedEstimator,
        io: Io,
    ) -> Self {
        let now = Instant::now();
        let (sink_tx, sink_rx) = mpsc::channel(SINK_QUEUE);
        let (pli_tx, pli_rx) = mpsc::channel(PLI_QUEUE);
        let routes = RouteGuard {
            transport: Arc::clone(&io.transport),
            peer,
        };
        Self {
            id,
            peer,
            pc,
            budget: crate::limits::PacketBudget::new(io.packets_per_second, now),
            io,
            _routes: routes,
            video: None,
            audio: None,
            data: None,
            tracks: HashMap::new(),
            sink_tx,
            sink_rx,
            pli_tx,
            pli_rx,
            gate: KeyframeGate::new(PLI_INTERVAL),
            remote_candidates: offered,
            connected: false,
            gone: false,
            validated: HashSet::new(),
            stun_addrs: HashSet::new(),
            out: Vec::with_capacity(udp::SEND_BATCH),
            rtp_out: Vec::with_capacity(16),
            estimator,
            meter: RateMeter::default(),
            received: 0,
            received_at: Default::default(),
            jitter_ms: None,
            probe_tick: None,
            last_pad: now,
            pad_debt: 0.0,
            next_report: now + LINK_REPORT_INTERVAL,
            keyframe_asked: None,
            publish_cap: None,
            next_remb: now,
            reported_loss: 0.0,
            rtt_ms: None,
            duplicate_audio: false,
        }
    }

    /// Sends the composite on `sender` (whose track has SSRC `ssrc`), if the peer took it.
    pub(super) fn send_video(
        &mut self,
        sender: RTCRtpSenderId,
        ssrc: u32,
        codec: VideoCodec,
        tier: usize,
        frames: broadcast::Receiver<EncodedFrame>,
    ) -> Result<(), RtcError> {
        let params = video_codec_params(codec);
        let Some(pt) = payload_type(&mut self.pc, sender, &params.mime_type) else {
            tracing::warn!(session = %self.id, %codec, "receiver did not accept the codec");
            return Ok(());
        };
        params
            .payloader()
            .map_err(|e| RtcError::Negotiation(e.to_string()))?;
        self.video = Some(VideoOut {
            sender,
            rtp: RtpOut::new(params, pt, ssrc),
            codec,
            frames: Some(frames),
            tier,
            next: None,
            need_keyframe: true,
        });
        Ok(())
    }

    /// Sends the mix-minus, encoded as `codec`, on `sender`, if the peer took that codec.
    pub(super) fn send_audio(
        &mut self,
        sender: RTCRtpSenderId,
        ssrc: u32,
        codec: AudioCodec,
        frames: mpsc::Receiver<EncodedFrame>,
    ) -> Result<(), RtcError> {
        let params = audio_codec_params(codec);
        let Some(pt) = payload_type(&mut self.pc, sender, &params.mime_type) else {
            tracing::warn!(session = %self.id, %codec, "receiver did not accept the audio codec");
            return Ok(());
        };
        params
            .payloader()
            .map_err(|e| RtcError::Negotiation(e.to_string()))?;
        self.audio = Some(AudioOut {
            sender,
            rtp: RtpOut::new(params, pt, ssrc),
            frames,
        });
        Ok(())
    }

    /// Carries room messages on the peer's `mixdown` data channel, once it opens one.
    pub(super) fn serve_data(&mut self, pipe: DataPipe) {
        self.data = Some(DataOut {
            pipe,
            channel: None,
            pending: Default::default(),
        });
    }

    fn data_channel_event(&mut self, ev: ::rtc::peer_connection::event::RTCDataChannelEvent) {
        use ::rtc::peer_connection::event::RTCDataChannelEvent as E;
        match ev {
            E::OnOpen(id) => {
                let Some(mut dc) = self.pc.data_channel(id) else {
                    return;
                };
                let label = dc.label().to_owned();
                match self.data.as_mut() {
                    Some(d) if d.channel.is_none() && label == DATA_CHANNEL_LABEL => {
                        tracing::debug!(session = %self.id, "data channel open");
                        d.channel = Some(id);
                        let _ = d.pipe.inbound.try_send(DataIn::Open);
                        let pending: Vec<String> = d.pending.drain(..).collect();
                        for text in pending {
                            self.send_data(text);
                        }
                    }
                    _ => {
                        tracing::debug!(session = %self.id, %label, "data channel refused");
                        let _ = dc.close();
                    }
                }
            }
            E::OnClose(id) => {
                if let Some(d) = self.data.as_mut()
                    && d.channel == Some(id)
                {
                    d.channel = None;
                    let _ = d.pipe.inbound.try_send(DataIn::Closed);
                }
            }
            _ => {}
        }
    }

    fn data_message(
        &mut self,
        id: ::rtc::data_channel::RTCDataChannelId,
        m: ::rtc::data_channel::RTCDataChannelMessage,
    ) {
        let Some(d) = self.data.as_ref().filter(|d| d.channel == Some(id)) else {
            return;
        };
        let msg = match (m.is_string, String::from_utf8(m.data.to_vec())) {
            (true, Ok(text)) => DataIn::Text(text),
            _ => DataIn::Binary(m.data.len()),
        };
        // Full only when the peer sends faster than the room handles: like the WebSocket's
        // reader, the excess is dropped.
        if d.pipe.inbound.try_send(msg).is_err() {
            tracing::debug!(session = %self.id, "data channel message dropped: handler busy");
        }
    }

    /// Sends `text` on the data channel, or holds it until the channel opens.
    fn send_data(&mut self, text: String) {
        let Some(d) = self.data.as_mut() else { return };
        let Some(id) = d.channel else {
            if d.pending.len() == DATA_PENDING {
                d.pending.pop_front();
            }
            d.pending.push_back(text);
            return;
        };
        let Some(mut dc) = self.pc.data_channel(id) else {
            return;
        };
        if dc.outstanding_bytes() > DATA_BACKLOG {
            tracing::debug!(session = %self.id, "data channel backlog full: message dropped");
            return;
        }
        if let Err(e) = dc.send_text(Instant::now(), text) {
            tracing::debug!(session = %self.id, "data channel send: {e}");
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            self.pump().await;
            let now = Instant::now();
            let deadline = [
                self.pc.poll_timeout(),
                self.gate.poll_timeout(),
                self.probe_tick,
                Some(self.next_report),
                self.publish_cap.map(|_| self.next_remb),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + IDLE_WAKE);
            tokio::select! {
                biased;
                cmd = self.io.commands.recv() => match cmd {
                    Some(Command::Candidate(init, reply)) => {
                        let _ = reply.send(self.add_candidate(init));
                    }
                    Some(Command::Video(c)) => self.video_command(c),
                    Some(Command::PublishCap(bps)) => {
                        self.publish_cap = Some(bps);
                        self.send_remb(Instant::now());
                    }
                    Some(Command::Close) | None => break,
                },
                Some(d) = self.io.inbound.recv() => {
                    self.read(d);
                    for _ in 1..READ_BURST {
                        match self.io.inbound.try_recv() {
                            Ok(d) => self.read(d),
                            Err(_) => break,
                        }
                    }
                }
                Some((track, sink)) = self.sink_rx.recv() => self.sink_ready(track, sink),
                Some(()) = self.pli_rx.recv() => {
                    if self.gate.handle_request(Instant::now()) {
                        self.send_pli();
                    }
                }
                (source, frame) = next_video(&mut self.video) => match source {
                    VideoSource::Current => self.video_frame(frame),
                    VideoSource::Next => self.next_tier_frame(frame),
                },
                frame = next_audio(&mut self.audio) => self.audio_frame(frame),
                text = next_data(&mut self.data) => match text {
                    Some(text) => self.send_data(text),
                    None => self.data = None,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = Instant::now();
                    if let Err(e) = self.pc.handle_timeout(now) {
                        tracing::debug!(session = %self.id, "timeout: {e}");
                    }
                    if self.gate.poll_force(now) {
                        self.send_pli();
                    }
                    if self.probe_tick.is_some_and(|t| t <= now) {
                        self.pad(now);
                    }
                    if self.next_report <= now {
                        self.report(now);
                    }
                    if self.publish_cap.is_some() && self.next_remb <= now {
                        self.send_remb(now);
                    }
                }
            }
        }
        // Tell the peer (DTLS close_notify) before the routes go.
        if let Err(e) = self.pc.close() {
            tracing::debug!(session = %self.id, "close: {e}");
        }
        self.flush_writes().await;
        tracing::debug!(session = %self.id, peer = self.peer, "peer connection closed");
    }

    fn add_candidate(&mut self, init: RTCIceCandidateInit) -> Result<(), RtcError> {
        let c = init.candidate.trim();
        if c.is_empty() {
            return Ok(()); // end of candidates
        }
        if let Some(problem) = crate::limits::candidate_problem(c) {
            return Err(RtcError::Candidate(problem));
        }
        if self.remote_candidates >= MAX_REMOTE_CANDIDATES {
            return Err(RtcError::Candidate(format!(
                "at most {MAX_REMOTE_CANDIDATES} remote candidates per connection"
            )));
        }
        self.remote_candidates += 1;
        self.pc
            .add_remote_candidate(init)
            .map_err(|e| RtcError::Candidate(e.to_string()))
    }

    fn read(&mut self, d: Datagram) {
        if !self.budget.allow(d.at) {
            if self.budget.dropped == 1 {
                tracing::warn!(
                    session = %self.id,
                    from = %d.from,
                    "over limits.packets_per_second: datagrams dropped (logged once)"
                );
            }
            return;
        }
        let msg = TaggedBytesMut {
            now: d.at,
            transport: TransportContext {
                local_addr: d.local,
                peer_addr: d.from,
                ecn: None,
                transport_protocol: if d.tcp {
                    TransportProtocol::TCP
                } else {
                    TransportProtocol::UDP
                },
            },
            message: d.data,
        };
        if let Err(e) = self.pc.handle_read(msg) {
            tracing::trace!(session = %self.id, "read: {e}");
        }
    }

    /// Drains the connection: events, then received media, then writes. Events come first so
    /// that a newly selected pair is validated before the answer that completes ICE leaves.
    async fn pump(&mut self) {
        while let Some(ev) = self.pc.poll_event() {
            self.event(ev);
        }
        while let Some(msg) = self.pc.poll_read() {
            match msg.message {
                RTCMessage::RtpPacket(track, packet) => self.rtp(track, packet),
                RTCMessage::RtcpPacket(_, packets) => {
                    if let Some(v) = &self.video
                        && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
                    {
                        crate::metrics::add(&crate::metrics::METRICS.keyframe_requests, 1);
                        let _ = self.io.events.try_send(SessionEvent::KeyframeRequest {
                            codec: v.codec,
                            tier: v.tier,
                        });
                    }
                    for p in &packets {
                        self.reception_reports(p.as_ref());
                    }
                }
                RTCMessage::DataChannelMessage(id, m) => self.data_message(id, m),
                _ => {}
            }
        }
        self.flush_writes().await;
    }

    async fn flush_writes(&mut self) {
        while let Some(w) = self.pc.poll_write() {
            let stun = classify(&w.message) == DatagramKind::Stun;
            let to = w.transport.peer_addr;
            if stun {
                if self.stun_addrs.len() < MAX_STUN_ADDRS_PER_SESSION && self.stun_addrs.insert(to)
                {
                    self.io.transport.router.learn_stun(self.peer, to);
                }
                // A success response: the agent authenticated a check from `to` (its
                // MESSAGE-INTEGRITY, keyed by this session's ICE password).
                if w.message.starts_with(&BINDING_SUCCESS) {
                    self.validate(to);
                }
            } else {
                // The connection sends DTLS and media only over the pair ICE selected.
                self.validate(to);
            }
            self.out.push(w);
            if self.out.len() == udp::SEND_BATCH {
                self.send_out().await;
            }
        }
        if !self.out.is_empty() {
            self.send_out().await;
        }
    }

    async fn send_out(&mut self) {
        let t = &self.io.transport;
        let sockets = &t.sockets;
        // ICE-TCP writes go to their connection; the rest are UDP.
        self.out.retain(|w| {
            if w.transport.transport_protocol == TransportProtocol::TCP {
                if !t.tcp.send(w.transport.peer_addr, &w.message) {
                    tracing::trace!(to = %w.transport.peer_addr, "ICE-TCP write dropped");
                }
                false
            } else {
                true
            }
        });
        // One source socket per batch; with several local addresses a batch is split
        // where the source changes.
        let mut start = 0;
        while start < self.out.len() {
            let local = self.out[start].transport.local_addr;
            let end = self.out[start..]
                .iter()
                .position(|w| w.transport.local_addr != local)
                .map_or(self.out.len(), |n| start + n);
            let batch: Vec<(SocketAddr, &[u8])> = self.out[start..end]
                .iter()
                .map(|w| (w.transport.peer_addr, &w.message[..]))
                .collect();
            udp::send_batch(sockets.for_local(local, self.peer as usize), &batch).await;
            start = end;
        }
        self.out.clear();
    }

    fn validate(&mut self, addr: SocketAddr) {
        if self.validated.len() >= MAX_STUN_ADDRS_PER_SESSION || !self.validated.insert(addr) {
            return;
        }
        tracing::debug!(session = %self.id, remote = %addr, "address passed ICE");
        self.io.transport.router.validate(self.peer, addr);
    }

    /// The remote address of ICE's selected pair. Under BUNDLE every sender and receiver
    /// shares the one transport, so the first that has one tells.
    fn selected_remote(&mut self) -> Option<SocketAddr> {
        fn remote(t: RTCDtlsTransport<'_>) -> Option<SocketAddr> {
            let pair = t.ice_transport().get_selected_candidate_pair()?;
            Some(SocketAddr::new(
                pair.remote().address.parse().ok()?,
                pair.remote().port,
            ))
        }
        let sender = self.pc.get_senders().next();
        if let Some(a) = sender.and_then(|id| self.pc.rtp_sender(id)?.transport().and_then(remote))
        {
            return Some(a);
        }
        let id = self.pc.get_receivers().next()?;
        self.pc
            .rtp_receiver(id)
            .and_then(|r| remote(r.transport()?))
    }

    fn event(&mut self, ev: RTCPeerConnectionEvent) {
        match ev {
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                tracing::debug!(session = %self.id, %state, "ICE state");
                if matches!(
                    state,
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed
                ) && let Some(addr) = self.selected_remote()
                {
                    self.validate(addr);
                }
            }
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(session = %self.id, %state, "connection state");
                let event = match state {
                    RTCPeerConnectionState::Connected => {
                        self.connected = true;
                        SessionEvent::Connected { session: self.id }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
                        if !self.gone =>
                    {
                        self.gone = true;
                        self.connected = false;
                        if state == RTCPeerConnectionState::Failed {
                            crate::metrics::add(&crate::metrics::METRICS.ice_failures, 1);
                        }
                        SessionEvent::Gone {
                            session: self.id,
                            peer: self.peer,
                            reason: if state == RTCPeerConnectionState::Failed {
                                "ICE failed"
                            } else {
                                "closed"
                            },
                        }
                    }
                    _ => return,
                };
                // Never dropped: a room that missed "gone" would keep a dead participant.
                // When the room's queue is full, a task waits for room in it.
                if let Err(mpsc::error::TrySendError::Full(event)) = self.io.events.try_send(event)
                {
                    let events = self.io.events.clone();
                    tokio::spawn(async move {
                        let _ = events.send(event).await;
                    });
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                let audio_level_id = self.pc.rtp_receiver(init.receiver_id).and_then(|mut r| {
                    r.get_parameters()
                        .rtp_parameters
                        .header_extensions
                        .iter()
                        .find(|e| e.uri == super::codecs::AUDIO_LEVEL_URI)
                        .and_then(|e| u8::try_from(e.id).ok())
                });
                self.tracks.insert(
                    init.track_id,
                    InTrack {
                        receiver: init.receiver_id,
                        ssrc: init.ssrc,
                        sink: Sink::Waiting { asked: false },
                        audio_level_id,
                    },
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track)) => {
                self.tracks.remove(&track);
            }
            RTCPeerConnectionEvent::OnDataChannel(ev) => self.data_channel_event(ev),
            _ => {}
        }
    }

    fn rtp(&mut self, track_id: String, packet: ::rtc::rtp::Packet) {
        self.received += (packet.payload.len() + RTP_HEADER) as u64;
        self.io
            .transport
            .router
            .stats
            .rtp_received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        match &track.sink {
            Sink::Ready(sink) => {
                let level = audio_level(&packet.header, track.audio_level_id);
                if let Ok(bytes) = packet.marshal() {
                    match track.audio_level_id {
                        Some(_) => sink.push_audio(bytes.freeze(), level),
                        None => sink.push_rtp(bytes.freeze()),
                    }
                }
            }
            Sink::Declined | Sink::Waiting { asked: true } => {}
            Sink::Waiting { asked: false } => {
                let pt = packet.header.payload_type;
                let receiver = track.receiver;
                let kind = self.pc.rtp_receiver(receiver).and_then(|mut r| {
                    r.get_parameters()
                        .rtp_parameters
                        .codecs
                        .iter()
                        .find(|c| c.payload_type == pt)
                        .and_then(|c| track_kind(&c.rtp_codec.mime_type))
                });
                let Some(track) = self.tracks.get_mut(&track_id) else {
                    return;
                };
                let Some(kind) = kind else {
                    tracing::warn!(session = %self.id, pt, "track with an unsupported codec ignored");
                    track.sink = Sink::Declined;
                    return;
                };
                let (reply, answer) = oneshot::channel();
                let started = SessionEvent::TrackStarted {
                    session: self.id,
                    kind,
                    payload_type: pt,
                    pli: self.pli_tx.clone(),
                    reply,
                };
                if self.io.events.try_send(started).is_err() {
                    return; // the room is busy: ask again on the next packet
                }
                track.sink = Sink::Waiting { asked: true };
                let back = self.sink_tx.clone();
                tokio::spawn(async move {
                    let sink = answer.await.ok().flatten();
                    let _ = back.send((track_id, sink)).await;
                });
            }
        }
    }

    fn sink_ready(&mut self, track_id: String, sink: Option<SharedRtpSink>) {
        let Some(track) = self.tracks.get_mut(&track_id) else {
            return;
        };
        match sink {
            Some(s) => {
                track.sink = Sink::Ready(s);
                let is_video = self.pc.rtp_receiver(track.receiver).is_some_and(|r| {
                    r.track().kind() == ::rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video
                });
                if is_video && self.gate.handle_request(Instant::now()) {
                    self.send_pli();
                }
            }
            None => {
                tracing::debug!(session = %self.id, "room declined the track");
                track.sink = Sink::Declined;
            }
        }
    }

    /// Tells the publisher the most its video may use (REMB over its video SSRCs); repeated
    /// every [`REMB_INTERVAL`].
    fn send_remb(&mut self, now: Instant) {
        use ::rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
        self.next_remb = now + REMB_INTERVAL;
        let Some(bps) = self.publish_cap else {
            return;
        };
        let video: Vec<(RTCRtpReceiverId, u32)> = self
            .tracks
            .values()
            .filter(|t| {
                self.pc.rtp_receiver(t.receiver).is_some_and(|r| {
                    r.track().kind() == ::rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video
                })
            })
            .map(|t| (t.receiver, t.ssrc))
            .collect();
        let Some(&(receiver, _)) = video.first() else {
            return; // no video track open yet: the next repetition tries again
        };
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 0,
            bitrate: bps as f32,
            ssrcs: video.iter().map(|(_, ssrc)| *ssrc).collect(),
        };
        if let Some(mut r) = self.pc.rtp_receiver(receiver)
            && let Err(e) = r.write_rtcp(now, vec![Box::new(remb)])
        {
            tracing::debug!(session = %self.id, "REMB: {e}");
        }
    }

    /// Asks the publisher for a keyframe on each of its video tracks.
    fn send_pli(&mut self) {
        let now = Instant::now();
        let targets: Vec<(RTCRtpReceiverId, u32)> =
            self.tracks.values().map(|t| (t.receiver, t.ssrc)).collect();
        for (receiver, ssrc) in targets {
            let Some(mut r) = self.pc.rtp_receiver(receiver) else {
                continue;
            };
            if r.track().kind() != ::rtc::rtp_transceiver::rtp_sender::RtpCodecKind::Video {
                continue;
            }
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc: ssrc,
            };
            if let Err(e) = r.write_rtcp(now, vec![Box::new(pli)]) {
                tracing::debug!(session = %self.id, "PLI: {e}");
            }
        }
    }

    fn video_frame(&mut self, frame: Result<EncodedFrame, broadcast::error::RecvError>) {
        let Some(v) = self.video.as_mut() else {
            return;
        };
        let frame = match frame {
            Ok(f) => f,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(session = %self.id, "receiver fell {n} frames behind; waiting for a keyframe");
                v.need_keyframe = true;
                let _ = self.io.events.try_send(SessionEvent::KeyframeRequest {
                    codec: v.codec,
                    tier: v.tier,
                });
                return;
            }
            Err(broadcast::error::RecvError::Closed) => {
                v.frames = None;
                return;
            }
        };
        self.send_frame(frame);
    }

    /// Sends one frame of the current encode (or skips it: not connected, or waiting for a
    /// keyframe).
    fn send_frame(&mut self, frame: EncodedFrame) {
        let Some(v) = self.video.as_mut() else {
            return;
        };
        if !self.connected || (v.need_keyframe && !frame.keyframe) {
            v.need_keyframe |= !self.connected;
            v.rtp.skip(&frame);
            let (codec, tier) = (v.codec, v.tier);
            if self.connected {
                self.ask_keyframe_again(codec, tier);
            }
            return;
        }
        v.need_keyframe = false;
        let sender = v.sender;
        v.rtp.packets(&frame, &mut self.rtp_out);
        if !self.write_rtp(sender)
            && let Some(v) = self.video.as_mut()
        {
            // The receiver misses part of this frame: resume at a keyframe, and ask for one
            // rather than wait for the periodic one.
            v.need_keyframe = true;
            let _ = self.io.events.try_send(SessionEvent::KeyframeRequest {
                codec: v.codec,
                tier: v.tier,
            });
        }
    }

    /// A frame of the encode the receiver moves to: at its first keyframe the move happens
    /// (the old encode's frames stop at once, so each picture is sent once).
    fn next_tier_frame(&mut self, frame: Result<EncodedFrame, broadcast::error::RecvError>) {
        let Some(v) = self.video.as_mut() else {
            return;
        };
        match frame {
            Ok(f) if f.keyframe => {
                let Some((tier, frames)) = v.next.take() else {
                    return;
                };
                v.frames = Some(frames);
                v.tier = tier;
                v.need_keyframe = false;
                tracing::debug!(session = %self.id, tier, "video moved to another tier");
                let _ = self.io.events.try_send(SessionEvent::TierSwitched {
                    session: self.id,
                    tier: Some(tier),
                });
                self.send_frame(f);
            }
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                // Still no keyframe of the encode it moves to: ask again (its first request
                // may have been served by a keyframe that left before it subscribed).
                if let Some((tier, _)) = &v.next {
                    let (codec, tier) = (v.codec, *tier);
                    self.ask_keyframe_again(codec, tier);
                }
            }
            Err(broadcast::error::RecvError::Closed) => v.next = None,
        }
    }

    /// Asks for a keyframe of `(codec, tier)` while this receiver waits for one, at most
    /// every [`KEYFRAME_RETRY`].
    fn ask_keyframe_again(&mut self, codec: VideoCodec, tier: usize) {
        let now = Instant::now();
        if self
            .keyframe_asked
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_RETRY)
        {
            return;
        }
        self.keyframe_asked = Some(now);
        let _ = self
            .io
            .events
            .try_send(SessionEvent::KeyframeRequest { codec, tier });
    }

    fn video_command(&mut self, c: VideoCommand) {
        let Some(v) = self.video.as_mut() else {
            return;
        };
        match c {
            VideoCommand::Switch { tier, frames } => {
                if v.frames.is_some() && v.tier == tier {
                    v.next = None; // already there: a pending move is cancelled
                } else {
                    v.next = Some((tier, frames));
                }
            }
            VideoCommand::Pause => {
                v.frames = None;
                v.next = None;
                v.need_keyframe = true;
                let _ = self.io.events.try_send(SessionEvent::TierSwitched {
                    session: self.id,
                    tier: None,
                });
            }
            VideoCommand::Probe { bps } => {
                let now = Instant::now();
                if let Ok(mut e) = self.estimator.0.lock() {
                    e.start_probe(now, bps);
                }
                self.last_pad = now;
                self.pad_debt = 0.0;
                self.probe_tick = Some(now);
            }
        }
    }

    /// One step of a probe: padding packets that bring what is sent up to the probe's
    /// current rate.
    fn pad(&mut self, now: Instant) {
        let target = self.estimator.0.lock().ok().and_then(|e| e.probe_rate(now));
        let (Some(target), Some(v)) = (target, self.video.as_mut()) else {
            self.probe_tick = None;
            return;
        };
        self.probe_tick = Some(now + PROBE_TICK);
        let elapsed = now
            .saturating_duration_since(self.last_pad)
            .min(PROBE_TICK * 5);
        self.last_pad = now;
        if !self.connected {
            return;
        }
        let media = self.meter.bps(now);
        self.pad_debt += (target - media).max(0.0) / 8.0 * elapsed.as_secs_f64();
        let n = ((self.pad_debt / PADDING_WIRE_BYTES) as usize).min(MAX_PADDING_PER_TICK);
        self.pad_debt = (self.pad_debt - n as f64 * PADDING_WIRE_BYTES).min(PADDING_WIRE_BYTES);
        if n == 0 {
            return;
        }
        let sender = v.sender;
        for _ in 0..n {
            let p = v.rtp.padding();
            self.rtp_out.push(p);
        }
        self.write_rtp_unmetered(sender);
    }

    /// Media received over about the last second (bit/s), from the counts at the last five
    /// reports (250 ms apart).
    fn received_bps(&mut self, now: Instant) -> f64 {
        self.received_at.push_back((now, self.received));
        while self.received_at.len() > 5 {
            self.received_at.pop_front();
        }
        match (self.received_at.front(), self.received_at.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 * 8.0 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Tells the room what the link carries now.
    fn report(&mut self, now: Instant) {
        self.next_report = now + LINK_REPORT_INTERVAL;
        let received_bps = self.received_bps(now);
        let Ok(mut e) = self.estimator.0.lock() else {
            return;
        };
        let outcome = e.poll_probe_outcome();
        let path_loss = e.loss().max(self.reported_loss);
        // Only random loss: on a congested path the copies would add to the congestion.
        if path_loss >= AUDIO_DUPLICATE_ON && !e.congested() {
            self.duplicate_audio = true;
        } else if path_loss < AUDIO_DUPLICATE_OFF || e.congested() {
            self.duplicate_audio = false;
        }
        let report = LinkReport {
            estimate_bps: e.estimate(),
            delivered_bps: e.delivered(),
            loss: self.reported_loss.max(e.loss()),
            rtt_ms: self.rtt_ms,
            queue_ms: e.queue_ms(),
            sent_bps: self.meter.bps(now),
            received_bps,
            jitter_ms: self.jitter_ms,
            probe: outcome.map(|o| matches!(o, ProbeOutcome::Succeeded { .. })),
        };
        drop(e);
        let _ = self.io.events.try_send(SessionEvent::Link {
            session: self.id,
            peer: self.peer,
            report,
        });
    }

    /// Loss and round-trip time from a receiver's report blocks about our streams.
    fn reception_reports(&mut self, p: &dyn ::rtc::rtcp::Packet) {
        use ::rtc::rtcp::receiver_report::ReceiverReport;
        use ::rtc::rtcp::sender_report::SenderReport;
        let any = p.as_any();
        let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
            &rr.reports
        } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
            &sr.reports
        } else {
            return;
        };
        let ours = [
            self.video.as_ref().map(|v| v.rtp.ssrc),
            self.audio.as_ref().map(|a| a.rtp.ssrc),
        ];
        let mut loss: Option<f64> = None;
        for b in blocks.iter().filter(|b| ours.contains(&Some(b.ssrc))) {
            loss = Some(loss.unwrap_or(0.0).max(b.fraction_lost as f64 / 256.0));
            // Jitter is in the stream's clock: 90 kHz video, 48 kHz Opus, 8 kHz G.711.
            // Video's wins.
            if Some(b.ssrc) == ours[0] {
                self.jitter_ms = Some(b.jitter as f64 / 90.0);
            } else if ours[0].is_none()
                && let Some(a) = &self.audio
            {
                self.jitter_ms = Some(b.jitter as f64 * 1000.0 / a.rtp.codec.clock_rate as f64);
            }
            if b.last_sender_report != 0 {
                let now = ntp_middle(std::time::SystemTime::now());
                let rtt = now.wrapping_sub(b.last_sender_report).wrapping_sub(b.delay);
                // Clocks can make a report claim a negative or absurd round trip: skip it.
                if rtt < 65536 * 10 {
                    self.rtt_ms = Some(rtt as f64 * 1000.0 / 65536.0);
                }
            }
        }
        if let Some(l) = loss {
            self.reported_loss = l;
        }
    }

    fn audio_frame(&mut self, frame: Option<EncodedFrame>) {
        let Some(a) = self.audio.as_mut() else {
            return;
        };
        let Some(frame) = frame else {
            self.audio = None;
            return;
        };
        if !self.connected {
            a.rtp.skip(&frame);
            return;
        }
        let sender = a.sender;
        a.rtp.packets(&frame, &mut self.rtp_out);
        // On a lossy link each audio packet goes twice: a copy whose original arrived is
        // dropped by the receiver's SRTP replay check, one whose original was lost plays as
        // if nothing happened, with no wait for the next packet (which Opus FEC and RED
        // need). 20 % random loss leaves 4 %, for ~40 kbit/s more.
        if self.duplicate_audio {
            let copies = self.rtp_out.clone();
            self.rtp_out.extend(copies);
        }
        self.write_rtp(sender);
    }

    /// Hands the packets in `rtp_out` to the connection, counting them as media sent; false
    /// if it refused one.
    fn write_rtp(&mut self, sender: RTCRtpSenderId) -> bool {
        let bytes: usize = self
            .rtp_out
            .iter()
            .map(|p| p.payload.len() + RTP_HEADER + super::estimate::WIRE_OVERHEAD + 8)
            .sum();
        self.meter.add(Instant::now(), bytes);
        self.write_rtp_unmetered(sender)
    }

    fn write_rtp_unmetered(&mut self, sender: RTCRtpSenderId) -> bool {
        let now = Instant::now();
        let Some(mut s) = self.pc.rtp_sender(sender) else {
            self.rtp_out.clear();
            return false;
        };
        let mut ok = true;
        for p in self.rtp_out.drain(..) {
            if ok && let Err(e) = s.write_rtp(now, p) {
                tracing::trace!(session = %self.id, "RTP write: {e}");
                ok = false;
            }
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn receivers_share_payloads_and_keep_their_own_numbering() {
        let frame = EncodedFrame::new(
            Bytes::from(vec![7u8; 3000]),
            Duration::from_millis(40),
            true,
        );
        let mut a = RtpOut::new(video_codec_params(VideoCodec::Vp8), 96, 1111);
        let mut b = RtpOut::new(video_codec_params(VideoCodec::Vp8), 100, 2222);
        a.seq = u16::MAX; // wraps
        let (ts_a, ts_b) = (a.ts, b.ts);
        let (mut pa, mut pb) = (Vec::new(), Vec::new());
        a.packets(&frame, &mut pa);
        b.packets(&frame.clone(), &mut pb);
        assert_eq!(pa.len(), 3, "3000 bytes in 1200-byte packets");
        assert_eq!(pa.len(), pb.len());
        for (i, (x, y)) in pa.iter().zip(&pb).enumerate() {
            // The same bytes, not a copy.
            assert_eq!(x.payload.as_ptr(), y.payload.as_ptr());
            assert!(x.payload.len() + RTP_HEADER <= RTP_MTU);
            assert_eq!((x.header.ssrc, y.header.ssrc), (1111, 2222));
            assert_eq!((x.header.payload_type, y.header.payload_type), (96, 100));
            assert_eq!(x.header.sequence_number, u16::MAX.wrapping_add(i as u16));
            assert_eq!(x.header.marker, i == 2);
            assert_eq!((x.header.timestamp, y.header.timestamp), (ts_a, ts_b));
        }
        // The next frame is 40 ms later on the 90 kHz clock; a skipped one moves time too.
        a.skip(&frame);
        pa.clear();
        a.packets(&frame, &mut pa);
        assert_eq!(pa[0].header.timestamp, ts_a.wrapping_add(2 * 3600));
        assert_eq!(pa[0].header.sequence_number, 2);
    }

    /// A tier move: the new encode's keyframe is the picture the old encode just sent (or
    /// one before it). It goes out a tick later, and the next picture on its own time.
    #[test]
    fn a_picture_sent_again_from_another_encode_goes_out_later() {
        let at = |ms: u64| {
            let mut f = EncodedFrame::new(
                Bytes::from(vec![1u8; 100]),
                Duration::from_millis(33),
                false,
            );
            f.pts = Some(Duration::from_millis(ms));
            f
        };
        let mut out = RtpOut::new(video_codec_params(VideoCodec::Vp8), 96, 1);
        out.origin = u32::MAX - 5000; // wraps
        let mut ts = Vec::new();
        for ms in [1000u64, 1033, 1066, 1066, 1033, 1100] {
            let mut p = Vec::new();
            out.packets(&at(ms), &mut p);
            ts.push(p[0].header.timestamp);
        }
        let base = out.origin.wrapping_add(90_000);
        let want: Vec<u32> = [0u32, 2970, 5940, 5941, 5942, 9000]
            .iter()
            .map(|d| base.wrapping_add(*d))
            .collect();
        assert_eq!(ts, want);
    }
}

//! One peer connection: answering the offer, reading the publisher's tracks into the room's
//! sinks, writing the room's frames to the receiver, and reporting events. Event handlers only
//! forward (`try_send`) or spawn the per-track task; every task ends when the session closes.

use super::keyframe_interceptor::{KeyframeRequestForwarder, is_keyframe_request};
use super::{PeerFactory, PortLease, RtcError, rewrite_candidates};
use crate::ids::SessionId;
use crate::media::{EncodedFrame, SharedRtpSink, VideoCodec};
use crate::room::keyframe::KeyframeGate;
use ::rtc::interceptor::Registry;
use ::rtc::media::Sample;
use ::rtc::media_stream::MediaStreamTrack;
use ::rtc::peer_connection::configuration::RTCConfigurationBuilder;
use ::rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use ::rtc::peer_connection::configuration::media_engine::{
    MIME_TYPE_H264, MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine,
};
use ::rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use ::rtc::peer_connection::sdp::RTCSessionDescription;
use ::rtc::peer_connection::transport::RTCIceServer;
use ::rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use ::rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RtpCodecKind,
};
use ::rtc::shared::marshal::Marshal;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::AbortHandle;
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState,
};

/// How long an answer may wait for ICE gathering (one explicit socket: it completes at once).
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// At most one PLI to a publisher per this interval.
const PLI_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Audio,
    Video(VideoCodec),
}

/// What a session reports to its room. Sent with `try_send` from handlers; the room's
/// session-event queue is sized so that it only fills if the room actor is stuck.
pub enum SessionEvent {
    /// A publisher's track delivered its first packet: where should its RTP go? `pli` is the
    /// channel through which the decoder asks for a keyframe from this publisher.
    TrackStarted {
        session: SessionId,
        kind: TrackKind,
        payload_type: u8,
        pli: mpsc::Sender<()>,
        reply: oneshot::Sender<Option<SharedRtpSink>>,
    },
    /// A receiver asked for a keyframe (PLI/FIR), or fell behind.
    KeyframeRequest { codec: VideoCodec },
    /// ICE and DTLS are up: the receiver needs a keyframe now.
    Connected { session: SessionId },
    /// The peer is gone (ICE failed after the timeout, or closed). `peer` tells a replaced
    /// peer connection (renegotiation) from the current one.
    Gone {
        session: SessionId,
        peer: u64,
        reason: &'static str,
    },
}

/// The room's media for this session to send.
pub struct SessionMedia {
    pub video: Option<(VideoCodec, broadcast::Receiver<EncodedFrame>)>,
    pub audio: Option<mpsc::Receiver<EncodedFrame>>,
}

type TaskList = Arc<Mutex<Vec<AbortHandle>>>;

fn track_task(tasks: &TaskList, fut: impl std::future::Future<Output = ()> + Send + 'static) {
    let handle = tokio::spawn(fut).abort_handle();
    // Poisoning needs a panic while pushing to a Vec; the list stays usable regardless.
    tasks.lock().unwrap_or_else(|p| p.into_inner()).push(handle);
}

/// A live peer connection and its tasks. [`close`](Self::close) ends everything; dropping it
/// without closing still aborts the tasks and frees the port, but leaves webrtc-rs's driver to
/// notice on its own.
pub struct PeerSession {
    pub id: SessionId,
    /// This peer connection's number (a session keeps its id across renegotiations).
    pub peer: u64,
    pc: Box<dyn PeerConnection>,
    tasks: TaskList,
    _port: PortLease,
}

impl PeerSession {
    /// A remote ICE candidate trickled by the client.
    pub async fn add_candidate(
        &self,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    ) -> Result<(), RtcError> {
        self.pc
            .add_ice_candidate(::rtc::peer_connection::transport::RTCIceCandidateInit {
                candidate,
                sdp_mid,
                sdp_mline_index,
                username_fragment: None,
                url: None,
            })
            .await
            .map_err(|e| RtcError::Candidate(e.to_string()))
    }

    pub async fn close(self) {
        if let Err(e) = self.pc.close().await {
            tracing::debug!(session = %self.id, "close: {e}");
        }
        // Dropping self aborts the tasks and returns the port.
    }
}

impl Drop for PeerSession {
    fn drop(&mut self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Numbers every peer connection this process builds.
static NEXT_PEER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Handler {
    id: SessionId,
    peer: u64,
    events: mpsc::Sender<SessionEvent>,
    gathered: Mutex<Option<oneshot::Sender<()>>>,
    tasks: TaskList,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete
            && let Some(tx) = self
                .gathered
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
        {
            let _ = tx.send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!(session = %self.id, %state, "connection state");
        let event = match state {
            RTCPeerConnectionState::Connected => SessionEvent::Connected { session: self.id },
            RTCPeerConnectionState::Failed => SessionEvent::Gone {
                session: self.id,
                peer: self.peer,
                reason: "ICE failed",
            },
            RTCPeerConnectionState::Closed => SessionEvent::Gone {
                session: self.id,
                peer: self.peer,
                reason: "closed",
            },
            _ => return,
        };
        let _ = self.events.try_send(event);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        track_task(&self.tasks, read_track(self.id, track, self.events.clone()));
    }
}

fn rtcp_feedback() -> Vec<RTCPFeedback> {
    [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .into_iter()
        .map(|(typ, parameter)| RTCPFeedback {
            typ: typ.to_owned(),
            parameter: parameter.to_owned(),
        })
        .collect()
}

/// The codec parameters Mixdown negotiates for `codec` (H.264: constrained baseline,
/// packetization-mode 1), with NACK, PLI and FIR feedback.
pub fn video_codec_params(codec: VideoCodec) -> RTCRtpCodec {
    let (mime, fmtp) = match codec {
        VideoCodec::Vp8 => (MIME_TYPE_VP8, ""),
        VideoCodec::H264 => (
            MIME_TYPE_H264,
            "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        ),
    };
    RTCRtpCodec {
        mime_type: mime.to_owned(),
        clock_rate: 90000,
        channels: 0,
        sdp_fmtp_line: fmtp.to_owned(),
        rtcp_feedback: rtcp_feedback(),
    }
}

/// Opus at 48 kHz, stereo-capable, with in-band FEC, as browsers offer it.
pub fn opus_params() -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: MIME_TYPE_OPUS.to_owned(),
        clock_rate: 48000,
        channels: 2,
        sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
        rtcp_feedback: vec![],
    }
}

fn media_engine() -> Result<MediaEngine, RtcError> {
    let mut m = MediaEngine::default();
    let err = |e: ::rtc::shared::error::Error| RtcError::Negotiation(e.to_string());
    m.register_codec(
        RTCRtpCodecParameters {
            rtp_codec: opus_params(),
            payload_type: 111,
        },
        RtpCodecKind::Audio,
    )
    .map_err(err)?;
    let mut baseline = video_codec_params(VideoCodec::H264);
    baseline.sdp_fmtp_line =
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f".to_owned();
    for (pt, codec) in [
        (96, video_codec_params(VideoCodec::Vp8)),
        (102, video_codec_params(VideoCodec::H264)),
        (108, baseline),
    ] {
        m.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: codec,
                payload_type: pt,
            },
            RtpCodecKind::Video,
        )
        .map_err(err)?;
    }
    Ok(m)
}

/// A sample-writing track of one random SSRC, in stream `stream`, named `{stream}-{label}`.
pub fn sample_track(
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    stream: &str,
    label: &str,
) -> Result<TrackLocalStaticSample, RtcError> {
    TrackLocalStaticSample::new(
        Instant::now(),
        MediaStreamTrack::new(
            stream.to_owned(),
            format!("{stream}-{label}"),
            format!("{stream}-{label}"),
            kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(rand::random::<u32>() | 1),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        ),
    )
    .map_err(|e| RtcError::Negotiation(e.to_string()))
}

impl PeerFactory {
    /// Answers `offer`: builds the peer connection on a port of the pool, adds the room's
    /// tracks, and returns the session with the complete answer (all candidates included).
    pub async fn answer(
        &self,
        id: SessionId,
        offer: String,
        media: SessionMedia,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<(PeerSession, String), RtcError> {
        let s = &self.settings;
        let (gathered_tx, gathered_rx) = oneshot::channel();
        let tasks: TaskList = Arc::default();
        let peer = NEXT_PEER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let handler = Arc::new(Handler {
            id,
            peer,
            events: events.clone(),
            gathered: Mutex::new(Some(gathered_tx)),
            tasks: Arc::clone(&tasks),
        });
        let ice_servers: Vec<RTCIceServer> = s
            .ice_servers
            .iter()
            .map(|i| RTCIceServer {
                urls: i.urls.clone(),
                username: i.username.clone(),
                credential: i.credential.clone(),
            })
            .collect();

        let mut last_error = String::from("no attempt");
        let mut built = None;
        for _ in 0..super::BIND_ATTEMPTS {
            let lease = self.ports.lease().ok_or(RtcError::NoPort {
                min: s.port_min,
                max: s.port_max,
            })?;
            let mut engine = media_engine()?;
            let registry = register_default_interceptors(Registry::new(), &mut engine)
                .map_err(|e| RtcError::Negotiation(e.to_string()))?
                .with(
                    ::rtc::interceptor::Slot::from(14_000),
                    KeyframeRequestForwarder::default(),
                );
            let settings = SettingEngineBuilder::new()
                .with_multicast_dns_mode(::rtc::ice::mdns::MulticastDnsMode::Disabled)
                .with_include_loopback_candidate(s.bind_ip.is_loopback())
                .with_ice_timeouts(
                    Some(s.ice_timeout / 2),
                    Some(s.ice_timeout - s.ice_timeout / 2),
                    Some(Duration::from_secs(1)),
                )
                .build();
            let config = RTCConfigurationBuilder::new()
                .with_ice_servers(ice_servers.clone())
                .build();
            let result = PeerConnectionBuilder::new()
                .with_configuration(config)
                .with_media_engine(engine)
                .with_setting_engine(settings)
                .with_interceptor_registry(registry)
                .with_handler(handler.clone() as Arc<dyn PeerConnectionEventHandler>)
                .with_udp_addrs(vec![SocketAddr::new(s.bind_ip, lease.port())])
                .build()
                .await;
            match result {
                Ok(pc) => {
                    built = Some((Box::new(pc) as Box<dyn PeerConnection>, lease));
                    break;
                }
                Err(e) => {
                    tracing::debug!(port = lease.port(), "media port unusable: {e}");
                    last_error = e.to_string();
                }
            }
        }
        let Some((pc, lease)) = built else {
            return Err(RtcError::Bind {
                ip: s.bind_ip,
                last: last_error,
            });
        };
        let session = PeerSession {
            id,
            peer,
            pc,
            tasks: Arc::clone(&tasks),
            _port: lease,
        };

        let desc =
            RTCSessionDescription::offer(offer).map_err(|e| RtcError::Offer(e.to_string()))?;
        session
            .pc
            .set_remote_description(desc)
            .await
            .map_err(|e| RtcError::Offer(e.to_string()))?;

        let mut writers: Vec<(Arc<TrackLocalStaticSample>, _, Writer)> = Vec::new();
        if let Some((codec, frames)) = media.video {
            let track = Arc::new(sample_track(
                RtpCodecKind::Video,
                video_codec_params(codec),
                "mixdown",
                "video",
            )?);
            let sender = session
                .pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(|e| RtcError::Negotiation(e.to_string()))?;
            writers.push((track, sender, Writer::Video(codec, frames)));
        }
        if let Some(frames) = media.audio {
            let track = Arc::new(sample_track(
                RtpCodecKind::Audio,
                opus_params(),
                "mixdown",
                "audio",
            )?);
            let sender = session
                .pc
                .add_track(track.clone() as Arc<dyn TrackLocal>)
                .await
                .map_err(|e| RtcError::Negotiation(e.to_string()))?;
            writers.push((track, sender, Writer::Audio(frames)));
        }

        let answer = session
            .pc
            .create_answer(None)
            .await
            .map_err(|e| RtcError::Negotiation(e.to_string()))?;
        session
            .pc
            .set_local_description(answer)
            .await
            .map_err(|e| RtcError::Negotiation(e.to_string()))?;
        if tokio::time::timeout(GATHER_TIMEOUT, gathered_rx)
            .await
            .is_err()
        {
            return Err(RtcError::Gathering);
        }
        let local = session
            .pc
            .local_description()
            .await
            .ok_or(RtcError::Gathering)?;
        let mut sdp = local.sdp;
        if let Some(public) = s.public_ip {
            sdp = rewrite_candidates(&sdp, public);
        }

        for (track, sender, writer) in writers {
            let params = sender
                .get_parameters()
                .await
                .map_err(|e| RtcError::Negotiation(e.to_string()))?;
            let mime = match &writer {
                Writer::Video(codec, _) => video_codec_params(*codec).mime_type,
                Writer::Audio(_) => MIME_TYPE_OPUS.to_owned(),
            };
            let Some(pt) = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&mime))
                .map(|c| c.payload_type)
            else {
                tracing::warn!(session = %id, %mime, "receiver did not accept the codec");
                continue;
            };
            let Some(ssrc) = track.ssrcs().await.first().copied() else {
                continue;
            };
            match writer {
                Writer::Video(codec, frames) => {
                    track_task(
                        &tasks,
                        write_video(track.clone(), ssrc, pt, codec, frames, events.clone()),
                    );
                    track_task(&tasks, read_feedback(track, codec, events.clone()));
                }
                Writer::Audio(frames) => track_task(&tasks, write_audio(track, ssrc, pt, frames)),
            }
        }
        Ok((session, sdp))
    }
}

enum Writer {
    Video(VideoCodec, broadcast::Receiver<EncodedFrame>),
    Audio(mpsc::Receiver<EncodedFrame>),
}

fn sample(frame: EncodedFrame) -> Sample {
    Sample {
        data: frame.data,
        timestamp: Instant::now(),
        duration: frame.duration,
        packet_timestamp: 0,
        prev_dropped_packets: 0,
        prev_padding_packets: 0,
    }
}

/// Writes the composite to the receiver, starting (and restarting after a gap) on a keyframe.
async fn write_video(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
    codec: VideoCodec,
    mut frames: broadcast::Receiver<EncodedFrame>,
    events: mpsc::Sender<SessionEvent>,
) {
    let mut need_keyframe = true;
    loop {
        match frames.recv().await {
            Ok(frame) => {
                if need_keyframe && !frame.keyframe {
                    continue;
                }
                match track.write_sample(ssrc, pt, &sample(frame), &[]).await {
                    Ok(()) => need_keyframe = false,
                    Err(e) => {
                        tracing::trace!(ssrc, "video write: {e}");
                        need_keyframe = true;
                    }
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(
                    ssrc,
                    "receiver fell {n} frames behind; waiting for a keyframe"
                );
                need_keyframe = true;
                let _ = events.try_send(SessionEvent::KeyframeRequest { codec });
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

async fn write_audio(
    track: Arc<TrackLocalStaticSample>,
    ssrc: u32,
    pt: u8,
    mut frames: mpsc::Receiver<EncodedFrame>,
) {
    while let Some(frame) = frames.recv().await {
        if let Err(e) = track.write_sample(ssrc, pt, &sample(frame), &[]).await {
            tracing::trace!(ssrc, "audio write: {e}");
        }
    }
}

/// Turns PLI/FIR from the receiver into keyframe requests for the room.
async fn read_feedback(
    track: Arc<TrackLocalStaticSample>,
    codec: VideoCodec,
    events: mpsc::Sender<SessionEvent>,
) {
    while let Some(event) = track.poll().await {
        if let TrackLocalEvent::OnRtcpPacket(packets) = event
            && packets.iter().any(|p| is_keyframe_request(p.as_ref()))
        {
            let _ = events.try_send(SessionEvent::KeyframeRequest { codec });
        }
    }
}

fn track_kind(mime: &str) -> Option<TrackKind> {
    if mime.eq_ignore_ascii_case(MIME_TYPE_VP8) {
        Some(TrackKind::Video(VideoCodec::Vp8))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_H264) {
        Some(TrackKind::Video(VideoCodec::H264))
    } else if mime.eq_ignore_ascii_case(MIME_TYPE_OPUS) {
        Some(TrackKind::Audio)
    } else {
        None
    }
}

/// Reads one published track into the sink the room provides, and sends PLIs the decoder asks
/// for (rate-limited).
async fn read_track(
    id: SessionId,
    track: Arc<dyn TrackRemote>,
    events: mpsc::Sender<SessionEvent>,
) {
    let Some(ssrc) = track.ssrcs().await.first().copied() else {
        tracing::warn!(session = %id, "track without SSRC ignored");
        return;
    };
    let kind = match track
        .codec(ssrc)
        .await
        .and_then(|c| track_kind(&c.mime_type))
    {
        Some(k) => k,
        None => {
            tracing::warn!(session = %id, "track with an unsupported codec ignored");
            while track.poll().await.is_some() {}
            return;
        }
    };
    let (pli_tx, mut pli_rx) = mpsc::channel(crate::mixer::video::PLI_QUEUE);
    let mut sink: Option<SharedRtpSink> = None;
    let mut gate = KeyframeGate::new(PLI_INTERVAL);
    let send_pli = |track: Arc<dyn TrackRemote>| async move {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        if let Err(e) = track.write_rtcp(vec![Box::new(pli)]).await {
            tracing::debug!(%id, "PLI: {e}");
        }
    };
    loop {
        let deferred = gate.poll_timeout();
        tokio::select! {
            event = track.poll() => match event {
                Some(TrackRemoteEvent::OnRtpPacket(packet)) => {
                    if sink.is_none() {
                        let (reply, answer) = oneshot::channel();
                        let started = SessionEvent::TrackStarted {
                            session: id,
                            kind,
                            payload_type: packet.header.payload_type,
                            pli: pli_tx.clone(),
                            reply,
                        };
                        if events.send(started).await.is_err() {
                            return;
                        }
                        match answer.await {
                            Ok(Some(s)) => sink = Some(s),
                            _ => {
                                tracing::debug!(session = %id, "room declined the track");
                                while track.poll().await.is_some() {}
                                return;
                            }
                        }
                        if matches!(kind, TrackKind::Video(_)) && gate.handle_request(Instant::now()) {
                            send_pli(track.clone()).await;
                        }
                    }
                    if let (Some(sink), Ok(bytes)) = (&sink, packet.marshal()) {
                        sink.push_rtp(bytes.freeze());
                    }
                }
                Some(TrackRemoteEvent::OnEnded) | None => break,
                Some(_) => {}
            },
            Some(()) = pli_rx.recv() => {
                if gate.handle_request(Instant::now()) {
                    send_pli(track.clone()).await;
                }
            }
            _ = sleep_until_opt(deferred) => {
                if gate.poll_force(Instant::now()) {
                    send_pli(track.clone()).await;
                }
            }
        }
    }
    tracing::debug!(session = %id, ?kind, "published track ended");
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

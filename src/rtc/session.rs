//! Answering an offer: a sans-IO `rtc` peer connection set up on the shared media sockets,
//! handed to its own [`driver`](super::driver) task. [`PeerSession`] is the room's handle to
//! it: trickled candidates go in, closing ends the driver, which frees everything it holds.

use super::codecs::{audio_codec_params, media_engine, video_codec_params};
use super::driver::{self, Command, Driver, VideoCommand};
use super::estimate::{Ack, LinkEstimator};
use super::keyframe_interceptor::KeyframeRequestForwarder;
use super::retransmit::Retransmitter;
use super::{PeerFactory, RtcError, limit_candidates, rewrite_candidates};
use crate::ids::SessionId;
use crate::media::{AudioCodec, EncodedFrame, LinkReport, SharedRtpSink, VideoCodec};
use crate::sdp::OfferSummary;
use ::rtc::interceptor::Registry;
use ::rtc::media_stream::MediaStreamTrack;
use ::rtc::peer_connection::RTCPeerConnectionBuilder;
use ::rtc::peer_connection::configuration::RTCConfigurationBuilder;
use ::rtc::peer_connection::configuration::media_engine::MediaEngine;
use ::rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use ::rtc::peer_connection::sdp::RTCSessionDescription;
use ::rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCDtlsRole, RTCIceCandidate, RTCIceCandidateInit,
};
use ::rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rand::distr::{Alphanumeric, SampleString};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Remote candidates one session takes (from the offer and trickled together): more would
/// only make the server send connectivity checks wherever an offer points it.
pub const MAX_REMOTE_CANDIDATES: usize = 16;
/// Datagrams queued for one session's driver; when full, the socket reader drops (the
/// driver is behind, and late media is worthless).
pub const INBOUND_QUEUE: usize = 512;
/// Commands (candidates, close) queued for one driver; senders wait when it is full.
const COMMAND_QUEUE: usize = 16;
/// How long [`PeerSession::close`] waits for the driver to say goodbye to the peer.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// SRTP/SRTCP/DTLS anti-replay windows (packets): a replayed packet is dropped.
const SRTP_REPLAY_WINDOW: usize = 256;
const SRTCP_REPLAY_WINDOW: usize = 128;
const DTLS_REPLAY_WINDOW: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Audio(AudioCodec),
    Video(VideoCodec),
}

/// What a session reports to its room. Sent with `try_send` from the driver; the room's
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
    /// A receiver asked for a keyframe (PLI/FIR), or fell behind, or waits to switch to
    /// this encode: only that encode (codec and ladder rung) makes one.
    KeyframeRequest { codec: VideoCodec, tier: usize },
    /// What the receiver's link carries, every [`crate::media::LINK_REPORT_INTERVAL`].
    Link {
        session: SessionId,
        peer: u64,
        report: LinkReport,
    },
    /// The receiver now gets another encode (or none): the one it left may be unused.
    TierSwitched {
        session: SessionId,
        tier: Option<usize>,
    },
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
    /// The codec, the ladder rung the frames are of, and the frames.
    pub video: Option<(VideoCodec, usize, broadcast::Receiver<EncodedFrame>)>,
    /// The codec the mix-minus is encoded in, and its frames.
    pub audio: Option<(AudioCodec, mpsc::Receiver<EncodedFrame>)>,
    /// The `mixdown` data channel, when the offer has a data channel section.
    pub data: Option<DataPipe>,
}

/// The label of the data channel that carries room messages; channels with other labels
/// are closed.
pub const DATA_CHANNEL_LABEL: &str = "mixdown";

/// Both directions of a session's `mixdown` data channel: text to send on it (held until
/// the peer opens it), and what arrives.
pub struct DataPipe {
    pub outbound: mpsc::Receiver<String>,
    pub inbound: mpsc::Sender<DataIn>,
}

impl std::fmt::Debug for DataPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataPipe")
    }
}

/// What happens on a session's `mixdown` data channel.
#[derive(Debug, PartialEq, Eq)]
pub enum DataIn {
    Open,
    Text(String),
    /// A binary message (or text that is not UTF-8) of this many bytes.
    Binary(usize),
    Closed,
}

/// A live peer connection, driven by its own task. [`close`](Self::close) tells the peer
/// and waits for the driver to end; dropping the handle ends the driver too.
pub struct PeerSession {
    pub id: SessionId,
    /// This peer connection's number (a session keeps its id across renegotiations).
    pub peer: u64,
    commands: mpsc::Sender<Command>,
    task: tokio::task::JoinHandle<()>,
}

impl PeerSession {
    /// A remote ICE candidate trickled by the client.
    pub async fn add_candidate(
        &self,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    ) -> Result<(), RtcError> {
        let (reply, answer) = oneshot::channel();
        let init = RTCIceCandidateInit {
            candidate,
            sdp_mid,
            sdp_mline_index,
            username_fragment: None,
            url: None,
        };
        let gone = || RtcError::Candidate("the peer connection has closed".into());
        self.commands
            .send(Command::Candidate(init, reply))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Moves the receiver's video to ladder rung `tier`, whose frames are `frames`, at that
    /// encode's next keyframe, on the same track (sequence numbers and timestamps run on).
    pub fn switch_video(&self, tier: usize, frames: broadcast::Receiver<EncodedFrame>) {
        self.video_command(VideoCommand::Switch { tier, frames });
    }

    /// Stops sending video (the link carries only audio); the receiver keeps the last picture.
    pub fn pause_video(&self) {
        self.video_command(VideoCommand::Pause);
    }

    /// Pads the receiver's stream up to `bps` for a moment, to learn whether its link
    /// carries that much; the answer comes in a later [`SessionEvent::Link`].
    pub fn probe(&self, bps: f64) {
        self.video_command(VideoCommand::Probe { bps });
    }

    /// Asks the publisher to send its video at most at `bps` (REMB, repeated every second):
    /// a trickle while it is off screen, what its tile needs while on.
    pub fn cap_publisher(&self, bps: f64) {
        if self.commands.try_send(Command::PublishCap(bps)).is_err() {
            tracing::debug!(session = %self.id, "publish cap dropped: driver busy");
        }
    }

    fn video_command(&self, c: VideoCommand) {
        // Full only if the driver is stuck; the tier choice repeats what matters.
        if self.commands.try_send(Command::Video(c)).is_err() {
            tracing::debug!(session = %self.id, "video command dropped: driver busy");
        }
    }

    pub async fn close(self) {
        let _ = self.commands.send(Command::Close).await;
        let abort = self.task.abort_handle();
        if tokio::time::timeout(CLOSE_TIMEOUT, self.task)
            .await
            .is_err()
        {
            tracing::warn!(session = %self.id, "peer connection driver did not end; aborted");
            abort.abort();
        }
    }
}

/// The interceptor chain: webrtc-rs's defaults (NACK both ways, TWCC feedback for what we
/// receive, RTCP reports, simulcast header extensions), our own NACK responder
/// ([`Retransmitter`]), and the PLI/FIR forwarder.
fn interceptors(
    engine: &mut MediaEngine,
    estimator: SharedEstimator,
) -> Result<Registry, RtcError> {
    use ::rtc::interceptor::{
        CongestionControlBuilder, NackGeneratorBuilder, Slot, TwccSenderBuilder,
    };
    use ::rtc::peer_connection::configuration::interceptor_registry as ir;
    let neg = |e: ::rtc::shared::error::Error| RtcError::Negotiation(e.to_string());
    // NACK and PLI feedback are in the video codecs' own parameters. Our own responder
    // (see `retransmit`) in place of webrtc-rs': outward of the transport-wide numbering
    // (2 000), so each resend is numbered and counted like any packet.
    let registry = Registry::new()
        .with(Slot::NackResponder, Retransmitter::new(estimator.clone()))
        .with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    ir::configure_simulcast_extension_headers(engine).map_err(neg)?;
    let registry = ir::configure_twcc_receiver_only(registry, engine).map_err(neg)?;
    // Send-side congestion control without a pacer: transport-wide sequence numbers on what
    // we send, and the receiver's feedback resolved into the link estimator. Frames go out
    // as they are encoded; the tier choice, not a queue, keeps the rate within the link.
    let registry = registry
        .with(
            Slot::CongestionControl,
            CongestionControlBuilder::new(estimator.clone()).build(),
        )
        .with(Slot::TwccSender, TwccSenderBuilder::new().build());
    Ok(ir::configure_rtcp_reports(registry)
        .with(Slot::from(14_000), KeyframeRequestForwarder::default()))
}

/// The link estimator, shared by the congestion-control interceptor (which feeds it) and the
/// driver (which reads it and runs its probes). Both live on the driver's task, so the lock
/// is never contended.
#[derive(Clone)]
pub(super) struct SharedEstimator(pub std::sync::Arc<std::sync::Mutex<LinkEstimator>>);

impl SharedEstimator {
    /// Believes the link carries `ceiling` until feedback says otherwise: receivers start
    /// on the top tier, and one that sends no feedback stays there.
    fn new(ceiling: f64) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(
            LinkEstimator::new(ceiling, MIN_ESTIMATE_BPS, ceiling),
        )))
    }
}

/// The lowest the estimate goes: below this only audio flows anyway.
const MIN_ESTIMATE_BPS: f64 = 30_000.0;

impl ::rtc::interceptor::BandwidthEstimator for SharedEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[::rtc::interceptor::PacketReport]) {
        // Copies of one packet (audio sent twice on a lossy path) count once, as arrived if
        // either did: the receiver discards the second copy as a replay, which its feedback
        // reports as a loss the path never had.
        let mut acks: Vec<Ack> = Vec::with_capacity(reports.len());
        let mut seen: HashMap<(u32, u16), usize> = HashMap::with_capacity(reports.len());
        for r in reports {
            let arrival = if r.arrived { r.arrival } else { None };
            let key = (r.ssrc, r.rtp_sequence_number);
            if let Some(&i) = seen.get(&key) {
                if acks[i].arrival.is_none() {
                    acks[i].arrival = arrival;
                }
                continue;
            }
            seen.insert(key, acks.len());
            acks.push(Ack {
                departure: r.departure,
                arrival,
                size: r.size,
            });
        }
        if let Ok(mut e) = self.0.lock() {
            e.handle_acks(now, &acks);
        }
    }

    fn target_bitrate(&self) -> f64 {
        self.0.lock().map(|e| e.estimate()).unwrap_or(0.0)
    }

    fn handle_timeout(&mut self, now: Instant) {
        if let Ok(mut e) = self.0.lock() {
            e.handle_timeout(now);
        }
    }
}

/// Numbers every peer connection this process builds.
static NEXT_PEER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A track of one random SSRC, in stream `mixdown`, named `mixdown-{label}`.
fn local_track(kind: RtpCodecKind, codec: RTCRtpCodec, label: &str) -> (MediaStreamTrack, u32) {
    let ssrc = rand::random::<u32>() | 1;
    let track = MediaStreamTrack::new(
        "mixdown".to_owned(),
        format!("mixdown-{label}"),
        format!("mixdown-{label}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    );
    (track, ssrc)
}

/// A host candidate on `addr`: UDP, or ICE-TCP passive (RFC 6544: the client connects).
fn host_candidate(addr: std::net::SocketAddr, tcp: bool) -> Result<RTCIceCandidateInit, RtcError> {
    let err = |e: ::rtc::shared::error::Error| RtcError::Negotiation(e.to_string());
    let c = CandidateHostConfig {
        base_config: CandidateConfig {
            network: if tcp { "tcp" } else { "udp" }.to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        tcp_type: if tcp {
            ::rtc::ice::tcp_type::TcpType::Passive
        } else {
            ::rtc::ice::tcp_type::TcpType::Unspecified
        },
    }
    .new_candidate_host()
    .map_err(err)?;
    RTCIceCandidate::from(&c).to_json().map_err(err)
}

impl PeerFactory {
    /// Answers `offer`: builds the peer connection on the shared sockets, adds the room's
    /// tracks, starts its driver, and returns the session with the complete answer (its
    /// candidates included).
    pub async fn answer(
        &self,
        id: SessionId,
        offer: String,
        summary: &OfferSummary,
        media: SessionMedia,
        events: mpsc::Sender<SessionEvent>,
    ) -> Result<(PeerSession, String), RtcError> {
        let s = &self.settings;
        let now = Instant::now();
        let peer = NEXT_PEER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let neg = |e: ::rtc::shared::error::Error| RtcError::Negotiation(e.to_string());
        let (offer, offered) = limit_candidates(&offer, MAX_REMOTE_CANDIDATES);
        let offer = crate::sdp::complete_static_rtpmaps(&offer);

        let mut engine = media_engine()?;
        let estimator = SharedEstimator::new(s.link_ceiling_bps);
        let registry = interceptors(&mut engine, estimator.clone())?;
        // The server's own ICE credentials: its ufrag is how the socket reader finds this
        // session for every STUN request.
        let ufrag = Alphanumeric.sample_string(&mut rand::rng(), 16);
        let pwd = Alphanumeric.sample_string(&mut rand::rng(), 32);
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(::rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_ice_credentials(ufrag.clone(), pwd)
            .with_answering_dtls_role(RTCDtlsRole::Client)
            .with_ice_timeouts(
                Some(s.ice_timeout / 2),
                Some(s.ice_timeout - s.ice_timeout / 2),
                Some(Duration::from_secs(1)),
            )
            .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW)
            .with_srtcp_replay_protection_window(SRTCP_REPLAY_WINDOW)
            .with_dtls_replay_protection_window(DTLS_REPLAY_WINDOW)
            .build();
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(engine)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(neg)?;

        let desc = RTCSessionDescription::offer(offer.clone())
            .map_err(|e| RtcError::Offer(e.to_string()))?;
        pc.set_remote_description(now, desc)
            .map_err(|e| RtcError::Offer(e.to_string()))?;

        let video = match media.video {
            Some((codec, tier, frames)) => {
                let (track, ssrc) =
                    local_track(RtpCodecKind::Video, video_codec_params(codec), "video");
                let sender = pc.add_track(track).map_err(neg)?;
                Some((sender, ssrc, codec, tier, frames))
            }
            None => None,
        };
        let audio = match media.audio {
            Some((codec, frames)) => {
                let (track, ssrc) =
                    local_track(RtpCodecKind::Audio, audio_codec_params(codec), "audio");
                let sender = pc.add_track(track).map_err(neg)?;
                Some((sender, ssrc, codec, frames))
            }
            None => None,
        };
        for addr in self.transport.sockets.addrs() {
            pc.add_local_candidate(host_candidate(addr, false)?)
                .map_err(neg)?;
        }
        for &addr in &self.transport.tcp_addrs {
            pc.add_local_candidate(host_candidate(addr, true)?)
                .map_err(neg)?;
        }
        // Once the offer is accepted, what can still fail is what the offer says (a garbled
        // `a=ssrc` surfaces here as "no trackStreams found for SSRC"): the client's fault, 400.
        let unanswerable =
            |e: ::rtc::shared::error::Error| RtcError::Offer(format!("it cannot be answered: {e}"));
        let answer = pc.create_answer(None).map_err(unanswerable)?;
        pc.set_local_description(now, answer)
            .map_err(unanswerable)?;
        let sdp = pc.local_description().ok_or(RtcError::Gathering)?.sdp;
        let mut sdp = crate::sdp::finish_answer(summary, &offer, &sdp);
        if let Some(public) = s.public_ip {
            sdp = rewrite_candidates(&sdp, public);
        }

        let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
        let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
        self.transport.router.register(peer, &ufrag, inbound_tx);
        let mut d = Driver::new(
            id,
            peer,
            pc,
            offered,
            estimator,
            driver::Io {
                inbound,
                commands: command_rx,
                events,
                transport: std::sync::Arc::clone(&self.transport),
                packets_per_second: s.packets_per_second,
            },
        );
        if let Some((sender, ssrc, codec, tier, frames)) = video {
            d.send_video(sender, ssrc, codec, tier, frames)?;
        }
        if let Some((sender, ssrc, codec, frames)) = audio {
            d.send_audio(sender, ssrc, codec, frames)?;
        }
        if let Some(pipe) = media.data {
            d.serve_data(pipe);
        }
        let task = tokio::spawn(d.run());
        Ok((
            PeerSession {
                id,
                peer,
                commands,
                task,
            },
            sdp,
        ))
    }
}

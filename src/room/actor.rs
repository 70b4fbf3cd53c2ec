//! One room's actor: owns its sessions, the video mixer, the audio mixer, the layout and the
//! keyframe gates. Commands come from [`super::RoomHandle`]s, events from the room's sessions.
//! When the last session leaves, the actor removes the room from the registry, closes the
//! pipeline (state `Null`) and ends.

mod links;
mod outputs;
mod screen;

use super::keyframe::KeyframeGate;
use super::layout::{LayoutMode, Tile};
use super::tiers::{Rung, TierChoice};
use super::visible::{DEFAULT_HOLD, VisibleSet};
use super::{
    EncodeInfo, JoinAnswer, JoinOptions, ParticipantInfo, ROOM_COMMAND_QUEUE, RegistryInner, Role,
    RoomCommand, RoomError, RoomHandle, RoomInfo, SESSION_EVENT_QUEUE, VideoPackets,
};
use crate::ids::{RoomId, SessionId};
use crate::media::{LinkReport, SharedRtpSink, VideoCodec};
use crate::mixer::audio::{AUDIO_EVENT_QUEUE, AudioEvent, AudioMixerHandle, AudioSettings};
use crate::mixer::video::{EncodeKey, VIDEO_EVENT_QUEUE, VideoEvent, VideoMixer, VideoSettings};
use crate::output::OutputError;
use crate::output::aac::AacEncoder;
use crate::rtc::{PeerSession, SessionEvent, SessionMedia, TrackKind};
use crate::sdp::{OfferSummary, choose_send_codec};
use crate::signal::{CandidateInit, MemberInfo, ServerMessage};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// At most one forced composite keyframe per this interval (bursts coalesce).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

struct Participant {
    peer: PeerSession,
    role: Role,
    name: String,
    audio_muted: bool,
    video_muted: bool,
    speaking: bool,
    /// Room events for a WebSocket participant.
    events: Option<mpsc::Sender<ServerMessage>>,
    publishes_audio: bool,
    publishes_video: bool,
    video_started: bool,
    /// Its video track, once started (decoded only while visible).
    video_in: Option<screen::VideoInput>,
    /// Its voice is in the audio mix.
    in_mix: bool,
    /// What its video was last asked to stay under (kbit/s, REMB).
    publish_cap: Option<u32>,
    audio_sink: Option<SharedRtpSink>,
    receives_video: Option<VideoCodec>,
    /// The video codecs it can receive (its offer's), for the room info's account of why
    /// each encode runs.
    accepts_video: Vec<VideoCodec>,
    receives_audio: bool,
    /// The codec its mix-minus is encoded in.
    audio_codec: Option<crate::media::AudioCodec>,
    /// What its offer asked for that the answer refused.
    refused: Vec<crate::sdp::Refused>,
    /// Which rung of the encoder ladder this receiver's link carries (receivers of video).
    tier: Option<TierChoice>,
    /// The transport's latest word on this receiver's link.
    link: Option<LinkReport>,
    /// Its decoder's picture count, sampled with each link report (for `decode_fps`).
    decodes: std::collections::VecDeque<(Instant, u64)>,
    /// The loss (percent) last handed to the audio mixer for this listener's FEC.
    fec_loss: u8,
    /// The best ladder rung this receiver may get.
    max_tier: usize,
    /// Sends nothing and has no WebSocket: a viewer, counted apart from participants.
    viewer: bool,
    /// Not announced nor counted (a `hidden` token).
    hidden: bool,
    /// Its client address's share, given back when the participant is dropped.
    _slot: Option<Arc<crate::limits::Slot>>,
}

struct Room {
    id: RoomId,
    generation: u64,
    registry: Arc<RegistryInner>,
    events_tx: mpsc::Sender<SessionEvent>,
    video: VideoMixer,
    audio: AudioMixerHandle,
    participants: HashMap<SessionId, Participant>,
    /// Publishers in join order.
    order: Vec<SessionId>,
    /// Who is on screen (pure decision) and how they are arranged.
    visible: VisibleSet,
    layout: LayoutMode,
    /// Publishers the pipeline has a tile source for (the applied visible set).
    shown: HashSet<SessionId>,
    /// Visible publishers whose decoder has not shown a picture yet (their card covers it).
    awaiting_first: HashSet<SessionId>,
    tiles: HashMap<SessionId, Tile>,
    gates: HashMap<EncodeKey, KeyframeGate>,
    outputs: HashMap<SessionId, outputs::RunningOutput>,
    /// The AAC encoder shared by MP4, HLS and RTMP outputs: its mixer listener id, the
    /// encoder, and how many outputs use it.
    aac: Option<(SessionId, AacEncoder)>,
    aac_users: usize,
    ended_tx: mpsc::Sender<SessionId>,
}

pub(crate) fn spawn(id: RoomId, generation: u64, registry: Arc<RegistryInner>) -> RoomHandle {
    let (tx, rx) = mpsc::channel(ROOM_COMMAND_QUEUE);
    registry.live_actors.fetch_add(1, Ordering::SeqCst);
    let handle = RoomHandle {
        id: id.clone(),
        generation,
        tx,
    };
    // On the media runtime, whichever runtime the join came from (HTTP has its own).
    let media = registry.media.clone();
    media.spawn(run(id, generation, registry, rx));
    handle
}

async fn run(
    id: RoomId,
    generation: u64,
    registry: Arc<RegistryInner>,
    mut commands: mpsc::Receiver<RoomCommand>,
) {
    let c = &registry.config;
    let settings = VideoSettings {
        width: c.video.width,
        height: c.video.height,
        framerate: c.video.framerate,
        tiers: c.video.ladder(),
        jitter_ms: c.video.jitter_ms,
        keyframe_interval_s: c.video.keyframe_interval_s,
        pacing_margin_ms: c.video.pacing_margin_ms,
    };
    let (video_tx, mut video_events) = mpsc::channel(VIDEO_EVENT_QUEUE);
    let video = match VideoMixer::new(id.clone(), settings, video_tx) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(room = %id, "cannot start the room pipeline: {e}");
            registry.forget(&id, generation);
            commands.close();
            while let Some(cmd) = commands.recv().await {
                if let RoomCommand::Join { reply, .. } = cmd {
                    let _ = reply.send(Err(RoomError::Mixer(crate::mixer::MixerError::State(
                        "the room pipeline failed to start",
                    ))));
                }
            }
            registry.live_actors.fetch_sub(1, Ordering::SeqCst);
            return;
        }
    };
    let (audio_tx, mut audio_events) = mpsc::channel(AUDIO_EVENT_QUEUE);
    let audio = AudioMixerHandle::spawn(
        AudioSettings {
            bitrate_kbps: c.audio.bitrate_kbps,
            jitter_ms: c.audio.jitter_ms,
            max_speakers: c.audio.max_speakers,
        },
        audio_tx,
    );
    let (events_tx, mut events) = mpsc::channel(SESSION_EVENT_QUEUE);
    let (ended_tx, mut ended) = mpsc::channel(outputs::ENDED_QUEUE);
    tracing::info!(room = %id, "room opened");
    let mut room = Room {
        id,
        generation,
        registry: Arc::clone(&registry),
        events_tx,
        video,
        audio,
        participants: HashMap::new(),
        order: Vec::new(),
        visible: VisibleSet::new(c.video.max_tiles, DEFAULT_HOLD),
        layout: LayoutMode::Grid,
        shown: HashSet::new(),
        awaiting_first: HashSet::new(),
        tiles: HashMap::new(),
        gates: HashMap::new(),
        outputs: HashMap::new(),
        aac: None,
        aac_users: 0,
        ended_tx,
    };
    room.auto_start_outputs().await;
    room.announce_outputs();
    // A panic in the room's own work closes this room cleanly below (recordings finalised,
    // pipeline to Null, sessions and ports freed); other rooms run in their own tasks.
    let served = std::panic::AssertUnwindSafe(async {
        loop {
            let deadline = room
                .gates
                .values()
                .filter_map(|g| g.poll_timeout())
                .chain(room.visible.poll_timeout())
                .min();
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(RoomCommand::Shutdown) | None => break,
                    Some(RoomCommand::Panic) => panic!("a test asked room {} to panic", room.id),
                    Some(cmd) => room.handle_command(cmd).await,
                },
                Some(event) = events.recv() => room.handle_event(event).await,
                Some(output) = ended.recv() => room.output_ended(output).await,
                Some(event) = audio_events.recv() => match event {
                    AudioEvent::Speaking(session, on) => room.speaking_changed(session, on),
                    AudioEvent::Mixed(session, on) => room.mixed_changed(session, on),
                },
                Some(VideoEvent::FirstFrame(session)) = video_events.recv() => room.first_frame(session),
                _ = sleep_until_opt(deadline) => {
                    room.poll_keyframes();
                    room.update_visible();
                }
            }
            if room.participants.is_empty() {
                break;
            }
        }
    });
    if futures_util::FutureExt::catch_unwind(served).await.is_err() {
        tracing::error!(room = %room.id, "the room failed (a panic): closing it");
    }
    // Stop taking commands first: queued joins fail with `Closed` and the registry retries
    // them on a fresh room.
    registry.forget(&room.id, room.generation);
    commands.close();
    while let Some(cmd) = commands.recv().await {
        match cmd {
            RoomCommand::Join { reply, .. } => {
                let _ = reply.send(Err(RoomError::Closed(room.id.clone())));
            }
            RoomCommand::Leave { reply, .. } => {
                let _ = reply.send(false);
            }
            RoomCommand::Info { reply } => {
                let _ = reply.send(room.info());
            }
            RoomCommand::StartOutput { reply, .. } => {
                let _ = reply.send(Err(OutputError::RoomClosed));
            }
            RoomCommand::Renegotiate { reply, .. } => {
                let _ = reply.send(Err(RoomError::Closed(room.id.clone())));
            }
            RoomCommand::AddCandidate { reply, .. } => {
                let _ = reply.send(Err(RoomError::Closed(room.id.clone())));
            }
            RoomCommand::Members { reply } => {
                let _ = reply.send(Vec::new());
            }
            RoomCommand::GetLayout { reply } => {
                let _ = reply.send(room.layout_info());
            }
            RoomCommand::SetLayout { reply, .. } => {
                let _ = reply.send(Err(RoomError::Closed(room.id.clone())));
            }
            RoomCommand::Mute { .. }
            | RoomCommand::Chat { .. }
            | RoomCommand::Shutdown
            | RoomCommand::Panic => {}
        }
    }
    room.close().await;
    registry.live_actors.fetch_sub(1, Ordering::SeqCst);
}

/// A receiver's tier choice over the configured ladder, capped at `max_tier`.
fn tier_choice(video: &crate::config::VideoConfig, max_tier: usize) -> TierChoice {
    TierChoice::with_top(
        video.ladder().iter().map(|t| t.bitrate_kbps).collect(),
        max_tier,
    )
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t.into()).await,
        None => std::future::pending().await,
    }
}

impl Room {
    async fn handle_command(&mut self, cmd: RoomCommand) {
        match cmd {
            RoomCommand::Join {
                role,
                offer,
                summary,
                options,
                reply,
            } => {
                let result = self.join(role, offer, summary, options).await;
                if let Err(e) = &result {
                    tracing::warn!(room = %self.id, "join refused: {e}");
                }
                if let Err(Ok(answer)) = reply.send(result) {
                    // The HTTP client went away before the answer: nobody will use it.
                    self.leave(answer.session, "client gone before the answer")
                        .await;
                }
            }
            RoomCommand::Leave { session, reply } => {
                let known = self.leave(session, "DELETE").await;
                let _ = reply.send(known);
            }
            RoomCommand::Info { reply } => {
                let _ = reply.send(self.info());
            }
            RoomCommand::Renegotiate {
                session,
                offer,
                summary,
                reply,
            } => {
                let result = self.renegotiate(session, offer, summary).await;
                if let Err(e) = &result {
                    tracing::warn!(room = %self.id, %session, "renegotiation refused: {e}");
                }
                let _ = reply.send(result);
            }
            RoomCommand::AddCandidate {
                session,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.add_candidate(session, candidate).await);
            }
            RoomCommand::Mute {
                session,
                audio,
                video,
            } => self.mute(session, audio, video).await,
            RoomCommand::Chat { session, text } => self.chat(session, text),
            RoomCommand::Members { reply } => {
                let _ = reply.send(self.members());
            }
            RoomCommand::StartOutput { request, reply } => {
                let result = self.start_output(request).await;
                match &result {
                    Ok(_) => self.announce_outputs(),
                    Err(e) => tracing::warn!(room = %self.id, "output refused: {e}"),
                }
                let _ = reply.send(result);
            }
            RoomCommand::GetLayout { reply } => {
                let _ = reply.send(self.layout_info());
            }
            RoomCommand::SetLayout { mode, pin, reply } => {
                let result = self.set_layout(mode, pin);
                if let Err(e) = &result {
                    tracing::info!(room = %self.id, "layout refused: {e}");
                }
                let _ = reply.send(result);
            }
            RoomCommand::Shutdown | RoomCommand::Panic => {}
        }
    }

    async fn handle_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::TrackStarted {
                session,
                kind,
                payload_type,
                pli,
                reply,
            } => {
                let sink = self.track_started(session, kind, payload_type, pli);
                let _ = reply.send(sink);
            }
            SessionEvent::KeyframeRequest { codec, tier } => self.request_keyframe((codec, tier)),
            SessionEvent::Connected { session } => {
                if let Some(p) = self.participants.get(&session)
                    && let Some(codec) = p.receives_video
                {
                    let tier = match p.tier.as_ref().map(|t| t.current()) {
                        Some(Rung::Tier(t)) => t,
                        _ => 0,
                    };
                    self.request_keyframe((codec, tier));
                }
            }
            SessionEvent::Link {
                session,
                peer,
                report,
            } => self.link_report(session, peer, report),
            SessionEvent::TierSwitched { .. } => self.video.release_unused(),
            SessionEvent::Gone {
                session,
                peer,
                reason,
            } => {
                // A peer connection replaced by renegotiation closing is not a departure.
                if self
                    .participants
                    .get(&session)
                    .is_some_and(|p| p.peer.peer == peer)
                {
                    self.leave(session, reason).await;
                }
            }
        }
    }

    async fn join(
        &mut self,
        role: Role,
        offer: String,
        summary: OfferSummary,
        options: JoinOptions,
    ) -> Result<JoinAnswer, RoomError> {
        let publishes_audio = role == Role::Whip && summary.publishes_audio();
        let publishes_video = role == Role::Whip && summary.publishes_video();
        // A WHEP client with a data channel gets room events and is still a viewer.
        let viewer = !publishes_audio
            && !publishes_video
            && (options.events.is_none() || role == Role::Whep);
        let counters = &self.registry.counters;
        if viewer {
            let max = self.registry.config.limits.max_viewers;
            if self.participants.values().filter(|p| p.viewer).count() >= max {
                crate::limits::Counters::bump(&counters.viewers);
                return Err(RoomError::TooManyViewers {
                    room: self.id.clone(),
                    max,
                });
            }
        } else {
            let max = self.registry.config.room.max_participants;
            if self.participants.values().filter(|p| !p.viewer).count() >= max {
                crate::limits::Counters::bump(&counters.participants);
                return Err(RoomError::Full {
                    room: self.id.clone(),
                    max,
                });
            }
        }
        let id = options.id;
        if self.participants.contains_key(&id) {
            return Err(RoomError::UnknownSession {
                room: self.id.clone(),
                session: format!("{id} (already in the room)"),
            });
        }
        let codec = self.send_codec_for(&summary);
        let audio_codec = summary.audio_send_codec();
        let receives_audio = audio_codec.is_some();
        if !publishes_audio && !publishes_video && codec.is_none() && !receives_audio {
            return Err(RoomError::NothingToDo);
        }
        let audio_sink = if publishes_audio {
            Some(self.audio.add_source(id).await?)
        } else {
            None
        };
        let max_tier = options
            .max_tier
            .min(self.video.tier_count().saturating_sub(1));
        let media = SessionMedia {
            video: match codec {
                Some(c) => Some((c, max_tier, self.video.subscribe(c, max_tier)?)),
                None => None,
            },
            audio: match audio_codec {
                Some(c) => Some((c, self.audio.add_listener(id, c).await?)),
                None => None,
            },
            data: options.data.as_ref().and_then(|d| d.take()),
        };
        let answered = self
            .registry
            .peers
            .answer(id, offer, &summary, media, self.events_tx.clone())
            .await;
        let (peer, sdp) = match answered {
            Ok(ok) => ok,
            Err(e) => {
                self.audio.remove_source(id).await;
                self.audio.remove_listener(id).await;
                return Err(e.into());
            }
        };
        tracing::info!(
            room = %self.id,
            session = %id,
            ?role,
            name = %options.name,
            publishes_audio,
            publishes_video,
            receives_video = ?codec,
            receives_audio = ?audio_codec,
            data_channel = summary.data_channel.is_some(),
            refused = summary.refused.len(),
            "joined"
        );
        crate::metrics::add(&crate::metrics::METRICS.joins, 1);
        self.participants.insert(
            id,
            Participant {
                peer,
                role,
                name: options.name.clone(),
                audio_muted: false,
                video_muted: false,
                speaking: false,
                events: options.events,
                publishes_audio,
                publishes_video,
                video_started: false,
                video_in: None,
                in_mix: false,
                publish_cap: None,
                audio_sink,
                receives_video: codec,
                accepts_video: summary.receivable_video_codecs(),
                receives_audio,
                audio_codec,
                refused: summary.refused.clone(),
                tier: codec.map(|_| tier_choice(&self.registry.config.video, max_tier)),
                link: None,
                decodes: Default::default(),
                fec_loss: 0,
                max_tier,
                viewer,
                hidden: options.hidden,
                _slot: options.slot,
            },
        );
        if publishes_audio || publishes_video {
            self.order.push(id);
            self.visible.handle_join(id);
        }
        if let Some(m) = self.member(id) {
            self.broadcast(ServerMessage::ParticipantJoined { participant: m });
        }
        // Everyone already here, for a newcomer whose `welcome` came before they arrived.
        if let Some(tx) = self.participants.get(&id).and_then(|p| p.events.clone()) {
            for m in self
                .members()
                .into_iter()
                .filter(|m| m.id != id.to_string())
            {
                let _ = tx.try_send(ServerMessage::ParticipantJoined { participant: m });
            }
        }
        if let Some(tx) = self.participants.get(&id).and_then(|p| p.events.clone()) {
            for m in self.output_messages() {
                if matches!(
                    m,
                    ServerMessage::Recording { active: true, .. }
                        | ServerMessage::Streaming { active: true, .. }
                ) {
                    let _ = tx.try_send(m);
                }
            }
            let _ = tx.try_send(ServerMessage::Viewers {
                count: self.viewer_count(),
            });
            // The picture as it is now (a publisher's join relayouts and sends it again).
            let _ = tx.try_send(self.layout_message());
            if !summary.refused.is_empty() {
                let _ = tx.try_send(ServerMessage::Refused {
                    sections: summary.refused.clone(),
                });
            }
        }
        if viewer && !options.hidden {
            self.broadcast(ServerMessage::Viewers {
                count: self.viewer_count(),
            });
        }
        if publishes_audio || publishes_video {
            self.update_visible();
        }
        Ok(JoinAnswer { session: id, sdp })
    }

    /// The codec the composite goes to this offer in (none when it receives no video).
    fn send_codec_for(&self, summary: &OfferSummary) -> Option<VideoCodec> {
        if !summary.receives_video() {
            return None;
        }
        choose_send_codec(
            &summary.receivable_video_codecs(),
            &self.video.active_codecs(),
            &self.registry.config.video.send_codecs,
        )
    }

    fn track_started(
        &mut self,
        session: SessionId,
        kind: TrackKind,
        payload_type: u8,
        pli: mpsc::Sender<()>,
    ) -> Option<SharedRtpSink> {
        let p = self.participants.get_mut(&session)?;
        match kind {
            TrackKind::Audio(_) => p.audio_sink.clone(),
            TrackKind::Video(codec) => self.video_track_started(session, codec, payload_type, pli),
        }
    }

    async fn leave(&mut self, session: SessionId, reason: &str) -> bool {
        let Some(p) = self.participants.remove(&session) else {
            return false;
        };
        let p_role = p.role;
        if p.publishes_audio {
            self.audio.remove_source(session).await;
        }
        if p.receives_audio {
            self.audio.remove_listener(session).await;
        }
        if self.shown.contains(&session) {
            self.hide_tile(session);
        }
        if let Some(pos) = self.order.iter().position(|s| *s == session) {
            self.order.remove(pos);
            self.visible.handle_leave(session);
            self.visible.update(Instant::now());
            self.apply_visible();
        }
        p.peer.close().await;
        // Its driver has ended and let go of its encode: an encode nobody else gets stops.
        self.video.release_unused();
        tracing::info!(room = %self.id, %session, reason, "left");
        if p_role == Role::Whip && !p.hidden {
            self.broadcast(ServerMessage::ParticipantLeft {
                id: session.to_string(),
            });
        }
        if p.viewer && !p.hidden {
            self.broadcast(ServerMessage::Viewers {
                count: self.viewer_count(),
            });
        }
        true
    }

    /// Viewers watching, hidden ones not counted.
    fn viewer_count(&self) -> usize {
        self.participants
            .values()
            .filter(|p| p.viewer && !p.hidden)
            .count()
    }

    /// Sends a room event to every WebSocket participant (a slow one misses it).
    fn broadcast(&self, msg: ServerMessage) {
        for p in self.participants.values() {
            if let Some(tx) = &p.events {
                let _ = tx.try_send(msg.clone());
            }
        }
    }

    /// A participant as clients see it; WHEP viewers (a broadcast audience) are not listed.
    fn member(&self, id: SessionId) -> Option<MemberInfo> {
        let p = self
            .participants
            .get(&id)
            .filter(|p| p.role == Role::Whip && !p.hidden)?;
        Some(MemberInfo {
            id: id.to_string(),
            name: p.name.clone(),
            audio_muted: p.audio_muted,
            video_muted: p.video_muted,
            speaking: p.speaking,
            publishes_audio: p.publishes_audio,
            publishes_video: p.publishes_video,
        })
    }

    /// Participants in join order (tile holders first).
    fn members(&self) -> Vec<MemberInfo> {
        let mut ids: Vec<SessionId> = self.order.clone();
        let mut rest: Vec<SessionId> = self
            .participants
            .keys()
            .filter(|id| !self.order.contains(id))
            .copied()
            .collect();
        rest.sort();
        ids.extend(rest);
        ids.into_iter().filter_map(|id| self.member(id)).collect()
    }

    fn speaking_changed(&mut self, session: SessionId, on: bool) {
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        let on = on && !p.audio_muted;
        if p.speaking != on {
            p.speaking = on;
            self.broadcast(ServerMessage::Speaking {
                id: session.to_string(),
                speaking: on,
            });
            self.visible.handle_speaking(Instant::now(), session, on);
            self.update_visible();
        }
    }

    fn mixed_changed(&mut self, session: SessionId, on: bool) {
        if let Some(p) = self.participants.get_mut(&session) {
            p.in_mix = on;
        }
    }

    async fn mute(&mut self, session: SessionId, audio: Option<bool>, video: Option<bool>) {
        let Some(p) = self.participants.get_mut(&session) else {
            return;
        };
        let mut changed = false;
        if let Some(a) = audio.filter(|a| *a != p.audio_muted) {
            p.audio_muted = a;
            changed = true;
            // A muted microphone leaves the mix: its packets are ignored from now on.
            if p.publishes_audio {
                if a {
                    self.audio.remove_source(session).await;
                } else if let Err(e) = self.audio.add_source(session).await {
                    tracing::error!(room = %self.id, %session, "unmute: {e}");
                }
            }
        }
        if let Some(v) = video.filter(|v| *v != p.video_muted) {
            p.video_muted = v;
            changed = true;
            // Only a tile on screen has a card to show or hide.
            if v && self.shown.contains(&session) {
                if let Err(e) = self.video.show_card(session, &p.name) {
                    tracing::error!(room = %self.id, %session, "name card: {e}");
                }
            } else if !v && !self.awaiting_first.contains(&session) {
                self.video.hide_card(session);
            }
        }
        if !changed {
            return;
        }
        tracing::info!(room = %self.id, %session, audio_muted = p.audio_muted, video_muted = p.video_muted, "mute changed");
        if p.audio_muted && p.speaking {
            self.speaking_changed(session, false);
        }
        if let Some(m) = self.member(session) {
            self.broadcast(ServerMessage::ParticipantUpdated { participant: m });
        }
    }

    fn chat(&self, session: SessionId, text: String) {
        let Some(p) = self.participants.get(&session) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        tracing::debug!(room = %self.id, %session, "chat message");
        self.broadcast(ServerMessage::Chat {
            id: session.to_string(),
            name: p.name.clone(),
            text,
            time: crate::output::spec::rfc3339(now),
        });
    }

    async fn add_candidate(&self, session: SessionId, c: CandidateInit) -> Result<(), RoomError> {
        let p = self
            .participants
            .get(&session)
            .ok_or_else(|| RoomError::UnknownSession {
                room: self.id.clone(),
                session: session.to_string(),
            })?;
        p.peer
            .add_candidate(c.candidate, c.sdp_mid, c.sdp_mline_index)
            .await
            .map_err(RoomError::Rtc)
    }

    /// A participant's new offer: a fresh peer connection with the same identity, tile and
    /// name; what it publishes and receives follows the new offer.
    async fn renegotiate(
        &mut self,
        session: SessionId,
        offer: String,
        summary: OfferSummary,
    ) -> Result<String, RoomError> {
        let unknown = || RoomError::UnknownSession {
            room: self.id.clone(),
            session: session.to_string(),
        };
        let had_audio = {
            let p = self.participants.get(&session).ok_or_else(unknown)?;
            p.publishes_audio
        };
        let publishes_audio = summary.publishes_audio();
        let publishes_video = summary.publishes_video();
        let codec = self.send_codec_for(&summary);
        let audio_codec = summary.audio_send_codec();
        let receives_audio = audio_codec.is_some();
        let audio_sink = match (had_audio, publishes_audio) {
            (false, true) => Some(self.audio.add_source(session).await?),
            (true, false) => {
                self.audio.remove_source(session).await;
                None
            }
            _ => self
                .participants
                .get(&session)
                .and_then(|p| p.audio_sink.clone()),
        };
        let max_tier = self.participants.get(&session).map_or(0, |p| p.max_tier);
        let media = SessionMedia {
            video: match codec {
                Some(c) => Some((c, max_tier, self.video.subscribe(c, max_tier)?)),
                None => None,
            },
            audio: match audio_codec {
                Some(c) => Some((c, self.audio.add_listener(session, c).await?)),
                None => {
                    self.audio.remove_listener(session).await;
                    None
                }
            },
            // A renegotiation comes over the WebSocket, which carries the room's messages.
            data: None,
        };
        let (peer, sdp) = self
            .registry
            .peers
            .answer(session, offer, &summary, media, self.events_tx.clone())
            .await?;
        let p = self.participants.get_mut(&session).ok_or_else(unknown)?;
        let old = std::mem::replace(&mut p.peer, peer);
        p.publishes_audio = publishes_audio;
        p.publishes_video = publishes_video;
        p.video_started = false;
        // The new connection's video track brings its own input when it starts.
        p.video_in = None;
        p.audio_sink = audio_sink;
        p.receives_video = codec;
        p.accepts_video = summary.receivable_video_codecs();
        p.receives_audio = receives_audio;
        p.audio_codec = audio_codec;
        p.refused = summary.refused.clone();
        p.link = None;
        p.tier = codec.map(|_| tier_choice(&self.registry.config.video, max_tier));
        old.close().await;
        self.video.release_unused();
        let publishes = publishes_audio || publishes_video;
        let in_grid = self.order.contains(&session);
        if publishes && !in_grid {
            self.order.push(session);
            self.visible.handle_join(session);
            self.update_visible();
        } else if !publishes && in_grid {
            if self.shown.contains(&session) {
                self.hide_tile(session);
            }
            self.order.retain(|s| *s != session);
            self.visible.handle_leave(session);
            self.visible.update(Instant::now());
            self.apply_visible();
        } else if self.shown.contains(&session) {
            // Same tile; its old decoder goes, a name card holds it until the new video
            // starts (if the new offer publishes any).
            self.hide_tile(session);
            self.show_tile(session);
            self.relayout();
        }
        tracing::info!(room = %self.id, %session, publishes_audio, publishes_video, receives_video = ?codec, "renegotiated");
        if let Some(m) = self.member(session) {
            self.broadcast(ServerMessage::ParticipantUpdated { participant: m });
        }
        Ok(sdp)
    }

    /// A keyframe from one encode, rate-limited per encode: a weak receiver's requests reach
    /// only its own tier.
    fn request_keyframe(&mut self, key: EncodeKey) {
        let gate = self
            .gates
            .entry(key)
            .or_insert_with(|| KeyframeGate::new(KEYFRAME_INTERVAL));
        if gate.handle_request(Instant::now()) {
            crate::metrics::add(&crate::metrics::METRICS.keyframes_forced, 1);
            self.video.force_keyframe(key);
        }
    }

    fn poll_keyframes(&mut self) {
        let now = Instant::now();
        for (key, gate) in self.gates.iter_mut() {
            if gate.poll_force(now) {
                crate::metrics::add(&crate::metrics::METRICS.keyframes_forced, 1);
                self.video.force_keyframe(*key);
            }
        }
    }

    fn info(&self) -> RoomInfo {
        let ladder = self.registry.config.video.ladder();
        let mut participants: Vec<(usize, ParticipantInfo)> = self
            .participants
            .iter()
            .map(|(id, p)| {
                let rank = self
                    .order
                    .iter()
                    .position(|s| s == id)
                    .unwrap_or(usize::MAX);
                (
                    rank,
                    ParticipantInfo {
                        session: id.to_string(),
                        role: p.role,
                        publishes_audio: p.publishes_audio,
                        publishes_video: p.publishes_video,
                        video_started: p.video_started,
                        receives_video: p.receives_video,
                        receives_audio: p.receives_audio,
                        audio_codec: p.audio_codec,
                        refused: p.refused.clone(),
                        name: p.name.clone(),
                        tile: self.tiles.get(id).map(|t| (*t).into()),
                        visible: self.shown.contains(id),
                        speaking: p.speaking,
                        in_mix: p.in_mix,
                        publish_cap_kbps: p.publish_cap,
                        video_packets: p.video_in.as_ref().map(|v| {
                            let c = v.gate.counts();
                            VideoPackets {
                                decoded: c.passed,
                                dropped: c.dropped,
                                bytes: c.bytes,
                            }
                        }),
                        quality: self.quality(p),
                        stats: self.stats(p),
                    },
                )
            })
            .collect();
        participants.sort_by_key(|(rank, p)| (*rank, p.session.clone()));
        RoomInfo {
            room: self.id.to_string(),
            width: self.registry.config.video.width,
            height: self.registry.config.video.height,
            encoders: self.video.active_codecs(),
            encodes: self
                .video
                .active_encodes()
                .into_iter()
                .filter_map(|(codec, tier)| {
                    let t = *ladder.get(tier)?;
                    let (receivers, reason) = self.encode_reason(codec, tier);
                    Some(EncodeInfo {
                        codec,
                        tier,
                        width: t.width,
                        height: t.height,
                        framerate: t.framerate,
                        kbps: t.bitrate_kbps,
                        receivers,
                        reason,
                    })
                })
                .collect(),
            video_decoders: self.video.decoders(),
            audio_decoders: self.audio.decoding(),
            layout: self.layout_info(),
            participants: participants.into_iter().map(|(_, p)| p).collect(),
        }
    }

    /// How many receivers get encode (`codec`, `tier`), and why it runs: receivers that
    /// take no codec earlier in `video.send_codecs`, receivers that share what the room
    /// already encoded, or only the outputs (recordings, streams) and tier moves.
    fn encode_reason(&self, codec: VideoCodec, tier: usize) -> (usize, String) {
        let preference = &self.registry.config.video.send_codecs;
        let earlier: Vec<VideoCodec> = preference
            .iter()
            .take_while(|c| **c != codec)
            .copied()
            .collect();
        let receivers: Vec<&Participant> = self
            .participants
            .values()
            .filter(|p| p.receives_video == Some(codec))
            .filter(|p| {
                matches!(p.tier.as_ref().map(|t| t.current()), Some(crate::room::tiers::Rung::Tier(t)) if t == tier)
            })
            .collect();
        let n = receivers.len();
        if n == 0 {
            return (
                0,
                "outputs (recording, streaming) or receivers moving between tiers".into(),
            );
        }
        let only = receivers
            .iter()
            .filter(|p| !p.accepts_video.iter().any(|c| earlier.contains(c)))
            .count();
        let reason = if only > 0 {
            format!("{only} of {n} receivers accept no codec before {codec} in video.send_codecs")
        } else {
            format!("{n} receivers accept {codec}, which the room already encoded when they joined")
        };
        (n, reason)
    }

    async fn close(mut self) {
        // Outputs first, while the encoders still feed them: each writes its trailer.
        self.stop_outputs().await;
        for (session, p) in self.participants.drain() {
            p.peer.close().await;
            tracing::info!(room = %self.id, %session, reason = "room closed", "left");
        }
        self.audio.shutdown().await;
        self.video.shutdown().await;
        // Trimming walks every arena (milliseconds with a large heap): off the runtime's workers.
        let _ = tokio::task::spawn_blocking(crate::memory::release_free_memory).await;
        tracing::info!(room = %self.id, "room closed");
    }
}

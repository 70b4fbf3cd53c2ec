//! One room's actor: owns its sessions, the video mixer, the audio mixer, the layout and the
//! keyframe gates. Commands come from [`super::RoomHandle`]s, events from the room's sessions.
//! When the last session leaves, the actor removes the room from the registry, closes the
//! pipeline (state `Null`) and ends.

mod outputs;

use super::keyframe::KeyframeGate;
use super::layout::{Tile, grid};
use super::{
    JoinAnswer, ParticipantInfo, ROOM_COMMAND_QUEUE, RegistryInner, Role, RoomCommand, RoomError,
    RoomHandle, RoomInfo, SESSION_EVENT_QUEUE,
};
use crate::ids::{RoomId, SessionId};
use crate::media::{SharedRtpSink, VideoCodec};
use crate::mixer::audio::AudioMixerHandle;
use crate::mixer::video::{VideoMixer, VideoSettings};
use crate::output::OutputError;
use crate::output::aac::AacEncoder;
use crate::rtc::{PeerSession, SessionEvent, SessionMedia, TrackKind};
use crate::sdp::{OfferSummary, choose_send_codec};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// At most one forced composite keyframe per this interval (bursts coalesce).
const KEYFRAME_INTERVAL: Duration = Duration::from_millis(300);

struct Participant {
    peer: PeerSession,
    role: Role,
    publishes_audio: bool,
    publishes_video: bool,
    video_started: bool,
    audio_sink: Option<SharedRtpSink>,
    receives_video: Option<VideoCodec>,
    receives_audio: bool,
}

struct Room {
    id: RoomId,
    generation: u64,
    registry: Arc<RegistryInner>,
    events_tx: mpsc::Sender<SessionEvent>,
    video: VideoMixer,
    audio: AudioMixerHandle,
    participants: HashMap<SessionId, Participant>,
    /// Tile holders in join order.
    order: Vec<SessionId>,
    tiles: HashMap<SessionId, Tile>,
    gates: HashMap<VideoCodec, KeyframeGate>,
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
    tokio::spawn(run(id, generation, registry, rx));
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
        bitrate_kbps: c.video.bitrate_kbps,
        jitter_ms: c.video.jitter_ms,
        keyframe_interval_s: c.video.keyframe_interval_s,
    };
    let video = match VideoMixer::new(id.clone(), settings) {
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
    let audio = AudioMixerHandle::spawn(c.audio.bitrate_kbps, c.audio.jitter_ms);
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
        tiles: HashMap::new(),
        gates: HashMap::new(),
        outputs: HashMap::new(),
        aac: None,
        aac_users: 0,
        ended_tx,
    };
    room.auto_start_outputs().await;
    loop {
        let deadline = room.gates.values().filter_map(|g| g.poll_timeout()).min();
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(RoomCommand::Shutdown) | None => break,
                Some(cmd) => room.handle_command(cmd).await,
            },
            Some(event) = events.recv() => room.handle_event(event).await,
            Some(output) = ended.recv() => room.output_ended(output).await,
            _ = sleep_until_opt(deadline) => room.poll_keyframes(),
        }
        if room.participants.is_empty() {
            break;
        }
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
            RoomCommand::Shutdown => {}
        }
    }
    room.close().await;
    registry.live_actors.fetch_sub(1, Ordering::SeqCst);
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
                reply,
            } => {
                let result = self.join(role, offer, summary).await;
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
            RoomCommand::StartOutput { request, reply } => {
                let result = self.start_output(request).await;
                if let Err(e) = &result {
                    tracing::warn!(room = %self.id, "output refused: {e}");
                }
                let _ = reply.send(result);
            }
            RoomCommand::Shutdown => {}
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
            SessionEvent::KeyframeRequest { codec } => self.request_keyframe(codec),
            SessionEvent::Connected { session } => {
                if let Some(codec) = self
                    .participants
                    .get(&session)
                    .and_then(|p| p.receives_video)
                {
                    self.request_keyframe(codec);
                }
            }
            SessionEvent::Gone { session, reason } => {
                self.leave(session, reason).await;
            }
        }
    }

    async fn join(
        &mut self,
        role: Role,
        offer: String,
        summary: OfferSummary,
    ) -> Result<JoinAnswer, RoomError> {
        let max = self.registry.config.room.max_participants;
        if self.participants.len() >= max {
            return Err(RoomError::Full {
                room: self.id.clone(),
                max,
            });
        }
        let id = SessionId::random();
        let publishes_audio = role == Role::Whip && summary.publishes_audio();
        let publishes_video = role == Role::Whip && summary.publishes_video();
        let codec = if summary.receives_video() {
            choose_send_codec(
                &summary.receivable_video_codecs(),
                &self.video.active_codecs(),
                &self.registry.config.video.send_codecs,
            )
        } else {
            None
        };
        let receives_audio = summary.receives_audio();
        if !publishes_audio && !publishes_video && codec.is_none() && !receives_audio {
            return Err(RoomError::NothingToDo);
        }
        let audio_sink = if publishes_audio {
            Some(self.audio.add_source(id).await?)
        } else {
            None
        };
        let media = SessionMedia {
            video: match codec {
                Some(c) => Some((c, self.video.subscribe(c)?)),
                None => None,
            },
            audio: if receives_audio {
                Some(self.audio.add_listener(id).await?)
            } else {
                None
            },
        };
        let answered = self
            .registry
            .peers
            .answer(id, offer, media, self.events_tx.clone())
            .await;
        let (peer, sdp) = match answered {
            Ok(ok) => ok,
            Err(e) => {
                self.audio.remove_source(id).await;
                self.audio.remove_listener(id).await;
                return Err(e.into());
            }
        };
        if publishes_audio || publishes_video {
            self.video.add_placeholder(id)?;
            self.order.push(id);
            self.relayout();
        }
        tracing::info!(
            room = %self.id,
            session = %id,
            ?role,
            publishes_audio,
            publishes_video,
            receives_video = ?codec,
            receives_audio,
            "joined"
        );
        self.participants.insert(
            id,
            Participant {
                peer,
                role,
                publishes_audio,
                publishes_video,
                video_started: false,
                audio_sink,
                receives_video: codec,
                receives_audio,
            },
        );
        Ok(JoinAnswer { session: id, sdp })
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
            TrackKind::Audio => p.audio_sink.clone(),
            TrackKind::Video(codec) if p.publishes_video => {
                match self
                    .video
                    .add_video_input(session, codec, payload_type, pli)
                {
                    Ok(sink) => {
                        p.video_started = true;
                        Some(sink)
                    }
                    Err(e) => {
                        tracing::error!(room = %self.id, %session, "video input: {e}");
                        None
                    }
                }
            }
            TrackKind::Video(_) => None,
        }
    }

    async fn leave(&mut self, session: SessionId, reason: &str) -> bool {
        let Some(p) = self.participants.remove(&session) else {
            return false;
        };
        if p.publishes_audio {
            self.audio.remove_source(session).await;
        }
        if p.receives_audio {
            self.audio.remove_listener(session).await;
        }
        self.video.remove(session);
        if let Some(pos) = self.order.iter().position(|s| *s == session) {
            self.order.remove(pos);
            self.tiles.remove(&session);
            self.relayout();
        }
        p.peer.close().await;
        tracing::info!(room = %self.id, %session, reason, "left");
        true
    }

    fn relayout(&mut self) {
        let tiles = grid(
            self.order.len(),
            self.registry.config.video.width,
            self.registry.config.video.height,
        );
        let placed: Vec<(SessionId, Tile)> = self.order.iter().copied().zip(tiles).collect();
        self.tiles = placed.iter().copied().collect();
        self.video.apply_layout(&placed);
    }

    fn request_keyframe(&mut self, codec: VideoCodec) {
        let gate = self
            .gates
            .entry(codec)
            .or_insert_with(|| KeyframeGate::new(KEYFRAME_INTERVAL));
        if gate.handle_request(Instant::now()) {
            self.video.force_keyframe(codec);
        }
    }

    fn poll_keyframes(&mut self) {
        let now = Instant::now();
        for (codec, gate) in self.gates.iter_mut() {
            if gate.poll_force(now) {
                self.video.force_keyframe(*codec);
            }
        }
    }

    fn info(&self) -> RoomInfo {
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
                        tile: self.tiles.get(id).map(|t| (*t).into()),
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
            participants: participants.into_iter().map(|(_, p)| p).collect(),
        }
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
        tracing::info!(room = %self.id, "room closed");
    }
}

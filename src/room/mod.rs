//! The control plane's rooms. A room is an actor ([`actor`]): one task owns its sessions, its
//! video mixer and its audio mixer; everyone else holds a [`RoomHandle`]. The [`RoomRegistry`]
//! maps names to handles, creating a room on its first join; a room removes itself when its
//! last session leaves. Layout and keyframe decisions are pure ([`layout`], [`keyframe`]).

pub mod actor;
pub mod keyframe;
pub mod layout;
pub mod speakers;
pub mod tiers;
pub mod visible;

use crate::config::Config;
use crate::ids::{RoomId, SessionId};
use crate::media::VideoCodec;
use crate::mixer::MixerError;
use crate::output::{OutputError, OutputInfo, OutputRequest, OutputTable};
use crate::rtc::{PeerFactory, RtcError};
use crate::sdp::OfferSummary;
use crate::signal::{CandidateInit, MemberInfo, ServerMessage};
use layout::Tile;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Commands waiting for one room's actor. Senders wait (back-pressure) when it is full.
pub const ROOM_COMMAND_QUEUE: usize = 64;
/// Session events (track started, keyframe requests, peer gone) waiting for the room actor;
/// handlers `try_send`, so a keyframe request is dropped only if the actor is stuck.
pub const SESSION_EVENT_QUEUE: usize = 256;

/// How a session entered: WHIP (publishes what its offer sends) or WHEP (receives only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Whip,
    Whep,
}

/// Who is joining: WHIP participants are anonymous guests; WebSocket participants bring a
/// name, a session id given to them beforehand, and a channel for room events.
#[derive(Debug, Clone)]
pub struct JoinOptions {
    pub id: SessionId,
    pub name: String,
    pub events: Option<mpsc::Sender<ServerMessage>>,
    /// The `mixdown` data channel of a WHIP or WHEP client whose offer has one (its room
    /// messages then go there; `events` is its other end).
    pub data: Option<DataSlot>,
    /// The best ladder rung this receiver may get (0, the canvas, when unset): a data saver,
    /// and how the benchmarks hold receivers on a tier.
    pub max_tier: usize,
    /// Not announced to the room nor counted as a viewer (the token's `hidden` grant).
    pub hidden: bool,
    /// The client address's share, held as long as the session lives.
    pub slot: Option<Arc<crate::limits::Slot>>,
}

/// A data channel's transport ends, handed over once: a join retried in a fresh room (the
/// first was closing) still finds them.
#[derive(Debug, Clone)]
pub struct DataSlot(Arc<std::sync::Mutex<Option<crate::rtc::DataPipe>>>);

impl DataSlot {
    pub fn new(pipe: crate::rtc::DataPipe) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(pipe))))
    }

    pub fn take(&self) -> Option<crate::rtc::DataPipe> {
        self.0.lock().ok()?.take()
    }
}

impl JoinOptions {
    /// An anonymous participant ("Guest 1a2b").
    pub fn guest() -> Self {
        let id = SessionId::random();
        let name = format!("Guest {}", &id.to_string()[12..]);
        Self {
            id,
            name,
            events: None,
            data: None,
            max_tier: 0,
            hidden: false,
            slot: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct JoinAnswer {
    pub session: SessionId,
    pub sdp: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ParticipantInfo {
    pub session: String,
    pub role: Role,
    pub publishes_audio: bool,
    pub publishes_video: bool,
    pub video_started: bool,
    pub receives_video: Option<VideoCodec>,
    pub receives_audio: bool,
    /// The codec its audio mix is sent in.
    pub audio_codec: Option<crate::media::AudioCodec>,
    /// Sections of its offer the answer refused, and why.
    pub refused: Vec<crate::sdp::Refused>,
    pub name: String,
    /// The participant's tile in the composite, `[x, y, w, h]` in pixels (none while hidden).
    pub tile: Option<[u32; 4]>,
    /// On screen (at most `video.max_tiles` publishers are).
    pub visible: bool,
    pub speaking: bool,
    /// Its voice is in the audio mix (at most `audio.max_speakers` are).
    pub in_mix: bool,
    /// What its video is asked to stay under (REMB), kbit/s: a trickle off screen, what its
    /// tile needs on screen.
    pub publish_cap_kbps: Option<u32>,
    /// Its video packets so far, once its video has started.
    pub video_packets: Option<VideoPackets>,
    /// What this receiver's link carries and which tier of the composite it gets.
    pub quality: Option<QualityInfo>,
    /// The server's side of `getStats` for this session.
    pub stats: ParticipantStats,
}

/// One session's figures as the server sees them (`GET
/// /api/rooms/{room}/participants/{id}/stats`): `None` where there is nothing to measure yet.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ParticipantStats {
    /// Media received from it and sent to it over the last second, kbit/s.
    pub received_kbps: Option<u32>,
    pub sent_kbps: Option<u32>,
    /// Loss, round trip and jitter of what we send, from its reports.
    pub loss_percent: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Pictures of its video the server decoded per second (over about the last second).
    pub decode_fps: Option<f64>,
    /// The composite tier it receives (0 is the canvas; `None`: no video, or audio only).
    pub tier: Option<usize>,
}

/// A receiver's quality: its rung of the encoder ladder and its link, as the transport
/// measures it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QualityInfo {
    /// `"720p"`, `"360p"`, … or `"audio only"`.
    pub label: String,
    /// The ladder rung (0 is the canvas); `None` when only audio fits.
    pub tier: Option<usize>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub framerate: Option<u32>,
    pub video_kbps: Option<u32>,
    /// The link estimate, kbit/s (`None` before the first report).
    pub link_kbps: Option<u32>,
    pub delivered_kbps: Option<u32>,
    /// Loss the receiver reports, percent.
    pub loss_percent: Option<f64>,
    pub rtt_ms: Option<f64>,
    pub queue_ms: Option<f64>,
}

/// One running composite encode.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EncodeInfo {
    pub codec: VideoCodec,
    pub tier: usize,
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    pub kbps: u32,
    /// Receivers of this encode now.
    pub receivers: usize,
    /// Why it runs (which receivers need it, or that only outputs do).
    pub reason: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomInfo {
    pub room: String,
    pub width: u32,
    pub height: u32,
    pub encoders: Vec<VideoCodec>,
    /// Every composite encode running, by codec and tier.
    pub encodes: Vec<EncodeInfo>,
    /// Video decoders running (one per visible publisher whose video has started).
    pub video_decoders: usize,
    /// Audio sources being decoded (those in the mix, fading out, or sending no level).
    pub audio_decoders: usize,
    pub layout: LayoutInfo,
    pub participants: Vec<ParticipantInfo>,
}

/// The room's layout as `GET`/`PUT /api/rooms/{room}/layout` show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LayoutInfo {
    /// `"mode": "grid" | "speaker" | "custom"` (with `"regions"` for custom).
    #[serde(flatten)]
    pub mode: layout::LayoutMode,
    /// Pinned participants' session ids, in pin order.
    pub pin: Vec<String>,
    pub max_tiles: usize,
    /// Who speaker mode shows large (the first pin, else the active speaker).
    pub featured: Option<String>,
    /// Every tile, in fractions of the canvas, top to bottom and left to right.
    pub tiles: Vec<crate::signal::TileInfo>,
}

impl LayoutInfo {
    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            layout::LayoutMode::Grid => "grid",
            layout::LayoutMode::Speaker => "speaker",
            layout::LayoutMode::Custom { .. } => "custom",
        }
    }
}

/// A publisher's video packets: how many reached a decoder, and how many were dropped before
/// one (while it was not visible).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct VideoPackets {
    pub decoded: u64,
    pub dropped: u64,
    /// Bytes received (decoded or not): what the publisher sends.
    pub bytes: u64,
}

impl From<Tile> for [u32; 4] {
    fn from(t: Tile) -> Self {
        [t.x, t.y, t.w, t.h]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    #[error("room {room} is full ({max} sessions)")]
    Full { room: RoomId, max: usize },
    #[error("no session {session} in room {room}")]
    UnknownSession { room: RoomId, session: String },
    #[error("room {room} has as many viewers as it takes ({max})")]
    TooManyViewers { room: RoomId, max: usize },
    #[error("the server has as many rooms open as it takes ({0})")]
    TooManyRooms(usize),
    #[error("the server is shutting down; join again in {0} s")]
    Draining(u32),
    #[error("room {0} is not open: it opens when its first participant joins")]
    NotOpen(RoomId),
    #[error("room {0} has closed")]
    Closed(RoomId),
    #[error("{0}")]
    BadLayout(String),
    #[error("the offer neither sends nor receives media Mixdown handles")]
    NothingToDo,
    #[error(transparent)]
    Rtc(#[from] RtcError),
    #[error(transparent)]
    Mixer(#[from] MixerError),
    #[error("audio mixer: {0}")]
    Audio(#[from] crate::mixer::audio::AudioError),
}

pub(crate) enum RoomCommand {
    Join {
        role: Role,
        offer: String,
        summary: OfferSummary,
        options: JoinOptions,
        reply: oneshot::Sender<Result<JoinAnswer, RoomError>>,
    },
    /// A new offer from a participant: answered on a fresh peer connection, same identity.
    Renegotiate {
        session: SessionId,
        offer: String,
        summary: OfferSummary,
        reply: oneshot::Sender<Result<String, RoomError>>,
    },
    AddCandidate {
        session: SessionId,
        candidate: CandidateInit,
        reply: oneshot::Sender<Result<(), RoomError>>,
    },
    Mute {
        session: SessionId,
        audio: Option<bool>,
        video: Option<bool>,
    },
    Chat {
        session: SessionId,
        text: String,
    },
    Members {
        reply: oneshot::Sender<Vec<MemberInfo>>,
    },
    Leave {
        session: SessionId,
        reply: oneshot::Sender<bool>,
    },
    Info {
        reply: oneshot::Sender<RoomInfo>,
    },
    StartOutput {
        request: OutputRequest,
        reply: oneshot::Sender<Result<OutputInfo, OutputError>>,
    },
    GetLayout {
        reply: oneshot::Sender<LayoutInfo>,
    },
    /// A new layout mode and/or pins (each checked; a refused request changes nothing).
    SetLayout {
        mode: Option<layout::LayoutMode>,
        pin: Option<Vec<String>>,
        reply: oneshot::Sender<Result<LayoutInfo, RoomError>>,
    },
    Shutdown,
    /// Test hook: the actor panics (to show a failing room closes cleanly, alone).
    Panic,
}

/// A cloneable address of one room's actor.
#[derive(Clone)]
pub struct RoomHandle {
    id: RoomId,
    generation: u64,
    tx: mpsc::Sender<RoomCommand>,
}

impl RoomHandle {
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> RoomCommand,
    ) -> Result<T, RoomError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RoomError::Closed(self.id.clone()))?;
        rx.await.map_err(|_| RoomError::Closed(self.id.clone()))
    }

    pub async fn info(&self) -> Result<RoomInfo, RoomError> {
        self.request(|reply| RoomCommand::Info { reply }).await
    }

    pub async fn layout(&self) -> Result<LayoutInfo, RoomError> {
        self.request(|reply| RoomCommand::GetLayout { reply }).await
    }

    pub async fn set_layout(
        &self,
        mode: Option<layout::LayoutMode>,
        pin: Option<Vec<String>>,
    ) -> Result<LayoutInfo, RoomError> {
        self.request(|reply| RoomCommand::SetLayout { mode, pin, reply })
            .await?
    }
}

/// Shared by the registry and its rooms; a room removes its own entry when it closes.
pub(crate) struct RegistryInner {
    pub(crate) config: Config,
    pub(crate) peers: PeerFactory,
    pub(crate) rooms: Mutex<HashMap<RoomId, RoomHandle>>,
    pub(crate) outputs: OutputTable,
    generation: AtomicU64,
    /// Room actors still running (teardown included): zero once every room is fully gone.
    pub(crate) live_actors: AtomicUsize,
    pub(crate) counters: crate::limits::Counters,
    pub(crate) addresses: Arc<crate::limits::AddressSlots>,
    /// The runtime rooms (and so their sessions and outputs) run on: the one the registry
    /// was made on, not the HTTP runtime a join arrives from.
    pub(crate) media: tokio::runtime::Handle,
    /// Set on SIGTERM: joins are refused while the sessions in progress finish.
    draining: tokio::sync::watch::Sender<bool>,
}

impl RegistryInner {
    fn rooms(&self) -> std::sync::MutexGuard<'_, HashMap<RoomId, RoomHandle>> {
        // Only inserts and removes happen under this lock; a poisoned map is still consistent.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn forget(&self, id: &RoomId, generation: u64) {
        let mut rooms = self.rooms();
        if rooms.get(id).is_some_and(|h| h.generation == generation) {
            rooms.remove(id);
        }
    }
}

#[derive(Clone)]
pub struct RoomRegistry {
    inner: Arc<RegistryInner>,
}

impl RoomRegistry {
    pub fn new(config: Config, peers: PeerFactory) -> Self {
        Self {
            inner: Arc::new(RegistryInner {
                peers,
                rooms: Mutex::new(HashMap::new()),
                outputs: OutputTable::default(),
                generation: AtomicU64::new(1),
                live_actors: AtomicUsize::new(0),
                counters: crate::limits::Counters::default(),
                addresses: crate::limits::AddressSlots::new(config.limits.sessions_per_address),
                media: tokio::runtime::Handle::current(),
                draining: tokio::sync::watch::Sender::new(false),
                config,
            }),
        }
    }

    /// The room's handle, opening it when `create` allows and the server has room for it.
    fn get_or_create(&self, id: &RoomId, create: bool) -> Result<RoomHandle, RoomError> {
        let mut rooms = self.inner.rooms();
        if let Some(h) = rooms.get(id) {
            return Ok(h.clone());
        }
        if !create {
            return Err(RoomError::NotOpen(id.clone()));
        }
        let max = self.inner.config.limits.max_rooms;
        if rooms.len() >= max {
            crate::limits::Counters::bump(&self.inner.counters.rooms);
            return Err(RoomError::TooManyRooms(max));
        }
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed);
        let handle = actor::spawn(id.clone(), generation, Arc::clone(&self.inner));
        rooms.insert(id.clone(), handle.clone());
        Ok(handle)
    }

    pub fn get(&self, id: &RoomId) -> Option<RoomHandle> {
        self.inner.rooms().get(id).cloned()
    }

    /// What the open room `id` reports now; `None` when it is not open (or closes as it is
    /// asked).
    pub async fn room_info(&self, id: &RoomId) -> Option<RoomInfo> {
        self.get(id)?.info().await.ok()
    }

    /// What every open room reports now (rooms closing as they are asked are left out).
    pub async fn room_infos(&self) -> Vec<RoomInfo> {
        let handles: Vec<RoomHandle> = self.inner.rooms().values().cloned().collect();
        let mut infos = Vec::with_capacity(handles.len());
        for h in handles {
            if let Ok(info) = h.info().await {
                infos.push(info);
            }
        }
        infos
    }

    /// Starts a graceful shutdown: from now on joins are refused ([`RoomError::Draining`])
    /// and every [`draining`](Self::draining) watcher is told.
    pub fn begin_drain(&self) {
        self.inner.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Turns true when a graceful shutdown starts.
    pub fn draining(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.draining.subscribe()
    }

    /// How long clients are told to wait before joining again while draining: the drain
    /// time and a little for the restart.
    pub fn retry_after_s(&self) -> u32 {
        self.inner.config.server.drain_s + 5
    }

    /// Joins, opening the room if `create` (a viewer's join does not open a room unless its
    /// token may). A room that closed between lookup and join is replaced by a new one.
    pub async fn join(
        &self,
        room: &RoomId,
        role: Role,
        offer: String,
        summary: OfferSummary,
        options: JoinOptions,
        create: bool,
    ) -> Result<JoinAnswer, RoomError> {
        if self.is_draining() {
            return Err(RoomError::Draining(self.retry_after_s()));
        }
        for _ in 0..3 {
            let handle = self.get_or_create(room, create)?;
            let result = handle
                .request(|reply| RoomCommand::Join {
                    role,
                    offer: offer.clone(),
                    summary: summary.clone(),
                    options: options.clone(),
                    reply,
                })
                .await;
            match result {
                // The room was closing: it dropped the request, or it answered from its
                // drain (its last participant left as this join arrived). Either way the join
                // belongs in a fresh room, not in an error.
                Err(RoomError::Closed(_)) | Ok(Err(RoomError::Closed(_))) => {
                    self.inner.forget(room, handle.generation);
                    continue;
                }
                Ok(r) => return r,
                Err(e) => return Err(e),
            }
        }
        Err(RoomError::Closed(room.clone()))
    }

    pub async fn leave(&self, room: &RoomId, session: SessionId) -> Result<(), RoomError> {
        let unknown = || RoomError::UnknownSession {
            room: room.clone(),
            session: session.to_string(),
        };
        let handle = self.get(room).ok_or_else(unknown)?;
        match handle
            .request(|reply| RoomCommand::Leave { session, reply })
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) | Err(RoomError::Closed(_)) => Err(unknown()),
            Err(e) => Err(e),
        }
    }

    /// Starts a recording or stream in an open room.
    pub async fn start_output(
        &self,
        room: &RoomId,
        request: OutputRequest,
    ) -> Result<OutputInfo, OutputError> {
        let closed = || {
            OutputError::NotFound(format!(
                "no room {room}: a room exists while someone is in it"
            ))
        };
        let handle = self.get(room).ok_or_else(closed)?;
        match handle
            .request(|reply| RoomCommand::StartOutput { request, reply })
            .await
        {
            Ok(r) => r,
            Err(_) => Err(closed()),
        }
    }

    /// Status of every output, running or finished.
    pub fn outputs(&self) -> &OutputTable {
        &self.inner.outputs
    }

    fn open(&self, room: &RoomId, session: SessionId) -> Result<RoomHandle, RoomError> {
        self.get(room).ok_or_else(|| RoomError::UnknownSession {
            room: room.clone(),
            session: session.to_string(),
        })
    }

    /// Answers a participant's new offer (renegotiation) on a fresh peer connection.
    pub async fn renegotiate(
        &self,
        room: &RoomId,
        session: SessionId,
        offer: String,
        summary: OfferSummary,
    ) -> Result<String, RoomError> {
        self.open(room, session)?
            .request(|reply| RoomCommand::Renegotiate {
                session,
                offer,
                summary,
                reply,
            })
            .await?
    }

    pub async fn add_candidate(
        &self,
        room: &RoomId,
        session: SessionId,
        candidate: CandidateInit,
    ) -> Result<(), RoomError> {
        self.open(room, session)?
            .request(|reply| RoomCommand::AddCandidate {
                session,
                candidate,
                reply,
            })
            .await?
    }

    /// Fire-and-forget commands from a participant (mute, chat).
    async fn tell(
        &self,
        room: &RoomId,
        session: SessionId,
        cmd: RoomCommand,
    ) -> Result<(), RoomError> {
        self.open(room, session)?
            .tx
            .send(cmd)
            .await
            .map_err(|_| RoomError::Closed(room.clone()))
    }

    pub async fn mute(
        &self,
        room: &RoomId,
        session: SessionId,
        audio: Option<bool>,
        video: Option<bool>,
    ) -> Result<(), RoomError> {
        self.tell(
            room,
            session,
            RoomCommand::Mute {
                session,
                audio,
                video,
            },
        )
        .await
    }

    pub async fn chat(
        &self,
        room: &RoomId,
        session: SessionId,
        text: String,
    ) -> Result<(), RoomError> {
        self.tell(room, session, RoomCommand::Chat { session, text })
            .await
    }

    /// The room's participants, as clients see them (empty if the room is not open).
    pub async fn members(&self, room: &RoomId) -> Vec<MemberInfo> {
        match self.get(room) {
            Some(h) => h
                .request(|reply| RoomCommand::Members { reply })
                .await
                .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// How often each limit refused something.
    pub fn counters(&self) -> &crate::limits::Counters {
        &self.inner.counters
    }

    /// A share of `addr`'s sessions, or `None` when it holds `limits.sessions_per_address`.
    pub fn address_slot(&self, addr: std::net::IpAddr) -> Option<Arc<crate::limits::Slot>> {
        let slot = self.inner.addresses.take(addr).map(Arc::new);
        if slot.is_none() {
            crate::limits::Counters::bump(&self.inner.counters.sessions_per_address);
        }
        slot
    }

    /// Open rooms' names, sorted.
    pub fn room_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.inner.rooms().keys().map(|r| r.to_string()).collect();
        v.sort();
        v
    }

    pub fn room_count(&self) -> usize {
        self.inner.rooms().len()
    }

    /// Makes a room's actor panic: a test hook for the blast radius of a failing room (it
    /// closes cleanly and alone). Not reachable from the network.
    #[doc(hidden)]
    pub async fn inject_panic(&self, room: &RoomId) -> bool {
        match self.get(room) {
            Some(h) => h.tx.send(RoomCommand::Panic).await.is_ok(),
            None => false,
        }
    }

    /// Room actors still running, teardown included.
    pub fn live_rooms(&self) -> usize {
        self.inner.live_actors.load(Ordering::SeqCst)
    }

    pub fn peers(&self) -> &PeerFactory {
        &self.inner.peers
    }

    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Closes every room (sessions closed, pipelines to `Null`) and waits for the actors.
    pub async fn shutdown(&self) {
        let handles: Vec<RoomHandle> = self.inner.rooms().values().cloned().collect();
        for h in handles {
            let _ = h.tx.send(RoomCommand::Shutdown).await;
        }
        // Rooms finalise their recordings before they end (up to a few seconds each).
        for _ in 0..600 {
            if self.live_rooms() == 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        tracing::warn!("some rooms did not finish closing in time");
    }
}

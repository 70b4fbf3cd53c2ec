//! Composite outputs: recordings (WebM, Matroska, fragmented MP4), HLS and RTMP. Each output
//! is a task that takes the room's own encoded frames (the composite encoder of the codec it
//! needs, the Opus mix, or the room's one AAC encoder), stamps them on a shared
//! [`timeline::Timeline`] and pushes them into its own muxing pipeline ([`pipeline`]).
//!
//! An output never slows the room: it reads broadcast channels and bounded queues, and drops
//! (and counts) what it cannot write in time. Its status lives in the [`OutputTable`], which
//! outlives the room, so a finished recording is still listed after everyone has left.
//!
//! An RTMP destination is parsed, redacted and checked against the address policy in
//! [`destination`] before its output starts; a caller never sees GStreamer's own words about it.

pub mod aac;
pub mod destination;
pub mod pipeline;
pub mod spec;
pub mod storage;
pub mod task;
pub mod timeline;

use crate::ids::{RoomId, SessionId};
use spec::RecordFormat;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

pub const RECORD_WEBM: &str = include_str!("../../pipelines/record-webm.gst");
pub const RECORD_MKV_VP8: &str = include_str!("../../pipelines/record-mkv-vp8.gst");
pub const RECORD_MKV_H264: &str = include_str!("../../pipelines/record-mkv-h264.gst");
pub const RECORD_MP4: &str = include_str!("../../pipelines/record-mp4.gst");
pub const HLS: &str = include_str!("../../pipelines/hls.gst");
pub const RTMP: &str = include_str!("../../pipelines/rtmp.gst");

/// Every output fragment, for the start-up check and the test that parses them all.
pub const FRAGMENTS: [(&str, &str); 7] = [
    ("record-webm", RECORD_WEBM),
    ("record-mkv-vp8", RECORD_MKV_VP8),
    ("record-mkv-h264", RECORD_MKV_H264),
    ("record-mp4", RECORD_MP4),
    ("hls", HLS),
    ("rtmp", RTMP),
    ("aac-encoder", aac::AAC_ENCODER),
];

/// Finished outputs remembered for the API; the oldest are forgotten beyond this.
const FINISHED_KEPT: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("cannot write {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("output pipeline: {0}")]
    Pipeline(String),
    #[error("the room has closed")]
    RoomClosed,
    /// `recording.quota_mb` reached.
    #[error("{0}")]
    Quota(String),
}

impl From<crate::mixer::MixerError> for OutputError {
    fn from(e: crate::mixer::MixerError) -> Self {
        OutputError::Pipeline(e.to_string())
    }
}

impl From<crate::mixer::audio::AudioError> for OutputError {
    fn from(e: crate::mixer::audio::AudioError) -> Self {
        OutputError::Pipeline(e.to_string())
    }
}

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputRequest {
    Recording {
        format: RecordFormat,
        name: Option<String>,
    },
    Hls,
    Rtmp {
        url: String,
    },
}

impl OutputRequest {
    pub fn kind(&self) -> OutputKind {
        match self {
            OutputRequest::Recording { .. } => OutputKind::Recording,
            OutputRequest::Hls | OutputRequest::Rtmp { .. } => OutputKind::Stream,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    Recording,
    Stream,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputState {
    /// Waiting for the first keyframe (or, for RTMP, connecting).
    Starting,
    Recording,
    Paused,
    /// A stream that is being sent.
    Live,
    /// RTMP lost its server and tries again (see `error` and `retry_in_s`).
    Retrying,
    Finished,
    Failed,
}

/// The API's view of one output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputInfo {
    pub id: String,
    pub room: String,
    #[serde(skip)]
    pub kind: OutputKind,
    /// `webm`, `mkv`, `mp4`, `hls` or `rtmp`.
    pub format: String,
    pub state: OutputState,
    /// Start time, RFC 3339 UTC.
    pub started: String,
    /// Media time written (a recording's duration; paused stretches excluded).
    pub duration_s: f64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// RTMP destination (stream key hidden by [`destination::redact`]) or HLS playlist URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Frames dropped because the destination could not keep up.
    pub dropped_frames: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_in_s: Option<u64>,
}

/// Commands to a running output task; each is answered with the output's new status.
pub enum Control {
    Pause(oneshot::Sender<Result<OutputInfo, OutputError>>),
    Resume(oneshot::Sender<Result<OutputInfo, OutputError>>),
    Stop(oneshot::Sender<Result<OutputInfo, OutputError>>),
}

struct Entry {
    room: RoomId,
    info: OutputInfo,
    control: Option<mpsc::Sender<Control>>,
}

/// Status of every output this process ran, shared by the output tasks (which update their
/// own entry) and the HTTP handlers (which read it and find a task's control channel).
#[derive(Clone, Default)]
pub struct OutputTable {
    inner: Arc<Mutex<TableInner>>,
}

#[derive(Default)]
struct TableInner {
    entries: HashMap<SessionId, Entry>,
    finished: std::collections::VecDeque<SessionId>,
}

impl OutputTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableInner> {
        // Every update leaves an entry whole; a poisoned table is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(
        &self,
        id: SessionId,
        room: RoomId,
        info: OutputInfo,
        control: mpsc::Sender<Control>,
    ) {
        self.lock().entries.insert(
            id,
            Entry {
                room,
                info,
                control: Some(control),
            },
        );
    }

    pub(crate) fn update(
        &self,
        id: SessionId,
        f: impl FnOnce(&mut OutputInfo),
    ) -> Option<OutputInfo> {
        let mut t = self.lock();
        let entry = t.entries.get_mut(&id)?;
        f(&mut entry.info);
        let info = entry.info.clone();
        if matches!(info.state, OutputState::Finished | OutputState::Failed)
            && entry.control.take().is_some()
        {
            t.finished.push_back(id);
            while t.finished.len() > FINISHED_KEPT {
                if let Some(old) = t.finished.pop_front() {
                    t.entries.remove(&old);
                }
            }
        }
        Some(info)
    }

    /// Outputs of `room` of one kind, oldest first.
    pub fn list(&self, room: &RoomId, kind: OutputKind) -> Vec<OutputInfo> {
        let t = self.lock();
        let mut v: Vec<OutputInfo> = t
            .entries
            .values()
            .filter(|e| &e.room == room && e.info.kind == kind)
            .map(|e| e.info.clone())
            .collect();
        v.sort_by(|a, b| a.started.cmp(&b.started).then(a.id.cmp(&b.id)));
        v
    }

    /// Every output of every room (for metrics).
    pub fn all(&self) -> Vec<OutputInfo> {
        self.lock()
            .entries
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    pub fn get(&self, room: &RoomId, kind: OutputKind, id: &str) -> Option<OutputInfo> {
        let id = SessionId::parse(id)?;
        let t = self.lock();
        t.entries
            .get(&id)
            .filter(|e| &e.room == room && e.info.kind == kind)
            .map(|e| e.info.clone())
    }

    /// Sends a command to a running output and waits for its answer. A finished output
    /// answers 409, an unknown one 404.
    pub async fn control(
        &self,
        room: &RoomId,
        kind: OutputKind,
        id: &str,
        make: impl FnOnce(oneshot::Sender<Result<OutputInfo, OutputError>>) -> Control,
    ) -> Result<OutputInfo, OutputError> {
        let what = match kind {
            OutputKind::Recording => "recording",
            OutputKind::Stream => "stream",
        };
        let unknown = || OutputError::NotFound(format!("no {what} {id} in room {room}"));
        let info = self.get(room, kind, id).ok_or_else(unknown)?;
        let control = SessionId::parse(id).and_then(|sid| {
            self.lock()
                .entries
                .get(&sid)
                .and_then(|e| e.control.clone())
        });
        let finished = || {
            OutputError::Conflict(format!(
                "{} {id} has already {}",
                info.format,
                match info.state {
                    OutputState::Failed => "failed",
                    _ => "finished",
                }
            ))
        };
        let control = control.ok_or_else(finished)?;
        let (reply, rx) = oneshot::channel();
        control.send(make(reply)).await.map_err(|_| finished())?;
        rx.await.map_err(|_| finished())?
    }

    /// Whether any output of `room` is remembered.
    pub fn knows_room(&self, room: &RoomId) -> bool {
        self.lock().entries.values().any(|e| &e.room == room)
    }
}

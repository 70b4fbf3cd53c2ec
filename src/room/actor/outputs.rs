//! The room actor's side of outputs: it validates the destination, subscribes the output to
//! the room's encoders (starting the shared AAC encoder when the first output needs it), starts
//! the output's task, and releases those inputs when the task ends.

use super::Room;
use crate::ids::SessionId;
use crate::media::{AudioCodec, VideoCodec};
use crate::output::aac::{AacEncoder, aac_caps, opus_caps};
use crate::output::destination::{self, RTMP_UNREACHABLE, RtmpUrl};
use crate::output::pipeline::{BusEvents, OutputPipeline};
use crate::output::spec::{RecordFormat, check_name, default_name, rfc3339};
use crate::output::task::{AudioInput, Builder, Destination, OutputTask};
use crate::output::{
    self, Control, OutputError, OutputInfo, OutputKind, OutputRequest, OutputState,
};
use crate::signal::ServerMessage;
use gstreamer as gst;
use gstreamer::prelude::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Outputs whose end the actor has not yet processed (bounded by [`MAX_OUTPUTS`]).
pub(super) const ENDED_QUEUE: usize = 64;
/// Recordings and streams running at once in one room.
const MAX_OUTPUTS: usize = 16;
/// How long a closing room waits for its outputs to finalise.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands queued for one output task.
const CONTROL_QUEUE: usize = 8;

pub(super) struct RunningOutput {
    control: mpsc::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    uses_aac: bool,
    hls: bool,
    /// `recording`, or the stream's kind (`hls`, `rtmp`): what participants are told.
    pub(super) what: &'static str,
}

fn storage(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Storage {
        path: path.display().to_string(),
        source,
    }
}

fn video_caps(codec: VideoCodec, width: u32, height: u32, framerate: u32) -> gst::Caps {
    let b = match codec {
        VideoCodec::Vp8 => gst::Caps::builder("video/x-vp8"),
        VideoCodec::Vp9 => gst::Caps::builder("video/x-vp9").field("profile", "0"),
        VideoCodec::H264 => gst::Caps::builder("video/x-h264")
            .field("stream-format", "byte-stream")
            .field("alignment", "au"),
    };
    b.field("width", width as i32)
        .field("height", height as i32)
        .field("framerate", gst::Fraction::new(framerate as i32, 1))
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .build()
}

/// Space a new recording must be able to write at once, so that a full disk is refused at
/// the start (507) rather than failing a moment later.
const SPACE_PROBE: usize = 256 * 1024;

fn probe_space(mut file: std::fs::File) -> std::io::Result<()> {
    use std::io::Write;
    file.write_all(&vec![0; SPACE_PROBE])?;
    file.sync_data()?;
    file.set_len(0)
}

/// Removes what an earlier HLS run left in `dir` (playlists and segments only).
fn clear_hls_dir(dir: &Path) -> Result<(), OutputError> {
    std::fs::create_dir_all(dir).map_err(storage(dir))?;
    for entry in std::fs::read_dir(dir).map_err(storage(dir))?.flatten() {
        let p = entry.path();
        if p.extension().is_some_and(|e| e == "ts" || e == "m3u8") {
            std::fs::remove_file(&p).map_err(storage(&p))?;
        }
    }
    Ok(())
}

impl Room {
    pub(super) async fn auto_start_outputs(&mut self) {
        let c = &self.registry.config;
        let mut wanted = Vec::new();
        if let Some(format) = c.recording.auto_format {
            wanted.push(OutputRequest::Recording { format, name: None });
        }
        if c.hls.auto {
            wanted.push(OutputRequest::Hls);
        }
        for request in wanted {
            if let Err(e) = self.start_output(request).await {
                tracing::error!(room = %self.id, "automatic output failed to start: {e}");
            }
        }
    }

    pub(super) async fn start_output(
        &mut self,
        request: OutputRequest,
    ) -> Result<OutputInfo, OutputError> {
        if self.outputs.len() >= MAX_OUTPUTS {
            return Err(OutputError::Conflict(format!(
                "room {} already has {MAX_OUTPUTS} recordings and streams",
                self.id
            )));
        }
        let config = self.registry.config.clone();
        let v = &config.video;
        let id = SessionId::random();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let short_id = id.to_string()[..8].to_owned();
        let active = self.video.active_codecs();
        // (format name, video codec, AAC?, destination, fragment, sink setup, path, url)
        let (format, codec, aac, destination, description, path, url): (
            String,
            VideoCodec,
            bool,
            Destination,
            &'static str,
            Option<PathBuf>,
            Option<String>,
        ) = match &request {
            OutputRequest::Recording { format, name } => {
                let name = match name {
                    Some(n) => check_name(n).map_err(OutputError::BadRequest)?.to_owned(),
                    None => default_name(self.id.as_str(), now, &short_id),
                };
                let codec = format.video_codec(&active, &v.send_codecs);
                let dir = &config.recording.dir;
                std::fs::create_dir_all(dir).map_err(storage(dir))?;
                let quota = config.recording.quota_mb * 1_000_000;
                let held = crate::output::storage::usage(dir);
                if quota > 0 && held >= quota {
                    return Err(OutputError::Quota(format!(
                        "the recordings directory holds {} MB, recording.quota_mb is {}",
                        held / 1_000_000,
                        config.recording.quota_mb
                    )));
                }
                let path = dir.join(format!("{name}.{}", format.extension()));
                // Never overwrite a recording: the name must be new.
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => OutputError::Conflict(format!(
                            "a recording named {name}.{} already exists",
                            format.extension()
                        )),
                        _ => storage(&path)(e),
                    })?;
                if let Err(e) = probe_space(file) {
                    let _ = std::fs::remove_file(&path);
                    return Err(storage(&path)(e));
                }
                let description = match (format, codec) {
                    (RecordFormat::Webm, _) => output::RECORD_WEBM,
                    // Matroska takes VP9 frames as they are, like VP8's.
                    (RecordFormat::Mkv, VideoCodec::Vp8 | VideoCodec::Vp9) => {
                        output::RECORD_MKV_VP8
                    }
                    (RecordFormat::Mkv, VideoCodec::H264) => output::RECORD_MKV_H264,
                    (RecordFormat::Mp4, _) => output::RECORD_MP4,
                };
                (
                    format.to_string(),
                    codec,
                    format.aac(),
                    Destination::File { path: path.clone() },
                    description,
                    Some(path),
                    None,
                )
            }
            OutputRequest::Hls => {
                if self.outputs.values().any(|o| o.hls) {
                    return Err(OutputError::Conflict(format!(
                        "room {} already has an HLS stream",
                        self.id
                    )));
                }
                let dir = config.hls.dir.join(self.id.as_str());
                clear_hls_dir(&dir)?;
                (
                    "hls".into(),
                    VideoCodec::H264,
                    true,
                    Destination::Hls {
                        segment: Duration::from_secs(config.hls.segment_s.into()),
                    },
                    output::HLS,
                    Some(dir),
                    Some(format!("/hls/{}/index.m3u8", self.id)),
                )
            }
            OutputRequest::Rtmp { url } => {
                // The HTTP edge has checked the address policy (it resolves the host, which
                // the actor must not wait for); the shape is checked again here.
                RtmpUrl::parse(url).map_err(OutputError::BadRequest)?;
                (
                    "rtmp".into(),
                    VideoCodec::H264,
                    true,
                    Destination::Rtmp {
                        max_retry: Duration::from_secs(config.rtmp.max_retry_s.into()),
                        url: url.clone(),
                    },
                    output::RTMP,
                    None,
                    Some(destination::redact(url)),
                )
            }
        };
        let vcaps = video_caps(codec, v.width, v.height, v.framerate);
        let acaps = if aac { aac_caps() } else { opus_caps() };
        let name = format!("output-{}-{id}", self.id);
        let sink_target = match &request {
            OutputRequest::Rtmp { url } => url.clone(),
            _ => path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        };
        let hls = (config.hls.segment_s, config.hls.playlist_length);
        let kind = request.kind();
        let is_hls = matches!(request, OutputRequest::Hls);
        let build: Builder = Box::new(move || {
            OutputPipeline::build(&name, description, vcaps.clone(), acaps.clone(), |sink| {
                match (kind, is_hls) {
                    (OutputKind::Recording, _) => sink.set_property("location", &sink_target),
                    (OutputKind::Stream, true) => {
                        let dir = Path::new(&sink_target);
                        sink.set_property(
                            "location",
                            dir.join("segment%05d.ts").display().to_string(),
                        );
                        sink.set_property(
                            "playlist-location",
                            dir.join("index.m3u8").display().to_string(),
                        );
                        sink.set_property("target-duration", hls.0);
                        sink.set_property("playlist-length", hls.1);
                        sink.set_property("max-files", hls.1 + 3);
                    }
                    (OutputKind::Stream, false) => sink.set_property("location", &sink_target),
                }
                Ok(())
            })
        });
        let first: (OutputPipeline, BusEvents) = build()?;
        if let Err(e) = first.0.start() {
            if let Some(p) = path.as_ref().filter(|_| kind == OutputKind::Recording) {
                let _ = std::fs::remove_file(p);
            }
            if let OutputRequest::Rtmp { url } = &request {
                // GStreamer's words could tell an open port from a closed one.
                tracing::debug!(
                    room = %self.id,
                    url = %destination::redact(url),
                    "RTMP output would not start: {}",
                    destination::scrub(&e.to_string(), url)
                );
                return Err(OutputError::Pipeline(RTMP_UNREACHABLE.into()));
            }
            return Err(e);
        }
        // Inputs: the composite in the codec this output writes, and the mix.
        // Outputs record the canvas: the top tier.
        let video = self.video.subscribe(codec, 0)?;
        let audio = if aac {
            AudioInput::Aac(self.aac_encoder().await?.subscribe())
        } else {
            AudioInput::Opus(self.audio.add_listener(id, AudioCodec::Opus).await?)
        };
        let info = OutputInfo {
            id: id.to_string(),
            room: self.id.to_string(),
            kind,
            format,
            state: OutputState::Starting,
            started: rfc3339(now),
            duration_s: 0.0,
            bytes: 0,
            path: path
                .as_ref()
                .filter(|_| kind == OutputKind::Recording)
                .map(|p| p.display().to_string()),
            url,
            dropped_frames: 0,
            error: None,
            retry_in_s: None,
        };
        let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let table = self.registry.outputs.clone();
        table.insert(id, self.id.clone(), info.clone(), control.clone());
        let task = OutputTask {
            id,
            table,
            codec,
            video,
            audio,
            destination,
            build,
            keyframes: self.events_tx.clone(),
            control: control_rx,
            ended: self.ended_tx.clone(),
            quota: match (&request, config.recording.quota_mb) {
                (OutputRequest::Recording { .. }, mb) if mb > 0 => {
                    Some((config.recording.dir.clone(), mb * 1_000_000))
                }
                _ => None,
            },
        };
        let task = tokio::spawn(task.run(first));
        if aac {
            self.aac_users += 1;
        }
        self.outputs.insert(
            id,
            RunningOutput {
                control,
                task,
                uses_aac: aac,
                hls: is_hls,
                what: match &request {
                    OutputRequest::Recording { .. } => "recording",
                    OutputRequest::Hls => "hls",
                    OutputRequest::Rtmp { .. } => "rtmp",
                },
            },
        );
        self.request_keyframe((codec, 0));
        tracing::info!(
            room = %self.id,
            output = %id,
            format = %info.format,
            path = ?info.path,
            url = ?info.url,
            "output started"
        );
        Ok(info)
    }

    async fn aac_encoder(&mut self) -> Result<&AacEncoder, OutputError> {
        if self.aac.is_none() {
            let listener = SessionId::random();
            let rx = self.audio.add_listener(listener, AudioCodec::Opus).await?;
            match AacEncoder::start(&self.id, rx) {
                Ok(enc) => self.aac = Some((listener, enc)),
                Err(e) => {
                    self.audio.remove_listener(listener).await;
                    return Err(e);
                }
            }
        }
        match &self.aac {
            Some((_, enc)) => Ok(enc),
            None => Err(OutputError::Pipeline("AAC encoder missing".into())),
        }
    }

    /// An output task ended (stopped, failed, or its inputs closed): release its inputs.
    pub(super) async fn output_ended(&mut self, id: SessionId) {
        let Some(o) = self.outputs.remove(&id) else {
            return;
        };
        self.announce_outputs();
        let _ = o.task.await;
        if o.uses_aac {
            self.aac_users = self.aac_users.saturating_sub(1);
            if self.aac_users == 0
                && let Some((listener, enc)) = self.aac.take()
            {
                enc.shutdown().await;
                self.audio.remove_listener(listener).await;
                tracing::info!(room = %self.id, "AAC encoder stopped");
            }
        } else {
            self.audio.remove_listener(id).await;
        }
    }

    /// What participants are told about recordings and streams running: nobody is recorded
    /// or broadcast without knowing.
    pub(super) fn output_messages(&self) -> [ServerMessage; 2] {
        let count = self
            .outputs
            .values()
            .filter(|o| o.what == "recording")
            .count();
        let mut kinds: Vec<String> = self
            .outputs
            .values()
            .filter(|o| o.what != "recording")
            .map(|o| o.what.to_owned())
            .collect();
        kinds.sort();
        kinds.dedup();
        [
            ServerMessage::Recording {
                active: count > 0,
                count,
            },
            ServerMessage::Streaming {
                active: !kinds.is_empty(),
                kinds,
            },
        ]
    }

    pub(super) fn announce_outputs(&self) {
        for m in self.output_messages() {
            self.broadcast(m);
        }
    }

    /// Stops every output and waits for each to finalise its file (room closing).
    pub(super) async fn stop_outputs(&mut self) {
        let outputs: Vec<RunningOutput> = self.outputs.drain().map(|(_, o)| o).collect();
        for o in &outputs {
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = o.control.send(Control::Stop(reply)).await;
        }
        for o in outputs {
            if tokio::time::timeout(CLOSE_TIMEOUT, o.task).await.is_err() {
                tracing::error!(room = %self.id, "an output did not finalise in time");
            }
        }
        if let Some((_, enc)) = self.aac.take() {
            enc.shutdown().await;
        }
    }
}

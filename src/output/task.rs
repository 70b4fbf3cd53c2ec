//! The task that runs one output: reads the room's frames, stamps them, writes them, answers
//! pause/resume/stop, keeps its status in the [`OutputTable`], and retries RTMP with back-off.

use super::destination::{RTMP_UNREACHABLE, redact, scrub};
use super::pipeline::{BusEvent, BusEvents, OutputPipeline, Stream};
use super::timeline::Timeline;
use super::{Control, OutputError, OutputInfo, OutputState, OutputTable};
use crate::ids::SessionId;
use crate::media::{EncodedFrame, VideoCodec};
use crate::rtc::SessionEvent;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc};

/// How often the status is refreshed and keyframes are re-requested.
const TICK: Duration = Duration::from_millis(500);

/// Where the mixed audio comes from.
pub enum AudioInput {
    /// The room's Opus full mix (this output is a listener of the mixer).
    Opus(mpsc::Receiver<EncodedFrame>),
    /// The room's shared AAC encoder.
    Aac(broadcast::Receiver<EncodedFrame>),
}

impl AudioInput {
    async fn recv(&mut self) -> Result<EncodedFrame, RecvError> {
        match self {
            AudioInput::Opus(rx) => rx.recv().await.ok_or(RecvError::Closed),
            AudioInput::Aac(rx) => rx.recv().await,
        }
    }
}

/// How to (re)build the pipeline, and what kind of output it is.
pub enum Destination {
    File {
        path: PathBuf,
    },
    Hls {
        segment: Duration,
    },
    /// `url` is the full destination, stream key included: it only ever reaches GStreamer
    /// and, through [`redact`] and [`scrub`], the log.
    Rtmp {
        max_retry: Duration,
        url: String,
    },
}

/// Builds a fresh pipeline (RTMP rebuilds one per connection attempt).
pub type Builder = Box<dyn Fn() -> Result<(OutputPipeline, BusEvents), OutputError> + Send>;

pub struct OutputTask {
    pub id: SessionId,
    pub table: OutputTable,
    pub codec: VideoCodec,
    pub video: broadcast::Receiver<EncodedFrame>,
    pub audio: AudioInput,
    pub destination: Destination,
    pub build: Builder,
    /// Keyframe requests go to the room like a receiver's PLI.
    pub keyframes: mpsc::Sender<SessionEvent>,
    pub control: mpsc::Receiver<Control>,
    /// Told when the task ends, so the room releases this output's inputs.
    pub ended: mpsc::Sender<SessionId>,
    /// A recording stops when its directory holds this many bytes (`recording.quota_mb`).
    pub quota: Option<(std::path::PathBuf, u64)>,
}

/// How often a recording checks its directory against the quota.
const QUOTA_CHECK: Duration = Duration::from_secs(2);

/// Delay before RTMP connection attempt `attempt` (0-based): 1, 2, 4 … seconds, capped.
pub fn retry_delay(attempt: u32, max: Duration) -> Duration {
    Duration::from_secs(1u64 << attempt.min(16)).min(max)
}

async fn next_event(bus: &mut Option<BusEvents>) -> BusEvent {
    match bus {
        Some(b) => b.next().await,
        None => std::future::pending().await,
    }
}

struct Run {
    timeline: Timeline,
    pipe: Option<OutputPipeline>,
    bus: Option<BusEvents>,
    pushed_bytes: u64,
    dropped: u64,
    last_keyframe_request: Option<Instant>,
    last_periodic: Instant,
    retry_at: Option<Instant>,
    attempt: u32,
    error: Option<String>,
}

impl OutputTask {
    /// Runs until stopped, the room closes, or a file output fails. `first` is the pipeline
    /// the room already started (so start-up errors reach the API).
    pub async fn run(mut self, first: (OutputPipeline, BusEvents)) {
        let mut run = Run {
            timeline: Timeline::new(),
            pipe: Some(first.0),
            bus: Some(first.1),
            pushed_bytes: 0,
            dropped: 0,
            last_keyframe_request: None,
            last_periodic: Instant::now(),
            retry_at: None,
            attempt: 0,
            error: None,
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stop_reply = None;
        let mut failed = false;
        let mut quota_checked = Instant::now();
        loop {
            tokio::select! {
                c = self.control.recv() => match c {
                    Some(Control::Stop(reply)) => {
                        stop_reply = Some(reply);
                        break;
                    }
                    Some(Control::Pause(reply)) => {
                        let r = self.pause(&mut run, true);
                        let _ = reply.send(r);
                    }
                    Some(Control::Resume(reply)) => {
                        let r = self.pause(&mut run, false);
                        let _ = reply.send(r);
                    }
                    None => break,
                },
                v = self.video.recv() => match v {
                    Ok(frame) => self.push(&mut run, Stream::Video, &frame),
                    Err(RecvError::Lagged(n)) => {
                        run.dropped += n;
                        crate::metrics::add(&crate::metrics::METRICS.output_dropped_frames, n);
                        run.timeline.video_lost();
                    }
                    Err(RecvError::Closed) => break,
                },
                a = self.audio.recv() => match a {
                    Ok(frame) => self.push(&mut run, Stream::Audio, &frame),
                    Err(RecvError::Lagged(n)) => {
                        run.dropped += n;
                        crate::metrics::add(&crate::metrics::METRICS.output_dropped_frames, n);
                    }
                    Err(RecvError::Closed) => break,
                },
                ev = next_event(&mut run.bus) => {
                    let message = match ev {
                        BusEvent::Error(e) => e,
                        BusEvent::Eos => "the output ended unexpectedly".into(),
                    };
                    if let Some(p) = run.pipe.take() {
                        p.abort();
                    }
                    run.bus = None;
                    match self.destination {
                        Destination::Rtmp { max_retry, .. } => {
                            let delay = retry_delay(run.attempt, max_retry);
                            run.attempt += 1;
                            let message = self.public_error(&message);
                            tracing::warn!(output = %self.id, retry_in_s = delay.as_secs(), "RTMP output lost: {message}");
                            run.retry_at = Some(Instant::now() + delay);
                            run.error = Some(message);
                            self.publish(&run, OutputState::Retrying);
                        }
                        _ => {
                            tracing::error!(output = %self.id, "output failed: {message}");
                            run.error = Some(message);
                            failed = true;
                            break;
                        }
                    }
                },
                _ = tick.tick() => {
                    self.tick(&mut run);
                    if let Some((dir, max)) = &self.quota
                        && quota_checked.elapsed() >= QUOTA_CHECK
                    {
                        quota_checked = Instant::now();
                        let held = super::storage::usage(dir);
                        if held >= *max {
                            let message = format!(
                                "recording.quota_mb reached ({} MB in {}): stopped and finalised",
                                held / 1_000_000,
                                dir.display()
                            );
                            tracing::warn!(output = %self.id, "{message}");
                            run.error = Some(message);
                            break;
                        }
                    }
                }
            }
        }
        let finalised = match (run.pipe.take(), run.bus.take()) {
            (Some(p), Some(bus)) if !failed => p.finish(bus).await,
            (Some(p), _) => {
                p.abort();
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(e) = finalised {
            let e = self.public_error(&e);
            tracing::error!(output = %self.id, "finalising failed: {e}");
            run.error = Some(e);
            failed = true;
        }
        let state = if failed {
            OutputState::Failed
        } else {
            OutputState::Finished
        };
        let info = self.publish(&run, state);
        if let Some(info) = &info {
            tracing::info!(
                output = %self.id,
                room = %info.room,
                format = %info.format,
                duration_s = info.duration_s,
                bytes = info.bytes,
                dropped = info.dropped_frames,
                "output stopped"
            );
        }
        if let Some(reply) = stop_reply {
            let _ = reply.send(info.ok_or(OutputError::NotFound("output forgotten".into())));
        }
        let _ = self.ended.try_send(self.id);
    }

    fn is_recording(&self) -> bool {
        matches!(self.destination, Destination::File { .. })
    }

    fn pause(&mut self, run: &mut Run, pause: bool) -> Result<OutputInfo, OutputError> {
        if !self.is_recording() {
            return Err(OutputError::Conflict(
                "only recordings can be paused; stop the stream instead".into(),
            ));
        }
        let r = if pause {
            run.timeline.pause(Instant::now())
        } else {
            run.timeline.resume()
        };
        r.map_err(|e| OutputError::Conflict(e.to_string()))?;
        if !pause {
            self.request_keyframe(run, Instant::now());
        }
        tracing::info!(output = %self.id, paused = pause, "recording {}", if pause { "paused" } else { "resumed" });
        let state = self.state(run);
        self.publish(run, state)
            .ok_or(OutputError::NotFound("output forgotten".into()))
    }

    fn push(&mut self, run: &mut Run, stream: Stream, frame: &EncodedFrame) {
        let Some(pipe) = &run.pipe else { return };
        let now = Instant::now();
        let pts = match stream {
            Stream::Video => run.timeline.video(now, frame.keyframe),
            Stream::Audio => run.timeline.audio(now, frame.duration),
        };
        let Some(pts) = pts else { return };
        if pipe.push(stream, frame, pts) {
            run.pushed_bytes += frame.data.len() as u64;
        } else {
            run.dropped += 1;
            crate::metrics::add(&crate::metrics::METRICS.output_dropped_frames, 1);
            if stream == Stream::Video {
                run.timeline.video_lost();
            }
            if run.dropped.is_power_of_two() {
                tracing::warn!(output = %self.id, dropped = run.dropped, "output cannot keep up: frames dropped");
            }
        }
    }

    fn request_keyframe(&self, run: &mut Run, now: Instant) {
        run.last_keyframe_request = Some(now);
        let _ = self.keyframes.try_send(SessionEvent::KeyframeRequest {
            codec: self.codec,
            tier: 0,
        });
    }

    fn tick(&mut self, run: &mut Run) {
        let now = Instant::now();
        if let Some(at) = run.retry_at
            && now >= at
        {
            run.retry_at = None;
            match (self.build)().and_then(|(p, bus)| p.start().map(|_| (p, bus))) {
                Ok((p, bus)) => {
                    run.pipe = Some(p);
                    run.bus = Some(bus);
                    run.timeline = Timeline::new();
                    self.request_keyframe(run, now);
                    tracing::info!(output = %self.id, attempt = run.attempt, "RTMP output reconnecting");
                }
                Err(e) => {
                    let delay = retry_delay(run.attempt, self.max_retry());
                    run.attempt += 1;
                    run.retry_at = Some(now + delay);
                    run.error = Some(self.public_error(&e.to_string()));
                }
            }
        }
        if run.pipe.is_some() {
            let wants = run.timeline.wants_keyframe() && !run.timeline.is_paused();
            let due = run
                .last_keyframe_request
                .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(500));
            if wants && due {
                self.request_keyframe(run, now);
            }
            // HLS segments and RTMP players need a keyframe every few seconds.
            let every = match self.destination {
                Destination::Hls { segment } => Some(segment),
                Destination::Rtmp { .. } => Some(Duration::from_secs(2)),
                Destination::File { .. } => None,
            };
            if let Some(every) = every
                && now.duration_since(run.last_periodic) >= every
            {
                run.last_periodic = now;
                self.request_keyframe(run, now);
            }
        }
        let state = self.state(run);
        if state == OutputState::Live {
            run.attempt = 0;
        }
        self.publish(run, state);
    }

    fn max_retry(&self) -> Duration {
        match self.destination {
            Destination::Rtmp { max_retry, .. } => max_retry,
            _ => Duration::from_secs(30),
        }
    }

    /// What the API shows for an error: a file output's own message (a path, a full disk),
    /// but for RTMP one fixed sentence, since GStreamer's words (refused, reset, timed out)
    /// would let a caller probe which ports are open. The details go to the debug log with
    /// the stream key hidden.
    fn public_error(&self, detail: &str) -> String {
        match &self.destination {
            Destination::Rtmp { url, .. } => {
                tracing::debug!(
                    output = %self.id,
                    url = %redact(url),
                    "RTMP error: {}",
                    scrub(detail, url)
                );
                RTMP_UNREACHABLE.into()
            }
            _ => detail.to_owned(),
        }
    }

    fn state(&self, run: &Run) -> OutputState {
        if run.retry_at.is_some() {
            OutputState::Retrying
        } else if run.timeline.is_paused() {
            OutputState::Paused
        } else if run.timeline.written().is_zero() {
            OutputState::Starting
        } else if self.is_recording() {
            OutputState::Recording
        } else {
            OutputState::Live
        }
    }

    fn publish(&self, run: &Run, state: OutputState) -> Option<OutputInfo> {
        let bytes = match &self.destination {
            Destination::File { path } => std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
            _ => run.pushed_bytes,
        };
        let retry_in = run
            .retry_at
            .map(|t| t.saturating_duration_since(Instant::now()).as_secs());
        self.table.update(self.id, |info| {
            info.state = state;
            info.duration_s = (run.timeline.written().as_millis() as f64) / 1000.0;
            info.bytes = bytes;
            info.dropped_frames = run.dropped;
            info.error = run.error.clone();
            info.retry_in_s = retry_in;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_the_cap() {
        let max = Duration::from_secs(30);
        let delays: Vec<u64> = (0..8).map(|a| retry_delay(a, max).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX, max), max);
    }
}

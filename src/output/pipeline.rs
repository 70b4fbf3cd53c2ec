//! One output's GStreamer pipeline: two `appsrc`s (encoded video, encoded audio) into a muxer
//! and a sink, described by a fragment in `pipelines/`. The output task pushes frames with the
//! timestamps its [`super::timeline::Timeline`] chose, and ends it with EOS so the muxer writes
//! its index.

use super::OutputError;
use crate::media::EncodedFrame;
use futures_util::StreamExt;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::time::Duration;

/// Media an output may hold before it drops (a stalled disk or network): beyond this, frames
/// are dropped and counted, never queued without bound, and the live mix never waits.
pub const MAX_QUEUED: Duration = Duration::from_secs(2);
/// How long finalising (EOS through the muxer) may take before the pipeline is stopped anyway.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Video,
    Audio,
}

/// What the pipeline reported on its bus.
#[derive(Debug)]
pub enum BusEvent {
    Error(String),
    Eos,
}

pub struct OutputPipeline {
    pipeline: gst::Pipeline,
    video: gst_app::AppSrc,
    audio: gst_app::AppSrc,
}

/// The pipeline's bus, read by the output task alongside its frames.
pub struct BusEvents(gst::bus::BusStream);

impl BusEvents {
    /// The next error or end of stream (pending forever if there is none).
    pub async fn next(&mut self) -> BusEvent {
        while let Some(msg) = self.0.next().await {
            match msg.view() {
                gst::MessageView::Error(e) => {
                    return BusEvent::Error(match e.debug() {
                        Some(d) if !d.is_empty() => format!("{} ({d})", e.error()),
                        _ => e.error().to_string(),
                    });
                }
                gst::MessageView::Eos(_) => return BusEvent::Eos,
                _ => {}
            }
        }
        std::future::pending().await
    }
}

fn appsrc(
    pipeline: &gst::Pipeline,
    name: &str,
    caps: gst::Caps,
) -> Result<gst_app::AppSrc, OutputError> {
    let src = pipeline
        .by_name(name)
        .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| OutputError::Pipeline(format!("fragment has no appsrc named {name}")))?;
    src.set_caps(Some(&caps));
    src.set_format(gst::Format::Time);
    // Not live: the muxer waits for both streams and interleaves them by timestamp.
    src.set_is_live(false);
    src.set_property("max-time", (MAX_QUEUED.as_nanos() as u64) * 2);
    src.set_property("max-bytes", 0u64);
    src.set_property("max-buffers", 0u64);
    src.set_property_from_str("leaky-type", "upstream");
    Ok(src)
}

impl OutputPipeline {
    /// Parses `description` (a fragment with `appsrc name=video`, `appsrc name=audio`, and
    /// `sink`), sets the caps, and lets `configure` set the sink's destination.
    pub fn build(
        name: &str,
        description: &str,
        video_caps: gst::Caps,
        audio_caps: gst::Caps,
        configure: impl FnOnce(&gst::Element) -> Result<(), OutputError>,
    ) -> Result<(Self, BusEvents), OutputError> {
        let mut ctx = gst::ParseContext::new();
        let element =
            gst::parse::launch_full(description, Some(&mut ctx), gst::ParseFlags::FATAL_ERRORS)
                .map_err(|e| {
                    OutputError::Pipeline(format!(
                        "output fragment failed to parse: {e} (missing: {})",
                        ctx.missing_elements().join(", ")
                    ))
                })?;
        let pipeline = element
            .downcast::<gst::Pipeline>()
            .map_err(|_| OutputError::Pipeline("output fragment is not a pipeline".into()))?;
        pipeline.set_property("name", name);
        let sink = pipeline
            .by_name("sink")
            .ok_or_else(|| OutputError::Pipeline("output fragment has no sink".into()))?;
        configure(&sink)?;
        let video = appsrc(&pipeline, "video", video_caps)?;
        let audio = appsrc(&pipeline, "audio", audio_caps)?;
        let bus = pipeline
            .bus()
            .ok_or_else(|| OutputError::Pipeline("pipeline has no bus".into()))?
            .stream();
        Ok((
            Self {
                pipeline,
                video,
                audio,
            },
            BusEvents(bus),
        ))
    }

    /// Starts the pipeline; a sink that cannot open its destination fails here.
    pub fn start(&self) -> Result<(), OutputError> {
        if self.pipeline.set_state(gst::State::Playing).is_err() {
            let _ = self.pipeline.set_state(gst::State::Null);
            let detail = self
                .pipeline
                .bus()
                .and_then(|b| b.pop_filtered(&[gst::MessageType::Error]))
                .and_then(|m| match m.view() {
                    gst::MessageView::Error(e) => Some(e.error().to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| "the output pipeline would not start".into());
            return Err(OutputError::Pipeline(detail));
        }
        Ok(())
    }

    /// Queues one frame. `false` when the output is backed up beyond [`MAX_QUEUED`]: the frame
    /// is dropped.
    pub fn push(&self, stream: Stream, frame: &EncodedFrame, pts: Duration) -> bool {
        let src = match stream {
            Stream::Video => &self.video,
            Stream::Audio => &self.audio,
        };
        let queued = src.current_level_time();
        if queued.nseconds() >= MAX_QUEUED.as_nanos() as u64 {
            return false;
        }
        let mut buffer = gst::Buffer::from_slice(frame.data.clone());
        if let Some(b) = buffer.get_mut() {
            let t = gst::ClockTime::from_nseconds(pts.as_nanos() as u64);
            b.set_pts(t);
            b.set_dts(t);
            b.set_duration(gst::ClockTime::from_nseconds(
                frame.duration.as_nanos() as u64
            ));
            if stream == Stream::Video && !frame.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        src.push_buffer(buffer).is_ok()
    }

    /// Ends both streams and waits (at most [`FINISH_TIMEOUT`]) for the muxer to write its
    /// trailer, then stops. Returns the error if finalising failed.
    pub async fn finish(self, mut bus: BusEvents) -> Result<(), String> {
        let _ = self.video.end_of_stream();
        let _ = self.audio.end_of_stream();
        let result = match tokio::time::timeout(FINISH_TIMEOUT, bus.next()).await {
            Ok(BusEvent::Eos) => Ok(()),
            Ok(BusEvent::Error(e)) => Err(e),
            Err(_) => Err("finalising timed out".into()),
        };
        let _ = self.pipeline.set_state(gst::State::Null);
        result
    }

    /// Stops at once (after an error): nothing more is written.
    pub fn abort(self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn a_stalled_destination_makes_the_output_drop_instead_of_queueing_forever() {
        crate::mixer::init().expect("GStreamer");
        // The video sink waits an hour for its clock: a destination that stopped taking data.
        let stalled = "appsrc name=video ! fakesink name=sink sync=true ts-offset=3600000000000 \
                       appsrc name=audio ! fakesink sync=false";
        let caps = gst::Caps::builder("video/x-vp8").build();
        let (pipe, _bus) =
            OutputPipeline::build("stall-test", stalled, caps.clone(), caps, |_| Ok(())).unwrap();
        pipe.start().unwrap();
        let frame = EncodedFrame::new(
            Bytes::from_static(&[0u8; 100]),
            Duration::from_millis(33),
            true,
        );
        let mut accepted = 0;
        for i in 0..300u64 {
            if pipe.push(Stream::Video, &frame, Duration::from_millis(33 * i)) {
                accepted += 1;
            }
        }
        // About 2 s of 33 ms frames are held (plus what the sink took), the rest refused.
        assert!(
            (55..=70).contains(&accepted),
            "{accepted} of 300 frames accepted by a stalled output"
        );
        pipe.abort();
    }
}

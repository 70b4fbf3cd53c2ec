//! Decodes what an output wrote (a file, HLS segments, an RTMP stream) the way a player would,
//! with GStreamer's `decodebin`, into timestamps, sampled RGB frames and mono audio.

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use mixdown_bench::received::RgbFrame;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
pub struct Decoded {
    /// Presentation times of every decoded video frame.
    pub video_pts: Vec<Duration>,
    /// Frames sampled at least every 400 ms of media time, with their times.
    pub frames: Vec<(Duration, RgbFrame)>,
    pub audio_first_pts: Option<Duration>,
    /// 48 kHz mono.
    pub audio: Vec<f32>,
    pub video_caps: Option<String>,
    pub audio_caps: Option<String>,
    pub error: Option<String>,
}

impl Decoded {
    pub fn video_first(&self) -> Option<Duration> {
        self.video_pts.first().copied()
    }

    /// From the first to the last video frame.
    pub fn video_span(&self) -> Duration {
        match (self.video_pts.first(), self.video_pts.last()) {
            (Some(a), Some(b)) => b.saturating_sub(*a),
            _ => Duration::ZERO,
        }
    }

    pub fn audio_span(&self) -> Duration {
        Duration::from_secs_f64(self.audio.len() as f64 / 48_000.0)
    }

    /// The latest sampled frame.
    pub fn last_frame(&self) -> Option<&RgbFrame> {
        self.frames.last().map(|(_, f)| f)
    }

    /// The largest gap between consecutive video frames.
    pub fn max_video_gap(&self) -> Duration {
        self.video_pts
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or_default()
    }
}

/// Runs `source ! decodebin` (e.g. `filesrc location=x`) to its end or for at most `limit`.
pub async fn decode(source: &str, limit: Duration) -> Decoded {
    let source = source.to_owned();
    tokio::task::spawn_blocking(move || decode_blocking(&source, limit))
        .await
        .expect("decoder thread")
}

fn pts(buffer: &gst::BufferRef, segment: &gst::Segment) -> Option<Duration> {
    let seg = segment.downcast_ref::<gst::ClockTime>()?;
    let t = seg.to_stream_time(buffer.pts()?)?;
    Some(Duration::from_nanos(t.nseconds()))
}

fn decode_blocking(source: &str, limit: Duration) -> Decoded {
    gst::init().expect("gstreamer");
    let pipeline = gst::parse::launch(&format!("{source} ! decodebin name=d"))
        .expect("decode pipeline")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let out = Arc::new(Mutex::new(Decoded::default()));
    let decodebin = pipeline.by_name("d").expect("decodebin");
    let weak = pipeline.downgrade();
    let shared = Arc::clone(&out);
    decodebin.connect_pad_added(move |_, pad| {
        let Some(pipeline) = weak.upgrade() else { return };
        let caps = pad.current_caps().or_else(|| Some(pad.query_caps(None)));
        let name = caps
            .as_ref()
            .and_then(|c| c.structure(0).map(|s| s.name().to_string()))
            .unwrap_or_default();
        let video = name.starts_with("video/");
        let chain = if video {
            "videoconvert ! video/x-raw,format=RGB ! appsink name=vsink sync=false"
        } else if name.starts_with("audio/") {
            "audioconvert ! audioresample ! audio/x-raw,format=F32LE,channels=1,rate=48000 ! appsink name=asink sync=false"
        } else {
            return;
        };
        let bin = gst::parse::bin_from_description(chain, true).expect("sink chain");
        let sink = bin
            .by_name(if video { "vsink" } else { "asink" })
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .expect("appsink");
        let out = Arc::clone(&shared);
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |s| {
                    let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let (Some(buffer), Some(segment)) = (sample.buffer(), sample.segment()) else {
                        return Ok(gst::FlowSuccess::Ok);
                    };
                    let t = pts(buffer, segment);
                    let mut o = out.lock().unwrap();
                    if video {
                        if o.video_caps.is_none() {
                            o.video_caps = sample.caps().map(|c| c.to_string());
                        }
                        let Some(t) = t else { return Ok(gst::FlowSuccess::Ok) };
                        o.video_pts.push(t);
                        let due = o
                            .frames
                            .last()
                            .is_none_or(|(last, _)| t >= *last + Duration::from_millis(400));
                        if due
                            && let Some(info) = sample
                                .caps()
                                .and_then(|c| gstreamer_video::VideoInfo::from_caps(c).ok())
                            && let Ok(map) = buffer.map_readable()
                        {
                            let (w, h) = (info.width(), info.height());
                            let stride = info.stride()[0] as usize;
                            let mut data = Vec::with_capacity((w * h * 3) as usize);
                            for row in 0..h as usize {
                                data.extend_from_slice(
                                    &map[row * stride..row * stride + w as usize * 3],
                                );
                            }
                            o.frames.push((t, RgbFrame { width: w, height: h, data }));
                        }
                    } else {
                        if o.audio_caps.is_none() {
                            o.audio_caps = sample.caps().map(|c| c.to_string());
                        }
                        if o.audio_first_pts.is_none() {
                            o.audio_first_pts = t;
                        }
                        if let Ok(map) = buffer.map_readable() {
                            let samples = map
                                .chunks_exact(4)
                                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                            o.audio.extend(samples);
                        }
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.add(&bin).expect("add sink chain");
        let _ = bin.sync_state_with_parent();
        let sinkpad = bin.static_pad("sink").expect("sink pad");
        let _ = pad.link(&sinkpad);
    });
    pipeline
        .set_state(gst::State::Playing)
        .expect("decoding starts");
    let bus = pipeline.bus().expect("bus");
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        let Some(msg) = bus.timed_pop_filtered(
            gst::ClockTime::from_mseconds(left.as_millis().min(200) as u64),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        ) else {
            continue;
        };
        if let gst::MessageView::Error(e) = msg.view() {
            out.lock().unwrap().error = Some(format!("{} ({:?})", e.error(), e.debug()));
        }
        break;
    }
    let _ = pipeline.set_state(gst::State::Null);
    std::mem::take(&mut *out.lock().unwrap())
}

/// The duration a player reads from the file's header (None when the file does not say,
/// e.g. a Matroska file whose writer died before finalising).
pub fn header_duration(path: &std::path::Path) -> Option<Duration> {
    gst::init().ok()?;
    let path = std::fs::canonicalize(path).ok()?;
    let pipeline = gst::parse::launch(&format!(
        "playbin uri=file://{} video-sink=fakesink audio-sink=fakesink",
        path.display()
    ))
    .ok()?;
    pipeline.set_state(gst::State::Paused).ok()?;
    let _ = pipeline.state(gst::ClockTime::from_seconds(10));
    let d = pipeline.query_duration::<gst::ClockTime>();
    let _ = pipeline.set_state(gst::State::Null);
    d.map(|d| Duration::from_nanos(d.nseconds()))
}

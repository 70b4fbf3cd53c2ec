//! The room's one AAC encoder: the Opus full mix decoded and re-encoded as AAC-LC, shared by
//! every output that needs AAC (MP4 recordings, HLS, RTMP). It runs only while such an output
//! exists.

use super::OutputError;
use super::spec::aac_lc_config;
use crate::ids::RoomId;
use crate::media::EncodedFrame;
use crate::mixer::video::encoded_frame;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

pub const AAC_ENCODER: &str = include_str!("../../pipelines/aac-encoder.gst");
pub const AAC_RATE: u32 = 48_000;
pub const AAC_BITRATE: i32 = 64_000;
/// AAC frames buffered per output (about 1.3 s).
const AAC_BROADCAST: usize = 64;
/// 1024 samples per AAC-LC frame.
const AAC_FRAME: Duration = Duration::from_nanos(1024 * 1_000_000_000 / AAC_RATE as u64);

/// Caps of what [`AacEncoder`] produces, with the `codec_data` muxers need.
pub fn aac_caps() -> gst::Caps {
    let config = aac_lc_config(AAC_RATE, 1).unwrap_or([0x11, 0x88]);
    gst::Caps::builder("audio/mpeg")
        .field("mpegversion", 4i32)
        .field("stream-format", "raw")
        .field("rate", AAC_RATE as i32)
        .field("channels", 1i32)
        .field("codec_data", gst::Buffer::from_slice(config))
        .build()
}

/// Caps of the room's Opus mix (48 kHz mono, RTP-style packets without headers).
pub fn opus_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-opus")
        .field("rate", 48_000i32)
        .field("channels", 1i32)
        .field("channel-mapping-family", 0i32)
        .build()
}

pub struct AacEncoder {
    pipeline: gst::Pipeline,
    frames: broadcast::Sender<EncodedFrame>,
    feeder: tokio::task::JoinHandle<()>,
    bus: tokio::task::JoinHandle<()>,
}

impl AacEncoder {
    /// Starts encoding the Opus frames arriving on `opus` (a listener of the room's mix).
    pub fn start(
        room: &RoomId,
        mut opus: mpsc::Receiver<EncodedFrame>,
    ) -> Result<Self, OutputError> {
        let mut ctx = gst::ParseContext::new();
        let pipeline =
            gst::parse::launch_full(AAC_ENCODER, Some(&mut ctx), gst::ParseFlags::FATAL_ERRORS)
                .map_err(|e| {
                    OutputError::Pipeline(format!(
                        "AAC encoder: {e} (missing: {})",
                        ctx.missing_elements().join(", ")
                    ))
                })?;
        let pipeline = match pipeline.downcast::<gst::Pipeline>() {
            Ok(p) => p,
            Err(e) => {
                let p = gst::Pipeline::new();
                p.add(&e)
                    .map_err(|e| OutputError::Pipeline(e.to_string()))?;
                p
            }
        };
        pipeline.set_property("name", format!("aac-{room}"));
        let missing = |n: &str| OutputError::Pipeline(format!("AAC encoder has no {n}"));
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| missing("src"))?;
        src.set_caps(Some(&opus_caps()));
        pipeline
            .by_name("enc")
            .ok_or_else(|| missing("enc"))?
            .set_property("bitrate", AAC_BITRATE);
        let sink = pipeline
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| missing("sink"))?;
        let (tx, _) = broadcast::channel(AAC_BROADCAST);
        let frames = tx.clone();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    // AAC frames are all independently decodable (no delta flag).
                    if let Some(frame) = sample.buffer().and_then(|b| encoded_frame(b, AAC_FRAME)) {
                        let _ = frames.send(frame);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let bus = crate::mixer::video::spawn_bus_watch(room.clone(), &pipeline, None);
        pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| OutputError::Pipeline("the AAC encoder would not start".into()))?;
        let feeder = tokio::spawn(async move {
            while let Some(frame) = opus.recv().await {
                let _ = src.push_buffer(gst::Buffer::from_slice(frame.data));
            }
        });
        tracing::info!(room = %room, "AAC encoder started");
        Ok(Self {
            pipeline,
            frames: tx,
            feeder,
            bus,
        })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EncodedFrame> {
        self.frames.subscribe()
    }

    pub async fn shutdown(self) {
        self.feeder.abort();
        let _ = self.feeder.await;
        let _ = self.pipeline.set_state(gst::State::Null);
        self.bus.abort();
        let _ = self.bus.await;
    }
}

//! The room's video pipeline: one input branch per participant tile (a decoder fed by `appsrc`,
//! or a placeholder for a participant without video), a live `compositor`, and one encoder per
//! codec that some receiver needs, whose frames are fanned out through a broadcast channel.
//!
//! Everything here runs on the room actor's task: elements are added, re-laid out and removed
//! from there, never from a streaming thread. Streaming-thread callbacks (appsink, pad probes)
//! only `try_send` or `send` into channels.

use crate::config::TierConfig;
use crate::ids::{RoomId, SessionId};
use crate::media::{EncodedFrame, RtpSink, SharedRtpSink, VideoCodec, parse_rtp};
use crate::mixer::MixerError;
use crate::mixer::batch::FrameBatch;
use crate::mixer::pacer::Pacer;
use crate::room::layout::Tile;
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

const VP8_INPUT: &str = include_str!("../../pipelines/vp8-input.gst");
const H264_INPUT: &str = include_str!("../../pipelines/h264-input.gst");
const VP9_INPUT: &str = include_str!("../../pipelines/vp9-input.gst");
const PLACEHOLDER: &str = include_str!("../../pipelines/placeholder.gst");
const VP8_ENCODER: &str = include_str!("../../pipelines/vp8-encoder.gst");
const H264_ENCODER: &str = include_str!("../../pipelines/h264-encoder.gst");
/// VP9 for live use on one thread: realtime deadline, `cpu-used=8` (600 frames of the bench's
/// 720p clip: 9.6 ms a frame, against 12.3 ms at 7, 7.9 ms at 9 and VP8's 5.2 ms), CBR, no
/// look-ahead, cyclic-refresh AQ as WebRTC's own VP9 uses; the input pinned to I420, else
/// vp9enc negotiates 4:4:4 and makes a profile-3 stream.
const VP9_ENCODER: &str = include_str!("../../pipelines/vp9-encoder.gst");

/// Every fragment, for the start-up check and the test that parses them all.
pub const FRAGMENTS: [(&str, &str); 7] = [
    ("vp8-input", VP8_INPUT),
    ("h264-input", H264_INPUT),
    ("vp9-input", VP9_INPUT),
    ("placeholder", PLACEHOLDER),
    ("vp8-encoder", VP8_ENCODER),
    ("h264-encoder", H264_ENCODER),
    ("vp9-encoder", VP9_ENCODER),
];

/// Encoded composite frames buffered per codec for slow peers (about 2 s at 30 fps). A peer
/// that falls further behind skips to the newest frames and waits for a keyframe.
pub const FRAME_BROADCAST: usize = 64;
/// Room pipelines not yet shut down (for teardown checks and metrics).
static LIVE_PIPELINES: AtomicUsize = AtomicUsize::new(0);

/// Room pipelines created and not yet set to `Null` by [`VideoMixer::shutdown`].
pub fn live_pipelines() -> usize {
    LIVE_PIPELINES.load(Ordering::SeqCst)
}

/// Pacing threads not yet ended (one per running encoder).
static LIVE_PACERS: AtomicUsize = AtomicUsize::new(0);

/// Pacing threads still running: each ends when its encoder's appsink is freed.
pub fn live_pacers() -> usize {
    LIVE_PACERS.load(Ordering::SeqCst)
}

/// Compositor stacking: tiles, and name cards over them.
const ZORDER_TILE: u32 = 1;
/// The size name cards are drawn at before scaling to their tile.
const CARD_SIZE: (u32, u32) = (640, 360);
const ZORDER_CARD: u32 = 2;

#[derive(Debug, Clone)]
pub struct VideoSettings {
    pub width: u32,
    pub height: u32,
    pub framerate: u32,
    /// The encoder ladder, best first; the first is the canvas itself.
    pub tiers: Vec<TierConfig>,
    pub jitter_ms: u32,
    pub keyframe_interval_s: u32,
    /// How far behind its fastest recent frame a composite frame may be held so that frames
    /// leave evenly (see [`super::pacer`]); zero sends each frame as soon as it is encoded.
    pub pacing_margin_ms: u32,
}

struct Slot {
    bin: gst::Bin,
    comp_pad: gst::Pad,
    tile_filter: gst::Element,
    placeholder: bool,
    tile: Option<Tile>,
}

struct Encoder {
    bin: gst::Bin,
    tee_pad: gst::Pad,
    element: gst::Element,
    frames: broadcast::Sender<EncodedFrame>,
}

/// Which shared encode: a codec at one rung of the ladder (0 is the canvas).
pub type EncodeKey = (VideoCodec, usize);

/// Lower tiers get a keyframe at least this often (their receivers are the ones on lossy
/// links, and their keyframes are small).
const LOWER_TIER_KEYFRAME_MAX_S: u32 = 4;
/// VP8 rate control for live tiers (milliseconds of the target rate): libvpx's defaults
/// (6000/4000/5000) let a tier overshoot its target for seconds.
const VP8_BUFFER_MS: i32 = 1000;
const VP8_BUFFER_INITIAL_MS: i32 = 500;
const VP8_BUFFER_OPTIMAL_MS: i32 = 600;
/// A keyframe may be at most this many percent of an average frame's budget (libvpx's
/// `rc_max_intra_bitrate_pct`): unbounded, a 720p keyframe is a burst of ~100 KB.
const VP8_MAX_INTRA_PCT: i32 = 600;

/// What the pipeline tells the room (from streaming threads, by `try_send`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoEvent {
    /// A participant's decoder produced its first picture since it was attached.
    FirstFrame(SessionId),
}

/// Video events waiting for the room; one per decoder start, so a burst of visibility
/// changes fits. When full, that participant's name card stays until its next change.
pub const VIDEO_EVENT_QUEUE: usize = 128;

/// Names of the branches most recently taken out of a pipeline, shared with its bus watch:
/// an error a branch reports while it is being removed is expected, not a failure.
#[derive(Clone, Default)]
pub(crate) struct Leaving(Arc<Mutex<std::collections::VecDeque<String>>>);

/// Branches remembered as leaving (their errors arrive within milliseconds).
const LEAVING_KEPT: usize = 64;

impl Leaving {
    fn push(&self, name: String) {
        if let Ok(mut l) = self.0.lock() {
            if l.len() == LEAVING_KEPT {
                l.pop_front();
            }
            l.push_back(name);
        }
    }

    /// Whether `src` is inside one of the leaving branches.
    fn contains(&self, src: Option<&gst::Object>) -> bool {
        let Ok(l) = self.0.lock() else {
            return false;
        };
        let mut object = src.cloned();
        while let Some(o) = object {
            if l.iter().any(|n| *n == o.name()) {
                return true;
            }
            object = o.parent();
        }
        false
    }
}

pub struct VideoMixer {
    room: RoomId,
    leaving: Leaving,
    events: mpsc::Sender<VideoEvent>,
    settings: VideoSettings,
    pipeline: gst::Pipeline,
    compositor: gst::Element,
    tee: gst::Element,
    slots: HashMap<SessionId, Slot>,
    /// Pictures each publisher's decoder has put out (for its stats).
    decoded: HashMap<SessionId, Arc<std::sync::atomic::AtomicU64>>,
    /// Name cards over the tiles of participants whose camera is stopped.
    cards: HashMap<SessionId, Slot>,
    encoders: HashMap<EncodeKey, Encoder>,
    /// `None` once [`shutdown`](Self::shutdown) ran.
    bus_task: Option<tokio::task::JoinHandle<()>>,
    /// The pipeline stays in `Null` (costing nothing) until the first receiver of video:
    /// an audio-only room never composes.
    running: Arc<AtomicBool>,
}

fn make(factory: &str) -> Result<gst::Element, MixerError> {
    gst::ElementFactory::make(factory)
        .build()
        .map_err(|_| MixerError::MissingElement(factory.to_owned()))
}

fn parse_bin(description: &str) -> Result<gst::Bin, MixerError> {
    let mut ctx = gst::ParseContext::new();
    gst::parse::bin_from_description_full(
        description,
        true,
        Some(&mut ctx),
        gst::ParseFlags::FATAL_ERRORS,
    )
    .map_err(|e| MixerError::Fragment {
        missing: ctx.missing_elements().join(", "),
        message: e.to_string(),
    })?
    .downcast::<gst::Bin>()
    .map_err(|_| MixerError::Fragment {
        missing: String::new(),
        message: "fragment did not produce a bin".into(),
    })
}

fn by_name(bin: &gst::Bin, name: &str) -> Result<gst::Element, MixerError> {
    bin.by_name(name).ok_or_else(|| MixerError::Fragment {
        missing: String::new(),
        message: format!("fragment has no element named {name}"),
    })
}

fn ms(v: u32) -> gst::ClockTime {
    gst::ClockTime::from_mseconds(v as u64)
}

/// The one place that spells the compositor pad's geometry properties.
fn apply_tile(pad: &gst::Pad, filter: &gst::Element, tile: Tile, framerate: Option<u32>) {
    pad.set_property("xpos", tile.x as i32);
    pad.set_property("ypos", tile.y as i32);
    pad.set_property("width", tile.w as i32);
    pad.set_property("height", tile.h as i32);
    apply_tile_caps(filter, tile.w, tile.h, framerate);
}

fn apply_tile_caps(filter: &gst::Element, width: u32, height: u32, framerate: Option<u32>) {
    let mut caps = gst::Caps::builder("video/x-raw")
        .field("format", "I420")
        .field("width", width as i32)
        .field("height", height as i32)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1));
    if let Some(f) = framerate {
        caps = caps.field("framerate", gst::Fraction::new(f as i32, 1));
    }
    filter.set_property("caps", caps.build());
}

/// Pushes RTP into a participant's `appsrc`, a frame's packets at a time ([`FrameBatch`]),
/// each stamped with its arrival (running time) for the jitter buffer. Never blocks: the appsrc
/// is leaky. Packets are dropped while the pipeline is dormant (nobody receives video yet); the
/// depayloader asks for a keyframe once it runs.
struct AppSrcSink {
    appsrc: gst_app::AppSrc,
    running: Arc<AtomicBool>,
    frame: Mutex<FrameBatch<gst::Buffer>>,
}

impl RtpSink for AppSrcSink {
    fn push_rtp(&self, packet: Bytes) {
        if !self.running.load(Ordering::Relaxed) {
            return;
        }
        let Some((timestamp, marker)) = parse_rtp(&packet).map(|r| (r.timestamp, r.marker)) else {
            tracing::trace!("malformed video RTP dropped");
            return;
        };
        let mut buffer = gst::Buffer::from_slice(packet);
        if let (Some(arrival), Some(b)) = (self.appsrc.current_running_time(), buffer.get_mut()) {
            b.set_dts(arrival);
        }
        let ready = match self.frame.lock() {
            Ok(mut frame) => frame.push(buffer, timestamp, marker),
            Err(_) => return,
        };
        for packets in ready {
            let mut list = gst::BufferList::new_sized(packets.len());
            if let Some(l) = list.get_mut() {
                for p in packets {
                    l.add(p);
                }
            }
            let _ = self.appsrc.push_buffer_list(list);
        }
    }
}

impl VideoMixer {
    pub fn new(
        room: RoomId,
        settings: VideoSettings,
        events: mpsc::Sender<VideoEvent>,
    ) -> Result<Self, MixerError> {
        let pipeline = gst::Pipeline::with_name(&format!("room-{room}"));
        // Inputs join after the compositor starts, so their latency (jitter buffer + decode) is
        // declared up front; otherwise their first frames would all be late.
        let upstream_latency = ms(settings.jitter_ms + 40);
        let compositor = gst::ElementFactory::make("compositor")
            .property("force-live", true)
            .property("ignore-inactive-pads", true)
            .property("min-upstream-latency", upstream_latency.nseconds())
            .property_from_str("background", "black")
            .build()
            .map_err(|_| MixerError::MissingElement("compositor".into()))?;
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "I420")
            .field("width", settings.width as i32)
            .field("height", settings.height as i32)
            .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
            .field(
                "framerate",
                gst::Fraction::new(settings.framerate as i32, 1),
            )
            .build();
        let filter = make("capsfilter")?;
        filter.set_property("caps", &caps);
        let tee = make("tee")?;
        tee.set_property("allow-not-linked", true);
        pipeline
            .add_many([&compositor, &filter, &tee])
            .map_err(MixerError::glib)?;
        gst::Element::link_many([&compositor, &filter, &tee]).map_err(MixerError::glib)?;
        let leaving = Leaving::default();
        let bus_task = spawn_bus_watch(room.clone(), &pipeline, Some(leaving.clone()));
        LIVE_PIPELINES.fetch_add(1, Ordering::SeqCst);
        Ok(Self {
            room,
            leaving,
            events,
            settings,
            pipeline,
            compositor,
            tee,
            slots: HashMap::new(),
            decoded: HashMap::new(),
            cards: HashMap::new(),
            encoders: HashMap::new(),
            bus_task: Some(bus_task),
            running: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts composing (first receiver of video). Idempotent.
    fn run(&self) -> Result<(), MixerError> {
        if self.running.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.pipeline
            .set_state(gst::State::Playing)
            .map_err(|_| MixerError::State("room pipeline would not start"))?;
        self.running.store(true, Ordering::SeqCst);
        tracing::info!(room = %self.room, "composite started");
        Ok(())
    }

    /// Adds `bin` to the pipeline and links it to a new compositor pad at `zorder`.
    fn link_bin(
        &self,
        bin: &gst::Bin,
        zorder: u32,
    ) -> Result<(gst::Pad, gst::Element), MixerError> {
        let tile_filter = by_name(bin, "tile")?;
        self.pipeline.add(bin).map_err(MixerError::glib)?;
        let src = bin
            .static_pad("src")
            .ok_or(MixerError::State("input fragment has no src pad"))?;
        let comp_pad = self
            .compositor
            .request_pad_simple("sink_%u")
            .ok_or(MixerError::State("compositor gave no sink pad"))?;
        comp_pad.set_property("zorder", zorder);
        if let Err(e) = src.link(&comp_pad) {
            self.compositor.release_request_pad(&comp_pad);
            let _ = self.pipeline.remove(bin);
            return Err(MixerError::Link(format!("{e:?}")));
        }
        Ok((comp_pad, tile_filter))
    }

    /// Links `bin` as the participant's tile source (replacing the one it had, in the same
    /// tile), placed at `tile` (or the replaced one's) before it starts: a source whose caps
    /// change while it negotiates can fail with not-negotiated.
    fn attach(
        &mut self,
        id: SessionId,
        bin: gst::Bin,
        placeholder: bool,
        tile: Option<Tile>,
    ) -> Result<(), MixerError> {
        let (comp_pad, tile_filter) = self.link_bin(&bin, ZORDER_TILE)?;
        let previous = self.slots.insert(
            id,
            Slot {
                bin: bin.clone(),
                comp_pad,
                tile_filter,
                placeholder,
                tile: None,
            },
        );
        let tile = tile.or(previous.as_ref().and_then(|p| p.tile));
        if let Some(old) = previous {
            self.detach(old);
        }
        if let Some(tile) = tile {
            let framerate = self.settings.framerate;
            if let Some(slot) = self.slots.get_mut(&id) {
                slot.tile = Some(tile);
                apply_tile(
                    &slot.comp_pad,
                    &slot.tile_filter,
                    tile,
                    placeholder.then_some(framerate),
                );
            }
        }
        bin.sync_state_with_parent().map_err(MixerError::glib)?;
        Ok(())
    }

    fn detach(&self, slot: Slot) {
        self.leaving.push(slot.bin.name().to_string());
        if let Some(src) = slot.bin.static_pad("src") {
            // Buffers the branch still pushes are dropped (flow OK), so unlinking never makes
            // its streaming thread fail with not-linked.
            src.add_probe(
                gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
                |_, _| gst::PadProbeReturn::Drop,
            );
            let _ = src.unlink(&slot.comp_pad);
        }
        self.compositor.release_request_pad(&slot.comp_pad);
        let _ = slot.bin.set_state(gst::State::Null);
        let _ = self.pipeline.remove(&slot.bin);
    }

    /// A name card: a plain tile with the participant's name.
    fn name_card(&self, name: &str) -> Result<gst::Bin, MixerError> {
        let bin = parse_bin(PLACEHOLDER)?;
        // Parsing ghosted textoverlay's unlinked text input as a bin sink pad; linked, it
        // would make textoverlay wait for text buffers forever. The name is a property.
        if let Some(ghost) = bin.static_pad("sink") {
            let _ = bin.remove_pad(&ghost);
        }
        let text = by_name(&bin, "text")?;
        text.set_property("text", name);
        text.set_property("font-desc", "Sans Bold 20");
        // The card is drawn at one fixed size and scaled to its tile: a source whose caps the
        // layout changed while it negotiated failed ("not-negotiated") and stopped for good,
        // which 20 people joining at once did to a card. A scaler renegotiates in step with
        // its data instead.
        let (w, h) = CARD_SIZE;
        apply_tile_caps(&by_name(&bin, "card")?, w, h, Some(self.settings.framerate));
        Ok(bin)
    }

    /// A tile for a participant whose video has not started (or who publishes none): a name
    /// card.
    pub fn add_placeholder(
        &mut self,
        id: SessionId,
        name: &str,
        tile: Option<Tile>,
    ) -> Result<(), MixerError> {
        let bin = self.name_card(name)?;
        // The canvas' size until the layout gives the tile its own.
        let filter = by_name(&bin, "tile")?;
        let (w, h) = (self.settings.width, self.settings.height);
        apply_tile_caps(&filter, w, h, Some(self.settings.framerate));
        self.attach(id, bin, true, tile)
    }

    /// Replaces the participant's tile source with a decoder of its RTP. Keyframe requests from
    /// the depayloader and decoder (start, corruption) arrive on `pli`.
    pub fn add_video_input(
        &mut self,
        id: SessionId,
        codec: VideoCodec,
        payload_type: u8,
        pli: mpsc::Sender<()>,
        tile: Option<Tile>,
    ) -> Result<SharedRtpSink, MixerError> {
        let bin = parse_bin(match codec {
            VideoCodec::Vp8 => VP8_INPUT,
            VideoCodec::H264 => H264_INPUT,
            VideoCodec::Vp9 => VP9_INPUT,
        })?;
        by_name(&bin, "jitter")?.set_property("latency", self.settings.jitter_ms);
        let appsrc = by_name(&bin, "src")?
            .downcast::<gst_app::AppSrc>()
            .map_err(|_| MixerError::State("src is not an appsrc"))?;
        appsrc.set_caps(Some(
            &gst::Caps::builder("application/x-rtp")
                .field("media", "video")
                .field("clock-rate", 90000i32)
                .field("encoding-name", codec.encoding_name())
                .field("payload", payload_type as i32)
                .build(),
        ));
        if let Some(pad) = appsrc.static_pad("src") {
            pad.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
                if let Some(gst::PadProbeData::Event(ev)) = &info.data
                    && gst_video_is_force_key_unit(ev)
                {
                    let _ = pli.try_send(());
                }
                gst::PadProbeReturn::Ok
            });
        }
        if let Some(src) = bin.static_pad("src") {
            // The first decoded picture: the room lifts the name card that covered the tile.
            let events = self.events.clone();
            src.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                let _ = events.try_send(VideoEvent::FirstFrame(id));
                gst::PadProbeReturn::Remove
            });
            let decoded = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let count = Arc::clone(&decoded);
            src.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                count.fetch_add(1, Ordering::Relaxed);
                gst::PadProbeReturn::Ok
            });
            self.decoded.insert(id, decoded);
        }
        self.attach(id, bin, false, tile)?;
        tracing::debug!(room = %self.room, session = %id, %codec, "video input started");
        Ok(Arc::new(AppSrcSink {
            appsrc,
            running: Arc::clone(&self.running),
            frame: Mutex::new(FrameBatch::default()),
        }))
    }

    /// Pictures the publisher's decoder has put out since its input started.
    pub fn decoded_frames(&self, id: SessionId) -> Option<u64> {
        self.decoded.get(&id).map(|c| c.load(Ordering::Relaxed))
    }

    pub fn remove(&mut self, id: SessionId) {
        self.decoded.remove(&id);
        self.hide_card(id);
        if let Some(slot) = self.slots.remove(&id) {
            self.detach(slot);
        }
    }

    /// Covers the participant's tile with a name card (camera stopped); its video keeps
    /// being decoded underneath, so it shows again at once when the card goes.
    pub fn show_card(&mut self, id: SessionId, name: &str) -> Result<(), MixerError> {
        if self.cards.contains_key(&id) {
            return Ok(());
        }
        let bin = self.name_card(name)?;
        let filter = by_name(&bin, "tile")?;
        let (w, h) = (self.settings.width, self.settings.height);
        apply_tile_caps(&filter, w, h, Some(self.settings.framerate));
        let (comp_pad, tile_filter) = self.link_bin(&bin, ZORDER_CARD)?;
        let tile = self.slots.get(&id).and_then(|s| s.tile);
        let mut card = Slot {
            bin: bin.clone(),
            comp_pad,
            tile_filter,
            placeholder: true,
            tile: None,
        };
        if let Some(t) = tile {
            card.tile = Some(t);
            apply_tile(
                &card.comp_pad,
                &card.tile_filter,
                t,
                Some(self.settings.framerate),
            );
        }
        self.cards.insert(id, card);
        bin.sync_state_with_parent().map_err(MixerError::glib)?;
        Ok(())
    }

    pub fn hide_card(&mut self, id: SessionId) {
        if let Some(card) = self.cards.remove(&id) {
            self.detach(card);
        }
    }

    /// Moves a participant's tile (and card). Nothing is touched where the tile is the same:
    /// new caps on a source that is still negotiating can stop it.
    fn set_tile(&mut self, id: SessionId, tile: Tile) {
        let framerate = self.settings.framerate;
        if let Some(card) = self.cards.get_mut(&id).filter(|c| c.tile != Some(tile)) {
            card.tile = Some(tile);
            apply_tile(&card.comp_pad, &card.tile_filter, tile, Some(framerate));
        }
        if let Some(slot) = self.slots.get_mut(&id).filter(|s| s.tile != Some(tile)) {
            slot.tile = Some(tile);
            apply_tile(
                &slot.comp_pad,
                &slot.tile_filter,
                tile,
                slot.placeholder.then_some(framerate),
            );
        }
    }

    pub fn apply_layout(&mut self, tiles: &[(SessionId, Tile)]) {
        for (id, tile) in tiles {
            self.set_tile(*id, *tile);
        }
    }

    /// Video decoders running now (one per visible publisher whose video has started).
    pub fn decoders(&self) -> usize {
        self.slots.values().filter(|s| !s.placeholder).count()
    }

    /// Whether the participant has a tile source (a decoder or a name card).
    pub fn has_tile(&self, id: SessionId) -> bool {
        self.slots.contains_key(&id)
    }

    /// Whether the participant's tile is a decoder (not a name card).
    pub fn is_decoding(&self, id: SessionId) -> bool {
        self.slots.get(&id).is_some_and(|s| !s.placeholder)
    }

    /// The number of rungs in the encoder ladder (1 when there are no lower tiers).
    pub fn tier_count(&self) -> usize {
        self.settings.tiers.len()
    }

    /// Frames of the composite encoded as `codec` at ladder rung `tier` (0 is the canvas,
    /// a larger index is smaller and cheaper); the encoder starts on first use and then
    /// serves every receiver of that encode.
    pub fn subscribe(
        &mut self,
        codec: VideoCodec,
        tier: usize,
    ) -> Result<broadcast::Receiver<EncodedFrame>, MixerError> {
        if let Some(e) = self.encoders.get(&(codec, tier)) {
            return Ok(e.frames.subscribe());
        }
        let t = *self
            .settings
            .tiers
            .get(tier)
            .ok_or(MixerError::State("no such tier"))?;
        let bin = parse_bin(match codec {
            VideoCodec::Vp8 => VP8_ENCODER,
            VideoCodec::H264 => H264_ENCODER,
            VideoCodec::Vp9 => VP9_ENCODER,
        })?;
        let enc = by_name(&bin, "enc")?;
        let mut keyframe_s = self.settings.keyframe_interval_s;
        if tier > 0 {
            keyframe_s = keyframe_s.min(LOWER_TIER_KEYFRAME_MAX_S);
        }
        let keyframe_frames = keyframe_s * t.framerate;
        match codec {
            // VP9 is libvpx too: the same rate control and buffer.
            VideoCodec::Vp8 | VideoCodec::Vp9 => {
                enc.set_property("target-bitrate", (t.bitrate_kbps * 1000) as i32);
                enc.set_property("keyframe-max-dist", keyframe_frames as i32);
                enc.set_property("buffer-size", VP8_BUFFER_MS);
                enc.set_property("buffer-initial-size", VP8_BUFFER_INITIAL_MS);
                enc.set_property("buffer-optimal-size", VP8_BUFFER_OPTIMAL_MS);
                enc.set_property("max-intra-bitrate", VP8_MAX_INTRA_PCT);
            }
            VideoCodec::H264 => {
                enc.set_property("bitrate", t.bitrate_kbps);
                enc.set_property("key-int-max", keyframe_frames);
            }
        }
        if tier > 0 {
            self.scale_into(&bin, t)?;
        }
        let (tx, rx) = broadcast::channel(FRAME_BROADCAST);
        let sink = by_name(&bin, "sink")?
            .downcast::<gst_app::AppSink>()
            .map_err(|_| MixerError::State("sink is not an appsink"))?;
        let frame_duration = Duration::from_secs(1) / t.framerate;
        let margin = Duration::from_millis(self.settings.pacing_margin_ms.into());
        let paced = spawn_pacer(codec, margin, tx.clone())?;
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some(frame) = sample
                        .buffer()
                        .and_then(|b| encoded_frame(b, frame_duration))
                    {
                        let lateness = lateness(sink, &sample).unwrap_or_default();
                        let m = &crate::metrics::METRICS;
                        crate::metrics::add(&m.composite_frames, 1);
                        if lateness > frame_duration {
                            crate::metrics::add(&m.composite_late_frames, 1);
                        }
                        m.encode_delay_seconds.observe(lateness.as_secs_f64());
                        // Full only if the pacer stopped: the frame is then not needed.
                        let _ = paced.try_send((frame, lateness, Instant::now()));
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        self.pipeline.add(&bin).map_err(MixerError::glib)?;
        let tee_pad = self
            .tee
            .request_pad_simple("src_%u")
            .ok_or(MixerError::State("tee gave no src pad"))?;
        let sink_pad = bin
            .static_pad("sink")
            .ok_or(MixerError::State("encoder fragment has no sink pad"))?;
        tee_pad
            .link(&sink_pad)
            .map_err(|e| MixerError::Link(format!("{e:?}")))?;
        bin.sync_state_with_parent().map_err(MixerError::glib)?;
        self.run()?;
        tracing::info!(
            room = %self.room,
            %codec,
            tier,
            size = %format!("{}x{}@{}", t.width, t.height, t.framerate),
            kbps = t.bitrate_kbps,
            "composite encoder started"
        );
        self.encoders.insert(
            (codec, tier),
            Encoder {
                bin,
                tee_pad,
                element: enc,
                frames: tx,
            },
        );
        Ok(rx)
    }

    /// Puts a scaler (and, for a lower frame rate, a frame dropper) between the encoder
    /// fragment's leaky queue and its encoder.
    fn scale_into(&self, bin: &gst::Bin, t: TierConfig) -> Result<(), MixerError> {
        let enc = by_name(bin, "enc")?;
        let queue = enc
            .static_pad("sink")
            .and_then(|p| p.peer())
            .and_then(|p| p.parent_element())
            .ok_or(MixerError::State(
                "encoder fragment has no queue before enc",
            ))?;
        queue.unlink(&enc);
        let scale = gst::ElementFactory::make("videoscale")
            .property_from_str("method", "bilinear")
            .build()
            .map_err(|_| MixerError::MissingElement("videoscale".into()))?;
        let mut chain = vec![queue, scale];
        if t.framerate < self.settings.framerate {
            // `skip-to-first`: a videorate added to a running pipeline otherwise counts its
            // output from the segment's start, and passes every frame until that count
            // catches up with the stream's time (measured: a 15 fps tier started 35 s into a
            // room ran at 30 fps for 35 s).
            let rate = gst::ElementFactory::make("videorate")
                .property("drop-only", true)
                .property("skip-to-first", true)
                .build()
                .map_err(|_| MixerError::MissingElement("videorate".into()))?;
            chain.push(rate);
        }
        let caps = make("capsfilter")?;
        apply_tile_caps(&caps, t.width, t.height, Some(t.framerate));
        chain.push(caps);
        chain.push(enc);
        bin.add_many(&chain[1..chain.len() - 1])
            .map_err(MixerError::glib)?;
        gst::Element::link_many(&chain).map_err(MixerError::glib)
    }

    /// Stops every encoder nobody receives any more (the top one included: an idle room
    /// encodes nothing). Called after receivers move or leave.
    pub fn release_unused(&mut self) {
        let unused: Vec<EncodeKey> = self
            .encoders
            .iter()
            .filter(|(_, e)| e.frames.receiver_count() == 0)
            .map(|(k, _)| *k)
            .collect();
        for key in unused {
            if let Some(e) = self.encoders.remove(&key) {
                if let Some(sink) = e.bin.static_pad("sink") {
                    let _ = e.tee_pad.unlink(&sink);
                }
                self.tee.release_request_pad(&e.tee_pad);
                let _ = e.bin.set_state(gst::State::Null);
                let _ = self.pipeline.remove(&e.bin);
                tracing::info!(room = %self.room, codec = %key.0, tier = key.1, "composite encoder stopped");
            }
        }
    }

    /// The encodes running now.
    pub fn active_encodes(&self) -> Vec<EncodeKey> {
        let mut v: Vec<EncodeKey> = self.encoders.keys().copied().collect();
        v.sort();
        v
    }

    pub fn active_codecs(&self) -> Vec<VideoCodec> {
        let mut v: Vec<VideoCodec> = self.encoders.keys().map(|k| k.0).collect();
        v.sort();
        v.dedup();
        v
    }

    /// A keyframe from one encode only: the other tiers' receivers never pay for it.
    pub fn force_keyframe(&self, key: EncodeKey) {
        let codec = key.0;
        if let Some(e) = self.encoders.get(&key)
            && let Some(pad) = e.element.static_pad("src")
        {
            let ev = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
                .all_headers(true)
                .build();
            pad.send_event(ev);
            tracing::debug!(room = %self.room, %codec, tier = key.1, "keyframe forced");
        }
    }

    /// Stops the pipeline (state `Null`) and waits for its bus watch to end.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.stop() {
            let _ = task.await;
        }
    }

    /// `Null`, counted once; the bus watch is aborted and handed back to be awaited.
    fn stop(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let task = self.bus_task.take()?;
        let _ = self.pipeline.set_state(gst::State::Null);
        LIVE_PIPELINES.fetch_sub(1, Ordering::SeqCst);
        task.abort();
        Some(task)
    }
}

impl Drop for VideoMixer {
    /// A room whose task was aborted (a panic, a runtime shutting down) still stops its
    /// pipeline: elements disposed while PLAYING make GStreamer's threads crash later.
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// How long after its running time a sample reached the sink (zero when the sink has no clock
/// yet, which sends it without holding it).
fn lateness(sink: &gst_app::AppSink, sample: &gst::Sample) -> Option<Duration> {
    let now = sink.current_running_time()?;
    let pts = sample.buffer()?.pts()?;
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    let due = segment.to_running_time(pts)?;
    Some(Duration::from_nanos(now.saturating_sub(due).nseconds()))
}

/// Frames waiting for the pacing thread: far more than it ever holds (its hold is at most the
/// margin, under a frame and a half at 30 fps).
const PACER_QUEUE: usize = 8;

/// Starts the thread that releases one encoder's frames evenly into `out` ([`Pacer`]). An OS
/// thread, not a task, so its timing does not depend on how busy the runtime is; it ends when
/// the returned sender (held by the appsink's callbacks) is dropped with the pipeline.
fn spawn_pacer(
    codec: VideoCodec,
    margin: Duration,
    out: broadcast::Sender<EncodedFrame>,
) -> Result<std::sync::mpsc::SyncSender<(EncodedFrame, Duration, Instant)>, MixerError> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(EncodedFrame, Duration, Instant)>(PACER_QUEUE);
    // Made here, not in the thread: see `Pacer::sorted`.
    let mut pacer = Pacer::new(margin);
    LIVE_PACERS.fetch_add(1, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name(format!("pace-{codec}"))
        .spawn(move || {
            // Frames are numbered as they go out (the transport's VP8 picture IDs), so a
            // frame dropped before this point leaves no gap a receiver would wait on.
            let mut number = 0u64;
            while let Ok((frame, lateness, arrived)) = rx.recv() {
                let release = arrived + pacer.hold(lateness);
                let wait = release.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                number += 1;
                // No receivers is not an error: the frame is simply not needed.
                let _ = out.send(frame.numbered(number));
            }
            LIVE_PACERS.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        LIVE_PACERS.fetch_sub(1, Ordering::SeqCst);
        return Err(MixerError::Thread(e.to_string()));
    }
    Ok(tx)
}

/// An encoder's output buffer as a frame for the transport (one copy, shared by every
/// receiver); `default_duration` when the buffer has none.
pub(crate) fn encoded_frame(
    buffer: &gst::BufferRef,
    default_duration: Duration,
) -> Option<EncodedFrame> {
    let map = buffer.map_readable().ok()?;
    let mut frame = EncodedFrame::new(
        Bytes::copy_from_slice(map.as_slice()),
        buffer
            .duration()
            .map(|d| Duration::from_nanos(d.nseconds()))
            .unwrap_or(default_duration),
        !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT),
    );
    frame.pts = buffer.pts().map(|p| Duration::from_nanos(p.nseconds()));
    Some(frame)
}

/// Whether `src` is no longer inside `pipeline` (its branch was removed).
fn detached(src: Option<&gst::Object>, pipeline: Option<&gst::Pipeline>) -> bool {
    let (Some(mut object), Some(pipeline)) = (src.cloned(), pipeline) else {
        return false;
    };
    let top = pipeline.upcast_ref::<gst::Object>();
    loop {
        if &object == top {
            return false;
        }
        match object.parent() {
            Some(parent) => object = parent,
            None => return true,
        }
    }
}

fn gst_video_is_force_key_unit(ev: &gst::Event) -> bool {
    gstreamer_video::ForceKeyUnitEvent::is(ev)
}

/// Logs errors and warnings; recomputes latency when an input joins. An error inside one
/// participant's branch is logged and that branch is left to recover (decoders ignore errors),
/// so one bad input never stops the room.
pub(crate) fn spawn_bus_watch(
    room: RoomId,
    pipeline: &gst::Pipeline,
    leaving: Option<Leaving>,
) -> tokio::task::JoinHandle<()> {
    let bus = pipeline.bus();
    let weak = pipeline.downgrade();
    tokio::spawn(async move {
        let Some(bus) = bus else { return };
        use futures_util::StreamExt;
        let mut messages = bus.stream();
        while let Some(msg) = messages.next().await {
            match msg.view() {
                // A branch removed while it was still starting (a tile that came and went
                // within milliseconds) may report a failure on its way out: it is gone, and
                // nothing on screen depends on it.
                gst::MessageView::Error(e)
                    if detached(e.src(), weak.upgrade().as_ref())
                        || leaving.as_ref().is_some_and(|l| l.contains(e.src())) =>
                {
                    tracing::debug!(
                        room = %room,
                        source = ?e.src().map(|s| s.path_string()),
                        "error from a removed branch: {}",
                        e.error()
                    )
                }
                gst::MessageView::Error(e) => tracing::error!(
                    room = %room,
                    source = ?e.src().map(|s| s.path_string()),
                    "pipeline error: {} ({:?})",
                    e.error(),
                    e.debug()
                ),
                gst::MessageView::Warning(w) => tracing::warn!(
                    room = %room,
                    source = ?w.src().map(|s| s.path_string()),
                    "pipeline warning: {}",
                    w.error()
                ),
                gst::MessageView::Latency(_) => {
                    if let Some(p) = weak.upgrade() {
                        let _ = p.recalculate_latency();
                    }
                }
                _ => {}
            }
        }
    })
}

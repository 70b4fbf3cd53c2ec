//! Pre-encoded media for synthetic participants, generated once with GStreamer and cached in
//! standard containers (VP8 in WebM, H.264 in Matroska, Opus in Ogg) so that a bare
//! `gst-launch-1.0` pipeline can decode the very same files. Loaded into memory once; the
//! generator then only paces frames out, it never encodes.
//!
//! Markers for latency: every clip frame with index ≡ 0 (mod 30) is the first of 15 frames in
//! which a white patch is shown (black otherwise); every audio packet with index ≡ 0 (mod 50)
//! carries a 40 ms 3 kHz burst in a pause of the speech.

use anyhow::{Context, anyhow};
use bytes::Bytes;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const WIDTH: usize = 640;
pub const HEIGHT: usize = 360;
pub const FPS: u64 = 30;
/// Video frames between markers (1 s).
pub const VIDEO_MARK_EVERY: u64 = 30;
/// Audio packets (20 ms) between markers (1 s).
pub const AUDIO_MARK_EVERY: u64 = 50;
/// The marker patch, in clip pixels: x, y, size.
pub const PATCH: (usize, usize, usize) = (16, 16, 64);
pub const CLICK_HZ: f32 = 3000.0;
const SAMPLE_RATE: usize = 48_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipCodec {
    Vp8,
    H264,
}

impl ClipCodec {
    fn encoder(self) -> &'static str {
        match self {
            ClipCodec::Vp8 => {
                "vp8enc deadline=1 cpu-used=-6 threads=1 target-bitrate=600000 end-usage=cbr \
                 lag-in-frames=0 keyframe-max-dist=60 ! webmmux"
            }
            ClipCodec::H264 => {
                "x264enc tune=zerolatency speed-preset=veryfast bitrate=600 key-int-max=60 \
                 ! video/x-h264,profile=constrained-baseline ! matroskamux"
            }
        }
    }
    /// The demuxing chain that yields frames (also used by the bare pipeline).
    pub fn demuxer(self) -> &'static str {
        match self {
            ClipCodec::Vp8 => "matroskademux",
            ClipCodec::H264 => {
                "matroskademux ! h264parse config-interval=-1 \
                 ! video/x-h264,stream-format=byte-stream,alignment=au"
            }
        }
    }
    pub fn decoder(self) -> &'static str {
        match self {
            ClipCodec::Vp8 => "vp8dec threads=1",
            ClipCodec::H264 => "h264parse ! avdec_h264 max-threads=1",
        }
    }
    fn file(self, seconds: u64) -> String {
        match self {
            ClipCodec::Vp8 => format!("vp8-360p-{seconds}s.webm"),
            ClipCodec::H264 => format!("h264-360p-{seconds}s.mkv"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ClipFrame {
    pub data: Bytes,
    pub marker: bool,
    /// Audio: the frame's level as RFC 6464 sends it (-dBov, 127 is silence), measured once
    /// at load, so the generator can send the audio-level extension as a browser does.
    pub level: u8,
}

/// RFC 6464's level (-dBov, 0..=127) of PCM in [-1, 1].
pub fn audio_level(pcm: &[f32]) -> u8 {
    let rms = (pcm.iter().map(|x| x * x).sum::<f32>() / pcm.len().max(1) as f32).sqrt();
    if rms <= 0.0 {
        return 127;
    }
    (-20.0 * rms.log10()).round().clamp(0.0, 127.0) as u8
}

/// Sets each Opus frame's level by decoding it once.
fn measure_levels(clip: &mut Clip) -> anyhow::Result<()> {
    let mut dec = opus::Decoder::new(48_000, opus::Channels::Mono)?;
    let mut pcm = vec![0f32; 5760];
    for f in &mut clip.frames {
        let n = dec.decode_float(&f.data, &mut pcm, false)?;
        f.level = audio_level(&pcm[..n]);
    }
    Ok(())
}

/// A looping clip of encoded frames of equal duration.
#[derive(Clone, Debug)]
pub struct Clip {
    pub frames: Vec<ClipFrame>,
    pub frame_duration: Duration,
    pub path: PathBuf,
}

/// The small clip's size and bitrate: what a browser sends when the server asks it for a
/// trickle (REMB) while it is off screen.
pub const SMALL: (usize, usize, u32) = (160, 90, 60);

#[derive(Clone, Debug)]
pub struct Clips {
    pub vp8: Clip,
    /// The same pictures at [`SMALL`] size and bitrate, keyframes on the same frames: the
    /// generator switches to it when REMB caps it below the full clip.
    pub vp8_small: Clip,
    pub h264: Clip,
    pub speech: Clip,
    /// One second of Opus-encoded silence (what a quiet microphone sends).
    pub silence: Clip,
}

fn silence() -> anyhow::Result<Clip> {
    let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip)?;
    let pcm = [0f32; 960];
    let mut out = [0u8; 400];
    let frames = (0..50)
        .map(|_| {
            let n = enc.encode_float(&pcm, &mut out)?;
            Ok(ClipFrame {
                data: Bytes::copy_from_slice(&out[..n]),
                marker: false,
                level: 127,
            })
        })
        .collect::<Result<Vec<_>, opus::Error>>()?;
    Ok(Clip {
        frames,
        frame_duration: Duration::from_millis(20),
        path: PathBuf::new(),
    })
}

fn patch_on(frame: u64) -> bool {
    frame % VIDEO_MARK_EVERY < VIDEO_MARK_EVERY / 2
}

/// One raw I420 frame: a diagonal gradient drifting right, a bouncing box (motion for the
/// encoders), and the marker patch.
fn raw_frame(i: u64) -> Vec<u8> {
    let (w, h) = (WIDTH, HEIGHT);
    let mut f = vec![0u8; w * h * 3 / 2];
    let shift = (i * 4) as usize;
    for y in 0..h {
        let row = &mut f[y * w..(y + 1) * w];
        for (x, p) in row.iter_mut().enumerate() {
            *p = (((x + y + shift) / 2) % 200 + 30) as u8;
        }
    }
    let bx = ((i * 7) as usize) % (w - 80);
    let by = ((((i as f32) * 0.2).sin() * 0.5 + 0.5) * (h - 80) as f32) as usize;
    for y in by..by + 80 {
        for x in bx..bx + 80 {
            f[y * w + x] = 235;
        }
    }
    let (px, py, ps) = PATCH;
    let luma = if patch_on(i) { 255 } else { 0 };
    for y in py..py + ps {
        for x in px..px + ps {
            f[y * w + x] = luma;
        }
    }
    let chroma = &mut f[w * h..];
    chroma.fill(128);
    f
}

/// Speech-like audio: a gliding voiced tone with harmonics, in syllables of ~250 ms, with a
/// pause around each marker burst.
fn speech(seconds: u64) -> Vec<f32> {
    let n = seconds as usize * SAMPLE_RATE;
    let mut out = vec![0f32; n];
    let mut phase = 0f32;
    for (i, s) in out.iter_mut().enumerate() {
        let t = i as f32 / SAMPLE_RATE as f32;
        let in_second = t.fract();
        let f0 = 140.0 + 25.0 * (2.0 * std::f32::consts::PI * 0.7 * t).sin();
        phase += 2.0 * std::f32::consts::PI * f0 / SAMPLE_RATE as f32;
        let syllable = (2.0 * std::f32::consts::PI * 4.0 * t).sin().max(0.0);
        let voiced: f32 = (1..=8).map(|k| (phase * k as f32).sin() / k as f32).sum();
        let speaking = !(0.9..=1.0).contains(&in_second) && in_second > 0.1;
        let mut v = if speaking {
            0.15 * syllable * voiced
        } else {
            0.0
        };
        if in_second < 0.04 {
            v += 0.5 * (2.0 * std::f32::consts::PI * CLICK_HZ * t).sin();
        }
        *s = v;
    }
    out
}

fn run_to_eos(pipeline: &gst::Pipeline) -> anyhow::Result<()> {
    pipeline.set_state(gst::State::Playing)?;
    let bus = pipeline.bus().ok_or_else(|| anyhow!("no bus"))?;
    let result = loop {
        let Some(msg) = bus.timed_pop(gst::ClockTime::from_seconds(120)) else {
            break Err(anyhow!("timed out"));
        };
        match msg.view() {
            gst::MessageView::Eos(_) => break Ok(()),
            gst::MessageView::Error(e) => break Err(anyhow!("{}", e.error())),
            _ => {}
        }
    };
    pipeline.set_state(gst::State::Null)?;
    result
}

fn launch(desc: &str) -> anyhow::Result<gst::Pipeline> {
    gst::parse::launch(desc)?
        .downcast::<gst::Pipeline>()
        .map_err(|_| anyhow!("not a pipeline"))
}

/// Runs `desc` (an `appsrc name=src` … `filesink name=out` chain) to completion, writing `path`
/// from `buffers`: (data, pts, duration) in nanoseconds.
fn encode_to_file(
    desc: &str,
    path: &Path,
    buffers: impl Iterator<Item = (Vec<u8>, u64, u64)> + Send,
) -> anyhow::Result<()> {
    let pipeline = launch(desc)?;
    pipeline
        .by_name("out")
        .ok_or_else(|| anyhow!("no filesink"))?
        .set_property("location", path.to_string_lossy().to_string());
    let src = pipeline
        .by_name("src")
        .and_then(|s| s.downcast::<gst_app::AppSrc>().ok())
        .ok_or_else(|| anyhow!("no appsrc"))?;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for (data, pts, duration) in buffers {
                let mut buffer = gst::Buffer::from_slice(data);
                if let Some(b) = buffer.get_mut() {
                    b.set_pts(gst::ClockTime::from_nseconds(pts));
                    b.set_duration(gst::ClockTime::from_nseconds(duration));
                }
                if src.push_buffer(buffer).is_err() {
                    return;
                }
            }
            let _ = src.end_of_stream();
        });
        run_to_eos(&pipeline)
    })
}

fn generate_video(path: &Path, codec: ClipCodec, seconds: u64) -> anyhow::Result<()> {
    let desc = format!(
        "appsrc name=src format=time caps=video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={FPS}/1 \
         ! {} ! filesink name=out",
        codec.encoder()
    );
    generate_frames(&desc, path, seconds)
}

/// The small VP8 clip: the same frames scaled down, keyframes every 60 frames as the full one.
fn generate_small(path: &Path, seconds: u64) -> anyhow::Result<()> {
    let (w, h, kbps) = SMALL;
    let desc = format!(
        "appsrc name=src format=time caps=video/x-raw,format=I420,width={WIDTH},height={HEIGHT},framerate={FPS}/1 \
         ! videoscale ! video/x-raw,width={w},height={h} \
         ! vp8enc deadline=1 cpu-used=-6 threads=1 target-bitrate={} end-usage=cbr lag-in-frames=0 \
           keyframe-max-dist=60 ! webmmux ! filesink name=out",
        kbps * 1000
    );
    generate_frames(&desc, path, seconds)
}

fn generate_frames(desc: &str, path: &Path, seconds: u64) -> anyhow::Result<()> {
    let frame_ns = 1_000_000_000 / FPS;
    let frames = (0..seconds * FPS).map(|i| (raw_frame(i), i * frame_ns, frame_ns));
    encode_to_file(desc, path, frames)
}

fn generate_speech(path: &Path, seconds: u64) -> anyhow::Result<()> {
    let desc = format!(
        "appsrc name=src format=time caps=audio/x-raw,format=F32LE,rate={SAMPLE_RATE},channels=1,layout=interleaved \
         ! audioconvert ! opusenc frame-size=20 bitrate=32000 ! oggmux ! filesink name=out"
    );
    const FRAME_NS: u64 = 20_000_000;
    let pcm = speech(seconds);
    let chunks = pcm.chunks(960).enumerate().map(|(i, chunk)| {
        let bytes = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
        (bytes, i as u64 * FRAME_NS, FRAME_NS)
    });
    encode_to_file(&desc, path, chunks)
}

/// Reads every encoded frame of a file through `demux`.
fn load(path: &Path, demux: &str, every: u64, frame_duration: Duration) -> anyhow::Result<Clip> {
    let pipeline = launch(&format!(
        "filesrc name=in ! {demux} ! appsink name=sink sync=false"
    ))?;
    pipeline
        .by_name("in")
        .ok_or_else(|| anyhow!("no filesrc"))?
        .set_property("location", path.to_string_lossy().to_string());
    let sink = pipeline
        .by_name("sink")
        .and_then(|s| s.downcast::<gst_app::AppSink>().ok())
        .ok_or_else(|| anyhow!("no appsink"))?;
    pipeline.set_state(gst::State::Playing)?;
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        if let Some(buffer) = sample.buffer()
            && let Ok(map) = buffer.map_readable()
        {
            let index = frames.len() as u64;
            frames.push(ClipFrame {
                data: Bytes::copy_from_slice(&map),
                marker: index.is_multiple_of(every),
                level: 127,
            });
        }
    }
    pipeline.set_state(gst::State::Null)?;
    if frames.is_empty() {
        return Err(anyhow!("{} has no frames", path.display()));
    }
    Ok(Clip {
        frames,
        frame_duration,
        path: path.to_owned(),
    })
}

/// Loads the clips from `cache`, generating any that are missing.
pub fn load_or_generate(cache: &Path, seconds: u64) -> anyhow::Result<Clips> {
    gst::init()?;
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let clip = |codec: ClipCodec| -> anyhow::Result<Clip> {
        let path = cache.join(codec.file(seconds));
        if !path.exists() {
            let tmp = path.with_extension("part");
            generate_video(&tmp, codec, seconds)?;
            std::fs::rename(&tmp, &path)?;
        }
        load(
            &path,
            codec.demuxer(),
            VIDEO_MARK_EVERY,
            Duration::from_secs(1) / FPS as u32,
        )
    };
    let vp8 = clip(ClipCodec::Vp8)?;
    let h264 = clip(ClipCodec::H264)?;
    let small_path = cache.join(format!("vp8-{}p-{seconds}s.webm", SMALL.1));
    if !small_path.exists() {
        let tmp = small_path.with_extension("part");
        generate_small(&tmp, seconds)?;
        std::fs::rename(&tmp, &small_path)?;
    }
    let vp8_small = load(
        &small_path,
        ClipCodec::Vp8.demuxer(),
        VIDEO_MARK_EVERY,
        Duration::from_secs(1) / FPS as u32,
    )?;
    let path = cache.join(format!("speech-{seconds}s.ogg"));
    if !path.exists() {
        let tmp = path.with_extension("part");
        generate_speech(&tmp, seconds)?;
        std::fs::rename(&tmp, &path)?;
    }
    // Ogg starts with two header packets (OpusHead, OpusTags) that are not audio.
    let mut speech = load(&path, "oggdemux", 1, Duration::from_millis(20))?;
    speech
        .frames
        .retain(|f| !f.data.starts_with(b"OpusHead") && !f.data.starts_with(b"OpusTags"));
    for (i, f) in speech.frames.iter_mut().enumerate() {
        f.marker = (i as u64).is_multiple_of(AUDIO_MARK_EVERY);
    }
    measure_levels(&mut speech)?;
    Ok(Clips {
        vp8,
        vp8_small,
        h264,
        speech,
        silence: silence()?,
    })
}

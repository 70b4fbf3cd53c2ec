//! What a client received, kept the way a person would judge it: the last decoded frame,
//! arrival times, decoded audio, and the probes the latency measurements read.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A decoded RGB frame.
#[derive(Clone)]
pub struct RgbFrame {
    pub width: u32,
    pub height: u32,
    pub data: Vec<u8>,
}

impl RgbFrame {
    /// Mean colour of the central half of `[x, y, w, h]`.
    pub fn mean(&self, rect: [u32; 4]) -> [f32; 3] {
        let [x, y, w, h] = rect;
        let (x0, x1) = (x + w / 4, x + 3 * w / 4);
        let (y0, y1) = (y + h / 4, y + 3 * h / 4);
        let mut sum = [0f64; 3];
        let mut n = 0f64;
        for yy in y0..y1.min(self.height) {
            for xx in x0..x1.min(self.width) {
                let i = ((yy * self.width + xx) * 3) as usize;
                for (c, s) in sum.iter_mut().enumerate() {
                    *s += self.data[i + c] as f64;
                }
                n += 1.0;
            }
        }
        [
            (sum[0] / n) as f32,
            (sum[1] / n) as f32,
            (sum[2] / n) as f32,
        ]
    }
}

/// What a client has received, as a person would perceive it.
#[derive(Default)]
pub struct Received {
    pub last_frame: Mutex<Option<RgbFrame>>,
    pub frames: Mutex<Vec<Instant>>,
    pub audio: Mutex<VecDeque<f32>>,
    pub audio_packets: Mutex<Vec<Instant>>,
    pub video_codec: Mutex<Option<String>>,
    /// A rectangle whose mean colour is logged for every decoded frame (latency probes).
    pub watch: Mutex<Option<[u32; 4]>>,
    pub colours: Mutex<Vec<(Instant, [f32; 3])>>,
    /// RMS of every received audio packet, with its arrival time.
    pub loudness: Mutex<Vec<(Instant, f32)>>,
    /// Arrival time and RTP timestamp of the last packet of every composite frame (marker
    /// bit), recorded without decoding: output pacing.
    pub rtp_frames: Mutex<Vec<(Instant, u32)>>,
    /// RTP timestamps of the VP8 keyframes among them (to tell keyframe encode spikes from
    /// other lateness).
    pub keyframes: Mutex<Vec<u32>>,
    /// When set, the power (dB) of this frequency in every decoded audio packet is logged in
    /// `probe_power` (latency markers in the mix).
    pub probe_hz: Mutex<Option<f32>>,
    pub probe_power: Mutex<Vec<(Instant, f32)>>,
}

/// Audio kept per client for analysis: 2 s at 48 kHz.
const AUDIO_KEPT: usize = 96_000;

impl Received {
    pub fn push_frame(&self, f: RgbFrame) {
        let now = Instant::now();
        if let Some(rect) = *self.watch.lock().unwrap() {
            self.colours.lock().unwrap().push((now, f.mean(rect)));
        }
        *self.last_frame.lock().unwrap() = Some(f);
        self.frames.lock().unwrap().push(now);
    }

    pub fn push_audio(&self, pcm: &[f32]) {
        let now = Instant::now();
        let rms = (pcm.iter().map(|x| x * x).sum::<f32>() / pcm.len().max(1) as f32).sqrt();
        self.loudness.lock().unwrap().push((now, rms));
        if let Some(hz) = *self.probe_hz.lock().unwrap() {
            self.probe_power
                .lock()
                .unwrap()
                .push((now, tone_db(pcm, hz)));
        }
        let mut a = self.audio.lock().unwrap();
        a.extend(pcm);
        let excess = a.len().saturating_sub(AUDIO_KEPT);
        a.drain(..excess);
        self.audio_packets.lock().unwrap().push(Instant::now());
    }

    pub fn frame_count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    pub fn audio_packet_count(&self) -> usize {
        self.audio_packets.lock().unwrap().len()
    }

    pub fn frame(&self) -> Option<RgbFrame> {
        self.last_frame.lock().unwrap().clone()
    }

    /// The last `n` audio samples.
    pub fn recent_audio(&self, n: usize) -> Vec<f32> {
        let a = self.audio.lock().unwrap();
        a.iter().skip(a.len().saturating_sub(n)).copied().collect()
    }

    /// Longest gap between consecutive video frames, and between audio packets, after `since`.
    pub fn max_gaps(&self, since: Instant) -> (Duration, Duration) {
        fn gap(times: &[Instant], since: Instant) -> Duration {
            times
                .windows(2)
                .filter(|w| w[1] >= since)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or(Duration::MAX)
        }
        (
            gap(&self.frames.lock().unwrap(), since),
            gap(&self.audio_packets.lock().unwrap(), since),
        )
    }
}

/// Power of `freq` in `samples` (48 kHz), in dB relative to a full-scale sine (Goertzel).
pub fn tone_db(samples: &[f32], freq: f32) -> f32 {
    let w = 2.0 * std::f32::consts::PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f32, 0f32);
    for x in samples {
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len().max(1) as f32;
    let normalised = power / (n * n / 4.0);
    10.0 * normalised.max(1e-12).log10()
}

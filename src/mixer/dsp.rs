//! Pure audio pieces of the mixer: a per-source jitter FIFO, sequence tracking, summing and a
//! soft limiter. No codecs, no tokio, no clocks: unit-tested directly.

use std::collections::VecDeque;

/// 48 kHz mono, 20 ms: the mixer's frame.
pub const SAMPLE_RATE: u32 = 48_000;
pub const FRAME_SAMPLES: usize = 960;

/// Below this the limiter is transparent; above it, peaks bend smoothly towards full scale.
const KNEE: f32 = 0.6;

/// Soft limiter: identity below the knee, then a tanh curve that never reaches 1.0. Several
/// loud speakers at once compress instead of hard-clipping.
pub fn limit(x: f32) -> f32 {
    let a = x.abs();
    if a <= KNEE {
        x
    } else {
        let room = 1.0 - KNEE;
        (KNEE + room * ((a - KNEE) / room).tanh()).copysign(x)
    }
}

/// `out = limit(full - own)`: the mix-minus for a listener whose own contribution is `own`.
pub fn mix_minus(full: &[f32], own: Option<&[f32]>, out: &mut [f32]) {
    match own {
        Some(own) => {
            for ((o, f), s) in out.iter_mut().zip(full).zip(own) {
                *o = limit(f - s);
            }
        }
        None => {
            for (o, f) in out.iter_mut().zip(full) {
                *o = limit(*f);
            }
        }
    }
}

/// Below this RMS (about -50 dBFS) a frame counts as silence.
pub const SILENCE_RMS: f32 = 0.003;
/// Frames a source keeps counting as speaking after its last loud frame (500 ms), so that
/// pauses between words do not flap.
pub const HANGOVER_FRAMES: u32 = 25;

/// Root mean square of a frame.
pub fn rms(frame: &[f32]) -> f32 {
    (frame.iter().map(|x| x * x).sum::<f32>() / frame.len().max(1) as f32).sqrt()
}

/// Is a source speaking? A silent source's mix-minus equals the full mix, so it can share
/// the one encode of the full mix instead of running its own encoder.
#[derive(Debug, Clone, Default)]
pub struct VoiceActivity {
    remaining: u32,
}

impl VoiceActivity {
    /// Feeds one frame's RMS (`None`: the source had no frame). Returns whether the source
    /// counts as speaking for this frame.
    pub fn handle_frame(&mut self, rms: Option<f32>) -> bool {
        if rms.is_some_and(|r| r > SILENCE_RMS) {
            self.remaining = HANGOVER_FRAMES;
            return true;
        }
        if self.remaining > 0 {
            self.remaining -= 1;
            return true;
        }
        false
    }
}

/// What an arriving sequence number means for a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// The next packet (or the first).
    InOrder,
    /// `n` packets were skipped before this one.
    Gap(u16),
    /// A duplicate or a packet that arrived after a later one: drop it.
    Late,
}

/// A sequence jump at least this large (either way) is a stream restart, not loss or reorder.
const RESTART_JUMP: u16 = 3000;

#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    last: Option<u16>,
}

impl SeqTracker {
    pub fn handle(&mut self, seq: u16) -> SeqVerdict {
        let Some(last) = self.last else {
            self.last = Some(seq);
            return SeqVerdict::InOrder;
        };
        let delta = seq.wrapping_sub(last);
        if delta == 0 || (delta > 0x8000 && 0u16.wrapping_sub(delta) < RESTART_JUMP) {
            return SeqVerdict::Late;
        }
        self.last = Some(seq);
        if delta == 1 {
            SeqVerdict::InOrder
        } else if delta >= RESTART_JUMP {
            // A jump this large is a stream restart, not loss.
            SeqVerdict::InOrder
        } else {
            SeqVerdict::Gap(delta - 1)
        }
    }
}

/// Decoded audio of one source waiting to be mixed. Playback starts once `target` samples are
/// queued; the queue is trimmed back to `target` when it grows past `max` (a burst after a
/// stall), so latency stays bounded.
#[derive(Debug)]
pub struct SourceFifo {
    samples: VecDeque<f32>,
    target: usize,
    max: usize,
    playing: bool,
}

impl SourceFifo {
    pub fn new(target: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(target * 4),
            target,
            max: target + 4 * FRAME_SAMPLES,
            playing: false,
        }
    }

    pub fn push(&mut self, pcm: &[f32]) {
        self.samples.extend(pcm);
        if self.samples.len() > self.max {
            let excess = self.samples.len() - self.target;
            self.samples.drain(..excess);
        }
    }

    /// Fills `out` with the next frame. Returns false (and leaves `out` untouched) when the
    /// source has nothing to play: not started, or ran dry (then it re-buffers).
    pub fn pop_frame(&mut self, out: &mut [f32]) -> bool {
        if !self.playing {
            if self.samples.len() < self.target.max(out.len()) {
                return false;
            }
            self.playing = true;
        }
        if self.samples.len() < out.len() {
            self.playing = false;
            return false;
        }
        let n = out.len();
        for (o, s) in out.iter_mut().zip(self.samples.drain(..n)) {
            *o = s;
        }
        true
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Forgets everything queued and waits to pre-buffer again (a source entering the mix
    /// starts from fresh packets, not from stale ones).
    pub fn clear(&mut self) {
        self.samples.clear();
        self.playing = false;
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// How much a source's gain moves per frame when it enters or leaves the mix: a fade over
/// two frames (40 ms), short enough to be unnoticed and long enough to never click.
pub const FADE_STEP: f32 = 0.5;

/// Scales `frame` by a gain moving linearly from `*gain` towards `target` (by at most
/// [`FADE_STEP`] over the frame), sample by sample, and leaves the new gain in `*gain`.
pub fn fade(frame: &mut [f32], gain: &mut f32, target: f32) {
    let from = *gain;
    let to = if target > from {
        (from + FADE_STEP).min(target)
    } else {
        (from - FADE_STEP).max(target)
    };
    if from == 1.0 && to == 1.0 {
        return;
    }
    let n = frame.len().max(1) as f32;
    for (i, x) in frame.iter_mut().enumerate() {
        *x *= from + (to - from) * (i as f32 + 1.0) / n;
    }
    *gain = to;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fades_are_smooth_ramps_over_two_frames() {
        let mut gain = 0.0;
        let mut a = vec![1.0f32; FRAME_SAMPLES];
        fade(&mut a, &mut gain, 1.0);
        assert_eq!(gain, FADE_STEP);
        let mut b = vec![1.0f32; FRAME_SAMPLES];
        fade(&mut b, &mut gain, 1.0);
        assert_eq!(gain, 1.0);
        let ramp: Vec<f32> = a.into_iter().chain(b).collect();
        // Never a step larger than one sample's share of the ramp: no click.
        let max_step = ramp
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0f32, f32::max);
        assert!(max_step <= 1.0 / FRAME_SAMPLES as f32 + 1e-6, "{max_step}");
        assert!(ramp[0] < 0.01 && (ramp[ramp.len() - 1] - 1.0).abs() < 1e-6);
        // At full gain a frame is untouched; fading out reaches silence in two frames.
        let mut c = vec![0.3f32; 4];
        fade(&mut c, &mut gain, 1.0);
        assert_eq!(c, vec![0.3; 4]);
        fade(&mut c, &mut gain, 0.0);
        fade(&mut c, &mut gain, 0.0);
        assert_eq!(gain, 0.0);
    }

    #[test]
    fn limiter_is_transparent_then_bounded_and_monotonic() {
        assert_eq!(limit(0.3), 0.3);
        assert_eq!(limit(-0.6), -0.6);
        let mut prev = 0.0;
        for i in 0..400 {
            let x = i as f32 * 0.01;
            let y = limit(x);
            assert!(y <= 1.0 && y >= prev, "limit({x}) = {y}");
            assert_eq!(limit(-x), -y);
            prev = y;
        }
    }

    #[test]
    fn mix_minus_removes_own_voice() {
        let a = [0.2f32; 4];
        let b = [0.1f32; 4];
        let full: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let mut out = [0.0; 4];
        mix_minus(&full, Some(&a), &mut out);
        for o in out {
            assert!((o - 0.1).abs() < 1e-6);
        }
        mix_minus(&full, None, &mut out);
        for o in out {
            assert!((o - 0.3).abs() < 1e-6);
        }
    }

    #[test]
    fn voice_activity_with_hangover() {
        let mut v = VoiceActivity::default();
        assert!(!v.handle_frame(None));
        assert!(!v.handle_frame(Some(0.0)));
        assert!(v.handle_frame(Some(0.1)));
        for _ in 0..HANGOVER_FRAMES {
            assert!(v.handle_frame(Some(0.0)), "hangover");
        }
        assert!(!v.handle_frame(Some(0.001)));
        assert!(!v.handle_frame(None));
        let loud = vec![0.5f32; 960];
        assert!(rms(&loud) > 0.49 && rms(&[0.0; 960]) == 0.0);
    }

    #[test]
    fn sequence_tracking() {
        let mut t = SeqTracker::default();
        assert_eq!(t.handle(65534), SeqVerdict::InOrder);
        assert_eq!(t.handle(65535), SeqVerdict::InOrder);
        assert_eq!(t.handle(0), SeqVerdict::InOrder, "wraps");
        assert_eq!(t.handle(3), SeqVerdict::Gap(2));
        assert_eq!(t.handle(2), SeqVerdict::Late);
        assert_eq!(t.handle(3), SeqVerdict::Late);
        assert_eq!(t.handle(40000), SeqVerdict::InOrder, "restart");
    }

    #[test]
    fn fifo_prebuffers_plays_and_rebuffers() {
        let mut f = SourceFifo::new(FRAME_SAMPLES);
        let mut out = vec![0.0; FRAME_SAMPLES];
        assert!(!f.pop_frame(&mut out));
        f.push(&vec![0.5; FRAME_SAMPLES / 2]);
        assert!(!f.pop_frame(&mut out), "not enough yet");
        f.push(&vec![0.5; FRAME_SAMPLES / 2]);
        assert!(f.pop_frame(&mut out));
        assert_eq!(out[0], 0.5);
        assert!(!f.pop_frame(&mut out), "ran dry");
        assert!(f.is_empty());
    }

    #[test]
    fn fifo_bounds_latency() {
        let mut f = SourceFifo::new(FRAME_SAMPLES);
        for _ in 0..50 {
            f.push(&vec![0.1; FRAME_SAMPLES]);
        }
        assert!(f.len() <= FRAME_SAMPLES * 5, "{}", f.len());
        let mut out = vec![0.0; FRAME_SAMPLES];
        assert!(f.pop_frame(&mut out));
    }
}

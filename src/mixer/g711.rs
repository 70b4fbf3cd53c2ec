//! G.711 (PCMU / PCMA) for telephone-grade participants: the two companding laws of ITU-T
//! G.711 at 8 kHz, and the ×6 resamplers that join them to the mixer's 48 kHz frames
//! ([`dsp::SAMPLE_RATE`](crate::mixer::dsp::SAMPLE_RATE),
//! [`dsp::FRAME_SAMPLES`](crate::mixer::dsp::FRAME_SAMPLES)).
//!
//! Inbound: [`decode`] a packet's payload (one byte per 8 kHz sample), then [`Upsampler`] to
//! 48 kHz. Outbound: [`Downsampler`] a listener's 48 kHz mix-minus to 8 kHz (low-passed first,
//! so what lies above 4.5 kHz cannot fold back into the voice band), then [`encode`] 160 bytes
//! per 20 ms.
//!
//! Pure: no clocks, no RTP, no GStreamer. It does not allocate per call once a resampler has
//! seen its first frame (only the caller's `out` grows). It never panics on any payload; a
//! sample outside -1.0..1.0 saturates.

use std::sync::OnceLock;

/// G.711's sampling rate.
pub const SAMPLE_RATE: u32 = 8_000;
/// Samples (and payload bytes) per 20 ms at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// 48 kHz / 8 kHz.
pub const RATIO: usize = 6;
/// Delay of each resampler, in 48 kHz samples (about 1.5 ms): a signal sent through a
/// [`Downsampler`] and back through an [`Upsampler`] comes out `2 * FILTER_DELAY` samples late.
pub const FILTER_DELAY: usize = (DESIGN_TAPS - 1) / 2;

const _: () = assert!(SAMPLE_RATE as usize * RATIO == super::dsp::SAMPLE_RATE as usize);
const _: () = assert!(FRAME_SAMPLES * RATIO == super::dsp::FRAME_SAMPLES);

/// The companding law of a G.711 stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Law {
    /// μ-law: PCMU, static RTP payload type 0.
    Mu,
    /// A-law: PCMA, static RTP payload type 8.
    A,
}

impl Law {
    /// The static RTP payload type (RFC 3551).
    pub fn payload_type(self) -> u8 {
        match self {
            Law::Mu => 0,
            Law::A => 8,
        }
    }

    /// The law of a static RTP payload type, if it is PCMU (0) or PCMA (8).
    pub fn from_payload_type(pt: u8) -> Option<Law> {
        match pt {
            0 => Some(Law::Mu),
            8 => Some(Law::A),
            _ => None,
        }
    }

    /// One G.711 byte to a 16-bit linear sample (the decoder values of G.711 tables 1 and 2,
    /// scaled to 16 bits: μ-law peaks at ±32124, A-law at ±32256).
    pub fn decode_sample(self, byte: u8) -> i16 {
        match self {
            Law::Mu => MU_DECODE[byte as usize],
            Law::A => A_DECODE[byte as usize],
        }
    }

    /// One 16-bit linear sample to a G.711 byte: the code whose decision interval holds the
    /// sample (each code decodes to the centre of its interval). μ-law clips at ±32635.
    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            Law::Mu => mu_encode(sample),
            Law::A => a_encode(sample),
        }
    }
}

/// Appends the payload's samples (8 kHz, one per byte) to `out`, scaled to -1.0..1.0.
pub fn decode(law: Law, payload: &[u8], out: &mut Vec<f32>) {
    let table = match law {
        Law::Mu => &MU_DECODE,
        Law::A => &A_DECODE,
    };
    out.extend(
        payload
            .iter()
            .map(|&b| f32::from(table[b as usize]) / 32768.0),
    );
}

/// Appends one G.711 byte per 8 kHz sample to `out`. Samples outside -1.0..1.0 saturate;
/// NaN encodes as silence.
pub fn encode(law: Law, pcm8k: &[f32], out: &mut Vec<u8>) {
    // `as` saturates and maps NaN to 0.
    let linear = |x: f32| (x * 32768.0).round() as i16;
    match law {
        Law::Mu => out.extend(pcm8k.iter().map(|&x| mu_encode(linear(x)))),
        Law::A => out.extend(pcm8k.iter().map(|&x| a_encode(linear(x)))),
    }
}

/// μ-law's encoder bias (33 in G.711's 14-bit scale, ×4).
const MU_BIAS: i32 = 0x84;
/// Largest magnitude μ-law encodes before `MU_BIAS` would overflow 15 bits.
const MU_CLIP: i32 = 32635;

static MU_DECODE: [i16; 256] = mu_table();
static A_DECODE: [i16; 256] = a_table();

const fn mu_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        // Codes are sent inverted; then sign (1 = positive), 3-bit segment, 4-bit step.
        let u = !(i as u8);
        let segment = (u >> 4) & 0x07;
        let step = (u & 0x0f) as i32;
        let magnitude = (((step << 3) + MU_BIAS) << segment) - MU_BIAS;
        table[i] = if u & 0x80 != 0 {
            -magnitude as i16
        } else {
            magnitude as i16
        };
        i += 1;
    }
    table
}

const fn a_table() -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        // Even bits are sent inverted (0x55); then sign (1 = positive), segment, step.
        let a = (i as u8) ^ 0x55;
        let segment = ((a >> 4) & 0x07) as i32;
        let step = ((a & 0x0f) as i32) << 4;
        let magnitude = if segment == 0 {
            step + 8
        } else {
            (step + 0x108) << (segment - 1)
        };
        table[i] = if a & 0x80 != 0 {
            magnitude as i16
        } else {
            -magnitude as i16
        };
        i += 1;
    }
    table
}

fn mu_encode(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0x00 };
    let biased = (i32::from(sample).abs().min(MU_CLIP) + MU_BIAS) as u32;
    // The segment is where the biased magnitude's top bit sits (bit 7 → 0 ... bit 14 → 7).
    let segment = 31 - biased.leading_zeros() - 7;
    let step = (biased >> (segment + 3)) & 0x0f;
    !(sign | (segment << 4) as u8 | step as u8)
}

fn a_encode(sample: i16) -> u8 {
    // 13-bit magnitude; negatives are offset by one so that -8 and +8 mirror each other.
    let (mask, magnitude) = if sample >= 0 {
        (0xd5, (i32::from(sample) >> 3) as u32)
    } else {
        (0x55, (-(i32::from(sample) >> 3) - 1) as u32)
    };
    // Segments 0 and 1 share one step size; from 32 upwards the top bit picks the segment.
    let segment = if magnitude < 32 {
        0
    } else {
        31 - magnitude.leading_zeros() - 4
    };
    let step = if segment < 2 {
        (magnitude >> 1) & 0x0f
    } else {
        (magnitude >> segment) & 0x0f
    };
    (((segment << 4) as u8) | step as u8) ^ mask
}

/// Length of the designed low-pass (odd, so its delay is a whole number of samples).
const DESIGN_TAPS: usize = 143;
/// Taps as stored: the design plus one zero, a whole number of polyphase branches.
const TAPS: usize = DESIGN_TAPS + 1;
/// Taps of each of the upsampler's six branches.
const PHASE_TAPS: usize = TAPS / RATIO;
/// Half-amplitude point of the low-pass: flat (±0.1 dB) to 3.2 kHz, -20 dB at 4 kHz, below
/// -57 dB from 4.5 kHz up.
const CUTOFF_HZ: f64 = 3_700.0;
/// Kaiser window shape: trades stopband depth against transition width.
const KAISER_BETA: f64 = 5.0;
/// [`dot`] works in lanes of this many.
const LANES: usize = 8;

const _: () = assert!(TAPS.is_multiple_of(RATIO) && TAPS.is_multiple_of(LANES) && RATIO <= LANES);

/// The one low-pass both directions share, laid out against a window of input ordered oldest
/// to newest.
struct Kernel {
    /// `h` reversed, unity gain at DC, for [`dot`].
    down: [f32; TAPS],
    /// `up[w][p]` weighs window sample `w` (input `m - 23 + w`) into output `6m + p`: the six
    /// polyphase branches side by side (lanes 6 and 7 stay zero), so one pass over the window
    /// makes all six outputs. ×6 makes up for the five zeros stuffed between input samples.
    up: [[f32; LANES]; PHASE_TAPS],
}

impl Kernel {
    fn get() -> &'static Kernel {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        KERNEL.get_or_init(Kernel::design)
    }

    /// Kaiser-windowed sinc at 48 kHz, normalised to unity gain at DC.
    fn design() -> Kernel {
        let mut h = [0f64; TAPS];
        let centre = FILTER_DELAY as f64;
        let wc = 2.0 * std::f64::consts::PI * CUTOFF_HZ / f64::from(super::dsp::SAMPLE_RATE);
        for (i, tap) in h.iter_mut().enumerate().take(DESIGN_TAPS) {
            let t = i as f64 - centre;
            let sinc = if t == 0.0 {
                wc / std::f64::consts::PI
            } else {
                (wc * t).sin() / (std::f64::consts::PI * t)
            };
            let r = t / centre;
            *tap = sinc * bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / bessel_i0(KAISER_BETA);
        }
        let sum: f64 = h.iter().sum();
        let mut down = [0f32; TAPS];
        for (w, d) in down.iter_mut().enumerate() {
            *d = (h[TAPS - 1 - w] / sum) as f32;
        }
        let mut up = [[0f32; LANES]; PHASE_TAPS];
        for (w, lanes) in up.iter_mut().enumerate() {
            for (p, u) in lanes.iter_mut().take(RATIO).enumerate() {
                *u = (RATIO as f64 * h[p + RATIO * (PHASE_TAPS - 1 - w)] / sum) as f32;
            }
        }
        Kernel { down, up }
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernel({TAPS} taps, {CUTOFF_HZ} Hz)")
    }
}

/// Modified Bessel function of the first kind, order 0 (power series).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term, mut k) = (1.0, 1.0, 1.0);
    while term > 1e-12 * sum {
        term *= (x / (2.0 * k)).powi(2);
        sum += term;
        k += 1.0;
    }
    sum
}

/// Dot product of two equal slices whose length is a multiple of [`LANES`], in independent
/// lanes so the compiler can vectorise it. Same inputs, same bits, however calls are split.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    for (x, y) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum()
}

/// 8 kHz → 48 kHz: six outputs per input, interpolated by the shared low-pass (the images of
/// the voice band, up to 3.5 kHz, fall above 4.5 kHz, where it is below -57 dB). Keeps the last
/// inputs between calls, so consecutive frames join seamlessly; any input length works.
#[derive(Debug, Clone)]
pub struct Upsampler {
    kernel: &'static Kernel,
    /// The last `PHASE_TAPS - 1` inputs, then (during a call) the new ones.
    history: Vec<f32>,
}

impl Upsampler {
    pub fn new() -> Self {
        let mut history = Vec::with_capacity(PHASE_TAPS - 1 + FRAME_SAMPLES);
        history.resize(PHASE_TAPS - 1, 0.0);
        Upsampler {
            kernel: Kernel::get(),
            history,
        }
    }

    /// Appends `6 * input.len()` samples at 48 kHz to `out`.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.history.extend_from_slice(input);
        out.reserve(input.len() * RATIO);
        for window in self.history.windows(PHASE_TAPS) {
            let mut acc = [0f32; LANES];
            for (x, taps) in window.iter().zip(&self.kernel.up) {
                for (a, t) in acc.iter_mut().zip(taps) {
                    *a += x * t;
                }
            }
            out.extend_from_slice(&acc[..RATIO]);
        }
        let consumed = self.history.len() - (PHASE_TAPS - 1);
        self.history.drain(..consumed);
    }

    /// Forgets the history, as if new (for a stream that restarts after a gap).
    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(PHASE_TAPS - 1, 0.0);
    }
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

/// 48 kHz → 8 kHz: low-passes (below -57 dB from 4.5 kHz up, so little folds back into the
/// band) and keeps every sixth sample, computing only those. Keeps the last inputs and the
/// decimation phase between calls, so any split of the input gives the same output.
#[derive(Debug, Clone)]
pub struct Downsampler {
    kernel: &'static Kernel,
    /// The last `TAPS - 1` inputs, then (during a call) the new ones.
    history: Vec<f32>,
    /// Inputs still to come before the next output (0..6).
    skip: usize,
}

impl Downsampler {
    pub fn new() -> Self {
        let mut history = Vec::with_capacity(TAPS - 1 + super::dsp::FRAME_SAMPLES);
        history.resize(TAPS - 1, 0.0);
        Downsampler {
            kernel: Kernel::get(),
            history,
            skip: 0,
        }
    }

    /// Appends one sample per six inputs to `out` (160 per 960-sample frame). The first
    /// output is made at the first input ever fed.
    pub fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.history.extend_from_slice(input);
        out.reserve(input.len() / RATIO + 1);
        let mut newest = TAPS - 1 + self.skip;
        while newest < self.history.len() {
            out.push(dot(
                &self.kernel.down,
                &self.history[newest + 1 - TAPS..=newest],
            ));
            newest += RATIO;
        }
        self.skip = newest - self.history.len();
        let consumed = self.history.len() - (TAPS - 1);
        self.history.drain(..consumed);
    }

    /// Forgets the history and phase, as if new.
    pub fn reset(&mut self) {
        self.history.clear();
        self.history.resize(TAPS - 1, 0.0);
        self.skip = 0;
    }
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE_48K: f32 = 48_000.0;
    const FRAME_48K: usize = FRAME_SAMPLES * RATIO;

    fn sine(freq: f32, amplitude: f32, len: usize, rate: f32) -> Vec<f32> {
        (0..len)
            .map(|i| amplitude * (2.0 * std::f32::consts::PI * freq * i as f32 / rate).sin())
            .collect()
    }

    fn rms(x: &[f32]) -> f32 {
        (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32).sqrt()
    }

    fn db(ratio: f32) -> f32 {
        20.0 * ratio.log10()
    }

    /// Frequency from the first and last upward zero crossings, interpolated between samples.
    fn zero_crossing_hz(x: &[f32], rate: f32) -> f32 {
        let crossings: Vec<f32> = x
            .windows(2)
            .enumerate()
            .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
            .map(|(i, w)| i as f32 + w[0] / (w[0] - w[1]))
            .collect();
        let (first, last) = (crossings[0], crossings[crossings.len() - 1]);
        (crossings.len() - 1) as f32 * rate / (last - first)
    }

    /// Amplitude of `x`'s component at `freq` (Goertzel; a sine of amplitude `a` gives `a`).
    fn goertzel_amplitude(x: &[f32], freq: f32, rate: f32) -> f32 {
        let w = 2.0 * std::f64::consts::PI * f64::from(freq) / f64::from(rate);
        let coeff = 2.0 * w.cos();
        let (mut s1, mut s2) = (0f64, 0f64);
        for &v in x {
            let s = f64::from(v) + coeff * s1 - s2;
            s2 = s1;
            s1 = s;
        }
        let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
        (2.0 * power.sqrt() / x.len() as f64) as f32
    }

    /// Down, encode, decode, up: what a 48 kHz signal sounds like after a trip through a
    /// G.711 participant's path, frame by frame.
    fn telephone_round_trip(law: Law, input: &[f32]) -> Vec<f32> {
        let (mut down, mut up) = (Downsampler::new(), Upsampler::new());
        let (mut pcm8k, mut bytes, mut decoded, mut out) = (vec![], vec![], vec![], vec![]);
        for frame in input.chunks(FRAME_48K) {
            pcm8k.clear();
            bytes.clear();
            decoded.clear();
            down.process(frame, &mut pcm8k);
            assert_eq!(pcm8k.len(), FRAME_SAMPLES);
            encode(law, &pcm8k, &mut bytes);
            assert_eq!(bytes.len(), FRAME_SAMPLES);
            decode(law, &bytes, &mut decoded);
            up.process(&decoded, &mut out);
        }
        out
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for byte in 0..=255u8 {
            let a = Law::A.decode_sample(byte);
            assert_eq!(Law::A.encode_sample(a), byte, "A-law {byte:#04x} → {a}");
            let mu = Law::Mu.decode_sample(byte);
            // 0x7f is μ-law's negative zero: it decodes to 0, which encodes as 0xff.
            let expected = if byte == 0x7f { 0xff } else { byte };
            assert_eq!(
                Law::Mu.encode_sample(mu),
                expected,
                "μ-law {byte:#04x} → {mu}"
            );
        }
    }

    #[test]
    fn decoder_values_match_the_standard() {
        // G.711 table 2 (μ-law, 14-bit decoder outputs ×4) and table 1 (A-law, 13-bit ×8);
        // cross-checked against an independent implementation (CPython's audioop).
        let mu = [
            (0xff, 0),
            (0x7f, 0),
            (0xfe, 8),
            (0xf0, 120),
            (0x70, -120),
            (0xef, 132),
            (0x80, 32124),
            (0x00, -32124),
        ];
        for (byte, value) in mu {
            assert_eq!(Law::Mu.decode_sample(byte), value, "μ-law {byte:#04x}");
        }
        let a = [
            (0xd5, 8),
            (0x55, -8),
            (0xd4, 24),
            (0x80, 5504),
            (0x00, -5504),
            (0xaa, 32256),
            (0x2a, -32256),
        ];
        for (byte, value) in a {
            assert_eq!(Law::A.decode_sample(byte), value, "A-law {byte:#04x}");
        }
    }

    #[test]
    fn encoder_values_match_the_standard() {
        // Same independent source; values away from the rounding conventions near zero.
        let cases = [
            (0, 0xff, 0xd5),
            (1000, 0xce, 0xfa),
            (-1000, 0x4e, 0x7a),
            (32767, 0x80, 0xaa),
            (-32768, 0x00, 0x2a),
        ];
        for (sample, mu, a) in cases {
            assert_eq!(Law::Mu.encode_sample(sample), mu, "μ-law of {sample}");
            assert_eq!(Law::A.encode_sample(sample), a, "A-law of {sample}");
        }
    }

    #[test]
    fn every_code_reconstructs_the_middle_of_its_decision_interval() {
        // G.711 quantises by decision intervals and decodes each to the interval's centre:
        // across all 16-bit inputs the decoded value must never go down, each code must own
        // one run of inputs, and each run's middle must be its decoded value.
        for law in [Law::Mu, Law::A] {
            let mut runs: Vec<(i32, i32, i32)> = vec![]; // (first input, last input, level)
            for sample in i16::MIN..=i16::MAX {
                let x = i32::from(sample);
                let level = i32::from(law.decode_sample(law.encode_sample(sample)));
                match runs.last_mut() {
                    Some((_, last, l)) if *l == level => *last = x,
                    Some((_, _, l)) => {
                        assert!(level > *l, "{law:?} {sample} → {level} after {l}");
                        runs.push((x, x, level));
                    }
                    None => runs.push((x, x, level)),
                }
            }
            // μ-law's two zeros (0x7f, 0xff) are one level.
            let distinct = if law == Law::Mu { 255 } else { 256 };
            assert_eq!(runs.len(), distinct, "{law:?}");
            // The outermost runs hold the clipped inputs too; skip them.
            for &(first, last, level) in &runs[1..runs.len() - 1] {
                assert!(
                    (first + last - 2 * level).abs() <= 1,
                    "{law:?} {first}..={last} decodes to {level}"
                );
            }
        }
    }

    #[test]
    fn decode_appends_scaled_samples_and_encode_saturates() {
        let mut out = vec![0.25];
        decode(Law::Mu, &[0x80, 0xff, 0x00], &mut out);
        assert_eq!(out, [0.25, 32124.0 / 32768.0, 0.0, -32124.0 / 32768.0]);

        let mut bytes = vec![];
        encode(Law::Mu, &[1.5, -2.0, f32::NAN, 0.0], &mut bytes);
        assert_eq!(bytes, [0x80, 0x00, 0xff, 0xff]);
        bytes.clear();
        encode(Law::A, &[1.5, -2.0, f32::NAN], &mut bytes);
        assert_eq!(bytes, [0xaa, 0x2a, 0xd5]);
    }

    #[test]
    fn payload_types_are_the_static_ones() {
        for law in [Law::Mu, Law::A] {
            assert_eq!(Law::from_payload_type(law.payload_type()), Some(law));
        }
        assert_eq!(Law::Mu.payload_type(), 0);
        assert_eq!(Law::A.payload_type(), 8);
        assert_eq!(Law::from_payload_type(111), None);
    }

    /// A linear sweep from 300 Hz to 3 kHz over `seconds`, at time `t`: in band everywhere,
    /// and unlike a steady tone it never repeats, so only one lag lines it up.
    fn chirp(t: f64, seconds: f64) -> f32 {
        let (f0, f1) = (300.0, 3000.0);
        let phase = 2.0 * std::f64::consts::PI * (f0 * t + (f1 - f0) * t * t / (2.0 * seconds));
        (0.5 * phase.sin()) as f32
    }

    /// `10 log10(signal power / error power)`.
    fn snr_db(signal: &[f32], got: &[f32]) -> f32 {
        let error: f32 = signal.iter().zip(got).map(|(s, g)| (s - g).powi(2)).sum();
        let power: f32 = signal.iter().map(|s| s * s).sum();
        10.0 * (power / error).log10()
    }

    #[test]
    fn each_resampler_delays_by_filter_delay() {
        let seconds = 1.0;
        let delay = FILTER_DELAY as f64 / f64::from(RATE_48K);

        // Down: output m stands for the input at 48 kHz sample 6m - FILTER_DELAY.
        let len = 50 * FRAME_48K;
        let input: Vec<f32> = (0..len)
            .map(|i| chirp(i as f64 / f64::from(RATE_48K), seconds))
            .collect();
        let mut down = vec![];
        Downsampler::new().process(&input, &mut down);
        let expected: Vec<f32> = (0..down.len())
            .map(|m| chirp(m as f64 / f64::from(SAMPLE_RATE) - delay, seconds))
            .collect();
        let snr = snr_db(&expected[FRAME_SAMPLES..], &down[FRAME_SAMPLES..]);
        assert!(snr > 50.0, "down: {snr:.1} dB");

        // Up: output n stands for the input at 48 kHz sample n - FILTER_DELAY.
        let input: Vec<f32> = (0..len / RATIO)
            .map(|m| chirp(m as f64 / f64::from(SAMPLE_RATE), seconds))
            .collect();
        let mut up = vec![];
        Upsampler::new().process(&input, &mut up);
        let expected: Vec<f32> = (0..up.len())
            .map(|n| chirp(n as f64 / f64::from(RATE_48K) - delay, seconds))
            .collect();
        let snr = snr_db(&expected[FRAME_48K..], &up[FRAME_48K..]);
        assert!(snr > 50.0, "up: {snr:.1} dB");
    }

    #[test]
    fn the_telephone_path_lines_up_at_twice_the_filter_delay() {
        let input: Vec<f32> = (0..50 * FRAME_48K)
            .map(|i| chirp(i as f64 / f64::from(RATE_48K), 1.0))
            .collect();
        let output = telephone_round_trip(Law::A, &input);
        let steady = 2 * FRAME_48K..input.len();
        let error_at = |lag: usize| -> f32 {
            steady
                .clone()
                .map(|i| (output[i] - input[i - lag]).powi(2))
                .sum()
        };
        let best = (0..2 * FRAME_SAMPLES)
            .min_by(|a, b| error_at(*a).total_cmp(&error_at(*b)))
            .unwrap();
        assert_eq!(best, 2 * FILTER_DELAY);
    }

    #[test]
    fn tones_keep_pitch_and_level_through_the_telephone_path() {
        for law in [Law::Mu, Law::A] {
            for freq in [440.0, 1000.0] {
                let input = sine(freq, 0.5, 50 * FRAME_48K, RATE_48K);
                let output = telephone_round_trip(law, &input);
                assert_eq!(output.len(), input.len());

                let steady = 10 * FRAME_48K..input.len();
                let out = &output[steady.clone()];
                let lag = 2 * FILTER_DELAY;
                let reference = &input[steady.start - lag..input.len() - lag];
                let level = db(rms(out) / rms(reference));
                assert!(level.abs() < 1.0, "{law:?} {freq} Hz: level {level:.2} dB");
                let pitch = zero_crossing_hz(out, RATE_48K);
                assert!(
                    (pitch - freq).abs() < 0.005 * freq,
                    "{law:?} {freq} Hz: came out at {pitch:.1} Hz"
                );
                let snr = snr_db(reference, out);
                assert!(snr > 25.0, "{law:?} {freq} Hz: SNR {snr:.1} dB");
            }
        }
    }

    #[test]
    fn downsampler_is_flat_in_the_voice_band() {
        for freq in [300.0, 1000.0, 2000.0, 3000.0] {
            let input = sine(freq, 0.5, 20 * FRAME_48K, RATE_48K);
            let mut out = vec![];
            Downsampler::new().process(&input, &mut out);
            let gain = db(rms(&out[FRAME_SAMPLES..]) / rms(&input));
            assert!(gain.abs() < 0.2, "{freq} Hz: {gain:.2} dB");
        }
    }

    #[test]
    fn downsampler_removes_what_would_alias() {
        // 6 kHz would fold to 2 kHz at 8 kHz; everything from 4.5 kHz up must be gone.
        let mut freqs = vec![6000.0];
        freqs.extend((9..48).map(|k| k as f32 * 500.0));
        for freq in freqs {
            let input = sine(freq, 0.5, 10 * FRAME_48K, RATE_48K);
            let mut out = vec![];
            Downsampler::new().process(&input, &mut out);
            let gain = db(rms(&out[FRAME_SAMPLES..]) / rms(&input));
            let floor = if freq == 6000.0 { -30.0 } else { -50.0 };
            assert!(gain < floor, "{freq} Hz: {gain:.1} dB");
        }
    }

    #[test]
    fn upsampler_leaves_no_images() {
        // A 1 kHz tone at 8 kHz has images at 7, 9, 15 and 17 kHz once zero-stuffed.
        let input = sine(1000.0, 0.5, 20 * FRAME_SAMPLES, SAMPLE_RATE as f32);
        let mut out = vec![];
        Upsampler::new().process(&input, &mut out);
        let steady = &out[FRAME_48K..];
        let tone = goertzel_amplitude(steady, 1000.0, RATE_48K);
        assert!((db(tone / 0.5)).abs() < 0.1, "tone at {tone}");
        for image in [7000.0, 9000.0, 15000.0, 17000.0] {
            let level = db(goertzel_amplitude(steady, image, RATE_48K) / tone);
            assert!(level < -50.0, "image at {image} Hz: {level:.1} dB");
        }
    }

    #[test]
    fn frames_join_as_if_processed_in_one_block() {
        let input = sine(700.0, 0.7, 8 * FRAME_48K, RATE_48K);
        let (mut whole, mut framed, mut ragged) = (vec![], vec![], vec![]);
        Downsampler::new().process(&input, &mut whole);
        let mut down = Downsampler::new();
        for frame in input.chunks(FRAME_48K) {
            down.process(frame, &mut framed);
        }
        let mut down = Downsampler::new();
        let mut rest = &input[..];
        for size in [1, 5, 7, 959, 961, 0, 2000].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            down.process(chunk, &mut ragged);
            rest = tail;
        }
        assert_eq!(whole.len(), input.len() / RATIO);
        assert_eq!(framed, whole);
        assert_eq!(ragged, whole);

        let (mut whole_up, mut framed_up) = (vec![], vec![]);
        Upsampler::new().process(&whole, &mut whole_up);
        let mut up = Upsampler::new();
        for frame in whole.chunks(FRAME_SAMPLES) {
            up.process(frame, &mut framed_up);
        }
        assert_eq!(whole_up.len(), input.len());
        assert_eq!(framed_up, whole_up);
    }

    #[test]
    fn reset_forgets_the_past() {
        let noise: Vec<f32> = (0..2 * FRAME_48K)
            .map(|i| ((i * 7919) % 13) as f32 / 13.0 - 0.5)
            .collect();
        let tone = sine(500.0, 0.3, FRAME_48K, RATE_48K);

        let (mut down, mut fresh_down) = (Downsampler::new(), Downsampler::new());
        let (mut dirty, mut clean) = (vec![], vec![]);
        down.process(&noise[..1001], &mut dirty);
        down.reset();
        dirty.clear();
        down.process(&tone, &mut dirty);
        fresh_down.process(&tone, &mut clean);
        assert_eq!(dirty, clean);

        let (mut up, mut fresh_up) = (Upsampler::new(), Upsampler::new());
        let (mut dirty, mut clean) = (vec![], vec![]);
        up.process(&noise[..FRAME_SAMPLES], &mut dirty);
        up.reset();
        dirty.clear();
        up.process(&tone[..FRAME_SAMPLES], &mut dirty);
        fresh_up.process(&tone[..FRAME_SAMPLES], &mut clean);
        assert_eq!(dirty, clean);
    }

    #[test]
    fn silence_stays_silent() {
        let mut pcm8k = vec![];
        Downsampler::new().process(&[0.0; FRAME_48K], &mut pcm8k);
        let mut bytes = vec![];
        encode(Law::Mu, &pcm8k, &mut bytes);
        assert!(bytes.iter().all(|&b| b == 0xff));
        let mut decoded = vec![];
        decode(Law::Mu, &bytes, &mut decoded);
        let mut out = vec![];
        Upsampler::new().process(&decoded, &mut out);
        assert!(out.iter().all(|&x| x == 0.0));
    }
}

//! Plane-neutral media types: what the transport hands the mixer and the mixer hands back.
//! Nothing here imports GStreamer or webrtc-rs, so every plane can name these types.

use bytes::Bytes;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A video codec Mixdown decodes and encodes (`"vp8"`, `"h264"`, `"vp9"` in configuration).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum VideoCodec {
    Vp8,
    H264,
    /// Profile 0 (8-bit 4:2:0), the one every WebRTC endpoint that has VP9 decodes.
    Vp9,
}

impl VideoCodec {
    /// The RTP encoding name (as in `a=rtpmap`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            VideoCodec::Vp8 => "VP8",
            VideoCodec::H264 => "H264",
            VideoCodec::Vp9 => "VP9",
        }
    }
}

/// An audio codec Mixdown decodes into its 48 kHz mix and encodes the mix in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioCodec {
    Opus,
    /// G.711 µ-law, 8 kHz (static payload type 0).
    Pcmu,
    /// G.711 A-law, 8 kHz (static payload type 8).
    Pcma,
}

impl AudioCodec {
    /// The RTP encoding name (as in `a=rtpmap`).
    pub fn encoding_name(self) -> &'static str {
        match self {
            AudioCodec::Opus => "opus",
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            AudioCodec::Opus => 48000,
            AudioCodec::Pcmu | AudioCodec::Pcma => 8000,
        }
    }

    /// The codec of an audio RTP packet of payload type `pt`: G.711's payload types are
    /// static (RFC 3551), and Opus is the only dynamic audio codec Mixdown negotiates.
    pub fn from_payload_type(pt: u8) -> Self {
        match pt {
            0 => AudioCodec::Pcmu,
            8 => AudioCodec::Pcma,
            _ => AudioCodec::Opus,
        }
    }
}

impl std::fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encoding_name())
    }
}

impl std::fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// One encoded frame (video access unit, or one Opus packet). `data` is shared, never copied,
/// when the same frame goes to many peers, and so are its RTP payloads: the first receiver's
/// transport cuts them, every other receiver of the same encode reuses them.
#[derive(Clone, Debug)]
pub struct EncodedFrame {
    pub data: Bytes,
    pub duration: Duration,
    pub keyframe: bool,
    /// The frame's number in its stream (1, 2, …; 0 when unnumbered): VP8 picture IDs come
    /// from it.
    pub number: u64,
    /// Presentation time on the composite's clock, the same for every tier's copy of a
    /// picture: a receiver moved between tiers keeps continuous RTP timestamps from it.
    pub pts: Option<Duration>,
    pub payloads: PayloadCache,
}

impl EncodedFrame {
    pub fn new(data: Bytes, duration: Duration, keyframe: bool) -> Self {
        Self {
            data,
            duration,
            keyframe,
            number: 0,
            pts: None,
            payloads: PayloadCache::default(),
        }
    }

    pub fn numbered(mut self, number: u64) -> Self {
        self.number = number;
        self
    }
}

/// A frame's RTP payloads, cut once (at the first receiver) and shared by all of its clones.
/// Cutting is stateless per frame, so which receiver does it does not matter.
#[derive(Clone, Debug, Default)]
pub struct PayloadCache(Arc<OnceLock<Vec<Bytes>>>);

impl PayloadCache {
    pub fn get_or_init(&self, cut: impl FnOnce() -> Vec<Bytes>) -> &[Bytes] {
        self.0.get_or_init(cut)
    }
}

/// What one receiver's transport knows about its link, reported to the room every
/// [`LINK_REPORT_INTERVAL`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LinkReport {
    /// What the link carries (bit/s), from congestion feedback; the configured ceiling for a
    /// receiver that sends none.
    pub estimate_bps: f64,
    /// What arrived over the last second (bit/s), when the receiver sends feedback.
    pub delivered_bps: Option<f64>,
    /// Fraction of packets lost, from the receiver's reports (0..=1).
    pub loss: f64,
    /// Round-trip time from the receiver's reports.
    pub rtt_ms: Option<f64>,
    /// Queueing delay on the path now, milliseconds.
    pub queue_ms: f64,
    /// Media sent to the peer and received from it over the last second (bit/s).
    pub sent_bps: f64,
    pub received_bps: f64,
    /// Interarrival jitter of our streams, from the peer's reports (the video stream's when
    /// it has one).
    pub jitter_ms: Option<f64>,
    /// A probe ended: whether the link carried the probed rate.
    #[serde(skip)]
    pub probe: Option<bool>,
}

pub const LINK_REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// Where the transport pushes a publisher's RTP packets (whole packets, header included).
/// Implementations never block: when their queue is full they drop the packet.
pub trait RtpSink: Send + Sync + 'static {
    fn push_rtp(&self, packet: Bytes);

    /// An audio packet with the level its sender measured (RFC 6464 audio-level extension,
    /// -dBov, 0..=127), when it carried one. Sinks that do not use levels ignore it.
    fn push_audio(&self, packet: Bytes, level: Option<u8>) {
        let _ = level;
        self.push_rtp(packet);
    }
}

pub type SharedRtpSink = Arc<dyn RtpSink>;

/// A publisher's video on its way to a decoder that exists only while the publisher is
/// visible: packets pass while a decoder is attached, and are dropped (and counted) before
/// any jitter buffer or decoder otherwise. The room opens and closes it. A picture larger
/// than the limit (announced by a keyframe or SPS) is dropped too, until a smaller one comes.
#[derive(Default)]
pub struct VideoGate {
    decoder: std::sync::RwLock<Option<SharedRtpSink>>,
    passed: AtomicU64,
    dropped: AtomicU64,
    bytes: AtomicU64,
    /// The codec and the largest picture (width x height) let through; none: no limit.
    limit: Option<(VideoCodec, u64)>,
    /// 0: no picture size seen yet (nothing a decoder could start from passes), 1: within
    /// the limit, 2: over it.
    size: std::sync::atomic::AtomicU8,
    /// Told (width, height) when the publisher's picture goes over the limit.
    on_too_large: Option<Box<dyn Fn(u32, u32) + Send + Sync>>,
}

/// What a [`VideoGate`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateCounts {
    /// Packets that reached a decoder.
    pub passed: u64,
    /// Packets dropped before one.
    pub dropped: u64,
    /// Bytes of every packet, passed or dropped: what the publisher sends.
    pub bytes: u64,
}

impl VideoGate {
    /// A gate for `codec` that lets no picture larger than `max_pixels` through, calling
    /// `on_too_large` each time the publisher's picture goes over it.
    pub fn with_limit(
        codec: VideoCodec,
        max_pixels: u32,
        on_too_large: impl Fn(u32, u32) + Send + Sync + 'static,
    ) -> Self {
        Self {
            limit: Some((codec, u64::from(max_pixels))),
            on_too_large: Some(Box::new(on_too_large)),
            ..Self::default()
        }
    }

    /// Whether the publisher's picture is over the limit (its packets are dropped).
    pub fn too_large(&self) -> bool {
        self.size.load(Ordering::Relaxed) == 2
    }

    /// Sends packets to `decoder` from now on.
    pub fn open(&self, decoder: SharedRtpSink) {
        if let Ok(mut d) = self.decoder.write() {
            *d = Some(decoder);
        }
    }

    /// Drops packets from now on.
    pub fn close(&self) {
        if let Ok(mut d) = self.decoder.write() {
            *d = None;
        }
    }

    pub fn counts(&self) -> GateCounts {
        GateCounts {
            passed: self.passed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

impl RtpSink for VideoGate {
    fn push_rtp(&self, packet: Bytes) {
        self.bytes.fetch_add(packet.len() as u64, Ordering::Relaxed);
        if let Some((codec, max)) = self.limit {
            let size =
                parse_rtp(&packet).and_then(|v| crate::picture::announced_size(codec, v.payload));
            if let Some((w, h)) = size {
                let over = u64::from(w) * u64::from(h) > max;
                let state = if over { 2 } else { 1 };
                if self.size.swap(state, Ordering::Relaxed) != state
                    && over
                    && let Some(f) = &self.on_too_large
                {
                    f(w, h);
                }
            }
            if self.size.load(Ordering::Relaxed) != 1 {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        // Pushed under the read lock (the decoder's sink never blocks): no reference count
        // to take per packet.
        let Ok(decoder) = self.decoder.read() else {
            return;
        };
        match decoder.as_ref() {
            Some(d) => {
                self.passed.fetch_add(1, Ordering::Relaxed);
                d.push_rtp(packet);
            }
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Keyframe requests from one publisher's decoder waiting for its session (a flag, in effect:
/// a request while one is queued adds nothing).
pub const PLI_QUEUE: usize = 1;

/// The parts of an RTP packet the mixers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpView<'a> {
    /// The last packet of a frame (video) or the first of a talkspurt (audio).
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub payload: &'a [u8],
}

/// Parses an RTP header (RFC 3550: CSRCs, header extension, padding). `None` for anything that is
/// not a well-formed version-2 packet.
pub fn parse_rtp(packet: &[u8]) -> Option<RtpView<'_>> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let has_padding = packet[0] & 0x20 != 0;
    let has_extension = packet[0] & 0x10 != 0;
    let csrc_count = (packet[0] & 0x0f) as usize;
    let sequence = u16::from_be_bytes([packet[2], packet[3]]);
    let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let mut start = 12 + 4 * csrc_count;
    if has_extension {
        let words = packet.get(start + 2..start + 4)?;
        start += 4 + 4 * u16::from_be_bytes([words[0], words[1]]) as usize;
    }
    let mut end = packet.len();
    if has_padding {
        let pad = *packet.last()? as usize;
        end = end.checked_sub(pad)?;
    }
    if start > end {
        return None;
    }
    Some(RtpView {
        marker: packet[1] & 0x80 != 0,
        payload_type: packet[1] & 0x7f,
        sequence,
        timestamp,
        payload: &packet[start..end],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(first: u8) -> Vec<u8> {
        vec![first, 111, 0x12, 0x34, 0, 0, 0x03, 0xc0, 1, 2, 3, 4]
    }

    #[test]
    fn plain_packet() {
        let mut p = header(0x80);
        p.extend_from_slice(b"opus");
        let v = parse_rtp(&p).unwrap();
        assert_eq!(v.sequence, 0x1234);
        assert_eq!(v.payload_type, 111);
        assert_eq!(v.timestamp, 960);
        assert_eq!(v.payload, b"opus");
        assert!(!v.marker);
        p[1] |= 0x80;
        assert!(parse_rtp(&p).unwrap().marker);
    }

    #[test]
    fn csrc_extension_and_padding() {
        let mut p = header(0x80 | 0x20 | 0x10 | 0x01);
        p.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        p.extend_from_slice(&[0xbe, 0xde, 0, 1, 0x10, 0xff, 0, 0]); // one-word extension
        p.extend_from_slice(b"data");
        p.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let v = parse_rtp(&p).unwrap();
        assert_eq!(v.payload, b"data");
    }

    struct Count(AtomicU64);
    impl RtpSink for Count {
        fn push_rtp(&self, _: Bytes) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_closed_gate_drops_and_counts_an_open_one_forwards() {
        let gate = VideoGate::default();
        let decoder = Arc::new(Count(AtomicU64::new(0)));
        gate.push_rtp(Bytes::from_static(b"x"));
        gate.open(decoder.clone());
        gate.push_rtp(Bytes::from_static(b"x"));
        gate.push_rtp(Bytes::from_static(b"x"));
        gate.close();
        gate.push_rtp(Bytes::from_static(b"x"));
        let c = gate.counts();
        assert_eq!((c.passed, c.dropped, c.bytes), (2, 2, 4));
        assert_eq!(decoder.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_rtp(&[]).is_none());
        assert!(parse_rtp(&[0x80; 11]).is_none());
        assert!(parse_rtp(&header(0x40)).is_none()); // version 1
        let mut p = header(0x90); // extension announced, missing
        p.truncate(12);
        assert!(parse_rtp(&p).is_none());
        let mut p = header(0xa0); // padding longer than the packet
        p.push(200);
        assert!(parse_rtp(&p).is_none());
        let mut p = header(0x8f); // 15 CSRCs announced, none present
        p.push(0);
        assert!(parse_rtp(&p).is_none());
    }
}

//! Keeps retransmissions from burying a weak link: an interceptor between webrtc-rs' NACK
//! responder and the wire that lets a resent video packet through only while it can still
//! help ([`MAX_AGE`] after it was first sent) and only within a share of the link estimate
//! ([`SHARE`]). Without it, a receiver whose link is overloaded NACKs most of what it
//! misses, every resend joins the same full queue and is lost again, and the link stays
//! saturated by repairs long after the stream itself has dropped to a lower tier (measured:
//! 85 % loss for 8 s behind 300 kbit/s after the move to an 80 kbit/s tier).
//!
//! Audio is not guarded: it is never NACKed, and its deliberate copies (a lossy path gets
//! each audio packet twice) must pass.

use super::session::SharedEstimator;
use ::rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use ::rtc::sansio::Protocol;
use ::rtc::shared::error::Error;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A resend later than this after the original is too late for a live picture (the
/// receiver asks for a keyframe instead).
pub const MAX_AGE: Duration = Duration::from_millis(500);
/// Retransmissions may take at most this share of the link estimate.
pub const SHARE: f64 = 0.3;
/// The token bucket holds this long of the retransmission budget: a keyframe that lost a
/// fifth of its packets is repaired at once.
const BURST: Duration = Duration::from_millis(500);
/// Sequence numbers remembered per stream (a ring indexed by the sequence number).
const RING: usize = 1024;

struct Stream {
    sent: Vec<Option<(u16, Instant)>>,
}

pub struct RetransmitGuard {
    estimator: SharedEstimator,
    video: HashMap<u32, Stream>,
    tokens: f64,
    refilled: Option<Instant>,
    write: VecDeque<TaggedPacket>,
    read: VecDeque<TaggedPacket>,
    /// Resends dropped (too late or over budget), for the logs.
    dropped: u64,
}

impl RetransmitGuard {
    pub fn new(estimator: SharedEstimator) -> Self {
        Self {
            estimator,
            video: HashMap::new(),
            tokens: 0.0,
            refilled: None,
            write: VecDeque::new(),
            read: VecDeque::new(),
            dropped: 0,
        }
    }

    /// Whether a resend of `bytes` fits the budget now (and takes it).
    fn spend(&mut self, now: Instant, bytes: usize) -> bool {
        let rate = self.estimator.0.lock().map(|e| e.estimate()).unwrap_or(0.0) * SHARE / 8.0;
        let since = self
            .refilled
            .map_or(BURST, |t| now.saturating_duration_since(t));
        self.refilled = Some(now);
        self.tokens = (self.tokens + rate * since.as_secs_f64()).min(rate * BURST.as_secs_f64());
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Whether this departing packet goes on.
    fn admit(&mut self, now: Instant, ssrc: u32, seq: u16, bytes: usize) -> bool {
        let Some(stream) = self.video.get_mut(&ssrc) else {
            return true;
        };
        let slot = &mut stream.sent[seq as usize % RING];
        match *slot {
            Some((s, first)) if s == seq => {
                if now.saturating_duration_since(first) > MAX_AGE {
                    return false;
                }
                self.spend(now, bytes)
            }
            _ => {
                *slot = Some((seq, now));
                true
            }
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RetransmitGuard {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtp(p) = &msg.message.packet {
            let bytes = p.payload.len() + 12;
            if !self.admit(msg.now, p.header.ssrc, p.header.sequence_number, bytes) {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    tracing::debug!(dropped = self.dropped, "retransmissions held back");
                }
                return Ok(());
            }
        }
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for RetransmitGuard {
    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if info.mime_type.to_ascii_lowercase().starts_with("video/") {
            self.video.insert(
                info.ssrc,
                Stream {
                    sent: vec![None; RING],
                },
            );
        }
    }
    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.video.remove(&info.ssrc);
    }
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtc::estimate::LinkEstimator;

    fn guard(estimate_bps: f64) -> RetransmitGuard {
        let e = SharedEstimator(std::sync::Arc::new(std::sync::Mutex::new(
            LinkEstimator::new(estimate_bps, 1.0, estimate_bps),
        )));
        let mut g = RetransmitGuard::new(e);
        g.video.insert(
            7,
            Stream {
                sent: vec![None; RING],
            },
        );
        g
    }

    #[test]
    fn first_sends_always_pass_and_late_resends_never_do() {
        let mut g = guard(1_000_000.0);
        let t = Instant::now();
        for seq in 0..2000u16 {
            assert!(g.admit(t, 7, seq, 1200), "first send of {seq}");
        }
        assert!(g.admit(t + Duration::from_millis(100), 7, 1999, 1200));
        assert!(!g.admit(t + Duration::from_millis(600), 7, 1998, 1200));
        // Other streams (audio) pass whatever they repeat.
        assert!(g.admit(t, 9, 1, 100) && g.admit(t, 9, 1, 100));
    }

    #[test]
    fn resends_stay_within_their_share_of_the_estimate() {
        let mut g = guard(300_000.0);
        let t0 = Instant::now();
        let mut passed = 0usize;
        // One new packet and a request to resend it every 5 ms for 10 s: resends asked for
        // at 1.9 Mbit/s. What passes is the share of the estimate, plus the bucket's initial
        // burst.
        let secs = 10.0;
        for i in 0..2000u16 {
            let t = t0 + Duration::from_millis(5 * i as u64);
            g.admit(t, 7, i, 1200);
            if g.admit(t + Duration::from_millis(1), 7, i, 1200) {
                passed += 1200;
            }
        }
        let bps = passed as f64 * 8.0 / secs;
        let share = 300_000.0 * SHARE;
        let burst = share * BURST.as_secs_f64() / secs;
        assert!(bps <= (share + burst) * 1.05, "resends at {bps} bit/s");
        assert!(bps >= share * 0.8, "resends at {bps} bit/s");
    }
}

//! What one receiver's link carries, judged from its transport-wide congestion feedback: a
//! pure state machine fed acknowledgements (`handle_acks`) and clock ticks, with no tokio or
//! webrtc types. The driver owns it (through the congestion-control interceptor, which hands
//! it every batch of resolved feedback) and reads `estimate()`; the room's tier choice decides
//! what to do with the number.
//!
//! Why not webrtc-rs's GCC: it only climbs by 8 % a second from what it sends, so a receiver
//! moved to a 120 kbit/s tier would need half a minute to find out that its link came back,
//! and its loss half cuts on random loss that no amount of backing off cures. Here:
//!
//! - **Congestion** is queueing delay (one-way delay over its 10 s minimum) above
//!   [`QUEUE_LIMIT_MS`], or loss above [`LOSS_LIMIT`] *with* some queueing. Loss on an
//!   unqueued path is random loss: retransmission and FEC answer it, a lower rate does not.
//! - **On congestion** the estimate drops to 85 % of what actually arrived over the last
//!   second, at most once per [`CUT_INTERVAL`].
//! - **Otherwise** the estimate is at least what arrived: a link is credited with what it
//!   demonstrably carried, never with more.
//! - **Climbing** needs evidence: a *probe* ([`start_probe`](LinkEstimator::start_probe)) has
//!   the driver pad the stream up to a rate for [`PROBE_DURATION`]. It fails at the first
//!   sign of queueing (so a probe on a weak link costs a few tens of milliseconds of queue,
//!   not a freeze) and succeeds when the link delivered nearly the probed rate, which the
//!   estimate then becomes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Bytes a packet costs on the wire beyond what the feedback counts (the RTP packet): IPv4
/// and UDP headers and the SRTP authentication tag. Rates here are wire rates, which is what
/// a bottleneck queue counts; it matters for tiny probe packets.
pub const WIRE_OVERHEAD: usize = 20 + 8 + 16;
/// Queueing delay that means the bottleneck's queue is filling.
pub const QUEUE_LIMIT_MS: f64 = 50.0;
/// Queueing above this during a probe ends it: the probe found the link's limit.
pub const PROBE_QUEUE_LIMIT_MS: f64 = 25.0;
/// Loss that means congestion, when some queueing comes with it.
pub const LOSS_LIMIT: f64 = 0.10;
const LOSS_QUEUE_MS: f64 = 10.0;
/// At most one cut per this long: a cut needs a round trip or two to show.
pub const CUT_INTERVAL: Duration = Duration::from_millis(500);
/// How long a probe pads the stream: it ramps up over the first third and holds the rate
/// for the rest; the last third is measured. That long because shapers and policers let a
/// burst through (tbf's bucket, here 16 KB: half a second of a 300 kbit/s link) and a
/// shorter probe measures the bucket, not the link.
pub const PROBE_DURATION: Duration = Duration::from_millis(3000);
/// A probe succeeds if the link delivered at least this share of the probed rate.
pub const PROBE_SUCCESS: f64 = 0.9;
/// A probe whose feedback has not arrived this long after its end failed.
const PROBE_FEEDBACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Packets remembered (by departure) for loss and delivery rates.
const HISTORY: Duration = Duration::from_secs(2);
/// The one-way delay's minimum is taken over this long.
const BASE_WINDOW: Duration = Duration::from_secs(10);
/// Queueing delay is averaged over packets sent this recently.
const RECENT: Duration = Duration::from_millis(300);
/// Loss and delivery are measured over this long.
const RATE_WINDOW: Duration = Duration::from_secs(1);
/// A delivery rate needs arrivals spread over at least this long.
const MIN_SPAN: Duration = Duration::from_millis(200);

/// One packet the receiver reported on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ack {
    /// When it left this endpoint.
    pub departure: Instant,
    /// When it arrived, on the receiver's clock (`None`: lost).
    pub arrival: Option<Duration>,
    /// Its RTP size in bytes.
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ProbeOutcome {
    /// The link carried `bps` while padded up to the probed rate.
    Succeeded {
        bps: f64,
    },
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    departure: Instant,
    /// Arrival on the receiver's clock, milliseconds.
    arrival_ms: Option<f64>,
    /// One-way delay with an unknown constant offset, milliseconds.
    owd_ms: Option<f64>,
    wire: usize,
}

#[derive(Debug, Clone, Copy)]
struct Probe {
    start: Instant,
    rate: f64,
}

/// See the module documentation.
#[derive(Debug)]
pub struct LinkEstimator {
    estimate: f64,
    min: f64,
    max: f64,
    epoch: Option<Instant>,
    samples: VecDeque<Sample>,
    /// (departure, the minimum one-way delay of one feedback batch).
    base: VecDeque<(Instant, f64)>,
    last_cut: Option<Instant>,
    probe: Option<Probe>,
    outcome: Option<ProbeOutcome>,
    queue_ms: f64,
    loss: f64,
    delivered: Option<f64>,
    congested: bool,
}

impl LinkEstimator {
    /// Starts believing the link carries `initial` bit/s, and never says less than `min` or
    /// more than `max`.
    pub fn new(initial: f64, min: f64, max: f64) -> Self {
        Self {
            estimate: initial.clamp(min, max),
            min,
            max,
            epoch: None,
            samples: VecDeque::new(),
            base: VecDeque::new(),
            last_cut: None,
            probe: None,
            outcome: None,
            queue_ms: 0.0,
            loss: 0.0,
            delivered: None,
            congested: false,
        }
    }

    /// What the link carries, bit/s.
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// Fraction of packets lost over the last second.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    /// Current queueing delay, milliseconds.
    pub fn queue_ms(&self) -> f64 {
        self.queue_ms
    }

    /// What arrived over the last second, bit/s (`None` until enough has).
    pub fn delivered(&self) -> Option<f64> {
        self.delivered
    }

    pub fn congested(&self) -> bool {
        self.congested
    }

    /// The rate the stream should be padded to now, while a probe runs: ramping from the
    /// current estimate to the probed rate over the first third, then held.
    pub fn probe_rate(&self, now: Instant) -> Option<f64> {
        let p = self.probe?;
        let t = now.saturating_duration_since(p.start);
        if t >= PROBE_DURATION {
            return None;
        }
        let ramp = (t.as_secs_f64() / (PROBE_DURATION.as_secs_f64() / 3.0)).min(1.0);
        Some(self.estimate + (p.rate - self.estimate).max(0.0) * ramp)
    }

    /// Asks the link whether it carries `rate` bit/s. Ignored while a probe runs.
    pub fn start_probe(&mut self, now: Instant, rate: f64) {
        if self.probe.is_none() {
            self.probe = Some(Probe { start: now, rate });
        }
    }

    /// The result of the last probe, once (then `None` until the next one ends).
    pub fn poll_probe_outcome(&mut self) -> Option<ProbeOutcome> {
        self.outcome.take()
    }

    /// A batch of feedback.
    pub fn handle_acks(&mut self, now: Instant, acks: &[Ack]) {
        if acks.is_empty() {
            return;
        }
        let epoch = *self.epoch.get_or_insert(acks[0].departure);
        let mut batch_min = f64::INFINITY;
        for a in acks {
            let sent_ms = a.departure.saturating_duration_since(epoch).as_secs_f64() * 1000.0;
            let arrival_ms = a.arrival.map(|d| d.as_secs_f64() * 1000.0);
            let owd_ms = arrival_ms.map(|r| r - sent_ms);
            if let Some(d) = owd_ms {
                batch_min = batch_min.min(d);
            }
            self.samples.push_back(Sample {
                departure: a.departure,
                arrival_ms,
                owd_ms,
                wire: a.size + WIRE_OVERHEAD,
            });
        }
        let latest = self
            .samples
            .iter()
            .map(|s| s.departure)
            .max()
            .unwrap_or(now);
        while self
            .samples
            .front()
            .is_some_and(|s| latest.saturating_duration_since(s.departure) > HISTORY)
        {
            self.samples.pop_front();
        }
        if batch_min.is_finite() {
            self.base.push_back((latest, batch_min));
        }
        while self
            .base
            .front()
            .is_some_and(|(t, _)| latest.saturating_duration_since(*t) > BASE_WINDOW)
        {
            self.base.pop_front();
        }
        self.measure(latest);
        self.decide(now, latest);
    }

    /// Ends a probe whose feedback never came.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = self.probe
            && now.saturating_duration_since(p.start) > PROBE_DURATION + PROBE_FEEDBACK_TIMEOUT
        {
            self.probe = None;
            self.outcome = Some(ProbeOutcome::Failed);
        }
    }

    fn measure(&mut self, latest: Instant) {
        let base = self
            .base
            .iter()
            .map(|(_, d)| *d)
            .fold(f64::INFINITY, f64::min);
        // One pass over the history (per feedback batch, so nothing is collected).
        let (mut delay_sum, mut delays, mut lost, mut total) = (0.0, 0usize, 0usize, 0usize);
        for s in &self.samples {
            let age = latest.saturating_duration_since(s.departure);
            if age <= RECENT
                && let Some(d) = s.owd_ms
            {
                delay_sum += d;
                delays += 1;
            }
            if age <= RATE_WINDOW {
                total += 1;
                lost += usize::from(s.arrival_ms.is_none());
            }
        }
        if delays > 0 && base.is_finite() {
            self.queue_ms = delay_sum / delays as f64 - base;
        }
        if total >= 10 {
            self.loss = lost as f64 / total as f64;
        }
        self.delivered = delivery_rate(
            self.samples
                .iter()
                .filter(|s| latest.saturating_duration_since(s.departure) <= RATE_WINDOW),
        );
    }

    fn decide(&mut self, now: Instant, latest: Instant) {
        let probing = self.probe.is_some();
        let queue_limit = if probing {
            PROBE_QUEUE_LIMIT_MS
        } else {
            QUEUE_LIMIT_MS
        };
        self.congested = self.queue_ms > queue_limit
            || (self.loss > LOSS_LIMIT && self.queue_ms > LOSS_QUEUE_MS);
        if let Some(p) = self.probe {
            if self.congested {
                // The probe found the limit: the media alone was fine before it, so the
                // estimate stands; the queue drains once the padding stops.
                self.probe = None;
                self.outcome = Some(ProbeOutcome::Failed);
                self.last_cut = Some(now);
                return;
            }
            let end = p.start + PROBE_DURATION;
            if latest >= end {
                // The last third of the probe, when any burst allowance is spent.
                let held = p.start + PROBE_DURATION * 2 / 3;
                let rate = delivery_rate(
                    self.samples
                        .iter()
                        .filter(|s| s.departure >= held && s.departure <= end),
                );
                self.probe = None;
                self.outcome = Some(match rate {
                    Some(bps) if bps >= PROBE_SUCCESS * p.rate => {
                        // The link carried (nearly) the probed rate: credit it with that.
                        self.estimate = self.estimate.max(p.rate).clamp(self.min, self.max);
                        ProbeOutcome::Succeeded { bps }
                    }
                    _ => ProbeOutcome::Failed,
                });
            }
            return;
        }
        if self.congested {
            if self
                .last_cut
                .is_none_or(|t| now.saturating_duration_since(t) >= CUT_INTERVAL)
            {
                let from = self.delivered.unwrap_or(self.estimate / 0.85 * 0.7);
                self.estimate = (from * 0.85).min(self.estimate).clamp(self.min, self.max);
                self.last_cut = Some(now);
            }
        } else if let Some(d) = self.delivered {
            self.estimate = self.estimate.max(d).clamp(self.min, self.max);
        }
    }
}

/// Bits per second that arrived, over the arrival span of `samples` (`None` when they are
/// too few or too close together to say).
fn delivery_rate<'a>(samples: impl Iterator<Item = &'a Sample>) -> Option<f64> {
    let mut first = f64::INFINITY;
    let mut last = f64::NEG_INFINITY;
    let mut first_size = 0usize;
    let mut bytes = 0usize;
    let mut n = 0;
    for s in samples {
        let Some(at) = s.arrival_ms else { continue };
        n += 1;
        bytes += s.wire;
        if at < first {
            first = at;
            first_size = s.wire;
        }
        last = last.max(at);
    }
    let span = last - first;
    if n < 5 || span < MIN_SPAN.as_secs_f64() * 1000.0 {
        return None;
    }
    // The first packet's bytes arrived before the span began.
    Some((bytes - first_size) as f64 * 8.0 / (span / 1000.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A simulated bottleneck: packets of `size` bytes sent every `gap`, through a FIFO
    /// that drains at `capacity` bit/s and holds at most `queue_limit` of delay (then drops),
    /// with a fixed 20 ms propagation delay. Feedback every 100 ms.
    struct Link {
        capacity: f64,
        queue_limit: Duration,
        busy_until: Duration,
        t0: Instant,
    }

    impl Link {
        fn new(capacity: f64) -> Self {
            Self {
                capacity,
                queue_limit: Duration::from_millis(100),
                busy_until: Duration::ZERO,
                t0: Instant::now(),
            }
        }

        /// Sends at `rate` for `secs`, starting at `from`, feeding `e`; returns the end.
        fn run(&mut self, e: &mut LinkEstimator, from: Duration, secs: f64, rate: f64) -> Duration {
            let size = 1000usize;
            let gap = Duration::from_secs_f64((size + WIRE_OVERHEAD) as f64 * 8.0 / rate);
            let mut t = from;
            let end = from + Duration::from_secs_f64(secs);
            let mut batch = Vec::new();
            let mut next_feedback = from + Duration::from_millis(100);
            while t < end {
                let service =
                    Duration::from_secs_f64((size + WIRE_OVERHEAD) as f64 * 8.0 / self.capacity);
                let start = self.busy_until.max(t);
                let arrival = if start - t > self.queue_limit {
                    None
                } else {
                    self.busy_until = start + service;
                    Some(self.busy_until + Duration::from_millis(20))
                };
                batch.push(Ack {
                    departure: self.t0 + t,
                    arrival,
                    size,
                });
                t += gap;
                if t >= next_feedback {
                    e.handle_acks(self.t0 + t + Duration::from_millis(20), &batch);
                    batch.clear();
                    next_feedback += Duration::from_millis(100);
                }
            }
            end
        }
    }

    #[test]
    fn an_overloaded_link_is_cut_to_what_it_delivers() {
        let mut e = LinkEstimator::new(2_000_000.0, 50_000.0, 5_000_000.0);
        let mut link = Link::new(300_000.0);
        link.run(&mut e, Duration::ZERO, 2.0, 1_500_000.0);
        assert!(e.congested());
        let est = e.estimate();
        assert!(
            (200_000.0..=300_000.0).contains(&est),
            "estimate {est} for a 300 kbit/s link"
        );
    }

    #[test]
    fn a_link_that_keeps_up_keeps_its_estimate() {
        let mut e = LinkEstimator::new(2_000_000.0, 50_000.0, 5_000_000.0);
        let mut link = Link::new(10_000_000.0);
        link.run(&mut e, Duration::ZERO, 3.0, 1_500_000.0);
        assert!(!e.congested());
        assert_eq!(e.estimate(), 2_000_000.0);
        assert!(e.queue_ms() < 5.0);
    }

    #[test]
    fn random_loss_without_queueing_is_not_congestion() {
        let mut e = LinkEstimator::new(2_000_000.0, 50_000.0, 5_000_000.0);
        let t0 = Instant::now();
        let mut acks = Vec::new();
        for i in 0..600u64 {
            let sent = Duration::from_millis(i * 5);
            acks.push(Ack {
                departure: t0 + sent,
                // Every fifth packet lost (20 %), the rest after a constant 20 ms.
                arrival: (i % 5 != 0).then_some(sent + Duration::from_millis(20)),
                size: 1000,
            });
            if acks.len() == 20 {
                e.handle_acks(t0 + sent, &acks);
                acks.clear();
            }
        }
        assert!((e.loss() - 0.2).abs() < 0.02, "loss {}", e.loss());
        assert!(!e.congested());
        assert_eq!(e.estimate(), 2_000_000.0);
    }

    #[test]
    fn a_probe_on_a_link_with_room_raises_the_estimate() {
        let mut e = LinkEstimator::new(150_000.0, 50_000.0, 5_000_000.0);
        let mut link = Link::new(5_000_000.0);
        let t = link.run(&mut e, Duration::ZERO, 2.0, 150_000.0);
        assert!(e.estimate() < 200_000.0, "{}", e.estimate());
        e.start_probe(link.t0 + t, 800_000.0);
        // The driver pads up to the probe's rate; here the link simply sees that rate.
        let t = link.run(&mut e, t, 3.1, 800_000.0);
        link.run(&mut e, t, 0.3, 150_000.0);
        match e.poll_probe_outcome() {
            Some(ProbeOutcome::Succeeded { bps }) => assert!(bps > 720_000.0, "{bps}"),
            other => panic!("probe: {other:?}"),
        }
        assert_eq!(e.estimate(), 800_000.0);
    }

    #[test]
    fn a_probe_on_a_full_link_fails_early_and_leaves_the_estimate() {
        let mut e = LinkEstimator::new(150_000.0, 50_000.0, 5_000_000.0);
        let mut link = Link::new(300_000.0);
        let t = link.run(&mut e, Duration::ZERO, 2.0, 150_000.0);
        let before = e.estimate();
        e.start_probe(link.t0 + t, 800_000.0);
        let mut t = t;
        let mut failed_after = None;
        for step in 0..35 {
            // Pad to the ramp's current rate, 100 ms at a time.
            let rate = e.probe_rate(link.t0 + t).unwrap_or(150_000.0);
            t = link.run(&mut e, t, 0.1, rate);
            if let Some(o) = e.poll_probe_outcome() {
                assert_eq!(o, ProbeOutcome::Failed);
                failed_after = Some(step);
                break;
            }
        }
        let steps = failed_after.expect("the probe failed");
        assert!(steps < 15, "it failed only after {steps} steps");
        assert!(e.probe_rate(link.t0 + t).is_none());
        assert_eq!(e.estimate(), before);
    }

    #[test]
    fn a_probe_without_feedback_fails() {
        let mut e = LinkEstimator::new(150_000.0, 50_000.0, 5_000_000.0);
        let t0 = Instant::now();
        e.start_probe(t0, 800_000.0);
        e.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(e.poll_probe_outcome(), None);
        e.handle_timeout(t0 + Duration::from_secs(6));
        assert_eq!(e.poll_probe_outcome(), Some(ProbeOutcome::Failed));
    }
}

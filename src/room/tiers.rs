//! Which rung of the encoder ladder one receiver gets, from its link estimate: a pure state
//! machine (`handle_report(now, ..)`, `poll_switch()`, `poll_probe()`), no tokio, gst or
//! webrtc types. The room applies what it decides: it moves the receiver's track to another
//! shared encode (at that encode's next keyframe), or asks the transport to probe the link.
//!
//! - **Down** within about a second and a half of the estimate falling below what the
//!   current rung needs ([`DOWN_AFTER`]), straight to the best rung that fits, or to audio
//!   only when even the lowest does not.
//! - **Up** one rung at a time, only on evidence: once the estimate has held the current rung
//!   for [`UP_HOLD`], the room asks for a probe at [`UP_MARGIN`] × what the next rung needs;
//!   a probe that succeeds (or an estimate that shows that much for [`UP_HOLD`]) moves it up.
//! - **Back-off**: a failed probe, or a step down within [`UP_VERIFY`] of a step up, doubles
//!   the wait before the next try (from [`BASE_BACKOFF`] to at most [`MAX_BACKOFF`]); a
//!   successful step up resets it.

use std::time::{Duration, Instant};

/// A receiver's rung: a tier of the ladder (0 is the canvas), or no video at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Rung {
    Tier(usize),
    AudioOnly,
}

/// What a receiver needs beyond a tier's video bitrate: the audio mix and packet overhead.
pub const AUDIO_KBPS: f64 = 45.0;
/// Video packets cost this much more on the wire than their payload bitrate.
pub const VIDEO_OVERHEAD: f64 = 1.08;
/// Estimate below the current rung's need for this long: step down.
pub const DOWN_AFTER: Duration = Duration::from_millis(600);
/// Estimate at or above the current rung's need for this long before trying the next.
pub const UP_HOLD: Duration = Duration::from_secs(3);
/// The next rung is tried only if the link carries this much more than it needs.
pub const UP_MARGIN: f64 = 1.3;
/// A step down this soon after a step up means the step up failed.
pub const UP_VERIFY: Duration = Duration::from_secs(5);
/// A probe whose outcome has not come this long after it was asked for failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(8);
pub const BASE_BACKOFF: Duration = Duration::from_secs(4);
pub const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// What a receiver's link is credited with at most and at first (bit/s): what the top tier
/// needs, with the margin a step up to it wants. (The transport's estimator starts there.)
pub fn link_ceiling_bps(top_kbps: u32) -> f64 {
    (top_kbps as f64 * VIDEO_OVERHEAD + AUDIO_KBPS) * UP_MARGIN * 1000.0
}

/// The per-receiver decision. See the module documentation.
#[derive(Debug)]
pub struct TierChoice {
    /// Video kbit/s of each tier, best first.
    ladder: Vec<f64>,
    /// The best rung allowed (`?max_tier`).
    top: usize,
    current: Rung,
    below_since: Option<Instant>,
    held_since: Option<Instant>,
    backoff: Duration,
    next_try: Option<Instant>,
    last_up: Option<Instant>,
    /// Since when a probe has been asked for (its outcome is awaited).
    probing: Option<Instant>,
    switch: Option<Rung>,
    probe: Option<f64>,
}

impl TierChoice {
    /// `ladder`: each tier's video bitrate (kbit/s), best first. Starts on the top tier.
    pub fn new(ladder: Vec<u32>) -> Self {
        Self::with_top(ladder, 0)
    }

    /// Never above rung `top` (clamped to the ladder), and starts there.
    pub fn with_top(ladder: Vec<u32>, top: usize) -> Self {
        let top = top.min(ladder.len().saturating_sub(1));
        Self {
            ladder: ladder.into_iter().map(f64::from).collect(),
            top,
            current: Rung::Tier(top),
            below_since: None,
            held_since: None,
            backoff: BASE_BACKOFF,
            next_try: None,
            last_up: None,
            probing: None,
            switch: None,
            probe: None,
        }
    }

    pub fn current(&self) -> Rung {
        self.current
    }

    /// What `rung` needs of the link, kbit/s.
    pub fn need(&self, rung: Rung) -> f64 {
        match rung {
            Rung::Tier(i) => {
                self.ladder.get(i).copied().unwrap_or(0.0) * VIDEO_OVERHEAD + AUDIO_KBPS
            }
            Rung::AudioOnly => AUDIO_KBPS,
        }
    }

    /// The rung above `rung`, if any.
    fn above(&self, rung: Rung) -> Option<Rung> {
        match rung {
            Rung::Tier(i) if i <= self.top => None,
            Rung::Tier(i) => Some(Rung::Tier(i - 1)),
            Rung::AudioOnly => {
                (!self.ladder.is_empty()).then_some(Rung::Tier(self.ladder.len() - 1))
            }
        }
    }

    /// The best rung that `kbps` carries.
    fn best_for(&self, kbps: f64) -> Rung {
        (self.top..self.ladder.len())
            .map(Rung::Tier)
            .find(|r| self.need(*r) <= kbps)
            .unwrap_or(Rung::AudioOnly)
    }

    /// The link's estimate (kbit/s) and, when a probe ended, whether the link carried it.
    pub fn handle_report(&mut self, now: Instant, estimate_kbps: f64, probe: Option<bool>) {
        if self
            .probing
            .is_some_and(|t| now.saturating_duration_since(t) > PROBE_TIMEOUT)
        {
            // Its outcome was lost (a dropped report): count it as failed.
            self.probing = None;
            self.back_off(now);
        }
        if let Some(ok) = probe {
            self.probing = None;
            if !ok {
                self.back_off(now);
            }
        }
        let need = self.need(self.current);
        if estimate_kbps < need && self.current != Rung::AudioOnly {
            self.held_since = None;
            let since = *self.below_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= DOWN_AFTER {
                let to = self.best_for(estimate_kbps);
                if self
                    .last_up
                    .is_some_and(|t| now.saturating_duration_since(t) < UP_VERIFY)
                {
                    self.back_off(now);
                }
                self.last_up = None;
                self.move_to(to);
                if self.next_try.is_none_or(|t| t < now + self.backoff) {
                    self.next_try = Some(now + self.backoff);
                }
            }
            return;
        }
        self.below_since = None;
        let held = *self.held_since.get_or_insert(now);
        let Some(up) = self.above(self.current) else {
            return;
        };
        let wanted = self.need(up) * UP_MARGIN;
        if self.next_try.is_some_and(|t| now < t) || self.probing.is_some() {
            return;
        }
        // A probe that succeeded showed the link carrying what it asked for (the margin
        // over the next rung included); an estimate that shows as much for the hold time
        // does too.
        if probe == Some(true)
            || (estimate_kbps >= wanted && now.saturating_duration_since(held) >= UP_HOLD)
        {
            self.last_up = Some(now);
            self.backoff = BASE_BACKOFF;
            self.next_try = Some(now + BASE_BACKOFF);
            self.move_to(up);
        } else if now.saturating_duration_since(held) >= UP_HOLD {
            self.probing = Some(now);
            self.probe = Some(wanted);
        }
    }

    fn back_off(&mut self, now: Instant) {
        self.next_try = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn move_to(&mut self, rung: Rung) {
        if rung != self.current {
            self.current = rung;
            self.switch = Some(rung);
        }
        self.held_since = None;
        self.below_since = None;
    }

    /// A move the room should make now (once).
    pub fn poll_switch(&mut self) -> Option<Rung> {
        self.switch.take()
    }

    /// A probe the room should ask for now: the rate (kbit/s) to pad the stream to (once).
    pub fn poll_probe(&mut self) -> Option<f64> {
        self.probe.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LADDER: [u32; 3] = [1500, 450, 120];

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    /// Reports `kbps` every 250 ms from `from` for `secs`; returns the switches made.
    fn feed(c: &mut TierChoice, t0: Instant, from: f64, secs: f64, kbps: f64) -> Vec<(f64, Rung)> {
        let mut out = Vec::new();
        let mut t = from;
        while t < from + secs {
            c.handle_report(t0 + s(t), kbps, None);
            if let Some(r) = c.poll_switch() {
                out.push((t, r));
            }
            t += 0.25;
        }
        out
    }

    #[test]
    fn a_good_link_stays_on_the_top_tier_and_never_probes() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        assert!(feed(&mut c, t0, 0.0, 30.0, 3000.0).is_empty());
        assert_eq!(c.current(), Rung::Tier(0));
        assert_eq!(c.poll_probe(), None);
    }

    #[test]
    fn a_capped_receiver_starts_at_its_cap_and_never_climbs_past_it() {
        let mut c = TierChoice::with_top(LADDER.to_vec(), 1);
        assert_eq!(c.current(), Rung::Tier(1));
        let t0 = Instant::now();
        assert!(feed(&mut c, t0, 0.0, 30.0, 5000.0).is_empty());
        assert_eq!(c.poll_probe(), None);
        // Below its cap it still follows the link.
        let moves = feed(&mut c, t0, 30.0, 3.0, 200.0);
        assert_eq!(moves.last().map(|m| m.1), Some(Rung::Tier(2)));
    }

    #[test]
    fn a_probe_whose_answer_is_lost_is_asked_again() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 2.0, 255.0);
        let mut asked = Vec::new();
        let mut t = 2.0;
        while t < 40.0 {
            c.handle_report(t0 + s(t), 255.0, None);
            if c.poll_probe().is_some() {
                asked.push(t);
            }
            t += 0.25;
        }
        assert!(asked.len() >= 2, "{asked:?}");
        assert!(
            asked[1] - asked[0] >= PROBE_TIMEOUT.as_secs_f64(),
            "{asked:?}"
        );
    }

    #[test]
    fn steps_down_straight_to_what_fits_within_two_seconds() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 5.0, 3000.0);
        let moves = feed(&mut c, t0, 5.0, 5.0, 255.0);
        assert_eq!(moves.len(), 1, "{moves:?}");
        let (at, to) = moves[0];
        assert_eq!(
            to,
            Rung::Tier(2),
            "255 kbit/s carries 120 kbit/s video, not 450"
        );
        assert!(at - 5.0 <= 2.0, "stepped down {}s after the fall", at - 5.0);
    }

    #[test]
    fn a_brief_dip_does_not_step_down() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 5.0, 3000.0);
        assert!(feed(&mut c, t0, 5.0, 0.5, 1000.0).is_empty());
        assert!(feed(&mut c, t0, 5.5, 5.0, 3000.0).is_empty());
    }

    #[test]
    fn below_the_lowest_tier_is_audio_only_and_climbs_back() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        let moves = feed(&mut c, t0, 0.0, 3.0, 100.0);
        assert_eq!(moves.last().map(|m| m.1), Some(Rung::AudioOnly));
        // It holds audio only, then asks for a probe above the lowest tier's need.
        feed(&mut c, t0, 3.0, 6.0, 100.0);
        let probe = c.poll_probe().expect("a probe");
        assert!(probe >= c.need(Rung::Tier(2)) * UP_MARGIN - 1.0);
        c.handle_report(t0 + s(9.5), probe, Some(true));
        assert_eq!(c.poll_switch(), Some(Rung::Tier(2)));
    }

    #[test]
    fn steps_up_one_rung_at_a_time_only_after_a_probe() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 2.0, 255.0);
        assert_eq!(c.current(), Rung::Tier(2));
        // The estimate does not move by itself (it only shows what is sent): no up-step
        // without a probe, and the first probe waits out the back-off and the hold.
        let mut t = 2.0;
        let probe = loop {
            c.handle_report(t0 + s(t), 255.0, None);
            assert_eq!(c.poll_switch(), None);
            if let Some(p) = c.poll_probe() {
                break p;
            }
            t += 0.25;
            assert!(t < 20.0, "no probe");
        };
        assert!(t >= BASE_BACKOFF.as_secs_f64(), "probed at {t}s");
        assert!((probe - c.need(Rung::Tier(1)) * UP_MARGIN).abs() < 1.0);
        // No second probe while one runs.
        c.handle_report(t0 + s(t + 0.25), 255.0, None);
        assert_eq!(c.poll_probe(), None);
        c.handle_report(t0 + s(t + 1.5), probe, Some(true));
        assert_eq!(c.poll_switch(), Some(Rung::Tier(1)), "one rung up");
        assert_eq!(c.current(), Rung::Tier(1));
    }

    #[test]
    fn failed_probes_back_off_exponentially_up_to_the_cap() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 2.0, 255.0);
        let mut probes = Vec::new();
        let mut t = 2.0;
        while t < 60.0 {
            c.handle_report(t0 + s(t), 255.0, None);
            if c.poll_probe().is_some() {
                probes.push(t);
                // It fails half a second later.
                t += 0.5;
                c.handle_report(t0 + s(t), 255.0, Some(false));
            }
            assert_eq!(c.poll_switch(), None);
            t += 0.25;
        }
        let gaps: Vec<f64> = probes.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 4, "{probes:?}");
        assert!(gaps[1] > gaps[0], "backs off: {gaps:?}");
        let cap = MAX_BACKOFF.as_secs_f64() + UP_HOLD.as_secs_f64() + 1.5;
        assert!(gaps.iter().all(|g| *g <= cap), "capped: {gaps:?}");
        assert!(
            gaps.iter().all(|g| *g >= BASE_BACKOFF.as_secs_f64()),
            "{gaps:?}"
        );
    }

    #[test]
    fn an_up_step_that_fails_steps_back_and_backs_off() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 2.0, 255.0);
        let mut t = 2.0;
        loop {
            c.handle_report(t0 + s(t), 255.0, None);
            if let Some(p) = c.poll_probe() {
                c.handle_report(t0 + s(t + 1.0), p, Some(true));
                break;
            }
            t += 0.25;
        }
        assert_eq!(c.poll_switch(), Some(Rung::Tier(1)));
        let up_at = t + 1.0;
        // The new tier does not fit after all.
        let moves = feed(&mut c, t0, up_at, 2.0, 300.0);
        assert_eq!(moves.last().map(|m| m.1), Some(Rung::Tier(2)));
        // The next probe comes later than the first one did after its step down.
        let mut t = up_at + 2.0;
        while c.poll_probe().is_none() {
            c.handle_report(t0 + s(t), 300.0, None);
            t += 0.25;
            assert!(t < up_at + 60.0);
        }
        assert!(
            t - up_at >= 2.0 * BASE_BACKOFF.as_secs_f64(),
            "retried after {}s",
            t - up_at
        );
    }

    #[test]
    fn climbs_from_the_bottom_to_the_top_within_twenty_seconds_on_a_good_link() {
        let mut c = TierChoice::new(LADDER.to_vec());
        let t0 = Instant::now();
        feed(&mut c, t0, 0.0, 2.0, 255.0);
        // The link is lifted at t=2; probes now succeed (after 1.5 s each).
        let mut t = 2.0;
        let mut estimate = 255.0;
        while c.current() != Rung::Tier(0) {
            c.handle_report(t0 + s(t), estimate, None);
            if let Some(p) = c.poll_probe() {
                t += 3.0;
                estimate = p;
                c.handle_report(t0 + s(t), estimate, Some(true));
            }
            c.poll_switch();
            t += 0.25;
            assert!(t < 40.0);
        }
        assert!(t - 2.0 <= 20.0, "climbed in {}s", t - 2.0);
    }
}

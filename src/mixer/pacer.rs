//! Output pacing for the composite (pure decision code; the thread that sleeps is in
//! [`super::video`]).
//!
//! Why: a composite frame leaves the encoder when the slowest of the room's inputs has delivered
//! its next frame and the encoder has finished with it. Both vary from frame to frame, and more
//! with more inputs: at 20 participants the encoder's output wandered 5 ms (median) and 14 ms
//! (p99) behind its fastest recent frame, measured against the frames' running times. Sent as
//! they come, those variations reach every receiver as jitter, and a frame more than 10 ms off
//! the 30 fps timeline counts as late.
//!
//! What: each frame is held until a steady line, `floor + margin` after its running time, where
//! `floor` is a low percentile ([`FLOOR_PERCENTILE`]) of the lateness (encoder output time −
//! running time) over the last [`WINDOW`] frames. Frames behind the line are sent at once. So
//! receivers see a fixed delay instead of a varying one, at a cost of about `margin` of added
//! latency, and the line follows the pipeline when its typical delay changes (a participant
//! joins, the machine gets busier) within one window.
//!
//! Not the minimum: when an input joins, the compositor re-times its output and a few frames
//! come out 20 ms faster than any frame before or after (measured: 21 ms against a steady
//! 40–48 ms). A minimum would put the line under every other frame for a whole window, and no
//! frame would be held.
//!
//! No frame is held longer than twice the margin. When the pipeline gets faster for good (the
//! first frames of a room come out about 105 ms late while the compositor waits for inputs,
//! later ones about 40 ms), the percentile takes 15 frames to follow; without the cap those
//! frames would wait for the old line, up to 80 ms each.

use std::collections::VecDeque;
use std::time::Duration;

/// Frames the floor is taken over: 10 s at 30 fps.
pub const WINDOW: usize = 300;
/// The floor: this percentile of the window's lateness, so a handful of unusually fast frames
/// (up to 15 of 300) do not move it.
pub const FLOOR_PERCENTILE: usize = 5;

#[derive(Debug)]
pub struct Pacer {
    margin: Duration,
    recent: VecDeque<Duration>,
    /// Scratch space for the percentile, allocated once: the pacing thread never allocates,
    /// so it never gets a malloc arena of its own.
    sorted: Vec<Duration>,
}

impl Pacer {
    pub fn new(margin: Duration) -> Self {
        Self {
            margin,
            recent: VecDeque::with_capacity(WINDOW),
            sorted: Vec::with_capacity(WINDOW),
        }
    }

    /// How much longer to hold a frame that left the encoder `lateness` after its running time.
    pub fn hold(&mut self, lateness: Duration) -> Duration {
        if self.margin.is_zero() {
            return Duration::ZERO;
        }
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(lateness);
        self.sorted.clear();
        self.sorted.extend(self.recent.iter().copied());
        let rank = (self.sorted.len() - 1) * FLOOR_PERCENTILE / 100;
        let (_, floor, _) = self.sorted.select_nth_unstable(rank);
        (*floor + self.margin)
            .saturating_sub(lateness)
            .min(2 * self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Frames whose encoder output wanders 0–14 ms leave on one line: the fastest frame's
    /// lateness plus the margin.
    #[test]
    fn varying_frames_leave_on_one_line() {
        let mut p = Pacer::new(ms(15));
        let lateness = [34, 40, 36, 48, 35, 34, 44, 38];
        let release: Vec<u64> = lateness
            .iter()
            .map(|&l| (ms(l) + p.hold(ms(l))).as_millis() as u64)
            .collect();
        assert_eq!(release, vec![49; lateness.len()]);
    }

    /// A frame behind the line goes at once, and does not move the line for the others.
    #[test]
    fn a_frame_behind_the_line_is_not_held() {
        let mut p = Pacer::new(ms(15));
        assert_eq!(p.hold(ms(34)), ms(15));
        assert_eq!(p.hold(ms(70)), Duration::ZERO);
        assert_eq!(p.hold(ms(36)), ms(13));
    }

    /// When the pipeline becomes slower for good, the line follows within one window; when it
    /// becomes faster, within a few percent of one.
    #[test]
    fn the_line_follows_the_pipeline() {
        let mut p = Pacer::new(ms(10));
        for _ in 0..WINDOW {
            p.hold(ms(30));
        }
        assert_eq!(
            p.hold(ms(50)),
            Duration::ZERO,
            "behind the old line of 40 ms"
        );
        for _ in 0..WINDOW - 1 {
            p.hold(ms(50));
        }
        assert_eq!(p.hold(ms(50)), ms(10), "the line is now 60 ms");
        let faster: Vec<Duration> = (0..WINDOW / 10).map(|_| p.hold(ms(20))).collect();
        assert_eq!(
            faster[0],
            ms(20),
            "the old line would hold a faster frame 40 ms: at most twice the margin"
        );
        assert_eq!(
            faster[faster.len() - 1],
            ms(10),
            "more of them lower it to 30 ms"
        );
    }

    /// A room's first frames wait for the compositor's deadline; the steady ones after them
    /// are never held more than twice the margin.
    #[test]
    fn a_room_starting_up_does_not_hold_its_steady_frames_long() {
        let mut p = Pacer::new(ms(15));
        for _ in 0..60 {
            p.hold(ms(105));
        }
        for _ in 0..60 {
            assert!(p.hold(ms(40)) <= ms(30));
        }
        assert_eq!(p.hold(ms(40)), ms(15), "the line is 40 + 15 ms by now");
    }

    /// The burst of fast frames when the compositor re-times its output (an input joined) does
    /// not pull the line under everyone else.
    #[test]
    fn a_few_fast_frames_do_not_move_the_line() {
        let mut p = Pacer::new(ms(15));
        for i in 0..WINDOW {
            p.hold(ms(40 + (i % 9) as u64));
        }
        for l in [83, 52, 21] {
            p.hold(ms(l));
        }
        assert_eq!(p.hold(ms(44)), ms(11), "the line stays at 40 + 15 ms");
    }

    #[test]
    fn a_zero_margin_never_holds() {
        let mut p = Pacer::new(Duration::ZERO);
        assert_eq!(p.hold(ms(30)), Duration::ZERO);
        assert_eq!(p.hold(ms(10)), Duration::ZERO);
    }
}

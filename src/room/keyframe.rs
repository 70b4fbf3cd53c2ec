//! Pure keyframe-request coalescing, shared by the two directions that need it:
//! receivers asking the room's encoder for a keyframe (join, PLI, FIR), and the server asking a
//! publisher (PLI) when it starts or loses decoding.
//!
//! A request right after a forced keyframe is served by that keyframe (it has not come out of
//! the encoder yet); later requests within `min_interval` collapse into one deferred keyframe.
//! So a burst of joins or PLIs costs one keyframe, and a storm costs at most one per interval.

use std::time::{Duration, Instant};

/// Requests this soon after a forced keyframe are served by it.
pub const SERVED_WINDOW: Duration = Duration::from_millis(60);

#[derive(Debug, Clone)]
pub struct KeyframeGate {
    min_interval: Duration,
    last_forced: Option<Instant>,
    deferred: bool,
}

impl KeyframeGate {
    pub fn new(min_interval: Duration) -> Self {
        Self {
            min_interval: min_interval.max(SERVED_WINDOW),
            last_forced: None,
            deferred: false,
        }
    }

    /// A request arrived. Returns true when a keyframe must be forced now.
    pub fn handle_request(&mut self, now: Instant) -> bool {
        match self.last_forced {
            Some(t) if now.saturating_duration_since(t) < SERVED_WINDOW => false,
            Some(t) if now.saturating_duration_since(t) < self.min_interval => {
                self.deferred = true;
                false
            }
            _ => {
                self.last_forced = Some(now);
                self.deferred = false;
                true
            }
        }
    }

    /// When [`poll_force`](Self::poll_force) should next be called, if a request is deferred.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deferred, self.last_forced) {
            (true, Some(t)) => Some(t + self.min_interval),
            _ => None,
        }
    }

    /// Returns true when a deferred request is due now.
    pub fn poll_force(&mut self, now: Instant) -> bool {
        match self.poll_timeout() {
            Some(due) if now >= due => {
                self.deferred = false;
                self.last_forced = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn first_request_forces() {
        let mut g = KeyframeGate::new(ms(300));
        assert!(g.handle_request(Instant::now()));
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn burst_costs_one_keyframe() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(ms(300));
        let forced = (0..20)
            .filter(|i| g.handle_request(t0 + ms(*i * 2)))
            .count();
        assert_eq!(forced, 1);
        assert_eq!(
            g.poll_timeout(),
            None,
            "requests inside the window are served"
        );
    }

    #[test]
    fn late_requests_collapse_into_one_deferred() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(ms(300));
        assert!(g.handle_request(t0));
        assert!(!g.handle_request(t0 + ms(100)));
        assert!(!g.handle_request(t0 + ms(200)));
        assert_eq!(g.poll_timeout(), Some(t0 + ms(300)));
        assert!(!g.poll_force(t0 + ms(299)));
        assert!(g.poll_force(t0 + ms(300)));
        assert!(!g.poll_force(t0 + ms(301)));
        assert_eq!(g.poll_timeout(), None);
    }

    #[test]
    fn storm_is_rate_limited() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(ms(300));
        let mut forced = 0;
        for i in 0..1000u64 {
            let now = t0 + ms(i);
            forced += g.handle_request(now) as u32 + g.poll_force(now) as u32;
        }
        assert!((3..=5).contains(&forced), "{forced} keyframes in 1 s");
    }

    #[test]
    fn after_the_interval_a_request_forces_again() {
        let t0 = Instant::now();
        let mut g = KeyframeGate::new(ms(300));
        assert!(g.handle_request(t0));
        assert!(g.handle_request(t0 + ms(301)));
    }
}

//! Who is in the audio mix: a pure decision (`handle_level(now, ..)`, `update(now)`), no
//! tokio, opus or webrtc types. The audio mixer applies it: it decodes only the sources in the
//! mix (and those whose level it must measure itself), fades them in and out, and gives a
//! mix-minus only to listeners whose own voice is in the mix.
//!
//! Each source's level (dBov, 0 is full scale) is smoothed: it rises fast (a voice at
//! -20 dBov that starts is in the mix on its first packet, so no syllable is lost) and falls
//! slowly (about 200 ms), so pauses between words do not flap. At most `max` sources are in
//! the mix, the loudest ones above [`SILENCE_DBOV`]:
//! - a free place goes to the loudest candidate at once;
//! - a candidate replaces the quietest member when it is [`HYSTERESIS_DB`] louder and that
//!   member has been in for [`MIN_IN_MIX`];
//! - a member silent for [`RELEASE`] leaves (its place is free again).

use crate::ids::SessionId;
use std::time::{Duration, Instant};

/// At or below this smoothed level a source is silent (about -50 dBFS, as the voice activity
/// detector's threshold).
pub const SILENCE_DBOV: f32 = -50.0;
/// How much louder than the quietest member a candidate must be to replace it.
pub const HYSTERESIS_DB: f32 = 3.0;
/// A member stays at least this long before a louder candidate may replace it.
pub const MIN_IN_MIX: Duration = Duration::from_millis(300);
/// A member this long silent leaves the mix.
pub const RELEASE: Duration = Duration::from_millis(800);
/// Smoothing per level reading (one per 20 ms packet) while the level rises: from silence,
/// speech at -20 dBov passes the silence threshold on its first packet, at -35 on its second.
const ATTACK: f32 = 0.8;
/// … and while it falls (a time constant of about 200 ms).
const RELEASE_SMOOTHING: f32 = 0.1;
/// The level of a source nothing has been heard from.
const FLOOR_DBOV: f32 = -127.0;

#[derive(Debug, Clone)]
struct Source {
    id: SessionId,
    level: f32,
    /// Since when it has been in the mix.
    joined_mix: Option<Instant>,
    /// When it was last above the silence threshold.
    last_loud: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct SpeakerSelector {
    max: usize,
    sources: Vec<Source>,
}

impl SpeakerSelector {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            sources: Vec::new(),
        }
    }

    pub fn handle_add(&mut self, id: SessionId) {
        if !self.sources.iter().any(|s| s.id == id) {
            self.sources.push(Source {
                id,
                level: FLOOR_DBOV,
                joined_mix: None,
                last_loud: None,
            });
        }
    }

    pub fn handle_remove(&mut self, id: SessionId) {
        self.sources.retain(|s| s.id != id);
    }

    /// One reading of a source's level, dBov (RFC 6464's level is its negative).
    pub fn handle_level(&mut self, now: Instant, id: SessionId, dbov: f32) {
        if let Some(s) = self.sources.iter_mut().find(|s| s.id == id) {
            let x = dbov.clamp(FLOOR_DBOV, 0.0);
            let k = if x > s.level {
                ATTACK
            } else {
                RELEASE_SMOOTHING
            };
            s.level += k * (x - s.level);
            if s.level > SILENCE_DBOV {
                s.last_loud = Some(now);
            }
        }
    }

    /// Whether `id` is in the mix now.
    pub fn in_mix(&self, id: SessionId) -> bool {
        self.sources
            .iter()
            .any(|s| s.id == id && s.joined_mix.is_some())
    }

    /// The sources in the mix, loudest first.
    pub fn mixed(&self) -> Vec<SessionId> {
        let mut v: Vec<&Source> = self
            .sources
            .iter()
            .filter(|s| s.joined_mix.is_some())
            .collect();
        v.sort_by(|a, b| b.level.total_cmp(&a.level));
        v.into_iter().map(|s| s.id).collect()
    }

    /// A source's smoothed level, dBov.
    pub fn level(&self, id: SessionId) -> Option<f32> {
        self.sources.iter().find(|s| s.id == id).map(|s| s.level)
    }

    /// Applies the readings since the last update. Returns true when the mix changed.
    pub fn update(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for s in self.sources.iter_mut().filter(|s| s.joined_mix.is_some()) {
            let silent_for = s
                .last_loud
                .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
            if silent_for >= RELEASE {
                s.joined_mix = None;
                changed = true;
            }
        }
        loop {
            let candidate = self
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.joined_mix.is_none() && s.level > SILENCE_DBOV)
                .max_by(|a, b| a.1.level.total_cmp(&b.1.level))
                .map(|(i, s)| (i, s.level));
            let Some((c, level)) = candidate else { break };
            let members = self.sources.iter().filter(|s| s.joined_mix.is_some());
            if members.count() < self.max {
                self.sources[c].joined_mix = Some(now);
                changed = true;
                continue;
            }
            let quietest = self
                .sources
                .iter()
                .enumerate()
                .filter(|(_, s)| s.joined_mix.is_some())
                .min_by(|a, b| a.1.level.total_cmp(&b.1.level))
                .map(|(i, s)| (i, s.level, s.joined_mix));
            match quietest {
                Some((q, qlevel, Some(since)))
                    if level > qlevel + HYSTERESIS_DB
                        && now.saturating_duration_since(since) >= MIN_IN_MIX =>
                {
                    self.sources[q].joined_mix = None;
                    self.sources[c].joined_mix = Some(now);
                    changed = true;
                }
                _ => break,
            }
        }
        changed
    }
}

/// RMS of samples in [-1, 1] as dBov (full scale 0).
pub fn rms_dbov(rms: f32) -> f32 {
    if rms <= 0.0 {
        FLOOR_DBOV
    } else {
        (20.0 * rms.log10()).max(FLOOR_DBOV)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SessionId {
        SessionId::parse(&format!("{n:016x}")).unwrap()
    }

    /// Feeds 20 ms readings of `levels[i]` for source i+1 over `ms`, updating each time.
    fn run(s: &mut SpeakerSelector, t: &mut Instant, ms: u64, levels: &[f32]) {
        for _ in 0..ms / 20 {
            *t += Duration::from_millis(20);
            for (i, l) in levels.iter().enumerate() {
                s.handle_level(*t, id(i as u64 + 1), *l);
            }
            s.update(*t);
        }
    }

    fn mixed_sorted(s: &SpeakerSelector) -> Vec<SessionId> {
        let mut m = s.mixed();
        m.sort();
        m
    }

    #[test]
    fn the_loudest_three_are_mixed_and_silence_never_is() {
        let mut s = SpeakerSelector::new(3);
        for i in 1..=6 {
            s.handle_add(id(i));
        }
        let mut t = Instant::now();
        run(
            &mut s,
            &mut t,
            1000,
            &[-8.0, -10.0, -14.0, -20.0, -26.0, -127.0],
        );
        assert_eq!(s.mixed(), vec![id(1), id(2), id(3)]);
        assert!(!s.in_mix(id(6)));
        // Only two speak: two members, the silent place stays free.
        let mut s = SpeakerSelector::new(3);
        for i in 1..=6 {
            s.handle_add(id(i));
        }
        run(
            &mut s,
            &mut t,
            1000,
            &[-20.0, -127.0, -127.0, -30.0, -127.0, -127.0],
        );
        assert_eq!(mixed_sorted(&s), vec![id(1), id(4)]);
    }

    #[test]
    fn a_louder_newcomer_replaces_the_quietest_within_half_a_second() {
        let mut s = SpeakerSelector::new(3);
        for i in 1..=6 {
            s.handle_add(id(i));
        }
        let mut t = Instant::now();
        let mut levels = [-8.0, -10.0, -14.0, -20.0, -26.0, -34.0];
        run(&mut s, &mut t, 2000, &levels);
        levels[5] = -6.0;
        let start = t;
        while s.in_mix(id(3)) {
            run(&mut s, &mut t, 20, &levels);
            assert!(
                t - start < Duration::from_millis(500),
                "not replaced in time"
            );
        }
        assert_eq!(mixed_sorted(&s), vec![id(1), id(2), id(6)]);
        // No flapping afterwards.
        for _ in 0..100 {
            run(&mut s, &mut t, 20, &levels);
            assert_eq!(mixed_sorted(&s), vec![id(1), id(2), id(6)]);
        }
    }

    #[test]
    fn a_voice_that_starts_is_mixed_on_its_first_packet() {
        let mut s = SpeakerSelector::new(3);
        s.handle_add(id(1));
        let mut t = Instant::now();
        run(&mut s, &mut t, 1000, &[-127.0]);
        assert!(!s.in_mix(id(1)));
        run(&mut s, &mut t, 20, &[-20.0]);
        assert!(s.in_mix(id(1)));
        // A short burst every half second (markers, or words with pauses) keeps it there.
        for _ in 0..10 {
            run(&mut s, &mut t, 40, &[-9.0]);
            run(&mut s, &mut t, 460, &[-127.0]);
            assert!(s.in_mix(id(1)));
        }
    }

    #[test]
    fn near_equal_levels_do_not_flap() {
        let mut s = SpeakerSelector::new(1);
        s.handle_add(id(1));
        s.handle_add(id(2));
        let mut t = Instant::now();
        run(&mut s, &mut t, 500, &[-20.0, -127.0]);
        assert!(s.in_mix(id(1)));
        // 2 is 2 dB louder: under the hysteresis, 1 stays.
        run(&mut s, &mut t, 3000, &[-20.0, -18.0]);
        assert!(s.in_mix(id(1)) && !s.in_mix(id(2)));
    }

    #[test]
    fn a_member_that_falls_silent_leaves_and_a_removed_source_is_gone() {
        let mut s = SpeakerSelector::new(2);
        s.handle_add(id(1));
        s.handle_add(id(2));
        let mut t = Instant::now();
        run(&mut s, &mut t, 500, &[-20.0, -25.0]);
        assert_eq!(mixed_sorted(&s), vec![id(1), id(2)]);
        run(&mut s, &mut t, 2000, &[-20.0, -127.0]);
        assert_eq!(s.mixed(), vec![id(1)]);
        s.handle_remove(id(1));
        s.update(t);
        assert!(s.mixed().is_empty());
    }

    #[test]
    fn rms_to_dbov() {
        assert!((rms_dbov(1.0)).abs() < 1e-6);
        assert!((rms_dbov(0.1) + 20.0).abs() < 1e-4);
        assert_eq!(rms_dbov(0.0), -127.0);
    }
}

//! Timestamps of one output (pure). Time runs from the first video keyframe the output writes;
//! paused stretches are cut out; after a pause or a gap in the video the output waits for the
//! next keyframe, so every file starts, and every resumed stretch continues, decodable. Video
//! and audio are stamped by the same timeline, so they stay in sync.

use std::time::{Duration, Instant};

/// How far an audio frame's arrival may drift from the running count of frame durations before
/// the count is re-anchored to the clock (after drops, or an encoder that fell behind).
const AUDIO_RESYNC: Duration = Duration::from_millis(80);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first keyframe: nothing written yet.
    Starting,
    Running,
    Paused {
        since: Instant,
    },
    /// Resumed, waiting for a keyframe; the pause lasts until it arrives.
    Resuming {
        since: Instant,
    },
}

#[derive(Debug, Clone)]
pub struct Timeline {
    phase: Phase,
    origin: Option<Instant>,
    paused_total: Duration,
    /// Video lost frames (queue overflow): drop video until the next keyframe.
    video_gap: bool,
    last_video: Option<Duration>,
    next_audio: Option<Duration>,
    written: Duration,
}

/// Why a call to [`Timeline::pause`] or [`Timeline::resume`] changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("the recording is already paused")]
    AlreadyPaused,
    #[error("the recording is not paused")]
    NotPaused,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    pub fn new() -> Self {
        Self {
            phase: Phase::Starting,
            origin: None,
            paused_total: Duration::ZERO,
            video_gap: false,
            last_video: None,
            next_audio: None,
            written: Duration::ZERO,
        }
    }

    fn position(&self, now: Instant) -> Duration {
        let origin = self.origin.unwrap_or(now);
        now.saturating_duration_since(origin)
            .saturating_sub(self.paused_total)
    }

    /// The timestamp for a video frame arriving `now`, or `None` to drop it.
    pub fn video(&mut self, now: Instant, keyframe: bool) -> Option<Duration> {
        match self.phase {
            Phase::Paused { .. } => return None,
            Phase::Starting | Phase::Resuming { .. } if !keyframe => return None,
            Phase::Starting => self.origin = Some(now),
            Phase::Resuming { since } => {
                self.paused_total += now.saturating_duration_since(since);
                self.next_audio = None;
            }
            Phase::Running if self.video_gap && !keyframe => return None,
            Phase::Running => {}
        }
        self.phase = Phase::Running;
        self.video_gap = false;
        let mut pts = self.position(now);
        // Strictly increasing, whatever the arrival jitter.
        if let Some(last) = self.last_video
            && pts <= last
        {
            pts = last + Duration::from_millis(1);
        }
        self.last_video = Some(pts);
        self.written = self.written.max(pts);
        Some(pts)
    }

    /// The timestamp for an audio frame of `duration` arriving `now`, or `None` to drop it.
    /// Consecutive frames are stamped back to back (audio has no gaps), re-anchored to the
    /// clock when arrival drifts further than [`AUDIO_RESYNC`].
    pub fn audio(&mut self, now: Instant, duration: Duration) -> Option<Duration> {
        if self.phase != Phase::Running {
            return None;
        }
        let clock = self.position(now);
        let pts = match self.next_audio {
            Some(next) if next.abs_diff(clock) <= AUDIO_RESYNC => next,
            _ => clock,
        };
        self.next_audio = Some(pts + duration);
        self.written = self.written.max(pts + duration);
        Some(pts)
    }

    /// Video frames were lost before reaching the output: wait for a keyframe.
    pub fn video_lost(&mut self) {
        self.video_gap = true;
    }

    /// Whether video is waiting for a keyframe (the room should be asked for one).
    pub fn wants_keyframe(&self) -> bool {
        matches!(self.phase, Phase::Starting | Phase::Resuming { .. })
            || (self.phase == Phase::Running && self.video_gap)
    }

    pub fn pause(&mut self, now: Instant) -> Result<(), TransitionError> {
        match self.phase {
            Phase::Paused { .. } => Err(TransitionError::AlreadyPaused),
            // Paused while resuming: the earlier pause simply continues.
            Phase::Resuming { since } => {
                self.phase = Phase::Paused { since };
                Ok(())
            }
            Phase::Starting | Phase::Running => {
                self.phase = Phase::Paused { since: now };
                Ok(())
            }
        }
    }

    pub fn resume(&mut self) -> Result<(), TransitionError> {
        match self.phase {
            Phase::Paused { since } => {
                self.phase = if self.origin.is_some() {
                    Phase::Resuming { since }
                } else {
                    Phase::Starting
                };
                Ok(())
            }
            _ => Err(TransitionError::NotPaused),
        }
    }

    pub fn is_paused(&self) -> bool {
        matches!(self.phase, Phase::Paused { .. })
    }

    /// Media time written so far (the file's duration).
    pub fn written(&self) -> Duration {
        self.written
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn starts_at_the_first_keyframe_with_audio_aligned() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        assert_eq!(t.audio(t0, ms(20)), None, "audio before video is dropped");
        assert_eq!(
            t.video(t0 + ms(10), false),
            None,
            "delta before key dropped"
        );
        assert!(t.wants_keyframe());
        assert_eq!(t.video(t0 + ms(50), true), Some(ms(0)));
        assert!(!t.wants_keyframe());
        assert_eq!(t.audio(t0 + ms(55), ms(20)), Some(ms(5)));
        // Back to back despite jitter.
        assert_eq!(t.audio(t0 + ms(70), ms(20)), Some(ms(25)));
        assert_eq!(t.audio(t0 + ms(98), ms(20)), Some(ms(45)));
        assert_eq!(t.video(t0 + ms(83), false), Some(ms(33)));
    }

    #[test]
    fn audio_reanchors_after_a_long_stall() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        t.video(t0, true);
        assert_eq!(t.audio(t0, ms(20)), Some(ms(0)));
        assert_eq!(t.audio(t0 + ms(500), ms(20)), Some(ms(500)));
    }

    #[test]
    fn pause_cuts_the_stretch_out_and_resume_waits_for_a_keyframe() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        t.video(t0, true);
        assert_eq!(t.video(t0 + ms(1000), false), Some(ms(1000)));
        t.pause(t0 + ms(1000)).unwrap();
        assert_eq!(t.pause(t0 + ms(1100)), Err(TransitionError::AlreadyPaused));
        assert!(t.is_paused());
        assert_eq!(t.video(t0 + ms(1500), true), None);
        assert_eq!(t.audio(t0 + ms(1500), ms(20)), None);
        t.resume().unwrap();
        assert_eq!(t.resume(), Err(TransitionError::NotPaused));
        assert!(t.wants_keyframe());
        assert_eq!(t.video(t0 + ms(3000), false), None);
        assert_eq!(t.audio(t0 + ms(3000), ms(20)), None);
        // Paused from 1000 to 3100: the keyframe lands right after the last frame.
        assert_eq!(t.video(t0 + ms(3100), true), Some(ms(1000) + ms(1)));
        assert_eq!(t.video(t0 + ms(3133), false), Some(ms(1033)));
        assert_eq!(t.audio(t0 + ms(3140), ms(20)), Some(ms(1040)));
        assert!(t.written() >= ms(1060));
    }

    #[test]
    fn video_loss_waits_for_a_keyframe_while_audio_continues() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        t.video(t0, true);
        t.video_lost();
        assert!(t.wants_keyframe());
        assert_eq!(t.video(t0 + ms(33), false), None);
        assert_eq!(t.audio(t0 + ms(40), ms(20)), Some(ms(40)));
        assert_eq!(t.video(t0 + ms(66), true), Some(ms(66)));
    }

    #[test]
    fn video_timestamps_strictly_increase() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        let a = t.video(t0 + ms(10), true).unwrap();
        let b = t.video(t0 + ms(10), false).unwrap();
        assert!(b > a);
    }

    #[test]
    fn pause_before_the_first_frame_restarts_cleanly() {
        let t0 = Instant::now();
        let mut t = Timeline::new();
        t.pause(t0).unwrap();
        t.resume().unwrap();
        assert_eq!(t.video(t0 + ms(500), true), Some(ms(0)));
    }
}

//! Who is on screen: a pure decision (`handle_*(now, ..)`, `update(now)`, `poll_timeout()`),
//! no tokio, gst or webrtc types. The room applies it: a visible publisher gets a tile and a
//! decoder, a hidden one neither (its video packets are dropped before any decoder).
//!
//! At most `capacity` publishers are visible (the smaller of `video.max_tiles` and what the
//! layout has room for). Who, in order of precedence:
//! 1. the pinned participants (by the REST API), in pin order; a pin takes a tile at once;
//! 2. recent speakers, the most recent first (everyone speaking now ties with each other);
//! 3. everyone else, in join order.
//!
//! Tiles are *slots*: a newcomer takes the place of the one it replaces, so the rest of the
//! picture does not move. A visible participant keeps its slot for at least `hold` (so the
//! layout does not flicker when several people talk in turn), unless a pin needs it or it
//! leaves. A swap happens only when a hidden participant ranks strictly better than a visible
//! one, so a room where nobody speaks never changes by itself.
//!
//! The *featured* participant (speaker mode's large region) is the first pin, else the
//! active speaker: whoever began speaking most recently among the visible, kept while it
//! speaks and until someone else does.

use crate::ids::SessionId;
use std::cmp::Reverse;
use std::time::{Duration, Instant};

/// How long a participant keeps its tile at least, once shown (unless pinned away or gone).
pub const DEFAULT_HOLD: Duration = Duration::from_secs(4);

#[derive(Debug, Clone)]
struct Member {
    id: SessionId,
    /// Join order.
    seq: u64,
    speaking: bool,
    /// When it last spoke (kept current while it speaks).
    last_spoke: Option<Instant>,
    /// When its current talkspurt began.
    speaking_since: Option<Instant>,
    /// When it took its slot (visible members only).
    shown_at: Option<Instant>,
}

/// Why a set of pins was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("no publisher {0} in the room")]
    Unknown(SessionId),
    #[error("{0} is pinned twice")]
    Duplicate(SessionId),
    #[error("at most {max} participants can be pinned ({given} given): the layout has {max} tiles")]
    TooMany { max: usize, given: usize },
}

/// Rank: smaller is better.
type Key = (u8, usize, Reverse<Option<Instant>>, u64);

#[derive(Debug, Clone)]
pub struct VisibleSet {
    capacity: usize,
    hold: Duration,
    members: Vec<Member>,
    pinned: Vec<SessionId>,
    /// Visible participants, in slot order.
    slots: Vec<SessionId>,
    active: Option<SessionId>,
    next_seq: u64,
}

impl VisibleSet {
    pub fn new(capacity: usize, hold: Duration) -> Self {
        Self {
            capacity,
            hold,
            members: Vec::new(),
            pinned: Vec::new(),
            slots: Vec::new(),
            active: None,
            next_seq: 0,
        }
    }

    /// The visible participants, in slot order.
    pub fn visible(&self) -> &[SessionId] {
        &self.slots
    }

    pub fn is_visible(&self, id: SessionId) -> bool {
        self.slots.contains(&id)
    }

    pub fn pinned(&self) -> &[SessionId] {
        &self.pinned
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn contains(&self, id: SessionId) -> bool {
        self.members.iter().any(|m| m.id == id)
    }

    /// The participant speaker mode shows large: the first pin, else the active speaker, else
    /// the first slot.
    pub fn featured(&self) -> Option<SessionId> {
        self.pinned
            .first()
            .copied()
            .or(self.active.filter(|a| self.slots.contains(a)))
            .or(self.slots.first().copied())
    }

    /// The visible participants with the featured one first (speaker mode's order), the rest
    /// in slot order.
    pub fn featured_first(&self) -> Vec<SessionId> {
        let mut v = Vec::with_capacity(self.slots.len());
        if let Some(f) = self.featured() {
            v.push(f);
        }
        v.extend(self.slots.iter().filter(|s| Some(**s) != self.featured()));
        v
    }

    /// A new publisher (appended in join order).
    pub fn handle_join(&mut self, id: SessionId) {
        if self.contains(id) {
            return;
        }
        self.members.push(Member {
            id,
            seq: self.next_seq,
            speaking: false,
            last_spoke: None,
            speaking_since: None,
            shown_at: None,
        });
        self.next_seq += 1;
    }

    /// A publisher left: its slot goes to the best hidden participant, in the same place, at
    /// the next update (until then the slot still names it).
    pub fn handle_leave(&mut self, id: SessionId) {
        self.members.retain(|m| m.id != id);
        self.pinned.retain(|p| *p != id);
        if self.active == Some(id) {
            self.active = None;
        }
    }

    pub fn handle_speaking(&mut self, now: Instant, id: SessionId, on: bool) {
        let Some(m) = self.members.iter_mut().find(|m| m.id == id) else {
            return;
        };
        if on && !m.speaking {
            m.speaking_since = Some(now);
        }
        m.speaking = on;
        m.last_spoke = Some(now);
    }

    /// Replaces the pins. Every pin must be a publisher here, once, and fit the capacity.
    pub fn set_pins(&mut self, pins: Vec<SessionId>) -> Result<(), PinError> {
        self.check_pins(&pins, self.capacity)?;
        self.pinned = pins;
        Ok(())
    }

    /// Whether `pins` would be accepted with `capacity` tiles.
    pub fn check_pins(&self, pins: &[SessionId], capacity: usize) -> Result<(), PinError> {
        if pins.len() > capacity {
            return Err(PinError::TooMany {
                max: capacity,
                given: pins.len(),
            });
        }
        for (i, p) in pins.iter().enumerate() {
            if !self.contains(*p) {
                return Err(PinError::Unknown(*p));
            }
            if pins[..i].contains(p) {
                return Err(PinError::Duplicate(*p));
            }
        }
        Ok(())
    }

    /// A new capacity (another layout): extra slots go at the next update, the worst first.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.pinned.truncate(capacity);
    }

    fn key(&self, m: &Member) -> Key {
        if let Some(i) = self.pinned.iter().position(|p| *p == m.id) {
            return (0, i, Reverse(None), m.seq);
        }
        match m.last_spoke {
            Some(t) => (1, 0, Reverse(Some(t)), m.seq),
            None => (2, 0, Reverse(None), m.seq),
        }
    }

    fn member(&self, id: SessionId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    fn evictable(&self, now: Instant, id: SessionId, for_pin: bool) -> bool {
        if self.pinned.contains(&id) {
            return false;
        }
        for_pin
            || self
                .member(id)
                .and_then(|m| m.shown_at)
                .is_none_or(|t| now.saturating_duration_since(t) >= self.hold)
    }

    /// The best hidden participant, if any.
    fn best_hidden(&self) -> Option<(Key, SessionId)> {
        self.members
            .iter()
            .filter(|m| !self.slots.contains(&m.id))
            .map(|m| (self.key(m), m.id))
            .min()
    }

    /// Applies everything handled since the last update. Returns true when the visible set
    /// (or its order, or the featured participant) changed.
    pub fn update(&mut self, now: Instant) -> bool {
        let before = (self.slots.clone(), self.featured());
        for m in self.members.iter_mut().filter(|m| m.speaking) {
            m.last_spoke = Some(now);
        }
        // Places of departed participants go to the best hidden, in place, or close up.
        let mut i = 0;
        while i < self.slots.len() {
            if self.member(self.slots[i]).is_some() {
                i += 1;
                continue;
            }
            match self.best_hidden() {
                Some((_, h)) => {
                    self.slots[i] = h;
                    self.show(now, h);
                    i += 1;
                }
                None => {
                    self.slots.remove(i);
                }
            }
        }
        while self.slots.len() < self.capacity {
            let Some((_, id)) = self.best_hidden() else {
                break;
            };
            self.slots.push(id);
            self.show(now, id);
        }
        // Too many (the capacity shrank): the worst go, whatever their hold.
        while self.slots.len() > self.capacity {
            let worst = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| self.member(*s).map(|m| (self.key(m), i)))
                .max();
            match worst {
                Some((_, i)) => self.hide(i),
                None => break,
            }
        }
        // Swaps: the best hidden against the worst evictable visible.
        while let Some((hk, h)) = self.best_hidden() {
            let for_pin = hk.0 == 0;
            let worst = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| self.evictable(now, **s, for_pin))
                .filter_map(|(i, s)| self.member(*s).map(|m| (self.key(m), i)))
                .max();
            match worst {
                Some((wk, i)) if hk < wk => {
                    self.hide(i);
                    self.slots.insert(i, h);
                    self.show(now, h);
                }
                _ => break,
            }
        }
        self.update_active();
        before != (self.slots.clone(), self.featured())
    }

    fn show(&mut self, now: Instant, id: SessionId) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.shown_at = Some(now);
        }
    }

    fn hide(&mut self, slot: usize) {
        let id = self.slots.remove(slot);
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.shown_at = None;
        }
    }

    /// The active speaker stays while it speaks; otherwise the visible participant that began
    /// speaking most recently takes over; with nobody speaking, the last one stays.
    fn update_active(&mut self) {
        let speaking = |id: SessionId| self.member(id).is_some_and(|m| m.speaking);
        if self
            .active
            .is_some_and(|a| speaking(a) && self.slots.contains(&a))
        {
            return;
        }
        let newest = self
            .slots
            .iter()
            .filter_map(|s| self.member(*s))
            .filter(|m| m.speaking)
            .max_by_key(|m| (m.speaking_since, Reverse(m.seq)))
            .map(|m| m.id);
        if newest.is_some() {
            self.active = newest;
        } else if self.active.is_some_and(|a| !self.slots.contains(&a)) {
            self.active = None;
        }
    }

    /// When [`update`](Self::update) may next change something by itself: a better hidden
    /// participant waits for a visible one's hold to run out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let (hk, _) = self.best_hidden()?;
        self.slots
            .iter()
            .filter(|s| !self.pinned.contains(s))
            .filter_map(|s| self.member(*s))
            .filter(|m| hk < self.key(m))
            .filter_map(|m| m.shown_at.map(|t| t + self.hold))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> SessionId {
        SessionId::parse(&format!("{n:016x}")).unwrap()
    }

    fn ids(v: &[u64]) -> Vec<SessionId> {
        v.iter().map(|n| id(*n)).collect()
    }

    /// A room of `n` publishers (ids 1..=n) joined in order, updated once at `t0`.
    fn room(n: u64, capacity: usize, t0: Instant) -> VisibleSet {
        let mut v = VisibleSet::new(capacity, DEFAULT_HOLD);
        for i in 1..=n {
            v.handle_join(id(i));
        }
        v.update(t0);
        v
    }

    #[test]
    fn join_order_fills_the_tiles_and_nothing_moves_by_itself() {
        let t0 = Instant::now();
        let mut v = room(24, 9, t0);
        assert_eq!(v.visible(), ids(&[1, 2, 3, 4, 5, 6, 7, 8, 9]).as_slice());
        for s in 1..60 {
            assert!(!v.update(t0 + Duration::from_secs(s)));
        }
        assert_eq!(v.poll_timeout(), None);
        assert!(!v.is_visible(id(24)));
    }

    #[test]
    fn a_hidden_speaker_takes_the_worst_slot_once_its_hold_ran_out() {
        let t0 = Instant::now();
        let mut v = room(12, 4, t0);
        let t1 = t0 + Duration::from_secs(1);
        v.handle_speaking(t1, id(11), true);
        // Every visible participant was shown at t0: held until t0 + 4 s.
        assert!(!v.update(t1));
        assert_eq!(v.poll_timeout(), Some(t0 + DEFAULT_HOLD));
        let t2 = t0 + DEFAULT_HOLD;
        assert!(v.update(t2));
        // The last joined of the never-speaking visible goes, and 11 takes its place.
        assert_eq!(v.visible(), ids(&[1, 2, 3, 11]).as_slice());
        // A second speaker replaces the next worst, not the first speaker.
        v.handle_speaking(t2, id(12), true);
        assert!(v.update(t2 + Duration::from_millis(20)));
        assert_eq!(v.visible(), ids(&[1, 2, 12, 11]).as_slice());
        // Both stop; a third starts: it waits for a hold, then replaces the oldest silent
        // participant that never spoke (3 speakers' last_spoke beats never).
        v.handle_speaking(t2 + Duration::from_secs(1), id(11), false);
        v.handle_speaking(t2 + Duration::from_secs(1), id(12), false);
        let t3 = t2 + Duration::from_secs(2);
        v.handle_speaking(t3, id(5), true);
        assert!(v.update(t3));
        assert_eq!(v.visible(), ids(&[1, 5, 12, 11]).as_slice());
    }

    #[test]
    fn a_pin_takes_a_tile_at_once_and_speakers_never_take_it() {
        let t0 = Instant::now();
        let mut v = room(24, 9, t0);
        v.set_pins(ids(&[24])).unwrap();
        let t1 = t0 + Duration::from_millis(100);
        assert!(v.update(t1));
        assert!(v.is_visible(id(24)));
        assert_eq!(v.visible().len(), 9);
        assert_eq!(v.visible()[8], id(24), "took the worst slot's place");
        assert_eq!(v.featured(), Some(id(24)));
        // Everyone hidden speaks: none of them can take the pinned tile.
        for i in 10..=23 {
            v.handle_speaking(t1, id(i), true);
        }
        for s in 1..30 {
            v.update(t1 + Duration::from_secs(s));
            assert!(v.is_visible(id(24)));
        }
        // Unpinned, it is an ordinary participant that never spoke: speakers replace it.
        v.set_pins(vec![]).unwrap();
        v.update(t1 + Duration::from_secs(40));
        assert!(!v.is_visible(id(24)));
    }

    #[test]
    fn a_leaver_s_slot_goes_to_the_best_hidden_in_the_same_place() {
        let t0 = Instant::now();
        let mut v = room(6, 4, t0);
        v.handle_speaking(t0, id(6), true);
        v.handle_leave(id(2));
        assert!(v.update(t0 + Duration::from_millis(10)));
        assert_eq!(v.visible(), ids(&[1, 6, 3, 4]).as_slice());
        v.handle_leave(id(1));
        v.handle_leave(id(3));
        v.handle_leave(id(4));
        v.update(t0 + Duration::from_millis(20));
        assert_eq!(v.visible(), ids(&[5, 6]).as_slice());
        v.handle_leave(id(6));
        v.handle_leave(id(5));
        v.update(t0 + Duration::from_millis(30));
        assert!(v.visible().is_empty());
        assert_eq!(v.featured(), None);
    }

    #[test]
    fn bad_pins_are_refused_with_their_reason() {
        let t0 = Instant::now();
        let mut v = room(5, 3, t0);
        assert_eq!(v.set_pins(ids(&[9])), Err(PinError::Unknown(id(9))));
        assert_eq!(v.set_pins(ids(&[1, 1])), Err(PinError::Duplicate(id(1))));
        assert_eq!(
            v.set_pins(ids(&[1, 2, 3, 4])),
            Err(PinError::TooMany { max: 3, given: 4 })
        );
        assert!(v.pinned().is_empty(), "a refused set changes nothing");
        v.set_pins(ids(&[5, 4])).unwrap();
        v.update(t0);
        // Each pin takes the place of the worst unpinned participant.
        assert_eq!(v.visible(), ids(&[1, 4, 5]).as_slice());
    }

    #[test]
    fn a_smaller_capacity_hides_the_worst_and_a_larger_one_shows_more() {
        let t0 = Instant::now();
        let mut v = room(10, 9, t0);
        v.handle_speaking(t0, id(9), true);
        v.set_capacity(3);
        assert!(v.update(t0));
        assert_eq!(v.visible(), ids(&[1, 2, 9]).as_slice());
        v.set_capacity(5);
        v.update(t0);
        assert_eq!(v.visible(), ids(&[1, 2, 9, 3, 4]).as_slice());
    }

    #[test]
    fn the_active_speaker_is_featured_while_it_speaks_and_until_another_does() {
        let t0 = Instant::now();
        let mut v = room(4, 4, t0);
        assert_eq!(v.featured(), Some(id(1)));
        v.handle_speaking(t0, id(3), true);
        v.update(t0);
        assert_eq!(v.featured(), Some(id(3)));
        assert_eq!(v.featured_first(), ids(&[3, 1, 2, 4]));
        // Another starts while 3 still speaks: 3 stays.
        v.handle_speaking(t0 + Duration::from_millis(500), id(2), true);
        v.update(t0 + Duration::from_millis(500));
        assert_eq!(v.featured(), Some(id(3)));
        // 3 stops: the one still speaking takes over.
        v.handle_speaking(t0 + Duration::from_secs(1), id(3), false);
        v.update(t0 + Duration::from_secs(1));
        assert_eq!(v.featured(), Some(id(2)));
        // Everyone silent: 2 stays featured.
        v.handle_speaking(t0 + Duration::from_secs(2), id(2), false);
        v.update(t0 + Duration::from_secs(2));
        assert_eq!(v.featured(), Some(id(2)));
        // A pin outranks the speaker.
        v.set_pins(ids(&[4])).unwrap();
        v.update(t0 + Duration::from_secs(3));
        assert_eq!(v.featured(), Some(id(4)));
    }

    #[test]
    fn more_speakers_than_tiles_do_not_churn() {
        let t0 = Instant::now();
        let mut v = room(12, 4, t0);
        for i in 1..=12 {
            v.handle_speaking(t0, id(i), true);
        }
        v.update(t0);
        let first = v.visible().to_vec();
        for ms in (20..60_000).step_by(20) {
            assert!(
                !v.update(t0 + Duration::from_millis(ms)),
                "changed at {ms} ms"
            );
        }
        assert_eq!(v.visible(), first.as_slice());
    }
}

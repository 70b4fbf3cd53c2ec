//! Which session a datagram on the shared media socket belongs to.
//!
//! The decision ([`Table`]) is pure: a STUN request names its session by the server's ICE
//! username fragment; a STUN message without one (a response to the server's own check) goes
//! to the session that last exchanged STUN with that address; DTLS and SRTP are accepted only
//! from an address that passed ICE for a session (the session answered an authenticated
//! connectivity check from it, or ICE selected it), and everything else is dropped and
//! counted. [`Router`] puts the table behind a lock with each session's inbound
//! queue, for the socket readers (which route) and the session drivers (which register).

use super::stun::DatagramKind;
use bytes::BytesMut;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::mpsc;

/// Addresses one session may be reached from for STUN (and, separately, for media) before
/// further ones are ignored: a spray of checks carrying a valid username from many addresses
/// cannot grow the table.
pub const MAX_STUN_ADDRS_PER_SESSION: usize = 32;

/// Why a datagram was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A STUN request naming no session of ours.
    UnknownUfrag,
    /// STUN without a username from an address no session talks to.
    UnknownAddr,
    /// DTLS or media from an address that did not pass ICE for any session.
    Unvalidated,
    /// Not STUN, DTLS or RTP (RFC 7983).
    NotWebrtc,
}

/// Peer-connection numbers are the sessions' keys (a renegotiation makes a new one).
pub type Peer = u64;

#[derive(Debug, Default)]
pub struct Table {
    by_ufrag: HashMap<Box<[u8]>, Peer>,
    stun_by_addr: HashMap<SocketAddr, Peer>,
    media_by_addr: HashMap<SocketAddr, Peer>,
    /// Per registered session: how many STUN and media addresses it has learnt.
    stun_addrs: HashMap<Peer, usize>,
    media_addrs: HashMap<Peer, usize>,
}

impl Table {
    pub fn register(&mut self, peer: Peer, ufrag: &str) {
        self.by_ufrag.insert(ufrag.as_bytes().into(), peer);
        self.stun_addrs.insert(peer, 0);
        self.media_addrs.insert(peer, 0);
    }

    /// Forgets everything that leads to `peer`; entries a later session took over stay.
    pub fn unregister(&mut self, peer: Peer) {
        self.by_ufrag.retain(|_, p| *p != peer);
        self.stun_by_addr.retain(|_, p| *p != peer);
        self.media_by_addr.retain(|_, p| *p != peer);
        self.stun_addrs.remove(&peer);
        self.media_addrs.remove(&peer);
    }

    /// `peer` exchanges STUN with `addr` (it sent a check there, or a check came from there
    /// with its username): STUN answers from `addr` go to it. The latest session wins, so a
    /// renegotiation's new connection takes over from the old one on the same address.
    pub fn learn_stun(&mut self, peer: Peer, addr: SocketAddr) {
        if self.stun_by_addr.get(&addr) == Some(&peer) {
            return;
        }
        let Some(n) = self.stun_addrs.get_mut(&peer) else {
            return; // not registered (already gone)
        };
        if *n >= MAX_STUN_ADDRS_PER_SESSION {
            return;
        }
        *n += 1;
        self.stun_by_addr.insert(addr, peer);
    }

    /// `addr` passed ICE for `peer`: DTLS and media from it are accepted. A peer may switch
    /// between its valid pairs (browsers do), so every validated address stays valid, up to
    /// the bound. The latest session wins an address, as for STUN.
    pub fn validate(&mut self, peer: Peer, addr: SocketAddr) {
        if self.media_by_addr.get(&addr) == Some(&peer) {
            return;
        }
        let Some(n) = self.media_addrs.get_mut(&peer) else {
            return;
        };
        if *n >= MAX_STUN_ADDRS_PER_SESSION {
            return;
        }
        *n += 1;
        self.media_by_addr.insert(addr, peer);
    }

    /// The session `datagram` (of `kind`, with the STUN username fragment `ufrag` if any)
    /// from `from` belongs to.
    pub fn route(
        &mut self,
        kind: DatagramKind,
        ufrag: Option<&[u8]>,
        from: SocketAddr,
    ) -> Result<Peer, Refusal> {
        match kind {
            DatagramKind::Stun => match ufrag {
                Some(u) => {
                    let peer = *self.by_ufrag.get(u).ok_or(Refusal::UnknownUfrag)?;
                    self.learn_stun(peer, from);
                    Ok(peer)
                }
                None => self
                    .stun_by_addr
                    .get(&from)
                    .copied()
                    .ok_or(Refusal::UnknownAddr),
            },
            DatagramKind::Dtls | DatagramKind::Media => self
                .media_by_addr
                .get(&from)
                .copied()
                .ok_or(Refusal::Unvalidated),
            DatagramKind::Other => Err(Refusal::NotWebrtc),
        }
    }

    pub fn sessions(&self) -> usize {
        self.stun_addrs.len()
    }
}

/// One datagram for a session, as it came off the socket (or one ICE-TCP frame).
pub struct Datagram {
    pub data: BytesMut,
    pub from: SocketAddr,
    pub local: SocketAddr,
    pub at: Instant,
    pub tcp: bool,
}

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub delivered: AtomicU64,
    pub unknown_ufrag: AtomicU64,
    pub unknown_addr: AtomicU64,
    pub unvalidated: AtomicU64,
    pub not_webrtc: AtomicU64,
    /// The session's inbound queue was full (its driver is behind): dropped.
    pub queue_full: AtomicU64,
    /// RTP packets that came out of SRTP decryption (replays and forgeries do not).
    pub rtp_received: AtomicU64,
}

/// A snapshot of [`RouterStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransportStats {
    pub sessions: usize,
    pub delivered: u64,
    pub unknown_ufrag: u64,
    pub unknown_addr: u64,
    pub unvalidated: u64,
    pub not_webrtc: u64,
    pub queue_full: u64,
    pub rtp_received: u64,
}

#[derive(Default)]
struct Routes {
    table: Table,
    queues: HashMap<Peer, mpsc::Sender<Datagram>>,
}

/// The table and the sessions' queues, shared by socket readers and session drivers. The lock
/// is held only for a map lookup and a `try_send`, never across an `.await`.
#[derive(Default)]
pub struct Router {
    routes: Mutex<Routes>,
    pub stats: RouterStats,
}

impl Router {
    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        // Every critical section is a few map operations that cannot leave the maps half
        // changed, so a poisoned lock is still consistent.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, peer: Peer, ufrag: &str, queue: mpsc::Sender<Datagram>) {
        let mut r = self.lock();
        r.table.register(peer, ufrag);
        r.queues.insert(peer, queue);
    }

    pub fn unregister(&self, peer: Peer) {
        let mut r = self.lock();
        r.table.unregister(peer);
        r.queues.remove(&peer);
    }

    pub fn learn_stun(&self, peer: Peer, addr: SocketAddr) {
        self.lock().table.learn_stun(peer, addr);
    }

    pub fn validate(&self, peer: Peer, addr: SocketAddr) {
        self.lock().table.validate(peer, addr);
    }

    /// Hands `d` to its session, or counts why not; true if it was queued for a session.
    pub fn deliver(&self, d: Datagram) -> bool {
        let kind = super::stun::classify(&d.data);
        let ufrag = if kind == DatagramKind::Stun {
            super::stun::local_ufrag(&d.data)
        } else {
            None
        };
        let s = &self.stats;
        let mut r = self.lock();
        let routed = r.table.route(kind, ufrag, d.from);
        if let Err(why) = routed {
            tracing::trace!(from = %d.from, ?kind, ?why, data = ?&d.data[..d.data.len().min(64)], "datagram dropped");
        }
        let mut delivered = false;
        let counter = match routed {
            Ok(peer) => match r.queues.get(&peer).map(|q| q.try_send(d).is_ok()) {
                Some(true) => {
                    delivered = true;
                    &s.delivered
                }
                Some(false) | None => &s.queue_full,
            },
            Err(Refusal::UnknownUfrag) => &s.unknown_ufrag,
            Err(Refusal::UnknownAddr) => &s.unknown_addr,
            Err(Refusal::Unvalidated) => &s.unvalidated,
            Err(Refusal::NotWebrtc) => &s.not_webrtc,
        };
        drop(r);
        counter.fetch_add(1, Ordering::Relaxed);
        delivered
    }

    pub fn snapshot(&self) -> TransportStats {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            sessions: self.lock().table.sessions(),
            delivered: get(&s.delivered),
            unknown_ufrag: get(&s.unknown_ufrag),
            unknown_addr: get(&s.unknown_addr),
            unvalidated: get(&s.unvalidated),
            not_webrtc: get(&s.not_webrtc),
            queue_full: get(&s.queue_full),
            rtp_received: get(&s.rtp_received),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DatagramKind::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], port))
    }

    #[test]
    fn stun_requests_find_their_session_by_username() {
        let mut t = Table::default();
        t.register(1, "aaaa");
        t.register(2, "bbbb");
        assert_eq!(t.route(Stun, Some(b"bbbb"), addr(5000)), Ok(2));
        assert_eq!(t.route(Stun, Some(b"aaaa"), addr(5001)), Ok(1));
        assert_eq!(
            t.route(Stun, Some(b"cccc"), addr(5000)),
            Err(Refusal::UnknownUfrag)
        );
        // A response (no username) goes where that address last spoke STUN.
        assert_eq!(t.route(Stun, None, addr(5000)), Ok(2));
        assert_eq!(t.route(Stun, None, addr(5999)), Err(Refusal::UnknownAddr));
    }

    #[test]
    fn media_only_from_the_validated_address() {
        let mut t = Table::default();
        t.register(1, "aaaa");
        t.learn_stun(1, addr(5000));
        // Before ICE selects a pair nothing but STUN is accepted, even from a known address.
        assert_eq!(t.route(Media, None, addr(5000)), Err(Refusal::Unvalidated));
        assert_eq!(t.route(Dtls, None, addr(5000)), Err(Refusal::Unvalidated));
        t.validate(1, addr(5000));
        assert_eq!(t.route(Media, None, addr(5000)), Ok(1));
        assert_eq!(t.route(Dtls, None, addr(5000)), Ok(1));
        // Another address, even one of the session's STUN addresses, is refused.
        t.learn_stun(1, addr(5001));
        assert_eq!(t.route(Media, None, addr(5001)), Err(Refusal::Unvalidated));
        // Once it passes ICE too, the peer may use either pair.
        t.validate(1, addr(5001));
        assert_eq!(t.route(Media, None, addr(5000)), Ok(1));
        assert_eq!(t.route(Media, None, addr(5001)), Ok(1));
        assert_eq!(t.route(Other, None, addr(5001)), Err(Refusal::NotWebrtc));
    }

    #[test]
    fn a_renegotiated_session_takes_over_the_address_and_keeps_it() {
        let mut t = Table::default();
        t.register(1, "old");
        t.validate(1, addr(5000));
        t.register(2, "new");
        assert_eq!(t.route(Stun, Some(b"new"), addr(5000)), Ok(2));
        assert_eq!(t.route(Stun, None, addr(5000)), Ok(2));
        t.validate(2, addr(5000));
        assert_eq!(t.route(Media, None, addr(5000)), Ok(2));
        // The old connection closing does not take the address from the new one.
        t.unregister(1);
        assert_eq!(t.route(Media, None, addr(5000)), Ok(2));
        assert_eq!(
            t.route(Stun, Some(b"old"), addr(5000)),
            Err(Refusal::UnknownUfrag)
        );
        t.unregister(2);
        assert_eq!(t.route(Media, None, addr(5000)), Err(Refusal::Unvalidated));
        assert_eq!(t.sessions(), 0);
    }

    #[test]
    fn stun_addresses_per_session_are_bounded() {
        let mut t = Table::default();
        t.register(1, "aaaa");
        for port in 0..1000 {
            let _ = t.route(Stun, Some(b"aaaa"), addr(10000 + port));
        }
        assert_eq!(t.stun_by_addr.len(), MAX_STUN_ADDRS_PER_SESSION);
        for port in 0..1000 {
            t.validate(1, addr(10000 + port));
        }
        assert_eq!(t.media_by_addr.len(), MAX_STUN_ADDRS_PER_SESSION);
        // An unregistered (gone) session learns nothing and cannot be validated.
        t.learn_stun(9, addr(1));
        t.validate(9, addr(1));
        assert_eq!(t.route(Media, None, addr(1)), Err(Refusal::Unvalidated));
    }
}

//! What one client may hold at once, and how often each limit was reached. A session holds a
//! [`Slot`] of its client address for as long as it lives (the slot is freed when the session
//! is dropped, however it ends); [`Counters`] are shown by `GET /healthz`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How often each limit refused something since start.
#[derive(Debug, Default)]
pub struct Counters {
    pub unauthorized: AtomicU64,
    pub forbidden: AtomicU64,
    pub rooms: AtomicU64,
    pub sessions_per_address: AtomicU64,
    pub participants: AtomicU64,
    pub viewers: AtomicU64,
    pub candidates: AtomicU64,
    pub video_pixels: AtomicU64,
    pub http_header_timeouts: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Each counter by its name (`/healthz`'s `refused`, the metrics' `reason` label).
    pub fn entries(&self) -> [(&'static str, u64); 9] {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        [
            ("unauthorized", g(&self.unauthorized)),
            ("forbidden", g(&self.forbidden)),
            ("rooms", g(&self.rooms)),
            ("sessions_per_address", g(&self.sessions_per_address)),
            ("participants", g(&self.participants)),
            ("viewers", g(&self.viewers)),
            ("candidates", g(&self.candidates)),
            ("video_pixels", g(&self.video_pixels)),
            ("http_header_timeouts", g(&self.http_header_timeouts)),
        ]
    }

    pub fn snapshot(&self) -> serde_json::Value {
        self.entries()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// Sessions per client address.
#[derive(Debug)]
pub struct AddressSlots {
    /// 0: no limit.
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One session's share of its address; dropping it gives the share back.
#[derive(Debug)]
pub struct Slot {
    table: Arc<AddressSlots>,
    addr: IpAddr,
}

impl AddressSlots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        // Only counts change under this lock: a poisoned map is still consistent.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for `addr`, or `None` when it already holds `max` (IPv4-mapped IPv6 counts as
    /// its IPv4 address).
    pub fn take(self: &Arc<Self>, addr: IpAddr) -> Option<Slot> {
        let addr = addr.to_canonical();
        let mut held = self.held();
        let n = held.entry(addr).or_insert(0);
        if self.max != 0 && *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            table: Arc::clone(self),
            addr,
        })
    }

    pub fn held_by(&self, addr: IpAddr) -> usize {
        self.held().get(&addr.to_canonical()).copied().unwrap_or(0)
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self.table.held();
        if let Some(n) = held.get_mut(&self.addr) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.addr);
            }
        }
    }
}

/// Datagrams one session may send per second (a token bucket with half a second of burst, so
/// a keyframe's packets arriving together pass): the rest are dropped before decryption.
#[derive(Debug, Clone)]
pub struct PacketBudget {
    rate: f64,
    tokens: f64,
    last: std::time::Instant,
    /// Datagrams dropped so far.
    pub dropped: u64,
}

impl PacketBudget {
    pub fn new(per_second: u32, now: std::time::Instant) -> Self {
        let rate = f64::from(per_second.max(1));
        Self {
            rate,
            tokens: rate / 2.0,
            last: now,
            dropped: 0,
        }
    }

    /// Whether a datagram arriving at `now` is within the budget.
    pub fn allow(&mut self, now: std::time::Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate / 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

/// Why a remote ICE candidate is refused: no port, or an address nothing can be sent to.
pub fn candidate_problem(candidate: &str) -> Option<String> {
    // candidate:<foundation> <component> <transport> <priority> <address> <port> typ <type> …
    let body = candidate.strip_prefix("candidate:").unwrap_or(candidate);
    let fields: Vec<&str> = body.split_ascii_whitespace().collect();
    if fields.len() < 8 || fields[6] != "typ" {
        return Some("malformed candidate".into());
    }
    let port: u32 = match fields[5].parse() {
        Ok(p) => p,
        Err(_) => return Some(format!("candidate port {:?} is not a number", fields[5])),
    };
    if port == 0 || port > 65_535 {
        return Some(format!("candidate port {port} is not usable"));
    }
    let addr = fields[4];
    if addr.ends_with(".local") {
        return None; // mDNS: resolved (or not) by the ICE agent.
    }
    let ip: IpAddr = match addr.parse() {
        Ok(ip) => ip,
        Err(_) => return Some("candidate address is neither an IP address nor .local".into()),
    };
    let ip = ip.to_canonical();
    let bad = ip.is_unspecified()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    bad.then(|| format!("candidate address {ip} is not a unicast address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_back_when_dropped() {
        let t = AddressSlots::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let s1 = t.take(a).unwrap();
        let s2 = t.take(mapped).unwrap();
        assert!(t.take(a).is_none(), "a third session from the same address");
        assert!(
            t.take("10.0.0.2".parse().unwrap()).is_some(),
            "another address"
        );
        drop(s1);
        assert_eq!(t.held_by(a), 1);
        let s3 = t.take(a).unwrap();
        drop((s2, s3));
        assert_eq!(t.held_by(a), 0);
        let unlimited = AddressSlots::new(0);
        let many: Vec<Slot> = (0..100).filter_map(|_| unlimited.take(a)).collect();
        assert_eq!(many.len(), 100);
    }

    #[test]
    fn a_session_gets_its_packet_rate_and_a_half_second_burst() {
        let t0 = std::time::Instant::now();
        let mut b = PacketBudget::new(1000, t0);
        let burst = (0..2000).filter(|_| b.allow(t0)).count();
        assert_eq!(burst, 500);
        assert_eq!(b.dropped, 1500);
        // Then the rate: 100 ms later, 100 more.
        let t1 = t0 + std::time::Duration::from_millis(100);
        let more = (0..1000).filter(|_| b.allow(t1)).count();
        assert_eq!(more, 100);
        // A steady 900/s never loses one.
        let mut b = PacketBudget::new(1000, t0);
        let lost = (0..9000u64)
            .filter(|i| !b.allow(t0 + std::time::Duration::from_micros(i * 1111)))
            .count();
        assert_eq!(lost, 0);
    }

    #[test]
    fn candidates_need_a_port_and_a_unicast_address() {
        let ok = "candidate:1 1 udp 2122260223 192.168.1.5 54321 typ host generation 0";
        assert_eq!(candidate_problem(ok), None);
        assert_eq!(
            candidate_problem("candidate:1 1 udp 1 abc.local 5000 typ host"),
            None
        );
        for (bad, why) in [
            ("candidate:1 1 udp 1 192.168.1.5 0 typ host", "port 0"),
            ("candidate:1 1 udp 1 0.0.0.0 5000 typ host", "0.0.0.0"),
            ("candidate:1 1 udp 1 :: 5000 typ host", "::"),
            ("candidate:1 1 udp 1 224.0.0.1 5000 typ host", "224.0.0.1"),
            (
                "candidate:1 1 udp 1 255.255.255.255 5000 typ host",
                "255.255.255.255",
            ),
            ("candidate:1 1 udp 1 ff02::1 5000 typ host", "ff02::1"),
            ("candidate:1 1 udp 1 1.2.3.4 70000 typ host", "70000"),
            ("candidate:1 1 udp 1 1.2.3.4 x typ host", "\"x\""),
            ("candidate:1 1 udp", "malformed"),
        ] {
            let p = candidate_problem(bad).unwrap_or_default();
            assert!(p.contains(why), "{bad}: {p}");
        }
    }
}

//! The UDP port pool: one port per peer connection, handed out round-robin so a port just
//! released (whose socket may still be closing) is the last to be reused. A lease returns its
//! port on drop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct PortPool {
    min: u16,
    max: u16,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    next: u16,
    in_use: HashSet<u16>,
}

#[derive(Debug)]
pub struct PortLease {
    port: u16,
    pool: Arc<PortPool>,
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.lock().in_use.remove(&self.port);
    }
}

impl PortPool {
    pub fn new(min: u16, max: u16) -> Arc<Self> {
        Arc::new(Self {
            min,
            max: max.max(min),
            state: Mutex::new(PoolState {
                next: min,
                in_use: HashSet::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding this lock cannot leave the set inconsistent (single inserts
        // and removes), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next free port, or `None` when every port is leased.
    pub fn lease(self: &Arc<Self>) -> Option<PortLease> {
        let mut s = self.lock();
        let span = (self.max - self.min) as u32 + 1;
        for _ in 0..span {
            let port = s.next;
            s.next = if port >= self.max { self.min } else { port + 1 };
            if s.in_use.insert(port) {
                return Some(PortLease {
                    port,
                    pool: Arc::clone(self),
                });
            }
        }
        None
    }

    pub fn in_use(&self) -> usize {
        self.lock().in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_round_robin_and_returns_on_drop() {
        let pool = PortPool::new(100, 102);
        let a = pool.lease().unwrap();
        let b = pool.lease().unwrap();
        let c = pool.lease().unwrap();
        assert_eq!((a.port(), b.port(), c.port()), (100, 101, 102));
        assert!(pool.lease().is_none(), "exhausted");
        drop(b);
        assert_eq!(pool.in_use(), 2);
        assert_eq!(pool.lease().unwrap().port(), 101);
        drop(a);
        let d = pool.lease().unwrap();
        assert_eq!(d.port(), 100);
    }
}

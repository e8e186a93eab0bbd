//! Caps on open client connections, in total and per client IP, checked at accept: past a cap
//! the connection is closed at once and counted, so a few clients cannot hold every file
//! descriptor the process has.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pingora_limits::inflight::{Guard, Inflight};

use crate::layers::admission::Refusal;

/// The per-IP count is pingora's `Inflight`: a fixed-size count-min sketch (4 × 8192 counters,
/// 256 KiB) whose guard gives the place back on drop. Memory and accept cost do not grow with
/// the number of client addresses, and no lock is shared by every accept. A sketch can only
/// over-count: an address that shares all four counters with busy ones may be refused early,
/// which with the per-IP cap far above one client's need (default 1024) and at most
/// `max_connections` open does not happen in practice.
pub struct ConnCaps {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Inflight,
}

impl std::fmt::Debug for ConnCaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnCaps")
            .field("max_total", &self.max_total)
            .field("max_per_ip", &self.max_per_ip)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

/// Held by an admitted connection; gives its place back when dropped.
pub struct Admitted {
    caps: Arc<ConnCaps>,
    _ip: Guard,
}

impl std::fmt::Debug for Admitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admitted")
    }
}

impl ConnCaps {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Inflight::new(),
        })
    }

    /// A place for one more connection from `ip`, or the cap it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let total = self.total.fetch_add(1, Ordering::AcqRel);
        if total >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Connections);
        }
        let (guard, n) = self.per_ip.incr(ip, 1);
        if usize::try_from(n).unwrap_or(usize::MAX) > self.max_per_ip {
            drop(guard);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::ConnectionsPerIp);
        }
        Ok(Admitted {
            caps: self.clone(),
            _ip: guard,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.caps.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hold_and_places_come_back() {
        let caps = ConnCaps::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = caps.admit(a).unwrap();
        let _a2 = caps.admit(a).unwrap();
        assert_eq!(caps.admit(a).unwrap_err(), Refusal::ConnectionsPerIp);
        let _b1 = caps.admit(b).unwrap();
        assert_eq!(caps.admit(b).unwrap_err(), Refusal::Connections);
        drop(a1);
        assert_eq!(caps.open(), 2);
        let _a3 = caps.admit(a).unwrap();
        assert_eq!(caps.open(), 3);
        assert_eq!(caps.admit(a).unwrap_err(), Refusal::Connections);
    }
}

//! Caps on open client connections, in total and per client IP, checked at accept: past a cap
//! the connection is closed at once and counted, so a few clients cannot hold every file
//! descriptor the process has.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::layers::admission::Refusal;

#[derive(Debug)]
pub struct ConnCaps {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held by an admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub struct Admitted {
    caps: Arc<ConnCaps>,
    ip: IpAddr,
}

impl ConnCaps {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more connection from `ip`, or the cap it would break.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refusal> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(Refusal::Connections);
        }
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(Refusal::ConnectionsPerIp);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Admitted {
            caps: self.clone(),
            ip,
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_ip = self
            .caps
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.caps.total.fetch_sub(1, Ordering::Relaxed);
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
        assert_eq!(caps.per_ip.lock().unwrap().len(), 2);
    }
}

//! Connection caps: at most `max_total` open streams, at most `max_per_ip` per address.
//!
//! An open stream holds a [`Slot`]; dropping the slot gives it back. Counting and checking
//! happen under one lock, so concurrent opens never over-admit, and an address's entry is
//! removed when its last slot goes, so memory follows the open streams, not every address
//! ever seen. The lock is taken once per stream open and once per close, never per event.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// Below this capacity the per-address map is never shrunk.
const SHRINK_MIN_CAPACITY: usize = 1024;

/// Global and per-address connection caps, shared as `Arc<Caps>`.
///
/// Addresses are counted in canonical form: an IPv4-mapped IPv6 address counts as its
/// IPv4 address.
pub struct Caps {
    /// Read under `per_ip`'s lock; a reload may change them ([`Caps::set_limits`]).
    max_total: AtomicU64,
    max_per_ip: AtomicU64,
    /// Slots held per address; no entry at zero.
    per_ip: Mutex<HashMap<IpAddr, u64>>,
    /// Slots held in all. Written only under `per_ip`'s lock, read without it.
    total: AtomicU64,
}

impl Caps {
    /// Caps of `max_total` slots in all and `max_per_ip` per address. A cap of 0 admits
    /// nothing.
    pub fn new(max_total: u64, max_per_ip: u64) -> Arc<Self> {
        Arc::new(Self {
            max_total: AtomicU64::new(max_total),
            max_per_ip: AtomicU64::new(max_per_ip),
            per_ip: Mutex::new(HashMap::new()),
            total: AtomicU64::new(0),
        })
    }

    /// Takes one connection slot for `ip` if neither cap is reached. The check and the
    /// count are one step: concurrent callers never exceed a cap. When both caps are
    /// reached, the error is [`CapExceeded::Total`].
    pub fn acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, CapExceeded> {
        let ip = ip.to_canonical();
        let mut per_ip = self.per_ip.lock();
        let total = self.total.load(Ordering::Relaxed);
        let max_total = self.max_total();
        if total >= max_total {
            return Err(CapExceeded::Total { max: max_total });
        }
        let held = per_ip.get(&ip).copied().unwrap_or(0);
        let max_per_ip = self.max_per_ip();
        if held >= max_per_ip {
            return Err(CapExceeded::PerIp { max: max_per_ip });
        }
        per_ip.insert(ip, held + 1);
        self.total.store(total + 1, Ordering::Relaxed);
        drop(per_ip);
        Ok(Slot {
            caps: Arc::clone(self),
            ip,
        })
    }

    /// Slots held now.
    pub fn open(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Addresses holding at least one slot.
    pub fn tracked_ips(&self) -> usize {
        self.per_ip.lock().len()
    }

    /// Slots held now by `ip`.
    pub fn open_for(&self, ip: IpAddr) -> u64 {
        self.per_ip
            .lock()
            .get(&ip.to_canonical())
            .copied()
            .unwrap_or(0)
    }

    /// The cap on slots in all.
    pub fn max_total(&self) -> u64 {
        self.max_total.load(Ordering::Relaxed)
    }

    /// The cap on slots per address.
    pub fn max_per_ip(&self) -> u64 {
        self.max_per_ip.load(Ordering::Relaxed)
    }

    /// New caps for the slots taken from now on; slots held over them stay held.
    pub fn set_limits(&self, max_total: u64, max_per_ip: u64) {
        // Under the lock, so an acquire sees both old or both new.
        let _per_ip = self.per_ip.lock();
        self.max_total.store(max_total, Ordering::Relaxed);
        self.max_per_ip.store(max_per_ip, Ordering::Relaxed);
    }

    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock();
        if let Entry::Occupied(mut held) = per_ip.entry(ip) {
            if *held.get() <= 1 {
                held.remove();
            } else {
                *held.get_mut() -= 1;
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        } else {
            debug_assert!(false, "released a slot for {ip} that holds none");
        }
        // Give memory back after a burst of addresses has gone; halving the capacity
        // only after it is four times the need keeps this amortised O(1).
        let (len, capacity) = (per_ip.len(), per_ip.capacity());
        if capacity > SHRINK_MIN_CAPACITY && len < capacity / 4 {
            per_ip.shrink_to(len * 2);
        }
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caps")
            .field("max_total", &self.max_total())
            .field("max_per_ip", &self.max_per_ip())
            .field("open", &self.open())
            .field("tracked_ips", &self.tracked_ips())
            .finish()
    }
}

/// One open connection's hold on [`Caps`]. Dropping it releases the slot, exactly once.
#[must_use = "the slot is released as soon as it is dropped"]
pub struct Slot {
    caps: Arc<Caps>,
    ip: IpAddr,
}

impl Slot {
    /// The address (canonical) this slot is counted under.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.caps.release(self.ip);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot").field("ip", &self.ip).finish()
    }
}

/// Why [`Caps::acquire`] refused a slot.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapExceeded {
    /// The gateway holds its maximum number of connections.
    #[error("the gateway is at its connection limit ({max} connections)")]
    Total {
        /// The cap that was reached.
        max: u64,
    },
    /// The client's address holds its maximum number of connections.
    #[error("too many connections from this address (limit {max})")]
    PerIp {
        /// The cap that was reached.
        max: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::sync::Barrier;
    use std::thread;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn per_ip_cap_is_enforced() {
        let caps = Caps::new(10, 2);
        let a = ip("192.0.2.1");
        let s1 = caps.acquire(a).unwrap();
        let s2 = caps.acquire(a).unwrap();
        assert_eq!(caps.acquire(a).unwrap_err(), CapExceeded::PerIp { max: 2 });
        // Another address is not affected; the mapped form is the same address.
        let b = caps.acquire(ip("192.0.2.2")).unwrap();
        assert_eq!(
            caps.acquire(ip("::ffff:192.0.2.1")).unwrap_err(),
            CapExceeded::PerIp { max: 2 }
        );
        assert_eq!(
            (caps.open(), caps.open_for(a), caps.tracked_ips()),
            (3, 2, 2)
        );
        drop((s1, s2, b));
    }

    #[test]
    fn total_cap_is_enforced() {
        let caps = Caps::new(3, 2);
        let slots: Vec<Slot> = (1..=3)
            .map(|n| {
                caps.acquire(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)))
                    .unwrap()
            })
            .collect();
        let err = caps.acquire(ip("192.0.2.9")).unwrap_err();
        assert_eq!(err, CapExceeded::Total { max: 3 });
        assert_eq!(
            err.to_string(),
            "the gateway is at its connection limit (3 connections)"
        );
        assert_eq!(caps.open(), 3);
        drop(slots);
        assert!(caps.acquire(ip("192.0.2.9")).is_ok());
    }

    #[test]
    fn new_limits_apply_to_the_next_acquire_and_keep_held_slots() {
        let caps = Caps::new(10, 2);
        let a = ip("192.0.2.1");
        let held = [caps.acquire(a).unwrap(), caps.acquire(a).unwrap()];
        caps.set_limits(10, 1);
        assert_eq!(caps.acquire(a).unwrap_err(), CapExceeded::PerIp { max: 1 });
        assert_eq!(caps.open_for(a), 2, "slots over the new cap stay held");
        caps.set_limits(10, 3);
        let third = caps.acquire(a).unwrap();
        caps.set_limits(3, 3);
        assert_eq!(
            caps.acquire(ip("192.0.2.2")).unwrap_err(),
            CapExceeded::Total { max: 3 }
        );
        drop((held, third));
    }

    #[test]
    fn zero_caps_admit_nothing() {
        assert_eq!(
            Caps::new(0, 5).acquire(ip("::1")).unwrap_err(),
            CapExceeded::Total { max: 0 }
        );
        assert_eq!(
            Caps::new(5, 0).acquire(ip("::1")).unwrap_err(),
            CapExceeded::PerIp { max: 0 }
        );
    }

    #[test]
    fn drop_releases_and_removes_empty_entries() {
        let caps = Caps::new(10, 10);
        let a = ip("2001:db8::1");
        let s1 = caps.acquire(a).unwrap();
        let s2 = caps.acquire(a).unwrap();
        assert_eq!(s1.ip(), a);
        drop(s1);
        assert_eq!(
            (caps.open(), caps.open_for(a), caps.tracked_ips()),
            (1, 1, 1)
        );
        drop(s2);
        assert_eq!(
            (caps.open(), caps.open_for(a), caps.tracked_ips()),
            (0, 0, 0)
        );
        // Refused attempts leave nothing behind.
        let caps = Caps::new(10, 0);
        assert!(caps.acquire(a).is_err());
        assert_eq!(caps.tracked_ips(), 0);
    }

    #[test]
    fn slot_is_released_on_panic_unwind() {
        let caps = Caps::new(1, 1);
        let inner = Arc::clone(&caps);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _slot = inner.acquire(ip("192.0.2.1")).unwrap();
            panic!("stream handler failed");
        }));
        assert!(result.is_err());
        assert_eq!((caps.open(), caps.tracked_ips()), (0, 0));
    }

    #[test]
    fn map_shrinks_after_many_addresses_leave() {
        let caps = Caps::new(u64::MAX, 1);
        let slots: Vec<Slot> = (0..50_000u32)
            .map(|n| caps.acquire(IpAddr::V4(Ipv4Addr::from(n))).unwrap())
            .collect();
        let peak = caps.per_ip.lock().capacity();
        drop(slots);
        assert_eq!((caps.open(), caps.tracked_ips()), (0, 0));
        let capacity = caps.per_ip.lock().capacity();
        assert!(capacity <= SHRINK_MIN_CAPACITY, "{capacity} of peak {peak}");
    }

    #[test]
    fn concurrent_acquire_never_exceeds_caps() {
        const THREADS: usize = 16;
        const ROUNDS: usize = 5_000;
        const MAX_TOTAL: u64 = 24;
        const MAX_PER_IP: u64 = 3;
        let caps = Caps::new(MAX_TOTAL, MAX_PER_IP);
        let addrs: Vec<IpAddr> = (1..=12)
            .map(|n| IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)))
            .collect();
        // Counts slots held, as seen by their holders: bumped after acquire, lowered
        // before drop, so it never exceeds what `Caps` holds.
        let held_total = Arc::new(AtomicU64::new(0));
        let held_per_ip: Arc<Vec<AtomicU64>> =
            Arc::new(addrs.iter().map(|_| AtomicU64::new(0)).collect());
        let barrier = Arc::new(Barrier::new(THREADS));

        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (caps, addrs, barrier) =
                    (Arc::clone(&caps), addrs.clone(), Arc::clone(&barrier));
                let (held_total, held_per_ip) = (Arc::clone(&held_total), Arc::clone(&held_per_ip));
                thread::spawn(move || {
                    barrier.wait();
                    let (mut admitted, mut refused) = (0u64, 0u64);
                    let mut mine: Vec<(usize, Slot)> = Vec::new();
                    for round in 0..ROUNDS {
                        // Eight tries in a row on one address while holding up to five slots:
                        // the per-address cap refuses even if the threads happen to run one
                        // at a time; together they also hit the total cap.
                        let i = (t * 5 + round / 8) % addrs.len();
                        match caps.acquire(addrs[i]) {
                            Ok(slot) => {
                                admitted += 1;
                                let total = held_total.fetch_add(1, Ordering::SeqCst) + 1;
                                let per_ip = held_per_ip[i].fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(total <= MAX_TOTAL, "{total} slots held");
                                assert!(per_ip <= MAX_PER_IP, "{per_ip} slots for one address");
                                assert!(caps.open() <= MAX_TOTAL);
                                mine.push((i, slot));
                            }
                            Err(_) => refused += 1,
                        }
                        // Release in varying order.
                        if mine.len() >= 6 || (round % 7 == 0 && !mine.is_empty()) {
                            let (i, slot) = mine.swap_remove(round % mine.len());
                            held_total.fetch_sub(1, Ordering::SeqCst);
                            held_per_ip[i].fetch_sub(1, Ordering::SeqCst);
                            drop(slot);
                        }
                    }
                    for (i, slot) in mine {
                        held_total.fetch_sub(1, Ordering::SeqCst);
                        held_per_ip[i].fetch_sub(1, Ordering::SeqCst);
                        drop(slot);
                    }
                    (admitted, refused)
                })
            })
            .collect();

        let (mut admitted, mut refused) = (0, 0);
        for handle in handles {
            let (a, r) = handle.join().unwrap();
            admitted += a;
            refused += r;
        }
        assert!(
            admitted > 0 && refused > 0,
            "admitted {admitted}, refused {refused}"
        );
        assert_eq!((caps.open(), caps.tracked_ips()), (0, 0));
    }
}

//! A budget of bytes shared by threads: each takes a lease on the bytes it is about to hold and
//! waits until they fit beside the leases held now. A lease alone always fits, however large, so
//! nothing waits for ever; what the budget bounds is what runs at the same time.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Bytes leased out of a limit.
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    used: Mutex<Held>,
    freed: Condvar,
}

/// What the budget's lock guards: the bytes leased, and the threads waiting for some to be freed
/// (a lease given back wakes them only when there are some: a wake is a system call, paid by
/// every job twice otherwise).
#[derive(Debug, Default)]
struct Held {
    bytes: u64,
    waiting: usize,
}

/// Bytes held until dropped.
#[derive(Debug)]
pub struct Lease<'a> {
    budget: &'a ByteBudget,
    bytes: u64,
}

impl ByteBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            used: Mutex::new(Held::default()),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` fit beside the leases held (or none is held) and takes them.
    pub fn lease(&self, bytes: u64) -> Lease<'_> {
        self.lease_unless(bytes, || false).expect("never given up")
    }

    /// [`Self::lease`], giving up (`None`) once `give_up` says so; it is asked every 50 ms while
    /// waiting.
    pub fn lease_unless(&self, bytes: u64, give_up: impl Fn() -> bool) -> Option<Lease<'_>> {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while used.bytes > 0 && used.bytes.saturating_add(bytes) > self.limit {
            if give_up() {
                return None;
            }
            used.waiting += 1;
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
            used.waiting -= 1;
        }
        used.bytes = used.bytes.saturating_add(bytes);
        Some(Lease { budget: self, bytes })
    }

    /// Bytes leased now.
    pub fn used(&self) -> u64 {
        self.used.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
        used.bytes = used.bytes.saturating_sub(self.bytes);
        if used.waiting > 0 {
            self.budget.freed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_lease_waits_until_its_bytes_fit_beside_those_held_and_a_lone_lease_always_fits() {
        let budget = Arc::new(ByteBudget::new(100));
        let big = budget.lease(500); // larger than the budget, but alone: taken
        let (started, waiting) = std::sync::mpsc::channel();
        let other = budget.clone();
        let t = std::thread::spawn(move || {
            let _lease = other.lease(10);
            started.send(()).unwrap();
        });
        assert!(
            waiting.recv_timeout(Duration::from_millis(100)).is_err(),
            "waits while the big lease is held"
        );
        drop(big);
        assert!(
            waiting.recv_timeout(Duration::from_secs(5)).is_ok(),
            "taken once it is returned"
        );
        t.join().unwrap();
        let a = budget.lease(60);
        let b = budget.lease(40); // fits beside
        assert_eq!(budget.used(), 100);
        drop((a, b));
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_waiting_lease_gives_up_when_asked() {
        let budget = Arc::new(ByteBudget::new(100));
        let _held = budget.lease(90);
        let stop = Arc::new(AtomicBool::new(false));
        let (b, s) = (budget.clone(), stop.clone());
        let t = std::thread::spawn(move || b.lease_unless(20, || s.load(Ordering::SeqCst)).is_none());
        std::thread::sleep(Duration::from_millis(120));
        stop.store(true, Ordering::SeqCst);
        assert!(t.join().unwrap(), "gave up");
        assert_eq!(budget.used(), 90);
    }
}

//! The bound on the bytes of all bodies buffered for plugins at once
//! (`max_buffered_body_bytes`). One body is bounded by
//! `max_request_body_bytes`, but 10,000 clients each trickling 8 MiB - 1
//! bytes would hold 80 GiB; past the budget a body is refused (503), as
//! from a server out of room, and what was buffered is released when its
//! request ends.
//!
//! nginx keeps 8-16 KiB of a body in memory and spills the rest to a
//! temporary file; extplug sends a body to the runner in one frame, so the
//! whole body is in memory when a plugin reads it: a bound on memory, not
//! a file, is what holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The process's budget of buffered body bytes, shared by every proxy a
/// reload builds (the configured maximum changes with a reload; what is
/// held stays counted).
#[derive(Debug)]
pub struct BodyBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl BodyBudget {
    /// A budget of `max` bytes.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        })
    }

    /// Sets the maximum (a reload); bodies held beyond it keep their bytes.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// The maximum.
    pub fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    /// The bytes held now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes, if the budget has them.
    fn take(&self, n: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The bytes of one body's buffer, counted in the budget until dropped.
#[derive(Debug)]
pub(crate) struct Charge {
    budget: Arc<BodyBudget>,
    held: usize,
}

impl Charge {
    /// Nothing held yet.
    pub(crate) fn new(budget: Arc<BodyBudget>) -> Self {
        Charge { budget, held: 0 }
    }

    /// Holds `total` bytes in all (more than now); false, holding what it
    /// held, when the budget does not have them.
    pub(crate) fn grow_to(&mut self, total: usize) -> bool {
        if total <= self.held {
            return true;
        }
        if !self.budget.take(total - self.held) {
            return false;
        }
        self.held = total;
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_bounded_and_given_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let mut a = Charge::new(budget.clone());
        assert!(a.grow_to(60));
        assert!(a.grow_to(30), "less than held: nothing to take");
        let mut b = Charge::new(budget.clone());
        assert!(!b.grow_to(41));
        assert!(b.grow_to(40));
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert!(b.grow_to(100));
        budget.set_max(10);
        let mut c = Charge::new(budget.clone());
        assert!(!c.grow_to(1), "over a lowered maximum");
        drop((b, c));
        assert_eq!(budget.used(), 0);
    }
}

//! A memory budget: a number of bytes that every holder of transfer memory
//! acquires before it allocates, and gives back when the memory is freed.
//!
//! Why: a daemon (or a mount) serving many transfers at once held memory
//! per transfer (HTTP/2 windows, chunk queues, 16 MiB direct-I/O blocks)
//! with nothing bounding the sum: 50 imports of 64 MiB at once took the
//! daemon to 1.46 GB of RSS, 50 exports to 2.34 GB. In a pod with a memory
//! limit that is an OOM kill. With one budget, a transfer that would pass
//! it waits for another to give memory back instead of allocating.
//!
//! - [`MemoryBudget::acquire`] waits, first come first served (a large
//!   request at the head is not overtaken by small ones behind it), and a
//!   request larger than the whole budget waits for the whole budget, so
//!   none waits for ever;
//! - [`MemoryBudget::acquire_moving`] waits as long as the budget turns
//!   over, and fails only when nothing is given back (and no holder
//!   reports progress, [`MemoryBudget::progressed`]) for a deadline;
//! - [`MemoryBudget::try_acquire`] never waits: for memory that only makes
//!   a transfer faster (larger blocks), taken when there is room;
//! - a [`Lease`] gives its bytes back when dropped, whatever path drops it
//!   (a finished transfer, an error, a client gone), and
//!   [`Lease::attach`] ties a lease to a `Bytes` so the bytes are given
//!   back when the last slice of it is dropped;
//! - [`MemoryBudget::within`] makes a budget out of a lease: a transfer's
//!   own share, which its parts (a queue, read-ahead) wait on without
//!   touching the shared budget, so they never wait on other transfers;
//! - [`MemoryBudget::on_wait`] lets a holder of idle memory (spare blocks
//!   kept for reuse) give it back when somebody has to wait.
//!
//! Bytes are counted in KiB.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes per permit.
const UNIT: u64 = 1 << 10;

/// A budget of bytes; clones share it.
#[derive(Clone)]
pub struct MemoryBudget {
    inner: Arc<Inner>,
}

struct Inner {
    permits: Arc<Semaphore>,
    units: u32,
    /// Acquires waiting now.
    waiting: AtomicUsize,
    /// Units given back so far, plus progress reported by holders: a
    /// waiter that sees this move knows the budget is turning over, not
    /// stuck.
    turnover: AtomicU64,
    /// For a budget made of a lease: that lease, given back with the budget
    /// (which every lease taken from it keeps alive).
    _parent: Option<Lease>,
    /// Called when an acquire has to wait (see `on_wait`).
    on_wait: Mutex<Vec<Box<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("capacity", &self.capacity())
            .field("held", &self.held())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// A wait for the budget during which nothing was given back to it for
/// the whole deadline: its holders are stuck, not merely busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("no memory was given back to the budget for {0:?}")]
pub struct Stuck(pub Duration);

impl MemoryBudget {
    /// A budget of `bytes` (rounded up to a KiB; at least one KiB, at most
    /// 4 TiB).
    pub fn new(bytes: u64) -> Self {
        Self::with_parent(units_of(bytes), None)
    }

    /// A budget of what `lease` holds, which it keeps until the budget and
    /// every lease taken from it are gone.
    pub fn within(lease: Lease) -> Self {
        let units = u32::try_from(lease.units()).unwrap_or(u32::MAX).max(1);
        Self::with_parent(units, Some(lease))
    }

    fn with_parent(units: u32, parent: Option<Lease>) -> Self {
        Self {
            inner: Arc::new(Inner {
                permits: Arc::new(Semaphore::new(units as usize)),
                units,
                waiting: AtomicUsize::new(0),
                turnover: AtomicU64::new(0),
                _parent: parent,
                on_wait: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Bytes in the budget.
    pub fn capacity(&self) -> u64 {
        u64::from(self.inner.units) * UNIT
    }

    /// Bytes leased out now.
    pub fn held(&self) -> u64 {
        let free = self.inner.permits.available_permits() as u64;
        u64::from(self.inner.units).saturating_sub(free) * UNIT
    }

    /// Acquires waiting for bytes now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::Relaxed)
    }

    /// Has `reclaim` called whenever an acquire has to wait: a holder of
    /// memory it only keeps for reuse gives it back then, so nobody waits
    /// on idle memory. `reclaim` must not acquire from this budget.
    pub fn on_wait(&self, reclaim: impl Fn() + Send + Sync + 'static) {
        lock(&self.inner.on_wait).push(Box::new(reclaim));
    }

    /// `bytes` (rounded up to a KiB, at most the whole budget), once they
    /// are free. Waiters are served in order.
    pub async fn acquire(&self, bytes: u64) -> Lease {
        let units = self.clamped(bytes);
        if units == 0 {
            return Lease::empty();
        }
        if let Some(lease) = self.try_units(units) {
            return lease;
        }
        self.inner.waiting.fetch_add(1, Ordering::Relaxed);
        for reclaim in lock(&self.inner.on_wait).iter() {
            reclaim();
        }
        // Counted down however the wait ends (a dropped future included).
        let _waiting = Waiting(&self.inner.waiting);
        match self.inner.permits.clone().acquire_many_owned(units).await {
            Ok(permit) => self.lease(permit),
            // The semaphore is never closed; if it were, nothing would be
            // held back by a budget that no longer exists.
            Err(_) => Lease::empty(),
        }
    }

    /// Tells waiters with a deadline ([`MemoryBudget::acquire_moving`])
    /// that a holder made progress: what it holds will come back, though
    /// it may hold it long (a large import).
    pub fn progressed(&self) {
        self.inner.turnover.fetch_add(1, Ordering::Relaxed);
    }

    /// `acquire`, with a no-progress deadline: fails when nothing at all is
    /// given back to the budget for `within`, and no holder reports
    /// progress (its holders are stuck), never merely because the wait is
    /// long while the budget turns over.
    pub async fn acquire_moving(&self, bytes: u64, within: Duration) -> Result<Lease, Stuck> {
        let acquire = self.acquire(bytes);
        tokio::pin!(acquire);
        let mut seen = self.inner.turnover.load(Ordering::Relaxed);
        loop {
            if let Ok(lease) = tokio::time::timeout(within, &mut acquire).await {
                return Ok(lease);
            }
            let now = self.inner.turnover.load(Ordering::Relaxed);
            if now == seen {
                return Err(Stuck(within));
            }
            seen = now;
        }
    }

    /// `bytes` if they are free now and nobody waits before us.
    pub fn try_acquire(&self, bytes: u64) -> Option<Lease> {
        match self.clamped(bytes) {
            0 => Some(Lease::empty()),
            units => self.try_units(units),
        }
    }

    fn try_units(&self, units: u32) -> Option<Lease> {
        self.inner
            .permits
            .clone()
            .try_acquire_many_owned(units)
            .ok()
            .map(|permit| self.lease(permit))
    }

    fn lease(&self, permit: OwnedSemaphorePermit) -> Lease {
        Lease {
            parts: vec![Part {
                permit,
                budget: self.inner.clone(),
            }],
        }
    }

    fn clamped(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.inner.units)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn units_of(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT))
        .unwrap_or(u32::MAX)
        .max(1)
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Bytes of a budget, given back when dropped.
#[derive(Default)]
pub struct Lease {
    parts: Vec<Part>,
}

/// Permits of one budget, and that budget (kept alive: a budget made of a
/// lease keeps its own lease as long as any of its leases lives).
struct Part {
    permit: OwnedSemaphorePermit,
    budget: Arc<Inner>,
}

impl Drop for Part {
    fn drop(&mut self) {
        self.budget
            .turnover
            .fetch_add(self.permit.num_permits() as u64, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lease({} bytes)", self.bytes())
    }
}

impl Lease {
    /// A lease of nothing.
    pub fn empty() -> Self {
        Self::default()
    }

    fn units(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| p.permit.num_permits() as u64)
            .sum()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.units() * UNIT
    }

    /// Whether every byte this lease holds (and it holds some) is of
    /// `budget` itself, not of a budget made within it.
    pub fn is_of(&self, budget: &MemoryBudget) -> bool {
        !self.parts.is_empty()
            && self
                .parts
                .iter()
                .all(|p| Arc::ptr_eq(&p.budget, &budget.inner))
    }

    /// `bytes` of this lease (rounded up to a KiB) as a lease of their own,
    /// or None when it holds fewer (in any one budget).
    pub fn split(&mut self, bytes: u64) -> Option<Lease> {
        let units = usize::try_from(bytes.div_ceil(UNIT)).ok()?;
        if units == 0 {
            return Some(Lease::empty());
        }
        let part = self
            .parts
            .iter_mut()
            .find(|p| p.permit.num_permits() >= units)?;
        let permit = part.permit.split(units)?;
        Some(Lease {
            parts: vec![Part {
                permit,
                budget: part.budget.clone(),
            }],
        })
    }

    /// Holds `other`'s bytes too, until this lease is dropped.
    pub fn merge(&mut self, mut other: Lease) {
        for mut part in other.parts.drain(..) {
            match self
                .parts
                .iter_mut()
                .find(|p| Arc::ptr_eq(&p.budget, &part.budget))
            {
                Some(same) => {
                    // Moved, not given back: `part` is left holding none.
                    let all = part.permit.num_permits();
                    if let Some(moved) = part.permit.split(all) {
                        same.permit.merge(moved);
                    }
                }
                None => self.parts.push(part),
            }
        }
    }

    /// `bytes`, the lease holds them as long as they (or any slice of
    /// them) live.
    pub fn attach(self, bytes: Bytes) -> Bytes {
        if self.parts.is_empty() {
            return bytes;
        }
        Bytes::from_owner(Leased {
            bytes,
            _lease: self,
        })
    }
}

/// Bytes and the lease that pays for them.
struct Leased {
    bytes: Bytes,
    _lease: Lease,
}

impl AsRef<[u8]> for Leased {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test]
    async fn leases_are_counted_and_given_back_on_drop() {
        let budget = MemoryBudget::new(8 * MIB);
        assert_eq!(budget.capacity(), 8 * MIB);
        let a = budget.acquire(3 * MIB).await;
        let b = budget.try_acquire(5 * MIB).expect("room for 5 MiB");
        assert_eq!((a.bytes(), b.bytes()), (3 * MIB, 5 * MIB));
        assert_eq!(budget.held(), 8 * MIB);
        assert!(budget.try_acquire(1).is_none(), "nothing left");
        drop(a);
        assert_eq!(budget.held(), 5 * MIB);
        drop(b);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn sizes_round_up_to_a_kib_and_a_request_past_the_budget_takes_all_of_it() {
        let budget = MemoryBudget::new(MIB);
        assert_eq!(budget.acquire(1).await.bytes(), 1024);
        assert_eq!(budget.acquire(0).await.bytes(), 0);
        let all = budget.acquire(10 * MIB).await;
        assert_eq!(all.bytes(), MIB);
        assert_eq!(budget.held(), MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_its_bytes_when_they_are_given_back_in_order() {
        let budget = MemoryBudget::new(4 * MIB);
        let held = budget.acquire(4 * MIB).await;
        let big = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(3 * MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let small = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(MIB).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(budget.waiting(), 2);
        // A small request does not overtake a large one that came first.
        assert!(budget.try_acquire(1).is_none());
        drop(held);
        let (big, small) = (big.await.unwrap(), small.await.unwrap());
        assert_eq!((big.bytes(), small.bytes()), (3 * MIB, MIB));
        assert_eq!(budget.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_is_no_longer_counted_and_holds_nothing() {
        let budget = MemoryBudget::new(MIB);
        let held = budget.acquire(MIB).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(50), budget.acquire(MIB)).await;
        assert!(gave_up.is_err());
        assert_eq!(budget.waiting(), 0);
        drop(held);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn attached_bytes_give_the_lease_back_with_their_last_slice() {
        let budget = MemoryBudget::new(MIB);
        let lease = budget.acquire(64 << 10).await;
        let bytes = lease.attach(Bytes::from(vec![7u8; 64 << 10]));
        let slice = bytes.slice(10..20);
        assert_eq!(&slice[..], &[7u8; 10]);
        drop(bytes);
        assert_eq!(budget.held(), 64 << 10, "a slice still holds it");
        drop(slice);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_budget_within_a_lease_holds_it_until_it_and_its_leases_are_gone() {
        let budget = MemoryBudget::new(8 * MIB);
        let share = MemoryBudget::within(budget.acquire(2 * MIB).await);
        assert_eq!(share.capacity(), 2 * MIB);
        let part = share.acquire(MIB).await;
        assert!(part.is_of(&share) && !part.is_of(&budget));
        assert!(!Lease::empty().is_of(&share));
        assert_eq!((share.held(), budget.held()), (MIB, 2 * MIB));
        drop(share);
        assert_eq!(budget.held(), 2 * MIB, "its lease still holds the share");
        drop(part);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_wait_asks_idle_holders_to_give_back_first() {
        let budget = MemoryBudget::new(2 * MIB);
        let idle = Arc::new(Mutex::new(Some(budget.acquire(2 * MIB).await)));
        let kept = Arc::downgrade(&idle);
        budget.on_wait(move || {
            if let Some(kept) = kept.upgrade() {
                lock(&kept).take();
            }
        });
        let lease = tokio::time::timeout(Duration::from_secs(10), budget.acquire(MIB))
            .await
            .expect("the idle lease was given back");
        assert_eq!(lease.bytes(), MIB);
        assert!(lock(&idle).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_with_a_deadline_lasts_while_the_budget_turns_over() {
        let budget = MemoryBudget::new(2 * MIB);
        let big = budget.acquire(MIB).await;
        let mut small = Vec::new();
        for _ in 0..8 {
            small.push(budget.acquire(MIB / 8).await);
        }
        // One small lease given back every second, the big one after ten:
        // the wait (3 s deadline) lasts the ten seconds.
        tokio::spawn(async move {
            for lease in small {
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(lease);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(big);
        });
        let started = tokio::time::Instant::now();
        let lease = budget.acquire_moving(2 * MIB, Duration::from_secs(3)).await;
        assert_eq!(lease.map(|l| l.bytes()), Ok(2 * MIB));
        assert!(started.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_with_a_deadline_lasts_while_a_holder_reports_progress() {
        let budget = MemoryBudget::new(MIB);
        let held = budget.acquire(MIB).await;
        let reporter = budget.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                reporter.progressed();
            }
            drop(held);
        });
        let lease = budget.acquire_moving(MIB, Duration::from_secs(3)).await;
        assert_eq!(lease.map(|l| l.bytes()), Ok(MIB));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_with_a_deadline_fails_when_nothing_is_given_back() {
        let budget = MemoryBudget::new(MIB);
        let _stuck = budget.acquire(MIB).await;
        let waited = budget.acquire_moving(MIB, Duration::from_secs(3)).await;
        assert_eq!(
            waited.map(|l| l.bytes()),
            Err(Stuck(Duration::from_secs(3)))
        );
        assert_eq!(budget.waiting(), 0);
    }

    #[tokio::test]
    async fn a_split_lease_gives_its_part_back_on_its_own() {
        let budget = MemoryBudget::new(8 * MIB);
        let mut lease = budget.acquire(4 * MIB).await;
        let part = lease.split(MIB).expect("4 MiB hold 1");
        assert_eq!((lease.bytes(), part.bytes()), (3 * MIB, MIB));
        assert!(lease.split(4 * MIB).is_none(), "3 MiB left");
        drop(part);
        assert_eq!(budget.held(), 3 * MIB);
        drop(lease);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn merged_leases_give_everything_back_at_once() {
        let budget = MemoryBudget::new(8 * MIB);
        let other = MemoryBudget::new(MIB);
        let mut lease = budget.acquire(MIB).await;
        lease.merge(budget.acquire(2 * MIB).await);
        lease.merge(other.acquire(MIB).await);
        assert_eq!(lease.bytes(), 4 * MIB);
        drop(lease);
        assert_eq!((budget.held(), other.held()), (0, 0));
    }
}

//! The gate every kernel request passes before the file system sees it,
//! so a process handing its mount over stops at a clean point:
//!
//! 1. `hold_imports`: requests that would start or join an import (create,
//!    open for writing) are held back, so imports already open can finish
//!    (their writes and closes still pass);
//! 2. `close`: every request is held back; the ones already let in finish
//!    and answer (`drained`), and each records what it changed in the
//!    state journal before it answers, so the journal is complete.
//!
//! A held-back request is read from the kernel but never answered: it
//! stays in the connection's processing queue, and the next process has
//! the kernel send it again (FUSE_NOTIFY_RESEND), so the program that made
//! it only waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLOSED: u64 = 1 << 63;
const IMPORTS_HELD: u64 = 1 << 62;
const COUNT: u64 = IMPORTS_HELD - 1;

/// Requests in progress, and what the gate lets in.
#[derive(Default)]
pub struct Gate {
    state: AtomicU64,
}

/// A request let in: counted until dropped (after its answer).
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        self.0.state.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// Lets a request in, or None once the gate is closed.
    pub fn enter(self: &Arc<Self>) -> Option<Pass> {
        self.enter_unless(CLOSED)
    }

    /// Lets in a request that starts or joins an import, or None once
    /// imports are held back.
    pub fn enter_import(self: &Arc<Self>) -> Option<Pass> {
        self.enter_unless(CLOSED | IMPORTS_HELD)
    }

    fn enter_unless(self: &Arc<Self>, held: u64) -> Option<Pass> {
        let before = self.state.fetch_add(1, Ordering::AcqRel);
        if before & held != 0 {
            self.state.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Pass(self.clone()))
    }

    pub fn hold_imports(&self) {
        self.state.fetch_or(IMPORTS_HELD, Ordering::AcqRel);
    }

    pub fn close(&self) {
        self.state.fetch_or(CLOSED | IMPORTS_HELD, Ordering::AcqRel);
    }

    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Requests let in and not yet answered.
    pub fn in_progress(&self) -> u64 {
        self.state.load(Ordering::Acquire) & COUNT
    }

    /// Waits until no request is in progress, or `deadline`; whether it
    /// got there.
    pub async fn drained(&self, deadline: Instant) -> bool {
        until(deadline, || self.in_progress() == 0).await
    }
}

/// Polls `done` every 10 ms until it holds or `deadline` passes.
pub async fn until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_gate_lets_nothing_in_and_drains_what_it_let_in() {
        let gate = Arc::new(Gate::default());
        let a = gate.enter().unwrap();
        let b = gate.enter_import().unwrap();
        gate.hold_imports();
        assert!(gate.enter_import().is_none());
        let c = gate.enter().unwrap();
        gate.close();
        assert!(gate.enter().is_none());
        assert_eq!(gate.in_progress(), 3);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!gate.drained(soon).await);
        drop((a, b, c));
        assert!(gate.drained(Instant::now()).await);
    }
}

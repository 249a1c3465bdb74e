//! FUSE operations by op and result: the adapter runs each operation's
//! future through [`observe`], and the one function that turns a failure
//! into a reply calls [`replied_error`]. The errno travels in a task-local
//! cell, so neither the operations nor their replies need to know about
//! metrics.

use std::cell::Cell;
use std::future::Future;
use std::time::Instant;

use super::mount;

tokio::task_local! {
    static REPLIED: Cell<i32>;
}

/// `fut` (one operation, to its reply), counted and timed under `op` with
/// the errno it replied with (0: success). The clock starts now, when the
/// request is taken from the kernel, not when the task first runs.
pub fn observe<F>(op: &'static str, fut: F) -> impl Future<Output = ()> + Send + 'static
where
    F: Future<Output = ()> + Send + 'static,
{
    let started = Instant::now();
    REPLIED.scope(Cell::new(0), async move {
        fut.await;
        let errno = REPLIED.with(Cell::get);
        mount().fuse_op(op, errno, started.elapsed());
    })
}

/// Records that the operation being observed replied with `errno`. Outside
/// an observed operation (a reply made synchronously) it does nothing.
pub fn replied_error(errno: i32) {
    let _ = REPLIED.try_with(|cell| cell.set(errno));
}

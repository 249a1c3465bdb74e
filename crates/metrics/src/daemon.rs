//! The embedded daemon's families. Counters are bumped by one-line hooks
//! (`daemon()`); what the store holds and its disk's free space are read
//! right before each scrape (`refresh_store`).

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::labels::latency_buckets;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodCode {
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Method {
    pub method: &'static str,
}

pub struct DaemonMetrics {
    tasks: Gauge,
    stored_bytes: Gauge,
    free_bytes: Gauge,
    imports_in_flight: Gauge,
    memory_budget: Gauge,
    memory_held: Gauge,
    memory_waiting: Gauge,
    rpcs: Family<MethodCode, Counter>,
    rpc_latency: Family<Method, Histogram, fn() -> Histogram>,
    gc_runs: Counter,
    gc_collected: Counter,
}

static DAEMON: LazyLock<DaemonMetrics> = LazyLock::new(DaemonMetrics::new);

/// The process's daemon families.
pub fn daemon() -> &'static DaemonMetrics {
    &DAEMON
}

/// Decrements the imports-in-flight gauge when the import ends.
pub struct ImportInFlight(&'static Gauge);

impl Drop for ImportInFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl DaemonMetrics {
    fn new() -> Self {
        Self {
            tasks: Gauge::default(),
            stored_bytes: Gauge::default(),
            free_bytes: Gauge::default(),
            imports_in_flight: Gauge::default(),
            memory_budget: Gauge::default(),
            memory_held: Gauge::default(),
            memory_waiting: Gauge::default(),
            rpcs: Family::default(),
            rpc_latency: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            gc_runs: Counter::default(),
            gc_collected: Counter::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "dfcache_store_tasks",
            "Tasks in the store (live, unexpired)",
            self.tasks.clone(),
        );
        r.register_with_unit(
            "dfcache_store_stored",
            "Content bytes of the tasks in the store",
            Unit::Bytes,
            self.stored_bytes.clone(),
        );
        r.register_with_unit(
            "dfcache_store_free",
            "Free bytes on the store's file system (what an unprivileged writer may use)",
            Unit::Bytes,
            self.free_bytes.clone(),
        );
        r.register(
            "dfcache_daemon_imports_in_flight",
            "Imports being stored now (each holds one of --max-concurrent-imports)",
            self.imports_in_flight.clone(),
        );
        r.register_with_unit(
            "dfcache_daemon_memory_budget",
            "The daemon's memory budget for transfers (--memory-budget)",
            Unit::Bytes,
            self.memory_budget.clone(),
        );
        r.register_with_unit(
            "dfcache_daemon_memory_held",
            "Bytes of the memory budget that transfers hold now (blocks, queued chunks, receive windows, blocks kept for reuse)",
            Unit::Bytes,
            self.memory_held.clone(),
        );
        r.register(
            "dfcache_daemon_memory_waiting",
            "Transfers waiting for room in the memory budget now",
            self.memory_waiting.clone(),
        );
        r.register(
            "dfcache_daemon_rpcs",
            "RPCs answered, by method and gRPC code (a stream's code is that of its start)",
            self.rpcs.clone(),
        );
        r.register_with_unit(
            "dfcache_daemon_rpc_duration",
            "Time to answer an RPC (to the response headers; an upload's whole stream)",
            Unit::Seconds,
            self.rpc_latency.clone(),
        );
        r.register(
            "dfcache_gc_runs",
            "Rounds of expired-task collection",
            self.gc_runs.clone(),
        );
        r.register(
            "dfcache_gc_collected_tasks",
            "Expired tasks collected",
            self.gc_collected.clone(),
        );
    }

    /// What the store holds and its disk's free space, as of now.
    pub fn store_state(&self, tasks: usize, bytes: u64, free: Option<u64>) {
        self.tasks.set(i64::try_from(tasks).unwrap_or(i64::MAX));
        self.stored_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        if let Some(free) = free {
            self.free_bytes.set(i64::try_from(free).unwrap_or(i64::MAX));
        }
    }

    /// The memory budget's size, what is held of it and how many wait, as
    /// of now.
    pub fn memory_state(&self, budget: u64, held: u64, waiting: usize) {
        self.memory_budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        self.memory_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.memory_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Counts an import being stored until the guard drops.
    pub fn import_in_flight(&'static self) -> ImportInFlight {
        self.imports_in_flight.inc();
        ImportInFlight(&self.imports_in_flight)
    }

    pub fn rpc(&self, method: &'static str, code: &'static str, took: Duration) {
        self.rpcs.get_or_create(&MethodCode { method, code }).inc();
        self.rpc_latency
            .get_or_create(&Method { method })
            .observe(took.as_secs_f64());
    }

    pub fn gc_ran(&self, collected: usize) {
        self.gc_runs.inc();
        self.gc_collected.inc_by(collected as u64);
    }
}

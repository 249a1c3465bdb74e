//! The mount's families. Hooks in `fs/` call the methods here, one line
//! each, through `mount()`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{errno_name, latency_buckets};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpResult {
    pub op: &'static str,
    /// "ok", or the errno's name ("ENOENT").
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Op {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcCode {
    pub rpc: &'static str,
    /// The gRPC code's name ("OK", "NotFound"), or "client" for a failure
    /// on this side of the socket (a spool file that cannot be read).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Rpc {
    pub rpc: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

pub struct MountMetrics {
    fuse_ops: Family<OpResult, Counter>,
    fuse_latency: Histograms<Op>,
    cache_hits: Counter,
    cache_misses: Counter,
    cache_evictions: Counter,
    cache_bytes: Gauge,
    fetches_in_flight: Gauge,
    readahead_window: Gauge,
    passthrough_opens: Counter,
    imports_started: Counter,
    imports_finished: Counter,
    imports_failed: Counter,
    import_bytes: Counter,
    import_duration: Histogram,
    import_memory_budget: Gauge,
    import_memory_held: Gauge,
    import_memory_waiting: Gauge,
    daemon_calls: Family<RpcCode, Counter>,
    daemon_latency: Histograms<Rpc>,
    task_downloads: Counter,
    task_download_bytes: Gauge,
    spool_bytes: Counter,
    tree_prefetches: Counter,
    tree_prefetch_bytes: Counter,
    tree_prefetches_used: Counter,
    tree_prefetch_used_bytes: Counter,
    tree_prefetch_queued: Gauge,
}

static MOUNT: LazyLock<MountMetrics> = LazyLock::new(MountMetrics::new);

/// The process's mount families.
pub fn mount() -> &'static MountMetrics {
    &MOUNT
}

/// Counts a file opened with FUSE passthrough (the kernel reads the
/// backing file itself): for the passthrough read path.
pub fn passthrough_opened() {
    mount().passthrough_opens.inc();
}

/// Decrements the in-flight fetch gauge when the fetch ends, however it
/// ends (error, cancellation).
pub struct InFlight(&'static Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl MountMetrics {
    fn new() -> Self {
        Self {
            fuse_ops: Family::default(),
            fuse_latency: Family::new_with_constructor(latency_histogram),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            cache_evictions: Counter::default(),
            cache_bytes: Gauge::default(),
            fetches_in_flight: Gauge::default(),
            readahead_window: Gauge::default(),
            passthrough_opens: Counter::default(),
            imports_started: Counter::default(),
            imports_finished: Counter::default(),
            imports_failed: Counter::default(),
            import_bytes: Counter::default(),
            import_duration: latency_histogram(),
            import_memory_budget: Gauge::default(),
            import_memory_held: Gauge::default(),
            import_memory_waiting: Gauge::default(),
            daemon_calls: Family::default(),
            daemon_latency: Family::new_with_constructor(latency_histogram),
            task_downloads: Counter::default(),
            task_download_bytes: Gauge::default(),
            spool_bytes: Counter::default(),
            tree_prefetches: Counter::default(),
            tree_prefetch_bytes: Counter::default(),
            tree_prefetches_used: Counter::default(),
            tree_prefetch_used_bytes: Counter::default(),
            tree_prefetch_queued: Gauge::default(),
        }
    }

    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "dfcache_fuse_operations",
            "FUSE operations answered, by operation and result (ok or the errno)",
            self.fuse_ops.clone(),
        );
        r.register_with_unit(
            "dfcache_fuse_operation_duration",
            "Time from a FUSE request to its reply, by operation",
            Unit::Seconds,
            self.fuse_latency.clone(),
        );
        r.register(
            "dfcache_block_cache_hits",
            "Reads answered from cached blocks and spans",
            self.cache_hits.clone(),
        );
        r.register(
            "dfcache_block_cache_misses",
            "Blocks and spans fetched from the daemon into the cache (on demand or read ahead)",
            self.cache_misses.clone(),
        );
        r.register(
            "dfcache_block_cache_evictions",
            "Blocks and spans evicted from the cache to stay within --cache-size",
            self.cache_evictions.clone(),
        );
        r.register_with_unit(
            "dfcache_block_cache",
            "Bytes of blocks and spans held in the cache",
            Unit::Bytes,
            self.cache_bytes.clone(),
        );
        r.register(
            "dfcache_block_fetches_in_flight",
            "Range reads from the daemon in progress (runs of blocks and random spans)",
            self.fetches_in_flight.clone(),
        );
        r.register_with_unit(
            "dfcache_readahead_window",
            "Read-ahead window of the latest sequential read",
            Unit::Bytes,
            self.readahead_window.clone(),
        );
        r.register(
            "dfcache_fuse_passthrough_opens",
            "Files opened with FUSE passthrough (the kernel reads the backing file)",
            self.passthrough_opens.clone(),
        );
        r.register(
            "dfcache_imports_started",
            "Imports started (a file created in import/, or reopened with O_TRUNC)",
            self.imports_started.clone(),
        );
        r.register(
            "dfcache_imports_finished",
            "Imports the daemon stored as tasks",
            self.imports_finished.clone(),
        );
        r.register(
            "dfcache_imports_failed",
            "Imports that failed at commit (their close() or fsync() returned the error)",
            self.imports_failed.clone(),
        );
        r.register_with_unit(
            "dfcache_import",
            "Bytes of imports the daemon stored",
            Unit::Bytes,
            self.import_bytes.clone(),
        );
        r.register_with_unit(
            "dfcache_import_duration",
            "Time from an import's start to the daemon's acknowledgement",
            Unit::Seconds,
            self.import_duration.clone(),
        );
        r.register_with_unit(
            "dfcache_import_memory_budget",
            "The mount's memory budget for streamed imports (--memory-budget, a quarter of it with --embedded)",
            Unit::Bytes,
            self.import_memory_budget.clone(),
        );
        r.register_with_unit(
            "dfcache_import_memory_held",
            "Bytes of that budget held now by streamed imports (a share each)",
            Unit::Bytes,
            self.import_memory_held.clone(),
        );
        r.register(
            "dfcache_import_memory_waiting",
            "Imports waiting for their share of that budget now",
            self.import_memory_waiting.clone(),
        );
        r.register(
            "dfcache_daemon_calls",
            "Calls the mount made to the daemon, by RPC and gRPC code",
            self.daemon_calls.clone(),
        );
        r.register_with_unit(
            "dfcache_daemon_call_duration",
            "Time of the mount's daemon calls (to the response, or to the end of an upload)",
            Unit::Seconds,
            self.daemon_latency.clone(),
        );
        r.register(
            "dfcache_task_downloads",
            "Whole-task downloads started (a daemon without range reads)",
            self.task_downloads.clone(),
        );
        r.register_with_unit(
            "dfcache_task_downloads_held",
            "Bytes of whole-task downloads kept in the spool (at most --task-cache-size)",
            Unit::Bytes,
            self.task_download_bytes.clone(),
        );
        r.register_with_unit(
            "dfcache_spool_written",
            "Bytes the mount wrote into the spool (spooled imports, downloaded piece content; not files the daemon linked there)",
            Unit::Bytes,
            self.spool_bytes.clone(),
        );
        r.register(
            "dfcache_tree_prefetches",
            "Whole-task downloads of a tree's files started ahead of the programs (--prefetch-trees)",
            self.tree_prefetches.clone(),
        );
        r.register_with_unit(
            "dfcache_tree_prefetch",
            "Bytes of the tree files downloaded ahead",
            Unit::Bytes,
            self.tree_prefetch_bytes.clone(),
        );
        r.register(
            "dfcache_tree_prefetches_used",
            "Tree files downloaded ahead that a program then opened or read",
            self.tree_prefetches_used.clone(),
        );
        r.register_with_unit(
            "dfcache_tree_prefetch_used",
            "Bytes of the tree files downloaded ahead that a program then opened or read",
            Unit::Bytes,
            self.tree_prefetch_used_bytes.clone(),
        );
        r.register(
            "dfcache_tree_prefetch_queued",
            "Tree files waiting to be downloaded ahead",
            self.tree_prefetch_queued.clone(),
        );
    }

    /// A FUSE operation answered with `errno` (0: success) after `took`.
    pub fn fuse_op(&self, op: &'static str, errno: i32, took: Duration) {
        let result = errno_name(errno);
        self.fuse_ops.get_or_create(&OpResult { op, result }).inc();
        self.fuse_latency
            .get_or_create(&Op { op })
            .observe(took.as_secs_f64());
    }

    pub fn cache_hit(&self) {
        self.cache_hits.inc();
    }

    pub fn cache_miss(&self) {
        self.cache_misses.inc();
    }

    pub fn cache_evicted(&self) {
        self.cache_evictions.inc();
    }

    pub fn cache_holds(&self, bytes: u64) {
        self.cache_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// The import budget's size, what is held of it and how many wait, as
    /// of now.
    pub fn import_memory_state(&self, budget: u64, held: u64, waiting: usize) {
        self.import_memory_budget
            .set(i64::try_from(budget).unwrap_or(i64::MAX));
        self.import_memory_held
            .set(i64::try_from(held).unwrap_or(i64::MAX));
        self.import_memory_waiting
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }

    /// Counts a range read from the daemon until the guard drops.
    pub fn fetch_in_flight(&'static self) -> InFlight {
        self.fetches_in_flight.inc();
        InFlight(&self.fetches_in_flight)
    }

    pub fn readahead_window(&self, bytes: u64) {
        self.readahead_window
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn import_started(&self) {
        self.imports_started.inc();
    }

    pub fn import_finished(&self, bytes: u64, took: Duration) {
        self.imports_finished.inc();
        self.import_bytes.inc_by(bytes);
        self.import_duration.observe(took.as_secs_f64());
    }

    pub fn import_failed(&self) {
        self.imports_failed.inc();
    }

    /// A daemon call that ended with `code` after `took`.
    pub fn daemon_call(&self, rpc: &'static str, code: &'static str, took: Duration) {
        self.daemon_calls
            .get_or_create(&RpcCode { rpc, code })
            .inc();
        self.daemon_latency
            .get_or_create(&Rpc { rpc })
            .observe(took.as_secs_f64());
    }

    pub fn task_download_started(&self) {
        self.task_downloads.inc();
    }

    pub fn task_downloads_hold(&self, bytes: u64) {
        self.task_download_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn spool_written(&self, bytes: u64) {
        self.spool_bytes.inc_by(bytes);
    }

    pub fn tree_prefetch_started(&self, bytes: u64) {
        self.tree_prefetches.inc();
        self.tree_prefetch_bytes.inc_by(bytes);
    }

    pub fn tree_prefetch_used(&self, bytes: u64) {
        self.tree_prefetches_used.inc();
        self.tree_prefetch_used_bytes.inc_by(bytes);
    }

    pub fn tree_prefetch_queued(&self, files: u64) {
        self.tree_prefetch_queued
            .set(i64::try_from(files).unwrap_or(i64::MAX));
    }
}

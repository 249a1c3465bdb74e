//! Real-mount tests: each mounts a real FUSE file system (`dfcache mount`)
//! on a real daemon and drives it with real programs. Every mount is
//! unmounted when its `Mounted` is dropped, also when a test fails.

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod concurrency;
mod csi;
mod deploy_probes;
mod drop_behind;
mod failures;
mod faults;
mod import;
mod legacy;
mod legacy_reads;
mod metrics;
mod misc;
mod passthrough;
mod read;
mod scale;
mod systemd;
mod takeover;
mod takeover_soak;
mod tree_prefetch;
mod trees;
mod unprivileged;

//! # Coffer
//!
//! A thread-per-core storage engine for Kafka consumer-group state: the compacted
//! `__consumer_offsets` topic. A broker embeds it as the storage core of its group
//! coordinator.
//!
//! * [`format`](mod@format) — Kafka's `__consumer_offsets` record schemas inside RecordBatch v2 framing.
//! * [`storage`] — the narrow interface to the disk, with an io_uring implementation and a
//!   seeded, fault-injecting in-memory twin for tests.
//! * [`log`] — per-partition segmented logs and their crash recovery.
//! * [`journal`] — the shard journal: one sync per group commit (`FsyncScope::Journal`).
//! * [`group`] — consumer groups: Kafka's classic group protocol, one coordinator per shard.
//! * [`Engine`] — the public API: open a data directory, commit and fetch offsets, close.
//! * [`LocalShard`] — the same engine for thread-per-core brokers: one shard per executor,
//!   called directly on the executor's thread.
//!
//! See `docs/architecture.md` for how the pieces fit.

pub mod cache;
pub mod compact;
mod completion;
pub mod config;
mod engine;
pub mod error;
mod events;
pub mod format;
pub mod group;
pub mod journal;
pub mod log;
mod offsets;
mod pool;
pub mod routing;
mod shard;
pub mod storage;
pub(crate) mod sync;

pub use completion::{Abandoned, CommitFuture, GroupFuture};
pub use config::{Config, FsyncScope};
pub use engine::{Engine, OffsetLookup, OffsetReset, ResetOffset};
pub use error::{Error, Result};
pub use events::{EVENT_QUEUE_DEPTH_MAX, EngineEvent};
pub use offsets::{CommittedOffset, OffsetCommit, TopicPartitionOffset};
pub use shard::{
    AdoptFailed, HeartbeatBoard, LocalShard, PartitionHandoff, PartitionSpace, RecoveryReport,
    ShardMetrics,
};

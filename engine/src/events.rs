//! Events the engine reports to the embedding broker: offsets expired by retention (an offset
//! reset waiting to happen), and compactor trouble.
//!
//! Shards publish into one bounded queue ([`EVENT_QUEUE_DEPTH_MAX`]); a shard never blocks
//! on it: when it is full the event is dropped and counted (`ShardMetrics::events_dropped`).
//! Subscribe with [`Engine::events`](crate::Engine::events).

use std::path::PathBuf;

use crossbeam_channel::{Sender, TrySendError};

/// Events the queue holds before shards start dropping them.
pub const EVENT_QUEUE_DEPTH_MAX: usize = 4096;

/// Something the embedding broker should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// Retention expired a committed offset: a tombstone for it is durable.
    OffsetsExpired {
        /// Group id.
        group: String,
        /// Topic.
        topic: String,
        /// Topic partition.
        partition: i32,
        /// The committed offset that expired.
        offset: i64,
    },
    /// The compactor could not read or parse a segment; it skips the segment from now on.
    CompactionQuarantined {
        /// The offsets partition.
        offsets_partition: u32,
        /// The segment file.
        segment: PathBuf,
        /// What failed.
        reason: String,
    },
    /// A compaction failed on an I/O error (before its swap: the old segments stand; after
    /// it: the partition is failed closed and recovers on the next load).
    CompactionFailed {
        /// The offsets partition.
        offsets_partition: u32,
        /// What failed.
        reason: String,
    },
}

/// A shard's end of the event queue.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    sender: Sender<EngineEvent>,
}

impl EventSink {
    pub(crate) fn new(sender: Sender<EngineEvent>) -> EventSink {
        EventSink { sender }
    }

    /// Publishes without blocking; returns false (the caller counts it) if the event was
    /// dropped because the queue is full or nobody can subscribe any more.
    pub(crate) fn emit(&self, event: EngineEvent) -> bool {
        match self.sender.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

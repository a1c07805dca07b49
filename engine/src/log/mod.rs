//! Per-partition segmented logs in Kafka's on-disk layout, and their crash recovery.
//!
//! * [`segment`] — segment file names and the active/sealed segment records.
//! * [`reader`] — batch-by-batch reading with framing, CRC and offset checks, and the
//!   torn-tail inspection recovery relies on.
//! * [`partition`] — one partition's log: appends, rolls, close.
//! * `recovery` — a partition's segment files scanned at open, the active one's torn tail
//!   cut.
//! * [`liveness`] — per-segment live/dead record counts, the compactor's input.
//! * [`dead_records`] — which records of a segment are dead, by offset.
//! * [`swap`] — the crash-safe protocol that replaces segments with their compacted copy.

pub mod dead_records;
pub mod liveness;
pub mod partition;
pub mod reader;
mod recovery;
pub mod segment;
pub mod swap;

pub use partition::{
    DIRTY_ROLL_BYTES_MIN, DIRTY_ROLL_BYTES_SCALED_MAX, DIRTY_ROLL_LIVE_MULTIPLE, LogSettings,
    PREALLOCATE_STEP_BYTES, PartitionLog, PartitionRecovery, ReplayVisitor, SPARE_SEGMENT_NAME,
    Truncation, dirty_roll_bytes,
};

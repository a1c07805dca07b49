//! Engine configuration. Names follow Kafka's broker configs (`offsets.topic.num.partitions`
//! becomes `offsets_topic_num_partitions`); settings Kafka has no name for say so.

use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::routing::GroupPartitioner;

/// Kafka strings carry an int16 length, so no string may exceed this many bytes.
pub const KAFKA_STRING_BYTES_MAX: usize = i16::MAX as usize;

/// Upper bound on `offsets_topic_num_partitions` (Kafka's own practical ceiling is far lower).
pub const PARTITIONS_MAX: u32 = 1024;

/// Upper bound on the partitions one commit request may carry.
pub const COMMIT_PARTITIONS_MAX: usize = 16 * 1024;

/// Smallest segment size accepted: big enough for any single batch the engine writes.
pub const SEGMENT_BYTES_MIN: u64 = 1024 * 1024;

/// Largest accepted `log_cleaner_backoff_ms` (one day): a longer wait would leave rolled
/// segments uncompacted for longer than any retention setting makes sense of.
pub const LOG_CLEANER_BACKOFF_MS_MAX: u64 = 86_400_000;

/// Smallest accepted `group_commit_bytes_max`.
pub const GROUP_COMMIT_BYTES_MIN: usize = 64 * 1024;

/// Largest accepted `group_commit_bytes_max`.
pub const GROUP_COMMIT_BYTES_LIMIT: usize = 256 * 1024 * 1024;

/// Most shards an engine runs.
pub const SHARDS_MAX: usize = 256;

/// Largest accepted `journal_file_bytes`.
pub const JOURNAL_FILE_BYTES_LIMIT: u64 = 1 << 30;

/// Upper bound on `offsets_retention_minutes` (about 100 years, far inside i64 ms).
pub const RETENTION_MINUTES_MAX: u64 = 100 * 366 * 24 * 60;

/// Upper bound on `offsets_retention_check_interval_ms` (one day).
pub const RETENTION_CHECK_INTERVAL_MS_MAX: u64 = 86_400_000;

/// What one group commit makes its writes durable with. No Kafka name (Kafka leaves syncing
/// to replication).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncScope {
    /// One `fdatasync` per written segment, all in the flush's one io_uring submission.
    File,
    /// The flush's writes, then one `syncfs` of the data directory's filesystem: one journal
    /// commit and one device cache flush per group commit instead of one per partition.
    /// `syncfs` flushes everything dirty on that filesystem, so this is for a data directory
    /// on a volume of its own; it needs Linux 5.8 or later (from which `syncfs` reports
    /// writeback errors), and the engine refuses to open with it on older kernels.
    Filesystem,
    /// The segments' writes unsynced, and the same batches appended to the shard's journal
    /// file with one `fdatasync`: one sync per group commit on any filesystem. The segments
    /// are synced when the journal file fills (`journal_file_bytes`) and at close; recovery
    /// writes the journal's entries back into the segments first. See `coffer::journal`.
    #[default]
    Journal,
}

impl FsyncScope {
    /// The scope's name on command lines and in reports: `file`, `filesystem` or `journal`.
    pub fn name(self) -> &'static str {
        match self {
            FsyncScope::File => "file",
            FsyncScope::Filesystem => "filesystem",
            FsyncScope::Journal => "journal",
        }
    }
}

impl std::str::FromStr for FsyncScope {
    type Err = String;

    /// Parses [`FsyncScope::name`]'s names.
    ///
    /// ```
    /// assert_eq!("journal".parse(), Ok(coffer::FsyncScope::Journal));
    /// ```
    fn from_str(name: &str) -> std::result::Result<FsyncScope, String> {
        [
            FsyncScope::File,
            FsyncScope::Filesystem,
            FsyncScope::Journal,
        ]
        .into_iter()
        .find(|scope| scope.name() == name)
        .ok_or_else(|| format!("fsync scope {name:?}: expected file, filesystem or journal"))
    }
}

/// Engine configuration.
///
/// ```
/// let mut config = coffer::Config::new("/var/lib/coffer");
/// config.offsets_topic_num_partitions = 50;
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory holding one sub-directory per offsets partition (Kafka's `log.dirs`).
    pub data_dir: PathBuf,
    /// `offsets.topic.num.partitions` (50).
    pub offsets_topic_num_partitions: u32,
    /// `offsets.topic.segment.bytes` (100 MiB): a segment rolls before it would exceed this.
    pub offsets_topic_segment_bytes: u64,
    /// `offset.metadata.max.bytes` (4096).
    pub offset_metadata_max_bytes: usize,
    /// `offsets.commit.timeout.ms` (5000): a commit not durable by then fails, retriable.
    pub offsets_commit_timeout_ms: u64,
    /// `log.preallocate`: reserve a segment's full size when it is created (Kafka's default is
    /// false; ours is true so appends never extend the file and a sync flushes data only).
    pub log_preallocate: bool,
    /// No Kafka name. Cap on the encoded bytes one group commit writes across all partitions;
    /// what arrives beyond it waits for the next flush.
    pub group_commit_bytes_max: usize,
    /// No Kafka name (the closest is KAFKA-19826's adaptive linger). Extra time to wait for
    /// more commits after the first one arrives; 0 (default) means adaptive batching only:
    /// whatever arrives while a flush is in flight forms the next batch.
    pub group_commit_linger_us: u64,
    /// No Kafka name. With `FsyncScope::Journal`, how many requests must wait when a flush
    /// starts for the shard to keep two flushes in flight (the next gathered and encoded,
    /// the one before acknowledged, while the journal syncs; docs/architecture.md). Below
    /// it the sync runs on the shard thread, which is faster for small flushes. Default 32;
    /// `usize::MAX` never overlaps.
    pub group_commit_overlap_requests_min: usize,
    /// Group id → offsets partition mapping: Kafka's (default) or Redpanda's.
    pub group_partitioner: GroupPartitioner,
    /// No Kafka name. Shard threads, each owning the offsets partitions `p` with
    /// `p % shards == index`; default one per available core.
    pub shards: usize,
    /// No Kafka name. Pin shard `i` to core `i % cores` (default true).
    pub pin_shards: bool,
    /// No Kafka name. With `pin_shards`, the cores to pin to: shard `i` on
    /// `shard_cores[i % len]`. Empty (the default): every core, in order. Lets a shard share
    /// its core with its disk's completion interrupts, or keep clear of cores reserved for
    /// other work (operations.md, "Interrupts and shard cores"). At most [`SHARDS_MAX`]
    /// entries; each must be a core this process may run on, which `Engine::open` checks.
    pub shard_cores: Vec<usize>,
    /// No Kafka name. How a group commit is made durable (default: the shard journal).
    pub fsync_scope: FsyncScope,
    /// No Kafka name. Largest shard journal file with `FsyncScope::Journal` (64 MiB): when
    /// a file is full, the shard syncs the segments written meanwhile and starts a new file.
    /// Each new file is sized to a quarter of the shard's live bytes, between
    /// [`journal_file_bytes_min`](Self::journal_file_bytes_min) and this, so the journal's
    /// two files stay within half the live data once it is large. Bounds what recovery
    /// redoes per shard.
    pub journal_file_bytes: u64,
    /// No Kafka name. Bound of the inbound request queue: callers wait when it is full, so
    /// memory does not grow when the disk is slower than the load.
    pub request_queue_depth_max: usize,
    /// `log.cleaner.enable` (true): run the incremental compactor in the background. When
    /// false, compaction runs only on [`Engine::compact`](crate::Engine::compact).
    pub log_cleaner_enable: bool,
    /// `log.cleaner.min.cleanable.ratio` (0.5; `min.cleanable.dirty.ratio` per topic): the
    /// dirty ratio (dead / all bytes, estimated) at which sealed segments get compacted.
    pub log_cleaner_min_cleanable_ratio: f64,
    /// `log.cleaner.delete.retention.ms` (86400000; `delete.retention.ms` per topic): a
    /// tombstone is kept at least this long after it was written, then dropped by the first
    /// compaction of the segments that start the log.
    pub log_cleaner_delete_retention_ms: u64,
    /// `log.cleaner.backoff.ms` (15000): Kafka's cleaner sleeps this long when it finds
    /// nothing to clean. Here it is the longest background compaction leaves the newest
    /// sealed segment alone: it waits for two rewrites of the partition's keys (see
    /// `compact::select::Deferral`), or this long when the commits stop.
    pub log_cleaner_backoff_ms: u64,
    /// `offsets.retention.minutes` (10080): how long the offsets of a group without members
    /// are kept.
    pub offsets_retention_minutes: u64,
    /// `offsets.retention.check.interval.ms` (600000).
    pub offsets_retention_check_interval_ms: u64,
    /// Consumer group settings (`group.*` in Kafka).
    pub groups: crate::group::GroupConfig,
}

impl Config {
    /// The smallest journal file: one whole flush (every partition's entry header, and
    /// batches that may exceed `group_commit_bytes_max` by the one request that crossed it)
    /// must fit in an empty file. A shard never makes a file smaller than this.
    pub fn journal_file_bytes_min(&self) -> u64 {
        2 * self.group_commit_bytes_max as u64
            + u64::from(PARTITIONS_MAX) * crate::journal::ENTRY_HEADER_BYTES as u64
    }

    /// A configuration with Kafka's defaults, storing under `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            offsets_topic_num_partitions: 50,
            offsets_topic_segment_bytes: 100 * 1024 * 1024,
            offset_metadata_max_bytes: 4096,
            offsets_commit_timeout_ms: 5000,
            log_preallocate: true,
            group_commit_bytes_max: 4 * 1024 * 1024,
            group_commit_linger_us: 0,
            group_commit_overlap_requests_min: 32,
            request_queue_depth_max: 4096,
            fsync_scope: FsyncScope::Journal,
            journal_file_bytes: 64 * 1024 * 1024,
            group_partitioner: GroupPartitioner::Kafka,
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            pin_shards: true,
            shard_cores: Vec::new(),
            log_cleaner_enable: true,
            log_cleaner_min_cleanable_ratio: 0.5,
            log_cleaner_delete_retention_ms: 86_400_000,
            log_cleaner_backoff_ms: 15_000,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            groups: crate::group::GroupConfig::default(),
        }
    }

    /// Checks every value against its limit.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: String| Err(Error::InvalidConfig(what));
        if self.offsets_topic_num_partitions == 0
            || self.offsets_topic_num_partitions > PARTITIONS_MAX
        {
            return fail(format!(
                "offsets.topic.num.partitions must be in 1..={PARTITIONS_MAX}"
            ));
        }
        if self.offsets_topic_segment_bytes < SEGMENT_BYTES_MIN
            || self.offsets_topic_segment_bytes > i32::MAX as u64
        {
            return fail(format!(
                "offsets.topic.segment.bytes must be in {SEGMENT_BYTES_MIN}..={}",
                i32::MAX
            ));
        }
        if self.offset_metadata_max_bytes > KAFKA_STRING_BYTES_MAX {
            return fail(format!(
                "offset.metadata.max.bytes must be at most {KAFKA_STRING_BYTES_MAX}"
            ));
        }
        if self.offsets_commit_timeout_ms == 0 {
            return fail("offsets.commit.timeout.ms must be positive".into());
        }
        // Each partition's share of a flush is capped separately (one batch of at most
        // PARTITION_FLUSH_BYTES_MAX), so this only bounds the memory one flush encodes into.
        if self.group_commit_bytes_max < GROUP_COMMIT_BYTES_MIN
            || self.group_commit_bytes_max > GROUP_COMMIT_BYTES_LIMIT
        {
            return fail(format!(
                "group_commit_bytes_max must be in {GROUP_COMMIT_BYTES_MIN}..={GROUP_COMMIT_BYTES_LIMIT}"
            ));
        }
        // A whole flush (every partition's entry header, and batches that may exceed the
        // byte cap by the one request that crossed it) must fit in an empty journal file.
        let journal_bytes_min = self.journal_file_bytes_min();
        if self.journal_file_bytes < journal_bytes_min
            || self.journal_file_bytes > JOURNAL_FILE_BYTES_LIMIT
        {
            return fail(format!(
                "journal_file_bytes must be in {journal_bytes_min}..={JOURNAL_FILE_BYTES_LIMIT} \
                 (at least twice group_commit_bytes_max)"
            ));
        }
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return fail(format!("shards must be in 1..={SHARDS_MAX}"));
        }
        if self.shard_cores.len() > SHARDS_MAX {
            return fail(format!("shard_cores may list at most {SHARDS_MAX} cores"));
        }
        if self.request_queue_depth_max == 0 || self.request_queue_depth_max > 1 << 20 {
            return fail("request_queue_depth_max must be in 1..=1048576".into());
        }
        if !(0.0..=1.0).contains(&self.log_cleaner_min_cleanable_ratio) {
            return fail("log.cleaner.min.cleanable.ratio must be in 0..=1".into());
        }
        if self.log_cleaner_delete_retention_ms > i64::MAX as u64 {
            return fail("log.cleaner.delete.retention.ms is too large".into());
        }
        if self.log_cleaner_backoff_ms > LOG_CLEANER_BACKOFF_MS_MAX {
            return fail(format!(
                "log.cleaner.backoff.ms must be at most {LOG_CLEANER_BACKOFF_MS_MAX}"
            ));
        }
        if self.offsets_retention_minutes == 0
            || self.offsets_retention_minutes > RETENTION_MINUTES_MAX
        {
            return fail(format!(
                "offsets.retention.minutes must be in 1..={RETENTION_MINUTES_MAX}"
            ));
        }
        if self.offsets_retention_check_interval_ms == 0
            || self.offsets_retention_check_interval_ms > RETENTION_CHECK_INTERVAL_MS_MAX
        {
            return fail(format!(
                "offsets.retention.check.interval.ms must be in 1..={RETENTION_CHECK_INTERVAL_MS_MAX}"
            ));
        }
        self.groups.validate().map_err(Error::InvalidConfig)
    }
}

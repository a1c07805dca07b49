//! Public commit and fetch types. The offsets themselves live in the lock-free
//! [`OffsetCache`](crate::cache::OffsetCache) of each offsets partition.

/// One partition's offset in a commit request.
///
/// The committed offset is the offset of the next record the group will read; the engine
/// stores what it is given and does not interpret it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetCommit<'a> {
    /// Topic name.
    pub topic: &'a str,
    /// Topic partition (non-negative).
    pub partition: i32,
    /// Offset of the next record to consume (non-negative).
    pub offset: i64,
    /// Leader epoch of the last consumed record, if the client knows it.
    pub leader_epoch: Option<i32>,
    /// Client metadata, at most `offset.metadata.max.bytes`.
    pub metadata: &'a str,
}

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedOffset {
    /// Offset of the next record to consume.
    pub offset: i64,
    /// Leader epoch, if given.
    pub leader_epoch: Option<i32>,
    /// Client metadata.
    pub metadata: String,
    /// When the engine accepted the commit, in milliseconds since the Unix epoch.
    pub commit_timestamp_ms: i64,
    /// When the offset expires, if the commit carried an explicit retention (v1 values).
    pub expire_timestamp_ms: Option<i64>,
}

/// A committed offset with its topic partition, as returned by
/// [`Engine::fetch_all_offsets`](crate::Engine::fetch_all_offsets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPartitionOffset {
    /// Topic name.
    pub topic: String,
    /// Topic partition.
    pub partition: i32,
    /// What is committed.
    pub committed: CommittedOffset,
}

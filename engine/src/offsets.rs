//! Public commit/fetch types and the per-partition table of latest committed offsets.
//!
//! The table is owned by the shard thread. Issue 4 replaces it with the lock-free
//! `OffsetCache` that any thread reads; until then fetches go through the shard.

use std::collections::HashMap;

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

type TopicOffsets = HashMap<String, HashMap<i32, CommittedOffset>>;

/// Latest committed offset per (group, topic, partition) of one offsets partition.
#[derive(Debug, Default)]
pub(crate) struct OffsetTable {
    groups: HashMap<String, TopicOffsets>,
}

impl OffsetTable {
    /// Stores a commit. Updating an existing key reuses its metadata buffer; only a new key
    /// allocates.
    pub(crate) fn upsert(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        value: CommittedOffsetRef<'_>,
    ) {
        let topics = match self.groups.get_mut(group) {
            Some(topics) => topics,
            None => self.groups.entry(group.to_owned()).or_default(),
        };
        let partitions = match topics.get_mut(topic) {
            Some(partitions) => partitions,
            None => topics.entry(topic.to_owned()).or_default(),
        };
        match partitions.get_mut(&partition) {
            Some(existing) => value.store_into(existing),
            None => {
                partitions.insert(partition, value.to_owned());
            }
        }
    }

    /// Applies a tombstone.
    pub(crate) fn remove(&mut self, group: &str, topic: &str, partition: i32) {
        let Some(topics) = self.groups.get_mut(group) else {
            return;
        };
        if let Some(partitions) = topics.get_mut(topic) {
            partitions.remove(&partition);
            if partitions.is_empty() {
                topics.remove(topic);
            }
        }
        if topics.is_empty() {
            self.groups.remove(group);
        }
    }

    pub(crate) fn get(&self, group: &str, topic: &str, partition: i32) -> Option<&CommittedOffset> {
        self.groups.get(group)?.get(topic)?.get(&partition)
    }

    pub(crate) fn group(&self, group: &str) -> Vec<TopicPartitionOffset> {
        let Some(topics) = self.groups.get(group) else {
            return Vec::new();
        };
        let mut all: Vec<TopicPartitionOffset> = topics
            .iter()
            .flat_map(|(topic, partitions)| {
                partitions
                    .iter()
                    .map(|(&partition, committed)| TopicPartitionOffset {
                        topic: topic.clone(),
                        partition,
                        committed: committed.clone(),
                    })
            })
            .collect();
        all.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        all
    }
}

/// A committed value borrowed from a request or a log record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CommittedOffsetRef<'a> {
    pub offset: i64,
    pub leader_epoch: Option<i32>,
    pub metadata: &'a str,
    pub commit_timestamp_ms: i64,
    pub expire_timestamp_ms: Option<i64>,
}

impl CommittedOffsetRef<'_> {
    fn to_owned(self) -> CommittedOffset {
        CommittedOffset {
            offset: self.offset,
            leader_epoch: self.leader_epoch,
            metadata: self.metadata.to_owned(),
            commit_timestamp_ms: self.commit_timestamp_ms,
            expire_timestamp_ms: self.expire_timestamp_ms,
        }
    }

    fn store_into(self, existing: &mut CommittedOffset) {
        existing.offset = self.offset;
        existing.leader_epoch = self.leader_epoch;
        existing.metadata.clear();
        existing.metadata.push_str(self.metadata);
        existing.commit_timestamp_ms = self.commit_timestamp_ms;
        existing.expire_timestamp_ms = self.expire_timestamp_ms;
    }
}

//! Offset reset (the admin's `kafka-consumer-groups --reset-offsets`): to the earliest or
//! latest offset, a given offset, the first offset at a timestamp, or shifted by N, with a
//! dry run. The broker owns the topic logs, so it supplies their bounds and timestamp index
//! through [`OffsetLookup`].

use super::{Engine, validate_group};
use crate::error::{Error, Result};
use crate::group::GroupError;
use crate::offsets::OffsetCommit;

/// Where to move a group's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetReset {
    /// The partition's log start offset (`--to-earliest`).
    Earliest,
    /// The partition's log end offset (`--to-latest`).
    Latest,
    /// This offset, clamped to the log's bounds (`--to-offset`).
    ToOffset(i64),
    /// The first offset whose timestamp is at or after this one (ms since the epoch), or the
    /// log end if there is none (`--to-datetime`, `--by-duration`).
    ToTimestamp(i64),
    /// The committed offset plus N (negative: back), clamped (`--shift-by`); from the log
    /// start where nothing is committed.
    ShiftBy(i64),
}

/// The broker's view of a topic partition's log, for [`Engine::reset_offsets`].
pub trait OffsetLookup {
    /// The log start offset.
    fn log_start_offset(&self, topic: &str, partition: i32) -> i64;
    /// The log end offset (the offset of the next record to be written).
    fn log_end_offset(&self, topic: &str, partition: i32) -> i64;
    /// The first offset whose timestamp is at or after `timestamp_ms`, if any (Kafka's
    /// ListOffsets by timestamp).
    fn offset_for_timestamp(&self, topic: &str, partition: i32, timestamp_ms: i64) -> Option<i64>;
}

/// One partition of a reset: what was committed and what is (or, in a dry run, would be).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The committed offset before the reset.
    pub previous: Option<i64>,
    /// The new offset.
    pub offset: i64,
}

impl Engine {
    /// Resets a group's committed offsets for `partitions` (all its committed partitions
    /// when empty). Refused with `NON_EMPTY_GROUP` ([`Error::Group`]) while the group has
    /// members, as Kafka's tool requires an inactive group; the offsets are then written as a
    /// simple commit, which the shard also refuses if a member joined meanwhile. With
    /// `dry_run` nothing is written. Returns the plan, sorted by topic and partition.
    pub fn reset_offsets(
        &self,
        group_id: &str,
        partitions: &[(&str, i32)],
        to: OffsetReset,
        lookup: &dyn OffsetLookup,
        dry_run: bool,
    ) -> Result<Vec<ResetOffset>> {
        validate_group(group_id)?;
        let described = self.describe_groups(&[group_id])?;
        if described.iter().any(|g| !g.members.is_empty()) {
            return Err(Error::Group(GroupError::NonEmptyGroup));
        }
        let committed = self.fetch_all_offsets(group_id)?;
        let targets: Vec<(String, i32)> = if partitions.is_empty() {
            committed
                .iter()
                .map(|c| (c.topic.clone(), c.partition))
                .collect()
        } else {
            partitions
                .iter()
                .map(|(t, p)| ((*t).to_owned(), *p))
                .collect()
        };
        let mut plan: Vec<ResetOffset> = targets
            .into_iter()
            .map(|(topic, partition)| {
                let previous = committed
                    .iter()
                    .find(|c| c.topic == topic && c.partition == partition)
                    .map(|c| c.committed.offset);
                let offset = new_offset(lookup, &topic, partition, previous, to);
                ResetOffset {
                    topic,
                    partition,
                    previous,
                    offset,
                }
            })
            .collect();
        plan.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        plan.dedup_by(|a, b| a.topic == b.topic && a.partition == b.partition);
        if !dry_run && !plan.is_empty() {
            let commits: Vec<OffsetCommit<'_>> = plan
                .iter()
                .map(|r| OffsetCommit {
                    topic: &r.topic,
                    partition: r.partition,
                    offset: r.offset,
                    leader_epoch: None,
                    metadata: "",
                })
                .collect();
            self.commit_offsets(group_id, &commits).wait()?;
        }
        Ok(plan)
    }
}

fn new_offset(
    lookup: &dyn OffsetLookup,
    topic: &str,
    partition: i32,
    previous: Option<i64>,
    to: OffsetReset,
) -> i64 {
    let start = lookup.log_start_offset(topic, partition).max(0);
    let end = lookup.log_end_offset(topic, partition).max(start);
    let wanted = match to {
        OffsetReset::Earliest => start,
        OffsetReset::Latest => end,
        OffsetReset::ToOffset(offset) => offset,
        OffsetReset::ToTimestamp(timestamp_ms) => lookup
            .offset_for_timestamp(topic, partition, timestamp_ms)
            .unwrap_or(end),
        OffsetReset::ShiftBy(n) => previous.unwrap_or(start).saturating_add(n),
    };
    wanted.clamp(start, end)
}

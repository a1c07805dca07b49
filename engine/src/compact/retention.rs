//! Offset retention (`offsets.retention.minutes`, checked every
//! `offsets.retention.check.interval.ms`), as Kafka's group coordinator does it since
//! KIP-211: the offsets of a group with members never expire; for a group without members
//! an offset expires when its explicit expire timestamp (v1 values) has passed, or, without
//! one, when the group has been empty for the retention period — measured from when it
//! became empty, or, for a group with no group state at all (a "simple" group that only
//! commits), from the offset's own commit timestamp.

use crate::cache::OffsetCache;

/// Most offsets one retention check expires; the rest wait for the next check, which the
/// shard then runs at once (an expiry storm is spread over several flushes).
pub const EXPIRIES_PER_CHECK_MAX: usize = 64 * 1024;

/// What the shard knows of a group's membership, for retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupActivity {
    /// The group has members: its offsets are kept.
    HasMembers,
    /// The group has had no members since this time (ms since the Unix epoch).
    EmptySince(i64),
    /// No group state (a group that only commits offsets): each offset ages from its commit.
    NoGroupState,
}

/// An offset to expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExpiredOffset {
    /// The offsets partition holding it.
    pub offsets_partition: u32,
    /// Group id.
    pub group: String,
    /// Topic.
    pub topic: String,
    /// Topic partition.
    pub partition: i32,
    /// The committed offset that expired.
    pub offset: i64,
}

/// Appends to `out` (up to [`EXPIRIES_PER_CHECK_MAX`] in all) the offsets of `cache` expired
/// at `now_ms`. Returns whether it stopped at the limit.
pub(crate) fn collect_expired(
    cache: &OffsetCache,
    offsets_partition: u32,
    now_ms: i64,
    retention_ms: i64,
    activity: &dyn Fn(&str) -> GroupActivity,
    out: &mut Vec<ExpiredOffset>,
) -> bool {
    let reader = cache.reader();
    let guard = reader.pin();
    let mut groups = Vec::new();
    guard.for_each_group(|group| groups.push(group.to_owned()));
    for group in groups {
        let base_ms = match activity(&group) {
            GroupActivity::HasMembers => continue,
            GroupActivity::EmptySince(since_ms) => Some(since_ms),
            GroupActivity::NoGroupState => None,
        };
        let mut full = false;
        guard.for_each_in_group(&group, |topic, partition, value| {
            if out.len() >= EXPIRIES_PER_CHECK_MAX {
                full = true;
                return;
            }
            let expired = if value.expire_timestamp_ms >= 0 {
                now_ms >= value.expire_timestamp_ms
            } else {
                let since = base_ms.unwrap_or(value.commit_timestamp_ms);
                since.saturating_add(retention_ms) <= now_ms
            };
            if expired {
                out.push(ExpiredOffset {
                    offsets_partition,
                    group: group.clone(),
                    topic: topic.to_owned(),
                    partition,
                    offset: value.offset,
                });
            }
        });
        if full {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{OffsetKey, OffsetValueRef};

    fn put(cache: &mut OffsetCache, group: &str, partition: i32, commit_ms: i64, expire_ms: i64) {
        let key = OffsetKey {
            group,
            topic: "t",
            partition,
        };
        let value = OffsetValueRef {
            offset: i64::from(partition) * 10,
            leader_epoch: -1,
            commit_timestamp_ms: commit_ms,
            expire_timestamp_ms: expire_ms,
            metadata: "",
        };
        cache.upsert(key, value, 0).unwrap();
    }

    #[test]
    fn expiry_follows_group_activity_and_explicit_timestamps() {
        let mut cache = OffsetCache::new();
        put(&mut cache, "simple", 0, 1_000, -1); // old commit: expires
        put(&mut cache, "simple", 1, 9_500, -1); // recent commit: kept
        put(&mut cache, "simple", 2, 9_900, 9_950); // explicit expiry passed
        put(&mut cache, "busy", 0, 0, 5); // members: kept whatever its age
        put(&mut cache, "empty", 0, 0, -1); // empty since 9000: kept
        let activity = |group: &str| match group {
            "busy" => GroupActivity::HasMembers,
            "empty" => GroupActivity::EmptySince(9_000),
            _ => GroupActivity::NoGroupState,
        };
        let mut out = Vec::new();
        assert!(!collect_expired(
            &cache, 0, 10_000, 2_000, &activity, &mut out
        ));
        out.sort_by_key(|e| (e.group.clone(), e.partition));
        let got: Vec<(&str, i32, i64)> = out
            .iter()
            .map(|e| (e.group.as_str(), e.partition, e.offset))
            .collect();
        assert_eq!(got, vec![("simple", 0, 0), ("simple", 2, 20)]);
        out.clear();
        collect_expired(&cache, 0, 11_000, 2_000, &activity, &mut out);
        assert!(out.iter().any(|e| e.group == "empty"));
    }
}

//! The fleet model: consumer groups of members, each group reading topics × partitions that
//! are assigned to its members, and the commit policy every member follows.
//!
//! A *key* is one (group, topic, partition): what `__consumer_offsets` stores one value for.
//! Keys are numbered densely; a member owns a contiguous range of its group's keys (the
//! group's partitions, topic by topic, split into equal ranges, as Kafka's range assignor
//! does per topic), so a commit request is one member's range.

use clap::ValueEnum;
use serde::Serialize;

/// Most groups a fleet may have.
pub const GROUPS_MAX: usize = 1_000_000;
/// Most members a fleet may have in total.
pub const MEMBERS_MAX: usize = 10_000_000;
/// Most keys a fleet may have in total (each costs the generator 16 bytes of state).
pub const KEYS_MAX: usize = 50_000_000;
/// Most topics one group reads.
pub const TOPICS_PER_GROUP_MAX: usize = 10_000;
/// Most partitions of one topic.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 100_000;
/// Most keys in one commit request (the engine's own cap is higher).
pub const KEYS_PER_REQUEST_MAX: usize = 4096;

/// When a member commits, and whether it waits for the answer.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitPolicy {
    /// `enable.auto.commit`: every `auto.commit.interval.ms` the client commits the position
    /// of its last poll, without waiting for the answer.
    Auto,
    /// Commit after every poll batch, one commit in flight at most: a batch that ends while
    /// the previous commit is unanswered skips its commit (the next one covers it).
    PerPoll,
    /// `commitAsync()` after every poll batch, without client-side coalescing: every commit
    /// is sent, so a slow coordinator accumulates a backlog of redundant commits.
    Async,
    /// `commitSync()` after every poll batch: the poll loop blocks until the answer, then
    /// processes the next batch.
    Sync,
}

impl CommitPolicy {
    pub fn name(self) -> &'static str {
        match self {
            CommitPolicy::Auto => "auto",
            CommitPolicy::PerPoll => "per-poll",
            CommitPolicy::Async => "async",
            CommitPolicy::Sync => "sync",
        }
    }
}

/// One kind of group in a fleet: `count` groups alike.
#[derive(Clone, Debug)]
pub struct GroupSpec {
    /// Group names are `<prefix>-<index>`, or just `prefix` when `count` is 1 and `shared`.
    pub prefix: String,
    pub count: usize,
    pub members: u32,
    /// Topic names are `<group>-t<i>`, or `<topic_prefix>-<i>` when set (shared topics).
    pub topics: usize,
    pub partitions_per_topic: u32,
    /// A group shared by many applications (hot-group); its commits are also counted apart.
    pub hot: bool,
}

/// Everything that shapes a fleet.
#[derive(Clone, Debug)]
pub struct FleetSpec {
    pub kinds: Vec<GroupSpec>,
    pub policy: CommitPolicy,
    pub auto_commit_interval_ms: u64,
    /// Records one poll returns (`max.poll.records`), spread over the member's partitions.
    pub records_per_poll: u32,
    /// Records per second one member processes; sets the poll cadence.
    pub records_per_sec: f64,
    pub metadata_bytes: usize,
}

/// A built group.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub topics: Vec<String>,
    pub partitions_per_topic: u32,
    pub first_key: usize,
    pub first_member: usize,
    pub members: usize,
    pub hot: bool,
}

impl Group {
    pub fn keys(&self) -> usize {
        self.topics.len() * self.partitions_per_topic as usize
    }

    /// Topic and partition of the group's `local`-th key.
    pub fn topic_partition(&self, local: usize) -> (&str, i32) {
        let per_topic = self.partitions_per_topic as usize;
        let partition = i32::try_from(local % per_topic).unwrap_or(i32::MAX);
        (&self.topics[local / per_topic], partition)
    }
}

/// A built member: a contiguous range of its group's keys.
#[derive(Debug, Clone, Copy)]
pub struct Member {
    pub group: u32,
    /// Global index of its first key.
    pub first_key: usize,
    pub keys: u32,
    /// How far each of its partitions' positions moves per poll.
    pub step: i64,
}

/// The fleet, built once and shared read-only by every generator thread.
#[derive(Debug)]
pub struct Fleet {
    pub groups: Vec<Group>,
    pub members: Vec<Member>,
    pub keys: usize,
    pub spec: FleetSpec,
    pub metadata: String,
}

impl Fleet {
    /// Builds the fleet, checking every count against its limit.
    pub fn build(spec: FleetSpec) -> Result<Fleet, String> {
        let mut groups = Vec::new();
        let mut members = Vec::new();
        let mut keys = 0usize;
        for kind in &spec.kinds {
            check_kind(kind)?;
            if groups.len() + kind.count > GROUPS_MAX {
                return Err(format!("more than {GROUPS_MAX} groups"));
            }
            for index in 0..kind.count {
                let name = if kind.count == 1 && kind.hot {
                    kind.prefix.clone()
                } else {
                    format!("{}-{index:06}", kind.prefix)
                };
                let topics = (0..kind.topics).map(|t| format!("{name}-t{t}")).collect();
                let group = Group {
                    name,
                    topics,
                    partitions_per_topic: kind.partitions_per_topic,
                    first_key: keys,
                    first_member: members.len(),
                    members: kind.members as usize,
                    hot: kind.hot,
                };
                let group_keys = group.keys();
                assign(&spec, &group, groups.len() as u32, &mut members)?;
                keys += group_keys;
                if keys > KEYS_MAX || members.len() > MEMBERS_MAX {
                    return Err(format!(
                        "the fleet is over its limits ({KEYS_MAX} keys, {MEMBERS_MAX} members)"
                    ));
                }
                groups.push(group);
            }
        }
        if members.is_empty() {
            return Err("the fleet has no members".into());
        }
        let metadata = "m".repeat(spec.metadata_bytes);
        Ok(Fleet {
            groups,
            members,
            keys,
            spec,
            metadata,
        })
    }

    /// Seconds between two commits of one member, as its policy sets them.
    pub fn commit_interval_secs(&self) -> f64 {
        match self.spec.policy {
            CommitPolicy::Auto => self.spec.auto_commit_interval_ms as f64 / 1000.0,
            _ => f64::from(self.spec.records_per_poll) / self.spec.records_per_sec,
        }
    }

    /// The offset member `m` commits for its key `key` in its `seq`-th commit: increasing per
    /// key, and starting from a different origin per key so that a mixed-up key shows.
    pub fn offset(&self, member: &Member, key: usize, seq: u64) -> i64 {
        key_origin(key) + (seq as i64 + 1) * member.step
    }

    /// Fills `request` with member `member`'s `seq`-th commit, one offset per key it owns.
    /// The offsets borrow the fleet's names and the buffer is reused: nothing here allocates
    /// per commit (the engine copies what it keeps).
    pub fn fill_commit<'f>(
        &'f self,
        request: &mut Vec<coffer::OffsetCommit<'f>>,
        member: &Member,
        seq: u64,
    ) {
        let group = self.group_of(member);
        request.clear();
        request.extend((0..member.keys as usize).map(|k| {
            let key = member.first_key + k;
            let (topic, partition) = group.topic_partition(key - group.first_key);
            coffer::OffsetCommit {
                topic,
                partition,
                offset: self.offset(member, key, seq),
                leader_epoch: None,
                metadata: self.metadata.as_str(),
            }
        }));
    }

    /// Whether `offset` is one that [`Fleet::offset`] produces for `key` at some sequence
    /// number ≥ `seq_min`.
    pub fn is_offset_at_or_after(
        &self,
        member: &Member,
        key: usize,
        offset: i64,
        seq_min: u64,
    ) -> bool {
        let from_origin = offset - key_origin(key);
        from_origin > 0
            && from_origin % member.step == 0
            && (from_origin / member.step - 1) as u64 >= seq_min
    }

    /// The group owning member `m`.
    pub fn group_of(&self, member: &Member) -> &Group {
        &self.groups[member.group as usize]
    }
}

/// Origins are multiples of a prime far above any step, so two keys' offset sequences never
/// meet unless the step divides the difference of their indices modulo 1009: a value stored
/// under the wrong key fails [`Fleet::is_offset_at_or_after`].
fn key_origin(key: usize) -> i64 {
    (key % 1009) as i64 * 1_000_000_007
}

fn check_kind(kind: &GroupSpec) -> Result<(), String> {
    if kind.members == 0 {
        return Err("groups need at least 1 member".into());
    }
    if kind.topics == 0 || kind.topics > TOPICS_PER_GROUP_MAX {
        return Err(format!(
            "topics per group must be in 1..={TOPICS_PER_GROUP_MAX}"
        ));
    }
    if kind.partitions_per_topic == 0 || kind.partitions_per_topic > PARTITIONS_PER_TOPIC_MAX {
        return Err(format!(
            "partitions per topic must be in 1..={PARTITIONS_PER_TOPIC_MAX}"
        ));
    }
    let keys = kind.topics * kind.partitions_per_topic as usize;
    if (kind.members as usize) > keys {
        return Err(format!(
            "{} members per group but only {keys} partitions: every member needs one",
            kind.members
        ));
    }
    if keys.div_ceil(kind.members as usize) > KEYS_PER_REQUEST_MAX {
        return Err(format!(
            "a member would own more than {KEYS_PER_REQUEST_MAX} partitions; add members"
        ));
    }
    Ok(())
}

/// Splits the group's keys into `members` contiguous, near-equal ranges.
fn assign(
    spec: &FleetSpec,
    group: &Group,
    index: u32,
    out: &mut Vec<Member>,
) -> Result<(), String> {
    let keys = group.keys();
    let members = group.members;
    for m in 0..members {
        let start = keys * m / members;
        let end = keys * (m + 1) / members;
        let owned = u32::try_from(end - start).map_err(|_| "too many keys".to_string())?;
        // At least 2: with a step of 1 every offset past a key's origin would look valid.
        let step = i64::from((spec.records_per_poll / owned.max(1)).max(2));
        out.push(Member {
            group: index,
            first_key: group.first_key + start,
            keys: owned,
            step,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(members: u32, topics: usize, partitions: u32) -> FleetSpec {
        FleetSpec {
            kinds: vec![GroupSpec {
                prefix: "g".into(),
                count: 3,
                members,
                topics,
                partitions_per_topic: partitions,
                hot: false,
            }],
            policy: CommitPolicy::Auto,
            auto_commit_interval_ms: 5000,
            records_per_poll: 500,
            records_per_sec: 5000.0,
            metadata_bytes: 0,
        }
    }

    #[test]
    fn members_own_disjoint_ranges_covering_the_group() {
        let fleet = Fleet::build(spec(3, 2, 4)).unwrap();
        assert_eq!(fleet.keys, 24);
        assert_eq!(fleet.members.len(), 9);
        for group in &fleet.groups {
            let members = &fleet.members[group.first_member..group.first_member + group.members];
            let mut next = group.first_key;
            for m in members {
                assert_eq!(m.first_key, next);
                next += m.keys as usize;
            }
            assert_eq!(next, group.first_key + group.keys());
        }
        assert_eq!(fleet.groups[1].topic_partition(5), ("g-000001-t1", 1));
        assert!((fleet.commit_interval_secs() - 5.0).abs() < 1e-9);
    }

    #[test]
    fn offsets_increase_and_are_recognised() {
        let fleet = Fleet::build(spec(2, 1, 4)).unwrap();
        let member = fleet.members[0];
        assert_eq!(member.step, 250);
        let key = member.first_key;
        let a = fleet.offset(&member, key, 0);
        let b = fleet.offset(&member, key, 1);
        assert!(b > a && a > 0);
        assert!(fleet.is_offset_at_or_after(&member, key, b, 1));
        assert!(!fleet.is_offset_at_or_after(&member, key, a, 1));
        assert!(!fleet.is_offset_at_or_after(&member, key, b + 1, 0));
        assert!(!fleet.is_offset_at_or_after(&member, key + 1, b, 0));
    }

    #[test]
    fn limits_are_enforced() {
        assert!(Fleet::build(spec(5, 1, 4)).is_err());
        assert!(Fleet::build(spec(0, 1, 4)).is_err());
        assert!(Fleet::build(spec(1, 1, 5000)).is_err());
    }
}

//! After the run: reopen the data directory and check every key against what was
//! acknowledged; measure the live data (what a perfectly compacted log would hold).

use coffer::Engine;
use coffer::format::{
    BATCH_HEADER_BYTES, BatchParams, BatchWriter, OffsetCommitKey, OffsetCommitValue,
};

use crate::fleet::Fleet;

const VIOLATION_EXAMPLES_MAX: usize = 10;

/// What the generator knows of each member, by global member index.
pub struct Expected {
    /// Last acknowledged sequence number; -1 if none.
    pub last_acked_seq: Vec<i64>,
    /// Last issued sequence number, -1 if none; `None` when unknown (the crashed child's
    /// issues are not reported, only its acks).
    pub last_issued_seq: Option<Vec<i64>>,
}

/// Outcome of checking the reopened engine.
#[derive(Default, Debug)]
pub struct Verification {
    /// Keys with an acknowledged offset (each one checked).
    pub keys: u64,
    /// Keys whose stored offset is missing, below the last ack, not one the generator could
    /// have committed, or beyond the last one issued.
    pub violations: u64,
    pub examples: Vec<String>,
    /// Keys with any stored offset.
    pub live_keys: u64,
    /// Bytes those keys take as records, plus one batch header per offsets partition
    /// holding any: the size of a perfectly compacted log.
    pub live_bytes: u64,
}

/// Fetches every key of the fleet from `engine` and compares it with `expected`.
pub fn verify(engine: &Engine, fleet: &Fleet, expected: &Expected) -> coffer::Result<Verification> {
    let mut verification = Verification::default();
    let mut partitions_with_keys =
        vec![false; engine.config().offsets_topic_num_partitions as usize];
    let mut buffer = Vec::new();
    for group in &fleet.groups {
        let wanted: Vec<(&str, i32)> = (0..group.keys())
            .map(|k| group.topic_partition(k))
            .collect();
        let fetched = engine.fetch_offsets(&group.name, &wanted)?;
        for m in group.first_member..group.first_member + group.members {
            let member = &fleet.members[m];
            let acked = expected.last_acked_seq[m];
            let issued = expected.last_issued_seq.as_ref().map(|seqs| seqs[m]);
            for k in 0..member.keys as usize {
                let key = member.first_key + k;
                let local = key - group.first_key;
                let stored = fetched[local].as_ref();
                if acked >= 0 {
                    verification.keys += 1;
                }
                if let Some(stored) = stored {
                    verification.live_keys += 1;
                    let (topic, partition) = wanted[local];
                    verification.live_bytes +=
                        record_bytes(&mut buffer, &group.name, topic, partition, stored) as u64;
                    if let Some(seen) =
                        partitions_with_keys.get_mut(engine.partition_for(&group.name) as usize)
                    {
                        *seen = true;
                    }
                }
                let problem = check(fleet, m, key, stored.map(|c| c.offset), acked, issued);
                if let Some(problem) = problem {
                    verification.violations += 1;
                    if verification.examples.len() < VIOLATION_EXAMPLES_MAX {
                        let (topic, partition) = wanted[local];
                        verification
                            .examples
                            .push(format!("{} {topic}-{partition}: {problem}", group.name));
                    }
                }
            }
        }
    }
    let headers = partitions_with_keys.iter().filter(|&&seen| seen).count();
    verification.live_bytes += (headers * BATCH_HEADER_BYTES) as u64;
    Ok(verification)
}

fn check(
    fleet: &Fleet,
    m: usize,
    key: usize,
    stored: Option<i64>,
    acked: i64,
    issued: Option<i64>,
) -> Option<String> {
    let member = &fleet.members[m];
    let acked_offset = (acked >= 0).then(|| fleet.offset(member, key, acked as u64));
    match (stored, acked_offset) {
        (None, Some(want)) => Some(format!("offset {want} acknowledged, none stored")),
        (None, None) => None,
        (Some(offset), _)
            if !fleet.is_offset_at_or_after(member, key, offset, acked.max(0) as u64) =>
        {
            Some(match acked_offset {
                Some(want) if offset < want => {
                    format!("offset {want} acknowledged, {offset} stored (lost commit)")
                }
                _ => format!("offset {offset} stored, which this key was never committed with"),
            })
        }
        (Some(offset), _) => match issued {
            Some(issued) if issued < 0 || offset > fleet.offset(member, key, issued as u64) => {
                Some(format!(
                    "offset {offset} stored, beyond the last one issued"
                ))
            }
            _ => None,
        },
    }
}

/// Encoded size of one stored offset as a record (without its batch's header).
fn record_bytes(
    buffer: &mut Vec<u8>,
    group: &str,
    topic: &str,
    partition: i32,
    stored: &coffer::CommittedOffset,
) -> usize {
    buffer.clear();
    let mut writer = BatchWriter::begin(
        buffer,
        BatchParams {
            base_timestamp: stored.commit_timestamp_ms,
            ..BatchParams::default()
        },
    );
    let key = OffsetCommitKey {
        group,
        topic,
        partition,
    };
    let value = OffsetCommitValue {
        offset: stored.offset,
        leader_epoch: stored.leader_epoch.unwrap_or(-1),
        metadata: &stored.metadata,
        commit_timestamp: stored.commit_timestamp_ms,
        expire_timestamp: stored.expire_timestamp_ms.unwrap_or(-1),
        topic_id: None,
    };
    let version = value.version_for_write();
    writer.append_offset_commit(stored.commit_timestamp_ms, &key, Some((&value, version)));
    writer.finish() - BATCH_HEADER_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{CommitPolicy, FleetSpec, GroupSpec};

    fn fleet() -> Fleet {
        Fleet::build(FleetSpec {
            kinds: vec![GroupSpec {
                prefix: "g".into(),
                count: 2,
                members: 2,
                topics: 1,
                partitions_per_topic: 4,
                hot: false,
            }],
            policy: CommitPolicy::Sync,
            auto_commit_interval_ms: 5000,
            records_per_poll: 100,
            records_per_sec: 1000.0,
            metadata_bytes: 0,
        })
        .expect("valid fleet")
    }

    #[test]
    fn the_acknowledged_offset_or_a_later_issued_one_passes() {
        let fleet = fleet();
        let key = fleet.members[1].first_key;
        let at = |seq| Some(fleet.offset(&fleet.members[1], key, seq));
        assert_eq!(check(&fleet, 1, key, at(3), 3, Some(5)), None);
        assert_eq!(check(&fleet, 1, key, at(5), 3, Some(5)), None);
        assert_eq!(check(&fleet, 1, key, at(5), 3, None), None);
        // Nothing acknowledged, nothing stored; or something issued and stored unacked.
        assert_eq!(check(&fleet, 1, key, None, -1, Some(-1)), None);
        assert_eq!(check(&fleet, 1, key, at(0), -1, Some(0)), None);
    }

    #[test]
    fn lost_phantom_and_foreign_offsets_are_violations() {
        let fleet = fleet();
        let member = &fleet.members[1];
        let key = member.first_key;
        let at = |seq| Some(fleet.offset(member, key, seq));
        let lost = check(&fleet, 1, key, at(2), 3, Some(5)).expect("lost commit");
        assert!(lost.contains("lost commit"), "{lost}");
        let missing = check(&fleet, 1, key, None, 0, Some(0)).expect("missing");
        assert!(missing.contains("none stored"), "{missing}");
        let phantom = check(&fleet, 1, key, at(6), 3, Some(5)).expect("beyond issued");
        assert!(phantom.contains("beyond the last one issued"), "{phantom}");
        // The neighbouring key's offset: a mix-up of partitions.
        let foreign = Some(fleet.offset(member, key + 1, 4));
        let mixed = check(&fleet, 1, key, foreign, 3, Some(5)).expect("foreign");
        assert!(mixed.contains("never committed with"), "{mixed}");
    }
}

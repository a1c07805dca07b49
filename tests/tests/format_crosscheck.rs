//! Cross-checks `coffer::format` against an implementation we did not write: the
//! `kafka-protocol` crate (0.18), `records::{RecordBatchEncoder, RecordBatchDecoder}`.
//!
//! Both directions: kafka-protocol decodes the batches we encode (offsets, timestamps, keys,
//! values, control/transactional flags, producer fields), and we parse the batches it encodes
//! (framing and CRC-32C checked by `parse_batch`, every field equal).
//!
//! kafka-protocol 0.18 has no `__consumer_offsets` key/value schemas (no OffsetCommitKey,
//! OffsetCommitValue, GroupMetadataKey/Value among its generated messages) and its primitive
//! type encoders are crate-private, so record keys and values are cross-checked here as opaque
//! bytes: what we put in, it reads out verbatim, and vice versa; our schema decoders then read
//! the bytes that came back through kafka-protocol. The schema bytes themselves are pinned by
//! known-bytes unit tests in `engine/src/format/schema.rs` and the worked example.

use bytes::{Bytes, BytesMut};
use coffer::format::{
    BatchParams, BatchWriter, ControlRecordType, EndTransactionMarker, OffsetCommitKey,
    OffsetCommitValue, RecordKey, decode_key, parse_batch,
};
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, Record,
    RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;

/// The worked example of docs/format.md (also asserted byte for byte in the engine's tests).
const WORKED_EXAMPLE_HEX: &str = "00000000000000000000009fffffffff02a2ab92a50000000000010000018bcfe568000000018bcfe56805ffffffffffffffffffffffffffff000000026c00000030000100086d792d67726f757000066f726465727300000000300003000000000000002a0000000500000000018bcfe56800006c000a0230000100086d792d67726f757000066f72646572730000000130000300000000000000110000000500000000018bcfe5680500";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

struct Commit {
    group: &'static str,
    topic: &'static str,
    partition: i32,
    offset: i64,
    metadata: &'static str,
    timestamp: i64,
    /// `None` = tombstone; else the value version.
    version: Option<i16>,
}

fn commits() -> Vec<Commit> {
    let mut v = Vec::new();
    for i in 0..12 {
        v.push(Commit {
            group: if i % 2 == 0 {
                "payments-consumer"
            } else {
                "analytics.streams-app-7"
            },
            topic: "orders.v2",
            partition: i,
            offset: 1_000_000 + i64::from(i) * 37,
            metadata: if i % 3 == 0 { "" } else { "checkpoint:abc" },
            // Not monotonic, to exercise negative deltas and the max timestamp.
            timestamp: 1_700_000_000_000 + i64::from((i * 7) % 5),
            version: match i % 6 {
                5 => None,
                n => Some(n as i16),
            },
        });
    }
    v
}

fn value_of(c: &Commit) -> OffsetCommitValue<'static> {
    OffsetCommitValue {
        offset: c.offset,
        leader_epoch: 3,
        metadata: c.metadata,
        commit_timestamp: c.timestamp,
        expire_timestamp: if c.version == Some(1) {
            c.timestamp + 86_400_000
        } else {
            -1
        },
        topic_id: if c.version == Some(4) {
            Some([7; 16])
        } else {
            None
        },
    }
}

fn encode_ours(params: BatchParams, commits: &[Commit]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = BatchWriter::begin(&mut out, params);
    for c in commits {
        let key = OffsetCommitKey {
            group: c.group,
            topic: c.topic,
            partition: c.partition,
        };
        let value = value_of(c);
        w.append_offset_commit(c.timestamp, &key, c.version.map(|v| (&value, v)));
    }
    w.finish();
    out
}

fn decode_theirs(bytes: &[u8]) -> Vec<Record> {
    let mut buf = Bytes::copy_from_slice(bytes);
    let set = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes our batch");
    assert_eq!(set.version, 2);
    assert_eq!(set.compression, Compression::None);
    assert!(buf.is_empty(), "kafka-protocol left bytes unread");
    set.records
}

fn encode_theirs(records: &[Record]) -> Vec<u8> {
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("kafka-protocol encodes");
    buf.to_vec()
}

#[allow(clippy::too_many_arguments)]
fn their_record(
    offset: i64,
    sequence: i32,
    timestamp: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    producer: (i64, i16),
    leader_epoch: i32,
    transactional: bool,
    control: bool,
) -> Record {
    Record {
        transactional,
        control,
        delete_horizon: false,
        partition_leader_epoch: leader_epoch,
        producer_id: producer.0,
        producer_epoch: producer.1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence,
        timestamp,
        key: key.map(Bytes::from),
        value: value.map(Bytes::from),
        headers: Default::default(),
    }
}

#[test]
fn kafka_protocol_decodes_our_offset_commit_batch() {
    let params = BatchParams {
        base_offset: 5_000,
        partition_leader_epoch: 12,
        ..BatchParams::default()
    };
    let commits = commits();
    let bytes = encode_ours(params, &commits);
    let records = decode_theirs(&bytes);
    assert_eq!(records.len(), commits.len());
    for (i, (r, c)) in records.iter().zip(&commits).enumerate() {
        assert_eq!(r.offset, 5_000 + i as i64);
        assert_eq!(r.timestamp, c.timestamp);
        assert_eq!(r.timestamp_type, TimestampType::Creation);
        assert!(!r.transactional && !r.control);
        assert_eq!(r.producer_id, NO_PRODUCER_ID);
        assert_eq!(r.producer_epoch, NO_PRODUCER_EPOCH);
        assert_eq!(r.partition_leader_epoch, 12);
        assert!(r.headers.is_empty());
        // Key and value came back verbatim: re-encode them independently and compare.
        let key = OffsetCommitKey {
            group: c.group,
            topic: c.topic,
            partition: c.partition,
        };
        let mut expected_key = Vec::new();
        key.encode_into(&mut expected_key);
        let their_key = r.key.as_ref().expect("key");
        assert_eq!(their_key.as_ref(), expected_key.as_slice());
        assert_eq!(decode_key(their_key), Ok(RecordKey::OffsetCommit(key)));
        match c.version {
            None => assert!(r.value.is_none(), "tombstone"),
            Some(version) => {
                let value = value_of(c);
                let mut expected = Vec::new();
                value.encode_into(version, &mut expected);
                let theirs = r.value.as_ref().expect("value");
                assert_eq!(theirs.as_ref(), expected.as_slice());
                let (v, decoded) = OffsetCommitValue::decode(theirs).expect("decodes");
                assert_eq!(v, version);
                assert_eq!(decoded.offset, c.offset);
                assert_eq!(decoded.metadata, c.metadata);
            }
        }
    }
}

#[test]
fn kafka_protocol_decodes_our_transactional_batch_and_markers() {
    let producer = (90_210_i64, 4_i16);
    let params = BatchParams {
        base_offset: 77,
        producer_id: producer.0,
        producer_epoch: producer.1,
        base_sequence: 10,
        transactional: true,
        ..BatchParams::default()
    };
    let bytes = encode_ours(params, &commits()[..3]);
    let records = decode_theirs(&bytes);
    let mut info_buf = Bytes::copy_from_slice(&bytes);
    let info = RecordBatchDecoder::decode_batch_info(&mut info_buf).expect("batch info");
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].base_sequence, 10);
    assert_eq!(info[0].record_count, 3);
    assert!(info[0].transactional && !info[0].control);
    for (i, r) in records.iter().enumerate() {
        assert!(r.transactional && !r.control);
        assert_eq!((r.producer_id, r.producer_epoch), producer);
        assert_eq!(r.sequence, 10 + i as i32);
        assert_eq!(r.offset, 77 + i as i64);
    }

    for control_type in [ControlRecordType::Commit, ControlRecordType::Abort] {
        let marker = EndTransactionMarker {
            control_type,
            coordinator_epoch: 31,
        };
        let mut out = Vec::new();
        let mut w = BatchWriter::begin(
            &mut out,
            BatchParams {
                base_offset: 80,
                producer_id: producer.0,
                producer_epoch: producer.1,
                transactional: true,
                control: true,
                ..BatchParams::default()
            },
        );
        w.append_control(1_700_000_000_999, &marker);
        w.finish();
        let records = decode_theirs(&out);
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert!(r.transactional && r.control);
        assert_eq!((r.producer_id, r.producer_epoch), producer);
        assert_eq!((r.offset, r.timestamp), (80, 1_700_000_000_999));
        let key = r.key.as_ref().expect("control key");
        let code: i16 = match control_type {
            ControlRecordType::Abort => 0,
            ControlRecordType::Commit => 1,
        };
        assert_eq!(
            key.as_ref(),
            [0, 0, code.to_be_bytes()[0], code.to_be_bytes()[1]]
        );
        assert_eq!(
            r.value.as_ref().expect("marker value").as_ref(),
            [0, 0, 0, 0, 0, 31]
        );
    }
}

#[test]
fn kafka_protocol_decodes_the_worked_example() {
    let bytes = unhex(WORKED_EXAMPLE_HEX);
    let records = decode_theirs(&bytes);
    assert_eq!(records.len(), 2);
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), [0, 1]);
    assert_eq!(records[1].timestamp, 1_700_000_000_005);
    let key = decode_key(records[0].key.as_ref().expect("key")).expect("our key");
    assert_eq!(
        key,
        RecordKey::OffsetCommit(OffsetCommitKey {
            group: "my-group",
            topic: "orders",
            partition: 0
        })
    );
    let (version, value) =
        OffsetCommitValue::decode(records[0].value.as_ref().expect("value")).expect("our value");
    assert_eq!((version, value.offset, value.leader_epoch), (3, 42, 5));
}

#[test]
fn we_parse_kafka_protocol_offset_commit_batches() {
    let commits = commits();
    let base_offset = 1_234;
    let records: Vec<Record> = commits
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut key = Vec::new();
            OffsetCommitKey {
                group: c.group,
                topic: c.topic,
                partition: c.partition,
            }
            .encode_into(&mut key);
            let value = c.version.map(|v| {
                let mut out = Vec::new();
                value_of(c).encode_into(v, &mut out);
                out
            });
            their_record(
                base_offset + i as i64,
                -1 + i as i32, // base sequence -1: not idempotent
                c.timestamp,
                Some(key),
                value,
                (NO_PRODUCER_ID, NO_PRODUCER_EPOCH),
                NO_PARTITION_LEADER_EPOCH,
                false,
                false,
            )
        })
        .collect();
    let bytes = encode_theirs(&records);
    let view = parse_batch(&bytes).expect("we parse kafka-protocol's batch (CRC matches)");
    assert_eq!(view.total_bytes(), bytes.len());
    let h = view.header;
    assert_eq!(h.base_offset, base_offset);
    assert_eq!(h.records_count, commits.len() as i32);
    assert_eq!(h.last_offset_delta, commits.len() as i32 - 1);
    assert_eq!(
        h.base_timestamp,
        commits.iter().map(|c| c.timestamp).min().expect("some")
    );
    assert_eq!(
        h.max_timestamp,
        commits.iter().map(|c| c.timestamp).max().expect("some")
    );
    assert_eq!(
        (h.producer_id, h.producer_epoch, h.base_sequence),
        (-1, -1, -1)
    );
    assert_eq!(h.partition_leader_epoch, -1);
    assert!(!h.is_transactional() && !h.is_control());
    for (r, (theirs, c)) in view.records().zip(records.iter().zip(&commits)) {
        let r = r.expect("record");
        assert_eq!(r.offset(&h), theirs.offset);
        assert_eq!(r.timestamp(&h), theirs.timestamp);
        assert_eq!(r.key, theirs.key.as_deref());
        assert_eq!(r.value, theirs.value.as_deref());
        match decode_key(r.key.expect("key")).expect("key decodes") {
            RecordKey::OffsetCommit(k) => {
                assert_eq!(
                    (k.group, k.topic, k.partition),
                    (c.group, c.topic, c.partition)
                )
            }
            other => panic!("unexpected key {other:?}"),
        }
        if let Some(value) = r.value {
            let (version, v) = OffsetCommitValue::decode(value).expect("value decodes");
            assert_eq!(Some(version), c.version);
            assert_eq!(v.offset, c.offset);
        }
    }
    // And our encoding of the same records is byte-identical to theirs.
    let ours = encode_ours(
        BatchParams {
            base_offset,
            base_timestamp: h.base_timestamp,
            ..BatchParams::default()
        },
        &commits,
    );
    assert_eq!(ours, bytes, "our bytes differ from kafka-protocol's");
}

#[test]
fn we_parse_kafka_protocol_control_batches() {
    for (code, expected) in [
        (0i16, ControlRecordType::Abort),
        (1, ControlRecordType::Commit),
    ] {
        let mut key = vec![0, 0];
        key.extend_from_slice(&code.to_be_bytes());
        let value = vec![0, 0, 0, 0, 1, 2];
        let record = their_record(
            500,
            -1,
            1_700_000_000_000,
            Some(key),
            Some(value),
            (42, 7),
            3,
            true,
            true,
        );
        let bytes = encode_theirs(std::slice::from_ref(&record));
        let view = parse_batch(&bytes).expect("parses");
        let h = view.header;
        assert!(h.is_control() && h.is_transactional());
        assert_eq!((h.producer_id, h.producer_epoch), (42, 7));
        assert_eq!((h.base_offset, h.partition_leader_epoch), (500, 3));
        let recs: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
        assert_eq!(recs.len(), 1);
        let marker =
            EndTransactionMarker::decode(recs[0].key.expect("key"), recs[0].value).expect("marker");
        assert_eq!(marker.control_type, expected);
        assert_eq!(marker.coordinator_epoch, 0x0102);
        // Our encoding of the same marker is byte-identical.
        let mut ours = Vec::new();
        let mut w = BatchWriter::begin(
            &mut ours,
            BatchParams {
                base_offset: 500,
                partition_leader_epoch: 3,
                producer_id: 42,
                producer_epoch: 7,
                transactional: true,
                control: true,
                ..BatchParams::default()
            },
        );
        w.append_control(1_700_000_000_000, &marker);
        w.finish();
        assert_eq!(ours, bytes);
    }
}

/// (timestamp, key, value) of one record.
type RawRecord = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn arb_records() -> impl Strategy<Value = Vec<RawRecord>> {
    proptest::collection::vec(
        (
            1_600_000_000_000i64..1_800_000_000_000,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        ),
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random batches: they encode, we parse; we encode, they decode; the two encodings of the
    /// same records are identical.
    #[test]
    fn random_batches_agree_both_ways(
        records in arb_records(),
        base_offset in 0i64..1 << 40,
        leader_epoch in -1i32..1000,
        producer_id in -1i64..1 << 40,
        producer_epoch in -1i16..100,
        transactional: bool,
    ) {
        let base_sequence = if producer_id >= 0 { 0 } else { -1 };
        let theirs: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, (ts, k, v))| their_record(
                base_offset + i as i64,
                base_sequence + i as i32,
                *ts,
                k.clone(),
                v.clone(),
                (producer_id, producer_epoch),
                leader_epoch,
                transactional,
                false,
            ))
            .collect();
        let their_bytes = encode_theirs(&theirs);
        let view = parse_batch(&their_bytes).expect("we parse theirs");
        let h = view.header;
        prop_assert_eq!(h.records_count as usize, records.len());
        prop_assert_eq!((h.producer_id, h.producer_epoch, h.base_sequence), (producer_id, producer_epoch, base_sequence));
        prop_assert_eq!(h.partition_leader_epoch, leader_epoch);
        prop_assert_eq!(h.is_transactional(), transactional);
        for (r, t) in view.records().zip(&theirs) {
            let r = r.expect("record");
            prop_assert_eq!(r.offset(&h), t.offset);
            prop_assert_eq!(r.timestamp(&h), t.timestamp);
            prop_assert_eq!(r.key, t.key.as_deref());
            prop_assert_eq!(r.value, t.value.as_deref());
        }

        // kafka-protocol uses the smallest timestamp as the base; so does this writer when told.
        let mut ours = Vec::new();
        let mut w = BatchWriter::begin(&mut ours, BatchParams {
            base_offset,
            base_timestamp: h.base_timestamp,
            partition_leader_epoch: leader_epoch,
            producer_id,
            producer_epoch,
            base_sequence,
            transactional,
            control: false,
        });
        for (ts, k, v) in &records {
            // Our API always has a key; a null key only comes from other writers.
            match k {
                Some(k) => w.append(*ts, k, v.as_deref()),
                None => w.append(*ts, &[], v.as_deref()),
            }
        }
        w.finish();
        let decoded = decode_theirs(&ours);
        prop_assert_eq!(decoded.len(), records.len());
        for (d, t) in decoded.iter().zip(&theirs) {
            prop_assert_eq!(d.offset, t.offset);
            prop_assert_eq!(d.timestamp, t.timestamp);
            prop_assert_eq!(d.sequence, t.sequence);
            prop_assert_eq!((d.producer_id, d.producer_epoch), (producer_id, producer_epoch));
            prop_assert_eq!(d.transactional, transactional);
            prop_assert_eq!(d.key.as_deref().unwrap_or(&[]), t.key.as_deref().unwrap_or(&[]));
            prop_assert_eq!(d.value.as_deref(), t.value.as_deref());
        }
        if records.iter().all(|r| r.1.is_some()) {
            prop_assert_eq!(ours, their_bytes);
        }
    }
}

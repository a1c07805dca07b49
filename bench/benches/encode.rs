//! Encoding + CRC of `__consumer_offsets` batches, and parsing them back.
//!
//! * `encode`: a batch of N offset commits (value v3, Kafka's default) encoded into a reused
//!   buffer, CRC-32C included — the per-group-commit cost of the segment writer.
//! * `parse_iterate`: `parse_batch` (framing + CRC) and iterating the records — recovery's
//!   per-batch cost before schema decoding.
//! * `parse_decode`: the same plus decoding every key and value — full recovery replay.
//!
//! N is 1, 16 and 256 records; metadata is empty (the common case) or 64 bytes.
//! Run: `cargo bench -p coffer-bench --bench encode -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use coffer::format::{
    BatchParams, BatchWriter, OffsetCommitKey, OffsetCommitValue, RecordKey, decode_key,
    parse_batch,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const GROUP: &str = "payments-service.order-consumer-v3";
const TOPIC: &str = "prod.orders.events-v2";
const RECORD_COUNTS: [usize; 3] = [1, 16, 256];
const METADATA_LENS: [usize; 2] = [0, 64];
const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

fn encode_batch(out: &mut Vec<u8>, n: usize, metadata: &str) -> usize {
    out.clear();
    let mut w = BatchWriter::begin(
        out,
        BatchParams {
            base_offset: 1_000_000,
            ..BatchParams::default()
        },
    );
    for i in 0..n {
        let key = OffsetCommitKey {
            group: GROUP,
            topic: TOPIC,
            partition: i as i32,
        };
        let value = OffsetCommitValue {
            offset: 123_456_789 + i as i64,
            leader_epoch: 17,
            metadata,
            commit_timestamp: BASE_TIMESTAMP + i as i64,
            expire_timestamp: -1,
            topic_id: None,
        };
        w.append_offset_commit(
            BASE_TIMESTAMP + i as i64,
            &key,
            Some((&value, value.version_for_write())),
        );
    }
    w.finish()
}

fn configs() -> impl Iterator<Item = (usize, usize, String)> {
    RECORD_COUNTS.into_iter().flat_map(|n| {
        METADATA_LENS
            .into_iter()
            .map(move |m| (n, m, format!("n={n}/meta={m}")))
    })
}

fn bench_encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (n, meta_len, id) in configs() {
        let metadata = "m".repeat(meta_len);
        let mut out = Vec::with_capacity(1 << 20);
        let bytes = encode_batch(&mut out, n, &metadata);
        group.throughput(Throughput::ElementsAndBytes {
            elements: n as u64,
            bytes: bytes as u64,
        });
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| black_box(encode_batch(&mut out, black_box(n), black_box(&metadata))))
        });
    }
    group.finish();
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_iterate");
    for (n, meta_len, id) in configs() {
        let mut out = Vec::new();
        let bytes = encode_batch(&mut out, n, &"m".repeat(meta_len));
        group.throughput(Throughput::ElementsAndBytes {
            elements: n as u64,
            bytes: bytes as u64,
        });
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let view = parse_batch(black_box(&out)).expect("valid batch");
                let mut count = 0usize;
                for r in view.records() {
                    let r = r.expect("valid record");
                    count += r.key.map_or(0, <[u8]>::len);
                }
                black_box(count)
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("parse_decode");
    for (n, meta_len, id) in configs() {
        let mut out = Vec::new();
        let bytes = encode_batch(&mut out, n, &"m".repeat(meta_len));
        group.throughput(Throughput::ElementsAndBytes {
            elements: n as u64,
            bytes: bytes as u64,
        });
        group.bench_function(BenchmarkId::from_parameter(id), |b| {
            b.iter(|| {
                let view = parse_batch(black_box(&out)).expect("valid batch");
                let mut sum = 0i64;
                for r in view.records() {
                    let r = r.expect("valid record");
                    if let Ok(RecordKey::OffsetCommit(k)) = decode_key(r.key.unwrap_or(&[])) {
                        sum += i64::from(k.partition);
                    }
                    if let Some(v) = r.value {
                        sum += OffsetCommitValue::decode(v).expect("valid value").1.offset;
                    }
                }
                black_box(sum)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_encode, bench_parse);
criterion_main!(benches);

//! Recovery: torn tails are cut back to the last complete batch, corruption anywhere else is
//! an error naming the file and position, and reopening returns exactly the latest values.

use coffer::Error;
use coffer::storage::SimDisk;
use coffer_tests::{
    SIM_DATA_DIR, batch_ranges, commit_one, commit_with_metadata, fetch_one, open_sim,
    sim_segments, test_config,
};

const GROUP: &str = "recovery-group";
const TOPIC: &str = "orders";

/// Writes `batches` commits of offsets 0.. for one key, one batch each; returns the disk.
fn disk_with_batches(batches: i64) -> SimDisk {
    let disk = SimDisk::new(11);
    let config = test_config(SIM_DATA_DIR, 1);
    let engine = open_sim(&disk, &config).unwrap();
    for offset in 0..batches {
        commit_one(&engine, GROUP, TOPIC, 0, offset).unwrap();
    }
    engine.close().unwrap();
    disk
}

#[test]
fn cutting_the_last_batch_at_every_byte_keeps_every_complete_batch() {
    let disk = disk_with_batches(5);
    let segment = sim_segments(&disk, 0).remove(0);
    let bytes = disk.file_bytes(&segment).unwrap();
    let ranges = batch_ranges(&bytes);
    assert_eq!(ranges.len(), 5);
    let last = ranges[4].clone();
    assert_eq!(last.end, bytes.len());
    let config = test_config(SIM_DATA_DIR, 1);

    for cut in last.start..last.end {
        let crashed = SimDisk::new(cut as u64);
        crashed.put_file_bytes(&segment, &bytes[..cut]);
        let engine = open_sim(&crashed, &config).unwrap();
        // Offsets 0..=3 were in complete batches; the cut one (4) is gone.
        assert_eq!(
            fetch_one(&engine, GROUP, TOPIC, 0).unwrap(),
            Some(3),
            "cut at {cut}"
        );
        let truncations: Vec<_> = engine.recovery_report().truncations().cloned().collect();
        if cut > last.start {
            assert_eq!(truncations.len(), 1, "cut at {cut}");
            assert_eq!(truncations[0].position, last.start as u64);
            assert_eq!(truncations[0].file, segment);
        } else {
            assert!(
                truncations.is_empty(),
                "cut at a batch boundary is a clean end"
            );
        }
        // The log keeps working after the cut, and what follows survives a reopen.
        commit_one(&engine, GROUP, TOPIC, 0, 100).unwrap();
        engine.close().unwrap();
        let reopened = open_sim(&crashed, &config).unwrap();
        assert_eq!(fetch_one(&reopened, GROUP, TOPIC, 0).unwrap(), Some(100));
        assert_eq!(reopened.recovery_report().truncations().count(), 0);
        reopened.close().unwrap();
    }
}

#[test]
fn a_flipped_bit_in_any_batch_is_detected() {
    let disk = disk_with_batches(3);
    let segment = sim_segments(&disk, 0).remove(0);
    let bytes = disk.file_bytes(&segment).unwrap();
    let ranges = batch_ranges(&bytes);
    assert_eq!(ranges.len(), 3);
    let config = test_config(SIM_DATA_DIR, 1);
    // Kafka's CRC leaves the partition leader epoch (bytes 12..16) out by design; a flip there
    // is caught only when it makes the epoch invalid or decreasing (docs/format.md).
    let epoch_bytes = 12..16;

    for (index, range) in ranges.iter().enumerate() {
        for byte in range.clone() {
            if epoch_bytes.contains(&(byte - range.start)) {
                continue;
            }
            for bit in 0..8 {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let flipped = SimDisk::new(byte as u64);
                flipped.put_file_bytes(&segment, &damaged);
                let opened = open_sim(&flipped, &config);
                let what = format!("batch {index}, byte {byte}, bit {bit}");
                if index + 1 == ranges.len() {
                    // The last batch is the tail: cut, and reported.
                    let engine = opened.unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(
                        fetch_one(&engine, GROUP, TOPIC, 0).unwrap(),
                        Some(1),
                        "{what}"
                    );
                    let truncation = engine.recovery_report().truncations().next().cloned();
                    assert_eq!(
                        truncation.map(|t| t.position),
                        Some(range.start as u64),
                        "{what}"
                    );
                } else {
                    // Good data follows: an error naming the file and the bad batch.
                    match opened {
                        Err(Error::Corrupt { file, position, .. }) => {
                            assert_eq!(file, segment, "{what}");
                            assert_eq!(position, range.start as u64, "{what}");
                        }
                        Err(other) => panic!("{what}: unexpected error {other}"),
                        Ok(_) => panic!("{what}: corruption not detected"),
                    }
                }
            }
        }
    }
}

#[test]
fn leader_epoch_flips_that_decrease_it_are_detected() {
    let disk = disk_with_batches(3);
    let segment = sim_segments(&disk, 0).remove(0);
    let bytes = disk.file_bytes(&segment).unwrap();
    let ranges = batch_ranges(&bytes);
    let config = test_config(SIM_DATA_DIR, 1);
    // Our batches carry epoch -1 (all ones): clearing any bit but the sign bit makes it
    // below -1, which is invalid.
    for range in &ranges {
        for bit in 0..31 {
            let mut damaged = bytes.clone();
            let epoch_byte = range.start + 12 + 3 - bit / 8;
            damaged[epoch_byte] ^= 1 << (bit % 8);
            let flipped = SimDisk::new(3);
            flipped.put_file_bytes(&segment, &damaged);
            let detected = match open_sim(&flipped, &config) {
                Err(Error::Corrupt { .. }) => true,
                Ok(engine) => engine.recovery_report().truncations().count() == 1,
                Err(other) => panic!("unexpected error {other}"),
            };
            assert!(detected, "epoch bit {bit} of batch at {}", range.start);
        }
    }
}

#[test]
fn corruption_inside_a_sealed_segment_is_an_error_naming_file_and_position() {
    let disk = SimDisk::new(5);
    let config = test_config(SIM_DATA_DIR, 1);
    let engine = open_sim(&disk, &config).unwrap();
    let metadata = "m".repeat(4000);
    let mut offset = 0;
    while sim_segments(&disk, 0).len() < 2 {
        commit_with_metadata(&engine, GROUP, TOPIC, 0, offset, &metadata).unwrap();
        offset += 1;
    }
    commit_one(&engine, GROUP, TOPIC, 0, offset).unwrap();
    engine.close().unwrap();

    let segments = sim_segments(&disk, 0);
    let sealed = &segments[0];
    let bytes = disk.file_bytes(sealed).unwrap();
    let ranges = batch_ranges(&bytes);
    assert_eq!(
        ranges.last().map(|r| r.end),
        Some(bytes.len()),
        "sealed segments are trimmed"
    );
    let middle = ranges[ranges.len() / 2].clone();
    let mut damaged = bytes.clone();
    damaged[middle.start + 40] ^= 0x10;
    disk.put_file_bytes(sealed, &damaged);
    match open_sim(&disk, &config) {
        Err(Error::Corrupt { file, position, .. }) => {
            assert_eq!(&file, sealed);
            assert_eq!(position, middle.start as u64);
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("corruption in a sealed segment not detected"),
    }
    // Corrupting the last batch of a sealed segment is an error too, never a silent cut.
    let last = ranges[ranges.len() - 1].clone();
    let mut damaged = bytes.clone();
    damaged[last.start + 30] ^= 0x01;
    disk.put_file_bytes(sealed, &damaged);
    assert!(matches!(
        open_sim(&disk, &config),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn reopening_returns_exactly_the_latest_values_across_segments() {
    let disk = SimDisk::new(9);
    let config = test_config(SIM_DATA_DIR, 3);
    let engine = open_sim(&disk, &config).unwrap();
    let metadata = "x".repeat(4000);
    let mut expected = std::collections::BTreeMap::new();
    for round in 0..1000i64 {
        let group = format!("group-{}", round % 7);
        let partition = (round % 5) as i32;
        commit_with_metadata(&engine, &group, TOPIC, partition, round, &metadata).unwrap();
        expected.insert((group, partition), round);
    }
    let segments: usize = (0..3).map(|p| sim_segments(&disk, p).len()).sum();
    assert!(segments > 3, "some partition rolled to a second segment");
    engine.close().unwrap();
    let reopened = open_sim(&disk, &config).unwrap();
    for ((group, partition), offset) in &expected {
        let fetched = reopened
            .fetch_offsets(group, &[(TOPIC, *partition)])
            .unwrap();
        let committed = fetched[0].clone().unwrap();
        assert_eq!(committed.offset, *offset);
        assert_eq!(committed.metadata, metadata);
        assert_eq!(committed.leader_epoch, Some(1));
    }
    let all: usize = (0..7)
        .map(|g| {
            reopened
                .fetch_all_offsets(&format!("group-{g}"))
                .unwrap()
                .len()
        })
        .sum();
    assert_eq!(all, expected.len());
    assert_eq!(reopened.recovery_report().truncations().count(), 0);
}

/// A batch at `base_offset` with one record of the given raw key and value.
fn raw_batch(base_offset: i64, key: &[u8], value: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let params = coffer::format::BatchParams {
        base_offset,
        ..Default::default()
    };
    let mut writer = coffer::format::BatchWriter::begin(&mut out, params);
    writer.append(1_700_000_000_000, key, value);
    writer.finish();
    out
}

#[test]
fn unknown_record_types_are_skipped_and_counted_and_malformed_ones_are_errors() {
    let disk = disk_with_batches(2);
    let segment = sim_segments(&disk, 0).remove(0);
    let mut bytes = disk.file_bytes(&segment).unwrap();
    // Record type 99, as a newer Kafka might write: skipped, counted.
    let unknown_key = [0u8, 99, 1, 2, 3];
    bytes.extend(raw_batch(2, &unknown_key, Some(b"future")));
    disk.put_file_bytes(&segment, &bytes);
    let config = test_config(SIM_DATA_DIR, 1);
    let engine = open_sim(&disk, &config).unwrap();
    assert_eq!(engine.recovery_report().unknown_records, 1);
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 0).unwrap(), Some(1));
    // Appends continue after it at the right offset, and survive a reopen.
    commit_one(&engine, GROUP, TOPIC, 0, 7).unwrap();
    engine.close().unwrap();
    let engine = open_sim(&disk, &config).unwrap();
    assert_eq!(fetch_one(&engine, GROUP, TOPIC, 0).unwrap(), Some(7));
    engine.close().unwrap();

    // An offset-commit key cut short, under a valid CRC: corruption, named.
    let mut bytes = disk.file_bytes(&segment).unwrap();
    let position = bytes.len() as u64;
    let last_offset = batch_ranges(&bytes).len() as i64; // one record per batch here
    bytes.extend(raw_batch(last_offset, &[0, 1, 0, 5, b'g'], None));
    disk.put_file_bytes(&segment, &bytes);
    match open_sim(&disk, &config) {
        Err(Error::Corrupt {
            file,
            position: at,
            reason,
        }) => {
            assert_eq!(file, segment);
            assert_eq!(at, position);
            assert!(reason.contains("malformed"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("malformed record accepted"),
    }
}

/// With `log.preallocate` the active segment is reserved a step at a time, not a whole
/// (here 64 MiB) segment up front: its file stays within a step of its data as it grows,
/// and a power cut with reserved zeros past the data recovers every acknowledged commit.
#[test]
fn preallocation_reserves_a_step_ahead_of_the_data_and_recovers_after_a_power_cut() {
    let step = coffer::log::PREALLOCATE_STEP_BYTES;
    let disk = SimDisk::new(12);
    let mut config = test_config(SIM_DATA_DIR, 1);
    config.log_preallocate = true;
    config.offsets_topic_segment_bytes = 64 * 1024 * 1024;
    let file_len = |disk: &SimDisk| {
        let segment = sim_segments(disk, 0).pop().unwrap();
        disk.file_bytes(&segment).unwrap().len() as u64
    };
    let engine = open_sim(&disk, &config).unwrap();
    assert_eq!(file_len(&disk), step);
    let metadata = "p".repeat(4000);
    let mut offset = 0;
    while offset < 1500 {
        commit_with_metadata(&engine, GROUP, TOPIC, 0, offset, &metadata).unwrap();
        offset += 1;
    }
    let data: u64 = engine.metrics().unwrap()[0]
        .partitions
        .iter()
        .map(|p| p.log_bytes)
        .sum();
    assert!(data > step, "{data}");
    let reserved = file_len(&disk);
    assert!(
        reserved >= data && reserved <= data + step,
        "{reserved} for {data}"
    );
    disk.crash();
    drop(engine);
    let reopened = open_sim(&disk, &config).unwrap();
    assert_eq!(fetch_one(&reopened, GROUP, TOPIC, 0).unwrap(), Some(1499));
    commit_one(&reopened, GROUP, TOPIC, 0, 1500).unwrap();
    reopened.close().unwrap();
}

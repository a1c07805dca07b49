//! One journal entry: a partition's batch of one group commit, with where it goes.
//!
//! ```text
//!  0        4        8                16       20       24               32               40
//!  +--------+--------+----------------+--------+--------+----------------+----------------+---------
//!  | crc32c | length |    sequence    |partition reserved| segment base   |    position    | payload
//!  |  u32   |  u32   |      u64       |  u32   |  u32=0 |  offset i64    |      u64       | (length)
//!  +--------+--------+----------------+--------+--------+----------------+----------------+---------
//! ```
//!
//! Little-endian. `crc32c` (Castagnoli) covers bytes 4 to the end of the payload. The payload
//! is the RecordBatch exactly as written at `position` of the segment whose name carries
//! `segment base offset`. `sequence` numbers the group commit (all entries of one flush share
//! it) and orders entries of different shards' journals for the same partition.

use crate::log::reader::PARTITION_FLUSH_BYTES_MAX;

/// Bytes of an entry's header.
pub(crate) const ENTRY_HEADER_BYTES: usize = 40;
/// Most payload bytes of one entry: one partition's batch of one flush.
pub(crate) const ENTRY_PAYLOAD_BYTES_MAX: usize = PARTITION_FLUSH_BYTES_MAX;

/// Where an entry's payload belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    /// The group commit that wrote it; never 0.
    pub(crate) sequence: u64,
    /// The offsets partition.
    pub(crate) partition: u32,
    /// The segment, by the base offset its file name carries.
    pub(crate) segment_base_offset: i64,
    /// Byte position of the payload in that segment.
    pub(crate) position: u64,
}

/// Why an entry could not be read; the journal's valid data ends before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryEnd {
    /// Zeros (never written) or the end of the file.
    Unwritten,
    /// Bytes that are not a whole, valid entry: a write the crash tore, or garbage.
    Invalid(&'static str),
}

/// Appends an entry for `payload` to `buf`.
pub(crate) fn append_entry(buf: &mut Vec<u8>, header: &EntryHeader, payload: &[u8]) {
    assert!(header.sequence > 0, "sequence 0 marks unwritten space");
    assert!(!payload.is_empty() && payload.len() <= ENTRY_PAYLOAD_BYTES_MAX);
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&header.sequence.to_le_bytes());
    buf.extend_from_slice(&header.partition.to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    buf.extend_from_slice(&header.segment_base_offset.to_le_bytes());
    buf.extend_from_slice(&header.position.to_le_bytes());
    debug_assert_eq!(buf.len() - start, ENTRY_HEADER_BYTES);
    buf.extend_from_slice(payload);
    let crc = crc32c::crc32c(&buf[start + 4..]);
    buf[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// The largest segment any configuration allows (`offsets.topic.segment.bytes` ≤ i32::MAX).
const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;

/// Reads the entry at the start of `bytes`: its header, payload and total length.
pub(crate) fn parse_entry(bytes: &[u8]) -> Result<(EntryHeader, &[u8], usize), EntryEnd> {
    let Some(header) = bytes.get(..ENTRY_HEADER_BYTES) else {
        return Err(if bytes.iter().all(|&b| b == 0) {
            EntryEnd::Unwritten
        } else {
            EntryEnd::Invalid("header cut short")
        });
    };
    if header.iter().all(|&b| b == 0) {
        return Err(EntryEnd::Unwritten);
    }
    let u32_at = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let u64_at = |at: usize| {
        let mut word = [0; 8];
        word.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let length = u32_at(4) as usize;
    if length == 0 || length > ENTRY_PAYLOAD_BYTES_MAX {
        return Err(EntryEnd::Invalid("payload length out of range"));
    }
    let total = ENTRY_HEADER_BYTES + length;
    let Some(entry) = bytes.get(..total) else {
        return Err(EntryEnd::Invalid("payload cut short"));
    };
    if crc32c::crc32c(&entry[4..]) != u32_at(0) {
        return Err(EntryEnd::Invalid("CRC mismatch"));
    }
    if u32_at(20) != 0 {
        return Err(EntryEnd::Invalid("reserved field is not zero"));
    }
    let header = EntryHeader {
        sequence: u64_at(8),
        partition: u32_at(16),
        segment_base_offset: u64_at(24) as i64,
        position: u64_at(32),
    };
    if header.sequence == 0
        || !(0..=crate::format::OFFSET_MAX).contains(&header.segment_base_offset)
    {
        return Err(EntryEnd::Invalid("sequence or segment out of range"));
    }
    // No segment is larger than `offsets.topic.segment.bytes` allows (at most i32::MAX): a
    // position past that would have redo write (or reserve) far beyond any segment.
    if header.position.saturating_add(length as u64) > SEGMENT_BYTES_MAX {
        return Err(EntryEnd::Invalid("position past the largest segment"));
    }
    Ok((header, &entry[ENTRY_HEADER_BYTES..], total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> EntryHeader {
        EntryHeader {
            sequence: 7,
            partition: 3,
            segment_base_offset: 1000,
            position: 4096,
        }
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let mut buf = Vec::new();
        append_entry(&mut buf, &header(), b"batch bytes");
        let (read, payload, total) = parse_entry(&buf).unwrap();
        assert_eq!(
            (read, payload, total),
            (header(), &b"batch bytes"[..], buf.len())
        );
    }

    #[test]
    fn zeros_are_the_end_and_every_flipped_bit_is_invalid() {
        assert_eq!(parse_entry(&[0; 64]), Err(EntryEnd::Unwritten));
        assert_eq!(parse_entry(&[]), Err(EntryEnd::Unwritten));
        let mut buf = Vec::new();
        append_entry(&mut buf, &header(), b"payload");
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_entry(&flipped).is_err(), "bit {bit}");
        }
        for cut in 1..buf.len() {
            assert!(parse_entry(&buf[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn an_entry_past_the_largest_segment_or_offset_is_invalid_despite_its_crc() {
        let far = |position: u64, segment_base_offset: i64| {
            let mut buf = Vec::new();
            let header = EntryHeader {
                position,
                segment_base_offset,
                ..header()
            };
            append_entry(&mut buf, &header, b"payload");
            parse_entry(&buf).map(|(header, _, _)| header)
        };
        assert!(far(SEGMENT_BYTES_MAX - 7, 0).is_ok());
        for (position, base) in [
            (SEGMENT_BYTES_MAX - 6, 0),
            (1 << 40, 0),
            (u64::MAX, 0),
            (0, crate::format::OFFSET_MAX + 1),
        ] {
            assert!(
                matches!(far(position, base), Err(EntryEnd::Invalid(_))),
                "{position} {base}"
            );
        }
    }
}

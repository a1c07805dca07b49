//! Kafka RecordBatch v2 framing (`DefaultRecordBatch.java`, `DefaultRecord.java`).
//!
//! ```text
//! offset size field                   note
//!  0      8   base offset     i64     offset of the first record
//!  8      4   batch length    i32     bytes after this field
//! 12      4   partition leader epoch i32
//! 16      1   magic           i8      = 2
//! 17      4   crc             u32     CRC-32C of bytes 21..end
//! 21      2   attributes      i16     bits 0-2 compression, 3 timestamp type,
//!                                     4 transactional, 5 control, 6 delete horizon
//! 23      4   last offset delta i32
//! 27      8   base timestamp  i64
//! 35      8   max timestamp   i64
//! 43      8   producer id     i64
//! 51      2   producer epoch  i16
//! 53      4   base sequence   i32
//! 57      4   records count   i32
//! 61      ... records
//! ```
//!
//! Each record:
//!
//! ```text
//! length varint | attributes i8 | timestamp delta varlong | offset delta varint |
//! key length varint (-1 = null) | key | value length varint (-1 = null) | value |
//! header count varint | headers (key length varint, key, value length varint, value)*
//! ```
//!
//! Coffer writes uncompressed, create-time batches and refuses to read compressed ones.

use super::control::EndTransactionMarker;
use super::schema::{OffsetCommitKey, OffsetCommitValue};
use super::varint::{put_varint, put_varlong, varint_len, varlong_len};
use super::{FormatError, Reader};

/// Bytes from the base offset through the records count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before the part that `batch length` counts: base offset + batch length.
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;
/// RecordBatch v2's magic.
pub const MAGIC_V2: i8 = 2;
/// Largest offset a record may carry. The room above it holds any batch's offset deltas, so
/// offset arithmetic on a checked batch never overflows; a log appending a million records
/// a second would take about 290,000 years to reach it. The base offset is not covered by
/// the CRC, so [`parse_batch`] checks it against this bound.
pub const OFFSET_MAX: i64 = i64::MAX - (1 << 32);

/// Field offsets inside the header.
pub mod offsets {
    /// Base offset, i64.
    pub const BASE_OFFSET: usize = 0;
    /// Batch length, i32.
    pub const BATCH_LENGTH: usize = 8;
    /// Partition leader epoch, i32.
    pub const PARTITION_LEADER_EPOCH: usize = 12;
    /// Magic, i8.
    pub const MAGIC: usize = 16;
    /// CRC-32C, u32.
    pub const CRC: usize = 17;
    /// Attributes, i16; the CRC covers from here to the end of the batch.
    pub const ATTRIBUTES: usize = 21;
    /// Last offset delta, i32.
    pub const LAST_OFFSET_DELTA: usize = 23;
    /// Base timestamp, i64.
    pub const BASE_TIMESTAMP: usize = 27;
    /// Max timestamp, i64.
    pub const MAX_TIMESTAMP: usize = 35;
    /// Producer id, i64.
    pub const PRODUCER_ID: usize = 43;
    /// Producer epoch, i16.
    pub const PRODUCER_EPOCH: usize = 51;
    /// Base sequence, i32.
    pub const BASE_SEQUENCE: usize = 53;
    /// Records count, i32.
    pub const RECORDS_COUNT: usize = 57;
}

/// Smallest legal `batch length`: a header with no records.
pub const MIN_BATCH_LENGTH: i32 = (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES) as i32;

/// Attribute bits 0-2: compression codec (0 = none).
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: timestamps are log-append time (else create time).
pub const ATTR_LOG_APPEND_TIME: i16 = 0x08;
/// Attribute bit 4: the batch belongs to a transaction.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// Attribute bit 5: the batch holds a control record.
pub const ATTR_CONTROL: i16 = 0x20;
/// Attribute bit 6: the base timestamp is the delete horizon set by the log cleaner.
pub const ATTR_DELETE_HORIZON: i16 = 0x40;

/// "No producer" (non-idempotent writes).
pub const NO_PRODUCER_ID: i64 = -1;
/// "No producer epoch".
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// "No sequence".
pub const NO_SEQUENCE: i32 = -1;
/// "No partition leader epoch"; the broker stamps the real one on append.
pub const NO_PARTITION_LEADER_EPOCH: i32 = -1;
/// "No timestamp". As [`BatchParams::base_timestamp`] it means "the first record's".
pub const NO_TIMESTAMP: i64 = -1;

/// Headers per record we write: none.
const NO_HEADERS: i32 = 0;
/// Record attributes (unused by Kafka, always 0).
const RECORD_ATTRIBUTES: i8 = 0;
const RECORD_ATTRIBUTES_BYTES: usize = 1;
/// Varint length of a null key/value.
const NULL_LENGTH: i32 = -1;

/// A decoded batch header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Bytes after the length field.
    pub batch_length: i32,
    /// Leader epoch stamped by the broker.
    pub partition_leader_epoch: i32,
    /// Always 2 for a parsed batch.
    pub magic: i8,
    /// Stored CRC-32C.
    pub crc: u32,
    /// Attribute bits.
    pub attributes: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp the record deltas are relative to (or the delete horizon, see
    /// [`has_delete_horizon`](Self::has_delete_horizon)).
    pub base_timestamp: i64,
    /// Largest record timestamp.
    pub max_timestamp: i64,
    /// Producer id, -1 for none.
    pub producer_id: i64,
    /// Producer epoch, -1 for none.
    pub producer_epoch: i16,
    /// Sequence of the first record, -1 for none.
    pub base_sequence: i32,
    /// Number of records.
    pub records_count: i32,
}

#[inline]
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
#[inline]
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

impl BatchHeader {
    /// Reads the 61 header bytes at the start of `buf` without checking anything else (no
    /// magic, length or CRC check: use [`parse_batch`] for that).
    pub fn read(buf: &[u8]) -> Result<Self, FormatError> {
        let Some(h) = buf.get(..BATCH_HEADER_BYTES) else {
            return Err(FormatError::Truncated {
                needed: BATCH_HEADER_BYTES,
                available: buf.len(),
            });
        };
        use offsets as o;
        Ok(Self {
            base_offset: be_i64(h, o::BASE_OFFSET),
            batch_length: be_i32(h, o::BATCH_LENGTH),
            partition_leader_epoch: be_i32(h, o::PARTITION_LEADER_EPOCH),
            magic: h[o::MAGIC] as i8,
            crc: be_i32(h, o::CRC) as u32,
            attributes: be_i16(h, o::ATTRIBUTES),
            last_offset_delta: be_i32(h, o::LAST_OFFSET_DELTA),
            base_timestamp: be_i64(h, o::BASE_TIMESTAMP),
            max_timestamp: be_i64(h, o::MAX_TIMESTAMP),
            producer_id: be_i64(h, o::PRODUCER_ID),
            producer_epoch: be_i16(h, o::PRODUCER_EPOCH),
            base_sequence: be_i32(h, o::BASE_SEQUENCE),
            records_count: be_i32(h, o::RECORDS_COUNT),
        })
    }

    /// Offset of the batch's last record (`base_offset + last_offset_delta`).
    #[inline]
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Bytes the batch occupies in the log: 12 + batch length.
    #[inline]
    pub fn total_bytes(&self) -> usize {
        BATCH_LOG_OVERHEAD_BYTES + self.batch_length.max(0) as usize
    }

    /// Attribute bit 4.
    #[inline]
    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    /// Attribute bit 5.
    #[inline]
    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    /// Attribute bit 3.
    #[inline]
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }

    /// Attribute bit 6: the log cleaner stored the tombstone delete horizon in
    /// `base_timestamp`.
    #[inline]
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & ATTR_DELETE_HORIZON != 0
    }

    /// Attribute bits 0-2.
    #[inline]
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_COMPRESSION_MASK) as u8
    }
}

/// Batch-level fields a writer chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchParams {
    /// Offset of the first record.
    pub base_offset: i64,
    /// Timestamp deltas are relative to this; [`NO_TIMESTAMP`] (the default) means "the first
    /// record's timestamp", which is what Kafka does.
    pub base_timestamp: i64,
    /// Leader epoch; [`NO_PARTITION_LEADER_EPOCH`] by default.
    pub partition_leader_epoch: i32,
    /// Producer id; -1 for non-idempotent writes.
    pub producer_id: i64,
    /// Producer epoch; -1 for non-idempotent writes.
    pub producer_epoch: i16,
    /// Base sequence; -1 for non-idempotent writes.
    pub base_sequence: i32,
    /// Set attribute bit 4.
    pub transactional: bool,
    /// Set attribute bit 5 (transaction markers).
    pub control: bool,
}

impl Default for BatchParams {
    /// A non-transactional, non-idempotent batch at offset 0, as Kafka's group coordinator
    /// writes plain offset commits.
    fn default() -> Self {
        Self {
            base_offset: 0,
            base_timestamp: NO_TIMESTAMP,
            partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
            producer_id: NO_PRODUCER_ID,
            producer_epoch: NO_PRODUCER_EPOCH,
            base_sequence: NO_SEQUENCE,
            transactional: false,
            control: false,
        }
    }
}

impl BatchParams {
    fn attributes(&self) -> i16 {
        let mut a = 0;
        if self.transactional {
            a |= ATTR_TRANSACTIONAL;
        }
        if self.control {
            a |= ATTR_CONTROL;
        }
        a
    }
}

/// Appends one batch to a caller-owned, reused buffer.
///
/// [`begin`](Self::begin) reserves the header, each `append*` encodes one record straight into
/// the buffer, [`finish`](Self::finish) fills the header and the CRC. Nothing allocates when
/// the buffer has capacity.
#[derive(Debug)]
pub struct BatchWriter<'a> {
    out: &'a mut Vec<u8>,
    start: usize,
    params: BatchParams,
    base_timestamp: i64,
    max_timestamp: i64,
    count: i32,
    last_offset_delta: i32,
}

impl<'a> BatchWriter<'a> {
    /// Starts a batch at `out.len()`, reserving its header.
    pub fn begin(out: &'a mut Vec<u8>, params: BatchParams) -> Self {
        let start = out.len();
        out.resize(start + BATCH_HEADER_BYTES, 0);
        Self {
            out,
            start,
            params,
            base_timestamp: params.base_timestamp,
            max_timestamp: NO_TIMESTAMP,
            count: 0,
            last_offset_delta: -1,
        }
    }

    /// Records appended so far.
    #[inline]
    pub fn records_count(&self) -> i32 {
        self.count
    }

    /// Bytes written so far (header included).
    #[inline]
    pub fn len(&self) -> usize {
        self.out.len() - self.start
    }

    /// Whether no record was appended yet.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes a record's framing up to and including the key length; returns nothing, the
    /// caller writes the key next and then calls [`Self::frame_value_len`].
    #[inline]
    fn frame_head(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key_len: usize,
        value_len: Option<usize>,
    ) {
        assert!(
            offset_delta > self.last_offset_delta,
            "record offset deltas must increase: {offset_delta} after {}",
            self.last_offset_delta
        );
        assert!(self.count < i32::MAX, "too many records in one batch");
        if self.base_timestamp == NO_TIMESTAMP && self.count == 0 {
            self.base_timestamp = timestamp;
        }
        let ts_delta = timestamp.wrapping_sub(self.base_timestamp);
        let key_len = i32::try_from(key_len).expect("record key longer than i32::MAX bytes");
        let value_len = match value_len {
            Some(v) => i32::try_from(v).expect("record value longer than i32::MAX bytes"),
            None => NULL_LENGTH,
        };
        let body = RECORD_ATTRIBUTES_BYTES
            + varlong_len(ts_delta)
            + varint_len(offset_delta)
            + varint_len(key_len)
            + key_len as usize
            + varint_len(value_len)
            + value_len.max(0) as usize
            + varint_len(NO_HEADERS);
        let body = i32::try_from(body).expect("record longer than i32::MAX bytes");
        put_varint(self.out, body);
        self.out.push(RECORD_ATTRIBUTES as u8);
        put_varlong(self.out, ts_delta);
        put_varint(self.out, offset_delta);
        put_varint(self.out, key_len);
        self.count += 1;
        self.last_offset_delta = offset_delta;
        self.max_timestamp = if self.count == 1 {
            timestamp
        } else {
            self.max_timestamp.max(timestamp)
        };
    }

    #[inline]
    fn frame_value_len(&mut self, value_len: Option<usize>) {
        put_varint(self.out, value_len.map_or(NULL_LENGTH, |v| v as i32));
    }

    #[inline]
    fn frame_tail(&mut self) {
        put_varint(self.out, NO_HEADERS);
    }

    /// Appends a record with opaque key and value bytes (`None` value = tombstone) at offset
    /// delta = last offset delta + 1 (= records so far when no delta was skipped).
    pub fn append(&mut self, timestamp: i64, key: &[u8], value: Option<&[u8]>) {
        self.append_with_offset_delta(self.last_offset_delta + 1, timestamp, key, value);
    }

    /// Like [`append`](Self::append) at an explicit offset delta, for rewriting retained
    /// records with their original offsets (compaction). Deltas must strictly increase.
    pub fn append_with_offset_delta(
        &mut self,
        offset_delta: i32,
        timestamp: i64,
        key: &[u8],
        value: Option<&[u8]>,
    ) {
        let start = self.out.len();
        self.frame_head(offset_delta, timestamp, key.len(), value.map(<[u8]>::len));
        self.out.extend_from_slice(key);
        self.frame_value_len(value.map(<[u8]>::len));
        if let Some(v) = value {
            self.out.extend_from_slice(v);
        }
        self.frame_tail();
        debug_assert!(self.out.len() > start);
    }

    /// Appends an offset commit (or, with `value = None`, its tombstone), encoding key and
    /// value straight into the buffer. The value is encoded at the given version.
    ///
    /// # Panics
    /// If the key or value fails `validate` (see [`OffsetCommitKey::validate`],
    /// [`OffsetCommitValue::validate`]).
    pub fn append_offset_commit(
        &mut self,
        timestamp: i64,
        key: &OffsetCommitKey<'_>,
        value: Option<(&OffsetCommitValue<'_>, i16)>,
    ) {
        let key_len = key.encoded_len();
        let value_len = value.map(|(v, version)| v.encoded_len(version));
        self.frame_head(self.last_offset_delta + 1, timestamp, key_len, value_len);
        let key_start = self.out.len();
        key.encode_into(self.out);
        assert_eq!(
            self.out.len() - key_start,
            key_len,
            "key encoded_len mismatch"
        );
        self.frame_value_len(value_len);
        if let (Some((v, version)), Some(value_len)) = (value, value_len) {
            let value_start = self.out.len();
            v.encode_into(version, self.out);
            assert_eq!(
                self.out.len() - value_start,
                value_len,
                "value encoded_len mismatch"
            );
        }
        self.frame_tail();
    }

    /// Appends a transaction marker. The batch must have been begun with `control` and
    /// `transactional` set and the transaction's producer id and epoch, and hold only this
    /// record.
    pub fn append_control(&mut self, timestamp: i64, marker: &EndTransactionMarker) {
        debug_assert!(self.params.control && self.params.transactional);
        let key = marker.key_bytes();
        let value = marker.value_bytes();
        self.append(timestamp, &key, Some(&value));
    }

    /// Fills the header (length, last offset delta, max timestamp, count, CRC) and returns the
    /// batch's total bytes. A batch with no records is a caller bug.
    pub fn finish(self) -> usize {
        debug_assert!(self.count > 0, "finishing a record batch with no records");
        let end = self.out.len();
        let total = end - self.start;
        let batch_length = i32::try_from(total - BATCH_LOG_OVERHEAD_BYTES)
            .expect("record batch longer than i32::MAX bytes");
        let p = &self.params;
        let h = &mut self.out[self.start..self.start + BATCH_HEADER_BYTES];
        use offsets as o;
        h[o::BASE_OFFSET..o::BATCH_LENGTH].copy_from_slice(&p.base_offset.to_be_bytes());
        h[o::BATCH_LENGTH..o::PARTITION_LEADER_EPOCH].copy_from_slice(&batch_length.to_be_bytes());
        h[o::PARTITION_LEADER_EPOCH..o::MAGIC]
            .copy_from_slice(&p.partition_leader_epoch.to_be_bytes());
        h[o::MAGIC] = MAGIC_V2 as u8;
        h[o::ATTRIBUTES..o::LAST_OFFSET_DELTA].copy_from_slice(&p.attributes().to_be_bytes());
        h[o::LAST_OFFSET_DELTA..o::BASE_TIMESTAMP]
            .copy_from_slice(&self.last_offset_delta.max(0).to_be_bytes());
        h[o::BASE_TIMESTAMP..o::MAX_TIMESTAMP].copy_from_slice(&self.base_timestamp.to_be_bytes());
        h[o::MAX_TIMESTAMP..o::PRODUCER_ID].copy_from_slice(&self.max_timestamp.to_be_bytes());
        h[o::PRODUCER_ID..o::PRODUCER_EPOCH].copy_from_slice(&p.producer_id.to_be_bytes());
        h[o::PRODUCER_EPOCH..o::BASE_SEQUENCE].copy_from_slice(&p.producer_epoch.to_be_bytes());
        h[o::BASE_SEQUENCE..o::RECORDS_COUNT].copy_from_slice(&p.base_sequence.to_be_bytes());
        h[o::RECORDS_COUNT..BATCH_HEADER_BYTES].copy_from_slice(&self.count.to_be_bytes());
        let crc = crc32c::crc32c(&self.out[self.start + o::ATTRIBUTES..end]);
        self.out[self.start + o::CRC..self.start + o::ATTRIBUTES]
            .copy_from_slice(&crc.to_be_bytes());
        total
    }
}

/// Sets the base offset of the encoded batch at the start of `batch`, leaving every other
/// byte as it is. The CRC does not cover the base offset (Kafka's brokers assign it the same
/// way when they append a producer's batch), so the batch stays valid: a flush encodes its
/// batches before it knows where they go, and gives each its offset when it is placed.
///
/// # Panics
/// When `batch` is shorter than a batch header (a caller bug: only encoded batches come here).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    use offsets as o;
    assert!(batch.len() >= BATCH_HEADER_BYTES, "not an encoded batch");
    batch[o::BASE_OFFSET..o::BATCH_LENGTH].copy_from_slice(&base_offset.to_be_bytes());
}

/// Checks a batch's framing — length sane and within `buf`, magic 2, CRC-32C, no
/// compression — and returns a view of it. `buf` starts at the batch and may extend past it.
///
/// A `buf` shorter than the batch it announces yields [`FormatError::Truncated`] (a torn tail);
/// a length below the 49-byte minimum yields [`FormatError::BadLength`].
pub fn parse_batch(buf: &[u8]) -> Result<BatchView<'_>, FormatError> {
    use offsets as o;
    if buf.len() < BATCH_LOG_OVERHEAD_BYTES {
        return Err(FormatError::Truncated {
            needed: BATCH_LOG_OVERHEAD_BYTES,
            available: buf.len(),
        });
    }
    let batch_length = be_i32(buf, o::BATCH_LENGTH);
    if batch_length < MIN_BATCH_LENGTH {
        return Err(FormatError::BadLength {
            what: "record batch",
            len: i64::from(batch_length),
        });
    }
    let total = BATCH_LOG_OVERHEAD_BYTES + batch_length as usize;
    let Some(bytes) = buf.get(..total) else {
        return Err(FormatError::Truncated {
            needed: total,
            available: buf.len(),
        });
    };
    let magic = bytes[o::MAGIC] as i8;
    if magic != MAGIC_V2 {
        return Err(FormatError::BadMagic(magic));
    }
    let header = BatchHeader::read(bytes)?;
    let computed = crc32c::crc32c(&bytes[o::ATTRIBUTES..]);
    if computed != header.crc {
        return Err(FormatError::BadCrc {
            stored: header.crc,
            computed,
        });
    }
    if header.compression() != 0 {
        return Err(FormatError::UnsupportedCompression(header.compression()));
    }
    if header.records_count < 0 {
        return Err(FormatError::BadLength {
            what: "records count",
            len: i64::from(header.records_count),
        });
    }
    // Checked after the CRC, which does not cover the base offset: a bad one is a bad batch.
    if header.base_offset < 0 || header.base_offset > OFFSET_MAX {
        return Err(FormatError::Malformed(
            "base offset negative or beyond the largest offset a log holds",
        ));
    }
    Ok(BatchView { header, bytes })
}

/// A batch whose framing and CRC were checked by [`parse_batch`].
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    /// The decoded header.
    pub header: BatchHeader,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Bytes the batch occupies in the log.
    #[inline]
    pub fn total_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// The whole batch, header included (for copying it verbatim).
    #[inline]
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The records section.
    #[inline]
    pub fn records_bytes(&self) -> &'a [u8] {
        &self.bytes[BATCH_HEADER_BYTES..]
    }

    /// Iterates the records. Errors (and then stops) on a malformed record, on fewer records
    /// than the header counts, and on bytes left after the last counted record.
    pub fn records(&self) -> RecordIter<'a> {
        RecordIter {
            r: Reader::new(self.records_bytes()),
            remaining: self.header.records_count,
            done: false,
            previous_delta: -1,
            last_delta: self.header.last_offset_delta,
        }
    }
}

/// One record inside a batch, borrowing its key and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Record attributes (unused by Kafka).
    pub attributes: i8,
    /// Timestamp minus the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset minus the batch's base offset.
    pub offset_delta: i32,
    /// Key, `None` if null.
    pub key: Option<&'a [u8]>,
    /// Value, `None` for a tombstone.
    pub value: Option<&'a [u8]>,
    /// Number of headers (checked, then skipped).
    pub headers_count: i32,
}

impl RecordView<'_> {
    /// The record's absolute offset in a batch with this header.
    #[inline]
    pub fn offset(&self, header: &BatchHeader) -> i64 {
        header.base_offset + i64::from(self.offset_delta)
    }

    /// The record's absolute timestamp in a batch with this header.
    #[inline]
    pub fn timestamp(&self, header: &BatchHeader) -> i64 {
        header.base_timestamp.wrapping_add(self.timestamp_delta)
    }
}

/// Iterator over a batch's records; see [`BatchView::records`].
#[derive(Debug, Clone)]
pub struct RecordIter<'a> {
    r: Reader<'a>,
    remaining: i32,
    done: bool,
    /// The offset delta of the record before; deltas increase (gaps allowed: a compacted
    /// batch) and stay within the header's last offset delta, so every record's offset lies
    /// in its batch's range, where recovery and the compactor look for it.
    previous_delta: i32,
    last_delta: i32,
}

fn read_var_bytes<'a>(
    r: &mut Reader<'a>,
    what: &'static str,
) -> Result<Option<&'a [u8]>, FormatError> {
    match r.varint()? {
        NULL_LENGTH => Ok(None),
        len if len < 0 => Err(FormatError::BadLength {
            what,
            len: i64::from(len),
        }),
        len => r.take(len as usize).map(Some),
    }
}

fn decode_record<'a>(r: &mut Reader<'a>) -> Result<RecordView<'a>, FormatError> {
    let len = r.varint()?;
    if len < 0 {
        return Err(FormatError::BadLength {
            what: "record",
            len: i64::from(len),
        });
    }
    let mut b = Reader::new(r.take(len as usize)?);
    let attributes = b.i8()?;
    let timestamp_delta = b.varlong()?;
    let offset_delta = b.varint()?;
    let key = read_var_bytes(&mut b, "record key")?;
    let value = read_var_bytes(&mut b, "record value")?;
    let headers_count = b.varint()?;
    if headers_count < 0 {
        return Err(FormatError::BadLength {
            what: "record headers count",
            len: i64::from(headers_count),
        });
    }
    for _ in 0..headers_count {
        let key_len = b.varint()?;
        if key_len < 0 {
            return Err(FormatError::BadLength {
                what: "record header key",
                len: i64::from(key_len),
            });
        }
        let header_key = b.take(key_len as usize)?;
        if std::str::from_utf8(header_key).is_err() {
            return Err(FormatError::InvalidUtf8("record header key"));
        }
        read_var_bytes(&mut b, "record header value")?;
    }
    b.finish("record")?;
    Ok(RecordView {
        attributes,
        timestamp_delta,
        offset_delta,
        key,
        value,
        headers_count,
    })
}

impl<'a> Iterator for RecordIter<'a> {
    type Item = Result<RecordView<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if self.remaining == 0 {
            self.done = true;
            return match self.r.finish("the last record of the batch") {
                Ok(()) => None,
                Err(e) => Some(Err(e)),
            };
        }
        self.remaining -= 1;
        let item = decode_record(&mut self.r).and_then(|record| {
            let delta = record.offset_delta;
            if delta <= self.previous_delta || delta > self.last_delta {
                return Err(FormatError::Malformed(
                    "record offset delta not increasing or past the batch's last",
                ));
            }
            self.previous_delta = delta;
            Ok(record)
        });
        if item.is_err() {
            self.done = true;
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            (0, Some(0))
        } else {
            (0, Some(self.remaining as usize + 1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::control::ControlRecordType;
    use crate::format::schema::{RecordKey, decode_key};
    use proptest::prelude::*;

    /// The worked example of `docs/format.md`: two offset commits of group "my-group" for
    /// topic "orders", partitions 0 and 1.
    pub(crate) fn worked_example() -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = BatchWriter::begin(&mut out, BatchParams::default());
        for (partition, offset, ts) in [(0, 42, 1_700_000_000_000i64), (1, 17, 1_700_000_000_005)] {
            let key = OffsetCommitKey {
                group: "my-group",
                topic: "orders",
                partition,
            };
            let value = OffsetCommitValue {
                offset,
                leader_epoch: 5,
                metadata: "",
                commit_timestamp: ts,
                expire_timestamp: NO_TIMESTAMP,
                topic_id: None,
            };
            w.append_offset_commit(ts, &key, Some((&value, value.version_for_write())));
        }
        let n = w.finish();
        assert_eq!(n, out.len());
        out
    }

    const WORKED_EXAMPLE_HEX: &str = concat!(
        "0000000000000000", // base offset 0
        "0000009f",         // batch length 159
        "ffffffff",         // partition leader epoch -1
        "02",               // magic 2
        "a2ab92a5",         // crc
        "0000",             // attributes
        "00000001",         // last offset delta 1
        "0000018bcfe56800", // base timestamp 1700000000000
        "0000018bcfe56805", // max timestamp 1700000000005
        "ffffffffffffffff", // producer id -1
        "ffff",             // producer epoch -1
        "ffffffff",         // base sequence -1
        "00000002",         // records count 2
        // record 0: length 54, attributes, timestamp delta 0, offset delta 0, key length 24
        "6c",
        "00",
        "00",
        "00",
        "30",
        "0001",             // key type 1: OffsetCommitKey
        "0008",             // group length
        "6d792d67726f7570", // "my-group"
        "0006",             // topic length
        "6f7264657273",     // "orders"
        "00000000",         // partition 0
        "30",               // value length 24
        "0003",             // value version 3
        "000000000000002a", // offset 42
        "00000005",         // leader epoch 5
        "0000",             // metadata ""
        "0000018bcfe56800", // commit timestamp
        "00",               // headers count 0
        // record 1: length 54, attributes, timestamp delta 5, offset delta 1, key length 24
        "6c",
        "00",
        "0a",
        "02",
        "30",
        "0001",
        "0008",
        "6d792d67726f7570",
        "0006",
        "6f7264657273",
        "00000001",
        "30",
        "0003",
        "0000000000000011", // offset 17
        "00000005",
        "0000",
        "0000018bcfe56805",
        "00",
    );

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn sample_batch(params: BatchParams, n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = BatchWriter::begin(&mut out, params);
        for i in 0..n {
            let key = format!("key-{i}");
            if i % 3 == 2 {
                w.append(1_000 + i as i64, key.as_bytes(), None);
            } else {
                w.append(1_000 + i as i64, key.as_bytes(), Some(b"value"));
            }
        }
        w.finish();
        out
    }

    #[test]
    fn worked_example_has_the_documented_bytes() {
        let bytes = worked_example();
        assert_eq!(hex(&bytes), WORKED_EXAMPLE_HEX);
        let view = parse_batch(&bytes).expect("parses");
        assert_eq!(view.header.records_count, 2);
        assert_eq!(view.header.last_offset(), 1);
        let records: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
        assert_eq!(records.len(), 2);
        let Some(key) = records[1].key else {
            panic!("key is null")
        };
        assert_eq!(
            decode_key(key),
            Ok(RecordKey::OffsetCommit(OffsetCommitKey {
                group: "my-group",
                topic: "orders",
                partition: 1
            }))
        );
        let value = records[1].value.expect("value");
        assert_eq!(
            OffsetCommitValue::decode(value).map(|(_, v)| v.offset),
            Ok(17)
        );
        assert_eq!(records[1].timestamp(&view.header), 1_700_000_000_005);
    }

    #[test]
    fn header_fields_round_trip() {
        let params = BatchParams {
            base_offset: 1_234_567,
            base_timestamp: 500,
            partition_leader_epoch: 9,
            producer_id: 77,
            producer_epoch: 3,
            base_sequence: 11,
            transactional: true,
            control: false,
        };
        let bytes = sample_batch(params, 5);
        let view = parse_batch(&bytes).expect("parses");
        let h = view.header;
        assert_eq!(h.base_offset, 1_234_567);
        assert_eq!(
            h.batch_length as usize + BATCH_LOG_OVERHEAD_BYTES,
            bytes.len()
        );
        assert_eq!(h.total_bytes(), bytes.len());
        assert_eq!(view.total_bytes(), bytes.len());
        assert_eq!(h.partition_leader_epoch, 9);
        assert_eq!(h.magic, MAGIC_V2);
        assert_eq!(h.attributes, ATTR_TRANSACTIONAL);
        assert!(h.is_transactional() && !h.is_control() && !h.is_log_append_time());
        assert_eq!(h.last_offset_delta, 4);
        assert_eq!(h.last_offset(), 1_234_571);
        assert_eq!(h.base_timestamp, 500);
        assert_eq!(h.max_timestamp, 1_004);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (77, 3, 11)
        );
        assert_eq!(h.records_count, 5);
        for (i, r) in view.records().enumerate() {
            let r = r.expect("record");
            assert_eq!(r.offset_delta, i as i32);
            assert_eq!(r.timestamp_delta, 500 + i as i64);
            assert_eq!(r.key, Some(format!("key-{i}").as_bytes()));
            assert_eq!(r.value.is_none(), i % 3 == 2, "tombstone at {i}");
            assert_eq!(r.headers_count, 0);
        }
    }

    #[test]
    fn default_params_use_first_record_timestamp_and_kafka_sentinels() {
        let bytes = sample_batch(BatchParams::default(), 2);
        let h = parse_batch(&bytes).expect("parses").header;
        assert_eq!(h.base_timestamp, 1_000);
        assert_eq!(h.max_timestamp, 1_001);
        assert_eq!(h.partition_leader_epoch, -1);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (-1, -1, -1)
        );
        assert_eq!(h.attributes, 0);
    }

    #[test]
    fn tombstones_and_out_of_order_timestamps() {
        let mut out = Vec::new();
        let mut w = BatchWriter::begin(&mut out, BatchParams::default());
        let key = OffsetCommitKey {
            group: "g",
            topic: "t",
            partition: 0,
        };
        w.append_offset_commit(100, &key, None);
        w.append(50, b"k", Some(b""));
        w.append(75, b"", None);
        w.finish();
        let view = parse_batch(&out).expect("parses");
        assert_eq!(view.header.max_timestamp, 100);
        let r: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
        assert_eq!(r[0].value, None);
        assert_eq!(r[1].timestamp_delta, -50);
        assert_eq!(r[1].value, Some(&b""[..]));
        assert_eq!((r[2].key, r[2].value), (Some(&b""[..]), None));
    }

    #[test]
    fn explicit_offset_deltas_keep_gaps() {
        let mut out = Vec::new();
        let mut w = BatchWriter::begin(&mut out, BatchParams::default());
        w.append_with_offset_delta(0, 1, b"a", Some(b"1"));
        w.append_with_offset_delta(5, 1, b"b", Some(b"2"));
        w.append(1, b"c", None);
        assert_eq!(w.records_count(), 3);
        w.finish();
        let view = parse_batch(&out).expect("parses");
        assert_eq!(view.header.last_offset_delta, 6);
        let deltas: Vec<i32> = view
            .records()
            .map(|r| r.expect("ok").offset_delta)
            .collect();
        assert_eq!(deltas, [0, 5, 6]);
    }

    /// A record's offset delta must increase and stay within the header's last offset delta:
    /// recovery and the compactor charge and judge a record by the offset it claims, so a
    /// record claiming another batch's offset (a CRC-valid batch with a bad delta) is refused.
    #[test]
    fn offset_deltas_out_of_order_or_past_the_last_are_refused() {
        let mut out = Vec::new();
        let mut w = BatchWriter::begin(&mut out, BatchParams::default());
        w.append_with_offset_delta(0, 1, b"a", Some(b"1"));
        w.append_with_offset_delta(5, 1, b"b", Some(b"2"));
        w.finish();
        let deltas = |bytes: &[u8]| -> Result<Vec<i32>, FormatError> {
            let view = parse_batch(bytes)?;
            view.records().map(|r| r.map(|r| r.offset_delta)).collect()
        };
        assert_eq!(deltas(&out), Ok(vec![0, 5]));
        // The header's last offset delta below the second record's.
        let mut short = out.clone();
        short[offsets::LAST_OFFSET_DELTA..offsets::LAST_OFFSET_DELTA + 4]
            .copy_from_slice(&2i32.to_be_bytes());
        reseal(&mut short);
        assert!(matches!(deltas(&short), Err(FormatError::Malformed(_))));
        // The second record's delta (one varint byte: zigzag 10) rewritten to 0, a repeat.
        let second = out.len() - 1 - out.iter().rev().position(|&b| b == 10).unwrap();
        let mut repeated = out.clone();
        repeated[second] = 0;
        reseal(&mut repeated);
        assert!(matches!(deltas(&repeated), Err(FormatError::Malformed(_))));
    }

    #[test]
    fn control_batches_round_trip() {
        for control_type in [ControlRecordType::Commit, ControlRecordType::Abort] {
            let params = BatchParams {
                base_offset: 99,
                producer_id: 4_000,
                producer_epoch: 2,
                transactional: true,
                control: true,
                ..BatchParams::default()
            };
            let marker = EndTransactionMarker {
                control_type,
                coordinator_epoch: 12,
            };
            let mut out = Vec::new();
            let mut w = BatchWriter::begin(&mut out, params);
            w.append_control(5, &marker);
            w.finish();
            let view = parse_batch(&out).expect("parses");
            assert!(view.header.is_control() && view.header.is_transactional());
            assert_eq!(view.header.attributes, ATTR_TRANSACTIONAL | ATTR_CONTROL);
            assert_eq!(view.header.producer_id, 4_000);
            let recs: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
            assert_eq!(recs.len(), 1);
            let key = recs[0].key.expect("control key");
            assert_eq!(EndTransactionMarker::decode(key, recs[0].value), Ok(marker));
        }
    }

    #[test]
    fn batches_concatenate() {
        let mut out = Vec::new();
        for base in [0i64, 3] {
            let mut w = BatchWriter::begin(
                &mut out,
                BatchParams {
                    base_offset: base,
                    ..BatchParams::default()
                },
            );
            for i in 0..3 {
                w.append(i, b"k", Some(b"v"));
            }
            w.finish();
        }
        let first = parse_batch(&out).expect("first");
        let second = parse_batch(&out[first.total_bytes()..]).expect("second");
        assert_eq!(second.header.base_offset, 3);
        assert_eq!(first.total_bytes() + second.total_bytes(), out.len());
    }

    #[test]
    fn writer_does_not_allocate_with_capacity() {
        let mut out = Vec::with_capacity(4096);
        let ptr = out.as_ptr();
        let key = OffsetCommitKey {
            group: "my-group",
            topic: "orders",
            partition: 0,
        };
        let value = OffsetCommitValue {
            offset: 1,
            leader_epoch: 0,
            metadata: "",
            commit_timestamp: 0,
            expire_timestamp: NO_TIMESTAMP,
            topic_id: None,
        };
        let mut w = BatchWriter::begin(&mut out, BatchParams::default());
        for _ in 0..16 {
            w.append_offset_commit(0, &key, Some((&value, 3)));
        }
        w.finish();
        assert_eq!(out.as_ptr(), ptr, "the buffer was reallocated");
    }

    #[test]
    fn a_batch_given_its_base_offset_after_encoding_stays_valid() {
        let mut bytes = worked_example();
        let before = parse_batch(&bytes).unwrap().header;
        set_base_offset(&mut bytes, 1_234_567);
        let after = parse_batch(&bytes).expect("the CRC still holds").header;
        assert_eq!(after.base_offset, 1_234_567);
        assert_eq!(
            (after.crc, after.last_offset_delta, after.records_count),
            (before.crc, before.last_offset_delta, before.records_count)
        );
    }

    /// Kafka's CRC covers attributes..end; base offset and partition leader epoch are left out
    /// on purpose (a broker rewrites them without recomputing the CRC), so a flip there cannot
    /// be detected by the batch alone (the log checks offset continuity). Every other bit is.
    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = worked_example();
        let uncovered = |byte: usize| {
            (offsets::BASE_OFFSET..offsets::BATCH_LENGTH).contains(&byte)
                || (offsets::PARTITION_LEADER_EPOCH..offsets::MAGIC).contains(&byte)
        };
        for i in 0..bytes.len() * 8 {
            let mut corrupt = bytes.clone();
            corrupt[i / 8] ^= 1 << (i % 8);
            let parsed = parse_batch(&corrupt);
            if uncovered(i / 8) {
                match parsed {
                    Ok(view) => assert_ne!(
                        (view.header.base_offset, view.header.partition_leader_epoch),
                        (0, -1),
                        "flip at byte {} was lost",
                        i / 8
                    ),
                    // A flip of the base offset's top bits puts it past `OFFSET_MAX` (or below
                    // zero): refused by the bound check, though the CRC holds.
                    Err(FormatError::Malformed(_)) => assert!(
                        (offsets::BASE_OFFSET..offsets::BASE_OFFSET + 8).contains(&(i / 8)),
                        "byte {} refused",
                        i / 8
                    ),
                    Err(error) => panic!("flip at byte {}: {error}", i / 8),
                }
            } else {
                assert!(
                    parsed.is_err(),
                    "flipped bit {} of byte {} went unnoticed",
                    i % 8,
                    i / 8
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_detected() {
        let bytes = worked_example();
        for cut in 0..bytes.len() {
            assert!(
                matches!(
                    parse_batch(&bytes[..cut]),
                    Err(FormatError::Truncated { .. })
                ),
                "cut at {cut}"
            );
        }
    }

    /// Rewrites a batch's CRC after tampering, so that the structural checks are exercised.
    fn reseal(bytes: &mut [u8]) {
        let crc = crc32c::crc32c(&bytes[offsets::ATTRIBUTES..]);
        bytes[offsets::CRC..offsets::ATTRIBUTES].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn framing_errors_are_specific() {
        let good = worked_example();
        let mut bad = good.clone();
        bad[offsets::MAGIC] = 1;
        assert_eq!(parse_batch(&bad).err(), Some(FormatError::BadMagic(1)));
        let mut bad = good.clone();
        bad[offsets::BATCH_LENGTH..offsets::PARTITION_LEADER_EPOCH]
            .copy_from_slice(&48i32.to_be_bytes());
        assert!(matches!(
            parse_batch(&bad),
            Err(FormatError::BadLength { len: 48, .. })
        ));
        assert!(matches!(
            parse_batch(&[0u8; 100]),
            Err(FormatError::BadLength { len: 0, .. })
        ));
        let mut bad = good.clone();
        bad[offsets::ATTRIBUTES + 1] |= 0x04; // zstd
        reseal(&mut bad);
        assert_eq!(
            parse_batch(&bad).err(),
            Some(FormatError::UnsupportedCompression(4))
        );
        let mut bad = good.clone();
        bad[offsets::RECORDS_COUNT..BATCH_HEADER_BYTES].copy_from_slice(&(-1i32).to_be_bytes());
        reseal(&mut bad);
        assert!(matches!(
            parse_batch(&bad),
            Err(FormatError::BadLength { .. })
        ));
    }

    #[test]
    fn record_count_must_match_the_records() {
        let good = worked_example();
        for count in [0i32, 1, 3, 1_000] {
            let mut bad = good.clone();
            bad[offsets::RECORDS_COUNT..BATCH_HEADER_BYTES].copy_from_slice(&count.to_be_bytes());
            reseal(&mut bad);
            let view = parse_batch(&bad).expect("framing is fine");
            let results: Vec<_> = view.records().collect();
            assert!(
                results.last().is_some_and(|r| r.is_err()),
                "count {count} not flagged"
            );
        }
        // Trailing bytes inside the batch after the last record.
        let mut bad = good.clone();
        bad.push(0);
        let len = (bad.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
        bad[offsets::BATCH_LENGTH..offsets::PARTITION_LEADER_EPOCH]
            .copy_from_slice(&len.to_be_bytes());
        reseal(&mut bad);
        let view = parse_batch(&bad).expect("framing is fine");
        assert!(matches!(
            view.records().last(),
            Some(Err(FormatError::TrailingBytes { .. }))
        ));
    }

    #[test]
    fn records_with_headers_are_parsed() {
        // Hand-built record: attrs 0, ts delta 0, offset delta 0, key "k", value null,
        // 1 header "h" -> "v".
        let body = [0u8, 0, 0, 2, b'k', 1, 2, 2, b'h', 2, b'v'];
        let mut bytes = sample_batch(BatchParams::default(), 1);
        bytes.truncate(BATCH_HEADER_BYTES);
        bytes.push((body.len() as u8) << 1);
        bytes.extend_from_slice(&body);
        let len = (bytes.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
        bytes[offsets::BATCH_LENGTH..offsets::PARTITION_LEADER_EPOCH]
            .copy_from_slice(&len.to_be_bytes());
        reseal(&mut bytes);
        let r = parse_batch(&bytes)
            .expect("parses")
            .records()
            .next()
            .expect("one")
            .expect("ok");
        assert_eq!(
            (r.key, r.value, r.headers_count),
            (Some(&b"k"[..]), None, 1)
        );
    }

    proptest! {
        #[test]
        fn random_batches_round_trip(
            base_offset in 0i64..i64::MAX / 2,
            base_timestamp in -1i64..2_000_000_000_000,
            leader_epoch: i32,
            producer_id: i64,
            producer_epoch: i16,
            base_sequence: i32,
            transactional: bool,
            records in proptest::collection::vec(
                (any::<i64>(), proptest::collection::vec(any::<u8>(), 0..40),
                 proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))),
                1..20),
        ) {
            let params = BatchParams {
                base_offset, base_timestamp, partition_leader_epoch: leader_epoch,
                producer_id, producer_epoch, base_sequence, transactional, control: false,
            };
            let mut out = vec![0xAA; 3]; // the batch need not start at 0
            let mut w = BatchWriter::begin(&mut out, params);
            for (ts, k, v) in &records {
                w.append(*ts, k, v.as_deref());
            }
            let n = w.finish();
            prop_assert_eq!(n, out.len() - 3);
            let view = parse_batch(&out[3..]).expect("parses");
            let h = view.header;
            prop_assert_eq!(h.records_count as usize, records.len());
            prop_assert_eq!(h.last_offset_delta as usize, records.len() - 1);
            prop_assert_eq!(h.producer_id, producer_id);
            prop_assert_eq!(h.is_transactional(), transactional);
            prop_assert_eq!(h.max_timestamp, records.iter().map(|r| r.0).max().unwrap_or(-1));
            let expected_base = if base_timestamp == NO_TIMESTAMP { records[0].0 } else { base_timestamp };
            prop_assert_eq!(h.base_timestamp, expected_base);
            let decoded: Vec<_> = view.records().collect::<Result<_, _>>().expect("records");
            prop_assert_eq!(decoded.len(), records.len());
            for (i, (r, (ts, k, v))) in decoded.iter().zip(&records).enumerate() {
                prop_assert_eq!(r.offset_delta as usize, i);
                prop_assert_eq!(r.timestamp(&h), *ts);
                prop_assert_eq!(r.key, Some(&k[..]));
                prop_assert_eq!(r.value, v.as_deref());
            }
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(view) = parse_batch(&bytes) {
                for r in view.records() { let _ = r; }
            }
        }

        #[test]
        fn records_section_garbage_never_panics(garbage in proptest::collection::vec(any::<u8>(), 0..120), count in 0i32..8) {
            let mut bytes = sample_batch(BatchParams::default(), 1);
            bytes.truncate(BATCH_HEADER_BYTES);
            bytes.extend_from_slice(&garbage);
            let len = (bytes.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
            bytes[offsets::BATCH_LENGTH..offsets::PARTITION_LEADER_EPOCH].copy_from_slice(&len.to_be_bytes());
            bytes[offsets::RECORDS_COUNT..BATCH_HEADER_BYTES].copy_from_slice(&count.to_be_bytes());
            reseal(&mut bytes);
            let view = parse_batch(&bytes).expect("framing is fine");
            let mut n = 0;
            for r in view.records() {
                n += 1;
                if let Ok(r) = r {
                    let _ = r.key.map(decode_key);
                }
            }
            prop_assert!(n <= count as usize + 1);
        }
    }
}

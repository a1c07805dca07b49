//! Kafka's `__consumer_offsets` record format: key/value schemas and RecordBatch v2 framing.
//!
//! A Coffer segment is a plain Kafka log segment: a sequence of RecordBatch v2 batches
//! ([`batch`]), each holding records whose keys and values are the group coordinator's
//! schemas ([`schema`]), or — in control batches — transaction markers ([`control`]).
//! Integers inside records use Kafka's zigzag varints ([`varint`]).
//!
//! Everything here is byte-for-byte Kafka's format, so a segment can be replicated to (or read
//! by) a Kafka broker and decoded by Kafka tooling. `docs/format.md` describes every byte.
//!
//! Decoding never panics: every malformed input is a [`FormatError`]. Encoding writes into a
//! caller-owned, reused `Vec<u8>` and allocates nothing when the vector has capacity.

pub mod batch;
pub mod control;
pub mod schema;
pub mod varint;

pub use batch::{
    BATCH_HEADER_BYTES, BATCH_LOG_OVERHEAD_BYTES, BatchHeader, BatchParams, BatchView, BatchWriter,
    OFFSET_MAX, RecordIter, RecordView, parse_batch, set_base_offset,
};
pub use control::{ControlRecordType, EndTransactionMarker};
pub use schema::{
    GroupMetadataKey, GroupMetadataValue, KeyDecoder, MemberMetadata, OffsetCommitKey,
    OffsetCommitValue, RecordKey, decode_key, key_record_type,
};

/// Why bytes could not be decoded as Kafka's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The input ended before a field it announces.
    #[error("truncated input: needed {needed} bytes, only {available} available")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The batch's magic byte is not 2 (RecordBatch v2).
    #[error("unsupported record batch magic {0} (only magic 2, RecordBatch v2, is supported)")]
    BadMagic(i8),
    /// The stored CRC-32C does not match the batch's bytes.
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    BadCrc {
        /// CRC stored in the batch header.
        stored: u32,
        /// CRC computed over attributes..end.
        computed: u32,
    },
    /// A length field is negative or out of range for what it frames.
    #[error("invalid {what} length {len}")]
    BadLength {
        /// Which length.
        what: &'static str,
        /// The value read.
        len: i64,
    },
    /// The batch is compressed; Coffer writes and reads only uncompressed batches.
    #[error("compressed record batches are not supported (compression codec {0})")]
    UnsupportedCompression(u8),
    /// A schema version this implementation does not know.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// Which schema.
        what: &'static str,
        /// The version read.
        version: i16,
    },
    /// A string field is not valid UTF-8.
    #[error("string field {0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A varint is longer than its type allows or overflows it.
    #[error("varint is too long or overflows its type")]
    VarintOverflow,
    /// Bytes are left over after a complete structure.
    #[error("{extra} trailing bytes after {what}")]
    TrailingBytes {
        /// The structure that should have ended.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A control record of a type other than COMMIT/ABORT.
    #[error("unsupported control record type {0}")]
    UnsupportedControlType(i16),
    /// Anything else that breaks the format; the text says what.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// A bounds-checked big-endian cursor over a byte slice: every read either succeeds or returns
/// [`FormatError::Truncated`].
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline]
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    #[inline]
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let available = self.remaining();
        if n > available {
            return Err(FormatError::Truncated {
                needed: n,
                available,
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FormatError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    pub(crate) fn i8(&mut self) -> Result<i8, FormatError> {
        Ok(i8::from_be_bytes(self.array()?))
    }
    #[inline]
    pub(crate) fn i16(&mut self) -> Result<i16, FormatError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    #[inline]
    pub(crate) fn i32(&mut self) -> Result<i32, FormatError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    #[inline]
    pub(crate) fn i64(&mut self) -> Result<i64, FormatError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Result<i32, FormatError> {
        let (v, n) = varint::read_varint(&self.buf[self.pos..])?;
        self.pos += n;
        Ok(v)
    }
    #[inline]
    pub(crate) fn varlong(&mut self) -> Result<i64, FormatError> {
        let (v, n) = varint::read_varlong(&self.buf[self.pos..])?;
        self.pos += n;
        Ok(v)
    }
    #[inline]
    pub(crate) fn uvarint(&mut self) -> Result<u32, FormatError> {
        let (v, n) = varint::read_uvarint(&self.buf[self.pos..])?;
        self.pos += n;
        Ok(v)
    }

    /// Errors unless every byte was consumed.
    #[inline]
    pub(crate) fn finish(&self, what: &'static str) -> Result<(), FormatError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(FormatError::TrailingBytes { what, extra }),
        }
    }
}

//! Kafka's variable-length integers.
//!
//! Two families are used on disk:
//!
//! * **Signed** (`varint` for `i32`, `varlong` for `i64`): the value is first mapped with zigzag
//!   (`0, -1, 1, -2, 2 ...` → `0, 1, 2, 3, 4 ...`) so that small negative numbers stay short, then
//!   written as an unsigned LEB128 varint. Record framing inside a RecordBatch v2 uses these.
//! * **Unsigned** (`uvarint`, `u32`): plain LEB128, no zigzag. Flexible message versions use
//!   these for compact string/bytes/array lengths and tagged-field headers.
//!
//! LEB128: seven payload bits per byte, least significant group first, the high bit set on
//! every byte except the last.
//!
//! Decoding is strict: an encoding longer than the widest legal one (5 bytes for 32-bit values,
//! 10 bytes for 64-bit values) or one whose last byte carries bits beyond the target width is
//! an error, never a panic and never silently truncated.

use super::FormatError;

/// Widest legal encoding of a 32-bit varint.
pub const MAX_VARINT_BYTES: usize = 5;
/// Widest legal encoding of a 64-bit varlong.
pub const MAX_VARLONG_BYTES: usize = 10;

const PAYLOAD_BITS: u32 = 7;
const PAYLOAD_MASK: u8 = 0x7f;
const CONTINUATION: u8 = 0x80;

/// Zigzag-maps an `i32` onto a `u32`.
#[inline]
pub const fn zigzag32(v: i32) -> u32 {
    ((v << 1) ^ (v >> 31)) as u32
}

/// Inverse of [`zigzag32`].
#[inline]
pub const fn unzigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

/// Zigzag-maps an `i64` onto a `u64`.
#[inline]
pub const fn zigzag64(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

/// Inverse of [`zigzag64`].
#[inline]
pub const fn unzigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Bytes taken by `v` as an unsigned LEB128 varint.
#[inline]
pub const fn uvarint64_len(v: u64) -> usize {
    // Number of significant bits, at least one; seven bits per byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(PAYLOAD_BITS as usize)
}

/// Bytes taken by `v` as an unsigned varint (flexible-version lengths).
#[inline]
pub const fn uvarint_len(v: u32) -> usize {
    uvarint64_len(v as u64)
}

/// Bytes taken by `v` as a zigzag varint.
#[inline]
pub const fn varint_len(v: i32) -> usize {
    uvarint64_len(zigzag32(v) as u64)
}

/// Bytes taken by `v` as a zigzag varlong.
#[inline]
pub const fn varlong_len(v: i64) -> usize {
    uvarint64_len(zigzag64(v))
}

/// Appends `v` as an unsigned LEB128 varint.
#[inline]
pub fn put_uvarint64(out: &mut Vec<u8>, mut v: u64) {
    while v >= u64::from(CONTINUATION) {
        out.push((v as u8 & PAYLOAD_MASK) | CONTINUATION);
        v >>= PAYLOAD_BITS;
    }
    out.push(v as u8);
}

/// Appends `v` as an unsigned varint.
#[inline]
pub fn put_uvarint(out: &mut Vec<u8>, v: u32) {
    put_uvarint64(out, u64::from(v));
}

/// Appends `v` as a zigzag varint.
#[inline]
pub fn put_varint(out: &mut Vec<u8>, v: i32) {
    put_uvarint64(out, u64::from(zigzag32(v)));
}

/// Appends `v` as a zigzag varlong.
#[inline]
pub fn put_varlong(out: &mut Vec<u8>, v: i64) {
    put_uvarint64(out, zigzag64(v));
}

/// Reads an unsigned LEB128 value of at most `max_bytes` bytes whose value fits in `width_bits`.
/// Returns the value and the number of bytes consumed.
#[inline]
fn read_uleb(buf: &[u8], max_bytes: usize, width_bits: u32) -> Result<(u64, usize), FormatError> {
    // One byte (values below 64 in magnitude, most lengths and deltas in a record) fits
    // every width: no overflow check needed.
    if let Some(&byte) = buf.first()
        && byte & CONTINUATION == 0
    {
        return Ok((u64::from(byte), 1));
    }
    let mut value: u64 = 0;
    for i in 0..max_bytes {
        let Some(&byte) = buf.get(i) else {
            return Err(FormatError::Truncated {
                needed: i + 1,
                available: buf.len(),
            });
        };
        let shift = PAYLOAD_BITS * i as u32;
        let payload = u64::from(byte & PAYLOAD_MASK);
        // Bits of this group that land at or beyond `width_bits` must be zero.
        let room = width_bits - shift; // shift < width_bits for every i < max_bytes
        if room < PAYLOAD_BITS && payload >> room != 0 {
            return Err(FormatError::VarintOverflow);
        }
        value |= payload << shift;
        if byte & CONTINUATION == 0 {
            return Ok((value, i + 1));
        }
    }
    Err(FormatError::VarintOverflow)
}

/// Reads an unsigned varint (`u32`). Returns the value and bytes consumed.
#[inline]
pub fn read_uvarint(buf: &[u8]) -> Result<(u32, usize), FormatError> {
    let (v, n) = read_uleb(buf, MAX_VARINT_BYTES, u32::BITS)?;
    Ok((v as u32, n))
}

/// Reads a zigzag varint (`i32`). Returns the value and bytes consumed.
#[inline]
pub fn read_varint(buf: &[u8]) -> Result<(i32, usize), FormatError> {
    let (v, n) = read_uleb(buf, MAX_VARINT_BYTES, u32::BITS)?;
    Ok((unzigzag32(v as u32), n))
}

/// Reads a zigzag varlong (`i64`). Returns the value and bytes consumed.
#[inline]
pub fn read_varlong(buf: &[u8]) -> Result<(i64, usize), FormatError> {
    let (v, n) = read_uleb(buf, MAX_VARLONG_BYTES, u64::BITS)?;
    Ok((unzigzag64(v), n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc_varint(v: i32) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        assert_eq!(out.len(), varint_len(v), "varint_len({v})");
        out
    }

    fn enc_varlong(v: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_varlong(&mut out, v);
        assert_eq!(out.len(), varlong_len(v), "varlong_len({v})");
        out
    }

    #[test]
    fn zigzag_maps_small_magnitudes_to_small_codes() {
        assert_eq!(zigzag32(0), 0);
        assert_eq!(zigzag32(-1), 1);
        assert_eq!(zigzag32(1), 2);
        assert_eq!(zigzag32(-2), 3);
        assert_eq!(zigzag32(i32::MAX), u32::MAX - 1);
        assert_eq!(zigzag32(i32::MIN), u32::MAX);
        assert_eq!(zigzag64(-1), 1);
        assert_eq!(zigzag64(i64::MAX), u64::MAX - 1);
        assert_eq!(zigzag64(i64::MIN), u64::MAX);
        for v in [0, 1, -1, 63, -64, 64, i32::MAX, i32::MIN] {
            assert_eq!(unzigzag32(zigzag32(v)), v);
        }
        for v in [0, 1, -1, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag64(zigzag64(v)), v);
        }
    }

    #[test]
    fn known_encodings() {
        // Values from Kafka's own ByteUtils tests / the protocol guide.
        assert_eq!(enc_varint(0), [0x00]);
        assert_eq!(enc_varint(-1), [0x01]);
        assert_eq!(enc_varint(1), [0x02]);
        assert_eq!(enc_varint(63), [0x7e]);
        assert_eq!(enc_varint(-64), [0x7f]);
        assert_eq!(enc_varint(64), [0x80, 0x01]);
        assert_eq!(enc_varint(i32::MAX), [0xfe, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc_varint(i32::MIN), [0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert_eq!(enc_varlong(i64::MIN).len(), MAX_VARLONG_BYTES);
        assert_eq!(
            enc_varlong(i64::MAX),
            [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
        let mut out = Vec::new();
        put_uvarint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        assert_eq!(uvarint_len(0), 1);
        assert_eq!(uvarint_len(127), 1);
        assert_eq!(uvarint_len(128), 2);
        assert_eq!(uvarint_len(u32::MAX), 5);
    }

    #[test]
    fn edge_values_round_trip() {
        for v in [0, 1, -1, 63, -64, 64, -65, 8191, -8192, i32::MAX, i32::MIN] {
            let bytes = enc_varint(v);
            assert_eq!(read_varint(&bytes), Ok((v, bytes.len())));
        }
        for v in [0, 1, -1, i64::from(i32::MAX) + 1, i64::MAX, i64::MIN] {
            let bytes = enc_varlong(v);
            assert_eq!(read_varlong(&bytes), Ok((v, bytes.len())));
        }
        for v in [0, 1, 127, 128, 16383, 16384, u32::MAX] {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            assert_eq!(read_uvarint(&out), Ok((v, out.len())));
        }
    }

    #[test]
    fn truncated_varints_error() {
        for v in [64, i32::MAX, i32::MIN] {
            let bytes = enc_varint(v);
            for cut in 0..bytes.len() {
                assert!(
                    matches!(
                        read_varint(&bytes[..cut]),
                        Err(FormatError::Truncated { .. })
                    ),
                    "v={v} cut={cut}"
                );
            }
        }
        let bytes = enc_varlong(i64::MIN);
        for cut in 0..bytes.len() {
            assert!(read_varlong(&bytes[..cut]).is_err());
        }
    }

    #[test]
    fn overlong_and_overflowing_varints_error() {
        // Six bytes for a 32-bit value.
        assert_eq!(
            read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(FormatError::VarintOverflow)
        );
        // Fifth byte carries bits above bit 31.
        assert_eq!(
            read_varint(&[0xff, 0xff, 0xff, 0xff, 0x1f]),
            Err(FormatError::VarintOverflow)
        );
        assert_eq!(
            read_uvarint(&[0xff, 0xff, 0xff, 0xff, 0x10]),
            Err(FormatError::VarintOverflow)
        );
        // Tenth byte of a varlong carries bits above bit 63.
        let mut long = vec![0xff; 9];
        long.push(0x02);
        assert_eq!(read_varlong(&long), Err(FormatError::VarintOverflow));
        // Eleven bytes.
        let mut long = vec![0x80; 10];
        long.push(0x00);
        assert_eq!(read_varlong(&long), Err(FormatError::VarintOverflow));
    }

    proptest! {
        #[test]
        fn varint_round_trips(v: i32) {
            let bytes = enc_varint(v);
            prop_assert_eq!(read_varint(&bytes), Ok((v, bytes.len())));
        }

        #[test]
        fn varlong_round_trips(v: i64) {
            let bytes = enc_varlong(v);
            prop_assert_eq!(read_varlong(&bytes), Ok((v, bytes.len())));
        }

        #[test]
        fn uvarint_round_trips(v: u32) {
            let mut out = Vec::new();
            put_uvarint(&mut out, v);
            prop_assert_eq!(out.len(), uvarint_len(v));
            prop_assert_eq!(read_uvarint(&out), Ok((v, out.len())));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = read_varint(&bytes);
            let _ = read_varlong(&bytes);
            let _ = read_uvarint(&bytes);
        }
    }
}

//! Control records: the transaction markers a transaction coordinator writes into each
//! partition a transaction touched (`ControlRecordType.java`, `EndTransactionMarker.java`).
//!
//! A marker is one record in a batch whose attributes have both the *transactional* and the
//! *control* bit set, carrying the transaction's producer id and epoch.
//!
//! ```text
//! key   (4 bytes): version int16 = 0 | type int16 (0 = ABORT, 1 = COMMIT)
//! value (6 bytes): version int16 = 0 | coordinator epoch int32
//! ```
//!
//! Like Kafka, we read keys and values of a *higher* version than 0 by their version-0 prefix
//! (later versions may only append), and reject negative versions.

use super::{FormatError, Reader};

/// Control record key version we write.
pub const CONTROL_KEY_VERSION: i16 = 0;
/// End-transaction-marker value version we write.
pub const END_TXN_MARKER_VERSION: i16 = 0;
/// Size of a version-0 control record key.
pub const CONTROL_KEY_BYTES: usize = 4;
/// Size of a version-0 end-transaction-marker value.
pub const END_TXN_MARKER_VALUE_BYTES: usize = 6;

const ABORT_CODE: i16 = 0;
const COMMIT_CODE: i16 = 1;

/// The control records Coffer understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlRecordType {
    /// The transaction was aborted: its pending offsets are dropped.
    Abort,
    /// The transaction committed: its pending offsets become visible.
    Commit,
}

impl ControlRecordType {
    /// Kafka's `int16` code.
    #[inline]
    pub const fn code(self) -> i16 {
        match self {
            Self::Abort => ABORT_CODE,
            Self::Commit => COMMIT_CODE,
        }
    }

    /// Maps Kafka's code back; other control types (leader change, snapshot headers, KRaft
    /// records, which never appear in `__consumer_offsets`) are an error.
    #[inline]
    pub const fn from_code(code: i16) -> Result<Self, FormatError> {
        match code {
            ABORT_CODE => Ok(Self::Abort),
            COMMIT_CODE => Ok(Self::Commit),
            other => Err(FormatError::UnsupportedControlType(other)),
        }
    }

    /// The 4-byte control record key.
    #[inline]
    pub fn key_bytes(self) -> [u8; CONTROL_KEY_BYTES] {
        let mut k = [0u8; CONTROL_KEY_BYTES];
        k[..2].copy_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
        k[2..].copy_from_slice(&self.code().to_be_bytes());
        k
    }

    /// Decodes a control record key.
    pub fn decode_key(key: &[u8]) -> Result<Self, FormatError> {
        let mut r = Reader::new(key);
        let version = r.i16()?;
        if version < 0 {
            return Err(FormatError::UnsupportedVersion {
                what: "control record key",
                version,
            });
        }
        let ty = Self::from_code(r.i16()?)?;
        if version == CONTROL_KEY_VERSION {
            r.finish("control record key")?;
        }
        Ok(ty)
    }
}

/// A transaction marker: the record in a control batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndTransactionMarker {
    /// COMMIT or ABORT.
    pub control_type: ControlRecordType,
    /// Epoch of the transaction coordinator that wrote the marker.
    pub coordinator_epoch: i32,
}

impl EndTransactionMarker {
    /// The 4-byte key.
    #[inline]
    pub fn key_bytes(&self) -> [u8; CONTROL_KEY_BYTES] {
        self.control_type.key_bytes()
    }

    /// The 6-byte value.
    #[inline]
    pub fn value_bytes(&self) -> [u8; END_TXN_MARKER_VALUE_BYTES] {
        let mut v = [0u8; END_TXN_MARKER_VALUE_BYTES];
        v[..2].copy_from_slice(&END_TXN_MARKER_VERSION.to_be_bytes());
        v[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        v
    }

    /// Appends the key to `out`.
    #[inline]
    pub fn encode_key_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key_bytes());
    }

    /// Appends the value to `out`.
    #[inline]
    pub fn encode_value_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.value_bytes());
    }

    /// Decodes a marker from a control record's key and value (a marker's value is never null).
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Self, FormatError> {
        let control_type = ControlRecordType::decode_key(key)?;
        let value = value.ok_or(FormatError::Malformed(
            "end transaction marker has a null value",
        ))?;
        let mut r = Reader::new(value);
        let version = r.i16()?;
        if version < 0 {
            return Err(FormatError::UnsupportedVersion {
                what: "end transaction marker",
                version,
            });
        }
        let coordinator_epoch = r.i32()?;
        if version == END_TXN_MARKER_VERSION {
            r.finish("end transaction marker")?;
        }
        Ok(Self {
            control_type,
            coordinator_epoch,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_with_known_bytes() {
        let commit = EndTransactionMarker {
            control_type: ControlRecordType::Commit,
            coordinator_epoch: 7,
        };
        assert_eq!(commit.key_bytes(), [0, 0, 0, 1]);
        assert_eq!(commit.value_bytes(), [0, 0, 0, 0, 0, 7]);
        let abort = EndTransactionMarker {
            control_type: ControlRecordType::Abort,
            coordinator_epoch: i32::MAX,
        };
        assert_eq!(abort.key_bytes(), [0, 0, 0, 0]);
        for m in [commit, abort] {
            let mut k = Vec::new();
            let mut v = Vec::new();
            m.encode_key_into(&mut k);
            m.encode_value_into(&mut v);
            assert_eq!(EndTransactionMarker::decode(&k, Some(&v)), Ok(m));
        }
    }

    #[test]
    fn malformed_markers_error() {
        let m = EndTransactionMarker {
            control_type: ControlRecordType::Commit,
            coordinator_epoch: 3,
        };
        let (k, v) = (m.key_bytes(), m.value_bytes());
        for cut in 0..k.len() {
            assert!(EndTransactionMarker::decode(&k[..cut], Some(&v)).is_err());
        }
        for cut in 0..v.len() {
            assert!(EndTransactionMarker::decode(&k, Some(&v[..cut])).is_err());
        }
        assert!(EndTransactionMarker::decode(&k, None).is_err());
        assert_eq!(
            ControlRecordType::decode_key(&[0, 0, 0, 2]),
            Err(FormatError::UnsupportedControlType(2))
        );
        assert!(matches!(
            ControlRecordType::decode_key(&[0xff, 0xff, 0, 1]),
            Err(FormatError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            ControlRecordType::decode_key(&[0, 0, 0, 1, 9]),
            Err(FormatError::TrailingBytes { .. })
        ));
        let mut long_v = v.to_vec();
        long_v.push(0);
        assert!(EndTransactionMarker::decode(&k, Some(&long_v)).is_err());
        // A later version may append fields: read by its v0 prefix.
        assert_eq!(
            ControlRecordType::decode_key(&[0, 1, 0, 1, 9, 9]),
            Ok(ControlRecordType::Commit)
        );
    }
}

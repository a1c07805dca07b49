//! The group coordinator's record schemas: what goes in a record's key and value.
//!
//! Every key starts with an `int16` that selects the schema (Kafka calls it the key "version";
//! since the KIP-848 coordinator rewrite it is the record's type):
//!
//! | type | key schema           | value schema                 |
//! |------|----------------------|------------------------------|
//! | 0, 1 | [`OffsetCommitKey`]  | [`OffsetCommitValue`] v0–v4  |
//! | 2    | [`GroupMetadataKey`] | [`GroupMetadataValue`] v0–v4 |
//! | else | [`RecordKey::Unknown`] — other coordinator records (consumer/share groups); callers skip them |
//!
//! Every value starts with an `int16` version. A record with a null value is a tombstone.
//!
//! Non-flexible versions use `int16`-length strings, `int32`-length bytes and `int32`-count
//! arrays. Flexible versions (v4 of both values) use "compact" forms — unsigned varint of
//! `length + 1`, `0` meaning null — and end every struct with a tagged-field section.
//!
//! Schemas follow apache/kafka `group-coordinator/src/main/resources/common/message/*.json`.
//!
//! # Encoding
//!
//! `encoded_len` and `encode_into` pairs let callers (the batch writer) write a record's length
//! prefix first and then encode straight into the output buffer, with no scratch buffer.
//! `encode_into` panics on values that cannot be represented (a string over 32767 bytes, an
//! unknown version): writing them would corrupt the log. Callers that take such values from
//! the outside check them first with `validate`.

use super::varint::{put_uvarint, uvarint_len};
use super::{FormatError, Reader};

/// Key type of an offset commit written by pre-2.x brokers (same layout as type 1).
pub const OFFSET_COMMIT_KEY_TYPE_LEGACY: i16 = 0;
/// Key type of an offset commit; the one we write.
pub const OFFSET_COMMIT_KEY_TYPE: i16 = 1;
/// Key type of a classic group's metadata.
pub const GROUP_METADATA_KEY_TYPE: i16 = 2;

/// Longest string Kafka's schemas can carry, in bytes (`int16` length, also enforced for
/// compact strings).
pub const MAX_STRING_BYTES: usize = i16::MAX as usize;
/// Longest `bytes` field, in bytes (`int32` length).
pub const MAX_BYTES_FIELD: usize = i32::MAX as usize;

/// "No timestamp" in Kafka's schemas.
pub const NO_TIMESTAMP: i64 = -1;
/// "No leader epoch" in Kafka's schemas.
pub const NO_LEADER_EPOCH: i32 = -1;

/// Highest `OffsetCommitValue` version we read and write.
pub const OFFSET_COMMIT_VALUE_MAX_VERSION: i16 = 4;
/// Highest `GroupMetadataValue` version we read and write.
pub const GROUP_METADATA_VALUE_MAX_VERSION: i16 = 4;
/// First flexible (compact strings + tagged fields) version of both value schemas.
pub const FIRST_FLEXIBLE_VERSION: i16 = 4;

/// Tag under which a v4+ `OffsetCommitValue` carries the topic id (see
/// [`OffsetCommitValue::topic_id`]).
pub const TOPIC_ID_TAG: u32 = 0;
const UUID_BYTES: usize = 16;
/// Size of an empty tagged-field section: one uvarint 0.
const EMPTY_TAGGED_FIELDS_BYTES: usize = 1;

const INT16_BYTES: usize = 2;
const INT32_BYTES: usize = 4;
const INT64_BYTES: usize = 8;

// ---------------------------------------------------------------------------------------------
// Primitive field helpers shared by every schema.

#[inline]
fn string_len(len: usize, flexible: bool) -> usize {
    if flexible {
        uvarint_len(len as u32 + 1) + len
    } else {
        INT16_BYTES + len
    }
}

#[inline]
fn nullable_string_len(s: Option<&str>, flexible: bool) -> usize {
    match s {
        Some(s) => string_len(s.len(), flexible),
        None if flexible => 1,
        None => INT16_BYTES,
    }
}

#[inline]
fn bytes_len(len: usize, flexible: bool) -> usize {
    if flexible {
        uvarint_len(len as u32 + 1) + len
    } else {
        INT32_BYTES + len
    }
}

#[inline]
fn array_prefix_len(count: usize, flexible: bool) -> usize {
    if flexible {
        uvarint_len(count as u32 + 1)
    } else {
        INT32_BYTES
    }
}

#[inline]
fn check_string(s: &str) -> Result<(), FormatError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(FormatError::BadLength {
            what: "string",
            len: s.len() as i64,
        });
    }
    Ok(())
}

#[inline]
fn check_bytes(b: &[u8]) -> Result<(), FormatError> {
    // Compact bytes store len + 1 as a u32, so one less than i32::MAX keeps both forms exact.
    if b.len() >= MAX_BYTES_FIELD {
        return Err(FormatError::BadLength {
            what: "bytes",
            len: b.len() as i64,
        });
    }
    Ok(())
}

#[inline]
fn put_string(out: &mut Vec<u8>, s: &str, flexible: bool) {
    assert!(
        s.len() <= MAX_STRING_BYTES,
        "string of {} bytes exceeds Kafka's {MAX_STRING_BYTES}-byte limit",
        s.len()
    );
    if flexible {
        put_uvarint(out, s.len() as u32 + 1);
    } else {
        out.extend_from_slice(&(s.len() as i16).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn put_nullable_string(out: &mut Vec<u8>, s: Option<&str>, flexible: bool) {
    match s {
        Some(s) => put_string(out, s, flexible),
        None if flexible => put_uvarint(out, 0),
        None => out.extend_from_slice(&(-1i16).to_be_bytes()),
    }
}

#[inline]
fn put_bytes(out: &mut Vec<u8>, b: &[u8], flexible: bool) {
    assert!(
        b.len() < MAX_BYTES_FIELD,
        "bytes field of {} bytes exceeds Kafka's limit",
        b.len()
    );
    if flexible {
        put_uvarint(out, b.len() as u32 + 1);
    } else {
        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

#[inline]
fn put_array_len(out: &mut Vec<u8>, count: usize, flexible: bool) {
    assert!(
        count < MAX_BYTES_FIELD,
        "array of {count} elements is too long"
    );
    if flexible {
        put_uvarint(out, count as u32 + 1);
    } else {
        out.extend_from_slice(&(count as i32).to_be_bytes());
    }
}

/// Reads a (compact or classic) nullable string.
fn read_nullable_string<'a>(
    r: &mut Reader<'a>,
    flexible: bool,
    field: &'static str,
) -> Result<Option<&'a str>, FormatError> {
    let len: i64 = if flexible {
        i64::from(r.uvarint()?) - 1
    } else {
        i64::from(r.i16()?)
    };
    if len == -1 {
        return Ok(None);
    }
    if !(0..=MAX_STRING_BYTES as i64).contains(&len) {
        return Err(FormatError::BadLength { what: field, len });
    }
    let bytes = r.take(len as usize)?;
    std::str::from_utf8(bytes)
        .map(Some)
        .map_err(|_| FormatError::InvalidUtf8(field))
}

/// Reads a non-nullable string; null is an error.
fn read_string<'a>(
    r: &mut Reader<'a>,
    flexible: bool,
    field: &'static str,
) -> Result<&'a str, FormatError> {
    read_nullable_string(r, flexible, field)?.ok_or(FormatError::BadLength {
        what: field,
        len: -1,
    })
}

/// Reads a non-nullable `bytes` field.
fn read_bytes<'a>(
    r: &mut Reader<'a>,
    flexible: bool,
    field: &'static str,
) -> Result<&'a [u8], FormatError> {
    let len: i64 = if flexible {
        i64::from(r.uvarint()?) - 1
    } else {
        i64::from(r.i32()?)
    };
    if len < 0 {
        return Err(FormatError::BadLength { what: field, len });
    }
    r.take(len as usize)
}

/// Reads a non-nullable array's element count.
fn read_array_len(
    r: &mut Reader<'_>,
    flexible: bool,
    field: &'static str,
) -> Result<usize, FormatError> {
    let len: i64 = if flexible {
        i64::from(r.uvarint()?) - 1
    } else {
        i64::from(r.i32()?)
    };
    // Every element takes at least one byte, which bounds any allocation by the input size.
    if len < 0 || len as usize > r.remaining() {
        return Err(FormatError::BadLength { what: field, len });
    }
    Ok(len as usize)
}

/// Reads a tagged-field section, handing each field to `on_field(tag, data)`.
fn read_tagged_fields<'a>(
    r: &mut Reader<'a>,
    mut on_field: impl FnMut(u32, &'a [u8]) -> Result<(), FormatError>,
) -> Result<(), FormatError> {
    let count = r.uvarint()?;
    for _ in 0..count {
        let tag = r.uvarint()?;
        let size = r.uvarint()? as usize;
        let data = r.take(size)?;
        on_field(tag, data)?;
    }
    Ok(())
}

/// Reads a tagged-field section and ignores every field (none is defined there yet).
fn skip_tagged_fields(r: &mut Reader<'_>) -> Result<(), FormatError> {
    read_tagged_fields(r, |_, _| Ok(()))
}

fn check_version(what: &'static str, version: i16, max: i16) -> Result<(), FormatError> {
    if (0..=max).contains(&version) {
        Ok(())
    } else {
        Err(FormatError::UnsupportedVersion { what, version })
    }
}

// ---------------------------------------------------------------------------------------------
// Keys.

/// A decoded record key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKey<'a> {
    /// Key types 0 and 1.
    OffsetCommit(OffsetCommitKey<'a>),
    /// Key type 2.
    GroupMetadata(GroupMetadataKey<'a>),
    /// Any other key type: a coordinator record Coffer does not interpret (callers skip and
    /// count it). Its bytes were not checked beyond the type.
    Unknown {
        /// The key's leading `int16`.
        record_type: i16,
    },
}

/// The record type a key starts with (its version field), without decoding the rest: the
/// compactor tells offset commits from other records this way before deciding liveness by
/// position alone.
pub fn key_record_type(bytes: &[u8]) -> Result<i16, FormatError> {
    Reader::new(bytes).i16()
}

/// Decodes a record key. Borrowed strings point into `bytes`.
pub fn decode_key(bytes: &[u8]) -> Result<RecordKey<'_>, FormatError> {
    let mut r = Reader::new(bytes);
    let record_type = r.i16()?;
    let key = match record_type {
        OFFSET_COMMIT_KEY_TYPE_LEGACY | OFFSET_COMMIT_KEY_TYPE => {
            let group = read_string(&mut r, false, "group")?;
            let topic = read_string(&mut r, false, "topic")?;
            let partition = r.i32()?;
            RecordKey::OffsetCommit(OffsetCommitKey {
                group,
                topic,
                partition,
            })
        }
        GROUP_METADATA_KEY_TYPE => {
            let group = read_string(&mut r, false, "group")?;
            RecordKey::GroupMetadata(GroupMetadataKey { group })
        }
        record_type => return Ok(RecordKey::Unknown { record_type }),
    };
    r.finish("record key")?;
    Ok(key)
}

/// Bytes of an OffsetCommitValue v3 with empty metadata: version, offset, leader epoch,
/// metadata length, commit timestamp.
const V3_WITHOUT_METADATA_BYTES: usize =
    INT16_BYTES + INT64_BYTES + INT32_BYTES + INT16_BYTES + INT64_BYTES;

/// Decodes the keys of a batch in order, like [`decode_key`], but checks an offset commit
/// key's group and topic only when they differ from the previous offset commit key's: the
/// records of one commit name one group and topic, so most keys repeat the previous key's
/// bytes up to the partition (its last four bytes), and identical bytes decode identically.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyDecoder<'a> {
    /// The previous offset commit key and its bytes.
    previous: Option<(&'a [u8], OffsetCommitKey<'a>)>,
}

impl<'a> KeyDecoder<'a> {
    /// Decodes `bytes` as [`decode_key`] does.
    pub fn decode(&mut self, bytes: &'a [u8]) -> Result<RecordKey<'a>, FormatError> {
        if let Some((previous_bytes, previous)) = self.previous {
            let len = bytes.len();
            // A decoded offset commit key ends with its partition and has nothing after it.
            let prefix = len.saturating_sub(INT32_BYTES);
            if len == previous_bytes.len() && bytes[..prefix] == previous_bytes[..prefix] {
                let partition = std::array::from_fn(|i| bytes[prefix + i]);
                return Ok(RecordKey::OffsetCommit(OffsetCommitKey {
                    partition: i32::from_be_bytes(partition),
                    ..previous
                }));
            }
        }
        let key = decode_key(bytes)?;
        self.previous = match key {
            RecordKey::OffsetCommit(decoded) => Some((bytes, decoded)),
            _ => None,
        };
        Ok(key)
    }
}

/// Key of a committed offset: `(group, topic, partition)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OffsetCommitKey<'a> {
    /// Consumer group id.
    pub group: &'a str,
    /// Topic name.
    pub topic: &'a str,
    /// Partition index.
    pub partition: i32,
}

impl OffsetCommitKey<'_> {
    /// Checks that the key can be encoded (each string at most [`MAX_STRING_BYTES`]).
    pub fn validate(&self) -> Result<(), FormatError> {
        check_string(self.group)?;
        check_string(self.topic)
    }

    /// Encoded size in bytes, type prefix included.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        INT16_BYTES
            + string_len(self.group.len(), false)
            + string_len(self.topic.len(), false)
            + INT32_BYTES
    }

    /// Appends the key (type 1) to `out`.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    #[inline]
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&OFFSET_COMMIT_KEY_TYPE.to_be_bytes());
        put_string(out, self.group, false);
        put_string(out, self.topic, false);
        out.extend_from_slice(&self.partition.to_be_bytes());
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }
}

/// Key of a classic group's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupMetadataKey<'a> {
    /// Group id.
    pub group: &'a str,
}

impl GroupMetadataKey<'_> {
    /// Checks that the key can be encoded.
    pub fn validate(&self) -> Result<(), FormatError> {
        check_string(self.group)
    }

    /// Encoded size in bytes, type prefix included.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        INT16_BYTES + string_len(self.group.len(), false)
    }

    /// Appends the key (type 2) to `out`.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&GROUP_METADATA_KEY_TYPE.to_be_bytes());
        put_string(out, self.group, false);
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }
}

// ---------------------------------------------------------------------------------------------
// OffsetCommitValue.

/// A committed offset.
///
/// | field             | versions | absent from a version decodes as |
/// |-------------------|----------|----------------------------------|
/// | offset            | 0+       |                                  |
/// | leader_epoch      | 3+       | -1                               |
/// | metadata          | 0+       |                                  |
/// | commit_timestamp  | 0+       |                                  |
/// | expire_timestamp  | 1 only   | -1                               |
/// | topic_id (tag 0)  | 4+       | `None`                           |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetCommitValue<'a> {
    /// The committed offset: the offset of the next record the group will read.
    pub offset: i64,
    /// Leader epoch of the last consumed record, [`NO_LEADER_EPOCH`] if unknown.
    pub leader_epoch: i32,
    /// Client metadata (at most `offset.metadata.max.bytes`, enforced by the caller).
    pub metadata: &'a str,
    /// When the commit was made (ms since the epoch).
    pub commit_timestamp: i64,
    /// Explicit expiry (v1 only), [`NO_TIMESTAMP`] if none.
    pub expire_timestamp: i64,
    /// Topic id, carried only by v4+ as tagged field [`TOPIC_ID_TAG`].
    ///
    /// The apache/kafka `OffsetCommitValue.json` we checked defines no tagged fields, so Kafka
    /// itself would keep this as an unknown tagged field and ignore it. We write it only when
    /// it is `Some` and the version is 4.
    pub topic_id: Option<[u8; 16]>,
}

impl<'a> OffsetCommitValue<'a> {
    /// Kafka's default write version (highest non-flexible).
    pub const VERSION_DEFAULT: i16 = 3;
    /// The version Kafka writes for a value with an explicit expire timestamp.
    pub const VERSION_WITH_EXPIRE: i16 = 1;
    /// The only version that can carry a topic id.
    pub const VERSION_WITH_TOPIC_ID: i16 = 4;

    /// The version to write this value with.
    ///
    /// Kafka's rule (`GroupCoordinatorRecordHelpers.offsetCommitValueVersion`): v1 when an
    /// expire timestamp is set (v1 is the only version that stores it), else v3. Our one
    /// addition: a value with a topic id and no expire timestamp is written as v4 so the id is
    /// not silently dropped. (With both set, v1 wins and the topic id is dropped.)
    #[inline]
    pub fn version_for_write(&self) -> i16 {
        if self.expire_timestamp != NO_TIMESTAMP {
            Self::VERSION_WITH_EXPIRE
        } else if self.topic_id.is_some() {
            Self::VERSION_WITH_TOPIC_ID
        } else {
            Self::VERSION_DEFAULT
        }
    }

    /// Checks that the value can be encoded at `version`.
    pub fn validate(&self, version: i16) -> Result<(), FormatError> {
        check_version(
            "OffsetCommitValue",
            version,
            OFFSET_COMMIT_VALUE_MAX_VERSION,
        )?;
        check_string(self.metadata)
    }

    #[inline]
    fn tagged_fields_len(&self) -> usize {
        match self.topic_id {
            None => EMPTY_TAGGED_FIELDS_BYTES,
            // count, tag, size, uuid
            Some(_) => {
                uvarint_len(1)
                    + uvarint_len(TOPIC_ID_TAG)
                    + uvarint_len(UUID_BYTES as u32)
                    + UUID_BYTES
            }
        }
    }

    /// Encoded size at `version`, version prefix included.
    #[inline]
    pub fn encoded_len(&self, version: i16) -> usize {
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let mut len = INT16_BYTES + INT64_BYTES; // version, offset
        if version >= 3 {
            len += INT32_BYTES; // leader epoch
        }
        len += string_len(self.metadata.len(), flexible) + INT64_BYTES; // metadata, commit ts
        if version == 1 {
            len += INT64_BYTES; // expire ts
        }
        if flexible {
            len += self.tagged_fields_len();
        }
        len
    }

    /// Appends the value at `version` to `out`. Fields the version lacks are not written.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails for `version`.
    #[inline]
    pub fn encode_into(&self, version: i16, out: &mut Vec<u8>) {
        assert!(
            (0..=OFFSET_COMMIT_VALUE_MAX_VERSION).contains(&version),
            "OffsetCommitValue version {version} is not one of 0..={OFFSET_COMMIT_VALUE_MAX_VERSION}"
        );
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let start = out.len();
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        if version >= 3 {
            out.extend_from_slice(&self.leader_epoch.to_be_bytes());
        }
        put_string(out, self.metadata, flexible);
        out.extend_from_slice(&self.commit_timestamp.to_be_bytes());
        if version == 1 {
            out.extend_from_slice(&self.expire_timestamp.to_be_bytes());
        }
        if flexible {
            match &self.topic_id {
                None => put_uvarint(out, 0),
                Some(id) => {
                    put_uvarint(out, 1);
                    put_uvarint(out, TOPIC_ID_TAG);
                    put_uvarint(out, UUID_BYTES as u32);
                    out.extend_from_slice(id);
                }
            }
        }
        debug_assert_eq!(out.len() - start, self.encoded_len(version));
    }

    /// Decodes a value of any version 0–4. Returns the version it was written with.
    pub fn decode(bytes: &'a [u8]) -> Result<(i16, Self), FormatError> {
        match Self::decode_v3_without_metadata(bytes) {
            Some(value) => Ok((Self::VERSION_DEFAULT, value)),
            None => Self::decode_any(bytes),
        }
    }

    /// The commonest value, v3 (what Kafka and Coffer write unless an expire timestamp or
    /// topic id needs another version) with empty metadata, has a fixed layout: version,
    /// offset, leader epoch, metadata length 0, commit timestamp; 24 bytes, nothing else.
    /// Recovery decodes one per record, so it skips the general decoder's branches. `None`
    /// for anything else, which [`decode_any`](Self::decode_any) then decodes (and
    /// `decode_any` yields exactly this value for these bytes, see the tests).
    #[inline]
    fn decode_v3_without_metadata(bytes: &'a [u8]) -> Option<Self> {
        if bytes.len() != V3_WITHOUT_METADATA_BYTES {
            return None;
        }
        let mut r = Reader::new(bytes);
        let version = r.i16().ok()?;
        let offset = r.i64().ok()?;
        let leader_epoch = r.i32().ok()?;
        let metadata_len = r.i16().ok()?;
        let commit_timestamp = r.i64().ok()?;
        if version != Self::VERSION_DEFAULT || metadata_len != 0 {
            return None;
        }
        Some(Self {
            offset,
            leader_epoch,
            metadata: "",
            commit_timestamp,
            expire_timestamp: NO_TIMESTAMP,
            topic_id: None,
        })
    }

    /// [`decode`](Self::decode) without the fast path.
    fn decode_any(bytes: &'a [u8]) -> Result<(i16, Self), FormatError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        check_version(
            "OffsetCommitValue",
            version,
            OFFSET_COMMIT_VALUE_MAX_VERSION,
        )?;
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let offset = r.i64()?;
        let leader_epoch = if version >= 3 {
            r.i32()?
        } else {
            NO_LEADER_EPOCH
        };
        let metadata = read_string(&mut r, flexible, "metadata")?;
        let commit_timestamp = r.i64()?;
        let expire_timestamp = if version == 1 { r.i64()? } else { NO_TIMESTAMP };
        let mut topic_id = None;
        if flexible {
            read_tagged_fields(&mut r, |tag, data| {
                if tag == TOPIC_ID_TAG {
                    let id: [u8; UUID_BYTES] =
                        data.try_into().map_err(|_| FormatError::BadLength {
                            what: "topic id tagged field",
                            len: data.len() as i64,
                        })?;
                    topic_id = Some(id);
                }
                Ok(())
            })?;
        }
        r.finish("OffsetCommitValue")?;
        Ok((
            version,
            Self {
                offset,
                leader_epoch,
                metadata,
                commit_timestamp,
                expire_timestamp,
                topic_id,
            },
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// GroupMetadataValue.

/// One member of a classic group, as stored in [`GroupMetadataValue`].
///
/// `group_instance_id` exists from v3 (decodes as `None` before), `rebalance_timeout` from v1
/// (decodes as -1 before; Kafka's legacy loader substituted the session timeout).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MemberMetadata {
    /// Member id.
    pub member_id: String,
    /// Static membership id (v3+).
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Rebalance timeout in ms (v1+).
    pub rebalance_timeout: i32,
    /// Session timeout in ms.
    pub session_timeout: i32,
    /// The member's subscription for the chosen protocol (opaque).
    pub subscription: Vec<u8>,
    /// The member's assignment (opaque).
    pub assignment: Vec<u8>,
}

/// Missing `rebalance_timeout` (v0).
pub const NO_REBALANCE_TIMEOUT: i32 = -1;

impl MemberMetadata {
    fn validate(&self) -> Result<(), FormatError> {
        check_string(&self.member_id)?;
        if let Some(g) = &self.group_instance_id {
            check_string(g)?;
        }
        check_string(&self.client_id)?;
        check_string(&self.client_host)?;
        check_bytes(&self.subscription)?;
        check_bytes(&self.assignment)
    }

    fn encoded_len(&self, version: i16) -> usize {
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let mut len = string_len(self.member_id.len(), flexible);
        if version >= 3 {
            len += nullable_string_len(self.group_instance_id.as_deref(), flexible);
        }
        len += string_len(self.client_id.len(), flexible);
        len += string_len(self.client_host.len(), flexible);
        if version >= 1 {
            len += INT32_BYTES;
        }
        len += INT32_BYTES;
        len += bytes_len(self.subscription.len(), flexible);
        len += bytes_len(self.assignment.len(), flexible);
        if flexible {
            len += EMPTY_TAGGED_FIELDS_BYTES;
        }
        len
    }

    fn encode_into(&self, version: i16, out: &mut Vec<u8>) {
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        put_string(out, &self.member_id, flexible);
        if version >= 3 {
            put_nullable_string(out, self.group_instance_id.as_deref(), flexible);
        }
        put_string(out, &self.client_id, flexible);
        put_string(out, &self.client_host, flexible);
        if version >= 1 {
            out.extend_from_slice(&self.rebalance_timeout.to_be_bytes());
        }
        out.extend_from_slice(&self.session_timeout.to_be_bytes());
        put_bytes(out, &self.subscription, flexible);
        put_bytes(out, &self.assignment, flexible);
        if flexible {
            put_uvarint(out, 0);
        }
    }

    fn decode(r: &mut Reader<'_>, version: i16) -> Result<Self, FormatError> {
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let member_id = read_string(r, flexible, "memberId")?.to_owned();
        let group_instance_id = if version >= 3 {
            read_nullable_string(r, flexible, "groupInstanceId")?.map(str::to_owned)
        } else {
            None
        };
        let client_id = read_string(r, flexible, "clientId")?.to_owned();
        let client_host = read_string(r, flexible, "clientHost")?.to_owned();
        let rebalance_timeout = if version >= 1 {
            r.i32()?
        } else {
            NO_REBALANCE_TIMEOUT
        };
        let session_timeout = r.i32()?;
        let subscription = read_bytes(r, flexible, "subscription")?.to_vec();
        let assignment = read_bytes(r, flexible, "assignment")?.to_vec();
        if flexible {
            skip_tagged_fields(r)?;
        }
        Ok(Self {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout,
            session_timeout,
            subscription,
            assignment,
        })
    }
}

/// A classic group's metadata. Not on the hot path, so it owns its data.
///
/// `current_state_timestamp` exists from v2 (decodes as -1 before).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GroupMetadataValue {
    /// Protocol type ("consumer", "connect", ... or "" for an empty group).
    pub protocol_type: String,
    /// Generation id.
    pub generation: i32,
    /// Chosen protocol (assignor), if any.
    pub protocol: Option<String>,
    /// Leader member id, if any.
    pub leader: Option<String>,
    /// When the group last changed state (ms), v2+.
    pub current_state_timestamp: i64,
    /// Members.
    pub members: Vec<MemberMetadata>,
}

impl GroupMetadataValue {
    /// The version Kafka writes (`GroupCoordinatorRecordHelpers.GROUP_METADATA_VALUE_VERSION`).
    pub const VERSION_DEFAULT: i16 = 3;

    /// Checks that the value can be encoded at `version`.
    pub fn validate(&self, version: i16) -> Result<(), FormatError> {
        check_version(
            "GroupMetadataValue",
            version,
            GROUP_METADATA_VALUE_MAX_VERSION,
        )?;
        check_string(&self.protocol_type)?;
        if let Some(p) = &self.protocol {
            check_string(p)?;
        }
        if let Some(l) = &self.leader {
            check_string(l)?;
        }
        if self.members.len() >= MAX_BYTES_FIELD {
            return Err(FormatError::BadLength {
                what: "members",
                len: self.members.len() as i64,
            });
        }
        self.members.iter().try_for_each(MemberMetadata::validate)
    }

    /// Encoded size at `version`, version prefix included.
    pub fn encoded_len(&self, version: i16) -> usize {
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let mut len = INT16_BYTES;
        len += string_len(self.protocol_type.len(), flexible);
        len += INT32_BYTES;
        len += nullable_string_len(self.protocol.as_deref(), flexible);
        len += nullable_string_len(self.leader.as_deref(), flexible);
        if version >= 2 {
            len += INT64_BYTES;
        }
        len += array_prefix_len(self.members.len(), flexible);
        len += self
            .members
            .iter()
            .map(|m| m.encoded_len(version))
            .sum::<usize>();
        if flexible {
            len += EMPTY_TAGGED_FIELDS_BYTES;
        }
        len
    }

    /// Appends the value at `version` to `out`.
    ///
    /// # Panics
    /// If [`validate`](Self::validate) fails for `version`.
    pub fn encode_into(&self, version: i16, out: &mut Vec<u8>) {
        if let Err(e) = self.validate(version) {
            panic!("GroupMetadataValue cannot be encoded at version {version}: {e}");
        }
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let start = out.len();
        out.extend_from_slice(&version.to_be_bytes());
        put_string(out, &self.protocol_type, flexible);
        out.extend_from_slice(&self.generation.to_be_bytes());
        put_nullable_string(out, self.protocol.as_deref(), flexible);
        put_nullable_string(out, self.leader.as_deref(), flexible);
        if version >= 2 {
            out.extend_from_slice(&self.current_state_timestamp.to_be_bytes());
        }
        put_array_len(out, self.members.len(), flexible);
        for m in &self.members {
            m.encode_into(version, out);
        }
        if flexible {
            put_uvarint(out, 0);
        }
        debug_assert_eq!(out.len() - start, self.encoded_len(version));
    }

    /// Decodes a value of any version 0–4. Returns the version it was written with.
    pub fn decode(bytes: &[u8]) -> Result<(i16, Self), FormatError> {
        let mut r = Reader::new(bytes);
        let version = r.i16()?;
        check_version(
            "GroupMetadataValue",
            version,
            GROUP_METADATA_VALUE_MAX_VERSION,
        )?;
        let flexible = version >= FIRST_FLEXIBLE_VERSION;
        let protocol_type = read_string(&mut r, flexible, "protocolType")?.to_owned();
        let generation = r.i32()?;
        let protocol = read_nullable_string(&mut r, flexible, "protocol")?.map(str::to_owned);
        let leader = read_nullable_string(&mut r, flexible, "leader")?.map(str::to_owned);
        let current_state_timestamp = if version >= 2 { r.i64()? } else { NO_TIMESTAMP };
        let count = read_array_len(&mut r, flexible, "members")?;
        let mut members = Vec::with_capacity(count);
        for _ in 0..count {
            members.push(MemberMetadata::decode(&mut r, version)?);
        }
        if flexible {
            skip_tagged_fields(&mut r)?;
        }
        r.finish("GroupMetadataValue")?;
        Ok((
            version,
            Self {
                protocol_type,
                generation,
                protocol,
                leader,
                current_state_timestamp,
                members,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TOPIC_ID: [u8; 16] = [
        0x10, 0x21, 0x32, 0x43, 0x54, 0x65, 0x76, 0x87, 0x98, 0xa9, 0xba, 0xcb, 0xdc, 0xed, 0xfe,
        0x0f,
    ];

    fn full_value(metadata: &str) -> OffsetCommitValue<'_> {
        OffsetCommitValue {
            offset: 42,
            leader_epoch: 7,
            metadata,
            commit_timestamp: 1_700_000_000_123,
            expire_timestamp: 1_700_000_600_000,
            topic_id: Some(TOPIC_ID),
        }
    }

    /// What a value decodes to after a trip through `version`.
    fn as_seen_at(v: OffsetCommitValue<'_>, version: i16) -> OffsetCommitValue<'_> {
        OffsetCommitValue {
            leader_epoch: if version >= 3 {
                v.leader_epoch
            } else {
                NO_LEADER_EPOCH
            },
            expire_timestamp: if version == 1 {
                v.expire_timestamp
            } else {
                NO_TIMESTAMP
            },
            topic_id: if version >= 4 { v.topic_id } else { None },
            ..v
        }
    }

    fn encode_value(v: &OffsetCommitValue<'_>, version: i16) -> Vec<u8> {
        let mut out = Vec::new();
        v.encode_into(version, &mut out);
        assert_eq!(out.len(), v.encoded_len(version));
        out
    }

    fn member(i: u8, with_instance: bool) -> MemberMetadata {
        MemberMetadata {
            member_id: format!("consumer-1-{i}"),
            group_instance_id: with_instance.then(|| format!("instance-{i}")),
            client_id: "consumer-1".into(),
            client_host: "/10.0.0.1".into(),
            rebalance_timeout: 300_000,
            session_timeout: 45_000,
            subscription: vec![0, 1, i, 3],
            assignment: vec![i; 7],
        }
    }

    fn group_value() -> GroupMetadataValue {
        GroupMetadataValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("consumer-1-0".into()),
            current_state_timestamp: 1_700_000_000_000,
            members: vec![member(0, true), member(1, false)],
        }
    }

    fn group_as_seen_at(mut v: GroupMetadataValue, version: i16) -> GroupMetadataValue {
        if version < 2 {
            v.current_state_timestamp = NO_TIMESTAMP;
        }
        for m in &mut v.members {
            if version < 3 {
                m.group_instance_id = None;
            }
            if version < 1 {
                m.rebalance_timeout = NO_REBALANCE_TIMEOUT;
            }
        }
        v
    }

    #[test]
    fn offset_commit_key_known_bytes_and_round_trip() {
        let key = OffsetCommitKey {
            group: "g",
            topic: "t",
            partition: 3,
        };
        let mut out = Vec::new();
        key.encode_into(&mut out);
        assert_eq!(out, [0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3]);
        assert_eq!(decode_key(&out), Ok(RecordKey::OffsetCommit(key)));
        assert_eq!(key_record_type(&out), Ok(OFFSET_COMMIT_KEY_TYPE));
        // Type 0 (legacy) has the same layout.
        out[1] = 0;
        assert_eq!(decode_key(&out), Ok(RecordKey::OffsetCommit(key)));
        assert_eq!(key_record_type(&out), Ok(OFFSET_COMMIT_KEY_TYPE_LEGACY));
        // The type alone needs its two bytes, nothing more.
        assert_eq!(
            key_record_type(&out[..2]),
            Ok(OFFSET_COMMIT_KEY_TYPE_LEGACY)
        );
        assert!(key_record_type(&out[..1]).is_err());
    }

    #[test]
    fn group_metadata_key_round_trip() {
        let key = GroupMetadataKey { group: "my-group" };
        let mut out = Vec::new();
        key.encode_into(&mut out);
        assert_eq!(out.len(), key.encoded_len());
        assert_eq!(&out[..4], [0, 2, 0, 8]);
        assert_eq!(decode_key(&out), Ok(RecordKey::GroupMetadata(key)));
        assert_eq!(key_record_type(&out), Ok(GROUP_METADATA_KEY_TYPE));
    }

    #[test]
    fn unknown_key_types_are_reported_not_rejected() {
        for t in [3i16, 4, 11, 100, i16::MAX, -1] {
            let mut bytes = t.to_be_bytes().to_vec();
            bytes.extend_from_slice(b"whatever follows");
            assert_eq!(
                decode_key(&bytes),
                Ok(RecordKey::Unknown { record_type: t })
            );
        }
    }

    #[test]
    fn malformed_keys_error() {
        let key = OffsetCommitKey {
            group: "group",
            topic: "topic",
            partition: 1,
        };
        let mut good = Vec::new();
        key.encode_into(&mut good);
        for cut in 0..good.len() {
            assert!(decode_key(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode_key(&trailing),
            Err(FormatError::TrailingBytes { .. })
        ));
        let mut bad_utf8 = good.clone();
        bad_utf8[4] = 0xff;
        assert_eq!(
            decode_key(&bad_utf8),
            Err(FormatError::InvalidUtf8("group"))
        );
        let mut null_group = good.clone();
        null_group[2..4].copy_from_slice(&(-1i16).to_be_bytes());
        assert!(matches!(
            decode_key(&null_group),
            Err(FormatError::BadLength { what: "group", .. })
        ));
        let mut neg = good.clone();
        neg[2..4].copy_from_slice(&(-2i16).to_be_bytes());
        assert!(decode_key(&neg).is_err());
        let mut gkey = Vec::new();
        GroupMetadataKey { group: "g" }.encode_into(&mut gkey);
        for cut in 0..gkey.len() {
            assert!(decode_key(&gkey[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn every_offset_commit_value_version_round_trips() {
        for metadata in ["", "some client metadata", "ünïcødé"] {
            let v = full_value(metadata);
            for version in 0..=OFFSET_COMMIT_VALUE_MAX_VERSION {
                let bytes = encode_value(&v, version);
                assert_eq!(&bytes[..2], version.to_be_bytes());
                assert_eq!(
                    OffsetCommitValue::decode(&bytes),
                    Ok((version, as_seen_at(v, version))),
                    "version {version}"
                );
            }
        }
    }

    #[test]
    fn offset_commit_value_v3_known_bytes() {
        let v = OffsetCommitValue {
            offset: 100,
            leader_epoch: 2,
            metadata: "m",
            commit_timestamp: 0x0102_0304_0506_0708,
            expire_timestamp: NO_TIMESTAMP,
            topic_id: None,
        };
        assert_eq!(
            encode_value(&v, 3),
            [
                0, 3, // version
                0, 0, 0, 0, 0, 0, 0, 100, // offset
                0, 0, 0, 2, // leader epoch
                0, 1, b'm', // metadata
                1, 2, 3, 4, 5, 6, 7, 8, // commit timestamp
            ]
        );
        // v4: compact string (len + 1), empty tagged fields.
        assert_eq!(
            encode_value(&v, 4),
            [
                0, 4, 0, 0, 0, 0, 0, 0, 0, 100, 0, 0, 0, 2, 2, b'm', 1, 2, 3, 4, 5, 6, 7, 8, 0
            ]
        );
    }

    #[test]
    fn version_for_write_follows_kafka() {
        let mut v = full_value("");
        assert_eq!(v.version_for_write(), 1);
        v.expire_timestamp = NO_TIMESTAMP;
        assert_eq!(v.version_for_write(), 4);
        v.topic_id = None;
        assert_eq!(v.version_for_write(), OffsetCommitValue::VERSION_DEFAULT);
        assert_eq!(OffsetCommitValue::VERSION_DEFAULT, 3);
    }

    #[test]
    fn v4_tagged_fields_unknown_tags_are_skipped_and_bad_topic_id_rejected() {
        let v = OffsetCommitValue {
            topic_id: None,
            ..full_value("x")
        };
        let mut bytes = encode_value(&v, 4);
        // Replace the empty tagged-field section with: 2 fields, tag 5 (3 bytes), tag 0 (uuid).
        bytes.pop();
        bytes.extend_from_slice(&[2, 5, 3, 9, 9, 9, 0, 16]);
        bytes.extend_from_slice(&TOPIC_ID);
        let (version, decoded) = OffsetCommitValue::decode(&bytes).expect("decodes");
        assert_eq!(version, 4);
        assert_eq!(decoded.topic_id, Some(TOPIC_ID));
        let mut short_id = encode_value(&v, 4);
        short_id.pop();
        short_id.extend_from_slice(&[1, 0, 2, 1, 2]);
        assert!(matches!(
            OffsetCommitValue::decode(&short_id),
            Err(FormatError::BadLength { .. })
        ));
    }

    #[test]
    fn malformed_offset_commit_values_error() {
        let v = full_value("metadata");
        for version in 0..=OFFSET_COMMIT_VALUE_MAX_VERSION {
            let bytes = encode_value(&v, version);
            for cut in 0..bytes.len() {
                assert!(
                    OffsetCommitValue::decode(&bytes[..cut]).is_err(),
                    "version {version} cut at {cut}"
                );
            }
            let mut trailing = bytes.clone();
            trailing.push(0);
            assert!(
                OffsetCommitValue::decode(&trailing).is_err(),
                "trailing byte at version {version}"
            );
        }
        for bad in [-1i16, 5, i16::MAX] {
            let mut bytes = encode_value(&v, 3);
            bytes[..2].copy_from_slice(&bad.to_be_bytes());
            assert_eq!(
                OffsetCommitValue::decode(&bytes),
                Err(FormatError::UnsupportedVersion {
                    what: "OffsetCommitValue",
                    version: bad
                })
            );
        }
        // Invalid UTF-8 in metadata (v3: metadata bytes start at 16).
        let mut bytes = encode_value(&v, 3);
        bytes[16] = 0xc3;
        bytes[17] = 0x28;
        assert_eq!(
            OffsetCommitValue::decode(&bytes),
            Err(FormatError::InvalidUtf8("metadata"))
        );
        // Null metadata is not allowed.
        let empty = OffsetCommitValue { metadata: "", ..v };
        let mut bytes = encode_value(&empty, 3);
        bytes[14..16].copy_from_slice(&(-1i16).to_be_bytes());
        assert!(OffsetCommitValue::decode(&bytes).is_err());
    }

    #[test]
    fn oversized_strings_fail_validation_and_encoding() {
        let long = "x".repeat(MAX_STRING_BYTES + 1);
        let ok = "x".repeat(MAX_STRING_BYTES);
        let v = full_value(&long);
        assert!(v.validate(3).is_err());
        assert!(full_value(&ok).validate(3).is_ok());
        assert!(full_value("").validate(5).is_err());
        let key = OffsetCommitKey {
            group: &long,
            topic: "t",
            partition: 0,
        };
        assert!(key.validate().is_err());
        let result = std::panic::catch_unwind(|| {
            let mut out = Vec::new();
            v.encode_into(3, &mut out);
        });
        assert!(result.is_err(), "encoding an oversized string must panic");
        // The limit is exact at both ends, including compact (v4) strings.
        let at_limit = full_value(&ok);
        for version in [3, 4] {
            let bytes = encode_value(&at_limit, version);
            assert_eq!(
                OffsetCommitValue::decode(&bytes).map(|(_, d)| d.metadata.len()),
                Ok(MAX_STRING_BYTES)
            );
        }
    }

    #[test]
    fn every_group_metadata_value_version_round_trips() {
        for version in 0..=GROUP_METADATA_VALUE_MAX_VERSION {
            for value in [
                group_value(),
                GroupMetadataValue {
                    protocol_type: String::new(),
                    generation: 0,
                    protocol: None,
                    leader: None,
                    current_state_timestamp: NO_TIMESTAMP,
                    members: Vec::new(),
                },
            ] {
                let mut out = Vec::new();
                value.encode_into(version, &mut out);
                assert_eq!(out.len(), value.encoded_len(version));
                assert_eq!(
                    GroupMetadataValue::decode(&out),
                    Ok((version, group_as_seen_at(value.clone(), version))),
                    "version {version}"
                );
            }
        }
    }

    #[test]
    fn malformed_group_metadata_values_error() {
        for version in 0..=GROUP_METADATA_VALUE_MAX_VERSION {
            let mut bytes = Vec::new();
            group_value().encode_into(version, &mut bytes);
            for cut in 0..bytes.len() {
                assert!(
                    GroupMetadataValue::decode(&bytes[..cut]).is_err(),
                    "version {version} cut at {cut}"
                );
            }
            bytes.push(0);
            assert!(GroupMetadataValue::decode(&bytes).is_err());
        }
        // A member count far larger than the input is rejected before allocating.
        let empty = GroupMetadataValue::default();
        let mut bytes = Vec::new();
        empty.encode_into(3, &mut bytes);
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(matches!(
            GroupMetadataValue::decode(&bytes),
            Err(FormatError::BadLength {
                what: "members",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_key(&bytes);
            let _ = OffsetCommitValue::decode(&bytes);
            let _ = GroupMetadataValue::decode(&bytes);
        }

        #[test]
        fn random_offset_commit_values_round_trip(
            offset: i64,
            leader_epoch: i32,
            metadata in ".{0,40}",
            commit_timestamp: i64,
            expire_timestamp: i64,
            topic_id: Option<[u8; 16]>,
            version in 0i16..=4,
        ) {
            let v = OffsetCommitValue {
                offset, leader_epoch, metadata: &metadata, commit_timestamp, expire_timestamp,
                topic_id,
            };
            let bytes = encode_value(&v, version);
            prop_assert_eq!(OffsetCommitValue::decode(&bytes), Ok((version, as_seen_at(v, version))));
        }

        #[test]
        fn the_v3_fast_path_agrees_with_the_general_decoder(
            bytes in proptest::collection::vec(any::<u8>(), 24),
            offset: i64,
            leader_epoch: i32,
            commit_timestamp: i64,
        ) {
            // Random 24-byte inputs, and well-formed v3 values without metadata.
            prop_assert_eq!(OffsetCommitValue::decode(&bytes), OffsetCommitValue::decode_any(&bytes));
            let v = OffsetCommitValue {
                offset, leader_epoch, metadata: "", commit_timestamp,
                expire_timestamp: NO_TIMESTAMP, topic_id: None,
            };
            let encoded = encode_value(&v, OffsetCommitValue::VERSION_DEFAULT);
            prop_assert!(OffsetCommitValue::decode_v3_without_metadata(&encoded).is_some());
            prop_assert_eq!(OffsetCommitValue::decode(&encoded), OffsetCommitValue::decode_any(&encoded));
            prop_assert_eq!(OffsetCommitValue::decode(&encoded), Ok((3, v)));
        }

        #[test]
        fn key_decoder_agrees_with_decode_key(
            keys in proptest::collection::vec((0usize..3, 0usize..3, any::<i32>(), 0u8..4), 1..12),
        ) {
            // Runs of keys sharing group and topic, other key types in between, and keys
            // whose prefix matches the previous one but whose length does not.
            const GROUPS: [&str; 3] = ["g", "group-1", "h"];
            const TOPICS: [&str; 3] = ["t", "topic-1", "u"];
            let encoded: Vec<Vec<u8>> = keys
                .iter()
                .map(|&(g, t, partition, kind)| {
                    let mut out = Vec::new();
                    match kind {
                        0 => GroupMetadataKey { group: GROUPS[g] }.encode_into(&mut out),
                        1 => {
                            let key = OffsetCommitKey { group: GROUPS[g], topic: TOPICS[t], partition };
                            key.encode_into(&mut out);
                            out.push(0); // one trailing byte: malformed
                        }
                        _ => OffsetCommitKey { group: GROUPS[g], topic: TOPICS[t], partition }
                            .encode_into(&mut out),
                    }
                    out
                })
                .collect();
            let mut decoder = KeyDecoder::default();
            for bytes in &encoded {
                prop_assert_eq!(decoder.decode(bytes), decode_key(bytes));
            }
        }

        #[test]
        fn random_keys_round_trip(group in ".{0,30}", topic in ".{0,30}", partition: i32) {
            let key = OffsetCommitKey { group: &group, topic: &topic, partition };
            let mut out = Vec::new();
            key.encode_into(&mut out);
            prop_assert_eq!(out.len(), key.encoded_len());
            prop_assert_eq!(decode_key(&out), Ok(RecordKey::OffsetCommit(key)));
        }
    }
}

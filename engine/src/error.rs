//! Typed errors, each mapped to the Kafka error code a broker would return for it.

use std::path::PathBuf;

/// Kafka protocol error codes used by the engine (from Kafka's `Errors.java`).
pub mod kafka_code {
    /// The record failed its CRC or framing checks.
    pub const CORRUPT_MESSAGE: i16 = 2;
    /// The partition does not exist (a negative partition in a commit, say).
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    /// The offset metadata string is longer than `offset.metadata.max.bytes`.
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    /// The coordinator could not make the commit durable in time (retriable).
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    /// This engine no longer serves the partition (failed closed, closed, unloaded; retriable).
    pub const NOT_COORDINATOR: i16 = 16;
    /// The topic name is empty or too long.
    pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
    /// The group id is empty or too long.
    pub const INVALID_GROUP_ID: i16 = 24;
    /// The commit as a whole is too large to be written.
    pub const INVALID_COMMIT_OFFSET_SIZE: i16 = 28;
    /// The request is malformed in a way no more specific code covers.
    pub const INVALID_REQUEST: i16 = 42;
}

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The group id is empty or longer than a Kafka string may be.
    #[error("invalid group id: {0}")]
    InvalidGroupId(&'static str),
    /// A topic name is empty or longer than a Kafka string may be.
    #[error("invalid topic name: {0}")]
    InvalidTopic(&'static str),
    /// A partition number is negative.
    #[error("invalid partition {0}: partitions are non-negative")]
    InvalidPartition(i32),
    /// A committed offset is negative.
    #[error("invalid offset {0}: committed offsets are non-negative")]
    InvalidOffset(i64),
    /// The metadata string is longer than `offset.metadata.max.bytes`.
    #[error("offset metadata is {len} bytes, over offset.metadata.max.bytes = {max}")]
    OffsetMetadataTooLarge {
        /// Length of the rejected metadata, in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// A request is malformed (too many partitions, encoded size over a limit, ...).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// One commit encodes to more bytes than one partition's batch may hold.
    #[error("commit encodes to up to {bytes} bytes, over the {max}-byte batch limit")]
    CommitTooLarge {
        /// Upper bound of the commit's encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The commit was not durable within `offsets.commit.timeout.ms`.
    #[error("commit not durable within offsets.commit.timeout.ms = {timeout_ms} ms")]
    CommitTimeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The partition hit an I/O error and was failed closed; nothing more is written to it
    /// until it is recovered from disk (reopen the engine).
    #[error("offsets partition {partition} failed closed after an I/O error: {reason}")]
    PartitionFailed {
        /// The offsets partition.
        partition: u32,
        /// What failed.
        reason: String,
    },
    /// This engine (or this shard of it) does not host the offsets partition.
    #[error("offsets partition {partition} is not hosted here")]
    NotCoordinator {
        /// The offsets partition.
        partition: u32,
    },
    /// The engine has been closed.
    #[error("engine is closed")]
    Closed,
    /// A group protocol error (commit fencing, group admin): Kafka's code is the group
    /// error's.
    #[error(transparent)]
    Group(#[from] crate::group::GroupError),
    /// The data directory exists and is not a directory.
    #[error("data directory {0} is not a directory")]
    DataDirNotDirectory(PathBuf),
    /// The data directory cannot be written (permissions, read-only filesystem).
    #[error("data directory {path} is not writable: {source}")]
    DataDirUnwritable {
        /// The data directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another open engine holds the data directory's lock.
    #[error("data directory {0} is locked by another open engine")]
    DataDirLocked(PathBuf),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Stored data failed its checks somewhere other than a torn tail.
    #[error("corrupt log {file} at byte {position}: {reason}")]
    Corrupt {
        /// The segment file.
        file: PathBuf,
        /// Byte position of the bad batch inside the file.
        position: u64,
        /// What check failed.
        reason: String,
    },
    /// An I/O error outside the commit path (open, recovery, close).
    #[error("{context}: {source}")]
    Io {
        /// What the engine was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The Kafka error code a broker should return for this error, where one exists.
    ///
    /// Commit timeouts map to `COORDINATOR_NOT_AVAILABLE` and a failed-closed partition to
    /// `NOT_COORDINATOR`, as Kafka's group coordinator maps a timed-out or failed append to
    /// `__consumer_offsets`; both are retriable for clients.
    pub fn kafka_error_code(&self) -> Option<i16> {
        use kafka_code::*;
        match self {
            Error::InvalidGroupId(_) => Some(INVALID_GROUP_ID),
            Error::InvalidTopic(_) => Some(INVALID_TOPIC_EXCEPTION),
            Error::InvalidPartition(_) => Some(UNKNOWN_TOPIC_OR_PARTITION),
            Error::InvalidOffset(_) | Error::InvalidRequest(_) => Some(INVALID_REQUEST),
            Error::OffsetMetadataTooLarge { .. } => Some(OFFSET_METADATA_TOO_LARGE),
            Error::CommitTooLarge { .. } => Some(INVALID_COMMIT_OFFSET_SIZE),
            Error::CommitTimeout { .. } => Some(COORDINATOR_NOT_AVAILABLE),
            Error::PartitionFailed { .. } | Error::NotCoordinator { .. } | Error::Closed => {
                Some(NOT_COORDINATOR)
            }
            Error::Corrupt { .. } => Some(CORRUPT_MESSAGE),
            Error::Group(error) => Some(error.kafka_code()),
            Error::DataDirNotDirectory(_)
            | Error::DataDirLocked(_)
            | Error::DataDirUnwritable { .. }
            | Error::InvalidConfig(_)
            | Error::Io { .. } => None,
        }
    }

    /// Whether a client may retry the request as it is.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Error::CommitTimeout { .. }
                | Error::PartitionFailed { .. }
                | Error::NotCoordinator { .. }
                | Error::Closed
        ) || matches!(self, Error::Group(error) if error.is_retriable())
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

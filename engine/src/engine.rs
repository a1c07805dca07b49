//! The public handle: open a data directory, commit and fetch offsets, close.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};

use crate::completion::CommitFuture;
use crate::config::{COMMIT_PARTITIONS_MAX, Config, KAFKA_STRING_BYTES_MAX};
use crate::error::{Error, Result};
use crate::offsets::{CommittedOffset, OffsetCommit, TopicPartitionOffset};
use crate::routing::kafka_partition_for_group;
use crate::shard::group_commit::{
    PARTITION_BATCH_BYTES_MAX, PendingCommit, PendingOffset, commit_record_bytes_max,
};
use crate::shard::{FetchReply, RecoveryReport, Request, Shard};
use crate::storage::{Storage, UringStorage};

/// An open engine. Cheap to clone; every clone talks to the same shard.
///
/// ```
/// # fn main() -> coffer::Result<()> {
/// use coffer::{Config, Engine, OffsetCommit};
///
/// let dir = std::env::temp_dir().join(format!("coffer-doc-{}", std::process::id()));
/// let mut config = Config::new(&dir);
/// config.offsets_topic_num_partitions = 4;
/// config.offsets_topic_segment_bytes = 1 << 20;
/// let engine = Engine::open(config)?;
///
/// let commit = OffsetCommit {
///     topic: "orders",
///     partition: 0,
///     offset: 42,
///     leader_epoch: Some(3),
///     metadata: "",
/// };
/// // The future resolves once the commit is durable; `wait` blocks for it.
/// engine.commit_offsets("billing", &[commit]).wait()?;
///
/// let fetched = engine.fetch_offsets("billing", &[("orders", 0)])?;
/// assert_eq!(fetched[0].as_ref().map(|c| c.offset), Some(42));
/// engine.close()?;
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    config: Config,
    requests: Sender<Request>,
    shard: Mutex<Option<JoinHandle<()>>>,
    recovery: RecoveryReport,
}

impl Engine {
    /// Opens (creating if needed) the data directory in `config`, takes its lock and
    /// recovers every offsets partition before returning.
    pub fn open(config: Config) -> Result<Engine> {
        let storage =
            UringStorage::new().map_err(|e| Error::io("creating the io_uring instance", e))?;
        Engine::open_with_storage(config, Box::new(storage))
    }

    /// Opens the engine over a given storage (the simulated disk, in tests).
    pub fn open_with_storage(config: Config, storage: Box<dyn Storage>) -> Result<Engine> {
        config.validate()?;
        let (requests, inbox) = bounded(config.request_queue_depth_max);
        let (opened_tx, opened_rx) = bounded(1);
        let shard_config = config.clone();
        let shard = std::thread::Builder::new()
            .name("coffer-shard-0".into())
            .spawn(move || match Shard::open(&shard_config, storage) {
                Ok((shard, report)) => {
                    if opened_tx.send(Ok(report)).is_ok() {
                        shard.run(inbox);
                    }
                }
                Err(error) => {
                    let _ = opened_tx.send(Err(error));
                }
            })
            .map_err(|e| Error::io("spawning the shard thread", e))?;
        let opened = opened_rx.recv().unwrap_or(Err(Error::Closed));
        let recovery = match opened {
            Ok(report) => report,
            Err(error) => {
                let _ = shard.join();
                return Err(error);
            }
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                config,
                requests,
                shard: Mutex::new(Some(shard)),
                recovery,
            }),
        })
    }

    /// What recovery found when this engine opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The offsets partition that stores `group_id`'s state (Kafka's mapping).
    pub fn partition_for(&self, group_id: &str) -> u32 {
        kafka_partition_for_group(group_id, self.inner.config.offsets_topic_num_partitions)
    }

    /// Commits offsets for a group. The future resolves `Ok` once every offset is durable,
    /// or with the error that stopped it; nothing is written for a request that fails
    /// validation. Several offsets for one topic partition: the last one wins.
    ///
    /// Waits for queue space when the shard is saturated (backpressure).
    pub fn commit_offsets(&self, group_id: &str, offsets: &[OffsetCommit<'_>]) -> CommitFuture {
        let config = &self.inner.config;
        let bytes_max = match validate_commit(config, group_id, offsets) {
            Ok(bytes) => bytes,
            Err(error) => return CommitFuture::resolved(Err(error)),
        };
        if offsets.is_empty() {
            return CommitFuture::resolved(Ok(()));
        }
        let (future, completer) = CommitFuture::pending();
        let commit = PendingCommit {
            group: group_id.to_owned(),
            offsets_partition: self.partition_for(group_id),
            offsets: offsets
                .iter()
                .map(|o| PendingOffset {
                    topic: o.topic.to_owned(),
                    partition: o.partition,
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata.to_owned(),
                })
                .collect(),
            bytes_max,
            deadline: Instant::now() + Duration::from_millis(config.offsets_commit_timeout_ms),
            completer,
        };
        // A failed send drops the commit, and with it the completer, which fails the
        // future with `Closed`.
        let _ = self.inner.requests.send(Request::Commit(commit));
        future
    }

    /// The committed offsets of the given topic partitions of a group, in the order asked;
    /// `None` where nothing is committed.
    pub fn fetch_offsets(
        &self,
        group_id: &str,
        partitions: &[(&str, i32)],
    ) -> Result<Vec<Option<CommittedOffset>>> {
        validate_group(group_id)?;
        let wanted = partitions
            .iter()
            .map(|(topic, partition)| ((*topic).to_owned(), *partition))
            .collect();
        match self.fetch(group_id, Some(wanted))? {
            FetchReply::Some(found) => Ok(found),
            FetchReply::All(_) => Err(Error::Closed),
        }
    }

    /// Every committed offset of a group, sorted by topic and partition.
    pub fn fetch_all_offsets(&self, group_id: &str) -> Result<Vec<TopicPartitionOffset>> {
        validate_group(group_id)?;
        match self.fetch(group_id, None)? {
            FetchReply::All(found) => Ok(found),
            FetchReply::Some(_) => Err(Error::Closed),
        }
    }

    fn fetch(&self, group_id: &str, partitions: Option<Vec<(String, i32)>>) -> Result<FetchReply> {
        let (reply, answer) = bounded(1);
        let request = Request::Fetch {
            group: group_id.to_owned(),
            offsets_partition: self.partition_for(group_id),
            partitions,
            reply,
        };
        self.inner
            .requests
            .send(request)
            .map_err(|_| Error::Closed)?;
        answer.recv().unwrap_or(Err(Error::Closed))
    }

    /// Flushes what is queued, trims and syncs the logs, releases the data directory and
    /// stops the shard. Later calls on any clone fail with [`Error::Closed`].
    pub fn close(&self) -> Result<()> {
        let (reply, answer) = bounded(1);
        let sent = self.inner.requests.send(Request::Close { reply }).is_ok();
        let result = if sent {
            answer.recv().unwrap_or(Err(Error::Closed))
        } else {
            Err(Error::Closed)
        };
        self.inner.join_shard();
        result
    }
}

impl EngineInner {
    fn join_shard(&self) {
        let handle = self
            .shard
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for EngineInner {
    fn drop(&mut self) {
        // Dropping the last handle closes the engine cleanly: the shard sees its inbox
        // disconnect once `requests` is gone, flushes, closes and exits.
        let (reply, _answer) = bounded(1);
        let _ = self.requests.send(Request::Close { reply });
        self.join_shard();
    }
}

fn validate_group(group_id: &str) -> Result<()> {
    if group_id.is_empty() {
        return Err(Error::InvalidGroupId("empty"));
    }
    if group_id.len() > KAFKA_STRING_BYTES_MAX {
        return Err(Error::InvalidGroupId("longer than 32767 bytes"));
    }
    Ok(())
}

/// Checks a commit before anything is queued; returns the upper bound of its encoded bytes.
fn validate_commit(config: &Config, group_id: &str, offsets: &[OffsetCommit<'_>]) -> Result<usize> {
    validate_group(group_id)?;
    if offsets.len() > COMMIT_PARTITIONS_MAX {
        return Err(Error::InvalidRequest("too many partitions in one commit"));
    }
    let mut bytes = crate::format::BATCH_HEADER_BYTES;
    for commit in offsets {
        if commit.topic.is_empty() {
            return Err(Error::InvalidTopic("empty"));
        }
        if commit.topic.len() > KAFKA_STRING_BYTES_MAX {
            return Err(Error::InvalidTopic("longer than 32767 bytes"));
        }
        if commit.partition < 0 {
            return Err(Error::InvalidPartition(commit.partition));
        }
        if commit.offset < 0 {
            return Err(Error::InvalidOffset(commit.offset));
        }
        if commit.leader_epoch.is_some_and(|epoch| epoch < 0) {
            return Err(Error::InvalidRequest("negative leader epoch"));
        }
        if commit.metadata.len() > config.offset_metadata_max_bytes {
            return Err(Error::OffsetMetadataTooLarge {
                len: commit.metadata.len(),
                max: config.offset_metadata_max_bytes,
            });
        }
        bytes += commit_record_bytes_max(group_id, commit.topic, commit.metadata);
    }
    if bytes > PARTITION_BATCH_BYTES_MAX || bytes > config.group_commit_bytes_max {
        return Err(Error::CommitTooLarge {
            bytes,
            max: PARTITION_BATCH_BYTES_MAX.min(config.group_commit_bytes_max),
        });
    }
    Ok(bytes - crate::format::BATCH_HEADER_BYTES)
}

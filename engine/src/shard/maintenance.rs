//! The shard's background work: compaction steps and the offset retention check, run at low
//! priority between requests (see [`crate::compact`]).

use std::time::{Duration, Instant};

use crate::compact::job::{CompactionJob, StepContext, StepOutcome};
use crate::compact::retention::{self, ExpiredOffset, GroupActivity};
use crate::compact::select::{self, Candidate, SelectSettings};
use crate::compact::{
    COMPACTION_CREDIT_STEPS_MAX, COMPACTION_READ_PER_BYTE_WRITTEN, COMPACTION_STEP_BYTES_MAX,
    COMPACTION_STEPS_PER_FLUSH_MAX,
};
use crate::completion::{CommitFuture, CompletionPool};
use crate::config::COMMIT_PARTITIONS_MAX;
use crate::config::Config;
use crate::error::Result;
use crate::events::{EngineEvent, EventSink};
use crate::shard::group_commit::{
    PARTITION_BATCH_BYTES_MAX, PendingCommit, PendingOffset, commit_record_bytes_max,
};

use super::{Shard, ShardMetrics};

/// Token bit of a compaction job's background syncs; the low 32 bits number the job.
pub(super) const COMPACTION_SYNC_TOKEN_BIT: u64 = 1 << 40;

/// Most compactions one explicit [`Shard::compact_until_clean`] runs: each one removes dead
/// records, so a shard runs out of candidates long before; the bound only stops a bug from
/// spinning.
const COMPACTIONS_PER_REQUEST_MAX: u32 = 4096;

/// Steps one compaction may take before it is abandoned as stuck: a step advances by at
/// least one batch, so this bounds a compaction of `segments × batches` far above any real
/// one.
const STEPS_PER_COMPACTION_MAX: u64 = 1 << 24;

/// Background-work state of one shard.
pub(crate) struct Maintenance {
    cleaner_enabled: bool,
    select: SelectSettings,
    offsets_retention_ms: i64,
    retention_check_interval: Duration,
    pub(crate) next_retention_check: Instant,
    job: Option<CompactionJob>,
    job_steps: u64,
    /// Jobs started so far (wrapping): the low bits of each one's background sync token,
    /// so that an abandoned job's sync finishing late is told apart.
    jobs_started: u32,
    /// The token of an abandoned job's background operation still in flight: it holds the
    /// compactor's storage slot ([`crate::compact::job::COMPACTION_SYNCS_MAX`]), so no job
    /// starts until it is reaped.
    abandoned_sync: Option<u64>,
    /// Something changed that may have made a segment cleanable.
    maybe_dirty: bool,
    /// When a group that background compaction left alone (freshly sealed, see
    /// [`select::Deferral`]) becomes cleanable by age: the shard looks again then, even
    /// with nothing else happening.
    retry_at: Option<Instant>,
    /// `log.cleaner.backoff.ms`: the longest a freshly sealed segment waits.
    defer_max: Duration,
    /// Bytes the compactor may read under load, earned by bytes committed.
    credit_bytes: u64,
    /// `ShardMetrics::bytes` when credit was last earned.
    committed_bytes_seen: u64,
    read_buf: Vec<u8>,
    out_buf: Vec<u8>,
    pub(crate) events: EventSink,
}

impl Maintenance {
    /// Whether the periodic retention check is due at `now` (it runs between requests, so
    /// a shard that keeps two flushes in flight lets its pipeline empty first).
    pub(super) fn retention_check_due(&self, now: Instant) -> bool {
        now >= self.next_retention_check
    }

    pub(crate) fn new(config: &Config, events: EventSink) -> Maintenance {
        let retention_check_interval =
            Duration::from_millis(config.offsets_retention_check_interval_ms);
        Maintenance {
            cleaner_enabled: config.log_cleaner_enable,
            select: SelectSettings {
                min_cleanable_ratio: config.log_cleaner_min_cleanable_ratio,
                delete_retention_ms: config.log_cleaner_delete_retention_ms as i64,
                segment_bytes: config.offsets_topic_segment_bytes,
            },
            offsets_retention_ms: (config.offsets_retention_minutes as i64).saturating_mul(60_000),
            retention_check_interval,
            next_retention_check: Instant::now() + retention_check_interval,
            job: None,
            job_steps: 0,
            jobs_started: 0,
            abandoned_sync: None,
            maybe_dirty: true,
            retry_at: None,
            defer_max: Duration::from_millis(config.log_cleaner_backoff_ms),
            credit_bytes: 0,
            committed_bytes_seen: 0,
            read_buf: Vec::new(),
            out_buf: Vec::new(),
            events,
        }
    }

    /// A record in a sealed segment died, a segment rolled, or time passed.
    pub(crate) fn note_maybe_dirty(&mut self) {
        self.maybe_dirty = true;
    }

    /// Whether background compaction has a step to run now (not while the running job
    /// waits for its background sync).
    pub(crate) fn has_compaction_work(&self) -> bool {
        let job_can_step = self.job.as_ref().map(|job| !job.waits_for_sync());
        let can_start = self.maybe_dirty && self.abandoned_sync.is_none();
        self.cleaner_enabled && job_can_step.unwrap_or(can_start)
    }

    /// Whether a background operation of the compactor is in flight (the running job waits
    /// for it, or an abandoned job left it): the shard polls its completion.
    pub(crate) fn sync_in_flight(&self) -> bool {
        self.abandoned_sync.is_some()
            || self.job.as_ref().is_some_and(CompactionJob::waits_for_sync)
    }

    /// Hands a reaped background sync's outcome to the running job, if it is its sync; an
    /// abandoned job's frees the compactor's slot.
    pub(crate) fn sync_finished(&mut self, token: u64, result: std::io::Result<()>) {
        if self.abandoned_sync == Some(token) {
            self.abandoned_sync = None;
        } else if let Some(job) = self.job.as_mut() {
            job.sync_finished(token, result);
        }
    }

    /// Marks the shard maybe dirty once a deferred group's wait is over; returns when to
    /// look again otherwise.
    fn retry_due(&mut self, now: Instant) -> Option<Instant> {
        let at = self.retry_at?;
        if now < at {
            return Some(at);
        }
        self.retry_at = None;
        self.maybe_dirty = true;
        None
    }
}

impl Shard {
    /// Blocks for the next request; while the inbox is empty runs compaction steps (one per
    /// look at the inbox, so a request waits behind at most one bounded step), when due the
    /// retention check, and frees the offset caches' retired memory. Returns `Timeout` when
    /// the groups need service (their tick is due), `Disconnected` when every sender is gone.
    pub(super) fn next_request(
        &mut self,
        requests: &crossbeam_channel::Receiver<super::Request>,
    ) -> Result<super::Request, crossbeam_channel::RecvTimeoutError> {
        use crossbeam_channel::{RecvTimeoutError, TryRecvError};
        loop {
            let now = Instant::now();
            if now >= self.maintenance.next_retention_check {
                self.retention_check(super::wall_clock_ms());
            }
            let retry_at = self.maintenance.retry_due(now);
            // Group deadlines (session expiry, rebalance timeouts) bound every wait.
            let group_bound = self.group_wait_bound();
            if self.maintenance.has_compaction_work() {
                match requests.try_recv() {
                    Ok(request) => return Ok(request),
                    Err(TryRecvError::Empty) => self.compaction_step(super::wall_clock_ms()),
                    Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                }
                if group_bound.is_some() {
                    return Err(RecvTimeoutError::Timeout);
                }
                continue;
            }
            if let Ok(request) = requests.try_recv() {
                return Ok(request);
            }
            self.advance_checkpoint(false);
            let now = Instant::now();
            let mut deadline = self.maintenance.next_retention_check;
            if self.collect_caches() {
                // Retired cache memory a pinned reader still holds: try again soon, so a
                // shard that goes quiet does not keep it indefinitely.
                deadline = deadline.min(now + super::IDLE_COLLECT_INTERVAL);
            }
            if let Some(bound) = group_bound {
                deadline = deadline.min(now + bound);
            }
            if self.checkpoint_syncing() || self.maintenance.sync_in_flight() {
                // Syncs in flight: look at their completions again soon.
                deadline = deadline.min(now + super::journaling::CHECKPOINT_POLL_INTERVAL);
            }
            if let Some(retry_at) = retry_at {
                deadline = deadline.min(retry_at);
            }
            match requests.recv_deadline(deadline) {
                Ok(request) => return Ok(request),
                Err(RecvTimeoutError::Timeout) if group_bound.is_some() => {
                    return Err(RecvTimeoutError::Timeout);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
            }
        }
    }

    /// The retention check, if it is due (a caller-driven shard under sustained load runs
    /// it between flushes, as the shard thread does between requests).
    pub(super) fn retention_if_due(&mut self) {
        if Instant::now() >= self.maintenance.next_retention_check {
            self.retention_check(super::wall_clock_ms());
        }
    }

    /// One round of idle work for a shard its caller drives (`LocalShard::flush` with nothing
    /// batched): the retention check when due, one bounded compaction step, and freeing the
    /// caches' retired memory. Returns whether compaction work remains.
    pub(super) fn idle_step(&mut self) -> bool {
        self.advance_checkpoint(false);
        self.retention_if_due();
        self.maintenance.retry_due(Instant::now());
        if self.maintenance.has_compaction_work() {
            self.compaction_step(super::wall_clock_ms());
        }
        self.collect_caches();
        self.maintenance.has_compaction_work() || self.maintenance.sync_in_flight()
    }

    /// After a flush: under sustained load, a step once the commits since the last one
    /// earned it (see `COMPACTION_READ_PER_BYTE_WRITTEN`).
    pub(super) fn after_flush(&mut self) {
        self.maintenance.credit_bytes = self.compaction_credit_bytes();
        self.maintenance.committed_bytes_seen = self.metrics.bytes;
        for _ in 0..COMPACTION_STEPS_PER_FLUSH_MAX {
            let earned_a_step = self.maintenance.credit_bytes >= COMPACTION_STEP_BYTES_MAX as u64;
            if !earned_a_step || !self.maintenance.has_compaction_work() {
                break;
            }
            self.compaction_step(super::wall_clock_ms());
        }
    }

    /// The compactor's credit with the bytes committed since the last `after_flush`.
    fn compaction_credit_bytes(&self) -> u64 {
        let earned = (self.metrics.bytes).saturating_sub(self.maintenance.committed_bytes_seen);
        let cap = COMPACTION_CREDIT_STEPS_MAX * COMPACTION_STEP_BYTES_MAX as u64;
        (self.maintenance.credit_bytes + earned * COMPACTION_READ_PER_BYTE_WRITTEN).min(cap)
    }

    /// Whether the next `after_flush` would run a compaction step.
    pub(super) fn compaction_step_earned(&self) -> bool {
        self.compaction_credit_bytes() >= COMPACTION_STEP_BYTES_MAX as u64
            && self.maintenance.has_compaction_work()
    }

    /// Runs compactions until no segment group is cleanable at `now_ms` (an explicit request:
    /// tests, admin). Returns how many finished.
    pub(super) fn compact_until_clean(&mut self, now_ms: i64) -> Result<u64> {
        let before = self.metrics.compaction.compactions;
        let mut started = 0;
        while started < COMPACTIONS_PER_REQUEST_MAX {
            if self.maintenance.job.is_none() {
                self.maintenance.maybe_dirty = true;
                if !self.start_compaction(now_ms, false) {
                    break;
                }
                started += 1;
            }
            // Bounded: a job ends (finishes, fails, quarantines) within STEPS_PER_COMPACTION_MAX
            // steps and three background syncs, each waited for once.
            while self.maintenance.job.is_some() || self.maintenance.sync_in_flight() {
                if !self.advance_compaction_waiting(now_ms) {
                    // Left to the background.
                    return Ok(self.metrics.compaction.compactions - before);
                }
            }
        }
        Ok(self.metrics.compaction.compactions - before)
    }

    /// One round of a compaction the caller may block for: waits for the outcome of the
    /// compactor's background operation in flight, if any, else runs one step. False when
    /// the storage reports nothing to wait for.
    fn advance_compaction_waiting(&mut self, now_ms: i64) -> bool {
        if self.maintenance.sync_in_flight() {
            return self.advance_checkpoint(true) != 0;
        }
        self.compaction_step(now_ms);
        true
    }

    /// One step of background compaction: of the running job, or starts one.
    pub(super) fn compaction_step(&mut self, now_ms: i64) {
        let read_before = self.metrics.compaction.bytes_read;
        if self.maintenance.job.is_none() && !self.start_compaction(now_ms, true) {
            return;
        }
        if self.maintenance.sync_in_flight() {
            return;
        }
        let Some(mut job) = self.maintenance.job.take() else {
            return;
        };
        let partition = job.partition;
        let started = Instant::now();
        let outcome = {
            let hosted = &mut self.partitions[partition as usize];
            let (Some(log), Some(cache), None) = (
                hosted.log.as_mut(),
                hosted.cache.as_deref(),
                &hosted.failure,
            ) else {
                job.abandon(self.storage.as_mut());
                return;
            };
            let mut ctx = StepContext {
                storage: self.storage.as_mut(),
                log,
                cache,
                partition: &mut hosted.compaction,
                read_buf: &mut self.maintenance.read_buf,
                out_buf: &mut self.maintenance.out_buf,
                metrics: &mut self.metrics.compaction,
            };
            job.step(&mut ctx)
        };
        let step_us = started.elapsed().as_micros() as u64;
        self.metrics.compaction.steps += 1;
        let read = self.metrics.compaction.bytes_read - read_before;
        // A step that read nothing (a swap, a file switch) still costs a step's worth.
        let cost = match read {
            0 => COMPACTION_STEP_BYTES_MAX as u64,
            read => read,
        };
        self.maintenance.credit_bytes = self.maintenance.credit_bytes.saturating_sub(cost);
        ShardMetrics::record_latency(&mut self.metrics.compaction_step_us, step_us);
        self.maintenance.job_steps += 1;
        match outcome {
            StepOutcome::Continue if self.maintenance.job_steps < STEPS_PER_COMPACTION_MAX => {
                self.maintenance.job = Some(job);
            }
            StepOutcome::Continue => {
                let committed = job.is_committed();
                job.abandon(self.storage.as_mut());
                let reason = "compaction made no progress".to_owned();
                self.compaction_failed(partition, reason, committed);
            }
            StepOutcome::Finished => self.maintenance.maybe_dirty = true,
            StepOutcome::Quarantined { segment, reason } => {
                self.maintenance.maybe_dirty = true;
                let event = EngineEvent::CompactionQuarantined {
                    offsets_partition: partition,
                    segment,
                    reason,
                };
                self.emit(event);
            }
            StepOutcome::Failed(reason) => self.compaction_failed(partition, reason, false),
            StepOutcome::FailedAfterCommit(reason) => {
                self.compaction_failed(partition, reason, true);
            }
        }
    }

    fn compaction_failed(&mut self, partition: u32, reason: String, fail_partition: bool) {
        self.metrics.compaction.compaction_errors += 1;
        if fail_partition {
            let hosted = &mut self.partitions[partition as usize];
            hosted.fail_closed(partition, format!("compaction: {reason}"), &self.failed);
            if let Some(log) = hosted.log.take() {
                log.abandon(self.storage.as_mut());
            }
        }
        let event = EngineEvent::CompactionFailed {
            offsets_partition: partition,
            reason,
        };
        self.emit(event);
    }

    /// Picks the dirtiest cleanable group of the shard and starts compacting it; with
    /// `defer` (background compaction) not a freshly sealed one ([`select::Deferral`]).
    fn start_compaction(&mut self, now_ms: i64, defer: bool) -> bool {
        if self.maintenance.abandoned_sync.is_some() {
            return false; // the compactor's storage slot is still taken
        }
        if !std::mem::take(&mut self.maintenance.maybe_dirty) {
            return false;
        }
        let mut deferral = select::Deferral {
            now: Instant::now(),
            wait_max: self.maintenance.defer_max,
            retry_at: None,
        };
        let mut best: Option<Candidate> = None;
        for (index, hosted) in self.partitions.iter().enumerate() {
            let (Some(log), None) = (hosted.log.as_ref(), &hosted.failure) else {
                continue;
            };
            let quarantined = &hosted.compaction.quarantined;
            let settings = (self.maintenance.select, now_ms);
            let deferring = defer.then_some(&mut deferral);
            let found = select::best_group(index as u32, log, quarantined, settings, deferring);
            if let Some(found) = found
                && best.is_none_or(|b| found.dirty_ratio > b.dirty_ratio)
            {
                best = Some(found);
            }
        }
        if let Some(at) = deferral.retry_at {
            let retry_at = &mut self.maintenance.retry_at;
            *retry_at = Some(retry_at.map_or(at, |earlier| earlier.min(at)));
        }
        let Some(candidate) = best else {
            return false;
        };
        let Some(log) = self.partitions[candidate.partition as usize].log.as_ref() else {
            return false;
        };
        let jobs_started = self.maintenance.jobs_started.wrapping_add(1);
        self.maintenance.jobs_started = jobs_started;
        let token = COMPACTION_SYNC_TOKEN_BIT | u64::from(jobs_started);
        match CompactionJob::start(self.storage.as_mut(), log, candidate, token) {
            Ok(job) => {
                self.maintenance.job = Some(job);
                self.maintenance.job_steps = 0;
                true
            }
            Err(error) => {
                let reason = format!("creating the compacted copy: {error}");
                self.compaction_failed(candidate.partition, reason, false);
                false
            }
        }
    }

    /// Ends the running compaction, if any (at close).
    pub(super) fn abandon_any_compaction(&mut self) {
        if let Some(partition) = self.maintenance.job.as_ref().map(|job| job.partition) {
            self.abandon_compaction(partition);
        }
    }

    /// Ends a compaction of `partition` before it is unloaded: one past its rename to
    /// `.swap` is completed (its background syncs waited for), so a clean unload leaves no
    /// `.swap`; any other is abandoned (its `.cleaned` removed; a sync of it still running
    /// reports to no job).
    pub(super) fn abandon_compaction(&mut self, partition: u32) {
        let Some(job) = self.maintenance.job.as_ref() else {
            return;
        };
        if job.partition != partition {
            return;
        }
        // Bounded: at most two more syncs and two more steps complete a committed job; a
        // round that gets no outcome stops.
        while self
            .maintenance
            .job
            .as_ref()
            .is_some_and(CompactionJob::is_committed)
        {
            if !self.advance_compaction_waiting(super::wall_clock_ms()) {
                break;
            }
        }
        if let Some(mut job) = self.maintenance.job.take() {
            if job.waits_for_sync() {
                self.maintenance.abandoned_sync = Some(job.sync_token());
            }
            job.abandon(self.storage.as_mut());
        }
    }

    /// Expires offsets by retention at `now_ms`: writes their tombstones through the group
    /// commit (flushing at once), counts them and reports each durable one as an event.
    /// Returns how many expired.
    pub(super) fn retention_check(&mut self, now_ms: i64) -> u64 {
        // Decide expiry only on the durable state with nothing batched: a commit waiting in
        // the batch would otherwise be acknowledged and then tombstoned by this check.
        if !self.batch.is_empty() {
            self.flush();
        }
        let (expired, more) = self.collect_expired(now_ms);
        // More than a check may take: check again as soon as the inbox is empty.
        self.maintenance.next_retention_check = if more {
            Instant::now()
        } else {
            Instant::now() + self.maintenance.retention_check_interval
        };
        self.maintenance.maybe_dirty = true;
        if expired.is_empty() {
            return 0;
        }
        let count = self.write_expiries(&expired);
        self.metrics.offsets_expired += count;
        count
    }

    /// The offsets of the partitions served here that have expired at `now_ms`, by group;
    /// and whether there were more than one check takes.
    fn collect_expired(&self, now_ms: i64) -> (Vec<ExpiredOffset>, bool) {
        let retention_ms = self.maintenance.offsets_retention_ms;
        let mut expired: Vec<ExpiredOffset> = Vec::new();
        let mut more = false;
        let coordinator = &self.groups.coordinator;
        // KIP-211: a group with members keeps its offsets; an empty one ages from when it
        // became empty; a group with no state (simple commits only) from each commit.
        let activity = |group: &str| {
            if coordinator.has_members(group) {
                GroupActivity::HasMembers
            } else if let Some(empty_since_ms) = coordinator.empty_since_ms(group) {
                GroupActivity::EmptySince(i64::try_from(empty_since_ms).unwrap_or(i64::MAX))
            } else {
                GroupActivity::NoGroupState
            }
        };
        for (index, hosted) in self.partitions.iter().enumerate() {
            let (Some(cache), Some(_), None) =
                (hosted.cache.as_deref(), &hosted.log, &hosted.failure)
            else {
                continue;
            };
            let partition = index as u32;
            more |= retention::collect_expired(
                cache,
                partition,
                now_ms,
                retention_ms,
                &activity,
                &mut expired,
            );
        }
        (expired, more)
    }

    /// Writes tombstones for `expired` through the group commit and waits for them; reports
    /// each one made durable as an event and returns how many were.
    fn write_expiries(&mut self, expired: &[ExpiredOffset]) -> u64 {
        if !self.batch.is_empty() {
            self.flush();
        }
        let mut futures = Vec::new();
        for group in expired.chunk_by(|a, b| a.group == b.group) {
            for part in split_by_bytes(group) {
                let (commit, future) = self.expiry_commit(part);
                futures.push((future, part));
                if let Err(commit) = self.batch.try_add(commit) {
                    self.flush();
                    let added = self.batch.try_add(commit);
                    debug_assert!(added.is_ok(), "an empty batch takes any commit");
                }
            }
        }
        self.flush();
        let mut count = 0;
        for (future, part) in futures {
            if future.wait().is_err() {
                continue; // the partition failed: nothing expired
            }
            for offset in part {
                count += 1;
                self.emit(EngineEvent::OffsetsExpired {
                    group: offset.group.clone(),
                    topic: offset.topic.clone(),
                    partition: offset.partition,
                    offset: offset.offset,
                });
            }
        }
        count
    }

    /// A tombstone commit for offsets of one group; its future is complete after the flush.
    fn expiry_commit(&self, offsets: &[ExpiredOffset]) -> (PendingCommit, CommitFuture) {
        let group = offsets[0].group.clone();
        let now = Instant::now();
        // Far enough that the flush right after never finds it past its deadline.
        let deadline = now + Duration::from_secs(3600);
        // The retention check is rare (every offsets.retention.check.interval.ms): a slot of
        // its own, rather than one from the engine's pool, is fine.
        let completions = CompletionPool::new(1);
        let (future, completer) =
            CommitFuture::pending(deadline, self.commit_timeout_ms, &completions);
        let bytes_max = offsets
            .iter()
            .map(|o| commit_record_bytes_max(&group, &o.topic, ""))
            .sum();
        let tombstones = offsets
            .iter()
            .map(|o| PendingOffset::tombstone(&o.topic, o.partition))
            .collect();
        let mut commit = self.pools.commits.take();
        commit.fill_owned(&group, offsets[0].offsets_partition, tombstones, bytes_max);
        commit.arm(now, deadline, completer);
        (commit, future)
    }

    pub(super) fn emit(&mut self, event: EngineEvent) {
        if !self.maintenance.events.emit(event) {
            self.metrics.events_dropped += 1;
        }
    }
}

/// Splits one group's expired offsets into requests that each fit one partition batch.
fn split_by_bytes(offsets: &[ExpiredOffset]) -> Vec<&[ExpiredOffset]> {
    let bytes_max = PARTITION_BATCH_BYTES_MAX - crate::format::BATCH_HEADER_BYTES;
    let mut parts = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (index, offset) in offsets.iter().enumerate() {
        let record = commit_record_bytes_max(&offset.group, &offset.topic, "");
        let count = index - start;
        if count > 0 && (bytes + record > bytes_max || count == COMMIT_PARTITIONS_MAX) {
            parts.push(&offsets[start..index]);
            start = index;
            bytes = 0;
        }
        bytes += record;
    }
    if start < offsets.len() {
        parts.push(&offsets[start..]);
    }
    parts
}

/// Bytes of the log and estimated live bytes per hosted partition, for the metrics.
pub(super) fn partition_space(shard: &Shard) -> Vec<PartitionSpace> {
    shard
        .partitions
        .iter()
        .enumerate()
        .filter_map(|(index, hosted)| {
            let log = hosted.log.as_ref()?;
            Some(PartitionSpace {
                offsets_partition: index as u32,
                log_bytes: log.size_bytes(),
                live_bytes_estimate: log.live_bytes_estimate(),
                segments: log.segment_count() as u32,
                quarantined_segments: hosted.compaction.quarantined.len() as u32,
                dead_records_bytes: log.table().dead_records_bytes(),
                untracked_segments: log.table().untracked_segments(),
            })
        })
        .collect()
}

/// Space use of one offsets partition (space amplification = `log_bytes / live_bytes_estimate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSpace {
    /// The offsets partition.
    pub offsets_partition: u32,
    /// Bytes of batches in its segments.
    pub log_bytes: u64,
    /// Estimated bytes of live records (see [`crate::log::liveness`]).
    pub live_bytes_estimate: u64,
    /// Segments, sealed and active.
    pub segments: u32,
    /// Segments the compactor quarantined.
    pub quarantined_segments: u32,
    /// Heap bytes of the segments' dead-record maps ([`crate::log::dead_records`]), the
    /// active segment's reservation included (reserved, touched only as its records die).
    pub dead_records_bytes: u64,
    /// Segments whose dead-record map was dropped: their records are tested by key.
    pub untracked_segments: u32,
}

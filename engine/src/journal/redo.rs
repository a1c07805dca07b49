//! Recovery of the journals at open: their entries written again into the segments.

use std::path::{Path, PathBuf};

use super::entry::{
    ENTRY_HEADER_BYTES, ENTRY_PAYLOAD_BYTES_MAX, EntryEnd, EntryHeader, parse_entry,
};
use super::{journal_dir, journal_file_sequence};
use crate::error::{Error, Result};
use crate::log::segment::{parse_segment_file_name, partition_dir, segment_file_name};
use crate::storage::{FileId, OpenMode, Storage};

/// How much of a journal file is read at once.
const READ_CHUNK_BYTES: usize = 4 << 20;

/// What the journals held at open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalRecovery {
    /// Journal files found (and removed once redone).
    pub files: u32,
    /// Valid entries found.
    pub entries: u64,
    /// Entries written again into their partition's segments.
    pub entries_redone: u64,
    /// Segments whose names a crash lost after a roll (left to the next checkpoint) and
    /// that were recreated whole from their entries.
    pub segments_recreated: u32,
    /// Bytes after the last valid entry of a file that were not zeros: the flush a crash
    /// tore, never acknowledged. In a reused file the older entries past the new ones can
    /// count here too (the bytes where the new entries end rarely start an older entry), so
    /// this overstates a tear there; it is a report, never used to decide anything.
    pub torn_bytes: u64,
}

/// One valid entry, located in its journal file.
struct Located {
    header: EntryHeader,
    file: usize,
    payload_position: u64,
    payload_bytes: usize,
}

/// Redoes every journal under `data_dir` into the segments, syncs them and removes the
/// journals. Idempotent: a crash part way leaves the journals, and the next open redoes them.
pub(crate) fn redo(storage: &mut dyn Storage, data_dir: &Path) -> Result<JournalRecovery> {
    let dir = journal_dir(data_dir);
    let names = match storage.list_dir(&dir) {
        Ok(names) => names,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(JournalRecovery::default());
        }
        Err(error) => return Err(Error::io(format!("listing {}", dir.display()), error)),
    };
    let mut files_named: Vec<(PathBuf, u64)> = names
        .iter()
        .filter_map(|name| Some((dir.join(name), journal_file_sequence(name)?)))
        .collect();
    files_named.sort();
    let (paths, name_sequences): (Vec<PathBuf>, Vec<u64>) = files_named.into_iter().unzip();
    let mut report = JournalRecovery {
        files: paths.len() as u32,
        ..JournalRecovery::default()
    };
    let mut files = Vec::with_capacity(paths.len());
    let mut entries = Vec::new();
    let result = (|| {
        for (index, path) in paths.iter().enumerate() {
            let file = storage
                .open(path, OpenMode::Existing)
                .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
            files.push(file);
            let floor = name_sequences[index];
            report.torn_bytes += read_entries(storage, file, (index, floor), path, &mut entries)?;
        }
        report.entries = entries.len() as u64;
        entries.sort_by_key(|e: &Located| (e.header.partition, e.header.sequence));
        (report.entries_redone, report.segments_recreated) =
            apply(storage, data_dir, (&paths, &files), &entries)?;
        Ok::<(), Error>(())
    })();
    for file in files {
        storage.close(file);
    }
    result?;
    for path in &paths {
        storage
            .remove_file(path)
            .map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    }
    if !paths.is_empty() {
        storage
            .sync_dir(&dir)
            .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    }
    Ok(report)
}

/// Collects a file's valid entries, those from its name's sequence on (older ones are what a
/// reused file held before); returns the non-zero bytes after them (a torn flush, or the
/// older entries of a reused file).
fn read_entries(
    storage: &mut dyn Storage,
    file: FileId,
    (index, name_sequence): (usize, u64),
    path: &Path,
    entries: &mut Vec<Located>,
) -> Result<u64> {
    let io = |e| Error::io(format!("reading {}", path.display()), e);
    let file_len = storage.file_len(file).map_err(io)?;
    let mut buf = vec![0u8; READ_CHUNK_BYTES.max(ENTRY_HEADER_BYTES + ENTRY_PAYLOAD_BYTES_MAX)];
    let mut buf_start = 0u64;
    let mut buf_len = 0usize;
    let mut position = 0u64;
    let mut last_sequence = name_sequence;
    loop {
        let window_end = buf_start + buf_len as u64;
        let wanted = (ENTRY_HEADER_BYTES + ENTRY_PAYLOAD_BYTES_MAX) as u64;
        if position + wanted > window_end && window_end < file_len {
            buf_start = position;
            buf_len = storage.read_at(file, position, &mut buf).map_err(io)?;
        }
        let at = (position - buf_start) as usize;
        let window = &buf[at.min(buf_len)..buf_len];
        match parse_entry(window) {
            Ok((header, payload, total)) if header.sequence >= last_sequence => {
                last_sequence = header.sequence;
                entries.push(Located {
                    header,
                    file: index,
                    payload_position: position + ENTRY_HEADER_BYTES as u64,
                    payload_bytes: payload.len(),
                });
                position += total as u64;
            }
            Err(EntryEnd::Invalid(_)) => {
                return torn_bytes(storage, file, position, file_len).map_err(io);
            }
            // An older entry: what a reused file held before its new name.
            Ok(_) | Err(EntryEnd::Unwritten) => return Ok(0),
        }
    }
}

/// Non-zero bytes in the window one flush can tear, from `position`.
fn torn_bytes(
    storage: &mut dyn Storage,
    file: FileId,
    position: u64,
    file_len: u64,
) -> std::io::Result<u64> {
    let window = (file_len.saturating_sub(position) as usize).min(READ_CHUNK_BYTES);
    let mut buf = vec![0u8; window];
    let read = storage.read_at(file, position, &mut buf)?;
    Ok(buf[..read].iter().filter(|&&b| b != 0).count() as u64)
}

/// Writes the entries (sorted by partition, then sequence) into their segments and syncs
/// each segment written; returns how many were written. Per partition that is the newest
/// segment on disk and every newer one an entry names: a journaled roll leaves the new
/// segment's name to the next checkpoint, so a crash may lose it (and the names of the
/// segments rolled after it) while the journal still holds every entry written to it.
/// Entries for older segments are skipped: a roll syncs a segment before sealing it, and
/// a sealed segment may since have been compacted. Returns the entries written and the
/// segments recreated.
fn apply(
    storage: &mut dyn Storage,
    data_dir: &Path,
    journal: (&[PathBuf], &[FileId]),
    entries: &[Located],
) -> Result<(u64, u32)> {
    let mut redone = 0u64;
    let mut recreated = 0u32;
    let mut rest = entries;
    let mut payload = Vec::new();
    while let Some(first) = rest.first() {
        let count = rest
            .iter()
            .take_while(|e| e.header.partition == first.header.partition)
            .count();
        let (partition_entries, later) = rest.split_at(count);
        rest = later;
        let dir = partition_dir(data_dir, first.header.partition);
        let newest_on_disk = newest_segment(storage, &dir)?;
        let mut bases: Vec<i64> = partition_entries
            .iter()
            .map(|e| e.header.segment_base_offset)
            .filter(|&base| newest_on_disk.is_none_or(|newest| base >= newest))
            .collect();
        bases.sort_unstable();
        bases.dedup();
        for base in bases {
            let segment = SegmentRedo {
                dir: &dir,
                base,
                missing: newest_on_disk.is_none_or(|newest| base > newest),
            };
            redone += segment.redo(storage, journal, partition_entries, &mut payload)?;
            recreated += u32::from(segment.missing);
        }
        // The names the entries were written under must be durable before the journal
        // files go: a killed process (not a power cut) leaves a roll's new segment named
        // in the page cache only, and this redo found it there.
        if newest_on_disk.is_some() {
            storage
                .sync_dir(&dir)
                .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
        }
    }
    Ok((redone, recreated))
}

/// One segment's share of the redo.
struct SegmentRedo<'a> {
    dir: &'a Path,
    base: i64,
    /// Not on disk: recreated from its entries, which must then hold it whole.
    missing: bool,
}

impl SegmentRedo<'_> {
    /// Writes the segment's entries (in sequence order) and syncs it; a missing segment is
    /// created first and its name synced before anything else is written, so the names of
    /// recreated segments become durable oldest first and a crash here leaves a state the
    /// next redo handles the same way.
    fn redo(
        &self,
        storage: &mut dyn Storage,
        (paths, files): (&[PathBuf], &[FileId]),
        entries: &[Located],
        payload: &mut Vec<u8>,
    ) -> Result<u64> {
        let mine = || {
            entries
                .iter()
                .filter(|e| e.header.segment_base_offset == self.base)
        };
        let path = self.dir.join(segment_file_name(self.base));
        if self.missing {
            self.check_whole(paths, mine())?;
        }
        let io = |e| Error::io(format!("redoing the journal into {}", path.display()), e);
        let mode = if self.missing {
            storage.create_dir_all(self.dir).map_err(io)?;
            OpenMode::CreateNew
        } else {
            OpenMode::Existing
        };
        let segment = storage.open(&path, mode).map_err(io)?;
        let written = (|| {
            if self.missing {
                storage.sync_dir(self.dir)?;
            }
            let mut count = 0u64;
            for entry in mine() {
                payload.resize(entry.payload_bytes, 0);
                let read = storage.read_at(files[entry.file], entry.payload_position, payload)?;
                if read != entry.payload_bytes {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "journal entry shorter than when it was checked",
                    ));
                }
                storage.write_at(segment, entry.header.position, payload)?;
                count += 1;
            }
            if count > 0 {
                storage.sync(segment)?;
            }
            Ok(count)
        })();
        storage.close(segment);
        written.map_err(io)
    }

    /// A missing segment is recreated only from entries that hold it from byte 0 with no
    /// gap: its name is lost only while the journal file holding its first entry is kept
    /// (a checkpoint syncs the directory before retiring the file). Anything else is a
    /// segment lost some other way, and recreating it would leave zeros where data was.
    fn check_whole<'e>(
        &self,
        paths: &[PathBuf],
        entries: impl Iterator<Item = &'e Located>,
    ) -> Result<()> {
        let mut end = 0u64;
        for entry in entries {
            if entry.header.position > end {
                return Err(Error::Corrupt {
                    file: paths.get(entry.file).cloned().unwrap_or_default(),
                    position: entry.payload_position,
                    reason: format!(
                        "journal entry for missing segment {} of {} starts at byte {}, but \
                         the entries before it end at byte {end}",
                        self.base,
                        self.dir.display(),
                        entry.header.position,
                    ),
                });
            }
            end = end.max(entry.header.position + entry.payload_bytes as u64);
        }
        Ok(())
    }
}

/// The base offset of the newest segment in a partition's directory; `None` when it holds
/// none (or does not exist).
fn newest_segment(storage: &mut dyn Storage, dir: &Path) -> Result<Option<i64>> {
    match storage.list_dir(dir) {
        Ok(names) => Ok(names
            .iter()
            .filter_map(|name| parse_segment_file_name(name))
            .max()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(Error::io(format!("listing {}", dir.display()), error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::entry::append_entry;
    use crate::journal::journal_file_name;
    use crate::storage::SimDisk;

    const DATA_DIR: &str = "/data";

    fn entry(sequence: u64, segment_base_offset: i64, position: u64, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let header = EntryHeader {
            sequence,
            partition: 0,
            segment_base_offset,
            position,
        };
        append_entry(&mut buf, &header, payload);
        buf
    }

    fn setup(journal: &[u8]) -> (SimDisk, PathBuf, PathBuf) {
        setup_named(journal, 1)
    }

    fn setup_named(journal: &[u8], name_sequence: u64) -> (SimDisk, PathBuf, PathBuf) {
        let disk = SimDisk::new(5);
        let data_dir = Path::new(DATA_DIR);
        let segment = partition_dir(data_dir, 0).join(segment_file_name(100));
        disk.put_file_bytes(&segment, b"AAAA");
        let journal_path = journal_dir(data_dir).join(journal_file_name(name_sequence));
        disk.put_file_bytes(&journal_path, journal);
        (disk, segment, journal_path)
    }

    #[test]
    fn entries_are_written_into_the_active_segment_and_the_journal_removed() {
        let mut journal = entry(1, 100, 4, b"BBBB");
        journal.extend(entry(2, 100, 8, b"CC"));
        journal.extend(entry(2, 50, 0, b"sealed segments are skipped"));
        // A torn flush after the valid entries, then zeros.
        journal.extend_from_slice(&[7, 7, 7]);
        journal.extend_from_slice(&[0; 64]);
        let (disk, segment, journal_path) = setup(&journal);
        let mut storage = disk.storage();
        let report = redo(&mut storage, Path::new(DATA_DIR)).unwrap();
        assert_eq!(
            report,
            JournalRecovery {
                files: 1,
                entries: 3,
                entries_redone: 2,
                segments_recreated: 0,
                torn_bytes: 3,
            }
        );
        disk.crash();
        assert_eq!(disk.file_bytes(&segment).unwrap(), b"AAAABBBBCC");
        assert!(disk.file_bytes(&journal_path).is_none());
    }

    #[test]
    fn a_reused_file_is_read_up_to_its_older_entries() {
        // Renamed to sequence 10 and written again: a new entry, then what it held before.
        let mut journal = entry(12, 100, 4, b"NEW!");
        journal.extend(entry(5, 100, 4, b"OLD!"));
        let (disk, segment, _) = setup_named(&journal, 10);
        let report = redo(&mut disk.storage(), Path::new(DATA_DIR)).unwrap();
        assert_eq!((report.entries, report.torn_bytes), (1, 0));
        assert_eq!(disk.file_bytes(&segment).unwrap(), b"AAAANEW!");

        // Renamed, then a crash before its first new write: nothing of it is redone.
        let (disk, segment, _) = setup_named(&entry(5, 100, 4, b"OLD!"), 10);
        let report = redo(&mut disk.storage(), Path::new(DATA_DIR)).unwrap();
        assert_eq!(report.entries, 0);
        assert_eq!(disk.file_bytes(&segment).unwrap(), b"AAAA");
    }

    #[test]
    fn entries_for_the_same_bytes_in_two_files_are_redone_in_sequence_order() {
        // The file named first holds the later write: sequence, not file, decides.
        let (disk, segment, _) = setup_named(&entry(5, 100, 4, b"LATE"), 1);
        let other = journal_dir(Path::new(DATA_DIR)).join(journal_file_name(2));
        disk.put_file_bytes(&other, &entry(3, 100, 4, b"EARL"));
        let report = redo(&mut disk.storage(), Path::new(DATA_DIR)).unwrap();
        assert_eq!((report.files, report.entries_redone), (2, 2));
        assert_eq!(disk.file_bytes(&segment).unwrap(), b"AAAALATE");
    }

    #[test]
    fn segments_newer_than_any_on_disk_are_recreated_from_entries_that_hold_them_whole() {
        // A journaled roll left segments 200 and 300 to the checkpoint, and a crash lost
        // both names; 100 (sealed by the roll) is the newest left.
        let mut journal = entry(1, 100, 4, b"BBBB");
        journal.extend(entry(2, 200, 0, b"0123"));
        journal.extend(entry(3, 200, 4, b"45"));
        journal.extend(entry(4, 300, 0, b"xy"));
        let (disk, segment, _) = setup(&journal);
        let report = redo(&mut disk.storage(), Path::new(DATA_DIR)).unwrap();
        assert_eq!((report.entries_redone, report.segments_recreated), (4, 2));
        // Every name and byte survives a crash right after.
        disk.crash();
        let dir = partition_dir(Path::new(DATA_DIR), 0);
        assert_eq!(disk.file_bytes(&segment).unwrap(), b"AAAABBBB");
        let recreated = disk.file_bytes(&dir.join(segment_file_name(200)));
        assert_eq!(recreated.unwrap(), b"012345");
        let newest = disk.file_bytes(&dir.join(segment_file_name(300)));
        assert_eq!(newest.unwrap(), b"xy");
    }

    #[test]
    fn a_missing_segment_whose_entries_do_not_hold_it_whole_is_corruption() {
        for journal in [
            entry(1, 200, 5, b"not from byte 0"),
            [entry(1, 200, 0, b"ab"), entry(2, 200, 9, b"gap")].concat(),
        ] {
            let (disk, _, _) = setup(&journal);
            let mut storage = disk.storage();
            let error = redo(&mut storage, Path::new(DATA_DIR)).unwrap_err();
            assert!(matches!(error, Error::Corrupt { .. }), "{error}");
            let dir = partition_dir(Path::new(DATA_DIR), 0);
            assert!(disk.file_bytes(&dir.join(segment_file_name(200))).is_none());
        }
    }
}

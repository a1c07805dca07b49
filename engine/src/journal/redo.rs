//! Recovery of the journals at open: their entries written again into the segments.

use std::collections::BTreeMap;
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
    /// Entries written again into their partition's active segment.
    pub entries_redone: u64,
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
        report.entries_redone = apply(storage, data_dir, &paths, &files, &entries)?;
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

/// Writes the entries (sorted by partition, then sequence) into their active segments and
/// syncs each segment written; returns how many were written.
fn apply(
    storage: &mut dyn Storage,
    data_dir: &Path,
    paths: &[PathBuf],
    files: &[FileId],
    entries: &[Located],
) -> Result<u64> {
    let mut by_partition: BTreeMap<u32, &[Located]> = BTreeMap::new();
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let count = rest
            .iter()
            .take_while(|e| e.header.partition == first.header.partition)
            .count();
        by_partition.insert(first.header.partition, &rest[..count]);
        rest = &rest[count..];
    }
    let mut payload = Vec::new();
    let mut redone = 0u64;
    for (partition, entries) in by_partition {
        let dir = partition_dir(data_dir, partition);
        let active_base = active_segment(storage, &dir, partition, entries, paths)?;
        let path = dir.join(segment_file_name(active_base));
        let segment = storage
            .open(&path, OpenMode::Existing)
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let written = (|| {
            let mut count = 0u64;
            for entry in entries
                .iter()
                .filter(|e| e.header.segment_base_offset == active_base)
            {
                payload.resize(entry.payload_bytes, 0);
                let read =
                    storage.read_at(files[entry.file], entry.payload_position, &mut payload)?;
                if read != entry.payload_bytes {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "journal entry shorter than when it was checked",
                    ));
                }
                storage.write_at(segment, entry.header.position, &payload)?;
                count += 1;
            }
            if count > 0 {
                storage.sync(segment)?;
            }
            Ok(count)
        })();
        storage.close(segment);
        redone += written
            .map_err(|e| Error::io(format!("redoing the journal into {}", path.display()), e))?;
    }
    Ok(redone)
}

/// The base offset of a partition's active (newest) segment; fails when an entry names a
/// newer segment than any on disk (segment creation is durable before its first write).
fn active_segment(
    storage: &mut dyn Storage,
    dir: &Path,
    partition: u32,
    entries: &[Located],
    paths: &[PathBuf],
) -> Result<i64> {
    let names = storage
        .list_dir(dir)
        .map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let active = names
        .iter()
        .filter_map(|name| parse_segment_file_name(name))
        .max();
    let newest = entries.iter().max_by_key(|e| e.header.segment_base_offset);
    match (active, newest) {
        (Some(active), Some(newest)) if newest.header.segment_base_offset <= active => Ok(active),
        (active, newest) => {
            let newest = newest.map_or(0, |e| e.header.segment_base_offset);
            Err(Error::Corrupt {
                file: newest_path(paths, entries),
                position: 0,
                reason: format!(
                    "journal entry for offsets partition {partition} names segment {newest}, \
                     but the newest segment on disk is {active:?}"
                ),
            })
        }
    }
}

fn newest_path(paths: &[PathBuf], entries: &[Located]) -> PathBuf {
    entries
        .last()
        .and_then(|e| paths.get(e.file))
        .cloned()
        .unwrap_or_default()
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
    fn an_entry_for_a_segment_newer_than_any_on_disk_is_corruption() {
        let (disk, _, _) = setup(&entry(1, 200, 0, b"lost segment"));
        let mut storage = disk.storage();
        let error = redo(&mut storage, Path::new(DATA_DIR)).unwrap_err();
        assert!(matches!(error, Error::Corrupt { .. }), "{error}");
    }
}

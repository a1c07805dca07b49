//! Replacing sealed segments by their compacted copy, crash-safely (Kafka's `.cleaned` /
//! `.swap` protocol, with the replaced range in the names).
//!
//! The compactor writes the live records of sealed segments `[base, end)` (the segments whose
//! base offsets lie in that range; `end` is the base offset of the first segment kept) into
//! `<base>.<end>.cleaned` and syncs it. Then [`install`]:
//!
//! 1. renames it to `<base>.<end>.swap` and syncs the directory — the commit point: from now
//!    on recovery completes the swap;
//! 2. removes the replaced `.log` segments;
//! 3. renames the swap to `<base>.log` and syncs the directory.
//!
//! [`recover`], run before a partition's segments are listed, deletes any `.cleaned` file (a
//! compaction that had not reached its commit point: the old segments are intact) and
//! completes any `.swap` (steps 2 and 3, idempotent). Until the commit point the old
//! segments hold everything; after it the swap holds every live record of the replaced ones,
//! and every retained tombstone, so no live value is lost and no deleted value comes back.
//! `end` in the name is what lets recovery know which segments a swap replaces even when
//! their last records were all dead (the swap's own last offset would not tell).

use std::io;
use std::path::{Path, PathBuf};

use crate::log::segment::{parse_segment_file_name, segment_file_name};
use crate::storage::Storage;

/// Suffix of a compacted copy being written.
pub const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a compacted copy that has reached the commit point.
pub const SWAP_SUFFIX: &str = ".swap";

/// Digits of each offset in the names (as in Kafka's segment names).
const OFFSET_DIGITS: usize = 20;

/// `<base>.<end><suffix>` with both offsets padded to 20 digits.
pub fn file_name(base_offset: i64, end_offset: i64, suffix: &str) -> String {
    format!("{base_offset:0OFFSET_DIGITS$}.{end_offset:0OFFSET_DIGITS$}{suffix}")
}

/// The `(base, end)` offsets a name with `suffix` encodes.
pub fn parse_file_name(name: &str, suffix: &str) -> Option<(i64, i64)> {
    let stem = name.strip_suffix(suffix)?;
    let (base, end) = stem.split_once('.')?;
    let parse = |digits: &str| {
        (digits.len() == OFFSET_DIGITS && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| digits.parse::<i64>().ok())
            .flatten()
    };
    let (base, end) = (parse(base)?, parse(end)?);
    (base < end).then_some((base, end))
}

/// Steps 1–3 above, for a `.cleaned` file already written, synced and closed. Returns the
/// path of the new segment. An error before the commit point leaves the old segments in
/// place (and possibly the `.cleaned` file, which recovery deletes); an error after it
/// leaves a state only [`recover`] may touch.
pub fn install(
    storage: &mut dyn Storage,
    dir: &Path,
    base_offset: i64,
    end_offset: i64,
    replaced: &[PathBuf],
) -> Result<PathBuf, InstallError> {
    // Step 1: after an error the rename's durability is unknown.
    rename_to_swap(storage, dir, base_offset, end_offset)
        .and_then(|()| storage.sync_dir(dir))
        .map_err(InstallError::BeforeCommit)?;
    complete(storage, dir, base_offset, end_offset, replaced).map_err(InstallError::AfterCommit)
}

/// Step 1 without its directory sync, which the caller makes ([`install`], or the
/// compactor in the background): the commit point is reached when that sync succeeds.
pub fn rename_to_swap(
    storage: &mut dyn Storage,
    dir: &Path,
    base_offset: i64,
    end_offset: i64,
) -> io::Result<()> {
    let cleaned = dir.join(file_name(base_offset, end_offset, CLEANED_SUFFIX));
    let swap = dir.join(file_name(base_offset, end_offset, SWAP_SUFFIX));
    storage.rename(&cleaned, &swap)
}

/// Steps 2 and 3, after step 1: removes the replaced segments, renames the swap to
/// `<base>.log` and syncs the directory; returns that path.
pub fn complete(
    storage: &mut dyn Storage,
    dir: &Path,
    base_offset: i64,
    end_offset: i64,
    replaced: &[PathBuf],
) -> io::Result<PathBuf> {
    let (swap, segment) = completion_names(dir, base_offset, end_offset);
    for path in replaced {
        storage.remove_file(path)?;
    }
    storage.rename(&swap, &segment)?;
    storage.sync_dir(dir)?;
    Ok(segment)
}

/// The swap of `[base_offset, end_offset)` in `dir` and the segment it becomes: step 3's
/// rename.
pub fn completion_names(dir: &Path, base_offset: i64, end_offset: i64) -> (PathBuf, PathBuf) {
    (
        dir.join(file_name(base_offset, end_offset, SWAP_SUFFIX)),
        dir.join(segment_file_name(base_offset)),
    )
}

/// Why [`install`] failed, and on which side of the commit point.
#[derive(Debug)]
pub enum InstallError {
    /// The old segments are intact.
    BeforeCommit(io::Error),
    /// The swap is committed but not finished: only recovery may touch the directory now.
    AfterCommit(io::Error),
}

/// Deletes unfinished `.cleaned` files and completes committed `.swap`s in `dir`. Returns
/// how many of each it found.
pub fn recover(storage: &mut dyn Storage, dir: &Path) -> io::Result<(u32, u32)> {
    let names = storage.list_dir(dir)?;
    let mut cleaned = 0;
    let mut swaps = 0;
    for name in &names {
        if parse_file_name(name, CLEANED_SUFFIX).is_some() {
            storage.remove_file(&dir.join(name))?;
            cleaned += 1;
        }
    }
    // A compaction never covers the active segment, so a swap with no segment at or past
    // its end is not one of ours: refuse it before anything is removed.
    let newest_segment = names
        .iter()
        .filter_map(|n| parse_segment_file_name(n))
        .max();
    for name in &names {
        if let Some((_, end)) = parse_file_name(name, SWAP_SUFFIX)
            && newest_segment.is_none_or(|newest| newest < end)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "swap file {name} reaches past every segment (a compaction never covers \
                     the active one); left as it is, nothing removed"
                ),
            ));
        }
    }
    for name in &names {
        let Some((base, end)) = parse_file_name(name, SWAP_SUFFIX) else {
            continue;
        };
        for segment in &names {
            if parse_segment_file_name(segment).is_some_and(|b| (base..end).contains(&b)) {
                storage.remove_file(&dir.join(segment))?;
            }
        }
        storage.rename(&dir.join(name), &dir.join(segment_file_name(base)))?;
        swaps += 1;
    }
    if cleaned + swaps > 0 {
        storage.sync_dir(dir)?;
    }
    Ok((cleaned, swaps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{OpenMode, SimDisk, WriteOp};

    #[test]
    fn names_round_trip() {
        let name = file_name(100, 300, SWAP_SUFFIX);
        assert_eq!(name, "00000000000000000100.00000000000000000300.swap");
        assert_eq!(parse_file_name(&name, SWAP_SUFFIX), Some((100, 300)));
        assert_eq!(parse_file_name(&name, CLEANED_SUFFIX), None);
        assert_eq!(
            parse_file_name("00000000000000000100.log", SWAP_SUFFIX),
            None
        );
        let backwards = file_name(300, 100, SWAP_SUFFIX);
        assert_eq!(parse_file_name(&backwards, SWAP_SUFFIX), None);
    }

    fn put(storage: &mut dyn Storage, path: &Path, bytes: &[u8]) {
        let file = storage.open(path, OpenMode::CreateNew).unwrap();
        let mut results = Vec::new();
        let op = WriteOp {
            file,
            position: 0,
            bytes,
            sync: true,
        };
        storage.write_durable(&[op], &mut results);
        results.pop().unwrap().unwrap();
        storage.close(file);
    }

    /// Crashes after every prefix of the install and checks recovery yields either the old
    /// segments or the new one, never a mix, never neither.
    #[test]
    fn a_crash_anywhere_in_install_recovers_old_or_new() {
        let dir = Path::new("/d");
        let segment = |base| dir.join(segment_file_name(base));
        for crash_after in 0..10u32 {
            let disk = SimDisk::new(u64::from(crash_after));
            let mut storage = disk.storage();
            storage.create_dir_all(dir).unwrap();
            put(&mut storage, &segment(0), b"old0");
            put(&mut storage, &segment(10), b"old10");
            put(&mut storage, &segment(20), b"active");
            put(
                &mut storage,
                &dir.join(file_name(0, 20, CLEANED_SUFFIX)),
                b"new",
            );
            storage.sync_dir(dir).unwrap();
            disk.crash_after_ops(u64::from(crash_after));
            let mut storage = disk.storage();
            let installed = install(&mut storage, dir, 0, 20, &[segment(0), segment(10)]);
            disk.crash();
            let mut storage = disk.storage();
            recover(&mut storage, dir).unwrap();
            let mut names = storage.list_dir(dir).unwrap();
            names.sort();
            let old = (disk.file_bytes(&segment(0)).unwrap(), names.len());
            if installed.is_ok() || old.0 == b"new" {
                assert_eq!(old, (b"new".to_vec(), 2), "after {crash_after} ops");
            } else {
                assert_eq!(old, (b"old0".to_vec(), 3), "after {crash_after} ops");
                assert_eq!(disk.file_bytes(&segment(10)).unwrap(), b"old10");
            }
            assert_eq!(disk.file_bytes(&segment(20)).unwrap(), b"active");
        }
    }
}

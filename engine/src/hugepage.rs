//! Transparent huge pages for large arrays that hot paths read at random.
//!
//! A heartbeat reads one entry of the session wheel (and, for some member ids, one slot of
//! the fingerprint index) at a random place in arrays of several MiB. With 4 KiB pages each
//! such read also misses the TLB, and in a virtual machine a TLB miss walks two levels of
//! page tables. Backing the arrays with 2 MiB pages cuts the pages a shard's 100,000 members
//! span from thousands to a handful.
//!
//! [`back_with_huge_pages`] is called where such an array has grown (on a join or a load,
//! never on a heartbeat). It gives the 2 MiB-aligned interior of the vector's allocation
//! two pieces of advice: `MADV_HUGEPAGE`, so pages faulted there later come as huge pages
//! (Linux's usual `transparent_hugepage=madvise` setting serves only advised memory), and
//! `MADV_COLLAPSE` (Linux 6.1), which turns the pages already faulted there into huge
//! pages now: an allocation often reuses heap memory that was touched before, and advice
//! alone would leave it in 4 KiB pages until `khugepaged` gets to it. Only the interior is
//! advised, so a huge page there holds nothing but this vector, and the allocation stays an
//! ordinary one (freed by `Vec` with its own layout).

/// The size of a transparent huge page on x86-64 (and aarch64 with 4 KiB base pages).
pub(crate) const HUGE_PAGE_BYTES: usize = 2 << 20;

/// Backs the whole huge pages inside `vector`'s allocation (its capacity, not only its
/// length) with huge pages (see the module docs); vectors smaller than a huge page are left
/// alone. A system call, and a copy of the pages it collapses: call after the vector grew,
/// never on a hot path.
pub(crate) fn back_with_huge_pages<T>(vector: &Vec<T>) {
    let bytes = vector.capacity() * size_of::<T>();
    let start: *const u8 = vector.as_ptr().cast();
    let offset = start.addr().next_multiple_of(HUGE_PAGE_BYTES) - start.addr();
    let advised = bytes.saturating_sub(offset) / HUGE_PAGE_BYTES * HUGE_PAGE_BYTES;
    if advised == 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let interior = start.wrapping_add(offset).cast_mut().cast::<libc::c_void>();
        for advice in [libc::MADV_HUGEPAGE, libc::MADV_COLLAPSE] {
            // SAFETY: `interior..interior + advised` lies inside the vector's allocation
            // (`offset + advised <= bytes`), which this process owns, and is page-aligned
            // as madvise requires. Neither advice changes the memory's contents or whether
            // it is mapped (a collapse copies the pages' contents into a huge page), so no
            // Rust reference to it sees a change.
            let result = unsafe { libc::madvise(interior, advised, advice) };
            // Ignored: it is only advice. Where it fails (a kernel without transparent huge
            // pages or without MADV_COLLAPSE, the `never` setting, no free huge page) the
            // memory stays in ordinary pages, which are correct, only slower.
            let _ = result;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_survive_the_advice() {
        for len in [0, 1, 1000, 3 * HUGE_PAGE_BYTES / 8 + 5] {
            let mut vector: Vec<u64> = (0..len as u64).map(|i| i * 3).collect();
            back_with_huge_pages(&vector);
            assert!(vector.iter().enumerate().all(|(i, &v)| v == i as u64 * 3));
            vector.push(7);
            assert_eq!(vector.last(), Some(&7));
        }
    }

    /// The kernel marks advised memory `hg` in `/proc/self/smaps` (where the kernel has
    /// transparent huge pages at all).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_vector_is_advised() {
        if !std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
            return;
        }
        let vector: Vec<u8> = vec![1; 3 * HUGE_PAGE_BYTES];
        back_with_huge_pages(&vector);
        let inside = vector.as_ptr().addr().next_multiple_of(HUGE_PAGE_BYTES);
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        assert!(
            advised_in_smaps(&smaps, inside),
            "the mapping at {inside:#x} is not marked hg"
        );
        assert!(!advised_in_smaps(&smaps, (&raw const smaps).addr()));
    }

    /// Whether the mapping holding `address` has the huge page advice flag (`hg`).
    fn advised_in_smaps(smaps: &str, address: usize) -> bool {
        let mut holds = false;
        for line in smaps.lines() {
            let range = line.split(' ').next().and_then(|r| r.split_once('-'));
            let bounds = range.and_then(|(from, to)| {
                let from = usize::from_str_radix(from, 16).ok()?;
                Some((from, usize::from_str_radix(to, 16).ok()?))
            });
            if let Some((from, to)) = bounds {
                holds = (from..to).contains(&address);
            } else if holds && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().any(|flag| flag == "hg");
            }
        }
        false
    }
}

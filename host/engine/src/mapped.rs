//! Kept mappings: a canister's memories stay mapped and populated between
//! its messages (the `uffd-mapped` memory tracker, and `uffd-auto` for the
//! memories it keeps).
//!
//! The `uffd-mapped` tracker keeps every memory; the default `uffd-auto`
//! keeps memories of at most `KEPT_MAX_PAGES` (64 MiB) stored pages, and
//! larger ones of canisters whose updates write many pages
//! (`MemoryTracker::keeps`, `write_rate`). The first message of a canister
//! (no committed heap yet) runs lazily and is not kept.
//!
//! The other trackers give every message a fresh mapping, so each page a
//! message touches costs a fault that maps or copies it (a signal, a copy
//! ioctl, or the kernel's copy-on-write of a memory image). Here a memory's
//! reservation outlives the instance: it holds one committed [`PageMap`]
//! version, registered with the process-wide userfaultfd in missing and
//! asynchronous write-protect mode (`uffd`) and populated with every
//! committed page when it is first kept. The next message on that version
//! borrows it before instantiation (`lending`: `Lending`), and its
//! instance's memory is created in it (`memory::with_kept_memories`). Then
//!
//! - a page the mapping already holds is read without any fault, and its
//!   first write is the kernel's write-protect fault (no signal, no copy);
//! - a page it does not hold yet is loaded from the committed map on first
//!   touch (SIGBUS, as in the lazy userfaultfd tracker), and stays;
//! - instantiation writes the data segments over the committed contents:
//!   the pages it wrote are put back from the committed map and protected
//!   again before the call (found by a scan, or, for code without start
//!   functions, remembered, keyed by code hash, from the instantiation that
//!   created the mapping: the same code writes the same pages; code with a
//!   start function is scanned every time);
//! - after the call, one `PAGEMAP_SCAN` lists the written pages and, for an
//!   update, write-protects them in the same walk (`PM_SCAN_WP_MATCHING`).
//!   A confirmed commit makes the mapping the new version; a trap, a
//!   rejected message or a query puts the written pages back from the
//!   committed map (and drops growth).
//!
//! Kept memories live in a process-wide cache (`version_cache`) bounded in
//! entries and bytes (256 memories, 8 GiB accessible; least recently used go
//! first), looked up by page-map version as memory images are. A memory is
//! lent to one message at a time: a concurrent message on the same version
//! (a query while an update runs) arms a fresh memory lazily, as the
//! userfaultfd tracker does.

use std::cell::{Cell, RefCell};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::memory::KeptMemory;
use crate::page::PAGE_SIZE;
use crate::paging::PageMap;
use crate::uffd::UffdMemory;
use crate::version_cache::{self, Lent, Lineage, Resident, VersionCache};

/// Bytes of accessible memory kept in the cache (least recently used go
/// first). Resident memory is at most this (pages touched since a memory
/// was kept), in addition to the page maps.
const CACHE_BYTES: usize = 8 << 30;
/// Memories kept in the cache.
const CACHE_ENTRIES: usize = 256;
/// A kept memory of an older version is brought forward when at most one
/// page in this many differs; beyond, a new memory is populated.
const MAX_FORWARD_SHARE: u64 = 4;
/// Above this many runs of written pages, they are protected again with
/// one `PAGEMAP_SCAN` walk of the memory instead of one ioctl per run.
const MAX_PROTECT_RUNS: usize = 64;

/// A memory at rest in the cache, holding exactly `version`.
pub(crate) struct Kept {
    /// The kept reservation and its accessible size.
    pub(crate) memory: KeptMemory,
    /// Bytes registered with the userfaultfd (and accessible) from the base.
    pub(crate) registered: usize,
    /// The pages instantiating `code` writes (its data segments), when that
    /// code has no start function: the same every time.
    pub(crate) init_pages: Option<(CodeId, Arc<Vec<usize>>)>,
}

/// What identifies the code whose instantiation wrote `init_pages`.
pub(crate) type CodeId = [u8; 32];

impl Resident for Kept {
    fn resident_bytes(&self) -> usize {
        self.memory.size.load(Ordering::Acquire)
    }
}

static CACHE: Mutex<VersionCache<Kept>> = Mutex::new(VersionCache::new(CACHE_ENTRIES, CACHE_BYTES));

/// Lends the kept memory of `version` (or of another version of
/// `lineage`), if one rests in the cache.
pub(crate) fn lend(version: &PageMap, lineage: &Lineage) -> Lent<Kept> {
    match CACHE.lock() {
        Ok(mut cache) => cache.lend(version, lineage),
        Err(_) => Lent::Busy,
    }
}

/// Drops the kept memory of `version` when it rests in the cache (its
/// memory is mapped from images from now on).
pub(crate) fn evict(version: &PageMap) {
    version_cache::evict(&CACHE, version);
}

/// Drops the lent marker of `version`.
pub(crate) fn forget(version: &PageMap) {
    version_cache::forget(&CACHE, version);
}

/// Drops the lent markers of `versions` (under one lock).
pub(crate) fn forget_all(versions: &[PageMap]) {
    if let Ok(mut cache) = CACHE.lock() {
        for version in versions {
            cache.forget(version);
        }
    }
}

/// Puts `kept`, lent for `lent` and now holding `version`, back (another
/// memory kept for the same version, which a restored state may meet, is
/// dropped: one is kept).
fn give_back(lent: &PageMap, version: PageMap, kept: Kept) {
    version_cache::give_back(&CACHE, lent, version, kept);
}

/// Frees every kept memory not lent right now (for benchmarks).
pub(crate) fn clear() {
    let resting = CACHE
        .lock()
        .map(|mut cache| cache.drain_resting())
        .unwrap_or_default();
    drop(resting);
}

/// Sets `memory`'s accessible size to `size` bytes: pages beyond it are
/// dropped and made inaccessible again (they are zero in the version it
/// holds), pages below it beyond `registered` are opened on first touch.
pub(crate) fn resize(kept: &mut Kept, size: usize) -> io::Result<()> {
    if kept.registered > size {
        let base = kept.memory.reservation.base();
        let (start, len) = (base + size, kept.registered - size);
        // SAFETY: the range lies in the kept reservation, which no instance
        // uses right now; dropping its pages makes them missing (zero).
        unsafe {
            if libc::madvise(start as *mut libc::c_void, len, libc::MADV_DONTNEED) != 0
                || libc::mprotect(start as *mut libc::c_void, len, libc::PROT_NONE) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        kept.registered = size;
    }
    kept.memory.size.store(size, Ordering::Release);
    Ok(())
}

/// Brings `kept`, which holds `older`, forward to `version` (of the same
/// canister memory, committed without it): the pages that differ are
/// dropped, so they load from `version` on first touch. `false` when too
/// many differ for that to beat populating a new memory.
pub(crate) fn bring_forward(
    kept: &mut Kept,
    older: &PageMap,
    version: &PageMap,
) -> io::Result<bool> {
    let limit = (kept.registered / PAGE_SIZE) as u64;
    let pages: Vec<u64> = version
        .diff(older)
        .into_iter()
        .map(|(index, _)| index)
        .filter(|&index| index < limit)
        .collect();
    if pages.len() as u64 > limit / MAX_FORWARD_SHARE {
        return Ok(false);
    }
    let base = kept.memory.reservation.base();
    let mut runs = pages.chunk_by(|a, b| b == &(a + 1));
    runs.try_for_each(|run| {
        let start = base + run[0] as usize * PAGE_SIZE;
        // SAFETY: registered pages of the kept reservation, which no
        // instance uses right now; dropped, they are missing and load from
        // the committed map on first touch.
        let rc = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                run.len() * PAGE_SIZE,
                libc::MADV_DONTNEED,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    })?;
    Ok(true)
}

/// Puts the committed contents back into `pages` (written pages of the
/// memory) and write-protects them again.
///
/// # Safety
/// The pages must lie in the registered, accessible part of the memory,
/// and no wasm may run in it.
unsafe fn restore(uffd: &UffdMemory, pages: &[usize]) -> io::Result<()> {
    let base = uffd.base();
    for &page in pages {
        let at = (base + page * PAGE_SIZE) as *mut u8;
        // SAFETY: per the contract, the page is mapped and writable by us.
        let current = unsafe { std::slice::from_raw_parts_mut(at, PAGE_SIZE) };
        match uffd.committed().get(page as u64) {
            Some(content) if current != &content[..] => current.copy_from_slice(&content[..]),
            Some(_) => {}
            None if !crate::paging::is_zero(current) => current.fill(0),
            None => {}
        }
    }
    let runs = 1 + pages.windows(2).filter(|w| w[1] != w[0] + 1).count();
    if runs > MAX_PROTECT_RUNS {
        crate::uffd::protect_written(base, uffd.registered()).map(|_| ())
    } else {
        crate::uffd::write_protect(base, pages)
    }
}

/// A kept memory armed for one message.
pub(crate) struct MappedMemory {
    uffd: UffdMemory,
    /// Taken when given back to the cache.
    kept: Option<Kept>,
    /// Accessible bytes of the committed version it was lent for.
    lent_size: usize,
    /// Whether the message is an update (its scan protects what it finds).
    persists: bool,
    /// The new version built by [`MappedMemory::commit`], kept when the
    /// message is [confirmed](MappedMemory::confirm).
    next: RefCell<Option<PageMap>>,
    confirmed: Cell<bool>,
}

impl MappedMemory {
    /// Arms `kept` for one message through `uffd` (registered over it);
    /// `lent_size` is the accessible size of the version it was lent for,
    /// `persists` whether the message is an update.
    pub(crate) fn new(mut uffd: UffdMemory, kept: Kept, lent_size: usize, persists: bool) -> Self {
        uffd.set_protect_on_scan(persists);
        MappedMemory {
            uffd,
            kept: Some(kept),
            lent_size,
            persists,
            next: RefCell::new(None),
            confirmed: Cell::new(false),
        }
    }

    /// The kept reservation, for the instance to be created in.
    pub(crate) fn kept_memory(&self) -> &KeptMemory {
        &self.kept.as_ref().expect("kept until dropped").memory
    }

    /// The base address of the memory.
    pub(crate) fn base(&self) -> usize {
        self.uffd.base()
    }

    /// The userfaultfd side, for the fault handlers.
    pub(crate) fn uffd_mut(&mut self) -> &mut UffdMemory {
        &mut self.uffd
    }

    /// Puts back the committed contents of the pages instantiation wrote
    /// (the data segments) and protects them again.
    ///
    /// # Safety
    /// The store must be alive and no wasm may run.
    pub(crate) unsafe fn undo_instantiation(
        &mut self,
        code: CodeId,
        has_start: bool,
    ) -> io::Result<()> {
        let kept = self.kept.as_mut().expect("kept until dropped");
        let known = match &kept.init_pages {
            Some((id, pages)) if *id == code && !has_start => Some(pages.clone()),
            _ => None,
        };
        let pages = match known {
            Some(pages) => pages,
            None => {
                self.uffd.set_protect_on_scan(false);
                Arc::new(self.uffd.written_pages().to_vec())
            }
        };
        let registered = self.uffd.registered();
        let pages: Vec<usize> = pages
            .iter()
            .copied()
            .filter(|p| p * PAGE_SIZE < registered)
            .collect();
        // SAFETY: written pages lie in the registered part; no wasm runs.
        unsafe { restore(&self.uffd, &pages) }?;
        self.uffd.forget_written();
        self.uffd.set_protect_on_scan(self.persists);
        Ok(())
    }

    /// The committed map with this message's writes applied (the new
    /// version the mapping holds, once [confirmed](MappedMemory::confirm)),
    /// and the number of pages whose contents changed.
    ///
    /// # Safety
    /// The store must be alive and no wasm may run.
    pub(crate) unsafe fn commit(&self) -> (PageMap, u64) {
        // SAFETY: forwarded contract.
        let (next, changed) = unsafe { self.uffd.commit() };
        *self.next.borrow_mut() = Some(next.clone());
        (next, changed)
    }

    /// The message's changes persist: the mapping keeps the committed
    /// version built by [`MappedMemory::commit`].
    pub(crate) fn confirm(&self) {
        self.confirmed.set(self.next.borrow().is_some());
    }

    /// Faults handled.
    pub(crate) fn faults(&self) -> u64 {
        self.uffd.faults()
    }

    /// Pages written by the message.
    pub(crate) fn dirty_pages(&self) -> usize {
        self.uffd.dirty_pages()
    }

    /// Brings the mapping back to the committed version (the message's
    /// changes do not persist) and sizes it as that version.
    fn roll_back(&mut self, kept: &mut Kept) -> io::Result<()> {
        let size = self.lent_size;
        let registered = self.uffd.registered().min(size);
        let pages: Vec<usize> = self
            .uffd
            .written_pages()
            .iter()
            .copied()
            .filter(|p| p * PAGE_SIZE < registered)
            .collect();
        // SAFETY: the message is over (no wasm runs in this memory); the
        // pages are written, so mapped, in the registered part.
        unsafe { restore(&self.uffd, &pages) }?;
        kept.registered = self.uffd.registered();
        resize(kept, size)
    }
}

impl Drop for MappedMemory {
    fn drop(&mut self) {
        let Some(mut kept) = self.kept.take() else {
            return;
        };
        let lent = self.uffd.committed().clone();
        let next = self.next.borrow_mut().take();
        let kept_ok = match next {
            Some(next) if self.confirmed.get() => {
                // Committed: the written pages were protected by the scan.
                kept.registered = self.uffd.registered();
                Some(next)
            }
            _ => self.roll_back(&mut kept).ok().map(|()| lent.clone()),
        };
        match kept_ok {
            Some(version) if !version.is_empty() => give_back(&lent, version, kept),
            _ => {
                forget(&lent);
            }
        }
    }
}

//! Lazy mapping and dirty-page tracking of linear memories with page
//! protection and a SIGSEGV handler (the mechanism of the IC paper).
//!
//! While a message runs, each of its memories is *armed*: arming drops and
//! protects its pages, so its accessible range is `PROT_NONE` and backed by
//! the committed [`PageMap`]. The first
//! read of a page maps it (and a few neighbours: prefetching) read-only with
//! the committed contents; the first write maps it read-write and records it
//! as dirty. On x86-64 the fault's error code tells writes from reads, so a
//! plain write costs one fault. After the message, the dirty pages are the
//! message's delta: the new version is the committed map with those pages
//! replaced, and nothing else is copied.
//!
//! A page whose protection differs from its neighbours splits a kernel
//! mapping, and `vm.max_map_count` bounds those. After 24,000 faults
//! ([`MAX_FAULTS_BEFORE_WHOLE`]) a memory therefore switches to *whole
//! mode*: all of it is made read-write and the commit compares every page
//! with the committed map (as `copy_all` does), so scattered writes cannot
//! exhaust `vm.max_map_count`.
//!
//! The SIGSEGV handler is process-wide (installed once, after wasmtime's
//! own, by `tracker`) and only handles addresses inside memories armed *on
//! the faulting thread*, passing each to [`TrackedMemory::fault_at`];
//! everything else is passed on to the previous handler, so wasmtime's
//! out-of-bounds traps keep working. Host-side accesses to guest memory
//! (argument lowering, result lifting) fault and are handled the same way.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::copy_all::compare_all;
use crate::memory::MemoryView;
use crate::page::{PAGE_SIZE, Page};
use crate::paging::{MAX_PAGES, PageMap};

/// Pages mapped together on a read fault. Measured with random reads of a
/// 256 MiB heap (`fault_cost_probe`): prefetching 8 pages cost more than it
/// saved (212 ms vs 190 ms for 10,000 reads), so reads map one page.
const READ_PREFETCH: usize = 1;
/// Dirty pages recorded without allocating in the handler; beyond this the
/// per-page state is scanned after the message.
const DIRTY_LIST_CAPACITY: usize = 1 << 16;

const UNMAPPED: u8 = 0;
const READ_ONLY: u8 = 1;
const DIRTY: u8 = 2;

/// One armed memory.
pub(crate) struct TrackedMemory {
    base: usize,
    size: Arc<AtomicUsize>,
    committed: PageMap,
    state: Vec<u8>,
    dirty: Vec<u32>,
    dirty_overflow: bool,
    faults: u64,
    /// Set after too many faults: the whole memory is mapped read-write and
    /// the commit compares every page (bounded kernel mappings, see
    /// [`MAX_FAULTS_BEFORE_WHOLE`]).
    whole: bool,
    whole_dirty: Cell<usize>,
}

/// Faults after which a memory stops being tracked page by page. Every page
/// whose protection differs from its neighbours splits a kernel mapping,
/// and `vm.max_map_count` (65,530 by default) bounds them per process:
/// scattered writes to ~30,000 pages would make `mprotect` fail. Past this
/// many faults the memory is made read-write as a whole (one mapping) and
/// the commit compares all of it with the committed pages. A page that is
/// read and then written takes two faults, so 24,000 faults is ~12,000 or
/// more pages and at most ~48,000 mappings; whole mode costs a copy of the
/// heap (about 1 s for 1 GiB), so it is kept for the messages that need it.
const MAX_FAULTS_BEFORE_WHOLE: u64 = 24_000;

fn protect(address: usize, len: usize, prot: libc::c_int) -> bool {
    // SAFETY: the range lies in a reservation owned by an armed memory.
    unsafe { libc::mprotect(address as *mut libc::c_void, len, prot) == 0 }
}

impl TrackedMemory {
    /// Arms `view` with `committed` as its contents: the accessible range
    /// loses its pages (whatever instantiation wrote there) and becomes
    /// `PROT_NONE`, to be mapped on demand.
    ///
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn arm(view: &MemoryView, committed: PageMap) -> std::io::Result<Self> {
        view.set_tracked(true);
        let (base, size) = (view.base(), view.len());
        if size > 0 {
            // SAFETY: our own anonymous mapping; dropping its pages makes
            // them read as zero again.
            unsafe {
                if libc::madvise(base as *mut libc::c_void, size, libc::MADV_DONTNEED) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if !protect(base, size, libc::PROT_NONE) {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(TrackedMemory {
            base,
            size: view.size_handle(),
            committed,
            state: vec![UNMAPPED; MAX_PAGES as usize],
            dirty: Vec::with_capacity(DIRTY_LIST_CAPACITY),
            dirty_overflow: false,
            faults: 0,
            whole: false,
            whole_dirty: Cell::new(0),
        })
    }

    fn load(&self, page: usize, count: usize) {
        for p in page..page + count {
            if let Some(content) = self.committed.get(p as u64) {
                // SAFETY: the page was just made writable and lies in the reservation.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        content.as_ptr(),
                        (self.base + p * PAGE_SIZE) as *mut u8,
                        PAGE_SIZE,
                    );
                }
            }
        }
    }

    /// Maps the whole accessible range read-write, loading the committed
    /// contents of every page not mapped yet. Allocates nothing (it runs in
    /// the fault handler).
    fn go_whole(&mut self) -> bool {
        let size = self.size.load(Ordering::Acquire);
        if !protect(self.base, size, libc::PROT_READ | libc::PROT_WRITE) {
            return false;
        }
        if !self.whole {
            let size_pages = size / PAGE_SIZE;
            let (base, state) = (self.base, &self.state);
            self.committed.for_each(|index, content| {
                let index = index as usize;
                if index < size_pages && state[index] == UNMAPPED {
                    // SAFETY: the page is in the accessible, now writable range.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            content.as_ptr(),
                            (base + index * PAGE_SIZE) as *mut u8,
                            PAGE_SIZE,
                        );
                    }
                }
            });
            self.whole = true;
        }
        true
    }

    /// Whether `address` lies in the memory's accessible range.
    pub(crate) fn covers(&self, address: usize) -> bool {
        address >= self.base && address < self.base + self.size.load(Ordering::Acquire)
    }

    /// Resolves a fault at `address`, which the memory
    /// [covers](TrackedMemory::covers). Runs in the fault handler.
    pub(crate) fn fault_at(&mut self, address: usize, write: Option<bool>) -> bool {
        self.fault((address - self.base) / PAGE_SIZE, write)
    }

    fn fault(&mut self, page: usize, write: Option<bool>) -> bool {
        self.faults += 1;
        // In whole mode the only faults left are pages added by growth.
        if self.whole || self.faults > MAX_FAULTS_BEFORE_WHOLE {
            return self.go_whole();
        }
        let address = self.base + page * PAGE_SIZE;
        match self.state[page] {
            UNMAPPED if write == Some(true) => {
                if !protect(address, PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE) {
                    return self.go_whole();
                }
                self.load(page, 1);
                self.mark_dirty(page);
                true
            }
            UNMAPPED => {
                let size_pages = self.size.load(Ordering::Acquire) / PAGE_SIZE;
                let mut count = 1;
                while count < READ_PREFETCH
                    && page + count < size_pages
                    && self.state[page + count] == UNMAPPED
                {
                    count += 1;
                }
                let len = count * PAGE_SIZE;
                let has_content =
                    (page..page + count).any(|p| self.committed.get(p as u64).is_some());
                // Zero pages need no copy: the dropped pages read as zero.
                if has_content {
                    if !protect(address, len, libc::PROT_READ | libc::PROT_WRITE) {
                        return false;
                    }
                    self.load(page, count);
                }
                if !protect(address, len, libc::PROT_READ) {
                    return false;
                }
                self.state[page..page + count].fill(READ_ONLY);
                true
            }
            READ_ONLY => {
                // A fault on a readable page is a write.
                if !protect(address, PAGE_SIZE, libc::PROT_READ | libc::PROT_WRITE) {
                    return false;
                }
                self.mark_dirty(page);
                true
            }
            _ => false,
        }
    }

    fn mark_dirty(&mut self, page: usize) {
        self.state[page] = DIRTY;
        if self.dirty.len() < self.dirty.capacity() {
            self.dirty.push(page as u32);
        } else {
            self.dirty_overflow = true;
        }
    }

    /// Faults taken so far.
    pub(crate) fn faults(&self) -> u64 {
        self.faults
    }

    /// Pages written so far.
    pub(crate) fn dirty_pages(&self) -> usize {
        if self.whole {
            self.whole_dirty.get()
        } else if self.dirty_overflow {
            self.state.iter().filter(|s| **s == DIRTY).count()
        } else {
            self.dirty.len()
        }
    }

    /// The committed map with this message's dirty pages applied (pages
    /// written back to zero become absent again), and the number of pages
    /// whose contents changed.
    ///
    /// # Safety
    /// The store owning the memory must be alive, no wasm may run, and the
    /// memory must no longer be armed.
    pub(crate) unsafe fn commit(&self) -> (PageMap, u64) {
        if self.whole {
            // SAFETY: in whole mode the accessible range is read-write.
            let (map, dirty) = unsafe {
                compare_all(
                    self.base,
                    self.size.load(Ordering::Acquire),
                    &self.committed,
                )
            };
            self.whole_dirty.set(dirty);
            return (map, dirty as u64);
        }
        let dirty: Vec<usize> = if self.dirty_overflow {
            self.state
                .iter()
                .enumerate()
                .filter(|(_, s)| **s == DIRTY)
                .map(|(i, _)| i)
                .collect()
        } else {
            // In fault order.
            let mut dirty: Vec<usize> = self.dirty.iter().map(|p| *p as usize).collect();
            dirty.sort_unstable();
            dirty.dedup();
            dirty
        };
        let base = self.base;
        // SAFETY: dirty pages are mapped read-write, in the memory (not the
        // page slab), and no wasm runs while the map is built.
        unsafe {
            self.committed.with_written(
                &dirty,
                |page| (base + page * PAGE_SIZE) as *const Page,
                |_, _| {},
            )
        }
    }
}

//! Lazy mapping and dirty-page tracking of linear memories with page
//! protection and a SIGSEGV handler (the mechanism of the IC paper).
//!
//! While a message runs, each of its memories is *armed*: its accessible
//! range is `PROT_NONE` and backed by the committed [`PageMap`]. The first
//! read of a page maps it (and a few neighbours: prefetching) read-only with
//! the committed contents; the first write maps it read-write and records it
//! as dirty. On x86-64 the fault's error code tells writes from reads, so a
//! plain write costs one fault. After the message, the dirty pages are the
//! message's delta: the new version is the committed map with those pages
//! replaced, and nothing else is copied.
//!
//! The handler is process-wide (installed once, after wasmtime's own) and
//! only handles addresses inside memories armed *on the faulting thread*;
//! everything else is passed on to the previous handler, so wasmtime's
//! out-of-bounds traps keep working. Host-side accesses to guest memory
//! (argument lowering, result lifting) fault and are handled the same way.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use cellar_types::Principal;

use crate::memory::MemoryView;
use crate::page::{PAGE_SIZE, Page};
use crate::paging::{MAX_PAGES, PageMap, PageRef};

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

thread_local! {
    static ARMED: Cell<(*mut Armed, usize)> = const { Cell::new((std::ptr::null_mut(), 0)) };
}

/// The memories armed on the current thread, for fault handlers.
///
/// # Safety
/// Only for a fault handler running on this thread while an [`ArmGuard`]
/// is alive; the slice must not outlive the handler invocation.
pub(crate) unsafe fn armed_on_this_thread() -> Option<&'static mut [Armed]> {
    let (ptr, len) = ARMED.try_with(Cell::get).ok()?;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// The signature of an `SA_SIGINFO` handler.
pub(crate) type SigInfoHandler =
    unsafe extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` for `signal` (on the alternate stack, re-entrant) and
/// returns the handler it replaces, to chain to.
pub(crate) fn install_signal_handler(
    signal: libc::c_int,
    handler: SigInfoHandler,
) -> libc::sigaction {
    // SAFETY: plain sigaction calls with zero-initialized structs.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        let rc = libc::sigaction(signal, &action, &mut previous);
        assert_eq!(rc, 0, "cannot install the handler for signal {signal}");
        previous
    }
}

/// Installs the fault handler once per process; call after the first
/// `wasmtime::Engine::new` so that wasmtime's handler is the one chained to.
pub(crate) fn install_handler() {
    PREVIOUS.get_or_init(|| install_signal_handler(libc::SIGSEGV, on_fault));
    // The userfaultfd tracker resolves missing pages from SIGBUS.
    crate::uffd::install_handler();
}

unsafe extern "C" fn on_fault(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGSEGV.
    let address = unsafe { (*info).si_addr() } as usize;
    if handle(address, is_write(context)) {
        return;
    }
    let Some(previous) = PREVIOUS.get() else {
        return;
    };
    // SAFETY: we are a signal handler and pass on what we were given.
    unsafe { chain(previous, signal, info, context) }
}

/// Passes a signal that none of our memories claims to the handler that
/// was installed before ours.
///
/// # Safety
/// Only from a signal handler, with the arguments it received.
pub(crate) unsafe fn chain(
    previous: &libc::sigaction,
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: forwarding to the handler that was installed before ours,
    // with the arguments we were given.
    unsafe {
        if previous.sa_flags & libc::SA_SIGINFO != 0 {
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                std::mem::transmute(previous.sa_sigaction);
            f(signal, info, context);
        } else if previous.sa_sigaction == libc::SIG_DFL || previous.sa_sigaction == libc::SIG_IGN {
            // Restore the default action; returning re-executes the access,
            // which then terminates the process as it would have.
            libc::sigaction(signal, previous, std::ptr::null_mut());
        } else {
            let f: extern "C" fn(libc::c_int) = std::mem::transmute(previous.sa_sigaction);
            f(signal);
        }
    }
}

/// Whether the faulting access was a write, when the CPU tells.
#[cfg(target_arch = "x86_64")]
pub(crate) fn is_write(context: *mut libc::c_void) -> Option<bool> {
    if context.is_null() {
        return None;
    }
    // SAFETY: for SA_SIGINFO handlers the third argument is a ucontext_t.
    let context = unsafe { &*(context as *const libc::ucontext_t) };
    // Bit 1 of the page-fault error code: the access was a write.
    Some(context.uc_mcontext.gregs[libc::REG_ERR as usize] & 2 != 0)
}

#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn is_write(_context: *mut libc::c_void) -> Option<bool> {
    None
}

fn handle(address: usize, write: Option<bool>) -> bool {
    // SAFETY: we are the fault handler on the faulting thread.
    let Some(memories) = (unsafe { armed_on_this_thread() }) else {
        return false;
    };
    for memory in memories {
        match memory {
            Armed::Signal(memory) => {
                if address >= memory.base
                    && address < memory.base + memory.size.load(Ordering::Acquire)
                {
                    return memory.fault((address - memory.base) / PAGE_SIZE, write);
                }
            }
            // Pages grown during the message are inaccessible until
            // registered with userfaultfd.
            Armed::Userfaultfd(memory) => {
                if memory.covers_unregistered(address) {
                    return memory.register_growth();
                }
            }
            Armed::Mapped(memory) => {
                let memory = memory.uffd_mut();
                if memory.covers_unregistered(address) {
                    return memory.register_growth();
                }
            }
            // Pages grown beyond an image are inaccessible until opened.
            Armed::Image(memory) => {
                if memory.covers_grown(address) {
                    return memory.open_growth();
                }
            }
            Armed::CopyAll(_) => {}
        }
    }
    false
}

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

/// Compares every page of `[base, base + size)` with `committed` and returns
/// the new map and the number of pages that changed.
///
/// # Safety
/// The range must be readable and no wasm may run.
unsafe fn compare_all(base: usize, size: usize, committed: &PageMap) -> (PageMap, usize) {
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(base as *const u8, size) };
    let zero = [0u8; PAGE_SIZE];
    let updates: Vec<(u64, Option<PageRef>)> = bytes
        .chunks(PAGE_SIZE)
        .enumerate()
        .filter_map(|(i, chunk)| {
            let old = committed.get(i as u64).map_or(&zero[..], |p| &p[..]);
            if chunk == old {
                return None;
            }
            let content = crate::paging::page_content(chunk);
            Some((i as u64, content))
        })
        .collect();
    let changed = updates.len();
    (committed.with_updates(updates), changed)
}

/// Scans a freshly instantiated memory (data segments applied) into a page map.
///
/// # Safety
/// The store owning the memory must be alive and no wasm may run.
pub(crate) unsafe fn scan(view: &MemoryView) -> PageMap {
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { view.bytes() };
    let updates = bytes
        .chunks(PAGE_SIZE)
        .enumerate()
        .filter_map(|(i, chunk)| {
            if crate::paging::is_zero(chunk) {
                return None;
            }
            let mut page = Box::new([0u8; PAGE_SIZE]);
            page[..chunk.len()].copy_from_slice(chunk);
            Some((i as u64, Some(crate::paging::PageRef::new(&page))))
        });
    PageMap::default().with_updates(updates)
}

/// Makes `memories` the armed set of the current thread until dropped.
pub(crate) struct ArmGuard<'a> {
    _memories: &'a mut [Armed],
}

impl<'a> ArmGuard<'a> {
    /// Arms the memories on this thread.
    pub(crate) fn new(memories: &'a mut [Armed]) -> Self {
        ARMED.with(|a| a.set((memories.as_mut_ptr(), memories.len())));
        ArmGuard {
            _memories: memories,
        }
    }
}

impl Drop for ArmGuard<'_> {
    fn drop(&mut self) {
        ARMED.with(|a| a.set((std::ptr::null_mut(), 0)));
    }
}

/// Counts of the tracking work a message did (for benchmarks and limits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackingStats {
    /// Page faults handled.
    pub faults: u64,
    /// Pages dirtied.
    pub dirty_pages: u64,
    /// Wall time spent instantiating and arming the memories (ns).
    pub setup_nanos: u64,
    /// Wall time of the call itself, faults included (ns).
    pub call_nanos: u64,
    /// Wall time spent building the new page maps (ns).
    pub commit_nanos: u64,
}

/// Sums the stats of armed memories.
pub(crate) fn stats(memories: &[Armed]) -> TrackingStats {
    TrackingStats {
        faults: memories.iter().map(Armed::faults).sum(),
        dirty_pages: memories.iter().map(|m| m.dirty_pages() as u64).sum(),
        ..TrackingStats::default()
    }
}

/// The largest memory (in stored pages) [`MemoryTracker::Auto`] always
/// keeps mapped between messages: 64 MiB. A kept memory's per-message
/// `PAGEMAP_SCAN` walk costs ~3 ns per resident page (~50 µs here), less
/// than arming and committing through an image; at 1 GiB it is ~0.6 ms,
/// several times an image's, which only pays off for canisters whose
/// updates write many pages (`write_rate`, `docs/persistence.md`).
pub const KEPT_MAX_PAGES: u64 = 16 * 1024;

impl MemoryTracker {
    /// Whether a message of `canister` on `heap` runs in kept memories.
    pub(crate) fn keeps(self, heap: &crate::state::HeapSnapshot, canister: &Principal) -> bool {
        !heap.memories.is_empty()
            && match self {
                MemoryTracker::Mapped => true,
                MemoryTracker::Auto => {
                    !is_large(heap) || {
                        let keep = crate::write_rate::keeps_large(canister);
                        if crate::write_rate::take_switch(canister) {
                            // The other way's copy of the heap is not needed.
                            for memory in &heap.memories {
                                if keep {
                                    crate::image::evict(&memory.pages);
                                } else {
                                    crate::mapped::evict(&memory.pages);
                                }
                            }
                        }
                        keep
                    }
                }
                MemoryTracker::Signal | MemoryTracker::Userfaultfd | MemoryTracker::CopyAll => {
                    false
                }
            }
    }

    /// Records how many pages an update of `canister` on `heap` changed,
    /// for the choice [`MemoryTracker::Auto`] makes for large memories.
    pub(crate) fn record_update(
        self,
        heap: &crate::state::HeapSnapshot,
        canister: &Principal,
        changed_pages: u64,
    ) {
        if self == MemoryTracker::Auto && is_large(heap) {
            let stored = heap.memories.iter().map(|m| m.pages.len()).sum();
            crate::write_rate::record(canister, stored, changed_pages);
        }
    }
}

/// Whether a memory of `heap` is beyond what [`MemoryTracker::Auto`] always
/// keeps.
fn is_large(heap: &crate::state::HeapSnapshot) -> bool {
    heap.memories.iter().any(|m| m.pages.len() > KEPT_MAX_PAGES)
}

/// How dirty pages are found while a message runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryTracker {
    /// `mprotect` and a SIGSEGV handler (the IC paper's mechanism).
    Signal,
    /// userfaultfd write protection with `PAGEMAP_SCAN` (Linux 6.7+).
    Userfaultfd,
    /// userfaultfd with each canister memory kept mapped and populated
    /// between messages (see `mapped`).
    Mapped,
    /// The default where userfaultfd works: kept memories (as [`Mapped`])
    /// for memories of at most [`KEPT_MAX_PAGES`] stored pages, whose
    /// per-message page-table walk is short, and for larger ones of
    /// canisters whose updates write many pages (the walk then costs less
    /// than the image's copy-on-write faults); memory images (as
    /// [`Userfaultfd`]) for the other large ones.
    ///
    /// [`Mapped`]: MemoryTracker::Mapped
    /// [`Userfaultfd`]: MemoryTracker::Userfaultfd
    Auto,
    /// The naive baseline: copy the whole heap in, compare it all after.
    CopyAll,
}

impl std::str::FromStr for MemoryTracker {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "signal" => Ok(MemoryTracker::Signal),
            "userfaultfd" | "uffd" => Ok(MemoryTracker::Userfaultfd),
            "uffd-mapped" | "mapped" => Ok(MemoryTracker::Mapped),
            "uffd-auto" | "auto" => Ok(MemoryTracker::Auto),
            "copy-all" => Ok(MemoryTracker::CopyAll),
            other => Err(format!(
                "unknown memory tracker '{other}': use uffd-auto, signal, userfaultfd, uffd-mapped or copy-all"
            )),
        }
    }
}

impl MemoryTracker {
    /// Whether this kernel can provide the tracker.
    pub fn check_available(self) -> Result<(), String> {
        match self {
            MemoryTracker::Userfaultfd | MemoryTracker::Mapped | MemoryTracker::Auto => {
                crate::uffd::check_supported()
            }
            MemoryTracker::Signal | MemoryTracker::CopyAll => Ok(()),
        }
    }

    /// The tracker to use by default: the faster of the two real ones
    /// (`cellar bench memory`), falling back when the kernel lacks it.
    pub fn best_available() -> MemoryTracker {
        if MemoryTracker::Auto.check_available().is_ok() {
            MemoryTracker::Auto
        } else {
            MemoryTracker::Signal
        }
    }

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            MemoryTracker::Signal => "signal",
            MemoryTracker::Userfaultfd => "userfaultfd",
            MemoryTracker::Mapped => "uffd-mapped",
            MemoryTracker::Auto => "uffd-auto",
            MemoryTracker::CopyAll => "copy-all",
        }
    }
}

/// One memory armed for a message, with whichever mechanism is selected.
pub(crate) enum Armed {
    /// Page protection and SIGSEGV.
    Signal(TrackedMemory),
    /// userfaultfd.
    Userfaultfd(crate::uffd::UffdMemory),
    /// A private mapping of a memory image (the userfaultfd tracker's
    /// choice for large memories).
    Image(crate::image::ImageMemory),
    /// A memory kept mapped between messages.
    Mapped(crate::mapped::MappedMemory),
    /// Whole-heap copies.
    CopyAll(CopyMemory),
}

impl Armed {
    /// Arms `view` (memory `lineage`) with `committed` using `tracker`.
    ///
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn arm(
        tracker: MemoryTracker,
        view: &MemoryView,
        committed: PageMap,
        lineage: &crate::version_cache::Lineage,
    ) -> std::io::Result<Self> {
        // SAFETY: forwarded contract.
        unsafe {
            Ok(match tracker {
                MemoryTracker::Signal => Armed::Signal(TrackedMemory::arm(view, committed)?),
                // `Auto` arms here only the memories it does not keep.
                MemoryTracker::Userfaultfd | MemoryTracker::Auto => {
                    match crate::image::ImageMemory::arm(view, &committed, lineage)? {
                        Some(memory) => Armed::Image(memory),
                        None => Armed::Userfaultfd(crate::uffd::UffdMemory::arm(view, committed)?),
                    }
                }
                // A memory that has no committed state yet (the first
                // message) is armed lazily; `mapped` keeps it afterwards.
                MemoryTracker::Mapped => {
                    Armed::Userfaultfd(crate::uffd::UffdMemory::arm(view, committed)?)
                }
                MemoryTracker::CopyAll => Armed::CopyAll(CopyMemory::arm(view, committed)),
            })
        }
    }

    /// The committed map with this message's writes applied.
    ///
    /// # Safety
    /// The store must be alive, no wasm may run, the guard must be gone.
    pub(crate) unsafe fn commit(&self) -> (PageMap, u64) {
        // SAFETY: forwarded contract.
        unsafe {
            match self {
                Armed::Signal(m) => m.commit(),
                Armed::Userfaultfd(m) => m.commit(),
                Armed::Image(m) => m.commit(),
                Armed::Mapped(m) => m.commit(),
                Armed::CopyAll(m) => m.commit(),
            }
        }
    }

    /// The message's changes persist (after [`Armed::commit`]): a kept
    /// memory then holds the new version.
    pub(crate) fn confirm(&self) {
        if let Armed::Mapped(m) = self {
            m.confirm();
        }
    }

    fn faults(&self) -> u64 {
        match self {
            Armed::Signal(m) => m.faults(),
            Armed::Userfaultfd(m) => m.faults(),
            Armed::Image(m) => m.faults(),
            Armed::Mapped(m) => m.faults(),
            Armed::CopyAll(_) => 0,
        }
    }

    fn dirty_pages(&self) -> usize {
        match self {
            Armed::Signal(m) => m.dirty_pages(),
            Armed::Userfaultfd(m) => m.dirty_pages(),
            Armed::Image(m) => m.dirty_pages(),
            Armed::Mapped(m) => m.dirty_pages(),
            Armed::CopyAll(m) => m.dirty.get(),
        }
    }
}

/// The naive baseline: the whole committed heap is written into the
/// instance, and the whole heap is compared against it afterwards.
pub(crate) struct CopyMemory {
    base: usize,
    size: Arc<AtomicUsize>,
    committed: PageMap,
    dirty: Cell<usize>,
}

impl CopyMemory {
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    unsafe fn arm(view: &MemoryView, committed: PageMap) -> Self {
        let (base, size) = (view.base(), view.len());
        // SAFETY: our own mapping, accessible up to `size`.
        unsafe {
            std::ptr::write_bytes(base as *mut u8, 0, size);
            for (index, page) in committed.iter() {
                let at = index as usize * PAGE_SIZE;
                if at + PAGE_SIZE <= size {
                    std::ptr::copy_nonoverlapping(page.as_ptr(), (base + at) as *mut u8, PAGE_SIZE);
                }
            }
        }
        CopyMemory {
            base,
            size: view.size_handle(),
            committed,
            dirty: Cell::new(0),
        }
    }

    /// # Safety
    /// The store must be alive and no wasm may run.
    unsafe fn commit(&self) -> (PageMap, u64) {
        // SAFETY: the memory is accessible up to its size.
        let (map, changed) = unsafe {
            compare_all(
                self.base,
                self.size.load(Ordering::Acquire),
                &self.committed,
            )
        };
        self.dirty.set(changed);
        (map, changed as u64)
    }
}

//! The memory trackers: which one a message's memories use
//! ([`MemoryTracker`]), a memory armed with it ([`Armed`]: the signal
//! tracker's `mprotect`, userfaultfd's `uffd`, a memory image's `image`, a
//! kept memory's `mapped`, or `copy_all`), the memories armed on a thread,
//! and the process-wide fault handlers that pass each SIGSEGV and SIGBUS to
//! the armed memory it falls in.
//!
//! [`MemoryTracker`] selects how a message's memories are tracked: the
//! signal tracker, userfaultfd, kept memories (`uffd-mapped`), `uffd-auto`
//! (the default where the kernel has userfaultfd), or the `copy-all`
//! baseline. An [`Armed`] memory is one armed with one of them, and an
//! `ArmGuard` makes a message's armed memories those of its thread for as
//! long as it runs. [`set_memory_images`] turns memory images off (or back
//! on) for benchmarks.
//!
//! The SIGSEGV and SIGBUS handlers are process-wide, installed once and
//! chained in front of wasmtime's own, and only handle addresses inside
//! memories armed *on the faulting thread*; everything else is passed on to
//! the previous handler, so wasmtime's out-of-bounds traps keep working.

use std::cell::Cell;
use std::sync::OnceLock;

use cellar_types::Principal;

use crate::copy_all::CopyMemory;
use crate::memory::MemoryView;
use crate::mprotect::TrackedMemory;
use crate::page::PAGE_SIZE;
use crate::paging::{PageMap, PageRef};
use crate::signals::{chain, install_signal_handler, is_write};

thread_local! {
    static ARMED: Cell<(*mut Armed, usize)> = const { Cell::new((std::ptr::null_mut(), 0)) };
}

/// The memories armed on the current thread, for fault handlers.
///
/// # Safety
/// Only for a fault handler running on this thread while an [`ArmGuard`]
/// is alive; the slice must not outlive the handler invocation.
unsafe fn armed_on_this_thread() -> Option<&'static mut [Armed]> {
    let (ptr, len) = ARMED.try_with(Cell::get).ok()?;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: per the contract above.
    Some(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// The SIGSEGV handler ours replaced, to chain to.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();
/// The SIGBUS handler ours replaced, to chain to.
static PREVIOUS_SIGBUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Installs the fault handlers (SIGSEGV, SIGBUS) once per process; call
/// after the first `wasmtime::Engine::new` so that wasmtime's handler is the
/// one chained to.
pub(crate) fn install_handler() {
    PREVIOUS.get_or_init(|| install_signal_handler(libc::SIGSEGV, on_fault));
    // The userfaultfd tracker resolves missing pages from SIGBUS.
    PREVIOUS_SIGBUS.get_or_init(|| install_signal_handler(libc::SIGBUS, on_sigbus));
}

/// Resolves a fault on a page an armed memory protects (the signal
/// tracker's pages, and pages grown during the message under the others).
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

fn handle(address: usize, write: Option<bool>) -> bool {
    // SAFETY: we are the fault handler on the faulting thread.
    let Some(memories) = (unsafe { armed_on_this_thread() }) else {
        return false;
    };
    for memory in memories {
        match memory {
            Armed::Signal(memory) => {
                if memory.covers(address) {
                    return memory.fault_at(address, write);
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

/// Resolves a missing page of a userfaultfd-registered memory (the
/// userfaultfd tracker's and kept memories'), which raises SIGBUS.
unsafe extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SIGBUS.
    let address = unsafe { (*info).si_addr() } as usize;
    if handle_sigbus(address, is_write(context)) {
        return;
    }
    if let Some(previous) = PREVIOUS_SIGBUS.get() {
        // SAFETY: we are the signal handler and pass on what we were given.
        unsafe { chain(previous, signal, info, context) }
    }
}

fn handle_sigbus(address: usize, write: Option<bool>) -> bool {
    // SAFETY: we are the fault handler on the faulting thread.
    let Some(memories) = (unsafe { armed_on_this_thread() }) else {
        return false;
    };
    for memory in memories {
        let memory = match memory {
            Armed::Userfaultfd(memory) => memory,
            Armed::Mapped(memory) => memory.uffd_mut(),
            _ => continue,
        };
        if memory.covers_registered(address) {
            return memory.fault_at(address, write == Some(true));
        }
    }
    false
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
            Some((i as u64, Some(PageRef::new(&page))))
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

/// Turns memory images off (or back on) for this process: the userfaultfd
/// tracker then maps every memory lazily. For benchmarks that compare both.
/// Turning them off frees the cached images, and the memories the
/// `uffd-mapped` tracker keeps (not lent right now).
pub fn set_memory_images(enabled: bool) {
    crate::image::set_enabled(enabled);
    if !enabled {
        crate::mapped::clear();
        crate::image::clear();
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
            Armed::CopyAll(m) => m.dirty_pages(),
        }
    }
}

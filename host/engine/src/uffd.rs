//! Dirty-page tracking with userfaultfd write protection and `PAGEMAP_SCAN`.
//!
//! Not implemented yet: [`check_supported`] says so, and selecting the
//! tracker fails with that message.

use crate::memory::MemoryView;
use crate::paging::PageMap;

/// Whether this kernel and build can track memory with userfaultfd.
pub(crate) fn check_supported() -> Result<(), String> {
    Err("the userfaultfd memory tracker is not implemented in this build".into())
}

/// A memory armed with userfaultfd.
pub(crate) struct UffdMemory {
    committed: PageMap,
}

impl UffdMemory {
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn arm(_view: &MemoryView, _committed: PageMap) -> std::io::Result<Self> {
        Err(std::io::Error::other(check_supported().unwrap_err()))
    }

    /// # Safety
    /// The store must be alive and no wasm may run.
    pub(crate) unsafe fn commit(&self) -> PageMap {
        self.committed.clone()
    }

    pub(crate) fn faults(&self) -> u64 {
        0
    }

    pub(crate) fn dirty_pages(&self) -> usize {
        0
    }
}

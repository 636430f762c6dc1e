//! The `copy-all` baseline tracker: the whole committed heap is copied into
//! the instance and the whole heap compared with it afterwards (the
//! comparison the signal tracker's whole mode also commits with).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::memory::MemoryView;
use crate::page::PAGE_SIZE;
use crate::paging::{PageMap, PageRef, page_content};

/// Compares every page of `[base, base + size)` with `committed` and returns
/// the new map and the number of pages that changed.
///
/// # Safety
/// The range must be readable and no wasm may run.
pub(crate) unsafe fn compare_all(
    base: usize,
    size: usize,
    committed: &PageMap,
) -> (PageMap, usize) {
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
            let content = page_content(chunk);
            Some((i as u64, content))
        })
        .collect();
    let changed = updates.len();
    (committed.with_updates(updates), changed)
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
    /// Arms `view` with `committed` as its contents: the whole committed
    /// heap is written into it.
    ///
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn arm(view: &MemoryView, committed: PageMap) -> Self {
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

    /// The committed map with this message's writes applied, found by
    /// comparing the whole heap, and the number of pages that changed.
    ///
    /// # Safety
    /// The store must be alive and no wasm may run.
    pub(crate) unsafe fn commit(&self) -> (PageMap, u64) {
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

    /// Pages found changed by the last [`CopyMemory::commit`].
    pub(crate) fn dirty_pages(&self) -> usize {
        self.dirty.get()
    }
}

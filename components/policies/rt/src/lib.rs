//! Runtime for Cellar's policy components (scheduler and consensus).
//!
//! A policy component imports nothing, so it cannot use Rust's `std` on
//! `wasm32-wasip2` (std imports WASI). Linking this `no_std` crate gives a
//! policy what std would have: a global allocator, a panic handler (a panic
//! traps, and the host then uses its built-in default for that answer)
//! and the `cabi_realloc` export the component model needs to pass lists in.
//!
//! The allocator is a bump allocator that never frees: the host runs every
//! call (`schedule`, `ranking`, ...) on a fresh instance, so memory lives
//! for one call only.
//!
//! [`algorithm`] holds the scheduler policies' arithmetic; the host compiles
//! the same file as its built-in default. [`consensus`] holds the consensus
//! policies' (ICC beacon permutation, round robin, ICC delays).

#![no_std]
#![warn(missing_docs)]

extern crate alloc;

pub mod algorithm;
pub mod consensus;

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicUsize, Ordering};

const WASM_PAGE: usize = 65536;

/// Bump allocator over the linear memory above its initial size.
struct Bump {
    next: AtomicUsize,
}

#[cfg(target_arch = "wasm32")]
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        use core::arch::wasm32::{memory_grow, memory_size};
        let mut next = self.next.load(Ordering::Relaxed);
        if next == 0 {
            // Everything above the initial memory (stack, data) is free.
            next = memory_size(0) * WASM_PAGE;
        }
        let Some(start) = next.checked_next_multiple_of(layout.align()) else {
            return core::ptr::null_mut();
        };
        let Some(end) = start.checked_add(layout.size()) else {
            return core::ptr::null_mut();
        };
        let have = memory_size(0) * WASM_PAGE;
        if end > have && memory_grow(0, (end - have).div_ceil(WASM_PAGE)) == usize::MAX {
            return core::ptr::null_mut();
        }
        self.next.store(end, Ordering::Relaxed);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: AtomicUsize::new(0),
};

#[cfg(target_arch = "wasm32")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// The canonical ABI's allocation function, through which the host copies
/// the round's input into the instance.
///
/// # Safety
/// Called by the component model with either a null `old` and `old_len` 0,
/// or a block this function returned with its length.
#[cfg(target_arch = "wasm32")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    if new_len == 0 {
        return align as *mut u8;
    }
    // SAFETY: the canonical ABI passes a power-of-two alignment.
    let layout = unsafe { Layout::from_size_align_unchecked(new_len, align) };
    // SAFETY: a non-zero size.
    let new = unsafe { ALLOCATOR.alloc(layout) };
    if new.is_null() {
        core::arch::wasm32::unreachable();
    }
    if !old.is_null() && old_len > 0 {
        // SAFETY: `old` holds `old_len` bytes; `new` is a fresh block.
        unsafe { core::ptr::copy_nonoverlapping(old, new, old_len.min(new_len)) };
    }
    new
}

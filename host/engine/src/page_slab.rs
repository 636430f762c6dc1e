//! Page storage for page maps: a process-wide slab of 4 KiB pages.
//!
//! A [`PageRef`] is a 32-bit handle to one immutable page in the slab, with
//! a reference count like an `Arc<Page>`. The difference is where things
//! live: pages sit side by side in 2 MiB chunks (anonymous mappings, up to
//! 256 GiB in all), and their reference counts in a dense array per chunk
//! instead of in a header before each page. A page map's leaf holds 32
//! handles (4 bytes each), so cloning or dropping a leaf touches 32 counts
//! packed in a few cache lines instead of 32 separate 4 KiB allocations (one
//! cache and TLB miss each).
//!
//! A page whose last handle is dropped goes on a LIFO free list and is among
//! the first ones handed out again (threads take free slots in batches of
//! 32, one lock per batch): committing a message writes into memory that is
//! already faulted in (no page fault, no zeroing by the kernel). When more
//! than [`RETAINED_FREE_PAGES`] pages (128 MiB) are free, a chunk whose
//! pages are all free is given back to the kernel lazily (`MADV_FREE`: the
//! kernel reclaims it only under memory pressure, so a chunk reused soon
//! after, as when a large version is dropped and loaded again, is still
//! faulted in); its pages stay on the free list.
//!
//! Chunks are 2 MiB-aligned and ask for transparent huge pages, so the
//! scattered pages a commit reads and writes cost no TLB miss each.
//!
//! Which slot a page occupies depends on allocation order, but nothing
//! observable does: contents, hashes and equality only ever look at the
//! bytes (and [`PageRef::ptr_eq`] only short-cuts a byte comparison).

use std::num::NonZeroU32;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicU32, Ordering, fence};

use crate::page::{PAGE_SIZE, Page};

/// Pages per chunk (2 MiB).
const CHUNK_PAGES: usize = 512;
const CHUNK_BITS: u32 = CHUNK_PAGES.trailing_zeros();
/// Chunks the slab can hold: 2^17 × 2 MiB = 256 GiB of pages.
const MAX_CHUNKS: usize = 1 << 17;

/// Free pages kept faulted in; beyond this, wholly free chunks are given
/// back to the kernel (128 MiB: a few messages' worth of dirty pages).
const RETAINED_FREE_PAGES: usize = 32 * 1024;

/// A counted reference to one immutable page in the slab.
///
/// Cloning and dropping adjust the page's reference count; the last drop
/// returns the page to the slab. Dereferences to the page's bytes.
pub struct PageRef(NonZeroU32);

/// One chunk: its pages (a private anonymous mapping) and their counts.
struct Chunk {
    pages: NonNull<Page>,
    counts: [AtomicU32; CHUNK_PAGES],
}

// SAFETY: `pages` points to a mapping the chunk owns for the life of the
// process; the bytes of a page are written only by the one thread that
// allocated it, before any handle to it exists (see `PageRef::new`), and
// only read afterwards; counts are atomics.
unsafe impl Send for Chunk {}
// SAFETY: as for `Send`.
unsafe impl Sync for Chunk {}

/// The process's slab, which every [`PageRef`] refers to.
static SLAB: Slab = Slab {
    chunks: &CHUNKS,
    retained_free_pages: RETAINED_FREE_PAGES,
    free: Mutex::new(Free::new()),
};

/// The global slab's chunk table.
static CHUNKS: [AtomicPtr<Chunk>; MAX_CHUNKS] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; MAX_CHUNKS];

/// Chunked page storage with reference counts and a free list. Only the
/// global [`SLAB`] hands out [`PageRef`]s; tests make their own to check
/// recycling and reclamation in isolation.
struct Slab {
    /// The chunks, indexed by slot >> CHUNK_BITS. A chunk, once published,
    /// is never freed or moved (its memory may be given back to the kernel,
    /// but the mapping stays).
    chunks: &'static [AtomicPtr<Chunk>],
    /// Free pages kept faulted in (see [`RETAINED_FREE_PAGES`]).
    retained_free_pages: usize,
    /// Allocation state.
    free: Mutex<Free>,
}

/// Allocation state, all under one lock.
struct Free {
    /// Free slots, most recently freed last (handed out first: warm).
    list: Vec<u32>,
    /// The next slot never handed out.
    fresh: u32,
    /// Pages in use per chunk.
    live: Vec<u32>,
    /// Chunks whose memory was given back to the kernel (all free).
    released: Vec<bool>,
}

impl Free {
    const fn new() -> Free {
        Free {
            list: Vec::new(),
            // Slot 0 is never used, so a handle is non-zero (and an
            // `Option<PageRef>` is four bytes).
            fresh: 1,
            live: Vec::new(),
            released: Vec::new(),
        }
    }
}

fn slot(index: u32) -> usize {
    index as usize & (CHUNK_PAGES - 1)
}

impl Slab {
    fn chunk(&self, index: u32) -> &'static Chunk {
        let chunk = self.chunks[(index >> CHUNK_BITS) as usize].load(Ordering::Acquire);
        // SAFETY: a slot's chunk was published (Release) before the slot
        // was handed out, and chunks are leaked: never freed, never moved.
        unsafe { &*chunk }
    }

    /// The page in slot `index`.
    fn page(&self, index: u32) -> *mut Page {
        // SAFETY: the slot lies inside its chunk's mapping of CHUNK_PAGES
        // pages.
        unsafe { self.chunk(index).pages.as_ptr().add(slot(index)) }
    }

    fn count(&self, index: u32) -> &'static AtomicU32 {
        &self.chunk(index).counts[slot(index)]
    }

    /// Maps a new chunk and publishes it at `number`.
    fn new_chunk(&self, number: usize) {
        assert!(
            number < self.chunks.len(),
            "page slab full ({} GiB)",
            (self.chunks.len() * CHUNK_PAGES * PAGE_SIZE) >> 30
        );
        let pages = map_aligned_chunk();
        let chunk = Box::new(Chunk {
            pages: NonNull::new(pages.cast()).expect("mmap returned null"),
            counts: [const { AtomicU32::new(0) }; CHUNK_PAGES],
        });
        self.chunks[number].store(Box::into_raw(chunk), Ordering::Release);
    }

    /// A free slot (its count still zero, its bytes unspecified), mapping a
    /// new chunk if needed.
    fn allocate(&self) -> u32 {
        let mut slots = Vec::with_capacity(1);
        self.allocate_into(&mut slots, 1);
        slots[0]
    }

    /// Appends `n` free slots to `slots` under one lock (see [`allocate`]).
    ///
    /// [`allocate`]: Slab::allocate
    fn allocate_into(&self, slots: &mut Vec<u32>, n: usize) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        for _ in 0..n {
            let index = match free.list.pop() {
                Some(index) => index,
                None => {
                    let index = free.fresh;
                    let number = (index >> CHUNK_BITS) as usize;
                    if number == free.live.len() {
                        self.new_chunk(number);
                        free.live.push(0);
                        free.released.push(false);
                    }
                    free.fresh = index.checked_add(1).expect("page slab full");
                    index
                }
            };
            let number = (index >> CHUNK_BITS) as usize;
            free.live[number] += 1;
            free.released[number] = false;
            slots.push(index);
        }
    }

    /// Returns a slot whose count dropped to zero to the free list (see
    /// [`Slab::release_all`]).
    fn release(&self, index: u32) {
        self.release_all(&[index]);
    }

    /// Returns free slots to the free list under one lock, and gives a
    /// chunk's memory back to the kernel when its last page in use was
    /// returned and enough pages are free.
    fn release_all(&self, slots: &[u32]) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        for &index in slots {
            free.list.push(index);
            let number = (index >> CHUNK_BITS) as usize;
            free.live[number] -= 1;
            if free.live[number] == 0
                && !free.released[number]
                && free.list.len() > self.retained_free_pages
            {
                free.released[number] = true;
                let pages = self.chunk(index).pages.as_ptr();
                // SAFETY: every page of the chunk is free, and slots are
                // handed out only under this lock (which we hold), so no
                // handle refers to this memory and none can be created
                // before we are done; afterwards the pages read as zero or
                // as before until rewritten, which `PageRef::new` does
                // before anyone reads them.
                let _ = unsafe { libc::madvise(pages.cast(), CHUNK_BYTES, libc::MADV_FREE) };
            }
        }
    }

    /// Current occupancy.
    fn stats(&self) -> SlabStats {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        SlabStats {
            live: free.live.iter().map(|&l| l as usize).sum(),
            free: free.list.len(),
            chunks: free.live.len(),
            released: free.released.iter().filter(|r| **r).count(),
        }
    }
}

/// Slots a thread takes from the shared free list at once: one lock per
/// batch rather than per page (threads loading a checkpoint allocate side
/// by side).
const THREAD_BATCH: usize = 32;

/// A thread's free slots, taken from [`SLAB`] in batches; counted as in
/// use by the slab until handed out, and given back when the thread ends.
struct ThreadSlots(Vec<u32>);

impl Drop for ThreadSlots {
    fn drop(&mut self) {
        SLAB.release_all(&self.0);
    }
}

thread_local! {
    static THREAD_SLOTS: std::cell::RefCell<ThreadSlots> =
        const { std::cell::RefCell::new(ThreadSlots(Vec::new())) };
}

/// A free slot of the global slab for this thread.
fn take_slot() -> u32 {
    THREAD_SLOTS
        .try_with(|slots| {
            let slots = &mut slots.borrow_mut().0;
            if slots.is_empty() {
                SLAB.allocate_into(slots, THREAD_BATCH);
                // Handed out from the end: the most recently freed first.
                slots.reverse();
            }
            slots.pop().expect("a batch was just taken")
        })
        // While the thread ends, without its cache.
        .unwrap_or_else(|_| SLAB.allocate())
}

impl PageRef {
    /// A new page holding a copy of `page`.
    pub fn new(page: &Page) -> PageRef {
        let index = take_slot();
        // SAFETY: the slot is free (count zero, handed out to us alone under
        // the lock), so no one else reads or writes it; it is PAGE_SIZE
        // writable bytes inside the chunk's mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(page, SLAB.page(index), 1);
        }
        SLAB.count(index).store(1, Ordering::Relaxed);
        PageRef(NonZeroU32::new(index).expect("slot 0 is never handed out"))
    }

    /// A new page holding a copy of `page`, or `None` when all its bytes
    /// are zero (a map's absent page). The zero check is made while copying,
    /// so the page is read once.
    pub fn copy_unless_zero(page: &Page) -> Option<PageRef> {
        let index = take_slot();
        // SAFETY: as in `PageRef::new`: the slot is ours alone, PAGE_SIZE
        // writable bytes, and `page` cannot overlap it (a handle-less slot
        // is referenced by no one).
        let any = unsafe { copy_or(page, &mut *SLAB.page(index)) };
        SLAB.count(index).store(1, Ordering::Relaxed);
        let copy = PageRef(NonZeroU32::new(index).expect("slot 0 is never handed out"));
        // A zero page's slot goes back at once (dropping the handle).
        (any != 0).then_some(copy)
    }

    /// A new page holding a copy of `bytes`.
    ///
    /// # Panics
    /// When `bytes` is not exactly one page long.
    pub fn from_slice(bytes: &[u8]) -> PageRef {
        PageRef::new(bytes.try_into().expect("a page is PAGE_SIZE bytes"))
    }

    /// Whether both handles refer to the same stored page (then their
    /// contents are equal; different pages may still hold equal bytes).
    pub fn ptr_eq(a: &PageRef, b: &PageRef) -> bool {
        a.0 == b.0
    }
}

impl std::ops::Deref for PageRef {
    type Target = Page;

    fn deref(&self) -> &Page {
        // SAFETY: the page is in use while this handle exists (its count is
        // at least one), so it is neither rewritten nor given back, and its
        // bytes were written before the handle was created.
        unsafe { &*SLAB.page(self.0.get()) }
    }
}

impl Clone for PageRef {
    fn clone(&self) -> Self {
        // Relaxed as for `Arc`: the new handle is made from an existing one,
        // which already keeps the page alive.
        let before = SLAB.count(self.0.get()).fetch_add(1, Ordering::Relaxed);
        if before > u32::MAX / 2 {
            // Like `Arc`: an overflow would free a page still in use.
            std::process::abort();
        }
        PageRef(self.0)
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        if SLAB.count(self.0.get()).fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // As for `Arc`: every use of the page through other handles happens
        // before it is reused.
        fence(Ordering::Acquire);
        SLAB.release(self.0.get());
    }
}

impl std::fmt::Debug for PageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PageRef").field(&self.0).finish()
    }
}

/// Bytes per chunk.
const CHUNK_BYTES: usize = CHUNK_PAGES * PAGE_SIZE;

/// Maps one chunk at a 2 MiB boundary and asks for a transparent huge page
/// there: a commit writes pages scattered over many chunks and reads the
/// pages they replace, so with 4 KiB pages nearly every page costs a TLB
/// miss (two-dimensional page walks in a VM); one huge page per chunk
/// makes them hits. Where huge pages are unavailable, 4 KiB pages serve.
fn map_aligned_chunk() -> *mut libc::c_void {
    // SAFETY: an anonymous private mapping at an address the kernel picks
    // (twice the size, to cut an aligned chunk from); no existing memory
    // is affected.
    let wide = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * CHUNK_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert!(
        wide != libc::MAP_FAILED,
        "cannot map page slab chunk: {}",
        std::io::Error::last_os_error()
    );
    let start = wide as usize;
    let aligned = start.next_multiple_of(CHUNK_BYTES);
    // SAFETY: both ranges lie inside the mapping just made and outside the
    // aligned chunk we keep.
    unsafe {
        if aligned > start {
            libc::munmap(wide, aligned - start);
        }
        let end = start + 2 * CHUNK_BYTES;
        if end > aligned + CHUNK_BYTES {
            libc::munmap(
                (aligned + CHUNK_BYTES) as *mut _,
                end - aligned - CHUNK_BYTES,
            );
        }
        // Advice only: without huge pages the chunk works the same.
        libc::madvise(aligned as *mut _, CHUNK_BYTES, libc::MADV_HUGEPAGE);
    }
    aligned as *mut libc::c_void
}

/// Copies `from` into `to` and returns the OR of all its 8-byte words
/// (zero exactly when the page is all zero bytes), in one pass the compiler
/// vectorizes.
fn copy_or(from: &Page, to: &mut Page) -> u64 {
    let mut any = 0u64;
    for (source, target) in from.chunks_exact(64).zip(to.chunks_exact_mut(64)) {
        let mut words = [0u64; 8];
        for (word, bytes) in words.iter_mut().zip(source.chunks_exact(8)) {
            *word = u64::from_ne_bytes(bytes.try_into().expect("8 bytes"));
            any |= *word;
        }
        for (bytes, word) in target.chunks_exact_mut(8).zip(words) {
            bytes.copy_from_slice(&word.to_ne_bytes());
        }
    }
    any
}

/// Slab occupancy, for tests and diagnostics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlabStats {
    /// Pages in use (with the free slots threads hold ready, at most
    /// 32 per thread).
    pub live: usize,
    /// Free slots (reused before new memory is mapped).
    pub free: usize,
    /// Chunks mapped (2 MiB each).
    pub chunks: usize,
    /// Chunks whose memory was given back to the kernel.
    pub released: usize,
}

/// The page slab's current occupancy.
pub fn stats() -> SlabStats {
    SLAB.stats()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> PageRef {
        PageRef::new(&[byte; PAGE_SIZE])
    }

    fn count(page: &PageRef) -> u32 {
        SLAB.count(page.0.get()).load(Ordering::SeqCst)
    }

    /// A slab of its own (other tests use the global one concurrently).
    fn private_slab(retained_free_pages: usize) -> Slab {
        let chunks: Vec<AtomicPtr<Chunk>> = (0..64)
            .map(|_| AtomicPtr::new(std::ptr::null_mut()))
            .collect();
        Slab {
            chunks: Vec::leak(chunks),
            retained_free_pages,
            free: Mutex::new(Free::new()),
        }
    }

    #[test]
    fn handles_count_references() {
        let a = page(7);
        assert_eq!(count(&a), 1);
        let b = a.clone();
        assert!(PageRef::ptr_eq(&a, &b));
        assert_eq!(count(&a), 2);
        assert_eq!(b[..], [7u8; PAGE_SIZE][..]);
        drop(a);
        assert_eq!(count(&b), 1);
        assert_eq!(b[PAGE_SIZE - 1], 7);
        let c = page(7);
        assert!(!PageRef::ptr_eq(&b, &c));
        assert_eq!(b[..], c[..]);
        assert_eq!(std::mem::size_of::<Option<PageRef>>(), 4);
    }

    #[test]
    fn freed_slots_are_reused_most_recent_first() {
        let slab = private_slab(usize::MAX);
        let a = slab.allocate();
        let b = slab.allocate();
        let c = slab.allocate();
        assert_eq!((a, b, c), (1, 2, 3), "slot 0 is never handed out");
        slab.release(b);
        slab.release(a);
        assert_eq!(slab.allocate(), a);
        assert_eq!(slab.allocate(), b);
        assert_eq!(slab.allocate(), 4);
        let stats = slab.stats();
        assert_eq!((stats.live, stats.free, stats.chunks), (4, 0, 1));
        // A new chunk only once the first is full.
        let more: Vec<u32> = (0..CHUNK_PAGES).map(|_| slab.allocate()).collect();
        assert_eq!(slab.stats().chunks, 2);
        for index in more {
            slab.release(index);
        }
        assert_eq!(slab.stats().live, 4);
        assert_eq!(slab.stats().free, CHUNK_PAGES);
    }

    #[test]
    fn wholly_free_chunks_beyond_the_retained_pages_are_given_back() {
        let slab = private_slab(CHUNK_PAGES);
        // Four full chunks (slot 0 is never handed out).
        let slots: Vec<u32> = (1..4 * CHUNK_PAGES).map(|_| slab.allocate()).collect();
        assert_eq!(slab.stats().chunks, 4);
        for &index in &slots {
            // SAFETY: the slot is ours (allocated above, not yet released).
            unsafe { std::ptr::write_bytes(slab.page(index), 0xEE, 1) };
        }
        for &index in &slots {
            slab.release(index);
        }
        let stats = slab.stats();
        assert_eq!(stats.live, 0);
        // Chunk 0 emptied before more than CHUNK_PAGES pages were free; the
        // three after it were given back.
        assert_eq!(stats.released, 3);
        let last = *slots.last().unwrap();
        // SAFETY: the slot is free and nobody else uses this slab; reading
        // given-back memory is allowed (lazily freed, it reads as zero once
        // the kernel reclaimed it, as before until then).
        let bytes = unsafe { &*slab.page(last) };
        assert!(bytes.iter().all(|b| *b == 0 || *b == 0xEE));
        // Reused slots come from the free list, the chunk counts as live.
        let again = slab.allocate();
        assert_eq!(again, last);
        assert_eq!(slab.stats().released, 2);
    }

    #[test]
    fn pages_hold_their_bytes_until_the_last_handle_drops() {
        let pages: Vec<PageRef> = (0..2000u32).map(|i| page(i as u8)).collect();
        let kept: Vec<PageRef> = pages.iter().step_by(3).cloned().collect();
        drop(pages);
        // Freed slots are reused by new pages; kept ones must not be.
        let fresh: Vec<PageRef> = (0..2000u32).map(|_| page(0xAA)).collect();
        for (i, p) in kept.iter().enumerate() {
            assert!(p.iter().all(|b| *b == (i * 3) as u8), "page {i}");
            assert!(fresh.iter().all(|f| !PageRef::ptr_eq(f, p)));
        }
    }

    #[test]
    fn concurrent_clones_and_drops_keep_pages_intact() {
        let shared: Vec<PageRef> = (0..256u32).map(|i| page(i as u8)).collect();
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let shared = &shared;
                s.spawn(move || {
                    for round in 0..200u32 {
                        let fill = t.wrapping_mul(50).wrapping_add(round as u8);
                        let mut mine: Vec<PageRef> = shared.to_vec();
                        mine.extend((0..16).map(|_| page(fill)));
                        for (i, p) in mine.iter().enumerate().take(shared.len()) {
                            assert_eq!(p[123], i as u8);
                        }
                        for p in &mine[shared.len()..] {
                            assert!(p.iter().all(|b| *b == fill));
                        }
                    }
                });
            }
        });
        for (i, p) in shared.iter().enumerate() {
            assert_eq!(count(p), 1, "page {i}: clones from threads all dropped");
            assert!(p.iter().all(|b| *b == i as u8));
        }
    }
}

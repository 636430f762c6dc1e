//! Memory images: the committed contents of a large linear memory kept in a
//! `memfd`, mapped privately into each new instance.
//!
//! Images are used under the userfaultfd tracker for memories of at least
//! [`MIN_IMAGE_PAGES`] (1024) stored pages (with `uffd-auto`, for those
//! above `KEPT_MAX_PAGES` of canisters that write little, see `write_rate`).
//!
//! The lazy trackers pay a signal (and a copy ioctl) for the first touch of
//! every page, because a fresh instance starts with nothing mapped. An
//! image avoids that: it is a memfd holding exactly the pages of one
//! [`PageMap`] version, and arming a memory maps it `MAP_PRIVATE` over the
//! memory's reservation. Then
//!
//! - a read is an ordinary minor fault on the memfd's page cache, resolved
//!   by the kernel (with fault-around), with no signal;
//! - a write is a kernel copy-on-write fault: the page becomes a private
//!   anonymous copy, and the memfd is not changed;
//! - after the message, `PAGEMAP_SCAN` lists the pages that are present and
//!   *not file pages* (nor the zero page): exactly the copies, i.e. the
//!   pages written. No write protection, no userfaultfd registration.
//!
//! A successful message's commit copies its dirty pages into the image (a
//! shared writable view of the memfd), which then holds the new version,
//! ready for the next message; a trap or a query leaves it untouched
//! because their writes were private. Pages grown during the message lie
//! beyond the mapped image, in the reservation's anonymous part: their
//! first access faults (they are inaccessible while tracked), the handler
//! makes them accessible, and written ones are found by the same scan.
//!
//! Images live in a process-wide least-recently-used cache (`version_cache`)
//! of at most 64 images and 6 GiB, looked up by page-map version (two maps
//! of the same version hold the same pages). An image is used by one message
//! at a time; another message that needs the same version meanwhile (a
//! concurrent query) uses the lazy path. A miss builds the image (a copy of
//! every stored page, once), so only memories with at least
//! [`MIN_IMAGE_PAGES`] stored pages get one.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::memory::MemoryView;
use crate::page::PAGE_SIZE;
use crate::paging::PageMap;
use crate::version_cache::{self, Lent, Lineage, Resident, VersionCache};

/// Memories with fewer stored pages are armed lazily (building and keeping
/// an image would cost more than it saves).
pub(crate) const MIN_IMAGE_PAGES: u64 = 1024;
/// Bytes of images kept in the cache (least recently used go first).
const CACHE_BYTES: usize = 6 << 30;
/// Images kept in the cache.
const CACHE_ENTRIES: usize = 64;

/// One image: a memfd and a shared writable view of it.
struct Image {
    fd: OwnedFd,
    /// The shared view (`MAP_SHARED`), `capacity` bytes.
    view: usize,
    capacity: usize,
    /// Bytes of the memfd (its size).
    len: usize,
}

// SAFETY: the view is a mapping owned by the image; access is serialized
// by the cache (an image is lent to one message at a time).
unsafe impl Send for Image {}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer lent to anyone.
        unsafe { libc::munmap(self.view as *mut libc::c_void, self.capacity) };
    }
}

impl Image {
    /// A new image of `len` bytes holding `pages`.
    fn build(pages: &PageMap, len: usize) -> io::Result<Image> {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe { libc::memfd_create(c"cellar-image".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let capacity = 4usize << 30;
        // SAFETY: a shared mapping of our memfd; the reserved size is the
        // largest wasm32 memory, only the file's length is ever touched.
        let view = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                capacity,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                fd.as_raw_fd(),
                0,
            )
        };
        if view == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut image = Image {
            fd,
            view: view as usize,
            capacity,
            len: 0,
        };
        image.resize(len)?;
        pages.for_each(|index, page| {
            let at = index as usize * PAGE_SIZE;
            if at + PAGE_SIZE <= image.len {
                // SAFETY: inside the file's length, in our shared view.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        page.as_ptr(),
                        (image.view + at) as *mut u8,
                        PAGE_SIZE,
                    )
                };
            }
        });
        Ok(image)
    }

    /// Makes the image, which holds `older`, hold `version` instead: writes
    /// the pages that differ (a diff of the two maps, which skips what they
    /// share). The image must already be as long as `version`'s memory.
    fn bring_forward(&self, older: &PageMap, version: &PageMap) {
        for (index, content) in version.diff(older) {
            self.write_page(index, content);
        }
    }

    /// Writes `content` (zeros for `None`) as page `index` of the image;
    /// pages beyond its length are skipped.
    fn write_page(&self, index: u64, content: Option<&crate::paging::PageRef>) {
        let at = index as usize * PAGE_SIZE;
        if at + PAGE_SIZE > self.len {
            return;
        }
        let target = (self.view + at) as *mut u8;
        // SAFETY: inside the file's length, in our shared view, which no one
        // else uses while the image is lent to us.
        unsafe {
            match content {
                Some(page) => std::ptr::copy_nonoverlapping(page.as_ptr(), target, PAGE_SIZE),
                None => std::ptr::write_bytes(target, 0, PAGE_SIZE),
            }
        }
    }

    /// Grows the memfd to at least `len` bytes (new bytes are zero).
    fn resize(&mut self, len: usize) -> io::Result<()> {
        if len <= self.len {
            return Ok(());
        }
        if len > self.capacity {
            return Err(io::Error::other("an image is at most 4 GiB"));
        }
        // SAFETY: ftruncate of our memfd.
        if unsafe { libc::ftruncate(self.fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        self.len = len;
        Ok(())
    }
}

impl Resident for Image {
    fn resident_bytes(&self) -> usize {
        self.len
    }
}

static CACHE: Mutex<VersionCache<Image>> =
    Mutex::new(VersionCache::new(CACHE_ENTRIES, CACHE_BYTES));

/// Takes the image of `version` (of `lineage`) out of the cache, grown to
/// `len` bytes: the cached one, or the lineage's image of another version
/// brought forward by the pages that differ, or a new one. `None` when it
/// is lent to another message right now (the caller arms lazily) or cannot
/// be built.
fn lend(version: &PageMap, lineage: &Lineage, len: usize) -> Option<Image> {
    let cached = match CACHE.lock().ok()?.lend(version, lineage) {
        Lent::Hit(image) => Some(image),
        Lent::Older(mut image, older) => image.resize(len).ok().map(|()| {
            image.bring_forward(&older, version);
            image
        }),
        Lent::Miss => None,
        Lent::Busy => return None,
    };
    let image = match cached {
        Some(mut image) => image.resize(len).map(|()| image),
        None => Image::build(version, len),
    };
    if image.is_err() {
        forget(version);
    }
    image.ok()
}

/// Drops the image of `version` when it rests in the cache (its memory
/// runs in a kept mapping from now on).
pub(crate) fn evict(version: &PageMap) {
    version_cache::evict(&CACHE, version);
}

/// Drops the lent marker of `version`.
fn forget(version: &PageMap) {
    version_cache::forget(&CACHE, version);
}

/// Puts `image`, lent for `lent` and now holding `version`, back into the
/// cache.
fn give_back(lent: &PageMap, version: PageMap, image: Image) {
    version_cache::give_back(&CACHE, lent, version, image);
}

/// A memory armed with a private mapping of an image.
pub(crate) struct ImageMemory {
    base: usize,
    size: Arc<AtomicUsize>,
    /// Bytes made accessible so far (grown pages beyond `mapped`).
    accessible: usize,
    committed: PageMap,
    image: std::cell::Cell<Option<Image>>,
    faults: u64,
    written: std::cell::OnceCell<Vec<usize>>,
}

impl ImageMemory {
    /// Arms `view` with the image of `committed`, when the memory is large
    /// enough to deserve one and the kernel provides it; `Ok(None)`
    /// otherwise (the caller arms it lazily).
    ///
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn arm(
        view: &MemoryView,
        committed: &PageMap,
        lineage: &Lineage,
    ) -> io::Result<Option<Self>> {
        let (base, size) = (view.base(), view.len());
        if committed.len() < MIN_IMAGE_PAGES || size == 0 || !supported() {
            return Ok(None);
        }
        let Some(image) = lend(committed, lineage, size) else {
            return Ok(None);
        };
        view.set_tracked(true);
        // SAFETY: replaces the accessible part of our own reservation with
        // a private mapping of the image.
        let mapped = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
                image.fd.as_raw_fd(),
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            give_back(committed, committed.clone(), image);
            return Err(error);
        }
        Ok(Some(ImageMemory {
            base,
            size: view.size_handle(),
            accessible: size,
            committed: committed.clone(),
            image: std::cell::Cell::new(Some(image)),
            faults: 0,
            written: std::cell::OnceCell::new(),
        }))
    }

    /// Whether `address` lies in pages grown during the message and not
    /// accessible yet.
    pub(crate) fn covers_grown(&self, address: usize) -> bool {
        address >= self.base + self.accessible
            && address < self.base + self.size.load(Ordering::Acquire)
    }

    /// Makes the grown pages accessible (anonymous, zero). Async-signal-safe.
    pub(crate) fn open_growth(&mut self) -> bool {
        let size = self.size.load(Ordering::Acquire);
        self.faults += 1;
        // SAFETY: the range lies in the memory's reservation, below its
        // accessible size.
        let rc = unsafe {
            libc::mprotect(
                (self.base + self.accessible) as *mut libc::c_void,
                size - self.accessible,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return false;
        }
        self.accessible = size;
        true
    }

    /// Pages written during the message, scanned once.
    fn written(&self) -> &[usize] {
        self.written.get_or_init(|| {
            crate::uffd::scan_copied(self.base, self.accessible).unwrap_or_else(|e| {
                // Losing writes would corrupt the canister's state.
                panic!("PAGEMAP_SCAN of an armed memory failed: {e}")
            })
        })
    }

    /// The committed map with this message's written pages applied, and the
    /// number of pages whose contents changed. The image is brought to the
    /// new version (only changed pages are written into it).
    ///
    /// # Safety
    /// The store must be alive and no wasm may run.
    pub(crate) unsafe fn commit(&self) -> (PageMap, u64) {
        let mut image = self.image.take();
        if let Some(held) = &mut image
            && held.resize(self.size.load(Ordering::Acquire)).is_err()
        {
            forget(&self.committed);
            image = None;
        }
        let base = self.base;
        // The image is resized to the memory; this memory holds it alone.
        let write_into_image = |page: u64, content: Option<&crate::paging::PageRef>| {
            if let Some(image) = &image {
                image.write_page(page, content);
            }
        };
        // SAFETY: written pages are mapped and readable (listed in
        // ascending order by the scan), in this memory, not the page slab.
        let (next, changed) = unsafe {
            self.committed.with_written(
                self.written(),
                |page| (base + page * PAGE_SIZE) as *const crate::page::Page,
                write_into_image,
            )
        };
        if let Some(image) = image {
            give_back(&self.committed, next.clone(), image);
        }
        (next, changed)
    }

    /// Faults handled (only growth; page faults are the kernel's).
    pub(crate) fn faults(&self) -> u64 {
        self.faults
    }

    /// Pages written by the message (scans the memory on first use).
    pub(crate) fn dirty_pages(&self) -> usize {
        self.written().len()
    }
}

impl Drop for ImageMemory {
    fn drop(&mut self) {
        // Not committed (a trap, a query, a rejected message): the image
        // still holds the committed version.
        if let Some(image) = self.image.take() {
            give_back(&self.committed, self.committed.clone(), image);
        }
    }
}

static DISABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns memory images off (or back on) for this process (see
/// `tracker::set_memory_images`, which also frees the kept memories).
pub(crate) fn set_enabled(enabled: bool) {
    DISABLED.store(!enabled, Ordering::Relaxed);
}

/// Frees every cached image not lent right now.
pub(crate) fn clear() {
    let resting = CACHE
        .lock()
        .map(|mut c| c.drain_resting())
        .unwrap_or_default();
    drop(resting);
}

/// Whether images are enabled and work here: a private mapping of a
/// memfd, one page read and one written, and `PAGEMAP_SCAN` finding
/// exactly the written one.
fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    !DISABLED.load(Ordering::Relaxed) && *SUPPORTED.get_or_init(|| probe().is_ok())
}

fn probe() -> io::Result<()> {
    let pages = PageMap::default().with_updates((0..4u64).map(|i| {
        (
            i,
            Some(crate::paging::PageRef::new(&[i as u8 + 1; PAGE_SIZE])),
        )
    }));
    let image = Image::build(&pages, 4 * PAGE_SIZE)?;
    // SAFETY: a fresh private mapping of the probe image.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            8 * PAGE_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            image.fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = base as usize;
    // SAFETY: inside the mapping (pages 0..4 are in the file).
    let (read, _) = unsafe {
        let read = std::ptr::read_volatile((base + PAGE_SIZE) as *const u8);
        std::ptr::write_volatile((base + 2 * PAGE_SIZE + 5) as *mut u8, 9);
        (read, ())
    };
    let written = crate::uffd::scan_copied(base, 4 * PAGE_SIZE);
    // SAFETY: our own mapping.
    unsafe { libc::munmap(base as *mut libc::c_void, 8 * PAGE_SIZE) };
    let written = written?;
    // The image itself is unchanged by the private write.
    // SAFETY: the shared view covers the file.
    let shared = unsafe { std::ptr::read_volatile((image.view + 2 * PAGE_SIZE + 5) as *const u8) };
    if read != 2 || written != [2] || shared != 3 {
        return Err(io::Error::other(format!(
            "memory images unsupported: read {read}, written {written:?}, image {shared}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{HostMemoryCreator, with_memory_plan};
    use crate::tracker::{self, ArmGuard, Armed};
    use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

    fn page_of(byte: u8) -> Option<crate::paging::PageRef> {
        Some(crate::paging::PageRef::new(&[byte; PAGE_SIZE]))
    }

    /// A host memory of `pages` pages, filled with garbage as if
    /// instantiation had written it.
    fn memory(pages: usize) -> (Box<dyn LinearMemory>, MemoryView) {
        let size = pages * PAGE_SIZE;
        let (memory, views) = with_memory_plan(vec![size], || {
            HostMemoryCreator
                .new_memory(MemoryType::new(0, None), 0, None, None, 0)
                .unwrap()
        });
        let view = views.into_iter().next().unwrap();
        // SAFETY: the memory is accessible up to its size.
        unsafe { std::ptr::write_bytes(view.base() as *mut u8, 0xEE, size) };
        (memory, view)
    }

    fn read(view: &MemoryView, page: usize) -> u8 {
        // SAFETY: inside the memory; faults are resolved while armed.
        unsafe { std::ptr::read_volatile((view.base() + page * PAGE_SIZE + 7) as *const u8) }
    }

    fn write(view: &MemoryView, page: usize, value: u8) {
        // SAFETY: as above.
        unsafe { std::ptr::write_volatile((view.base() + page * PAGE_SIZE + 7) as *mut u8, value) }
    }

    /// A lineage of this module's tests (each test its own: they share the
    /// process-wide cache).
    fn lineage(test: usize) -> Lineage {
        Lineage {
            canister: cellar_types::Principal::canister(u64::MAX - 1),
            memory: test,
        }
    }

    /// Arms a fresh memory of `pages` pages with `committed`.
    fn arm(pages: usize, committed: &PageMap) -> (Box<dyn LinearMemory>, MemoryView, ImageMemory) {
        let (linear, view) = memory(pages);
        // SAFETY: no wasm runs; the memory is alive.
        let armed = unsafe { ImageMemory::arm(&view, committed, &lineage(1)) }
            .unwrap()
            .expect("an image for a large memory");
        (linear, view, armed)
    }

    #[test]
    fn images_track_writes_commit_reuse_and_roll_back() {
        if let Err(e) = probe() {
            eprintln!("skipping: {e}");
            return;
        }
        tracker::install_handler();
        let pages = 4096usize;
        // Distinct contents per test run, so that no other test's image
        // of an equal-looking map is involved (versions are identities).
        let committed = PageMap::default()
            .with_updates((0..2048u64).map(|i| (i, page_of((i % 200) as u8 + 1))));

        // Message 1: reads, writes (a stored page, a zero page, a page
        // written back to zeros), growth; then commit.
        let (mut linear, view, armed) = arm(pages, &committed);
        let mut armed = [Armed::Image(armed)];
        {
            let _guard = ArmGuard::new(&mut armed);
            assert_eq!(read(&view, 5), 6);
            assert_eq!(read(&view, 3000), 0);
            write(&view, 10, 0xAB);
            write(&view, 3001, 0xCD);
            // SAFETY: inside the memory.
            unsafe {
                std::ptr::write_bytes((view.base() + 20 * PAGE_SIZE) as *mut u8, 0, PAGE_SIZE)
            };
            linear.grow_to((pages + 16) * PAGE_SIZE).unwrap();
            assert_eq!(read(&view, pages + 3), 0);
            write(&view, pages + 4, 0x22);
        }
        let Armed::Image(memory) = &armed[0] else {
            unreachable!()
        };
        assert_eq!(memory.written(), &[10, 20, 3001, pages + 4]);
        // SAFETY: the guard is gone, the memory alive.
        let (next, _) = unsafe { armed[0].commit() };
        let mut ten = [11u8; PAGE_SIZE];
        ten[7] = 0xAB;
        let mut zero_page_written = [0u8; PAGE_SIZE];
        zero_page_written[7] = 0xCD;
        let mut grown = [0u8; PAGE_SIZE];
        grown[7] = 0x22;
        let expected = committed.with_updates([
            (10, Some(crate::paging::PageRef::new(&ten))),
            (20, None),
            (3001, Some(crate::paging::PageRef::new(&zero_page_written))),
            (pages as u64 + 4, Some(crate::paging::PageRef::new(&grown))),
        ]);
        assert_eq!(next, expected);
        drop(armed);
        drop(linear);

        // Message 2 on the new version: the image was brought up to date.
        let (linear, view, armed) = arm(pages + 16, &next);
        let mut armed = [Armed::Image(armed)];
        {
            let _guard = ArmGuard::new(&mut armed);
            assert_eq!(read(&view, 10), 0xAB);
            assert_eq!(read(&view, 20), 0);
            assert_eq!(read(&view, 3001), 0xCD);
            assert_eq!(read(&view, pages + 4), 0x22);
            assert_eq!(read(&view, 11), 12);
            // A write that is then discarded (a trap: no commit).
            write(&view, 11, 0x77);
        }
        drop(armed);
        drop(linear);

        // Message 3 sees the committed contents, not the discarded write.
        let (linear, view, armed) = arm(pages + 16, &next);
        let mut armed = [Armed::Image(armed)];
        {
            let _guard = ArmGuard::new(&mut armed);
            assert_eq!(read(&view, 11), 12);
            assert_eq!(read(&view, 10), 0xAB);
        }
        let Armed::Image(memory) = &armed[0] else {
            unreachable!()
        };
        assert_eq!(memory.dirty_pages(), 0);
        drop(armed);
        drop(linear);
    }

    #[test]
    fn small_memories_get_no_image() {
        let (_linear, view) = memory(64);
        let committed = PageMap::default().with_updates([(1, page_of(1))]);
        // SAFETY: no wasm runs; the memory is alive.
        assert!(
            unsafe { ImageMemory::arm(&view, &committed, &lineage(2)) }
                .unwrap()
                .is_none()
        );
    }
}

//! Lazy mapping and dirty-page tracking with userfaultfd (Linux 6.7+).
//!
//! This is the `userfaultfd` tracker. The default where the kernel has
//! userfaultfd, `uffd-auto`, uses it (with memory images, `image`) for
//! memories above `KEPT_MAX_PAGES` of canisters that write little, and for
//! a canister's first message; a kept memory (`mapped`) is registered with
//! the same userfaultfd, and a message that finds its kept memory lent
//! arms a fresh one here.
//!
//! While a message runs, each of its memories is registered with one
//! process-wide userfaultfd (in SIGBUS mode, with asynchronous write
//! protection) in two modes at once:
//!
//! - **missing**: a page that is not mapped yet raises SIGBUS on the
//!   faulting thread (`UFFD_FEATURE_SIGBUS`, no handler thread). The SIGBUS
//!   handler maps it with its committed contents (`UFFDIO_COPY`) or the zero
//!   page (`UFFDIO_ZEROPAGE`), plus a read-ahead window of following pages
//!   that grows while faults are sequential (prefetching);
//! - **write-protect, asynchronous** (`UFFD_FEATURE_WP_ASYNC`): pages loaded
//!   for a read are installed write-protected; the kernel itself resolves
//!   the first write to one (no signal) and remembers that it was written.
//!
//! After the message, the `PAGEMAP_SCAN` ioctl on `/proc/self/pagemap` lists
//! the pages that are present, written and not the shared zero page: the
//! message's delta, found at a cost proportional to the page tables it
//! populated, not to the heap. A write fault on an unmapped page installs
//! that page writable at once (it counts as written), so a plain write costs
//! one signal, a write after a read costs a kernel-only fault.
//!
//! Pages grown during the message stay inaccessible (the view is tracked);
//! the first access to them raises SIGSEGV, which the process-wide SIGSEGV
//! handler passes here to register the grown range. Host-side accesses
//! (argument lowering, result lifting) fault and are handled like wasm ones.
//! Both handlers are `tracker`'s: it passes each fault to the armed memory
//! it falls in ([`UffdMemory::fault_at`], [`UffdMemory::register_growth`]).
//!
//! Registrations end when the memory is unmapped (the store is dropped
//! right after the message): unregistering or closing the userfaultfd first
//! would make the kernel walk every populated page table to clear the
//! write protection, which costs as much as the scan itself.

use std::cell::OnceCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::memory::MemoryView;
use crate::page::PAGE_SIZE;
use crate::paging::PageMap;

// ---- Kernel interface -------------------------------------------------
// The libc crate lacks most of these; they are spelled out from the
// kernel's uapi headers (Linux 6.18).

/// `UFFD_API` (include/uapi/linux/userfaultfd.h).
const UFFD_API: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY` (include/uapi/linux/userfaultfd.h): only user-mode
/// faults are handled, which unprivileged processes may ask for even when
/// `vm.unprivileged_userfaultfd` is 0.
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
/// `UFFD_FEATURE_SIGBUS` (1<<7): missing faults raise SIGBUS instead of
/// waiting for a handler thread.
const UFFD_FEATURE_SIGBUS: u64 = 1 << 7;
/// `UFFD_FEATURE_WP_UNPOPULATED` (1<<13): write protection also covers
/// pages that were never populated.
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
/// `UFFD_FEATURE_WP_ASYNC` (1<<15): the kernel resolves write-protect
/// faults itself and clears the protection (tracked by `PAGEMAP_SCAN`).
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const FEATURES: u64 = UFFD_FEATURE_SIGBUS | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_ASYNC;

/// `UFFDIO_REGISTER_MODE_MISSING` and `UFFDIO_REGISTER_MODE_WP`.
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// `UFFDIO_COPY_MODE_WP`: the copied pages are installed write-protected.
const UFFDIO_COPY_MODE_WP: u64 = 1 << 1;

/// The ioctl type of userfaultfd (`UFFDIO`) and the command numbers
/// (`_UFFDIO_REGISTER` 0x00, `_UFFDIO_COPY` 0x03, `_UFFDIO_ZEROPAGE` 0x04,
/// `_UFFDIO_API` 0x3F).
const UFFDIO: u32 = 0xAA;
const NR_REGISTER: u32 = 0x00;
const NR_COPY: u32 = 0x03;
const NR_ZEROPAGE: u32 = 0x04;
const NR_WRITEPROTECT: u32 = 0x06;
const NR_API: u32 = 0x3F;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Default)]
struct UffdioRange {
    start: u64,
    len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

/// `struct uffdio_copy`; `copy` is written by the kernel (bytes copied, or
/// a negative errno).
#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

/// `struct uffdio_zeropage`; `zeropage` as `copy` above.
#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// `struct uffdio_writeprotect`.
#[repr(C)]
#[derive(Default)]
struct UffdioWriteprotect {
    range: UffdioRange,
    mode: u64,
}

/// `UFFDIO_WRITEPROTECT_MODE_WP`: protect (else unprotect) the range.
const UFFDIO_WRITEPROTECT_MODE_WP: u64 = 1 << 0;

/// `UFFDIO_API = _IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)`.
const UFFDIO_API: libc::Ioctl = libc::_IOWR::<UffdioApi>(UFFDIO, NR_API);
/// `UFFDIO_REGISTER = _IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)`.
const UFFDIO_REGISTER: libc::Ioctl = libc::_IOWR::<UffdioRegister>(UFFDIO, NR_REGISTER);
/// `UFFDIO_COPY = _IOWR(UFFDIO, _UFFDIO_COPY, struct uffdio_copy)`.
const UFFDIO_COPY: libc::Ioctl = libc::_IOWR::<UffdioCopy>(UFFDIO, NR_COPY);
/// `UFFDIO_ZEROPAGE = _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, struct uffdio_zeropage)`.
const UFFDIO_ZEROPAGE: libc::Ioctl = libc::_IOWR::<UffdioZeropage>(UFFDIO, NR_ZEROPAGE);
/// `UFFDIO_WRITEPROTECT = _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)`.
const UFFDIO_WRITEPROTECT: libc::Ioctl = libc::_IOWR::<UffdioWriteprotect>(UFFDIO, NR_WRITEPROTECT);

/// `PAGE_IS_WRITTEN`, `PAGE_IS_PRESENT`, `PAGE_IS_SWAPPED`,
/// `PAGE_IS_PFNZERO` (include/uapi/linux/fs.h).
const PAGE_IS_WRITTEN: u64 = 1 << 1;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;
const PAGE_IS_PFNZERO: u64 = 1 << 5;

/// `struct page_region` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// `struct pm_scan_arg` (include/uapi/linux/fs.h).
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `PM_SCAN_WP_MATCHING` and `PM_SCAN_CHECK_WPASYNC` (include/uapi/linux/fs.h):
/// write-protect the pages found (atomically with finding them), and only in
/// ranges registered for asynchronous write protection.
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;

/// `PAGEMAP_SCAN = _IOWR('f', 16, struct pm_scan_arg)` (include/uapi/linux/fs.h).
const PAGEMAP_SCAN: libc::Ioctl = libc::_IOWR::<PmScanArg>(b'f' as u32, 16);

// ---- Tuning -----------------------------------------------------------

/// Pages loaded by a fault that does not continue the previous one.
const INITIAL_WINDOW: usize = 1;
/// Largest read-ahead window; sequential faults double the window up to it.
const MAX_WINDOW: usize = 32;
/// Regions returned by one `PAGEMAP_SCAN` call.
const SCAN_BATCH: usize = 512;

/// A page of zeros to copy from (`UFFDIO_COPY` wants a page-aligned source).
#[repr(C, align(4096))]
struct ZeroPage([u8; PAGE_SIZE]);
static ZERO_PAGE: ZeroPage = ZeroPage([0; PAGE_SIZE]);

// ---- Process-wide state -----------------------------------------------

/// The userfaultfd every memory registers with and the pagemap file.
struct Kernel {
    uffd: OwnedFd,
    pagemap: OwnedFd,
}

static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();

fn kernel() -> Result<&'static Kernel, String> {
    KERNEL.get_or_init(probe).as_ref().map_err(Clone::clone)
}

/// Whether this kernel and build can track memory with userfaultfd.
///
/// Probed once per process: userfaultfd with SIGBUS and asynchronous
/// write protection, registration in missing + write-protect mode, copy and
/// zero-page ioctls, and `PAGEMAP_SCAN` telling written pages from loaded
/// and zero ones on a scratch mapping.
pub(crate) fn check_supported() -> Result<(), String> {
    kernel().map(|_| ())
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `ioctl(fd, request, arg)`, retried on EINTR.
///
/// # Safety
/// `arg` must be the structure `request` expects.
unsafe fn ioctl<T>(fd: RawFd, request: libc::Ioctl, arg: &mut T) -> io::Result<()> {
    loop {
        // SAFETY: per the contract, `arg` is what the kernel expects.
        if unsafe { libc::ioctl(fd, request, arg as *mut T) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn open_userfaultfd(flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: the userfaultfd syscall takes flags and returns a new fd.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn new_userfaultfd() -> Result<OwnedFd, String> {
    let base = libc::O_CLOEXEC | libc::O_NONBLOCK;
    open_userfaultfd(base | UFFD_USER_MODE_ONLY)
        .or_else(|e| {
            // Kernels before 5.11 do not know the flag.
            if e.raw_os_error() == Some(libc::EINVAL) {
                open_userfaultfd(base)
            } else {
                Err(e)
            }
        })
        .map_err(|e| {
            let sysctl = std::fs::read_to_string("/proc/sys/vm/unprivileged_userfaultfd")
                .map(|s| format!(" (vm.unprivileged_userfaultfd = {})", s.trim()))
                .unwrap_or_default();
            format!("userfaultfd is not available: {e}{sysctl}")
        })
}

fn probe() -> Result<Kernel, String> {
    // Ask which features the kernel has (UFFDIO_API works once per fd).
    let query = new_userfaultfd()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        ..Default::default()
    };
    // SAFETY: UFFDIO_API takes a struct uffdio_api.
    unsafe { ioctl(query.as_raw_fd(), UFFDIO_API, &mut api) }
        .map_err(|e| format!("userfaultfd API handshake failed: {e}"))?;
    drop(query);
    let missing = FEATURES & !api.features;
    if missing != 0 {
        let names: Vec<&str> = [
            (UFFD_FEATURE_SIGBUS, "SIGBUS"),
            (UFFD_FEATURE_WP_UNPOPULATED, "WP_UNPOPULATED"),
            (UFFD_FEATURE_WP_ASYNC, "WP_ASYNC"),
        ]
        .iter()
        .filter(|(bit, _)| missing & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        return Err(format!(
            "the kernel's userfaultfd lacks {} (Linux 6.7+ needed)",
            names.join(", ")
        ));
    }
    let uffd = new_userfaultfd()?;
    let mut api = UffdioApi {
        api: UFFD_API,
        features: FEATURES,
        ioctls: 0,
    };
    // SAFETY: as above.
    unsafe { ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut api) }
        .map_err(|e| format!("cannot enable userfaultfd features: {e}"))?;
    let pagemap = std::fs::File::open("/proc/self/pagemap")
        .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
    let kernel = Kernel {
        uffd,
        pagemap: pagemap.into(),
    };
    self_test(&kernel)?;
    Ok(kernel)
}

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    base: usize,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh private anonymous mapping.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base: base as usize,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

/// Checks, on a scratch mapping and without signals, that the kernel
/// behaves as this tracker relies on: a page copied write-protected and
/// then written, and a page copied writable, are found; a zero page and an
/// untouched page are not.
fn self_test(kernel: &Kernel) -> Result<(), String> {
    let fail = |what: &str, e: io::Error| format!("userfaultfd self-test: {what}: {e}");
    let mapping = Mapping::new(4 * PAGE_SIZE).map_err(|e| fail("mmap", e))?;
    let ioctls = register(kernel, mapping.base, mapping.len).map_err(|e| fail("register", e))?;
    let needed = (1 << NR_COPY) | (1 << NR_ZEROPAGE);
    if ioctls & needed != needed {
        return Err(format!(
            "userfaultfd registration offers no copy/zero-page ioctls (0x{ioctls:x})"
        ));
    }
    let page = |i: usize| mapping.base + i * PAGE_SIZE;
    let source = ZERO_PAGE.0.as_ptr() as usize;
    copy(kernel, page(0), source, 1, true).map_err(|e| fail("copy", e))?;
    zero(kernel, page(1), 1).map_err(|e| fail("zero page", e))?;
    copy(kernel, page(2), source, 1, false).map_err(|e| fail("copy", e))?;
    // SAFETY: pages 0 and 1 are mapped: a write resolved by the kernel
    // (write-protect async) and a read of the zero page.
    unsafe {
        std::ptr::write_volatile(page(0) as *mut u8, 1);
        std::ptr::read_volatile(page(1) as *const u8);
    }
    let written = scan_written(kernel, mapping.base, mapping.len).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOTTY) || e.raw_os_error() == Some(libc::EINVAL) {
            format!("the kernel has no PAGEMAP_SCAN ioctl (Linux 6.7+ needed): {e}")
        } else {
            fail("PAGEMAP_SCAN", e)
        }
    })?;
    if written != [0, 2] {
        return Err(format!(
            "userfaultfd self-test: PAGEMAP_SCAN found pages {written:?} written, expected [0, 2]"
        ));
    }
    Ok(())
}

/// Registers `[start, start + len)` in missing and write-protect mode;
/// returns the ioctls the range supports.
fn register(kernel: &Kernel, start: usize, len: usize) -> io::Result<u64> {
    let mut arg = UffdioRegister {
        range: UffdioRange {
            start: start as u64,
            len: len as u64,
        },
        mode: UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a struct uffdio_register.
    unsafe { ioctl(kernel.uffd.as_raw_fd(), UFFDIO_REGISTER, &mut arg) }?;
    Ok(arg.ioctls)
}

/// Result of filling pages: how many were installed from the first one on.
/// `Err` only when not even the first could be, for a reason other than
/// being mapped already.
fn filled(result: io::Result<()>, done: i64, pages: usize) -> io::Result<usize> {
    match result {
        Ok(()) => Ok(pages),
        Err(_) if done > 0 => Ok(done as usize / PAGE_SIZE),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) || done == -(libc::EEXIST as i64) => Ok(0),
        Err(e) => Err(e),
    }
}

/// Copies `pages` pages from `src` to `dst` (both page aligned), stopping
/// at the first page that is mapped already. Async-signal-safe.
fn copy(kernel: &Kernel, dst: usize, src: usize, pages: usize, protect: bool) -> io::Result<usize> {
    let mut arg = UffdioCopy {
        dst: dst as u64,
        src: src as u64,
        len: (pages * PAGE_SIZE) as u64,
        mode: if protect { UFFDIO_COPY_MODE_WP } else { 0 },
        copy: 0,
    };
    // SAFETY: UFFDIO_COPY takes a struct uffdio_copy; the source is
    // readable memory of that length.
    let result = unsafe { ioctl(kernel.uffd.as_raw_fd(), UFFDIO_COPY, &mut arg) };
    filled(result, arg.copy, pages)
}

/// Maps the zero page at `pages` pages from `dst`, stopping at the first
/// page that is mapped already. Async-signal-safe.
fn zero(kernel: &Kernel, dst: usize, pages: usize) -> io::Result<usize> {
    let mut arg = UffdioZeropage {
        range: UffdioRange {
            start: dst as u64,
            len: (pages * PAGE_SIZE) as u64,
        },
        mode: 0,
        zeropage: 0,
    };
    // SAFETY: UFFDIO_ZEROPAGE takes a struct uffdio_zeropage.
    let result = unsafe { ioctl(kernel.uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut arg) };
    filled(result, arg.zeropage, pages)
}

/// Indices (from `start`) of the pages in `[start, start + len)` that were
/// written since they were mapped: present (or swapped out), not write
/// protected, not the shared zero page. Never-populated pages count as
/// "written" for the kernel (nothing protects them), hence the presence
/// condition.
fn scan_written(kernel: &Kernel, start: usize, len: usize) -> io::Result<Vec<usize>> {
    scan(
        kernel,
        start,
        len,
        PAGE_IS_PFNZERO,
        PAGE_IS_WRITTEN | PAGE_IS_PFNZERO,
        0,
    )
}

/// Like [`scan_written`], and write-protects the pages found in the same
/// walk (the range must be registered for write protection): the next
/// write to them is recorded again.
fn scan_written_and_protect(kernel: &Kernel, start: usize, len: usize) -> io::Result<Vec<usize>> {
    scan(
        kernel,
        start,
        len,
        PAGE_IS_PFNZERO,
        PAGE_IS_WRITTEN | PAGE_IS_PFNZERO,
        PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
    )
}

/// Pages of `[start, start + len)` present and not the zero page (written
/// or loaded): in a never-registered mapping, the pages written since it
/// was created.
pub(crate) fn scan_present(start: usize, len: usize) -> io::Result<Vec<usize>> {
    let kernel = kernel().map_err(io::Error::other)?;
    scan_written(kernel, start, len)
}

/// Write-protects `pages` (indices from `start`, ascending) of a range
/// registered for write protection: one ioctl per run of adjacent pages.
pub(crate) fn write_protect(start: usize, pages: &[usize]) -> io::Result<()> {
    let kernel = kernel().map_err(io::Error::other)?;
    let mut i = 0;
    while i < pages.len() {
        let mut j = i + 1;
        while j < pages.len() && pages[j] == pages[j - 1] + 1 {
            j += 1;
        }
        let mut arg = UffdioWriteprotect {
            range: UffdioRange {
                start: (start + pages[i] * PAGE_SIZE) as u64,
                len: ((j - i) * PAGE_SIZE) as u64,
            },
            mode: UFFDIO_WRITEPROTECT_MODE_WP,
        };
        // SAFETY: UFFDIO_WRITEPROTECT takes a struct uffdio_writeprotect.
        unsafe { ioctl(kernel.uffd.as_raw_fd(), UFFDIO_WRITEPROTECT, &mut arg) }?;
        i = j;
    }
    Ok(())
}

/// Write-protects every written page of `[start, start + len)` (one
/// `PAGEMAP_SCAN` walk); returns how many there were.
pub(crate) fn protect_written(start: usize, len: usize) -> io::Result<usize> {
    let kernel = kernel().map_err(io::Error::other)?;
    scan_written_and_protect(kernel, start, len).map(|pages| pages.len())
}

/// `PAGE_IS_FILE` (include/uapi/linux/fs.h): the page belongs to a file.
const PAGE_IS_FILE: u64 = 1 << 2;

/// Indices (from `start`) of the pages in `[start, start + len)` that are
/// private anonymous copies: present, not from a file, not the zero page.
/// In a private mapping of a file these are exactly the pages written
/// since it was mapped (copy on write), with no write protection at all.
pub(crate) fn scan_copied(start: usize, len: usize) -> io::Result<Vec<usize>> {
    let kernel = kernel().map_err(io::Error::other)?;
    scan(
        kernel,
        start,
        len,
        PAGE_IS_FILE | PAGE_IS_PFNZERO,
        PAGE_IS_FILE | PAGE_IS_PFNZERO,
        0,
    )
}

/// `PAGEMAP_SCAN` of `[start, start + len)` for present (or swapped)
/// pages whose categories under `mask` equal `!inverted` (see the kernel's
/// documentation of `category_inverted`/`category_mask`), with the scan's
/// `flags`.
fn scan(
    kernel: &Kernel,
    start: usize,
    len: usize,
    inverted: u64,
    mask: u64,
    flags: u64,
) -> io::Result<Vec<usize>> {
    let mut pages = Vec::new();
    if len == 0 {
        return Ok(pages);
    }
    let end = (start + len) as u64;
    let mut regions = vec![PageRegion::default(); SCAN_BATCH];
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        flags,
        start: start as u64,
        end,
        vec: regions.as_mut_ptr() as u64,
        vec_len: SCAN_BATCH as u64,
        category_inverted: inverted,
        category_mask: mask,
        category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
        ..Default::default()
    };
    loop {
        let count = loop {
            // SAFETY: PAGEMAP_SCAN takes a struct pm_scan_arg whose `vec`
            // points to `vec_len` writable page_region structs.
            let rc = unsafe { libc::ioctl(kernel.pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
            if rc >= 0 {
                break rc as usize;
            }
            if errno() != libc::EINTR {
                return Err(io::Error::last_os_error());
            }
        };
        for region in &regions[..count] {
            let first = (region.start as usize - start) / PAGE_SIZE;
            let last = (region.end as usize - start) / PAGE_SIZE;
            pages.extend(first..last);
        }
        // The walk stops early only when the batch is full.
        if arg.walk_end >= end || arg.walk_end <= arg.start {
            return Ok(pages);
        }
        arg.start = arg.walk_end;
    }
}

// ---- Armed memories ---------------------------------------------------

/// Page-aligned staging for committed pages (`UFFDIO_COPY` requires a
/// page-aligned source; slab pages are aligned too, but windows of
/// consecutive pages are copied in one call).
struct Scratch(NonNull<u8>);

impl Scratch {
    const LAYOUT: std::alloc::Layout =
        match std::alloc::Layout::from_size_align(MAX_WINDOW * PAGE_SIZE, PAGE_SIZE) {
            Ok(layout) => layout,
            Err(_) => panic!("bad scratch layout"),
        };

    fn new() -> Scratch {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(Self::LAYOUT) };
        Scratch(NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(Self::LAYOUT)))
    }

    fn page(&self, i: usize) -> *mut u8 {
        debug_assert!(i < MAX_WINDOW);
        // SAFETY: within the allocation.
        unsafe { self.0.as_ptr().add(i * PAGE_SIZE) }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.0.as_ptr(), Self::LAYOUT) };
    }
}

/// A memory armed with userfaultfd.
pub(crate) struct UffdMemory {
    kernel: &'static Kernel,
    base: usize,
    size: Arc<AtomicUsize>,
    /// Bytes from `base` registered with the userfaultfd.
    registered: usize,
    committed: PageMap,
    scratch: Scratch,
    /// The page after the last one a fault loaded, and the window it used:
    /// a fault there continues a sequential scan and doubles the window.
    next_page: usize,
    window: usize,
    faults: u64,
    written: OnceCell<Vec<usize>>,
    /// Whether the scan for written pages also write-protects them (a
    /// kept mapping, see `mapped`).
    protect_on_scan: bool,
}

impl UffdMemory {
    /// Arms `view` with `committed` as its contents: the accessible range
    /// loses its pages (whatever instantiation wrote there) and is
    /// registered, to be loaded on demand.
    ///
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn arm(view: &MemoryView, committed: PageMap) -> io::Result<Self> {
        let kernel = kernel().map_err(io::Error::other)?;
        view.set_tracked(true);
        let (base, size) = (view.base(), view.len());
        if size > 0 {
            // SAFETY: our own anonymous mapping; dropping its pages makes
            // them missing again (before registration, so no markers).
            if unsafe { libc::madvise(base as *mut libc::c_void, size, libc::MADV_DONTNEED) } != 0 {
                return Err(io::Error::last_os_error());
            }
            register(kernel, base, size)?;
        }
        Ok(UffdMemory {
            kernel,
            base,
            size: view.size_handle(),
            registered: size,
            committed,
            scratch: Scratch::new(),
            next_page: usize::MAX,
            window: INITIAL_WINDOW,
            faults: 0,
            written: OnceCell::new(),
            protect_on_scan: false,
        })
    }

    /// Arms a kept memory whose first `registered` bytes are registered
    /// already and hold `committed` (populated or missing pages alike):
    /// nothing is dropped or registered. `protect` makes the scan for
    /// written pages write-protect them too.
    pub(crate) fn adopt(
        kept: &crate::memory::KeptMemory,
        registered: usize,
        committed: PageMap,
        protect: bool,
    ) -> io::Result<Self> {
        let kernel = kernel().map_err(io::Error::other)?;
        kept.tracked.store(true, Ordering::Release);
        Ok(UffdMemory {
            kernel,
            base: kept.reservation.base(),
            size: kept.size.clone(),
            registered,
            committed,
            scratch: Scratch::new(),
            next_page: usize::MAX,
            window: INITIAL_WINDOW,
            faults: 0,
            written: OnceCell::new(),
            protect_on_scan: protect,
        })
    }

    /// Address of the first byte.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// Loads every committed page (write-protected), so that no access in
    /// a later message faults on a missing page: one copy of every stored
    /// page, in runs of up to the read-ahead window.
    pub(crate) fn populate(&self) {
        let limit = self.registered / PAGE_SIZE;
        let mut run: Option<(usize, usize)> = None;
        let flush = |from: usize, to: usize| {
            // Pages already mapped are skipped by `fill`; a failure leaves
            // the rest to be loaded on first touch.
            let _ = self.fill(from, to, true);
        };
        self.committed.for_each(|index, _| {
            let index = index as usize;
            if index >= limit {
                return;
            }
            run = match run {
                Some((from, to)) if to == index && to - from < MAX_WINDOW => Some((from, to + 1)),
                Some((from, to)) => {
                    flush(from, to);
                    Some((index, index + 1))
                }
                None => Some((index, index + 1)),
            };
        });
        if let Some((from, to)) = run {
            flush(from, to);
        }
    }

    /// Bytes registered (accessible) from the base.
    pub(crate) fn registered(&self) -> usize {
        self.registered
    }

    /// Makes the scan for written pages write-protect them (or not).
    pub(crate) fn set_protect_on_scan(&mut self, protect: bool) {
        self.protect_on_scan = protect;
    }

    /// Forgets the pages scanned so far (after they were restored and
    /// protected again), so the next question scans afresh.
    pub(crate) fn forget_written(&mut self) {
        self.written = OnceCell::new();
        self.next_page = usize::MAX;
    }

    /// The committed contents the memory was armed with.
    pub(crate) fn committed(&self) -> &PageMap {
        &self.committed
    }

    /// Pages written so far (scanned once, see [`UffdMemory::dirty_pages`]).
    pub(crate) fn written_pages(&self) -> &[usize] {
        self.written()
    }

    /// Whether `address` lies in pages grown during the message and not
    /// registered yet (they are inaccessible, so they fault with SIGSEGV).
    pub(crate) fn covers_unregistered(&self, address: usize) -> bool {
        address >= self.base + self.registered
            && address < self.base + self.size.load(Ordering::Acquire)
    }

    /// Makes the grown pages accessible and registers them; the access is
    /// retried and faults again as a missing page. Async-signal-safe.
    pub(crate) fn register_growth(&mut self) -> bool {
        let size = self.size.load(Ordering::Acquire);
        let (start, len) = (self.base + self.registered, size - self.registered);
        self.faults += 1;
        // SAFETY: the range lies in the memory's reservation, below its
        // accessible size, and was never accessible before.
        let rc = unsafe {
            libc::mprotect(
                start as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 || register(self.kernel, start, len).is_err() {
            return false;
        }
        self.registered = size;
        true
    }

    /// Whether `address` lies in the registered part of the memory, where
    /// a missing page raises SIGBUS.
    pub(crate) fn covers_registered(&self, address: usize) -> bool {
        address >= self.base && address < self.base + self.registered
    }

    /// Resolves a missing-page fault at `address`, which the memory
    /// [covers](UffdMemory::covers_registered). Async-signal-safe.
    pub(crate) fn fault_at(&mut self, address: usize, write: bool) -> bool {
        self.fault((address - self.base) / PAGE_SIZE, write)
    }

    /// Resolves a missing-page fault at `page`. Async-signal-safe: no
    /// allocation, only ioctls and copies into preallocated memory.
    fn fault(&mut self, page: usize, write: bool) -> bool {
        self.faults += 1;
        self.window = if page == self.next_page {
            (self.window * 2).min(MAX_WINDOW)
        } else {
            INITIAL_WINDOW
        };
        let limit = self.registered / PAGE_SIZE;
        let end = (page + self.window).min(limit);
        let mut at = page;
        if write {
            // A write installs its page writable: it is written.
            match self.fill(page, page + 1, false) {
                Ok(_) => at += 1,
                Err(_) => return false,
            }
        }
        match self.fill(at, end, true) {
            Ok(_) => {}
            Err(_) if at > page => {}
            Err(_) => return false,
        }
        self.next_page = end;
        true
    }

    /// Maps pages `[from, to)` with their committed contents (write
    /// protected when `protect`) or the zero page, stopping at the first
    /// page already mapped. `Err` only when `from` itself failed.
    fn fill(&self, from: usize, to: usize, protect: bool) -> io::Result<()> {
        let mut at = from;
        while at < to {
            let present = self.committed.get(at as u64).is_some();
            let mut run = at + 1;
            while run < to && self.committed.get(run as u64).is_some() == present {
                run += 1;
            }
            let count = run - at;
            let dst = self.base + at * PAGE_SIZE;
            let done = if present {
                for (i, index) in (at..run).enumerate() {
                    let content = self.committed.get(index as u64).expect("present");
                    // SAFETY: a committed page into the scratch buffer,
                    // which holds MAX_WINDOW >= count pages.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            content.as_ptr(),
                            self.scratch.page(i),
                            PAGE_SIZE,
                        )
                    };
                }
                copy(
                    self.kernel,
                    dst,
                    self.scratch.page(0) as usize,
                    count,
                    protect,
                )
            } else if protect {
                zero(self.kernel, dst, count)
            } else {
                // A written zero page must be a real page (one at a time:
                // the source is a single page of zeros).
                copy(self.kernel, dst, ZERO_PAGE.0.as_ptr() as usize, 1, false)
            };
            match done {
                Ok(n) if n == count => at = run,
                Ok(_) => return Ok(()),
                Err(e) if at == from => return Err(e),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    /// Pages written during the message, scanned once.
    fn written(&self) -> &[usize] {
        self.written.get_or_init(|| {
            let scanned = if self.protect_on_scan {
                scan_written_and_protect(self.kernel, self.base, self.registered)
            } else {
                scan_written(self.kernel, self.base, self.registered)
            };
            scanned.unwrap_or_else(|e| {
                // Losing writes would corrupt the canister's state.
                panic!("PAGEMAP_SCAN of an armed memory failed: {e}")
            })
        })
    }

    /// The committed map with this message's written pages applied (pages
    /// written back to zero become absent again), and the number of pages
    /// whose contents changed.
    ///
    /// # Safety
    /// The store must be alive and no wasm may run.
    pub(crate) unsafe fn commit(&self) -> (PageMap, u64) {
        let base = self.base;
        // SAFETY: written pages are mapped and readable (listed in
        // ascending order by the scan), in this memory, not the page slab.
        unsafe {
            self.committed.with_written(
                self.written(),
                |page| (base + page * PAGE_SIZE) as *const crate::page::Page,
                |_, _| {},
            )
        }
    }

    /// Faults handled so far (SIGBUS for missing pages, SIGSEGV for growth;
    /// writes to loaded pages are resolved by the kernel and not counted).
    pub(crate) fn faults(&self) -> u64 {
        self.faults
    }

    /// Pages written by the message (scans the memory on first use).
    pub(crate) fn dirty_pages(&self) -> usize {
        self.written().len()
    }
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

    fn supported() -> bool {
        match check_supported() {
            Ok(()) => true,
            Err(e) => {
                eprintln!("skipping: {e}");
                false
            }
        }
    }

    /// A host memory of `pages` 4 KiB pages, filled with garbage as if
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

    fn read(view: &MemoryView, page: usize, offset: usize) -> u8 {
        // SAFETY: inside the memory; faults are resolved while armed.
        unsafe { std::ptr::read_volatile((view.base() + page * PAGE_SIZE + offset) as *const u8) }
    }

    fn write(view: &MemoryView, page: usize, offset: usize, value: u8) {
        // SAFETY: as above.
        unsafe {
            std::ptr::write_volatile((view.base() + page * PAGE_SIZE + offset) as *mut u8, value)
        }
    }

    #[test]
    fn the_probe_agrees_with_the_tracker_choice() {
        let available = crate::tracker::MemoryTracker::Userfaultfd.check_available();
        assert_eq!(available, check_supported());
        if let Err(e) = available {
            assert!(
                e.contains("userfaultfd") || e.contains("PAGEMAP_SCAN"),
                "{e}"
            );
        }
    }

    #[test]
    fn loads_lazily_and_finds_exactly_the_written_pages() {
        if !supported() {
            return;
        }
        tracker::install_handler();
        let (mut linear, view) = memory(256);
        // Committed: pages 0..64 hold their index, plus 200.
        let committed = PageMap::default()
            .with_updates((0..64u64).map(|i| (i, page_of(i as u8 + 1))))
            .with_updates([(120, page_of(9)), (200, page_of(77))]);
        // SAFETY: no wasm runs; the memory is alive.
        let armed = unsafe { UffdMemory::arm(&view, committed.clone()) }.unwrap();
        let mut armed = [Armed::Userfaultfd(armed)];
        {
            let _guard = ArmGuard::new(&mut armed);
            // Reads see committed contents and zeros, never garbage.
            assert_eq!(read(&view, 0, 5), 1);
            assert_eq!(read(&view, 63, 4095), 64);
            assert_eq!(read(&view, 100, 0), 0);
            assert_eq!(read(&view, 200, 9), 77);
            // A sequential scan of reads.
            for page in 1..64 {
                assert_eq!(read(&view, page, 0), page as u8 + 1);
            }
            // Writes: a loaded page (10), a zero page that was read (100),
            // a never-touched page (150), a committed page not loaded yet
            // (120), and a page written back to all zeros (200).
            write(&view, 10, 1, 0xAB);
            write(&view, 100, 3, 0xCD);
            write(&view, 150, 0, 0x11);
            write(&view, 120, 2, 0x33);
            for offset in 0..PAGE_SIZE {
                write(&view, 200, offset, 0);
            }
            // Growth: new pages are registered and start as zeros.
            linear.grow_to(300 * PAGE_SIZE).unwrap();
            assert_eq!(read(&view, 280, 0), 0);
            write(&view, 290, 0, 0x22);
            assert_eq!(read(&view, 290, 0), 0x22);
        }
        let Armed::Userfaultfd(memory) = &armed[0] else {
            unreachable!()
        };
        assert!(memory.faults() > 0);
        assert_eq!(memory.written(), &[10, 100, 120, 150, 200, 290]);
        // SAFETY: the guard is gone, the memory alive.
        let (next, _) = unsafe { armed[0].commit() };
        let expected = committed.with_updates([
            (10, {
                let mut p = [11u8; PAGE_SIZE];
                p[1] = 0xAB;
                Some(crate::paging::PageRef::new(&p))
            }),
            (100, {
                let mut p = [0u8; PAGE_SIZE];
                p[3] = 0xCD;
                Some(crate::paging::PageRef::new(&p))
            }),
            (120, {
                let mut p = [9u8; PAGE_SIZE];
                p[2] = 0x33;
                Some(crate::paging::PageRef::new(&p))
            }),
            (150, {
                let mut p = [0u8; PAGE_SIZE];
                p[0] = 0x11;
                Some(crate::paging::PageRef::new(&p))
            }),
            (200, None),
            (290, {
                let mut p = [0u8; PAGE_SIZE];
                p[0] = 0x22;
                Some(crate::paging::PageRef::new(&p))
            }),
        ]);
        assert_eq!(next, expected);
        assert_eq!(memory.dirty_pages(), 6);
        drop(armed);
        drop(linear);
    }

    #[test]
    fn an_untouched_memory_costs_nothing() {
        if !supported() {
            return;
        }
        tracker::install_handler();
        let (_linear, view) = memory(1 << 14);
        let committed = PageMap::default().with_updates([(3, page_of(3))]);
        // SAFETY: no wasm runs; the memory is alive.
        let armed = unsafe { UffdMemory::arm(&view, committed.clone()) }.unwrap();
        assert_eq!(armed.dirty_pages(), 0);
        assert_eq!(armed.faults(), 0);
        // SAFETY: as above.
        assert!(unsafe { armed.commit() }.0.same_version(&committed));
    }
}

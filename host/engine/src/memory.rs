//! Host-owned linear memories.
//!
//! Every linear memory a canister instance defines is created here, by the
//! engine's `MemoryCreator`, in a private `PROT_NONE` reservation (one per
//! memory) of which only the accessible part is made readable and writable.
//! A thread-local plan, set around instantiation, sizes the memories and
//! records the ones instantiation creates (in creation order, which is
//! deterministic for a given component) so that the executor can map the
//! committed heap into them before the call and read the new heap out
//! afterwards. A memory can be created already grown to the committed size,
//! which keeps wasmtime's view of its length correct.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use rustix::mm::{MapFlags, MprotectFlags, ProtFlags};
use wasmtime::{LinearMemory, MemoryCreator, MemoryType};

/// Largest 32-bit linear memory.
const MAX_WASM32_BYTES: usize = 4 << 30;

/// Creates [`HostMemory`] objects for the engine.
pub(crate) struct HostMemoryCreator;

/// A `PROT_NONE` reservation for one linear memory (plus its guard),
/// unmapped when the last holder lets go: the memory of an instance, or a
/// kept mapping (`mapped`) that outlives the instance.
pub(crate) struct Reservation {
    base: usize,
    /// Bytes mapped (reservation plus guard).
    mapping_len: usize,
    /// Bytes the memory may grow to without moving.
    capacity: usize,
    /// Bytes of guard after `capacity`.
    guard: usize,
}

impl Reservation {
    fn new(capacity: usize, guard: usize) -> Result<Self, String> {
        let mapping_len = capacity
            .checked_add(guard)
            .ok_or("memory reservation overflows")?;
        // SAFETY: a fresh anonymous mapping, owned by the new object.
        let base = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                mapping_len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::NORESERVE,
            )
        }
        .map_err(|e| format!("cannot reserve {mapping_len} bytes for a linear memory: {e}"))?;
        if base.is_null() {
            return Err("mmap returned null".into());
        }
        Ok(Reservation {
            base: base as usize,
            mapping_len,
            capacity,
            guard,
        })
    }

    /// Address of the first byte.
    pub(crate) fn base(&self) -> usize {
        self.base
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping, which nothing uses any more.
        let _ = unsafe { rustix::mm::munmap(self.base as *mut std::ffi::c_void, self.mapping_len) };
    }
}

/// A memory kept between instances: the next instantiation creates its
/// memory in this reservation (with its contents) instead of a fresh one.
#[derive(Clone)]
pub(crate) struct KeptMemory {
    /// The reservation.
    pub(crate) reservation: Arc<Reservation>,
    /// Its accessible size, shared with every memory created in it.
    pub(crate) size: Arc<AtomicUsize>,
    /// Its tracked flag, shared likewise.
    pub(crate) tracked: Arc<AtomicBool>,
}

/// One accessible view of a memory created during an instantiation.
#[derive(Clone)]
pub(crate) struct MemoryView {
    base: usize,
    size: Arc<AtomicUsize>,
    tracked: Arc<AtomicBool>,
    reservation: Arc<Reservation>,
}

impl MemoryView {
    /// The memory's reservation, with its size and tracked flag (to keep
    /// it for the next instance).
    pub(crate) fn kept(&self) -> KeptMemory {
        KeptMemory {
            reservation: self.reservation.clone(),
            size: self.size.clone(),
            tracked: self.tracked.clone(),
        }
    }

    /// Address of the first byte.
    pub(crate) fn base(&self) -> usize {
        self.base
    }

    /// The shared accessible size, which follows `memory.grow`.
    pub(crate) fn size_handle(&self) -> Arc<AtomicUsize> {
        self.size.clone()
    }

    /// While tracked, growth leaves new pages inaccessible: the fault
    /// handler maps them on first use.
    pub(crate) fn set_tracked(&self, tracked: bool) {
        self.tracked.store(tracked, Ordering::Release);
    }

    /// Accessible length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    /// The accessible bytes.
    ///
    /// # Safety
    /// The store owning the memory must be alive and no wasm may run.
    pub(crate) unsafe fn bytes(&self) -> &[u8] {
        unsafe { std::slice::from_raw_parts(self.base as *const u8, self.len()) }
    }
}

/// What the current thread's instantiation asks of the memories it creates.
struct Plan {
    /// Initial byte size of each memory, by creation order (the committed heap).
    initial_sizes: Vec<usize>,
    /// Kept memories to create memories in, by creation order.
    kept: Vec<Option<KeptMemory>>,
    created: Vec<MemoryView>,
}

thread_local! {
    static PLAN: RefCell<Option<Plan>> = const { RefCell::new(None) };
}

/// Runs `instantiate` on this thread, creating memory `i` with at least
/// `initial_sizes[i]` bytes, and returns the views of the memories created.
pub(crate) fn with_memory_plan<R>(
    initial_sizes: Vec<usize>,
    instantiate: impl FnOnce() -> R,
) -> (R, Vec<MemoryView>) {
    with_kept_memories(initial_sizes, Vec::new(), instantiate)
}

/// Like [`with_memory_plan`], creating memory `i` in `kept[i]` when it is
/// given and fits what wasmtime asks for (its contents are then the
/// memory's, data segments written over them; the caller restores those).
/// A memory that does not fit gets a fresh reservation: the caller tells by
/// comparing the views' bases.
pub(crate) fn with_kept_memories<R>(
    initial_sizes: Vec<usize>,
    kept: Vec<Option<KeptMemory>>,
    instantiate: impl FnOnce() -> R,
) -> (R, Vec<MemoryView>) {
    PLAN.with_borrow_mut(|plan| {
        *plan = Some(Plan {
            initial_sizes,
            kept,
            created: Vec::new(),
        })
    });
    let result = instantiate();
    let plan = PLAN
        .with_borrow_mut(|plan| plan.take())
        .expect("plan set above");
    (result, plan.created)
}

/// A linear memory in a host-owned reservation.
struct HostMemory {
    reservation: Arc<Reservation>,
    maximum: usize,
    size: Arc<AtomicUsize>,
    tracked: Arc<AtomicBool>,
}

// SAFETY: the memory is a plain mapping owned by this object (or a kept
// memory lent to one instance at a time); wasmtime serializes access to it
// through the store.
unsafe impl Send for HostMemory {}
unsafe impl Sync for HostMemory {}

impl HostMemory {
    fn new(
        minimum: usize,
        maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Result<Self, String> {
        let maximum = maximum.unwrap_or(MAX_WASM32_BYTES).min(MAX_WASM32_BYTES);
        let capacity = reserved.unwrap_or(maximum).max(minimum);
        let memory = HostMemory {
            reservation: Arc::new(Reservation::new(capacity, guard)?),
            maximum,
            size: Arc::new(AtomicUsize::new(0)),
            tracked: Arc::new(AtomicBool::new(false)),
        };
        memory.make_accessible(minimum).map_err(|e| e.to_string())?;
        Ok(memory)
    }

    /// A memory in `kept`, when its reservation is as large as asked.
    fn in_kept(
        kept: &KeptMemory,
        minimum: usize,
        maximum: Option<usize>,
        reserved: Option<usize>,
        guard: usize,
    ) -> Option<Self> {
        let maximum = maximum.unwrap_or(MAX_WASM32_BYTES).min(MAX_WASM32_BYTES);
        let capacity = reserved.unwrap_or(maximum).max(minimum);
        let r = &kept.reservation;
        if r.capacity < capacity || r.guard < guard || kept.size.load(Ordering::Acquire) > minimum {
            return None;
        }
        let memory = HostMemory {
            reservation: kept.reservation.clone(),
            maximum,
            size: kept.size.clone(),
            tracked: kept.tracked.clone(),
        };
        memory.make_accessible(minimum).ok()?;
        Some(memory)
    }

    fn base(&self) -> *mut u8 {
        self.reservation.base as *mut u8
    }

    fn make_accessible(&self, new_size: usize) -> anyhow::Result<()> {
        let old = self.size.load(Ordering::Acquire);
        if new_size > self.reservation.capacity || new_size > self.maximum {
            anyhow::bail!("linear memory cannot grow to {new_size} bytes");
        }
        if new_size > old && self.tracked.load(Ordering::Acquire) {
            self.size.store(new_size, Ordering::Release);
        } else if new_size > old {
            // SAFETY: the range lies inside our own reservation.
            unsafe {
                rustix::mm::mprotect(
                    self.base().add(old).cast(),
                    new_size - old,
                    MprotectFlags::READ | MprotectFlags::WRITE,
                )
            }?;
            self.size.store(new_size, Ordering::Release);
        }
        Ok(())
    }
}

// SAFETY: the memory is page aligned, never moves, zero-filled when created
// and followed by the guard region wasmtime asked for.
unsafe impl LinearMemory for HostMemory {
    fn byte_size(&self) -> usize {
        self.size.load(Ordering::Acquire)
    }

    fn byte_capacity(&self) -> usize {
        self.reservation.capacity
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        self.make_accessible(new_size)
            .map_err(|e| wasmtime::format_err!("{e}"))
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base()
    }
}

// SAFETY: every memory returned honours the reservation and guard asked for.
unsafe impl MemoryCreator for HostMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let (initial, kept) = PLAN.with_borrow(|plan| {
            plan.as_ref().map_or((0, None), |p| {
                let i = p.created.len();
                (
                    p.initial_sizes.get(i).copied().unwrap_or(0),
                    p.kept.get(i).cloned().flatten(),
                )
            })
        });
        let minimum = minimum.max(initial);
        let memory = match kept.and_then(|k| {
            HostMemory::in_kept(
                &k,
                minimum,
                maximum,
                reserved_size_in_bytes,
                guard_size_in_bytes,
            )
        }) {
            Some(memory) => memory,
            None => HostMemory::new(
                minimum,
                maximum,
                reserved_size_in_bytes,
                guard_size_in_bytes,
            )?,
        };
        PLAN.with_borrow_mut(|plan| {
            if let Some(plan) = plan {
                plan.created.push(MemoryView {
                    base: memory.reservation.base,
                    size: memory.size.clone(),
                    tracked: memory.tracked.clone(),
                    reservation: memory.reservation.clone(),
                });
            }
        });
        Ok(Box::new(memory))
    }
}

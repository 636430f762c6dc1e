//! Lending kept memories (`mapped`) to one message under the `uffd-mapped`
//! tracker (and `uffd-auto` when it keeps a canister's memories): which of
//! its memories have a kept mapping to be created in (before
//! instantiation), and arming every memory for the call (after it).
//!
//! A kept memory is lent to one message at a time: a concurrent message on
//! the same version arms a fresh memory lazily.

use std::io;
use std::sync::Arc;

use crate::mapped::{CodeId, Kept, MappedMemory, bring_forward, forget, forget_all, lend, resize};
use crate::memory::{KeptMemory, MemoryView};
use crate::paging::PageMap;
use crate::tracker::Armed;
use crate::uffd::UffdMemory;
use crate::version_cache::{Lent, Lineage};

/// The memories of one message under the `uffd-mapped` tracker, between
/// lending (before instantiation) and arming (after it).
pub(crate) struct Lending {
    slots: Vec<Slot>,
    /// Versions of the misses (whose markers are in the cache) not armed
    /// yet: their markers go when the lending is dropped unarmed.
    misses: Vec<PageMap>,
    /// Kept memories lent, armed during instantiation (which writes the
    /// data segments into them, loading missing pages on the way).
    hits: Vec<Armed>,
}

enum Slot {
    Hit,
    Miss,
    Busy,
}

impl Lending {
    /// Lends the kept memories of `heap` (by version); a memory without
    /// one gets a fresh reservation, to be kept after the message.
    /// `persists`: the message is an update (its writes are likely to be
    /// committed).
    pub(crate) fn lend(
        heap: &crate::state::HeapSnapshot,
        canister: &cellar_types::Principal,
        persists: bool,
    ) -> Self {
        let mut slots = Vec::with_capacity(heap.memories.len());
        let mut hits = Vec::new();
        let mut misses = Vec::new();
        for (index, memory) in heap.memories.iter().enumerate() {
            let lineage = Lineage {
                canister: canister.clone(),
                memory: index,
            };
            let lent = if memory.pages.is_empty() {
                // An empty map is not a distinct version (all of them are
                // equal): nothing to key a kept memory by.
                Lent::Busy
            } else {
                lend(&memory.pages, &lineage)
            };
            // A kept memory of another version of this memory (committed
            // while a query had borrowed it) is brought forward, or
            // dropped when too much differs (then built afresh).
            let lent = match lent {
                Lent::Older(mut kept, older) => {
                    let forward = resize(&mut kept, memory.size as usize)
                        .and_then(|()| bring_forward(&mut kept, &older, &memory.pages));
                    match forward {
                        Ok(true) => Lent::Hit(kept),
                        _ => Lent::Miss,
                    }
                }
                lent => lent,
            };
            match lent {
                Lent::Hit(mut kept) => {
                    let armed = resize(&mut kept, memory.size as usize).and_then(|()| {
                        UffdMemory::adopt(
                            &kept.memory,
                            kept.registered,
                            memory.pages.clone(),
                            false,
                        )
                    });
                    match armed {
                        Ok(uffd) => {
                            hits.push(Armed::Mapped(MappedMemory::new(
                                uffd,
                                kept,
                                memory.size as usize,
                                persists,
                            )));
                            slots.push(Slot::Hit);
                        }
                        Err(_) => {
                            // Unusable: dropped (unmapped), built afresh.
                            forget(&memory.pages);
                            slots.push(Slot::Busy);
                        }
                    }
                }
                // (`Older` was turned into a hit or a miss above.)
                Lent::Miss | Lent::Older(..) => {
                    misses.push(memory.pages.clone());
                    slots.push(Slot::Miss);
                }
                Lent::Busy => slots.push(Slot::Busy),
            }
        }
        Lending {
            slots,
            misses,
            hits,
        }
    }

    /// The kept memory to create each memory in, by creation order.
    pub(crate) fn kept_memories(&self) -> Vec<Option<KeptMemory>> {
        let mut hits = self.hits.iter();
        self.slots
            .iter()
            .map(|slot| match slot {
                Slot::Hit => match hits.next() {
                    Some(Armed::Mapped(m)) => Some(m.kept_memory().clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// The memories armed during instantiation.
    pub(crate) fn armed_mut(&mut self) -> &mut [Armed] {
        &mut self.hits
    }

    /// Arms the instance's memories (`views`, in creation order, with the
    /// committed maps `committed`) after instantiation.
    ///
    /// # Safety
    /// The store owning the memories must be alive and no wasm may run.
    pub(crate) unsafe fn arm(
        mut self,
        views: &[MemoryView],
        committed: &[PageMap],
        code: CodeId,
        has_start: bool,
        persists: bool,
    ) -> io::Result<Vec<Armed>> {
        let slots = std::mem::take(&mut self.slots);
        let mut hits = std::mem::take(&mut self.hits).into_iter();
        let mut armed = Vec::with_capacity(views.len());
        for ((slot, view), committed) in slots.iter().zip(views).zip(committed) {
            let memory = match slot {
                Slot::Hit => {
                    let Some(Armed::Mapped(mut memory)) = hits.next() else {
                        unreachable!("one lent memory per hit");
                    };
                    if memory.base() == view.base() {
                        // SAFETY: forwarded contract.
                        unsafe { memory.undo_instantiation(code, has_start) }?;
                        Armed::Mapped(memory)
                    } else {
                        // The kept reservation did not fit what wasmtime
                        // asked for: it goes back unchanged.
                        drop(memory);
                        // SAFETY: forwarded contract.
                        Armed::Userfaultfd(unsafe { UffdMemory::arm(view, committed.clone()) }?)
                    }
                }
                Slot::Miss => {
                    self.misses.retain(|v| !v.same_version(committed));
                    // A fresh reservation: what instantiation wrote is the
                    // data segments, remembered to be undone next time.
                    let init = if has_start {
                        Ok(None)
                    } else {
                        crate::uffd::scan_present(view.base(), view.len())
                            .map(|pages| Some((code, Arc::new(pages))))
                    };
                    // SAFETY: forwarded contract.
                    let uffd = init.and_then(|init| {
                        Ok((init, unsafe { UffdMemory::arm(view, committed.clone()) }?))
                    });
                    let (init, uffd) = match uffd {
                        Ok(armed) => armed,
                        Err(e) => {
                            forget(committed);
                            return Err(e);
                        }
                    };
                    // Populated now, once: later messages find every page.
                    uffd.populate();
                    let kept = Kept {
                        memory: view.kept(),
                        registered: uffd.registered(),
                        init_pages: init,
                    };
                    Armed::Mapped(MappedMemory::new(uffd, kept, view.len(), persists))
                }
                // SAFETY: forwarded contract.
                Slot::Busy => {
                    Armed::Userfaultfd(unsafe { UffdMemory::arm(view, committed.clone()) }?)
                }
            };
            armed.push(memory);
        }
        Ok(armed)
    }
}

impl Drop for Lending {
    fn drop(&mut self) {
        if self.misses.is_empty() {
            return;
        }
        forget_all(&self.misses);
    }
}

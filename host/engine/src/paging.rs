//! Immutable, versioned page maps: the committed contents of a linear memory.
//!
//! A [`PageMap`] maps 4 KiB page indices to page contents; absent pages are
//! zero. It is a persistent radix tree (fan-out 32, four levels, enough for
//! the 2^20 pages of a 4 GiB memory) whose nodes are shared by reference:
//! a new version that changes `k` pages copies only the `O(k)` nodes on their
//! paths, so committing a message costs in proportion to the pages it
//! dirtied, not to the size of the heap, and every older version stays valid
//! for whoever still holds it (queries running against it, a checkpoint
//! being written). A new version applies its updates sorted, so each node
//! on their paths is visited and copied once.
//!
//! [`PageMap::diff`] between two versions skips the subtrees they share,
//! and the Merkle hash ([`PageMap::hash`]) is cached in the shared nodes, so
//! hashing a new version only rehashes the paths it copied. Leaves hold
//! [`PageRef`]s (4-byte handles into the page slab, `page_slab`), not
//! `Arc`s.

use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use crate::page::{PAGE_SIZE, Page};
pub use crate::page_slab::PageRef;

const BITS: u32 = 5;
const FANOUT: usize = 1 << BITS;
const LEVELS: u32 = 4;
/// Pages a map can address (2^20: 4 GiB).
pub const MAX_PAGES: u64 = 1 << (BITS * LEVELS);

/// A shared page holding a copy of `bytes` (one copy into the page slab,
/// see [`PageRef`]).
///
/// # Panics
/// When `bytes` is not exactly one page long.
pub fn page_from_slice(bytes: &[u8]) -> PageRef {
    assert_eq!(bytes.len(), PAGE_SIZE, "a page is {PAGE_SIZE} bytes");
    PageRef::from_slice(bytes)
}

/// Whether every byte is zero: a word at a time, 256 bytes between exits
/// (a byte-at-a-time loop costs ~1 µs on a page whose first non-zero byte
/// is near its end, more than copying it).
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    bytes.chunks(256).all(|block| {
        let mut words = block.chunks_exact(8);
        let any = words.by_ref().fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes(w.try_into().expect("8 bytes"))
        });
        any == 0 && words.remainder().iter().all(|b| *b == 0)
    })
}

/// How many written pages ahead [`PageMap::with_written`] prefetches.
const PREFETCH_AHEAD: usize = 4;
/// Cache lines of each page prefetched.
const PREFETCH_LINES: usize = 4;

/// Asks for the first [`PREFETCH_LINES`] lines of `page` (when not null)
/// to be brought into the cache (and its address into the TLB); the rest
/// streams in behind them.
fn prefetch_page(page: *const Page) {
    #[cfg(target_arch = "x86_64")]
    if !page.is_null() {
        for line in 0..PREFETCH_LINES {
            // SAFETY: a prefetch is a hint; it never faults, whatever the
            // address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    page.cast::<i8>().add(line * 64),
                );
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = page;
}

/// A page's entry in a page map: none for an all-zero page (the map's
/// default), else a copy of `bytes`, checked and copied in one pass (see
/// [`PageRef::copy_unless_zero`]).
///
/// # Panics
/// When `bytes` is not exactly one page long.
pub fn page_content(bytes: &[u8]) -> Option<PageRef> {
    PageRef::copy_unless_zero(bytes.try_into().expect("a page is PAGE_SIZE bytes"))
}

enum Children {
    Inner([Option<Arc<Node>>; FANOUT]),
    Leaf([Option<PageRef>; FANOUT]),
}

/// A tree node with its hash, computed once and kept while the node is
/// shared: hashing a new version rehashes only the copied paths.
struct Node {
    children: Children,
    hash: OnceLock<[u8; 32]>,
}

impl Clone for Node {
    fn clone(&self) -> Self {
        let children = match &self.children {
            Children::Inner(c) => Children::Inner(c.clone()),
            Children::Leaf(c) => Children::Leaf(c.clone()),
        };
        // A clone is about to be modified: its hash is computed afresh.
        Node {
            children,
            hash: OnceLock::new(),
        }
    }
}

impl Node {
    fn empty(level: u32) -> Node {
        let children = if level == 1 {
            Children::Leaf(std::array::from_fn(|_| None))
        } else {
            Children::Inner(std::array::from_fn(|_| None))
        };
        Node {
            children,
            hash: OnceLock::new(),
        }
    }

    fn is_empty(&self) -> bool {
        match &self.children {
            Children::Leaf(pages) => pages.iter().all(Option::is_none),
            Children::Inner(children) => children.iter().all(Option::is_none),
        }
    }

    fn hash(&self) -> [u8; 32] {
        *self.hash.get_or_init(|| {
            let mut hasher = Sha256::new();
            match &self.children {
                Children::Leaf(pages) => {
                    hasher.update(b"L");
                    for page in pages {
                        match page {
                            None => hasher.update([0u8]),
                            Some(page) => {
                                hasher.update([1u8]);
                                hasher.update(Sha256::digest(&page[..]));
                            }
                        }
                    }
                }
                Children::Inner(children) => {
                    hasher.update(b"I");
                    for child in children {
                        match child {
                            None => hasher.update([0u8]),
                            Some(child) => {
                                hasher.update([1u8]);
                                hasher.update(child.hash());
                            }
                        }
                    }
                }
            }
            hasher.finalize().into()
        })
    }
}

/// One version of a memory's pages.
#[derive(Clone, Default)]
pub struct PageMap {
    root: Option<Arc<Node>>,
    len: u64,
}

fn slot(index: u64, level: u32) -> usize {
    ((index >> (BITS * (level - 1))) as usize) & (FANOUT - 1)
}

/// A map without pages, for borrowing where a version is absent.
pub(crate) static EMPTY_MAP: PageMap = PageMap { root: None, len: 0 };

impl PageMap {
    /// The page at `index`, or `None` when it is zero.
    pub fn get(&self, index: u64) -> Option<&PageRef> {
        let mut node = self.root.as_deref()?;
        let mut level = LEVELS;
        loop {
            match &node.children {
                Children::Inner(children) => node = children[slot(index, level)].as_deref()?,
                Children::Leaf(pages) => return pages[slot(index, level)].as_ref(),
            }
            level -= 1;
        }
    }

    /// Number of stored (non-absent) pages.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no page is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A new version with `updates` applied (`None` makes a page zero again).
    /// `self` is unchanged.
    pub fn with_updates(
        &self,
        updates: impl IntoIterator<Item = (u64, Option<PageRef>)>,
    ) -> PageMap {
        let mut updates: Vec<(u64, Option<PageRef>)> = updates.into_iter().collect();
        if let Some((index, _)) = updates.iter().find(|(index, _)| *index >= MAX_PAGES) {
            panic!("page index {index} beyond 4 GiB");
        }
        // Sorted (stably: of two updates of one page the later wins), the
        // updates below one node are contiguous, so each node on their
        // paths is visited (and copied) once.
        if !updates.is_sorted_by_key(|(index, _)| *index) {
            updates.sort_by_key(|(index, _)| *index);
        }
        self.applied(updates)
    }

    /// A new version with the pages a message wrote: `pages` lists written
    /// page indices in ascending order and `page_at` gives each one's
    /// current bytes. A written page is compared with the page it replaces
    /// and stored (copied) only when it changed; a page written to zero
    /// becomes absent. Returns the new version and the number of pages
    /// whose contents changed; `on_change` sees each changed page (its
    /// index and new content) as it is stored, in ascending order. `self`
    /// is unchanged.
    ///
    /// (Spreading the comparisons and copies over two threads was measured
    /// and gained nothing here: the pass is bound by memory traffic, which
    /// the two vCPUs share.)
    ///
    /// # Safety
    /// Each pointer `page_at` returns must be valid for reads of a page
    /// until this returns, and must not point into the page slab.
    ///
    /// # Panics
    /// When the indices are not strictly ascending or reach 4 GiB.
    pub unsafe fn with_written(
        &self,
        pages: &[usize],
        page_at: impl Fn(usize) -> *const Page,
        mut on_change: impl FnMut(u64, Option<&PageRef>),
    ) -> (PageMap, u64) {
        assert!(
            pages.windows(2).all(|w| w[0] < w[1]),
            "written pages must be listed in ascending order"
        );
        if let Some(&last) = pages.last() {
            assert!((last as u64) < MAX_PAGES, "page index {last} beyond 4 GiB");
        }
        // SAFETY: forwarded contract.
        let updates = unsafe { self.store_changed(pages, &page_at, &mut on_change) };
        let changed = updates.len() as u64;
        (self.applied(updates), changed)
    }

    /// The changed pages of `run` (written pages, ascending), copied into
    /// the slab: `(index, None)` for a page written to zero.
    ///
    /// # Safety
    /// As for [`PageMap::with_written`].
    unsafe fn store_changed(
        &self,
        run: &[usize],
        page_at: &impl Fn(usize) -> *const Page,
        on_change: &mut impl FnMut(u64, Option<&PageRef>),
    ) -> Vec<(u64, Option<PageRef>)> {
        // First the pages each written page replaces, so that the pass
        // that compares and copies can prefetch ahead: each page of either
        // list is a cache and TLB miss at scattered addresses, which the
        // hardware prefetcher does not anticipate across pages.
        let pairs: Vec<(*const Page, *const Page)> = run
            .iter()
            .map(|&p| {
                let old = self
                    .get(p as u64)
                    .map_or(std::ptr::null(), |o| &**o as *const Page);
                (page_at(p), old)
            })
            .collect();
        let mut updates = Vec::with_capacity(run.len());
        for (i, (&page, &(written, old))) in run.iter().zip(&pairs).enumerate() {
            if let Some(&(next_written, next_old)) = pairs.get(i + PREFETCH_AHEAD) {
                prefetch_page(next_written);
                prefetch_page(next_old);
            }
            // SAFETY: `page_at`'s pointers are readable for this call (the
            // caller's contract); `old` is a page of `self`, alive while
            // `self` is borrowed.
            let (written, old) = unsafe { (&*written, old.as_ref()) };
            if old.is_some_and(|old| old[..] == written[..]) {
                continue;
            }
            let content = PageRef::copy_unless_zero(written);
            if content.is_none() && old.is_none() {
                continue;
            }
            on_change(page as u64, content.as_ref());
            updates.push((page as u64, content));
        }
        updates
    }

    /// A new version with sorted `updates` applied.
    fn applied(&self, updates: Vec<(u64, Option<PageRef>)>) -> PageMap {
        let mut next = self.clone();
        let added = apply(
            &mut next.root,
            LEVELS,
            &mut updates.into_iter().peekable(),
            0,
        );
        next.len = next
            .len
            .checked_add_signed(added)
            .expect("page count stays in range");
        next
    }

    /// Calls `f` for every stored page in index order, without allocating
    /// (usable in a fault handler).
    pub fn for_each(&self, mut f: impl FnMut(u64, &PageRef)) {
        fn walk(node: &Node, prefix: u64, f: &mut impl FnMut(u64, &PageRef)) {
            match &node.children {
                Children::Leaf(pages) => {
                    for (i, page) in pages.iter().enumerate() {
                        if let Some(page) = page {
                            f((prefix << BITS) | i as u64, page);
                        }
                    }
                }
                Children::Inner(children) => {
                    for (i, child) in children.iter().enumerate() {
                        if let Some(child) = child {
                            walk(child, (prefix << BITS) | i as u64, f);
                        }
                    }
                }
            }
        }
        if let Some(root) = &self.root {
            walk(root, 0, &mut f);
        }
    }

    /// Every stored page in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &PageRef)> {
        let mut out = Vec::with_capacity(self.len as usize);
        if let Some(root) = &self.root {
            collect(root, 0, &mut out);
        }
        out.into_iter()
    }

    /// The pages that differ from `older`: `(index, Some(page))` for pages
    /// set or changed, `(index, None)` for pages that became zero. Subtrees
    /// both versions share are skipped, so the cost follows the changes, not
    /// the size of the memory.
    pub fn diff<'a>(&'a self, older: &'a PageMap) -> Vec<(u64, Option<&'a PageRef>)> {
        let mut out = Vec::new();
        diff_nodes(self.root.as_deref(), older.root.as_deref(), 0, &mut out);
        out
    }

    /// A hash of the contents (a Merkle tree over the radix tree). Node
    /// hashes are cached in the nodes, which versions share: after a
    /// message that dirtied `k` pages, only those pages and their paths are
    /// hashed again. When many subtrees lack a hash (a version just loaded
    /// from a checkpoint: SHA-256 of every page, ~0.7 s per GiB on one
    /// core here), they are hashed on the rayon pool first.
    pub fn hash(&self) -> [u8; 32] {
        match &self.root {
            None => [0; 32],
            Some(root) => {
                if root.hash.get().is_none() {
                    hash_subtrees_in_parallel(root);
                }
                root.hash()
            }
        }
    }

    /// Whether both versions share the same root (cheap identity check).
    pub fn same_version(&self, other: &PageMap) -> bool {
        match (&self.root, &other.root) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        }
    }
}

/// Levels below the root at which [`hash_subtrees_in_parallel`] splits the
/// work: subtrees of 32² pages (4 MiB), up to 1,024 of them.
const PARALLEL_HASH_DEPTH: u32 = 2;
/// Unhashed subtrees worth handing to the pool (fewer are hashed on the
/// calling thread, as after an ordinary message).
const PARALLEL_HASH_MIN_SUBTREES: usize = 16;

/// Hashes the unhashed subtrees [`PARALLEL_HASH_DEPTH`] levels below `root`
/// on the rayon pool, so that `root.hash()` then only combines cached
/// hashes. The result is the same as hashing on one thread.
fn hash_subtrees_in_parallel(root: &Node) {
    let mut level: Vec<&Node> = vec![root];
    for _ in 0..PARALLEL_HASH_DEPTH {
        level = level
            .into_iter()
            .filter(|node| node.hash.get().is_none())
            .flat_map(|node| match &node.children {
                Children::Inner(children) => children.iter().flatten().map(|c| &**c).collect(),
                Children::Leaf(_) => Vec::new(),
            })
            .collect();
    }
    level.retain(|node| node.hash.get().is_none());
    if level.len() >= PARALLEL_HASH_MIN_SUBTREES {
        use rayon::prelude::*;
        level.par_iter().for_each(|node| {
            node.hash();
        });
    }
}

/// Applies the sorted `updates` that fall below `node` (a node at `level`
/// covering the pages that start with `prefix`), copying shared nodes on
/// the way (path copying) and pruning nodes that become empty, so that
/// equal contents always have the same shape (and hash). Returns the change
/// in the number of stored pages.
fn apply(
    node: &mut Option<Arc<Node>>,
    level: u32,
    updates: &mut std::iter::Peekable<std::vec::IntoIter<(u64, Option<PageRef>)>>,
    prefix: u64,
) -> i64 {
    let below = |index: u64| index >> (BITS * level) == prefix;
    if !updates.peek().is_some_and(|(i, _)| below(*i)) {
        return 0;
    }
    if node.is_none() {
        // Absent pages are zero: zeroing them again changes nothing.
        while updates
            .next_if(|(i, page)| below(*i) && page.is_none())
            .is_some()
        {}
        if !updates.peek().is_some_and(|(i, _)| below(*i)) {
            return 0;
        }
        *node = Some(Arc::new(Node::empty(level)));
    }
    let shared = node.as_mut().expect("set above");
    let inner = Arc::make_mut(shared);
    inner.hash = OnceLock::new();
    let mut added = 0;
    match &mut inner.children {
        Children::Leaf(pages) => {
            while let Some((index, page)) = updates.next_if(|(i, _)| below(*i)) {
                let slot = &mut pages[slot(index, level)];
                added += i64::from(page.is_some()) - i64::from(slot.is_some());
                *slot = page;
            }
        }
        Children::Inner(children) => {
            while let Some(&(index, _)) = updates.peek().filter(|(i, _)| below(*i)) {
                let at = slot(index, level);
                added += apply(
                    &mut children[at],
                    level - 1,
                    updates,
                    (prefix << BITS) | at as u64,
                );
            }
        }
    }
    if inner.is_empty() {
        *node = None;
    }
    added
}

fn collect<'a>(node: &'a Node, prefix: u64, out: &mut Vec<(u64, &'a PageRef)>) {
    match &node.children {
        Children::Leaf(pages) => {
            for (i, page) in pages.iter().enumerate() {
                if let Some(page) = page {
                    out.push(((prefix << BITS) | i as u64, page));
                }
            }
        }
        Children::Inner(children) => {
            for (i, child) in children.iter().enumerate() {
                if let Some(child) = child {
                    collect(child, (prefix << BITS) | i as u64, out);
                }
            }
        }
    }
}

fn diff_nodes<'a>(
    new: Option<&'a Node>,
    old: Option<&'a Node>,
    prefix: u64,
    out: &mut Vec<(u64, Option<&'a PageRef>)>,
) {
    if let (Some(a), Some(b)) = (new, old)
        && std::ptr::eq(a, b)
    {
        return;
    }
    let new_children = new.map(|n| &n.children);
    let old_children = old.map(|n| &n.children);
    match (new_children, old_children) {
        (None, None) => {}
        (Some(Children::Leaf(a)), old) => {
            for (i, page) in a.iter().enumerate() {
                let before = match old {
                    Some(Children::Leaf(b)) => b[i].as_ref(),
                    _ => None,
                };
                let same = match (page, before) {
                    (Some(x), Some(y)) => PageRef::ptr_eq(x, y) || x[..] == y[..],
                    (None, None) => true,
                    _ => false,
                };
                if !same {
                    out.push(((prefix << BITS) | i as u64, page.as_ref()));
                }
            }
        }
        (None, Some(Children::Leaf(b))) => {
            for (i, page) in b.iter().enumerate() {
                if page.is_some() {
                    out.push(((prefix << BITS) | i as u64, None));
                }
            }
        }
        _ => {
            let child = |node: Option<&'a Node>, i: usize| match node.map(|n| &n.children) {
                Some(Children::Inner(children)) => children[i].as_deref(),
                _ => None,
            };
            for i in 0..FANOUT {
                diff_nodes(
                    child(new, i),
                    child(old, i),
                    (prefix << BITS) | i as u64,
                    out,
                );
            }
        }
    }
}

impl PartialEq for PageMap {
    fn eq(&self, other: &Self) -> bool {
        self.same_version(other)
            || (self.len == other.len
                && self
                    .iter()
                    .zip(other.iter())
                    .all(|((i, a), (j, b))| i == j && (PageRef::ptr_eq(a, b) || a[..] == b[..])))
    }
}

impl Eq for PageMap {}

impl std::fmt::Debug for PageMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageMap").field("pages", &self.len).finish()
    }
}

/// The committed state of one linear memory: its size and its pages.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct MemoryImage {
    /// Accessible size in bytes (a multiple of the wasm page size).
    pub size: u64,
    /// Non-zero pages.
    pub pages: PageMap,
}

impl MemoryImage {
    /// The memory's bytes, materialized (for tests and tools; costs the
    /// whole size).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = vec![0u8; self.size as usize];
        for (index, page) in self.pages.iter() {
            let start = index as usize * PAGE_SIZE;
            bytes[start..start + PAGE_SIZE].copy_from_slice(&page[..]);
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(byte: u8) -> Option<PageRef> {
        Some(PageRef::new(&[byte; PAGE_SIZE]))
    }

    #[test]
    fn versions_are_independent() {
        let v0 = PageMap::default();
        let v1 = v0.with_updates([(0, page(1)), (5, page(2)), (MAX_PAGES - 1, page(3))]);
        let v2 = v1.with_updates([(5, page(9)), (0, None), (77, page(4))]);
        assert!(v0.get(0).is_none());
        assert_eq!(v1.get(5).unwrap()[0], 2);
        assert_eq!(v2.get(5).unwrap()[0], 9);
        assert!(v2.get(0).is_none());
        assert_eq!(v1.len(), 3);
        assert_eq!(v2.len(), 3);
        let indices: Vec<u64> = v2.iter().map(|(i, _)| i).collect();
        assert_eq!(indices, vec![5, 77, MAX_PAGES - 1]);
        assert_ne!(v1, v2);
        assert_eq!(
            v2,
            v1.with_updates([(5, page(9)), (0, None), (77, page(4))])
        );
    }

    #[test]
    fn diff_lists_exactly_the_changes() {
        let v1 = PageMap::default().with_updates((0..100).map(|i| (i * 997, page(1))));
        let v2 = v1.with_updates([(997, page(2)), (0, None), (5, page(3))]);
        let changes: Vec<(u64, Option<u8>)> = v2
            .diff(&v1)
            .into_iter()
            .map(|(i, p)| (i, p.map(|p| p[0])))
            .collect();
        assert_eq!(changes, vec![(0, None), (5, Some(3)), (997, Some(2))]);
        assert!(v2.diff(&v2).is_empty());
        assert_eq!(v1.diff(&PageMap::default()).len(), 100);
        assert_eq!(PageMap::default().diff(&v1).len(), 100);
    }

    #[test]
    fn hashes_follow_contents_not_history() {
        let a = PageMap::default().with_updates([(1, page(1)), (900_000, page(2))]);
        let b = PageMap::default()
            .with_updates([(900_000, page(2)), (5, page(7)), (70_000, page(9))])
            .with_updates([(5, None), (1, page(1)), (70_000, None)]);
        assert_eq!(a.hash(), b.hash());
        let c = a.with_updates([(1, page(3))]);
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash(), a.with_updates([(1, page(1))]).hash());
    }

    #[test]
    fn zero_check_finds_any_non_zero_byte() {
        let mut bytes = [0u8; PAGE_SIZE + 5];
        assert!(is_zero(&bytes));
        assert!(is_zero(&[]));
        for at in [0, 7, 255, 256, 4095, 4096, PAGE_SIZE + 4] {
            bytes[at] = 1;
            assert!(!is_zero(&bytes), "byte {at}");
            assert!(page_content(&bytes[..PAGE_SIZE]).is_some() == (at < PAGE_SIZE));
            bytes[at] = 0;
        }
    }

    #[test]
    fn batched_updates_match_a_model() {
        use std::collections::BTreeMap;
        let mut model: BTreeMap<u64, u8> = BTreeMap::new();
        let mut map = PageMap::default();
        let mut versions = Vec::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..40u8 {
            let mut updates = Vec::new();
            for _ in 0..(1 + round as usize * 7) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                // Clustered and far indices, some repeated within a batch
                // (the later update wins), some zeroing.
                let index = if rng & 1 == 0 {
                    rng % 200
                } else {
                    rng % MAX_PAGES
                };
                let byte = (rng >> 40) as u8 % 4;
                updates.push((index, (byte != 0).then(|| PageRef::new(&[byte; PAGE_SIZE]))));
                if byte == 0 {
                    model.remove(&index);
                } else {
                    model.insert(index, byte);
                }
            }
            if round % 2 == 1 {
                updates.reverse();
                // Reversed, the batch means something else: rebuild the
                // model's view by applying it in order.
                for (index, page) in &updates {
                    match page {
                        Some(p) => model.insert(*index, p[0]),
                        None => model.remove(index),
                    };
                }
            }
            map = map.with_updates(updates);
            let seen: Vec<(u64, u8)> = map.iter().map(|(i, p)| (i, p[0])).collect();
            let expected: Vec<(u64, u8)> = model.iter().map(|(i, b)| (*i, *b)).collect();
            assert_eq!(seen, expected, "round {round}");
            assert_eq!(map.len(), model.len() as u64);
            let rebuilt = PageMap::default().with_updates(
                model
                    .iter()
                    .map(|(i, b)| (*i, Some(PageRef::new(&[*b; PAGE_SIZE])))),
            );
            assert_eq!(
                map.hash(),
                rebuilt.hash(),
                "round {round}: shape follows contents"
            );
            versions.push((map.clone(), expected));
        }
        for (version, expected) in &versions {
            let seen: Vec<(u64, u8)> = version.iter().map(|(i, p)| (i, p[0])).collect();
            assert_eq!(&seen, expected, "older versions are unchanged");
        }
        let cleared = map.with_updates(model.keys().map(|i| (*i, None)));
        assert!(cleared.is_empty());
        assert_eq!(cleared.hash(), PageMap::default().hash());
        assert!(cleared.same_version(&PageMap::default()));
    }

    #[test]
    fn written_pages_store_only_what_changed() {
        // A "memory" of written page contents, indexed by page.
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut map =
            PageMap::default().with_updates((0..1500u64).map(|i| (i * 3, page(1 + (i % 3) as u8))));
        for round in 0..30 {
            let mut written: Vec<usize> = Vec::new();
            let mut contents: std::collections::BTreeMap<usize, Box<Page>> = Default::default();
            for _ in 0..(1 + round * 97) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let index = (rng % 5000) as usize;
                // Rewritten with the same bytes, changed, zeroed, or new.
                let mut bytes = Box::new(match map.get(index as u64) {
                    Some(old) => **old,
                    None => [0u8; PAGE_SIZE],
                });
                match (rng >> 32) % 4 {
                    0 => {}
                    1 => bytes[(rng >> 40) as usize % PAGE_SIZE] ^= 0x5A,
                    2 => bytes.fill(0),
                    _ => bytes[PAGE_SIZE - 1] = bytes[PAGE_SIZE - 1].wrapping_add(1),
                }
                contents.insert(index, bytes);
            }
            written.extend(contents.keys());
            let expected = map.with_updates(
                contents
                    .iter()
                    .map(|(i, bytes)| (*i as u64, page_content(&bytes[..]))),
            );
            let mut seen = Vec::new();
            // SAFETY: the pointers are into `contents`, alive for the call
            // and outside the slab.
            let (next, changed) = unsafe {
                map.with_written(
                    &written,
                    |i| &*contents[&i] as *const Page,
                    |i, content| {
                        let same = content.map(|p| p[..] == contents[&(i as usize)][..]);
                        seen.push((i, same));
                    },
                )
            };
            // Reported in ascending order.
            assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
            assert_eq!(next, expected, "round {round}");
            assert_eq!(next.hash(), expected.hash(), "round {round}");
            assert_eq!(next.len(), expected.len());
            let diff: Vec<(u64, bool)> = next
                .diff(&map)
                .into_iter()
                .map(|(i, page)| (i, page.is_some()))
                .collect();
            assert_eq!(
                changed,
                diff.len() as u64,
                "round {round}: only changed pages count"
            );
            let reported: Vec<(u64, bool)> = seen.iter().map(|(i, c)| (*i, c.is_some())).collect();
            assert_eq!(
                reported, diff,
                "round {round}: on_change sees each change once"
            );
            assert!(
                seen.iter().all(|(_, c)| *c != Some(false)),
                "new contents reported"
            );
            map = next;
        }
    }

    #[test]
    fn subtrees_hashed_in_parallel_give_the_hash_of_one_thread() {
        // Pages in 300 different 4 MiB subtrees: the parallel path runs.
        let build = || {
            PageMap::default()
                .with_updates((0..300u64).map(|i| (i * 3000 + i % 7, page(i as u8 | 1))))
        };
        let parallel = build();
        let one_thread = build();
        let root = one_thread.root.as_deref().unwrap();
        let sequential = root.hash();
        assert_eq!(parallel.hash(), sequential);
        // A new version: only its copied path lacks a hash.
        let next = parallel.with_updates([(5, page(9))]);
        let next_alone = one_thread.with_updates([(5, page(9))]);
        assert_eq!(next.hash(), next_alone.root.as_deref().unwrap().hash());
        assert_ne!(next.hash(), sequential);
    }

    #[test]
    fn unchanged_subtrees_are_shared() {
        let v1 = PageMap::default().with_updates((0..1000).map(|i| (i * 1000, page(1))));
        let v2 = v1.with_updates([(3, page(2))]);
        // Page 999000 lives in a subtree v2 did not touch.
        assert!(PageRef::ptr_eq(
            v1.get(999_000).unwrap(),
            v2.get(999_000).unwrap()
        ));
    }
}

//! Immutable, versioned page maps: the committed contents of a linear memory.
//!
//! A [`PageMap`] maps 4 KiB page indices to page contents; absent pages are
//! zero. It is a persistent radix tree (fan-out 32, four levels, enough for
//! the 2^20 pages of a 4 GiB memory) whose nodes are shared by reference:
//! a new version that changes `k` pages copies only the `O(k)` nodes on their
//! paths, so committing a message costs in proportion to the pages it
//! dirtied, not to the size of the heap, and every older version stays valid
//! for whoever still holds it (queries running against it, a checkpoint
//! being written).

use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

/// Bytes per page.
pub const PAGE_SIZE: usize = 4096;

const BITS: u32 = 5;
const FANOUT: usize = 1 << BITS;
const LEVELS: u32 = 4;
/// Pages a map can address (2^20: 4 GiB).
pub const MAX_PAGES: u64 = 1 << (BITS * LEVELS);

/// The contents of one page.
pub type Page = [u8; PAGE_SIZE];

/// A shared page holding a copy of `bytes` (one allocation, one copy).
///
/// # Panics
/// When `bytes` is not exactly one page long.
pub fn page_from_slice(bytes: &[u8]) -> Arc<Page> {
    assert_eq!(bytes.len(), PAGE_SIZE, "a page is {PAGE_SIZE} bytes");
    let mut page = Arc::<Page>::new_uninit();
    let slot = Arc::get_mut(&mut page).expect("a new Arc is unique");
    // SAFETY: `slot` is PAGE_SIZE writable bytes and `bytes` PAGE_SIZE
    // readable ones; after the copy every byte is initialized.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), slot.as_mut_ptr().cast::<u8>(), PAGE_SIZE);
        page.assume_init()
    }
}

/// A page's entry in a page map: none for an all-zero page (the map's
/// default), else a copy of `bytes` (see [`page_from_slice`]).
pub fn page_content(bytes: &[u8]) -> Option<Arc<Page>> {
    if bytes.iter().all(|b| *b == 0) {
        None
    } else {
        Some(page_from_slice(bytes))
    }
}

enum Children {
    Inner([Option<Arc<Node>>; FANOUT]),
    Leaf([Option<Arc<Page>>; FANOUT]),
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
    pub fn get(&self, index: u64) -> Option<&Arc<Page>> {
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
        updates: impl IntoIterator<Item = (u64, Option<Arc<Page>>)>,
    ) -> PageMap {
        let mut next = self.clone();
        for (index, page) in updates {
            assert!(index < MAX_PAGES, "page index {index} beyond 4 GiB");
            let root = next
                .root
                .get_or_insert_with(|| Arc::new(Node::empty(LEVELS)));
            let (was, _) = set(root, index, LEVELS, page.clone());
            if page.is_none() && root.is_empty() {
                next.root = None;
            }
            match (was, page.is_some()) {
                (false, true) => next.len += 1,
                (true, false) => next.len -= 1,
                _ => {}
            }
        }
        next
    }

    /// Calls `f` for every stored page in index order, without allocating
    /// (usable in a fault handler).
    pub fn for_each(&self, mut f: impl FnMut(u64, &Arc<Page>)) {
        fn walk(node: &Node, prefix: u64, f: &mut impl FnMut(u64, &Arc<Page>)) {
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
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Arc<Page>)> {
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
    pub fn diff<'a>(&'a self, older: &'a PageMap) -> Vec<(u64, Option<&'a Arc<Page>>)> {
        let mut out = Vec::new();
        diff_nodes(self.root.as_deref(), older.root.as_deref(), 0, &mut out);
        out
    }

    /// A hash of the contents (a Merkle tree over the radix tree). Node
    /// hashes are cached in the nodes, which versions share: after a
    /// message that dirtied `k` pages, only those pages and their paths are
    /// hashed again.
    pub fn hash(&self) -> [u8; 32] {
        match &self.root {
            None => [0; 32],
            Some(root) => root.hash(),
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

/// Sets a page below `node`, copying shared nodes on the way (path copying)
/// and pruning nodes that become empty, so that equal contents always have
/// the same shape (and hash). Returns whether a page was there before.
fn set(node: &mut Arc<Node>, index: u64, level: u32, page: Option<Arc<Page>>) -> (bool, ()) {
    let node = Arc::make_mut(node);
    node.hash = OnceLock::new();
    match &mut node.children {
        Children::Leaf(pages) => {
            let slot = &mut pages[slot(index, level)];
            let was = slot.is_some();
            *slot = page;
            (was, ())
        }
        Children::Inner(children) => {
            let child = &mut children[slot(index, level)];
            if child.is_none() {
                if page.is_none() {
                    return (false, ());
                }
                *child = Some(Arc::new(Node::empty(level - 1)));
            }
            let removing = page.is_none();
            let result = set(child.as_mut().expect("set above"), index, level - 1, page);
            if removing && child.as_deref().is_some_and(Node::is_empty) {
                *child = None;
            }
            result
        }
    }
}

fn collect<'a>(node: &'a Node, prefix: u64, out: &mut Vec<(u64, &'a Arc<Page>)>) {
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
    out: &mut Vec<(u64, Option<&'a Arc<Page>>)>,
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
                    (Some(x), Some(y)) => Arc::ptr_eq(x, y) || x[..] == y[..],
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
                    .all(|((i, a), (j, b))| i == j && (Arc::ptr_eq(a, b) || a[..] == b[..])))
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

    fn page(byte: u8) -> Option<Arc<Page>> {
        Some(Arc::new([byte; PAGE_SIZE]))
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
    fn unchanged_subtrees_are_shared() {
        let v1 = PageMap::default().with_updates((0..1000).map(|i| (i * 1000, page(1))));
        let v2 = v1.with_updates([(3, page(2))]);
        // Page 999000 lives in a subtree v2 did not touch.
        assert!(Arc::ptr_eq(
            v1.get(999_000).unwrap(),
            v2.get(999_000).unwrap()
        ));
    }
}

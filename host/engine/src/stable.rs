//! Stable memory: sparse, byte-addressed, kept across upgrades.
//!
//! Committed stable memory is an immutable [`StableMemory`] shared by
//! reference: its 4 KiB chunks live in persistent page maps (the same radix
//! trees as the heap, one per 4 GiB segment, up to 64 GiB), so a message
//! that writes `k` chunks commits a new version in `O(k)` (no copy of a map
//! of every chunk), checkpoints diff versions by shared subtrees, and the
//! content hash is a Merkle hash maintained incrementally. A message writes
//! into a private [`StableOverlay`] whose chunks replace the committed ones
//! only when the message commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::page::PAGE_SIZE;
use crate::paging::{MAX_PAGES, PageMap, PageRef};

/// Stable memory is sized in pages of 64 KiB.
pub const STABLE_PAGE_SIZE: u64 = 64 << 10;

/// Stored chunks are 4 KiB: the unit of copy-on-write.
const CHUNK: u64 = PAGE_SIZE as u64;

/// Largest stable memory: 64 GiB (sparse).
pub const MAX_STABLE_BYTES: u64 = 64 << 30;

/// Largest single read or write (a bigger one traps): keeps one host call
/// from allocating without bound.
const MAX_ACCESS_BYTES: u64 = 64 << 20;

/// Chunks per segment (one page map addresses 4 GiB).
const SEGMENT_CHUNKS: u64 = MAX_PAGES;

/// Committed stable memory: a size in pages and the chunks holding a
/// non-zero byte (absent chunks read as zeros).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct StableMemory {
    pages: u64,
    /// Segment `s` holds chunks `s * 2^20 ..`; trailing empty segments are
    /// not kept.
    segments: Vec<PageMap>,
}

impl StableMemory {
    /// Rebuilds stable memory from persisted parts (chunks of zeros are
    /// dropped: they read the same as absent ones).
    ///
    /// # Panics
    /// When a chunk is not 4 KiB or lies beyond 64 GiB.
    pub fn from_parts(pages: u64, chunks: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Self {
        StableMemory {
            pages,
            segments: Vec::new(),
        }
        .with_chunks(
            chunks
                .into_iter()
                .map(|(index, bytes)| (index, crate::paging::page_content(&bytes))),
        )
    }

    /// A new version with `updates` applied (`None` makes a chunk zero).
    fn with_chunks(&self, updates: impl IntoIterator<Item = (u64, Option<PageRef>)>) -> Self {
        type Updates = Vec<(u64, Option<PageRef>)>;
        let mut by_segment: BTreeMap<usize, Updates> = BTreeMap::new();
        for (index, content) in updates {
            assert!(
                index < MAX_STABLE_BYTES / CHUNK,
                "stable chunk {index} beyond 64 GiB"
            );
            by_segment
                .entry((index / SEGMENT_CHUNKS) as usize)
                .or_default()
                .push((index % SEGMENT_CHUNKS, content));
        }
        let mut segments = self.segments.clone();
        for (segment, updates) in by_segment {
            if segments.len() <= segment {
                segments.resize(segment + 1, PageMap::default());
            }
            segments[segment] = segments[segment].with_updates(updates);
        }
        while segments.last().is_some_and(PageMap::is_empty) {
            segments.pop();
        }
        StableMemory {
            pages: self.pages,
            segments,
        }
    }

    fn get(&self, index: u64) -> Option<&PageRef> {
        self.segments
            .get((index / SEGMENT_CHUNKS) as usize)?
            .get(index % SEGMENT_CHUNKS)
    }

    /// Size in 64 KiB pages.
    pub fn size_pages(&self) -> u64 {
        self.pages
    }

    /// Chunks that hold data, by chunk index (4 KiB each), in index order.
    pub fn chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.segments.iter().enumerate().flat_map(|(s, map)| {
            map.iter()
                .map(move |(i, page)| (s as u64 * SEGMENT_CHUNKS + i, &page[..]))
        })
    }

    /// Bytes held in memory (stored chunks only).
    pub fn resident_bytes(&self) -> u64 {
        self.segments.iter().map(PageMap::len).sum::<u64>() * CHUNK
    }

    /// Chunks that differ from `older`: `(index, Some(bytes))` for written
    /// or changed chunks, `(index, None)` for chunks that became zero.
    /// Subtrees both versions share are skipped.
    pub fn diff<'a>(&'a self, older: &'a StableMemory) -> Vec<(u64, Option<&'a [u8]>)> {
        let empty = &crate::paging::EMPTY_MAP;
        let mut out = Vec::new();
        for s in 0..self.segments.len().max(older.segments.len()) {
            let now = self.segments.get(s).unwrap_or(empty);
            let before = older.segments.get(s).unwrap_or(empty);
            let base = s as u64 * SEGMENT_CHUNKS;
            out.extend(
                now.diff(before)
                    .into_iter()
                    .map(|(i, page)| (base + i, page.map(|p| &p[..]))),
            );
        }
        out
    }

    /// A hash of the contents: the size and the Merkle hash of every
    /// non-empty segment. Node hashes are cached in the trees that versions
    /// share, so after a message that wrote `k` chunks only their paths are
    /// hashed again. Chunks of zeros are never stored, so the hash depends
    /// on the contents only.
    pub fn hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(b"cellar-stable-v1\0");
        hasher.update(self.pages.to_le_bytes());
        for (s, map) in self.segments.iter().enumerate() {
            if !map.is_empty() {
                hasher.update((s as u64).to_le_bytes());
                hasher.update(map.hash());
            }
        }
        hasher.finalize().into()
    }
}

/// A message's private view of stable memory.
pub(crate) struct StableOverlay {
    base: Arc<StableMemory>,
    pages: u64,
    max_pages: u64,
    dirty: BTreeMap<u64, Box<[u8]>>,
}

impl StableOverlay {
    pub(crate) fn new(base: Arc<StableMemory>, max_bytes: u64) -> Self {
        StableOverlay {
            pages: base.pages,
            base,
            max_pages: max_bytes.min(MAX_STABLE_BYTES) / STABLE_PAGE_SIZE,
            dirty: BTreeMap::new(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.pages
    }

    pub(crate) fn grow(&mut self, new_pages: u64) -> Result<u64, String> {
        let old = self.pages;
        match old.checked_add(new_pages) {
            Some(total) if total <= self.max_pages => {
                self.pages = total;
                Ok(old)
            }
            _ => Err(format!(
                "stable memory cannot grow from {old} by {new_pages} pages: the limit is {} pages",
                self.max_pages
            )),
        }
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), String> {
        if len > MAX_ACCESS_BYTES {
            return Err(format!(
                "stable memory access of {len} bytes exceeds the limit of {MAX_ACCESS_BYTES} per call"
            ));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.pages * STABLE_PAGE_SIZE => Ok(()),
            _ => Err(format!(
                "stable memory access out of bounds: offset {offset}, length {len}, size {} bytes",
                self.pages * STABLE_PAGE_SIZE
            )),
        }
    }

    fn chunk(&self, index: u64) -> Option<&[u8]> {
        self.dirty
            .get(&index)
            .map(|c| &c[..])
            .or_else(|| self.base.get(index).map(|c| &c[..]))
    }

    pub(crate) fn read(&self, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        self.check(offset, len)?;
        let mut out = vec![0u8; len as usize];
        let mut pos = 0u64;
        while pos < len {
            let at = offset + pos;
            let (index, within) = (at / CHUNK, at % CHUNK);
            let n = (CHUNK - within).min(len - pos);
            if let Some(chunk) = self.chunk(index) {
                out[pos as usize..(pos + n) as usize]
                    .copy_from_slice(&chunk[within as usize..(within + n) as usize]);
            }
            pos += n;
        }
        Ok(out)
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        let len = data.len() as u64;
        self.check(offset, len)?;
        let mut pos = 0u64;
        while pos < len {
            let at = offset + pos;
            let (index, within) = (at / CHUNK, at % CHUNK);
            let n = (CHUNK - within).min(len - pos);
            let base = &self.base;
            let chunk = self
                .dirty
                .entry(index)
                .or_insert_with(|| match base.get(index) {
                    Some(c) => c.to_vec().into_boxed_slice(),
                    None => vec![0u8; CHUNK as usize].into_boxed_slice(),
                });
            chunk[within as usize..(within + n) as usize]
                .copy_from_slice(&data[pos as usize..(pos + n) as usize]);
            pos += n;
        }
        Ok(())
    }

    /// Chunks the message wrote (each 4 KiB).
    pub(crate) fn written_chunks(&self) -> u64 {
        self.dirty.len() as u64
    }

    /// The committed stable memory after this message, or `None` when it
    /// changed nothing. Costs in proportion to the chunks written.
    pub(crate) fn into_committed(self) -> Option<Arc<StableMemory>> {
        if self.dirty.is_empty() && self.pages == self.base.pages {
            return None;
        }
        let mut next = self.base.with_chunks(
            self.dirty
                .into_iter()
                .map(|(index, chunk)| (index, crate::paging::page_content(&chunk[..]))),
        );
        next.pages = self.pages;
        Some(Arc::new(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_private_until_committed_and_cross_chunks() {
        let base = Arc::new(StableMemory::default());
        let mut overlay = StableOverlay::new(base.clone(), 1 << 30);
        assert!(overlay.write(0, b"x").is_err());
        assert_eq!(overlay.grow(2).unwrap(), 0);
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        overlay.write(4000, &data).unwrap();
        assert_eq!(overlay.read(4000, 10_000).unwrap(), data);
        assert_eq!(overlay.read(0, 4000).unwrap(), vec![0; 4000]);
        assert!(overlay.read(2 * STABLE_PAGE_SIZE - 1, 2).is_err());
        let committed = overlay.into_committed().unwrap();
        assert_eq!(base.size_pages(), 0);
        assert_eq!(committed.size_pages(), 2);
        let again = StableOverlay::new(committed, 1 << 30);
        assert_eq!(again.read(4000, 10_000).unwrap(), data);
    }

    #[test]
    fn sixty_four_gib_sparse_commits_diffs_and_hashes_by_contents() {
        let mut overlay = StableOverlay::new(Arc::default(), MAX_STABLE_BYTES);
        assert!(
            overlay
                .grow(MAX_STABLE_BYTES / STABLE_PAGE_SIZE + 1)
                .is_err()
        );
        overlay.grow(MAX_STABLE_BYTES / STABLE_PAGE_SIZE).unwrap();
        let top = MAX_STABLE_BYTES - 3;
        overlay.write(top, b"end").unwrap();
        overlay.write(5 << 30, b"middle").unwrap();
        overlay.write(7, b"start").unwrap();
        let v1 = overlay.into_committed().unwrap();
        assert_eq!(v1.resident_bytes(), 3 * CHUNK);
        let indices: Vec<u64> = v1.chunks().map(|(i, _)| i).collect();
        assert_eq!(
            indices,
            [0, (5 << 30) / CHUNK, MAX_STABLE_BYTES / CHUNK - 1]
        );

        // A second version shares what it did not write.
        let mut overlay = StableOverlay::new(v1.clone(), MAX_STABLE_BYTES);
        assert_eq!(overlay.read(top, 3).unwrap(), b"end");
        overlay.write(5 << 30, &[0; 6]).unwrap();
        overlay.write(1 << 20, b"new").unwrap();
        let v2 = overlay.into_committed().unwrap();
        let diff: Vec<(u64, bool)> = v2
            .diff(&v1)
            .into_iter()
            .map(|(i, c)| (i, c.is_some()))
            .collect();
        assert_eq!(
            diff,
            [((1 << 20) / CHUNK, true), ((5 << 30) / CHUNK, false)]
        );
        assert_eq!(v2.resident_bytes(), 3 * CHUNK);

        // The hash follows contents, not history: the same bytes written
        // in another order (and a chunk of zeros stored) hash the same.
        let mut other = StableOverlay::new(Arc::default(), MAX_STABLE_BYTES);
        other.grow(MAX_STABLE_BYTES / STABLE_PAGE_SIZE).unwrap();
        other.write(1 << 20, b"new").unwrap();
        other.write(7, b"start").unwrap();
        other.write(top, b"end").unwrap();
        other.write(9 << 30, &[0; 10]).unwrap();
        let other = other.into_committed().unwrap();
        assert_eq!(other.hash(), v2.hash());
        assert_eq!(*other, *v2);
        assert_ne!(v1.hash(), v2.hash());
        let rebuilt =
            StableMemory::from_parts(v2.size_pages(), v2.chunks().map(|(i, c)| (i, c.to_vec())));
        assert_eq!(rebuilt.hash(), v2.hash());
    }

    #[test]
    fn limits_hold() {
        let mut overlay = StableOverlay::new(Arc::default(), 4 * STABLE_PAGE_SIZE);
        assert!(overlay.grow(5).is_err());
        assert!(overlay.grow(u64::MAX).is_err());
        assert_eq!(overlay.grow(4).unwrap(), 0);
        assert!(overlay.read(0, MAX_ACCESS_BYTES + 1).is_err());
        assert!(overlay.read(u64::MAX, 2).is_err());
    }
}

//! Stable memory: sparse, byte-addressed, kept across upgrades.
//!
//! Committed stable memory is an immutable [`StableMemory`] shared by
//! reference; a message writes into a private [`StableOverlay`] whose chunks
//! replace the committed ones only when the message commits.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Stable memory is sized in pages of 64 KiB.
pub const STABLE_PAGE_SIZE: u64 = 64 << 10;

/// Stored chunks are 4 KiB: the unit of copy-on-write.
const CHUNK: u64 = 4096;

/// Largest single read or write (a bigger one traps): keeps one host call
/// from allocating without bound.
const MAX_ACCESS_BYTES: u64 = 64 << 20;

/// Committed stable memory: a size in pages and the chunks ever written
/// (absent chunks read as zeros).
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct StableMemory {
    pages: u64,
    chunks: BTreeMap<u64, Arc<[u8]>>,
}

impl StableMemory {
    /// Rebuilds stable memory from persisted parts.
    pub fn from_parts(pages: u64, chunks: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Self {
        StableMemory {
            pages,
            chunks: chunks
                .into_iter()
                .map(|(i, c)| (i, Arc::from(c.into_boxed_slice())))
                .collect(),
        }
    }

    /// Size in 64 KiB pages.
    pub fn size_pages(&self) -> u64 {
        self.pages
    }

    /// Chunks that hold data, by chunk index (4 KiB each).
    pub fn chunks(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.chunks.iter().map(|(i, c)| (*i, &c[..]))
    }

    /// Bytes held in memory (written chunks only).
    pub fn resident_bytes(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK
    }

    /// Chunks that differ from `older`: `(index, Some(bytes))` for written
    /// or changed chunks, `(index, None)` for chunks `self` no longer has.
    /// Chunks shared by both versions are compared by reference.
    pub fn diff<'a>(&'a self, older: &'a StableMemory) -> Vec<(u64, Option<&'a [u8]>)> {
        let mut out = Vec::new();
        for (index, chunk) in &self.chunks {
            match older.chunks.get(index) {
                Some(old) if Arc::ptr_eq(old, chunk) || old[..] == chunk[..] => {}
                _ => out.push((*index, Some(&chunk[..]))),
            }
        }
        for index in older.chunks.keys() {
            if !self.chunks.contains_key(index) {
                out.push((*index, None));
            }
        }
        out.sort_by_key(|(i, _)| *i);
        out
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
            max_pages: max_bytes / STABLE_PAGE_SIZE,
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
            .or_else(|| self.base.chunks.get(&index).map(|c| &c[..]))
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
                .or_insert_with(|| match base.chunks.get(&index) {
                    Some(c) => c.to_vec().into_boxed_slice(),
                    None => vec![0u8; CHUNK as usize].into_boxed_slice(),
                });
            chunk[within as usize..(within + n) as usize]
                .copy_from_slice(&data[pos as usize..(pos + n) as usize]);
            pos += n;
        }
        Ok(())
    }

    /// The committed stable memory after this message, or `None` when it
    /// changed nothing.
    pub(crate) fn into_committed(self) -> Option<Arc<StableMemory>> {
        if self.dirty.is_empty() && self.pages == self.base.pages {
            return None;
        }
        let mut next = StableMemory::clone(&self.base);
        next.pages = self.pages;
        for (index, chunk) in self.dirty {
            next.chunks.insert(index, Arc::from(chunk));
        }
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
    fn limits_hold() {
        let mut overlay = StableOverlay::new(Arc::default(), 4 * STABLE_PAGE_SIZE);
        assert!(overlay.grow(5).is_err());
        assert!(overlay.grow(u64::MAX).is_err());
        assert_eq!(overlay.grow(4).unwrap(), 0);
        assert!(overlay.read(0, MAX_ACCESS_BYTES + 1).is_err());
        assert!(overlay.read(u64::MAX, 2).is_err());
    }
}

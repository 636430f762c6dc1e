//! State sync between replicas: the transfer of a checkpoint in chunks.
//!
//! A replica that serves state announces its last checkpoint with a
//! [`Manifest`]: the height, the catch-up package certifying the state
//! there, and the chunks that make it. Each chunk is a piece of at most
//! [`PIECE_BYTES`] of an [`Item`]: a part of the checkpoint (its metadata,
//! or a group of pages of one memory, see [`crate::checkpoint::Part`]) or a
//! module it names. The manifest gives every chunk's SHA-256; the serving
//! replica reads chunks from an LSM snapshot of the checkpoint when they
//! are asked for, so nothing is held in memory but the chunk being sent.
//!
//! A replica that fell behind takes a manifest whose package verifies under
//! the subnet's key, keeps the items it already holds (the parts of its
//! own checkpoint that did not change, the modules it has) and fetches the
//! others from that peer, a few at a time ([`Fetch`]), handing each item
//! to a [`Sink`] as soon as its pieces are in (the node writes it into a
//! staging store). A chunk that does not match its hash, an item the sink
//! refuses, a peer that stops answering, or a state that does not hash to
//! the certified hash fails that peer, and the replica asks the others.
//! Everything a peer sends is untrusted; the certified state hash is the
//! check, made before anything is installed
//! ([`crate::Node::install_staged`]).

use std::collections::{BTreeMap, BTreeSet};

use cellar_consensus::CatchUpPackage;
use cellar_consensus::keys::SubnetPublicKeys;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoint::Part;
use crate::node::Certified;

/// Bytes per chunk at most: a part of pages (256 pages and their indices)
/// fits in one (the transport's messages are at most 8 MiB).
pub const PIECE_BYTES: usize = 2 << 20;

/// Chunks one state may have (64 Ki parts of up to 1 MiB of pages).
pub const MAX_CHUNKS: usize = 64 << 10;

/// Largest item (a module or the metadata) a fetch assembles in memory.
pub const MAX_ITEM_BYTES: u64 = 256 << 20;

/// Chunk requests outstanding at once.
pub const WINDOW: usize = 4;

/// Milliseconds without a chunk before the outstanding ones are asked again.
pub const RETRY_MS: u64 = 3_000;

/// Milliseconds without a chunk before the peer is given up.
pub const GIVE_UP_MS: u64 = 15_000;

/// What state sync transfers, in one or more chunks.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Item {
    /// A part of the checkpoint.
    State(Part),
    /// A module the checkpoint names (canister code, a chunk of one, a
    /// policy), by its SHA-256 (lowercase hex).
    Module(String),
}

impl Item {
    /// Whether the item names itself well: a module by 64 lowercase hex
    /// digits (it becomes a file name).
    fn is_well_formed(&self) -> bool {
        match self {
            Item::State(_) => true,
            Item::Module(hash) => {
                hash.len() == 64
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
        }
    }
}

/// One chunk of a manifest: piece `piece` of `item`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkInfo {
    /// The item it is a piece of.
    pub item: Item,
    /// Its place among the item's pieces.
    pub piece: u32,
    /// SHA-256 of its bytes.
    pub hash: [u8; 32],
    /// Its length.
    pub size: u32,
}

/// Cuts `bytes`, the whole of `item`, into chunks of [`PIECE_BYTES`]
/// (one, empty, for no bytes).
pub fn pieces(item: &Item, bytes: &[u8]) -> Vec<ChunkInfo> {
    let mut chunks: Vec<&[u8]> = bytes.chunks(PIECE_BYTES).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    chunks
        .into_iter()
        .enumerate()
        .map(|(piece, bytes)| ChunkInfo {
            item: item.clone(),
            piece: piece as u32,
            hash: Sha256::digest(bytes).into(),
            size: bytes.len() as u32,
        })
        .collect()
}

/// Piece `piece` of the item whose whole is `bytes`.
pub fn piece_of(bytes: &[u8], piece: u32) -> Option<&[u8]> {
    let start = (piece as usize).checked_mul(PIECE_BYTES)?;
    if start > bytes.len() || (start == bytes.len() && piece > 0) {
        return None;
    }
    Some(&bytes[start..bytes.len().min(start + PIECE_BYTES)])
}

/// What a serving replica announces: the state at `height`, certified by
/// `cup`, is made of these chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The height (round) of the state.
    pub height: u64,
    /// The catch-up package at that height.
    pub cup: CatchUpPackage,
    /// The chunks, ordered by item and piece.
    pub chunks: Vec<ChunkInfo>,
}

impl Manifest {
    /// What the package certifies about the state.
    pub fn certified(&self) -> Certified {
        let c = &self.cup.content;
        Certified {
            height: c.height,
            time_nanos: c.block_time_ms.saturating_mul(1_000_000),
            state_hash: c.state_hash.0,
        }
    }

    /// Bytes in all.
    pub fn size(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.size)).sum()
    }

    /// Checks what can be checked before fetching: the package verifies
    /// under the subnet's key, is at the manifest's height, above `round`,
    /// and the chunks are a well-formed list: one metadata part, items in
    /// order and named well, each cut into full pieces but its last, none
    /// larger than an item may be.
    pub fn check(&self, keys: &SubnetPublicKeys, round: u64) -> Result<(), String> {
        if self.cup.content.height != self.height {
            return Err("the catch-up package is not at the state's height".into());
        }
        if self.height <= round {
            return Err(format!("the state (height {}) is not ahead", self.height));
        }
        if self.chunks.is_empty() || self.chunks.len() > MAX_CHUNKS {
            return Err(format!("{} chunks", self.chunks.len()));
        }
        let mut metas = 0;
        let mut item_bytes = 0u64;
        for (i, chunk) in self.chunks.iter().enumerate() {
            let first = i == 0 || self.chunks[i - 1].item != chunk.item;
            let last = self.chunks.get(i + 1).is_none_or(|c| c.item != chunk.item);
            let expected_piece = if first {
                0
            } else {
                self.chunks[i - 1].piece + 1
            };
            let in_order = i == 0 || self.chunks[i - 1].item <= chunk.item;
            let full = last || chunk.size as usize == PIECE_BYTES;
            if !in_order || chunk.piece != expected_piece || !full {
                return Err("the chunk list is not in order or its pieces are not whole".into());
            }
            if chunk.size as usize > PIECE_BYTES || !chunk.item.is_well_formed() {
                return Err("a chunk is too large or names its item badly".into());
            }
            item_bytes = if first { 0 } else { item_bytes } + u64::from(chunk.size);
            if item_bytes > MAX_ITEM_BYTES {
                return Err("an item is too large".into());
            }
            if first && chunk.item == Item::State(Part::Meta) {
                metas += 1;
            }
        }
        if metas != 1 {
            return Err("the manifest does not have one metadata part".into());
        }
        self.cup
            .verify(keys)
            .map_err(|e| format!("the catch-up package does not verify: {e}"))
    }

    /// The items it names, each with its chunk indices.
    fn items(&self) -> BTreeMap<&Item, Vec<u32>> {
        let mut items: BTreeMap<&Item, Vec<u32>> = BTreeMap::new();
        for (index, chunk) in self.chunks.iter().enumerate() {
            items.entry(&chunk.item).or_default().push(index as u32);
        }
        items
    }
}

/// Where a fetch puts each item once all its pieces are in.
pub trait Sink {
    /// Takes `item`, whole; an error fails the peer that sent it.
    fn put(&mut self, item: &Item, bytes: &[u8]) -> anyhow::Result<()>;
}

/// What a chunk did to a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not for this fetch (another peer, height or a chunk already held).
    Ignored,
    /// Taken; ask for these chunks next.
    Request(Vec<u32>),
    /// The last chunk: every item is in the sink.
    Done,
    /// The peer sent a chunk that does not match its hash, or an item the
    /// sink refused: give it up.
    Bad(String),
}

/// Fetching one manifest's chunks from one peer into a sink.
pub struct Fetch<S> {
    /// The peer asked.
    pub peer: u32,
    /// Its manifest (checked).
    pub manifest: Manifest,
    sink: S,
    /// Chunks held (their item is in the sink, or they wait for the rest
    /// of their item).
    held: Vec<bool>,
    /// Pieces of items not yet complete, by item.
    partial: BTreeMap<Item, BTreeMap<u32, Vec<u8>>>,
    /// Chunks asked for and not received, by index.
    outstanding: BTreeSet<u32>,
    next: u32,
    received: usize,
    /// When the fetch started, ms.
    pub started_ms: u64,
    /// When a chunk last arrived (or the fetch started), ms.
    pub last_progress_ms: u64,
    last_retry_ms: u64,
}

impl<S: Sink> Fetch<S> {
    /// Starts fetching `manifest` (checked by the caller) from `peer` into
    /// `sink`, which already holds the items in `held`; returns the chunks
    /// to ask for first (none: everything is held).
    pub fn new(
        peer: u32,
        manifest: Manifest,
        held: &BTreeSet<Item>,
        sink: S,
        now_ms: u64,
    ) -> (Self, Vec<u32>) {
        let held: Vec<bool> = manifest
            .chunks
            .iter()
            .map(|c| held.contains(&c.item))
            .collect();
        let received = held.iter().filter(|h| **h).count();
        let mut fetch = Fetch {
            peer,
            manifest,
            sink,
            held,
            partial: BTreeMap::new(),
            outstanding: BTreeSet::new(),
            next: 0,
            received,
            started_ms: now_ms,
            last_progress_ms: now_ms,
            last_retry_ms: now_ms,
        };
        let first = fetch.more();
        (fetch, first)
    }

    /// Chunks still to ask for, up to the window (chunks already held are
    /// skipped: a resumed fetch asks only for what it lacks).
    fn more(&mut self) -> Vec<u32> {
        let mut asked = Vec::new();
        while self.outstanding.len() < WINDOW && (self.next as usize) < self.held.len() {
            if !self.held[self.next as usize] {
                self.outstanding.insert(self.next);
                asked.push(self.next);
            }
            self.next += 1;
        }
        asked
    }

    /// Whether every chunk is held.
    pub fn is_done(&self) -> bool {
        self.received == self.held.len()
    }

    /// Whether `manifest` announces the same state as this fetch's (same
    /// height and chunks), so that the items held can be completed from
    /// whoever sent it.
    pub fn same_image(&self, manifest: &Manifest) -> bool {
        self.manifest.height == manifest.height && self.manifest.chunks == manifest.chunks
    }

    /// Goes on with another peer that announced the same state
    /// ([`Fetch::same_image`]): keeps every chunk received (each was checked
    /// against its hash) and returns the missing ones to ask `peer` for.
    pub fn resume(&mut self, peer: u32, now_ms: u64) -> Vec<u32> {
        self.peer = peer;
        self.outstanding.clear();
        self.next = 0;
        self.last_progress_ms = now_ms;
        self.last_retry_ms = now_ms;
        self.more()
    }

    /// Chunk `index` of the state at `height` from `from`.
    pub fn on_chunk(
        &mut self,
        from: u32,
        height: u64,
        index: u32,
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Progress {
        if from != self.peer || height != self.manifest.height {
            return Progress::Ignored;
        }
        let Some(info) = self.manifest.chunks.get(index as usize) else {
            return Progress::Bad(format!("chunk {index} is not in the manifest"));
        };
        if self.held[index as usize] {
            return Progress::Ignored;
        }
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != info.hash {
            return Progress::Bad(format!("chunk {index} does not match its hash"));
        }
        let item = info.item.clone();
        self.held[index as usize] = true;
        self.outstanding.remove(&index);
        self.received += 1;
        self.last_progress_ms = now_ms;
        let pieces = self.manifest.items()[&item].len();
        let partial = self.partial.entry(item.clone()).or_default();
        partial.insert(info.piece, bytes);
        if partial.len() == pieces {
            let whole: Vec<u8> = self
                .partial
                .remove(&item)
                .expect("just inserted")
                .into_values()
                .flatten()
                .collect();
            if let Err(e) = self.sink.put(&item, &whole) {
                return Progress::Bad(format!("{item:?} refused: {e:#}"));
            }
        }
        if self.is_done() {
            Progress::Done
        } else {
            Progress::Request(self.more())
        }
    }

    /// On a clock tick: the chunks to ask for again (nothing came for a
    /// while), or `Err` when the peer should be given up.
    pub fn on_tick(&mut self, now_ms: u64) -> Result<Vec<u32>, String> {
        if now_ms >= self.last_progress_ms + GIVE_UP_MS {
            return Err(format!("no chunk for {} s", GIVE_UP_MS / 1000));
        }
        if now_ms >= self.last_progress_ms.max(self.last_retry_ms) + RETRY_MS {
            self.last_retry_ms = now_ms;
            return Ok(self.outstanding.iter().copied().collect());
        }
        Ok(Vec::new())
    }

    /// Chunks held so far, and in all.
    pub fn progress(&self) -> (usize, usize) {
        (self.received, self.held.len())
    }

    /// The manifest and the sink, once the fetch is over.
    pub fn into_parts(self) -> (Manifest, S) {
        (self.manifest, self.sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_consensus::Hash32;
    use cellar_consensus::keys::deal_subnet;

    /// A sink that keeps what it is given.
    #[derive(Default)]
    struct Kept(BTreeMap<Item, Vec<u8>>);

    impl Sink for Kept {
        fn put(&mut self, item: &Item, bytes: &[u8]) -> anyhow::Result<()> {
            anyhow::ensure!(bytes != b"refuse me", "refused");
            self.0.insert(item.clone(), bytes.to_vec());
            Ok(())
        }
    }

    /// A state to serve: items and their bytes.
    struct Served {
        manifest: Manifest,
        items: BTreeMap<Item, Vec<u8>>,
    }

    impl Served {
        fn chunk(&self, index: u32) -> Vec<u8> {
            let info = &self.manifest.chunks[index as usize];
            piece_of(&self.items[&info.item], info.piece)
                .unwrap()
                .to_vec()
        }
    }

    fn module_hash(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    /// A state at `height`: metadata, `parts` parts of pages, and a module
    /// of `module_bytes`.
    fn served(height: u64, parts: u64, module_bytes: usize) -> (SubnetPublicKeys, Served) {
        let dealing = deal_subnet(b"sync", 4).unwrap();
        let mut cup = cellar_consensus::catch_up::genesis(&dealing, 5, Hash32([3; 32])).unwrap();
        cup.content.height = height;
        // Re-sign the moved package as the subnet would.
        let msg = cup.content.message();
        let shares: Vec<_> = dealing
            .secrets
            .iter()
            .map(|s| (s.index, s.catch_up_share.sign(&msg)))
            .collect();
        cup.signature = dealing.public.catch_up.combine(&msg, &shares).unwrap();
        let mut items = BTreeMap::new();
        items.insert(Item::State(Part::Meta), b"{}".to_vec());
        for group in 0..parts {
            let part = Part::Entries {
                stable: false,
                prefix: vec![1, 2],
                group,
            };
            items.insert(Item::State(part), vec![group as u8; 1000]);
        }
        let module = (0..module_bytes).map(|i| (i * 7) as u8).collect();
        items.insert(Item::Module(module_hash(1)), module);
        let chunks = items.iter().flat_map(|(i, b)| pieces(i, b)).collect();
        let manifest = Manifest {
            height,
            cup,
            chunks,
        };
        (dealing.public.clone(), Served { manifest, items })
    }

    /// Runs a fetch against `served`, holding `held` already, passing each
    /// answer through `tamper`; the number of chunks asked for.
    fn run(
        served: &Served,
        held: &BTreeSet<Item>,
        mut tamper: impl FnMut(u32, Vec<u8>) -> Vec<u8>,
    ) -> Result<(Kept, usize), String> {
        let (mut fetch, mut asked) =
            Fetch::new(1, served.manifest.clone(), held, Kept::default(), 0);
        let mut count = 0;
        if fetch.is_done() {
            return Ok((fetch.into_parts().1, 0));
        }
        loop {
            let mut next = Vec::new();
            for index in asked {
                count += 1;
                let bytes = tamper(index, served.chunk(index));
                match fetch.on_chunk(1, served.manifest.height, index, bytes, 1) {
                    Progress::Request(more) => next.extend(more),
                    Progress::Done => return Ok((fetch.into_parts().1, count)),
                    Progress::Bad(why) => return Err(why),
                    Progress::Ignored => {}
                }
            }
            asked = next;
        }
    }

    #[test]
    fn a_state_travels_in_chunks_and_arrives_whole() {
        let (keys, served) = served(40, 5, 2 * PIECE_BYTES + 17);
        // Meta, five parts, a module in three pieces.
        assert_eq!(served.manifest.chunks.len(), 9);
        served.manifest.check(&keys, 39).unwrap();
        let (kept, asked) = run(&served, &BTreeSet::new(), |_, b| b).unwrap();
        assert_eq!(kept.0, served.items);
        assert_eq!(asked, 9);
        assert_eq!(served.manifest.certified().height, 40);
        assert_eq!(served.manifest.certified().time_nanos, 5_000_000);
    }

    /// Items the fetching side holds are not asked for.
    #[test]
    fn held_items_are_not_fetched() {
        let (_, served) = served(40, 5, 2 * PIECE_BYTES + 17);
        let module = Item::Module(module_hash(1));
        let part = served.manifest.chunks[2].item.clone();
        let held = BTreeSet::from([module.clone(), part.clone()]);
        let (kept, asked) = run(&served, &held, |_, b| b).unwrap();
        assert_eq!(asked, 5, "meta and four parts");
        assert!(!kept.0.contains_key(&module) && !kept.0.contains_key(&part));
        let all: BTreeSet<Item> = served.items.keys().cloned().collect();
        assert_eq!(run(&served, &all, |_, b| b).unwrap().1, 0);
    }

    #[test]
    fn a_corrupted_chunk_or_refused_item_fails_the_peer() {
        let (_, served) = served(40, 3, 10);
        let err = run(&served, &BTreeSet::new(), |i, mut b| {
            if i == 1 {
                b[100] ^= 1;
            }
            b
        })
        .err()
        .unwrap();
        assert!(err.contains("chunk 1 does not match"), "{err}");
        // A chunk that matches its hash but that the sink refuses.
        let (_, mut bad) = self::served(40, 3, 10);
        let item = bad.manifest.chunks[2].item.clone();
        bad.items.insert(item.clone(), b"refuse me".to_vec());
        bad.manifest.chunks[2] = pieces(&item, b"refuse me").remove(0);
        let err = run(&bad, &BTreeSet::new(), |_, b| b).err().unwrap();
        assert!(err.contains("refused"), "{err}");
        // Chunks from another peer or height, or twice, change nothing.
        let (mut fetch, _) = Fetch::new(
            1,
            served.manifest.clone(),
            &BTreeSet::new(),
            Kept::default(),
            0,
        );
        let chunk = served.chunk(0);
        assert_eq!(
            fetch.on_chunk(2, 40, 0, chunk.clone(), 1),
            Progress::Ignored
        );
        assert_eq!(
            fetch.on_chunk(1, 39, 0, chunk.clone(), 1),
            Progress::Ignored
        );
        assert!(matches!(
            fetch.on_chunk(1, 40, 0, chunk.clone(), 1),
            Progress::Request(_)
        ));
        assert_eq!(fetch.on_chunk(1, 40, 0, chunk, 1), Progress::Ignored);
        assert!(matches!(
            fetch.on_chunk(1, 40, 99, vec![], 1),
            Progress::Bad(_)
        ));
    }

    #[test]
    fn manifests_that_cannot_be_right_are_refused() {
        let (keys, served) = served(40, 2, PIECE_BYTES + 1);
        let m = &served.manifest;
        m.check(&keys, 0).unwrap();
        assert!(m.check(&keys, 40).is_err(), "not ahead");
        let mut forged = m.clone();
        forged.cup.content.state_hash = Hash32([9; 32]);
        assert!(forged.check(&keys, 0).unwrap_err().contains("verify"));
        let mut moved = m.clone();
        moved.height = 50;
        assert!(moved.check(&keys, 0).is_err());
        let other = deal_subnet(b"other", 4).unwrap();
        assert!(m.check(&other.public, 0).is_err(), "another subnet's key");
        let broken = |edit: &dyn Fn(&mut Vec<ChunkInfo>), why: &str| {
            let mut bad = m.clone();
            edit(&mut bad.chunks);
            let err = bad.check(&keys, 0).unwrap_err();
            assert!(err.contains(why), "{why}: {err}");
        };
        broken(&|c| c.clear(), "0 chunks");
        broken(&|c| c.swap(0, 1), "not in order");
        broken(&|c| c.remove(0).piece = 0, "one metadata");
        broken(&|c| c.last_mut().unwrap().piece = 2, "not in order");
        broken(
            &|c| {
                let n = c.len();
                c[n - 2].size -= 1
            },
            "not whole",
        );
        broken(
            &|c| {
                for chunk in c.iter_mut() {
                    if let Item::Module(hash) = &mut chunk.item {
                        *hash = "../../etc/passwd".into();
                    }
                }
            },
            "badly",
        );
        broken(
            &|c| {
                let module = c.pop().unwrap();
                let big = (0..=MAX_ITEM_BYTES / PIECE_BYTES as u64).map(|piece| ChunkInfo {
                    piece: piece as u32,
                    size: PIECE_BYTES as u32,
                    ..module.clone()
                });
                c.truncate(c.len() - 1);
                c.extend(big);
            },
            "too large",
        );
    }

    #[test]
    fn a_fetch_resumes_from_another_peer_with_the_same_state() {
        let (_, served) = served(40, 8, 10);
        let n = served.manifest.chunks.len() as u32;
        let none = BTreeSet::new();
        let (mut fetch, asked) = Fetch::new(1, served.manifest.clone(), &none, Kept::default(), 0);
        // Peer 1 sends two chunks, then falls silent and is given up.
        for &index in &asked[..2] {
            assert!(matches!(
                fetch.on_chunk(1, 40, index, served.chunk(index), 1),
                Progress::Request(_)
            ));
        }
        assert!(fetch.on_tick(GIVE_UP_MS + 1).is_err());
        assert_eq!(fetch.progress(), (2, n as usize));
        // Another state (another height) is not resumed.
        let (_, other) = self::served(41, 8, 10);
        assert!(!fetch.same_image(&other.manifest));
        // Peer 2 announces the same state: only the missing chunks are
        // asked for, and chunks from peer 1 are no longer taken.
        assert!(fetch.same_image(&served.manifest));
        let mut asked = fetch.resume(2, GIVE_UP_MS + 2);
        assert!(!asked.contains(&0) && !asked.contains(&1));
        assert_eq!(fetch.on_tick(GIVE_UP_MS + 3), Ok(vec![]));
        assert_eq!(
            fetch.on_chunk(1, 40, asked[0], served.chunk(asked[0]), GIVE_UP_MS + 3),
            Progress::Ignored
        );
        let mut fetched = 0;
        'done: loop {
            let mut next = Vec::new();
            for index in asked {
                fetched += 1;
                match fetch.on_chunk(2, 40, index, served.chunk(index), GIVE_UP_MS + 4) {
                    Progress::Request(more) => next.extend(more),
                    Progress::Done => break 'done,
                    other => panic!("{other:?}"),
                }
            }
            asked = next;
        }
        assert_eq!(fetched, n - 2, "held chunks are not fetched again");
        assert_eq!(fetch.into_parts().1.0, served.items);
    }

    #[test]
    fn a_silent_peer_is_asked_again_then_given_up() {
        let (_, served) = served(40, 0, 10);
        let none = BTreeSet::new();
        let (mut fetch, asked) = Fetch::new(1, served.manifest.clone(), &none, Kept::default(), 0);
        assert_eq!(asked, vec![0, 1]);
        assert_eq!(fetch.on_tick(RETRY_MS - 1), Ok(vec![]));
        assert_eq!(fetch.on_tick(RETRY_MS), Ok(vec![0, 1]));
        assert_eq!(fetch.on_tick(RETRY_MS + 1), Ok(vec![]));
        assert!(fetch.on_tick(GIVE_UP_MS).is_err());
    }

    #[test]
    fn pieces_cut_and_join() {
        let item = Item::Module(module_hash(2));
        let bytes: Vec<u8> = (0..2 * PIECE_BYTES + 5).map(|i| i as u8).collect();
        let chunks = pieces(&item, &bytes);
        assert_eq!(chunks.len(), 3);
        let joined: Vec<u8> = (0..3)
            .flat_map(|p| piece_of(&bytes, p).unwrap().to_vec())
            .collect();
        assert_eq!(joined, bytes);
        assert!(piece_of(&bytes, 3).is_none());
        assert_eq!(pieces(&item, &[]).len(), 1);
        assert_eq!(piece_of(&[], 0), Some(&[][..]));
        assert!(piece_of(&[], 1).is_none());
    }
}

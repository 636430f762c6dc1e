//! State sync between replicas: the transfer of a checkpoint in chunks.
//!
//! A replica that serves state announces its last checkpoint with a
//! [`Manifest`]: the height, the catch-up package certifying the state
//! there, and the chunks that make it. Each chunk is a piece of at most
//! [`PIECE_BYTES`] (2 MiB) of an [`Item`]: a part of the checkpoint (its
//! metadata, or a group of pages of one memory, see
//! [`cellar_state::checkpoint::Part`]) or a module it names. The manifest
//! gives every chunk's SHA-256; [`Manifest::check`] refuses lists out of
//! order, with a missing or second metadata part, cut pieces, module names
//! that are not 64 hex digits, or items over [`MAX_ITEM_BYTES`] (256 MiB).
//! The serving replica reads chunks from an LSM snapshot of the checkpoint
//! when they are asked for, so nothing is held in memory but the chunk
//! being sent.
//!
//! A replica that fell behind takes a manifest whose package verifies under
//! the subnet's key and fetches its state with a [`Fetch`]: one manifest
//! from every peer that announced it, into a [`Sink`]. The items the
//! fetching side already holds (the parts of its own checkpoint that did
//! not change, the modules it has) are skipped. Each peer has up to
//! [`WINDOW`] (4) chunk requests outstanding and is asked for the next
//! chunk nobody is asked for when one of its chunks arrives, so a faster
//! peer sends more. Each item goes to the sink as soon as its pieces are in
//! (the node writes it into a staging store). A peer's chunks are asked
//! again after [`RETRY_MS`] (3 s) of silence, and the peer is dropped after
//! [`GIVE_UP_MS`] (15 s) or when it sends a chunk that does not match its
//! hash, its chunks going to the others. An item the sink refuses fails the
//! state, whoever sent it, and so does a state that does not hash to the
//! certified hash: every peer that announced it fails, and the replica asks
//! the others. Everything a peer sends is untrusted; the certified state
//! hash ([`Certified`]) is the check, made before anything is installed
//! ([`crate::Node::install_staged`]).
//!
//! Tested here: a corrupted chunk, a refused item, held items, malformed
//! manifests, a forged or foreign catch-up package, a silent peer and a
//! resumed fetch. How replicas ask for and serve manifests and chunks is in
//! `replica.rs`.

use std::collections::{BTreeMap, BTreeSet};

use cellar_consensus::CatchUpPackage;
use cellar_consensus::keys::SubnetPublicKeys;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use cellar_state::checkpoint::Part;

/// What a catch-up package certifies about the state at its height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Certified {
    /// The height (the round of the state).
    pub height: u64,
    /// The round's time: the block's time (ns).
    pub time_nanos: u64,
    /// The state hash (`Node::state_hash`).
    pub state_hash: [u8; 32],
}

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
    /// Takes `item`, whole; an error fails the state (every chunk of the
    /// item matched its hash, so the manifest itself is wrong).
    fn put(&mut self, item: &Item, bytes: &[u8]) -> anyhow::Result<()>;
}

/// What a chunk did to a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not for this fetch (a peer not fetched from, another height, or a
    /// chunk already held).
    Ignored,
    /// Taken; ask the peer that sent it for these chunks next.
    Request(Vec<u32>),
    /// The last chunk: every item is in the sink.
    Done,
    /// The peer sent a chunk that does not match its hash or is not in the
    /// manifest: it is dropped from the fetch, whose other peers take over
    /// the chunks it was asked for.
    BadPeer(String),
    /// The sink refused an item whose chunks all matched their hashes: the
    /// announced state is wrong, whoever sent it.
    BadState(String),
}

/// What a clock tick did to a fetch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tick {
    /// Chunks to ask of each peer: again (nothing came for a while), or
    /// newly (its window has room for chunks nobody is asked for).
    pub ask: Vec<(u32, Vec<u32>)>,
    /// Peers given up (silent too long), with the reason; their chunks go
    /// to the others.
    pub dropped: Vec<(u32, String)>,
}

/// One peer a fetch asks for chunks.
#[derive(Debug)]
struct Source {
    /// Chunks asked of it and not received.
    outstanding: BTreeSet<u32>,
    /// When it last sent a chunk (or joined), ms.
    last_progress_ms: u64,
    /// When its outstanding chunks were last asked again, ms.
    last_retry_ms: u64,
    /// Chunks it sent that were taken.
    sent: usize,
}

impl Source {
    fn new(now_ms: u64) -> Source {
        Source {
            outstanding: BTreeSet::new(),
            last_progress_ms: now_ms,
            last_retry_ms: now_ms,
            sent: 0,
        }
    }
}

/// Fetching one manifest's chunks into a sink from every peer that
/// announced it, each asked for at most [`WINDOW`] chunks at a time: a peer
/// that answers faster is asked more often, one that sends a bad chunk or
/// falls silent is dropped and the others take over its chunks.
pub struct Fetch<S> {
    /// Its manifest (checked).
    pub manifest: Manifest,
    sink: S,
    /// Chunks held (their item is in the sink, or they wait for the rest
    /// of their item).
    held: Vec<bool>,
    /// Pieces of items not yet complete, by item.
    partial: BTreeMap<Item, BTreeMap<u32, Vec<u8>>>,
    /// Chunks neither held nor asked of any peer, lowest first.
    unasked: BTreeSet<u32>,
    /// The peers fetched from.
    sources: BTreeMap<u32, Source>,
    received: usize,
    /// When the fetch started, ms.
    pub started_ms: u64,
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
        let unasked = (0..held.len() as u32)
            .filter(|&i| !held[i as usize])
            .collect();
        let mut fetch = Fetch {
            manifest,
            sink,
            held,
            partial: BTreeMap::new(),
            unasked,
            sources: BTreeMap::new(),
            received,
            started_ms: now_ms,
        };
        let first = fetch.add_peer(peer, now_ms);
        (fetch, first)
    }

    /// Chunks nobody is asked for, up to `peer`'s window, now asked of it
    /// (a peer that had nothing to send starts its silence count now).
    fn more(&mut self, peer: u32, now_ms: u64) -> Vec<u32> {
        let Some(source) = self.sources.get_mut(&peer) else {
            return Vec::new();
        };
        if source.outstanding.is_empty() {
            source.last_progress_ms = now_ms;
        }
        let mut asked = Vec::new();
        while source.outstanding.len() < WINDOW {
            let Some(index) = self.unasked.pop_first() else {
                break;
            };
            source.outstanding.insert(index);
            asked.push(index);
        }
        asked
    }

    /// Whether every chunk is held.
    pub fn is_done(&self) -> bool {
        self.received == self.held.len()
    }

    /// Whether `manifest` announces the same state as this fetch's (same
    /// height, package and chunks), so that its sender can help fetch it.
    pub fn same_image(&self, manifest: &Manifest) -> bool {
        self.manifest == *manifest
    }

    /// Adds `peer`, which announced the same state
    /// ([`Fetch::same_image`]); returns the chunks to ask it for (none if
    /// it is already a source). A fetch left without peers goes on this way
    /// too, keeping every chunk received (each was checked against its
    /// hash).
    pub fn add_peer(&mut self, peer: u32, now_ms: u64) -> Vec<u32> {
        if self.sources.contains_key(&peer) {
            return Vec::new();
        }
        self.sources.insert(peer, Source::new(now_ms));
        self.more(peer, now_ms)
    }

    /// Drops `peer`: the chunks asked of it are asked of the others as their
    /// windows free up.
    pub fn drop_peer(&mut self, peer: u32) {
        if let Some(source) = self.sources.remove(&peer) {
            self.unasked.extend(source.outstanding);
        }
    }

    /// The peers fetched from.
    pub fn peers(&self) -> Vec<u32> {
        self.sources.keys().copied().collect()
    }

    /// Chunks each peer sent that were taken (a peer dropped is not
    /// listed).
    pub fn sent_by_peer(&self) -> Vec<(u32, usize)> {
        self.sources.iter().map(|(&p, s)| (p, s.sent)).collect()
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
        if !self.sources.contains_key(&from) || height != self.manifest.height {
            return Progress::Ignored;
        }
        let Some(info) = self.manifest.chunks.get(index as usize) else {
            self.drop_peer(from);
            return Progress::BadPeer(format!("chunk {index} is not in the manifest"));
        };
        if self.held[index as usize] {
            return Progress::Ignored;
        }
        if <[u8; 32]>::from(Sha256::digest(&bytes)) != info.hash {
            self.drop_peer(from);
            return Progress::BadPeer(format!("chunk {index} does not match its hash"));
        }
        let item = info.item.clone();
        self.held[index as usize] = true;
        // Asked of this peer, or of another one (asked again after a
        // drop), or of nobody yet: it is held now wherever it was.
        self.unasked.remove(&index);
        for source in self.sources.values_mut() {
            source.outstanding.remove(&index);
        }
        let source = self.sources.get_mut(&from).expect("checked above");
        source.last_progress_ms = now_ms;
        source.sent += 1;
        self.received += 1;
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
                return Progress::BadState(format!("{item:?} refused: {e:#}"));
            }
        }
        if self.is_done() {
            Progress::Done
        } else {
            Progress::Request(self.more(from, now_ms))
        }
    }

    /// On a clock tick: gives up peers that sent nothing of what they were
    /// asked for [`GIVE_UP_MS`], asks again
    /// for chunks that did not come for [`RETRY_MS`], and fills the windows
    /// of peers with room (chunks of a dropped peer).
    pub fn on_tick(&mut self, now_ms: u64) -> Tick {
        let mut tick = Tick::default();
        let silent: Vec<u32> = self
            .sources
            .iter()
            .filter(|(_, s)| !s.outstanding.is_empty() && now_ms >= s.last_progress_ms + GIVE_UP_MS)
            .map(|(&p, _)| p)
            .collect();
        for peer in silent {
            self.drop_peer(peer);
            tick.dropped
                .push((peer, format!("no chunk for {} s", GIVE_UP_MS / 1000)));
        }
        let peers = self.peers();
        for peer in peers {
            let source = self.sources.get_mut(&peer).expect("listed");
            let mut ask = Vec::new();
            if !source.outstanding.is_empty()
                && now_ms >= source.last_progress_ms.max(source.last_retry_ms) + RETRY_MS
            {
                source.last_retry_ms = now_ms;
                ask.extend(source.outstanding.iter().copied());
            }
            ask.extend(self.more(peer, now_ms));
            if !ask.is_empty() {
                tick.ask.push((peer, ask));
            }
        }
        tick
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
                    Progress::BadPeer(why) | Progress::BadState(why) => return Err(why),
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
            Progress::BadPeer(_)
        ));
        assert!(fetch.peers().is_empty(), "the peer is dropped");
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
        let tick = fetch.on_tick(GIVE_UP_MS + 1);
        assert_eq!(tick.dropped.len(), 1);
        assert!(tick.ask.is_empty());
        assert!(fetch.peers().is_empty());
        assert_eq!(fetch.progress(), (2, n as usize));
        // Another state (another height) is not resumed.
        let (_, other) = self::served(41, 8, 10);
        assert!(!fetch.same_image(&other.manifest));
        // Peer 2 announces the same state: only the missing chunks are
        // asked for, and chunks from peer 1 are no longer taken.
        assert!(fetch.same_image(&served.manifest));
        let mut asked = fetch.add_peer(2, GIVE_UP_MS + 2);
        assert!(!asked.contains(&0) && !asked.contains(&1));
        assert!(
            fetch.add_peer(2, GIVE_UP_MS + 2).is_empty(),
            "already a peer"
        );
        assert_eq!(fetch.on_tick(GIVE_UP_MS + 3), Tick::default());
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

    /// Three peers announce the same state: each is asked for different
    /// chunks; one sends a corrupted chunk and is dropped, one answers only
    /// after its chunks were handed to the others; the state arrives whole
    /// and every chunk is taken once.
    #[test]
    fn several_peers_share_a_fetch_and_a_bad_one_is_dropped() {
        let (_, served) = served(40, 30, 10);
        let n = served.manifest.chunks.len();
        let none = BTreeSet::new();
        let (mut fetch, first) = Fetch::new(1, served.manifest.clone(), &none, Kept::default(), 0);
        let mut asks: BTreeMap<u32, Vec<u32>> = BTreeMap::from([(1, first)]);
        asks.insert(2, fetch.add_peer(2, 0));
        asks.insert(3, fetch.add_peer(3, 0));
        let all: Vec<u32> = asks.values().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        assert_eq!(all.len(), 3 * WINDOW, "a window each");
        assert_eq!(distinct.len(), all.len(), "no chunk asked of two peers");
        // Peer 3 corrupts its first chunk: dropped, its chunks go back.
        let bad = asks.remove(&3).unwrap()[0];
        let mut corrupted = served.chunk(bad);
        corrupted[0] ^= 1;
        assert!(matches!(
            fetch.on_chunk(3, 40, bad, corrupted, 1),
            Progress::BadPeer(why) if why.contains("does not match")
        ));
        assert_eq!(fetch.peers(), vec![1, 2]);
        // Peer 1 answers at every turn, peer 2 every other turn.
        let mut taken = 0;
        let mut turn = 0u64;
        'done: loop {
            turn += 1;
            for peer in [1u32, 2] {
                if peer == 2 && turn % 2 == 1 {
                    continue;
                }
                let asked = std::mem::take(asks.get_mut(&peer).unwrap());
                for index in asked {
                    match fetch.on_chunk(peer, 40, index, served.chunk(index), turn) {
                        Progress::Request(more) => asks.get_mut(&peer).unwrap().extend(more),
                        Progress::Done => {
                            taken += 1;
                            break 'done;
                        }
                        Progress::Ignored => {}
                        other => panic!("{other:?}"),
                    }
                    taken += 1;
                }
            }
            // Windows with room take the dropped peer's chunks.
            for (peer, more) in fetch.on_tick(turn).ask {
                asks.get_mut(&peer).unwrap().extend(more);
            }
            assert!(turn < 1000, "the fetch does not end");
        }
        assert_eq!(taken, n, "every chunk taken once");
        let sent: BTreeMap<u32, usize> = fetch.sent_by_peer().into_iter().collect();
        assert!(sent[&1] > sent[&2] && sent[&2] > 0, "{sent:?}");
        assert_eq!(fetch.into_parts().1.0, served.items);
    }

    #[test]
    fn a_silent_peer_is_asked_again_then_given_up() {
        let (_, served) = served(40, 0, 10);
        let none = BTreeSet::new();
        let (mut fetch, asked) = Fetch::new(1, served.manifest.clone(), &none, Kept::default(), 0);
        assert_eq!(asked, vec![0, 1]);
        assert_eq!(fetch.on_tick(RETRY_MS - 1), Tick::default());
        assert_eq!(fetch.on_tick(RETRY_MS).ask, vec![(1, vec![0, 1])]);
        assert_eq!(fetch.on_tick(RETRY_MS + 1), Tick::default());
        let tick = fetch.on_tick(GIVE_UP_MS);
        assert_eq!(tick.dropped.len(), 1);
        assert!(fetch.peers().is_empty());
        // A peer with nothing asked of it is not silent.
        let (mut fetch, _) = Fetch::new(1, served.manifest.clone(), &none, Kept::default(), 0);
        assert!(fetch.add_peer(2, 0).is_empty(), "peer 1 has every chunk");
        let tick = fetch.on_tick(GIVE_UP_MS);
        assert_eq!(tick.dropped.len(), 1);
        assert_eq!(tick.ask, vec![(2, vec![0, 1])], "peer 2 takes over");
        assert_eq!(fetch.peers(), vec![2]);
        assert!(fetch.on_tick(2 * GIVE_UP_MS - 1).dropped.is_empty());
        assert_eq!(fetch.on_tick(2 * GIVE_UP_MS).dropped.len(), 1);
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

//! State sync between replicas: the transfer of a checkpoint in chunks.
//!
//! A replica that serves state encodes its last checkpoint with the modules
//! it names ([`SyncImage`], postcard) once per checkpoint and cuts it into
//! chunks of [`CHUNK_BYTES`] ([`Served`]); its [`Manifest`] names the height,
//! the catch-up package certifying the state there, and the SHA-256 of every
//! chunk and of the whole. A replica that fell behind takes a manifest whose
//! package verifies under the subnet's key and fetches the chunks from that
//! peer, a few at a time ([`Fetch`]): a chunk that does not match its hash,
//! a peer that stops answering, an image that does not decode or whose
//! state does not hash to the certified hash fails that peer, and the
//! replica asks the others. Everything a peer sends is untrusted; the
//! certified state hash is the check, made before anything is installed
//! ([`crate::Node::install_sync_image`]).

use std::collections::BTreeSet;

use cellar_consensus::CatchUpPackage;
use cellar_consensus::keys::SubnetPublicKeys;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::node::{Certified, SyncImage};

/// Bytes per chunk (the transport's messages are at most 8 MiB).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks one state may have (64 GiB).
pub const MAX_CHUNKS: usize = 64 << 10;

/// Chunk requests outstanding at once.
pub const WINDOW: usize = 4;

/// Milliseconds without a chunk before the outstanding ones are asked again.
pub const RETRY_MS: u64 = 3_000;

/// Milliseconds without a chunk before the peer is given up.
pub const GIVE_UP_MS: u64 = 15_000;

/// What a serving replica announces: the state at `height`, certified by
/// `cup`, is `size` bytes in chunks with these SHA-256 hashes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The height (round) of the state.
    pub height: u64,
    /// The catch-up package at that height.
    pub cup: CatchUpPackage,
    /// Length of the encoded image.
    pub size: u64,
    /// SHA-256 of the encoded image.
    pub image_hash: [u8; 32],
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<[u8; 32]>,
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

    /// Checks what can be checked before fetching: the package verifies
    /// under the subnet's key, is at the manifest's height, above `round`,
    /// and the chunk list fits the size.
    pub fn check(&self, keys: &SubnetPublicKeys, round: u64) -> Result<(), String> {
        if self.cup.content.height != self.height {
            return Err("the catch-up package is not at the state's height".into());
        }
        if self.height <= round {
            return Err(format!("the state (height {}) is not ahead", self.height));
        }
        if self.chunks.is_empty()
            || self.chunks.len() > MAX_CHUNKS
            || self.size.div_ceil(CHUNK_BYTES as u64) != self.chunks.len() as u64
        {
            return Err("the chunk list does not fit the size".into());
        }
        self.cup
            .verify(keys)
            .map_err(|e| format!("the catch-up package does not verify: {e}"))
    }
}

/// A state a replica serves: the encoded image and its manifest.
pub struct Served {
    /// The manifest.
    pub manifest: Manifest,
    image: Vec<u8>,
}

impl Served {
    /// Encodes `image` (the state at the package's height) for serving.
    pub fn new(cup: CatchUpPackage, image: &SyncImage) -> anyhow::Result<Self> {
        let image = postcard::to_stdvec(image)?;
        let chunks = image
            .chunks(CHUNK_BYTES)
            .map(|c| Sha256::digest(c).into())
            .collect();
        Ok(Served {
            manifest: Manifest {
                height: cup.content.height,
                cup,
                size: image.len() as u64,
                image_hash: Sha256::digest(&image).into(),
                chunks,
            },
            image,
        })
    }

    /// Chunk `index`, if there is one.
    pub fn chunk(&self, index: u32) -> Option<&[u8]> {
        self.image.chunks(CHUNK_BYTES).nth(index as usize)
    }
}

/// What a chunk did to a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not for this fetch (another peer, height or a chunk already held).
    Ignored,
    /// Taken; ask for these chunks next.
    Request(Vec<u32>),
    /// The last chunk: the whole image.
    Done(Vec<u8>),
    /// The peer sent a chunk that does not match its hash: give it up.
    Bad(String),
}

/// Fetching one manifest's chunks from one peer.
pub struct Fetch {
    /// The peer asked.
    pub peer: u32,
    /// Its manifest (checked).
    pub manifest: Manifest,
    chunks: Vec<Option<Vec<u8>>>,
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

impl Fetch {
    /// Starts fetching `manifest` (checked by the caller) from `peer`;
    /// returns the chunks to ask for first.
    pub fn new(peer: u32, manifest: Manifest, now_ms: u64) -> (Self, Vec<u32>) {
        let n = manifest.chunks.len();
        let mut fetch = Fetch {
            peer,
            manifest,
            chunks: vec![None; n],
            outstanding: BTreeSet::new(),
            next: 0,
            received: 0,
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
        while self.outstanding.len() < WINDOW && (self.next as usize) < self.chunks.len() {
            if self.chunks[self.next as usize].is_none() {
                self.outstanding.insert(self.next);
                asked.push(self.next);
            }
            self.next += 1;
        }
        asked
    }

    /// Whether `manifest` announces the same image as this fetch's (same
    /// height, size, image hash and chunk hashes), so that the chunks held
    /// can be completed from whoever sent it.
    pub fn same_image(&self, manifest: &Manifest) -> bool {
        let m = &self.manifest;
        m.height == manifest.height
            && m.size == manifest.size
            && m.image_hash == manifest.image_hash
            && m.chunks == manifest.chunks
    }

    /// Goes on with another peer that announced the same image
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
        let Some(slot) = self.chunks.get(index as usize) else {
            return Progress::Bad(format!("chunk {index} is not in the manifest"));
        };
        if slot.is_some() {
            return Progress::Ignored;
        }
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if hash != self.manifest.chunks[index as usize] {
            return Progress::Bad(format!("chunk {index} does not match its hash"));
        }
        self.chunks[index as usize] = Some(bytes);
        self.outstanding.remove(&index);
        self.received += 1;
        self.last_progress_ms = now_ms;
        if self.received < self.chunks.len() {
            return Progress::Request(self.more());
        }
        let image: Vec<u8> = self
            .chunks
            .iter_mut()
            .flat_map(|c| c.take().unwrap_or_default())
            .collect();
        if image.len() as u64 != self.manifest.size
            || <[u8; 32]>::from(Sha256::digest(&image)) != self.manifest.image_hash
        {
            return Progress::Bad("the chunks do not make the announced image".into());
        }
        Progress::Done(image)
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

    /// Chunks received so far, and in all.
    pub fn progress(&self) -> (usize, usize) {
        (self.received, self.chunks.len())
    }
}

/// Decodes an assembled image.
pub fn decode(image: &[u8]) -> Result<SyncImage, String> {
    postcard::from_bytes(image).map_err(|e| format!("the image does not decode: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_consensus::Hash32;
    use cellar_consensus::keys::deal_subnet;

    fn image(bytes: usize) -> SyncImage {
        SyncImage {
            checkpoint: crate::checkpoint::CheckpointImage {
                meta: b"{}".to_vec(),
                pages: vec![(vec![1, 2], (0..bytes).map(|i| (i * 7) as u8).collect())],
                stable: vec![],
            },
            modules: vec![],
        }
    }

    fn served(height: u64, bytes: usize) -> (SubnetPublicKeys, Served) {
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
        (
            dealing.public.clone(),
            Served::new(cup, &image(bytes)).unwrap(),
        )
    }

    /// Runs a fetch against `served`, passing each answer through `tamper`.
    fn run(
        served: &Served,
        mut tamper: impl FnMut(u32, Vec<u8>) -> Vec<u8>,
    ) -> Result<Vec<u8>, String> {
        let (mut fetch, mut asked) = Fetch::new(1, served.manifest.clone(), 0);
        loop {
            let mut next = Vec::new();
            for index in asked {
                let bytes = tamper(index, served.chunk(index).unwrap().to_vec());
                match fetch.on_chunk(1, served.manifest.height, index, bytes, 1) {
                    Progress::Request(more) => next.extend(more),
                    Progress::Done(image) => return Ok(image),
                    Progress::Bad(why) => return Err(why),
                    Progress::Ignored => {}
                }
            }
            asked = next;
        }
    }

    #[test]
    fn a_state_travels_in_chunks_and_decodes() {
        let (keys, served) = served(40, 3 * CHUNK_BYTES + 17);
        assert_eq!(served.manifest.chunks.len(), 4);
        served.manifest.check(&keys, 39).unwrap();
        let image = run(&served, |_, b| b).unwrap();
        assert_eq!(decode(&image).unwrap(), self::image(3 * CHUNK_BYTES + 17));
        assert_eq!(served.manifest.certified().height, 40);
        assert_eq!(served.manifest.certified().time_nanos, 5_000_000);
    }

    #[test]
    fn a_corrupted_chunk_fails_the_peer() {
        let (_, served) = served(40, 2 * CHUNK_BYTES);
        let err = run(&served, |i, mut b| {
            if i == 1 {
                b[100] ^= 1;
            }
            b
        })
        .unwrap_err();
        assert!(err.contains("chunk 1 does not match"), "{err}");
        // Chunks from another peer or height, or twice, change nothing.
        let (mut fetch, _) = Fetch::new(1, served.manifest.clone(), 0);
        let chunk = served.chunk(0).unwrap().to_vec();
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
            fetch.on_chunk(1, 40, 9, vec![], 1),
            Progress::Bad(_)
        ));
    }

    #[test]
    fn manifests_that_cannot_be_right_are_refused() {
        let (keys, served) = served(40, 10);
        let m = &served.manifest;
        assert!(m.check(&keys, 40).is_err(), "not ahead");
        let mut forged = m.clone();
        forged.cup.content.state_hash = Hash32([9; 32]);
        assert!(forged.check(&keys, 0).unwrap_err().contains("verify"));
        let mut moved = m.clone();
        moved.height = 50;
        assert!(moved.check(&keys, 0).is_err());
        let mut short = m.clone();
        short.size = 2 * CHUNK_BYTES as u64;
        assert!(short.check(&keys, 0).is_err());
        let other = deal_subnet(b"other", 4).unwrap();
        assert!(m.check(&other.public, 0).is_err(), "another subnet's key");
    }

    #[test]
    fn a_fetch_resumes_from_another_peer_with_the_same_image() {
        let (_, served) = served(40, 5 * CHUNK_BYTES);
        let n = served.manifest.chunks.len() as u32;
        let (mut fetch, asked) = Fetch::new(1, served.manifest.clone(), 0);
        // Peer 1 sends two chunks, then falls silent and is given up.
        for &index in &asked[..2] {
            let bytes = served.chunk(index).unwrap().to_vec();
            assert!(matches!(
                fetch.on_chunk(1, 40, index, bytes, 1),
                Progress::Request(_)
            ));
        }
        assert!(fetch.on_tick(GIVE_UP_MS + 1).is_err());
        assert_eq!(fetch.progress(), (2, n as usize));
        // Another image (another height) is not resumed.
        let (_, other) = self::served(41, 5 * CHUNK_BYTES);
        assert!(!fetch.same_image(&other.manifest));
        // Peer 2 announces the same image: only the missing chunks are
        // asked for, and chunks from peer 1 are no longer taken.
        assert!(fetch.same_image(&served.manifest));
        let mut asked = fetch.resume(2, GIVE_UP_MS + 2);
        assert!(!asked.contains(&asked_first(&served)[0]));
        assert_eq!(fetch.on_tick(GIVE_UP_MS + 3), Ok(vec![]));
        let late = served.chunk(asked[0]).unwrap().to_vec();
        assert_eq!(
            fetch.on_chunk(1, 40, asked[0], late, GIVE_UP_MS + 3),
            Progress::Ignored
        );
        let mut fetched = 0;
        let image = 'done: loop {
            let mut next = Vec::new();
            for index in asked {
                fetched += 1;
                let bytes = served.chunk(index).unwrap().to_vec();
                match fetch.on_chunk(2, 40, index, bytes, GIVE_UP_MS + 4) {
                    Progress::Request(more) => next.extend(more),
                    Progress::Done(image) => break 'done image,
                    other => panic!("{other:?}"),
                }
            }
            asked = next;
        };
        assert_eq!(fetched, n - 2, "held chunks are not fetched again");
        assert_eq!(decode(&image).unwrap(), self::image(5 * CHUNK_BYTES));
    }

    /// The chunks a fresh fetch of `served` asks for first.
    fn asked_first(served: &Served) -> Vec<u32> {
        Fetch::new(1, served.manifest.clone(), 0).1
    }

    #[test]
    fn a_silent_peer_is_asked_again_then_given_up() {
        let (_, served) = served(40, 10);
        let (mut fetch, asked) = Fetch::new(1, served.manifest.clone(), 0);
        assert_eq!(asked, vec![0]);
        assert_eq!(fetch.on_tick(RETRY_MS - 1), Ok(vec![]));
        assert_eq!(fetch.on_tick(RETRY_MS), Ok(vec![0]));
        assert_eq!(fetch.on_tick(RETRY_MS + 1), Ok(vec![]));
        assert!(fetch.on_tick(GIVE_UP_MS).is_err());
    }
}

//! State sync, the node's side.
//!
//! A replica serves its last checkpoint as a [`SyncSource`]
//! ([`Node::sync_source`]): an LSM snapshot (view) of it, the modules it
//! names and the chunk list; it reads a chunk when asked.
//!
//! A replica that fell behind stages the state it fetches in a store of its
//! own: [`Node::stage_sync`] opens a fresh [`Staging`] store under
//! `state/sync-staging`; the parts of its own checkpoint that the manifest
//! lists with the same hashes are kept where they are, and the modules it
//! has are held. [`Staging`] is the [`Sink`](crate::state_sync::Sink) the
//! fetch writes into: parts into its store, modules, checked against their
//! hash, into `modules/`.
//!
//! [`Node::install_staged`] installs the whole only after it loads the
//! overlay of the kept and the fetched parts, gives it its code (modules
//! by hash) and checks it against a [`Certified`] height, time and state
//! hash (the state hash a catch-up package certifies; the time its block's
//! time). Nothing of a refused state is installed. It then writes the plan
//! into the staging store's `CHECKED` mark, applies it to the node's store
//! (only the differences: the fetched parts replace the changed ones),
//! switches the state and restarts the journal. A crash midway would leave
//! a mixed store, so the staging store is kept until the install is
//! complete; a crash after the mark is redone by [`Node::open`]
//! ([`finish_interrupted_install`]), and an unmarked staging store is
//! removed there.
//!
//! Tested here: refused states (a flipped page, forged or garbage metadata,
//! another certified hash, time or height, a missing or mismatching module:
//! nothing of the node changes and no staging store is left), an
//! incremental sync (only changed parts move) and an install cut by a
//! crash.

use std::io::{Read, Seek, SeekFrom};

use super::*;
use crate::state_sync::{ChunkInfo, Item, Sink, piece_of, pieces};
use cellar_state::checkpoint::{CheckpointView, Listed, Loaded, Part, PartInfo, Plan};

/// The staging store's directory, under the state directory.
const STAGING: &str = "sync-staging";

/// The mark of a staged state that was checked: its install must complete
/// (the file holds the plan, postcard).
const CHECKED: &str = "CHECKED";

/// A checkpoint loaded and given its code, ready to become the registry.
struct Adopted {
    registry: Registry,
    scheduler_policy: Option<(String, SchedulerPolicy)>,
    consensus_change: Option<(u64, String)>,
    history: IngressHistory,
}

impl Adopted {
    fn state_hash(&self) -> [u8; 32] {
        StateSnapshot {
            round: self.registry.round,
            next_index: self.registry.next_index,
            canisters: self.registry.canisters.clone(),
            policy: self.scheduler_policy.as_ref().map(|(h, _)| h.clone()),
            consensus: self.consensus_change.clone(),
            history: self.history.hash(),
        }
        .hash()
    }
}

/// The chunks of a checkpoint's parts (listed: `parts`), not its modules.
fn state_chunks(view: &CheckpointView, parts: Vec<PartInfo>) -> anyhow::Result<Vec<ChunkInfo>> {
    let mut chunks = Vec::new();
    for info in parts {
        if info.size <= crate::state_sync::PIECE_BYTES as u64 {
            chunks.push(ChunkInfo {
                item: Item::State(info.part),
                piece: 0,
                hash: info.hash,
                size: info.size as u32,
            });
        } else {
            let bytes = view.read(&info.part)?;
            chunks.extend(pieces(&Item::State(info.part), &bytes));
        }
    }
    Ok(chunks)
}

/// A checkpoint a replica serves: a snapshot of it, and the modules it
/// names; cheap to share between the tasks that answer chunk requests.
pub struct SyncSource {
    round: u64,
    view: CheckpointView,
    modules: ModuleStore,
    chunks: Vec<ChunkInfo>,
}

impl SyncSource {
    /// The checkpoint's round.
    pub fn round(&self) -> u64 {
        self.round
    }

    /// Its chunks, in order (a manifest's list).
    pub fn chunks(&self) -> &[ChunkInfo] {
        &self.chunks
    }

    /// Chunk `index`'s bytes (read now: the snapshot keeps them).
    pub fn read(&self, index: u32) -> anyhow::Result<Vec<u8>> {
        let info = self
            .chunks
            .get(index as usize)
            .ok_or_else(|| anyhow::anyhow!("no chunk {index}"))?;
        let bytes = match &info.item {
            Item::State(part) => {
                let whole = self.view.read(part)?;
                piece_of(&whole, info.piece)
                    .ok_or_else(|| anyhow::anyhow!("chunk {index} is past its part"))?
                    .to_vec()
            }
            Item::Module(hash) => {
                let mut file = std::fs::File::open(self.modules.path(hash))?;
                file.seek(SeekFrom::Start(
                    u64::from(info.piece) * crate::state_sync::PIECE_BYTES as u64,
                ))?;
                let mut bytes = vec![0; info.size as usize];
                file.read_exact(&mut bytes)?;
                bytes
            }
        };
        anyhow::ensure!(
            <[u8; 32]>::from(Sha256::digest(&bytes)) == info.hash,
            "chunk {index} changed since it was announced"
        );
        Ok(bytes)
    }
}

/// A state being fetched: a page store of its own, and where modules go.
/// Dropped, it removes its store, unless it is marked checked (then the
/// next open of the node completes its install).
pub struct Staging {
    store: Option<Checkpointer>,
    dir: PathBuf,
    modules: ModuleStore,
    /// Marked checked: kept on drop.
    keep: bool,
    /// The round of the node's checkpoint when the fetch started.
    base_round: Option<u64>,
    /// That checkpoint's parts.
    local: BTreeSet<Part>,
    /// The parts of it that the fetched state has too (not fetched).
    kept: BTreeSet<Part>,
}

impl Staging {
    fn store(&mut self) -> &mut Checkpointer {
        self.store.as_mut().expect("the store is open until drop")
    }

    /// How the state made of `chunks` differs from the node's checkpoint:
    /// the parts of that checkpoint not kept go, the parts not kept are
    /// fetched (the metadata is always the staged one).
    fn plan(&self, chunks: &[ChunkInfo]) -> Plan {
        let changed = |part: &Part| *part != Part::Meta && !self.kept.contains(part);
        Plan {
            base_round: self.base_round,
            dropped: self.local.iter().filter(|p| changed(p)).cloned().collect(),
            fetched: chunks
                .iter()
                .filter_map(|c| match &c.item {
                    Item::State(part) if changed(part) => Some(part.clone()),
                    _ => None,
                })
                .collect(),
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        drop(self.store.take());
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Sink for Staging {
    fn put(&mut self, item: &Item, bytes: &[u8]) -> anyhow::Result<()> {
        match item {
            Item::State(part) => self.store().put_part(part, bytes),
            Item::Module(hash) => {
                anyhow::ensure!(
                    HEXLOWER.encode(&Sha256::digest(bytes)) == *hash,
                    "module {hash} does not match its hash"
                );
                self.modules.store(hash, bytes)
            }
        }
    }
}

/// Completes the install of a state-synced checkpoint that a crash
/// interrupted (its staging store is marked checked): the node's store
/// becomes the staged checkpoint and the journal, which is older, goes.
/// Removes any other staging store (an unfinished fetch).
pub(super) fn finish_interrupted_install(
    state_dir: &Path,
    store: &mut Checkpointer,
) -> anyhow::Result<()> {
    let dir = state_dir.join(STAGING);
    if let Ok(bytes) = std::fs::read(dir.join(CHECKED)) {
        tracing::warn!(
            "completing the install of a state-synced checkpoint that a crash interrupted"
        );
        let plan: Plan = postcard::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("the checked state's plan does not decode: {e}"))?;
        let staged = Checkpointer::open(&dir)?;
        store.apply_plan(&staged, &plan, None)?;
        drop(staged);
        for path in journal_files(state_dir)? {
            std::fs::remove_file(&path)?;
        }
        std::fs::File::open(state_dir)?.sync_all()?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

impl Node {
    /// What a catch-up package at this node's current round certifies:
    /// the round, its time and the state hash.
    pub fn certified(&self) -> Certified {
        let (height, time_nanos) = {
            let registry = self.exec.registry.read().expect("registry lock");
            (registry.round, registry.time_nanos)
        };
        Certified {
            height,
            time_nanos,
            state_hash: self.state_hash(),
        }
    }

    /// The last checkpoint written, as a source of chunks for replicas
    /// that state-sync; `None` before the first checkpoint. Hashes the
    /// parts that changed since the checkpoint's parts were last listed
    /// (all of them the first time), and the modules.
    pub fn sync_source(&self) -> anyhow::Result<Option<SyncSource>> {
        let Some(Listed { view, parts, .. }) = self.list_parts()? else {
            return Ok(None);
        };
        let (round, modules) = view.summary()?;
        let mut chunks = state_chunks(&view, parts)?;
        for hash in modules {
            let wasm = self
                .read_module(&hash)
                .map_err(|e| anyhow::anyhow!("module {hash} of the checkpoint: {e}"))?;
            chunks.extend(pieces(&Item::Module(hash), &wasm));
        }
        Ok(Some(SyncSource {
            round,
            view,
            modules: self.exec.modules.clone(),
            chunks,
        }))
    }

    /// The stored checkpoint's parts, listed with the checkpointer held
    /// only to begin and to keep the listing, not while hashing (a cold
    /// listing hashes every page), so checkpoints go on meanwhile.
    fn list_parts(&self) -> anyhow::Result<Option<Listed>> {
        let Some(listing) = self.checkpoints.with(|store| store.begin_listing())? else {
            return Ok(None);
        };
        let mut listed = listing.hash()?;
        self.checkpoints.with(|store| {
            store.keep_listing(&mut listed);
            Ok(())
        })?;
        Ok(Some(listed))
    }

    /// Starts fetching the state made of `chunks`: a fresh staging store,
    /// and the items it need not fetch: the parts of this node's checkpoint
    /// that are the same (same pieces, same hashes; they stay where they
    /// are, only the metadata is copied) and the modules this node has.
    pub fn stage_sync(&self, chunks: &[ChunkInfo]) -> anyhow::Result<(Staging, BTreeSet<Item>)> {
        let dir = self.state_dir.join(STAGING);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        let store = Checkpointer::open(&dir)?;
        let mut local: BTreeMap<Item, Vec<ChunkInfo>> = BTreeMap::new();
        let (mut view, mut base_round) = (None, None);
        if let Some(Listed {
            view: listed_view,
            parts,
            ..
        }) = self.list_parts()?
        {
            base_round = Some(listed_view.summary()?.0);
            for chunk in state_chunks(&listed_view, parts)? {
                local.entry(chunk.item.clone()).or_default().push(chunk);
            }
            view = Some(listed_view);
        }
        let mut wanted: BTreeMap<&Item, Vec<ChunkInfo>> = BTreeMap::new();
        for chunk in chunks {
            wanted.entry(&chunk.item).or_default().push(chunk.clone());
        }
        let mut held = BTreeSet::new();
        let mut kept = BTreeSet::new();
        for (item, pieces) in wanted {
            let have = match item {
                Item::Module(hash) => self.exec.modules.contains(hash),
                Item::State(part) => match &view {
                    Some(view) if local.get(item) == Some(&pieces) => {
                        if *part == Part::Meta {
                            store.put_part(part, &view.read(part)?)?;
                        }
                        kept.insert(part.clone());
                        true
                    }
                    _ => false,
                },
            };
            if have {
                held.insert(item.clone());
            }
        }
        let local = local
            .into_keys()
            .filter_map(|item| match item {
                Item::State(part) => Some(part),
                Item::Module(_) => None,
            })
            .collect();
        Ok((
            Staging {
                store: Some(store),
                dir,
                modules: self.exec.modules.clone(),
                keep: false,
                base_round,
                local,
                kept,
            },
            held,
        ))
    }

    /// Checks the state staged from `chunks` (every item in) against
    /// `certified` and, when it holds, installs it: it becomes the node's
    /// checkpoint and state, paused executions are dropped and the journal
    /// restarts after it. The check loads the staged state, gives it its
    /// code (the modules it names must be stored) and compares its state
    /// hash and time with the certified ones. A refused state changes
    /// nothing (but the modules directory: modules are stored by their
    /// hash, only when they match it). Returns the installed round.
    pub fn install_staged(
        &self,
        mut staging: Staging,
        chunks: &[ChunkInfo],
        certified: &Certified,
    ) -> anyhow::Result<u64> {
        let mut writer = self.writer.lock().expect("writer lock");
        let plan = staging.plan(chunks);
        // Refused, the staging store goes with `staging`.
        let checked = self.check_staged(staging.store(), chunks, &plan, certified)?;
        let round = checked.registry.round;

        // Checked: mark it so, so that a crash while the node's store is
        // replaced is completed at the next open, then replace and switch.
        let mark = staging.dir.join(CHECKED);
        std::fs::write(&mark, postcard::to_stdvec(&plan)?)?;
        std::fs::File::open(&mark)?.sync_all()?;
        std::fs::File::open(&staging.dir)?.sync_all()?;
        staging.keep = true;
        let states = checked
            .registry
            .canisters
            .iter()
            .map(|(id, c)| (id.clone(), c.state.clone()))
            .collect();
        let staged = staging.store.as_ref().expect("open until drop");
        // The installed parts are the manifest's (each fetched one was
        // checked against its hash, each kept one had it here): listed.
        let listed = chunks
            .iter()
            .filter_map(|c| match &c.item {
                Item::State(part @ Part::Entries { .. }) if c.piece == 0 => Some((
                    part.clone(),
                    PartInfo {
                        part: part.clone(),
                        hash: c.hash,
                        size: u64::from(c.size),
                    },
                )),
                _ => None,
            })
            .collect();
        if let Err(e) = self.checkpoints.with(|store| {
            store.apply_plan(staged, &plan, Some(states))?;
            store.adopt_part_infos(listed);
            Ok(())
        }) {
            // The store is half replaced: only a restart (which completes
            // the install) can go on from here.
            panic!(
                "installing the synced checkpoint failed midway (a restart completes it): {e:#}"
            );
        }
        self.exec.paused.lock().expect("paused lock").clear();
        self.exec
            .consensus_changes
            .lock()
            .expect("consensus lock")
            .clear();
        *self.exec.registry.write().expect("registry lock") = checked.registry;
        *self.exec.scheduler_policy.write().expect("policy lock") = checked.scheduler_policy;
        *self.exec.consensus_change.lock().expect("consensus lock") = checked.consensus_change;
        *self.exec.history.lock().expect("history lock") = checked.history;
        // The journal restarts after the installed checkpoint.
        let new_path = journal_path(&self.state_dir, round + 1);
        drop(writer.take());
        for path in journal_files(&self.state_dir)? {
            std::fs::remove_file(&path)?;
        }
        if self.options.durability == Durability::Sync {
            std::fs::File::open(&self.state_dir)?.sync_all()?;
        }
        *writer = Some(Writer {
            journal: Journal::open(&new_path, self.options.durability)?,
        });
        // Installed: the staging store can go.
        staging.keep = false;
        drop(staging);
        Ok(round)
    }

    /// Loads the state `plan` makes of this node's checkpoint and the
    /// staged parts, and checks it against `certified`.
    fn check_staged(
        &self,
        staged: &mut Checkpointer,
        chunks: &[ChunkInfo],
        plan: &Plan,
        certified: &Certified,
    ) -> anyhow::Result<Adopted> {
        staged.sync()?;
        let parts = chunks.iter().filter_map(|c| match &c.item {
            Item::State(part) => Some(part),
            Item::Module(_) => None,
        });
        staged.check_parts(parts)?;
        let loaded = self
            .checkpoints
            .with(|store| store.load_overlay(staged, plan))?;
        anyhow::ensure!(
            loaded.round == certified.height,
            "the state is at round {}, not at the certified height {}",
            loaded.round,
            certified.height
        );
        let current = self.exec.registry.read().expect("registry lock").round;
        anyhow::ensure!(
            loaded.round > current,
            "the state (round {}) is not ahead of this node's round {current}",
            loaded.round
        );
        let checked = self.adopt(loaded)?;
        let hash = checked.state_hash();
        anyhow::ensure!(
            hash == certified.state_hash,
            "the state hashes to {}, not to the certified {}",
            HEXLOWER.encode(&hash),
            HEXLOWER.encode(&certified.state_hash)
        );
        anyhow::ensure!(
            checked.registry.time_nanos == certified.time_nanos,
            "the state's time {} is not the certified block time {}",
            checked.registry.time_nanos,
            certified.time_nanos
        );
        Ok(checked)
    }

    /// A loaded checkpoint as a registry, with its code and policies.
    fn adopt(&self, loaded: Loaded) -> anyhow::Result<Adopted> {
        let mut registry = Registry {
            canisters: BTreeMap::new(),
            next_index: loaded.next_index,
            round: loaded.round,
            time_nanos: loaded.time_nanos,
            active: BTreeSet::new(),
            timed: BTreeSet::new(),
        };
        self.add_loaded_canisters(&mut registry, loaded.canisters)?;
        let scheduler_policy = match loaded.scheduler_policy {
            Some(hash) => Some((hash.clone(), self.exec.load_policy(&hash)?)),
            None => None,
        };
        Ok(Adopted {
            registry,
            scheduler_policy,
            consensus_change: loaded.consensus_policy,
            history: IngressHistory::from_entries(self.options.ingress_history, loaded.history),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_state::checkpoint::Part;

    fn wave(text: &str) -> Args {
        Args::Wave(text.to_string())
    }

    fn options(dir: &Path) -> NodeOptions {
        let mut options = NodeOptions::new(dir);
        options.durability = Durability::Process;
        options
    }

    /// A node with a kv canister holding `k = 7`, checkpointed; its
    /// canister id.
    fn source(dir: &Path) -> (Node, Principal) {
        let node = Node::open(options(dir)).unwrap();
        let me = Principal::anonymous();
        let id = node.create(&me, vec![]).unwrap();
        let kv = cellar_examples::get("kv").expect("the kv example");
        node.install(
            &me,
            &id,
            InstallMode::Install,
            kv.wasm,
            kv.init_arg.map(str::to_string),
        )
        .unwrap();
        node.update(&me, &id, "add", wave("\"k\", 7")).unwrap();
        node.checkpoint().unwrap();
        (node, id)
    }

    fn certified(node: &Node) -> Certified {
        node.certified()
    }

    fn get(node: &Node, id: &Principal) -> String {
        let out = node
            .query(&Principal::anonymous(), id, "get", wave("\"k\""))
            .unwrap();
        format!("{:?}", out.result)
    }

    /// What a lying peer does to an item (`None`: leaves it out).
    type Tamper = dyn Fn(&Item, Vec<u8>) -> Option<Vec<u8>>;

    /// Syncs `to` from `from`'s last checkpoint in process, as a fetch
    /// would: the items `to` lacks are assembled from `from`'s chunks and
    /// passed through `tamper` (a peer that lies; `None` leaves the item
    /// out), then installed against `certified`. Returns the installed
    /// round and the number of chunks fetched.
    fn sync_with(
        from: &Node,
        to: &Node,
        certified: &Certified,
        tamper: impl Fn(&Item, Vec<u8>) -> Option<Vec<u8>>,
    ) -> anyhow::Result<(u64, usize)> {
        let source = from.sync_source()?.expect("a checkpoint");
        let chunks = source.chunks().to_vec();
        let (mut staging, held) = to.stage_sync(&chunks)?;
        let (items, fetched) = fetch_items(&source, &held)?;
        for (item, bytes) in items {
            if let Some(bytes) = tamper(&item, bytes) {
                staging.put(&item, &bytes)?;
            }
        }
        let round = to.install_staged(staging, &chunks, certified)?;
        Ok((round, fetched))
    }

    /// The items of `source` not `held`, assembled from its chunks, and
    /// the number of chunks read.
    fn fetch_items(
        source: &SyncSource,
        held: &BTreeSet<Item>,
    ) -> anyhow::Result<(BTreeMap<Item, Vec<u8>>, usize)> {
        let mut items: BTreeMap<Item, Vec<u8>> = BTreeMap::new();
        let mut fetched = 0;
        for (index, chunk) in source.chunks().iter().enumerate() {
            if !held.contains(&chunk.item) {
                fetched += 1;
                let bytes = source.read(index as u32)?;
                items.entry(chunk.item.clone()).or_default().extend(bytes);
            }
        }
        Ok((items, fetched))
    }

    /// A node's listed parts and a fresh listing of its checkpoint.
    fn listed_and_fresh(node: &Node) -> (Vec<PartInfo>, Vec<PartInfo>) {
        let listed = node.list_parts().unwrap().unwrap();
        let fresh = listed.view.parts().unwrap();
        (listed.parts, fresh)
    }

    /// Sets `key` to 1 in the kv canister `id`, then checkpoints.
    fn add_and_checkpoint(node: &Node, id: &Principal, key: &str) {
        node.update(
            &Principal::anonymous(),
            id,
            "add",
            wave(&format!("\"{key}\", 1")),
        )
        .unwrap();
        node.checkpoint().unwrap();
    }

    fn sync(from: &Node, to: &Node) -> anyhow::Result<(u64, usize)> {
        sync_with(from, to, &certified(from), |_, b| Some(b))
    }

    /// Flips a bit of the first non-zero page of a part of pages.
    fn flip_a_page(item: &Item, bytes: Vec<u8>) -> Option<Vec<u8>> {
        if !matches!(item, Item::State(Part::Entries { .. })) {
            return Some(bytes);
        }
        let mut entries: Vec<(u64, Vec<u8>)> = postcard::from_bytes(&bytes).unwrap();
        if let Some((_, page)) = entries.iter_mut().find(|(_, p)| p.iter().any(|b| *b != 0)) {
            page[0] ^= 1;
        }
        Some(postcard::to_stdvec(&entries).unwrap())
    }

    /// Refused states change nothing: no round, state, checkpoint or
    /// journal of the receiving node moves, and no staging store is left.
    #[test]
    fn a_state_that_does_not_match_the_certified_state_is_refused() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, _) = source(a_dir.path());
        let good = certified(&a);
        let source = a.sync_source().unwrap().unwrap();
        assert_eq!(source.round(), good.height);
        let modules = source
            .chunks()
            .iter()
            .filter(|c| matches!(c.item, Item::Module(_)))
            .count();
        assert_eq!(modules, 1, "the kv module comes along");

        let b = Node::open(options(b_dir.path())).unwrap();
        let empty = b.state_hash();
        let refused = |certified: &Certified, tamper: &Tamper, why: &str| {
            let err = sync_with(&a, &b, certified, tamper).expect_err(why);
            assert!(format!("{err:#}").contains(why), "{why}: {err:#}");
            assert_eq!(b.round(), 0);
            assert_eq!(b.state_hash(), empty);
            assert!(b.list().is_empty());
            assert!(b.sync_source().unwrap().is_none(), "no checkpoint");
            assert!(!b_dir.path().join("state/sync-staging").exists());
        };
        let honest = |_: &Item, b: Vec<u8>| Some(b);
        // Another binary under the module's hash, or no module (first: a
        // refused state may leave its matching modules stored).
        let other_module = |item: &Item, mut b: Vec<u8>| {
            if matches!(item, Item::Module(_)) {
                b.push(0);
            }
            Some(b)
        };
        refused(&good, &other_module, "does not match its hash");
        let no_module = |item: &Item, b: Vec<u8>| (!matches!(item, Item::Module(_))).then_some(b);
        refused(&good, &no_module, "cannot read module");
        // A page flipped on the way.
        refused(&good, &flip_a_page, "not to the certified");
        // Metadata changed (cycles), or garbage.
        let more_cycles = |item: &Item, b: Vec<u8>| {
            if *item != Item::State(Part::Meta) {
                return Some(b);
            }
            let mut meta: serde_json::Value = serde_json::from_slice(&b).unwrap();
            meta["canisters"][0]["cycles"] = serde_json::json!(1);
            Some(serde_json::to_vec(&meta).unwrap())
        };
        refused(&good, &more_cycles, "not to the certified");
        let garbage = |item: &Item, b: Vec<u8>| {
            Some(if *item == Item::State(Part::Meta) {
                b"{".to_vec()
            } else {
                b
            })
        };
        refused(&good, &garbage, "EOF");
        let no_meta = |item: &Item, b: Vec<u8>| (*item != Item::State(Part::Meta)).then_some(b);
        refused(&good, &no_meta, "metadata");
        // A state other than the certified one, a time, a height.
        let other = Certified {
            state_hash: [1; 32],
            ..good
        };
        refused(&other, &honest, "not to the certified");
        let late = Certified {
            time_nanos: good.time_nanos + 1,
            ..good
        };
        refused(&late, &honest, "block time");
        let higher = Certified {
            height: good.height + 10,
            ..good
        };
        refused(&higher, &honest, "certified height");
    }

    /// A checked state becomes the node's state, checkpoint and journal
    /// start: it answers queries like the source, executes on alike, and
    /// comes back after a restart; a second install of an older state is
    /// refused.
    #[test]
    fn a_checked_state_is_installed_and_the_node_goes_on_from_it() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, id) = source(a_dir.path());
        let b = Node::open(options(b_dir.path())).unwrap();
        // B has some state of its own, and a journal, before it syncs.
        b.create(&Principal::anonymous(), vec![]).unwrap();
        assert_eq!(sync(&a, &b).unwrap().0, a.round());
        assert_eq!(b.round(), a.round());
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(get(&b, &id), get(&a, &id));
        assert_eq!(get(&b, &id), "Ok([Option(Some(U64(7)))])");
        assert!(!b_dir.path().join("state/sync-staging").exists());
        // Both execute the same update: same state again.
        for node in [&a, &b] {
            node.update(&Principal::anonymous(), &id, "add", wave("\"k\", 1"))
                .unwrap();
        }
        assert_eq!(b.state_hash(), a.state_hash());
        let hash = b.state_hash();
        drop(b);
        let b = Node::open(options(b_dir.path())).unwrap();
        assert_eq!(b.state_hash(), hash, "checkpoint + journal after it");
        // kv's add sets the value.
        assert_eq!(get(&b, &id), "Ok([Option(Some(U64(1)))])");
        a.checkpoint().unwrap();
        let err = sync(&a, &b).unwrap_err();
        assert!(format!("{err:#}").contains("not ahead"), "{err:#}");
    }

    /// A replica that holds an older checkpoint of the same state fetches
    /// only the parts that changed, and ends with the source's checkpoint,
    /// part for part.
    #[test]
    fn a_sync_fetches_only_what_changed() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, id) = source(a_dir.path());
        let b = Node::open(options(b_dir.path())).unwrap();
        let all = a.sync_source().unwrap().unwrap().chunks().len();
        assert_eq!(sync(&a, &b).unwrap().1, all, "everything, the first time");
        a.update(&Principal::anonymous(), &id, "add", wave("\"j\", 3"))
            .unwrap();
        a.checkpoint().unwrap();
        let now = a.sync_source().unwrap().unwrap();
        let (round, fetched) = sync(&a, &b).unwrap();
        assert_eq!(round, a.round());
        assert!(
            fetched < now.chunks().len(),
            "{fetched} of {}",
            now.chunks().len()
        );
        assert!(fetched >= 2, "the metadata and a changed page");
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(b.sync_source().unwrap().unwrap().chunks(), now.chunks());
        let (listed, fresh) = listed_and_fresh(&b);
        assert_eq!(listed, fresh, "the installed parts, listed");
        // The parts listed once and kept up to date are those of a fresh
        // listing, checkpoint after checkpoint (A's were listed above).
        for n in 0..3 {
            add_and_checkpoint(&a, &id, &format!("n{n}"));
            let (listed, fresh) = listed_and_fresh(&a);
            assert_eq!(listed, fresh, "after checkpoint {n}");
        }
    }

    /// A listing hashes without holding the checkpointer: checkpoints
    /// written meanwhile are listed the next time, and a listing overtaken
    /// by a later one is not kept.
    #[test]
    fn checkpoints_written_during_a_listing_are_listed_next_time() {
        let dir = tempfile::tempdir().unwrap();
        let (a, id) = source(dir.path());
        let add = |key: &str| add_and_checkpoint(&a, &id, key);
        let begin = || a.checkpoints.with(|s| s.begin_listing()).unwrap().unwrap();
        let keep = |mut listed: Listed| {
            a.checkpoints
                .with(|s| {
                    s.keep_listing(&mut listed);
                    Ok(())
                })
                .unwrap();
            listed
        };
        // Cold, with a checkpoint written while it hashes.
        let cold = begin();
        add("during-cold");
        let listed = keep(cold.hash().unwrap());
        assert_ne!(listed.view.summary().unwrap().0, a.round(), "an older view");
        let (listed, fresh) = listed_and_fresh(&a);
        assert_eq!(listed, fresh, "the checkpoint written meanwhile is listed");
        // Two listings at once: the later one is kept, the earlier not.
        add("before-two");
        let first = begin();
        add("between");
        let second = begin();
        keep(second.hash().unwrap());
        keep(first.hash().unwrap());
        add("after-two");
        let (listed, fresh) = listed_and_fresh(&a);
        assert_eq!(listed, fresh, "after two listings at once");
    }

    /// A crash after the staged state was checked, while the node's store
    /// was being replaced, is completed when the node opens again.
    #[test]
    fn an_install_cut_by_a_crash_completes_at_the_next_open() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, id) = source(a_dir.path());
        let b = Node::open(options(b_dir.path())).unwrap();
        b.create(&Principal::anonymous(), vec![]).unwrap();
        let source = a.sync_source().unwrap().unwrap();
        let chunks = source.chunks().to_vec();
        let (mut staging, _) = b.stage_sync(&chunks).unwrap();
        let (items, _) = fetch_items(&source, &BTreeSet::new()).unwrap();
        for (item, bytes) in &items {
            staging.put(item, bytes).unwrap();
        }
        // Checked and marked, then the process dies.
        staging.store().sync().unwrap();
        let plan = postcard::to_stdvec(&staging.plan(&chunks)).unwrap();
        std::fs::write(staging.dir.join(CHECKED), plan).unwrap();
        staging.keep = true;
        drop(staging);
        drop(b);
        let b = Node::open(options(b_dir.path())).unwrap();
        assert_eq!(b.round(), a.round());
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(get(&b, &id), "Ok([Option(Some(U64(7)))])");
        assert!(!b_dir.path().join("state/sync-staging").exists());
        // A fetch a crash cut (its store left, not marked) goes at open.
        let (mut staging, _) = b.stage_sync(&chunks).unwrap();
        staging.keep = true;
        let dir = staging.dir.clone();
        drop(staging);
        drop(b);
        assert!(dir.exists());
        let b = Node::open(options(b_dir.path())).unwrap();
        assert!(!dir.exists());
        assert_eq!(b.state_hash(), a.state_hash());
    }

    /// The last consensus-policy change is part of the state hash and
    /// travels with the state.
    #[test]
    fn the_consensus_policy_change_is_hashed_and_synced() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, _) = source(a_dir.path());
        let before = a.state_hash();
        let wasm = cellar_examples::ROUND_ROBIN_CONSENSUS_POLICY;
        let hash = HEXLOWER.encode(&Sha256::digest(wasm));
        a.store_module(&hash, wasm).unwrap();
        *a.exec.consensus_change.lock().unwrap() = Some((40, hash.clone()));
        let with_policy = a.state_hash();
        assert_ne!(with_policy, before);
        *a.exec.consensus_change.lock().unwrap() = Some((41, hash.clone()));
        assert_ne!(a.state_hash(), with_policy, "the height counts");
        *a.exec.consensus_change.lock().unwrap() = Some((40, hash.clone()));
        a.checkpoint().unwrap();
        let source = a.sync_source().unwrap().unwrap();
        let modules = source
            .chunks()
            .iter()
            .filter(|c| matches!(c.item, Item::Module(_)))
            .count();
        assert_eq!(modules, 2, "the policy's module comes along");
        let b = Node::open(options(b_dir.path())).unwrap();
        sync(&a, &b).unwrap();
        assert_eq!(b.consensus_change(), Some((40, hash.clone())));
        assert_eq!(b.state_hash(), with_policy);
        assert!(b.read_module(&hash).is_ok());
    }

    #[test]
    fn the_genesis_state_hash_is_the_empty_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).unwrap();
        assert_eq!(node.state_hash(), cellar_state::genesis_state_hash());
        assert_ne!(cellar_state::genesis_state_hash(), [0; 32]);
    }
}

//! State sync, the node's side: a replica exports its last checkpoint with
//! the modules it names ([`SyncImage`]); a replica that fell behind installs
//! one only after the state it loads to hashes to the state hash a catch-up
//! package certifies (and its time is that package's block time). Nothing
//! of a refused image is installed: it is checked on a store of its own.

use serde::{Deserialize, Serialize};

use super::*;
use crate::checkpoint::{CheckpointImage, Loaded};

/// A checkpoint's contents and the modules (canister code, policies) it
/// names, by hash: what state sync transfers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncImage {
    /// The checkpoint as stored.
    pub checkpoint: CheckpointImage,
    /// The modules it names: (SHA-256 hex, binary).
    pub modules: Vec<(String, Vec<u8>)>,
}

/// What a catch-up package certifies about the state at its height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Certified {
    /// The height (the round of the state).
    pub height: u64,
    /// The round's time: the block's time (ns).
    pub time_nanos: u64,
    /// The state hash ([`Node::state_hash`]).
    pub state_hash: [u8; 32],
}

/// A checkpoint loaded and given its code, ready to become the registry.
struct Adopted {
    registry: Registry,
    scheduler_policy: Option<(String, SchedulerPolicy)>,
    consensus_change: Option<(u64, String)>,
    requests: Vec<RequestTag>,
}

impl Adopted {
    fn state_hash(&self) -> [u8; 32] {
        StateSnapshot {
            round: self.registry.round,
            next_index: self.registry.next_index,
            canisters: self.registry.canisters.clone(),
            policy: self.scheduler_policy.as_ref().map(|(h, _)| h.clone()),
            consensus: self.consensus_change.clone(),
        }
        .hash()
    }
}

impl Node {
    /// The last checkpoint written, with the modules it names, and its
    /// round; `None` before the first checkpoint.
    pub fn export_sync_image(&self) -> anyhow::Result<Option<(u64, SyncImage)>> {
        let exported = self.checkpoints.with(|store| store.export())?;
        let Some(checkpoint) = exported else {
            return Ok(None);
        };
        let (round, hashes) = checkpoint.summary()?;
        let modules = hashes
            .into_iter()
            .map(|hash| {
                let wasm = self
                    .read_module(&hash)
                    .map_err(|e| anyhow::anyhow!("module {hash} of the checkpoint: {e}"))?;
                Ok((hash, wasm))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Some((
            round,
            SyncImage {
                checkpoint,
                modules,
            },
        )))
    }

    /// Checks `image` against `certified` and, when it holds, installs it:
    /// it becomes the node's checkpoint and state, paused executions are
    /// dropped and the journal restarts after it. The check loads the image
    /// on a store of its own (under `state/sync-staging`), gives it its
    /// code (modules must match their hashes) and compares its state hash
    /// and time with the certified ones; a refused image changes nothing
    /// but the modules directory (modules are stored by their hash only
    /// when they match it). Returns the installed round.
    pub fn install_sync_image(
        &self,
        image: &SyncImage,
        certified: &Certified,
    ) -> anyhow::Result<u64> {
        let mut writer = self.writer.lock().expect("writer lock");
        let (round, needed) = image.checkpoint.summary()?;
        anyhow::ensure!(
            round == certified.height,
            "the state is at round {round}, not at the certified height {}",
            certified.height
        );
        let current = self.registry.read().expect("registry lock").round;
        anyhow::ensure!(
            round > current,
            "the state (round {round}) is not ahead of this node's round {current}"
        );
        for hash in &needed {
            if self.modules_dir.join(format!("{hash}.wasm")).exists() {
                continue;
            }
            let wasm = image
                .modules
                .iter()
                .find(|(h, _)| h == hash)
                .map(|(_, wasm)| wasm)
                .ok_or_else(|| anyhow::anyhow!("module {hash} is missing"))?;
            anyhow::ensure!(
                HEXLOWER.encode(&Sha256::digest(wasm)) == *hash,
                "module {hash} does not match its hash"
            );
            self.store_module(hash, wasm)?;
        }
        let staging = self.state_dir.join("sync-staging");
        let _ = std::fs::remove_dir_all(&staging);
        let checked = Checkpointer::open(&staging)
            .and_then(|mut store| store.import(&image.checkpoint))
            .and_then(|loaded| self.adopt(loaded));
        let _ = std::fs::remove_dir_all(&staging);
        let checked = checked?;
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

        // Checked: store it as this node's checkpoint, then switch.
        self.checkpoints
            .with(|store| store.import(&image.checkpoint))?;
        self.paused.lock().expect("paused lock").clear();
        self.consensus_changes
            .lock()
            .expect("consensus lock")
            .clear();
        *self.registry.write().expect("registry lock") = checked.registry;
        *self.scheduler_policy.write().expect("policy lock") = checked.scheduler_policy;
        *self.consensus_change.lock().expect("consensus lock") = checked.consensus_change;
        self.journaled_requests
            .lock()
            .expect("requests lock")
            .extend(checked.requests.into_iter().map(|t| (t.id, t.expiry)));
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
        Ok(round)
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
            Some(hash) => Some((hash.clone(), self.load_policy(&hash)?)),
            None => None,
        };
        Ok(Adopted {
            registry,
            scheduler_policy,
            consensus_change: loaded.consensus_policy,
            requests: loaded.requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let (height, time_nanos) = {
            let registry = node.registry.read().unwrap();
            (registry.round, registry.time_nanos)
        };
        Certified {
            height,
            time_nanos,
            state_hash: node.state_hash(),
        }
    }

    fn get(node: &Node, id: &Principal) -> String {
        let out = node
            .query(&Principal::anonymous(), id, "get", wave("\"k\""))
            .unwrap();
        format!("{:?}", out.result)
    }

    /// Refused images change nothing: no round, state, checkpoint or
    /// journal of the receiving node moves, and no staging store is left.
    #[test]
    fn an_image_that_does_not_match_the_certified_state_is_refused() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, _) = source(a_dir.path());
        let (height, image) = a.export_sync_image().unwrap().unwrap();
        let good = certified(&a);
        assert_eq!(height, good.height);
        assert_eq!(image.modules.len(), 1, "the kv module comes along");

        let b = Node::open(options(b_dir.path())).unwrap();
        let empty = b.state_hash();
        let refused = |image: &SyncImage, certified: &Certified, why: &str| {
            let err = b.install_sync_image(image, certified).expect_err(why);
            assert!(format!("{err:#}").contains(why), "{err:#}");
            assert_eq!(b.round(), 0);
            assert_eq!(b.state_hash(), empty);
            assert!(b.list().is_empty());
            assert!(b.export_sync_image().unwrap().is_none(), "no checkpoint");
            assert!(!b_dir.path().join("state/sync-staging").exists());
        };
        // Its module missing, or another binary under its hash (first:
        // a refused image may leave its matching modules stored).
        let mut without = image.clone();
        without.modules.clear();
        refused(&without, &good, "missing");
        let mut wrong = image.clone();
        wrong.modules[0].1.push(0);
        refused(&wrong, &good, "does not match its hash");
        // A page flipped on the way.
        let mut corrupt = image.clone();
        let page = corrupt
            .checkpoint
            .pages
            .iter_mut()
            .find(|(_, v)| v.iter().any(|b| *b != 0));
        page.unwrap().1[0] ^= 1;
        refused(&corrupt, &good, "not to the certified");
        // Metadata changed (cycles).
        let mut meta: serde_json::Value = serde_json::from_slice(&image.checkpoint.meta).unwrap();
        meta["canisters"][0]["cycles"] = serde_json::json!(1);
        let mut forged = image.clone();
        forged.checkpoint.meta = serde_json::to_vec(&meta).unwrap();
        refused(&forged, &good, "not to the certified");
        // A state other than the certified one, a time, a height.
        let other = Certified {
            state_hash: [1; 32],
            ..good
        };
        refused(&image, &other, "not to the certified");
        let late = Certified {
            time_nanos: good.time_nanos + 1,
            ..good
        };
        refused(&image, &late, "block time");
        let higher = Certified {
            height: good.height + 10,
            ..good
        };
        refused(&image, &higher, "certified height");
        // Garbage metadata.
        let mut garbage = image.clone();
        garbage.checkpoint.meta = b"{".to_vec();
        refused(&garbage, &good, "EOF");
    }

    /// A checked image becomes the node's state, checkpoint and journal
    /// start: it answers queries like the source, executes on alike, and
    /// comes back after a restart; a second install of an older state is
    /// refused.
    #[test]
    fn a_checked_image_is_installed_and_the_node_goes_on_from_it() {
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, id) = source(a_dir.path());
        let (_, image) = a.export_sync_image().unwrap().unwrap();
        let good = certified(&a);
        let b = Node::open(options(b_dir.path())).unwrap();
        // B has some state of its own, and a journal, before it syncs.
        b.create(&Principal::anonymous(), vec![]).unwrap();
        assert_eq!(b.install_sync_image(&image, &good).unwrap(), good.height);
        assert_eq!(b.round(), a.round());
        assert_eq!(b.state_hash(), a.state_hash());
        assert_eq!(get(&b, &id), get(&a, &id));
        assert_eq!(get(&b, &id), "Ok([Option(Some(U64(7)))])");
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
        assert!(b.install_sync_image(&image, &good).is_err(), "not ahead");
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
        *a.consensus_change.lock().unwrap() = Some((40, hash.clone()));
        let with_policy = a.state_hash();
        assert_ne!(with_policy, before);
        *a.consensus_change.lock().unwrap() = Some((41, hash.clone()));
        assert_ne!(a.state_hash(), with_policy, "the height counts");
        *a.consensus_change.lock().unwrap() = Some((40, hash.clone()));
        a.checkpoint().unwrap();
        let (_, image) = a.export_sync_image().unwrap().unwrap();
        assert_eq!(image.modules.len(), 2, "the policy's module comes along");
        let b = Node::open(options(b_dir.path())).unwrap();
        b.install_sync_image(&image, &certified(&a)).unwrap();
        assert_eq!(b.consensus_change(), Some((40, hash.clone())));
        assert_eq!(b.state_hash(), with_policy);
        assert!(b.read_module(&hash).is_ok());
    }

    #[test]
    fn the_genesis_state_hash_is_the_empty_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).unwrap();
        assert_eq!(node.state_hash(), genesis_state_hash());
        assert_ne!(genesis_state_hash(), [0; 32]);
    }
}

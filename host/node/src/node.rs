//! The node: canisters, their lifecycle, and message execution.
//!
//! Every state-changing request becomes a journal [`Record`] in its own
//! round: it is appended to the journal (durably) before it executes, so a
//! crash loses nothing that was acknowledged, and restart replays the
//! records after the last checkpoint. Updates are serialized (one round at a
//! time); queries run concurrently against the last committed state and
//! never block updates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cellar_engine::{
    CallArgs, CanisterCode, CodeCache, ExecutionState, Hook, InstallError, Limits, MessageContext,
    MessageKind, MethodKind, Val, decode_args, execute,
};
use cellar_types::api::{
    Args, CanisterStatus, InstallMode, InterfaceInfo, LogEntry, MethodInfo, NodeStatus, RunStatus,
};
use cellar_types::{Principal, Reject, RejectCode};
use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use crate::canister::Canister;
use crate::checkpoint::{CheckpointStats, Checkpointer};
use crate::journal::{Durability, Journal, Op, Record, read_records};
use crate::state_hash;

/// Why a request could not be carried out (as opposed to a message that ran
/// and was rejected, which is a [`CallOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such canister.
    #[error("canister {0} does not exist")]
    NotFound(String),
    /// The caller does not control the canister.
    #[error("{caller} is not a controller of canister {canister}")]
    NotController {
        /// Who asked.
        caller: String,
        /// The canister.
        canister: String,
    },
    /// The request is malformed or not possible in the canister's state.
    #[error("{0}")]
    BadRequest(String),
    /// The module cannot be installed.
    #[error("{0}")]
    Install(#[from] InstallError),
    /// A lifecycle hook failed; nothing changed.
    #[error("{hook} failed, nothing was changed: {reject}")]
    HookFailed {
        /// The hook's name.
        hook: &'static str,
        /// Why.
        reject: Reject,
    },
    /// Something went wrong inside the node.
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

/// The result of a call that reached a canister.
#[derive(Debug)]
pub struct CallOutcome {
    /// The reply values or the reject.
    pub result: Result<Vec<Val>, Reject>,
    /// Instructions executed.
    pub instructions: u64,
}

/// How a node is set up.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Where state lives.
    pub data_dir: PathBuf,
    /// Execution limits.
    pub limits: Limits,
    /// Rounds between checkpoints.
    pub checkpoint_interval: u64,
    /// Journal durability.
    pub durability: Durability,
}

impl NodeOptions {
    /// Defaults for a data directory: default limits, a checkpoint every
    /// 500 rounds, synced journal.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeOptions {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            checkpoint_interval: 500,
            durability: Durability::Sync,
        }
    }
}

struct Registry {
    canisters: BTreeMap<Principal, Canister>,
    next_index: u64,
    round: u64,
    time_nanos: u64,
}

struct Writer {
    journal: Journal,
    since_checkpoint: u64,
}

enum Applied {
    Created(Principal),
    Status(CanisterStatus),
    Call(CallOutcome),
}

/// A single node with its canisters.
pub struct Node {
    options: NodeOptions,
    cache: CodeCache,
    modules_dir: PathBuf,
    state_dir: PathBuf,
    writer: Mutex<Option<Writer>>,
    registry: RwLock<Registry>,
    checkpointer: Mutex<Checkpointer>,
    last_checkpoint: Mutex<CheckpointStats>,
    fresh: bool,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn journal_path(state_dir: &Path, first_round: u64) -> PathBuf {
    state_dir.join(format!("journal-{first_round:012}.log"))
}

fn random_seed(domain: &str, round: u64, canister: &Principal) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"cellar-random-tape\0");
    hasher.update(domain.as_bytes());
    hasher.update(round.to_le_bytes());
    hasher.update(canister.as_bytes());
    hasher.finalize().into()
}

/// Decodes a hook argument list; `(a, b)` is accepted for `a, b`.
fn decode_hook_arg(arg: &str, method: &cellar_engine::Method) -> Result<Vec<Val>, String> {
    let arg = arg.trim();
    decode_args(&CallArgs::Wave(arg.to_string()), method).or_else(|first| {
        match arg.strip_prefix('(').and_then(|a| a.strip_suffix(')')) {
            Some(inner) => decode_args(&CallArgs::Wave(inner.to_string()), method),
            None => Err(first),
        }
    })
}

/// The context of a message to `canister` in the round `(round, time,
/// seed)`, seeing the certified data of `state`. Ingress carries no cycles.
fn message_context(
    canister: &Canister,
    caller: &Principal,
    method: &str,
    kind: MessageKind,
    (round, time_nanos, random_seed): (u64, u64, [u8; 32]),
    state: &ExecutionState,
) -> MessageContext {
    MessageContext {
        canister_id: canister.id.clone(),
        caller: caller.clone(),
        method: method.to_string(),
        kind,
        cycles_attached: 0,
        cycle_balance: canister.cycles,
        time_nanos,
        round,
        controllers: canister.controllers.clone(),
        certified_data: state.certified_data.clone(),
        random_seed,
    }
}

fn to_call_args(args: &Args) -> CallArgs {
    match args {
        Args::Wave(text) => CallArgs::Wave(text.clone()),
        Args::Json(json) => CallArgs::Json(json.clone()),
    }
}

impl Node {
    /// Opens the node in `options.data_dir`: loads the last checkpoint and
    /// replays the journal after it.
    pub fn open(options: NodeOptions) -> anyhow::Result<Self> {
        let modules_dir = options.data_dir.join("modules");
        let state_dir = options.data_dir.join("state");
        std::fs::create_dir_all(&modules_dir)?;
        std::fs::create_dir_all(&state_dir)?;
        let engine = cellar_engine::new_engine()?;
        let cache = CodeCache::new(
            engine,
            Some(&options.data_dir.join("compiled")),
            options.limits.max_component_bytes,
        )?;
        let checkpointer = Checkpointer::open(&state_dir.join("pages"))?;
        let mut node = Node {
            options,
            cache,
            modules_dir,
            state_dir,
            checkpointer: Mutex::new(checkpointer),
            last_checkpoint: Mutex::new(CheckpointStats::default()),
            writer: Mutex::new(None),
            registry: RwLock::new(Registry {
                canisters: BTreeMap::new(),
                next_index: 0,
                round: 0,
                time_nanos: 0,
            }),
            fresh: true,
        };
        node.recover()?;
        Ok(node)
    }

    /// Whether the node started from an empty data directory.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    fn recover(&mut self) -> anyhow::Result<()> {
        let loaded = self
            .checkpointer
            .lock()
            .expect("checkpointer lock")
            .load()?;
        if let Some(loaded) = loaded {
            self.fresh = false;
            let mut registry = self.registry.write().expect("registry lock");
            registry.round = loaded.round;
            registry.time_nanos = loaded.time_nanos;
            registry.next_index = loaded.next_index;
            for (mut canister, hash) in loaded.canisters {
                if let Some(hash) = hash {
                    canister.code = Some(self.load_module(&hash)?);
                }
                registry.canisters.insert(canister.id.clone(), canister);
            }
        }
        let mut journals: Vec<PathBuf> = std::fs::read_dir(&self.state_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
            })
            .collect();
        journals.sort();
        let mut replayed = 0u64;
        for path in &journals {
            for record in read_records(path)? {
                self.fresh = false;
                let round = self.registry.read().expect("registry lock").round;
                if record.round <= round {
                    continue;
                }
                anyhow::ensure!(
                    record.round == round + 1,
                    "journal {} skips from round {round} to {}",
                    path.display(),
                    record.round
                );
                // Request errors were answered before the crash and recur
                // on replay; an internal error (a stored module that is
                // missing or no longer loads) means replay cannot reproduce
                // what was acknowledged, and going on would diverge.
                if let Err(NodeError::Internal(e)) = self.apply(&record) {
                    return Err(e.context(format!(
                        "cannot replay round {} of journal {}",
                        record.round,
                        path.display()
                    )));
                }
                replayed += 1;
            }
        }
        let round = self.registry.read().expect("registry lock").round;
        if replayed > 0 {
            tracing::info!(replayed, round, "replayed the journal after the checkpoint");
            self.write_checkpoint()?;
            for path in journals {
                std::fs::remove_file(path)?;
            }
        }
        let journal = Journal::open(
            &journal_path(&self.state_dir, round + 1),
            self.options.durability,
        )?;
        *self.writer.lock().expect("writer lock") = Some(Writer {
            journal,
            since_checkpoint: 0,
        });
        Ok(())
    }

    fn write_checkpoint(&self) -> anyhow::Result<()> {
        let registry = self.registry.read().expect("registry lock");
        let stats = self.checkpointer.lock().expect("checkpointer lock").write(
            registry.round,
            registry.time_nanos,
            registry.next_index,
            &registry.canisters,
        )?;
        tracing::debug!(round = registry.round, ?stats, "checkpoint written");
        *self.last_checkpoint.lock().expect("stats lock") = stats;
        Ok(())
    }

    /// What the last checkpoint wrote.
    pub fn last_checkpoint(&self) -> CheckpointStats {
        *self.last_checkpoint.lock().expect("stats lock")
    }

    /// Writes a checkpoint now and starts a new journal.
    pub fn checkpoint(&self) -> anyhow::Result<()> {
        let mut writer = self.writer.lock().expect("writer lock");
        self.checkpoint_locked(&mut writer)
    }

    fn checkpoint_locked(&self, writer: &mut Option<Writer>) -> anyhow::Result<()> {
        self.write_checkpoint()?;
        let round = self.registry.read().expect("registry lock").round;
        let new_path = journal_path(&self.state_dir, round + 1);
        let journal = Journal::open(&new_path, self.options.durability)?;
        if let Some(old) = writer.replace(Writer {
            journal,
            since_checkpoint: 0,
        }) && old.journal.path() != new_path
        {
            std::fs::remove_file(old.journal.path())?;
        }
        Ok(())
    }

    fn load_module(&self, hash: &str) -> anyhow::Result<Arc<CanisterCode>> {
        let path = self.modules_dir.join(format!("{hash}.wasm"));
        let wasm = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read module {}: {e}", path.display()))?;
        self.cache
            .load(&wasm)
            .map_err(|e| anyhow::anyhow!("stored module {hash} no longer loads: {e}"))
    }

    /// Journals `op` in a new round and executes it.
    fn submit(&self, caller: &Principal, op: Op) -> Result<Applied, NodeError> {
        let mut writer = self.writer.lock().expect("writer lock");
        let record = {
            let registry = self.registry.read().expect("registry lock");
            Record {
                round: registry.round + 1,
                time_nanos: now_nanos().max(registry.time_nanos + 1),
                caller: caller.clone(),
                op,
            }
        };
        let w = writer.as_mut().expect("journal open");
        w.journal.append(&record)?;
        let result = self.apply(&record);
        w.since_checkpoint += 1;
        if w.since_checkpoint >= self.options.checkpoint_interval {
            self.checkpoint_locked(&mut writer)?;
        }
        result
    }

    fn check_controller(&self, caller: &Principal, id: &Principal) -> Result<(), NodeError> {
        let registry = self.registry.read().expect("registry lock");
        let canister = registry
            .canisters
            .get(id)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
        if !canister.is_controller(caller) {
            return Err(NodeError::NotController {
                caller: caller.to_text(),
                canister: id.to_text(),
            });
        }
        Ok(())
    }

    /// Creates an empty canister controlled by `controllers` (or the caller).
    pub fn create(
        &self,
        caller: &Principal,
        controllers: Vec<Principal>,
    ) -> Result<Principal, NodeError> {
        let controllers = if controllers.is_empty() {
            vec![caller.clone()]
        } else {
            controllers
        };
        let id = Principal::canister(self.registry.read().expect("registry lock").next_index);
        match self.submit(caller, Op::Create { id, controllers })? {
            Applied::Created(id) => Ok(id),
            _ => unreachable!("create answers with an id"),
        }
    }

    /// Installs, reinstalls or upgrades the canister's code.
    pub fn install(
        &self,
        caller: &Principal,
        id: &Principal,
        mode: InstallMode,
        wasm: &[u8],
        arg: Option<String>,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        let code = self.cache.load(wasm)?;
        let module_hash = code.hash_hex();
        let path = self.modules_dir.join(format!("{module_hash}.wasm"));
        if !path.exists() {
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, wasm).map_err(anyhow::Error::from)?;
            std::fs::File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(anyhow::Error::from)?;
            std::fs::rename(&tmp, &path).map_err(anyhow::Error::from)?;
            // The journal record naming the module follows: the module's
            // name must be as durable as the record.
            std::fs::File::open(&self.modules_dir)
                .and_then(|d| d.sync_all())
                .map_err(anyhow::Error::from)?;
        }
        let op = Op::Install {
            id: id.clone(),
            mode,
            module_hash,
            arg,
        };
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("install answers with a status"),
        }
    }

    /// Runs an update call through a round.
    pub fn update(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
    ) -> Result<CallOutcome, NodeError> {
        // Unknown canisters are request errors; they never reach the journal.
        if !self
            .registry
            .read()
            .expect("registry lock")
            .canisters
            .contains_key(id)
        {
            return Err(NodeError::NotFound(id.to_text()));
        }
        let op = Op::Call {
            id: id.clone(),
            method: method.to_string(),
            args,
        };
        match self.submit(caller, op)? {
            Applied::Call(outcome) => Ok(outcome),
            _ => unreachable!("a call answers with an outcome"),
        }
    }

    /// Runs a query against the last committed state; its changes are discarded.
    pub fn query(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
    ) -> Result<CallOutcome, NodeError> {
        let (canister, round, time_nanos) = {
            let registry = self.registry.read().expect("registry lock");
            let canister = registry
                .canisters
                .get(id)
                .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
            (canister.clone(), registry.round, registry.time_nanos)
        };
        let seed = random_seed("query", round, id);
        Ok(self
            .run_method(
                &canister,
                caller,
                method,
                &to_call_args(&args),
                MessageKind::Query,
                round,
                time_nanos,
                seed,
            )
            .0)
    }

    /// Stops a canister: calls are rejected until it is started.
    pub fn stop(&self, caller: &Principal, id: &Principal) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(caller, Op::Stop { id: id.clone() })
    }

    /// Starts a stopped canister.
    pub fn start(&self, caller: &Principal, id: &Principal) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(caller, Op::Start { id: id.clone() })
    }

    /// Deletes a canister and its state.
    pub fn delete(&self, caller: &Principal, id: &Principal) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(caller, Op::Delete { id: id.clone() })
    }

    /// Replaces the controllers.
    pub fn set_controllers(
        &self,
        caller: &Principal,
        id: &Principal,
        controllers: Vec<Principal>,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        if controllers.is_empty() {
            return Err(NodeError::BadRequest(
                "a canister needs at least one controller".into(),
            ));
        }
        self.status_op(
            caller,
            Op::SetControllers {
                id: id.clone(),
                controllers,
            },
        )
    }

    fn status_op(&self, caller: &Principal, op: Op) -> Result<CanisterStatus, NodeError> {
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("answers with a status"),
        }
    }

    /// A canister's status.
    pub fn status(&self, id: &Principal) -> Result<CanisterStatus, NodeError> {
        let registry = self.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(Canister::status)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// Every canister's status, by id.
    pub fn list(&self) -> Vec<CanisterStatus> {
        let registry = self.registry.read().expect("registry lock");
        registry.canisters.values().map(Canister::status).collect()
    }

    /// The last committed round (cheap: no state hash).
    pub fn round(&self) -> u64 {
        self.registry.read().expect("registry lock").round
    }

    /// The node's status, with the [`state_hash`](Self::state_hash) of the
    /// same round.
    pub fn node_status(&self) -> NodeStatus {
        let (round, next_index, canisters) = self.snapshot();
        NodeStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            round,
            canisters: canisters.len() as u64,
            data_dir: self.options.data_dir.display().to_string(),
            state_hash: HEXLOWER.encode(&state_hash::hash(round, next_index, &canisters)),
        }
    }

    /// A SHA-256 of the replicated state after the last committed round:
    /// the round, the next canister index and every canister's id,
    /// controllers, run status, module hash, cycles, certified data, timers,
    /// stable memory and linear memories, in a canonical order. Replicas
    /// that executed the same rounds agree on it; logs and counters that are
    /// not replicated state are left out.
    ///
    /// Linear memories enter through their page maps' Merkle hashes, cached
    /// in the tree nodes versions share, so only pages dirtied since the
    /// last call are hashed again; stable memory and metadata are still
    /// rehashed on every call (outside the registry lock, on a snapshot).
    pub fn state_hash(&self) -> [u8; 32] {
        let (round, next_index, canisters) = self.snapshot();
        state_hash::hash(round, next_index, &canisters)
    }

    /// The committed round, next canister index and canisters, taken
    /// together (canister state is behind `Arc`s, so this is cheap).
    fn snapshot(&self) -> (u64, u64, BTreeMap<Principal, Canister>) {
        let registry = self.registry.read().expect("registry lock");
        (
            registry.round,
            registry.next_index,
            registry.canisters.clone(),
        )
    }

    /// A canister's interface.
    pub fn interface(&self, id: &Principal) -> Result<InterfaceInfo, NodeError> {
        let code = self.code_of(id)?;
        let interface = &code.interface;
        Ok(InterfaceInfo {
            methods: interface
                .methods
                .iter()
                .map(|m| MethodInfo {
                    name: m.qualified_name(),
                    kind: match m.kind {
                        MethodKind::Update => "update".into(),
                        MethodKind::Query => "query".into(),
                    },
                    signature: m.signature(),
                })
                .collect(),
            hooks: interface.hooks.iter().map(|(_, m)| m.signature()).collect(),
            text: interface.describe(),
        })
    }

    /// The code installed on a canister.
    pub fn code_of(&self, id: &Principal) -> Result<Arc<CanisterCode>, NodeError> {
        let registry = self.registry.read().expect("registry lock");
        let canister = registry
            .canisters
            .get(id)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
        canister.code.clone().ok_or_else(|| {
            NodeError::BadRequest(format!("canister {} has no code installed", id.to_text()))
        })
    }

    /// A canister's recent log lines.
    pub fn logs(&self, id: &Principal) -> Result<Vec<LogEntry>, NodeError> {
        let registry = self.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(|c| c.logs.iter().cloned().collect())
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// The committed execution state of a canister (for tests and tools).
    pub fn execution_state(&self, id: &Principal) -> Result<ExecutionState, NodeError> {
        let registry = self.registry.read().expect("registry lock");
        registry
            .canisters
            .get(id)
            .map(|c| c.state.clone())
            .ok_or_else(|| NodeError::NotFound(id.to_text()))
    }

    /// Executes one journal record (live or during replay).
    fn apply(&self, record: &Record) -> Result<Applied, NodeError> {
        let result = self.apply_op(record);
        let mut registry = self.registry.write().expect("registry lock");
        registry.round = record.round;
        registry.time_nanos = record.time_nanos;
        result
    }

    fn apply_op(&self, record: &Record) -> Result<Applied, NodeError> {
        let caller = &record.caller;
        let existing = |id: &Principal| -> Result<Canister, NodeError> {
            self.registry
                .read()
                .expect("registry lock")
                .canisters
                .get(id)
                .cloned()
                .ok_or_else(|| NodeError::NotFound(id.to_text()))
        };
        let controlled = |id: &Principal| -> Result<Canister, NodeError> {
            let canister = existing(id)?;
            if !canister.is_controller(caller) {
                return Err(NodeError::NotController {
                    caller: caller.to_text(),
                    canister: id.to_text(),
                });
            }
            Ok(canister)
        };
        match &record.op {
            Op::Create { id, controllers } => {
                let mut registry = self.registry.write().expect("registry lock");
                if registry.canisters.contains_key(id) {
                    return Err(NodeError::BadRequest(format!(
                        "canister {} already exists",
                        id.to_text()
                    )));
                }
                registry.next_index = registry
                    .next_index
                    .max(id.canister_index().map_or(0, |i| i + 1));
                registry
                    .canisters
                    .insert(id.clone(), Canister::new(id.clone(), controllers.clone()));
                Ok(Applied::Created(id.clone()))
            }
            Op::Install {
                id,
                mode,
                module_hash,
                arg,
            } => {
                let canister = controlled(id)?;
                let code = self.load_module(module_hash)?;
                let updated = self.install_code(canister, code, *mode, arg.as_deref(), record)?;
                Ok(Applied::Status(self.commit(updated)))
            }
            Op::Call { id, method, args } => {
                let canister = existing(id)?;
                let (outcome, updated) = self.run_method(
                    &canister,
                    caller,
                    method,
                    &to_call_args(args),
                    MessageKind::Update,
                    record.round,
                    record.time_nanos,
                    random_seed("update", record.round, id),
                );
                if let Some(updated) = updated {
                    self.commit(updated);
                }
                Ok(Applied::Call(outcome))
            }
            Op::Stop { id } | Op::Start { id } => {
                let mut canister = controlled(id)?;
                canister.status = if matches!(record.op, Op::Stop { .. }) {
                    RunStatus::Stopped
                } else {
                    RunStatus::Running
                };
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::Delete { id } => {
                let canister = controlled(id)?;
                let status = canister.status();
                self.registry
                    .write()
                    .expect("registry lock")
                    .canisters
                    .remove(id);
                Ok(Applied::Status(status))
            }
            Op::SetControllers { id, controllers } => {
                let mut canister = controlled(id)?;
                canister.controllers = controllers.clone();
                Ok(Applied::Status(self.commit(canister)))
            }
        }
    }

    fn commit(&self, canister: Canister) -> CanisterStatus {
        let status = canister.status();
        self.registry
            .write()
            .expect("registry lock")
            .canisters
            .insert(canister.id.clone(), canister);
        status
    }

    /// Resolves, decodes and executes a client-called method. Returns the
    /// outcome and, for an update that may commit, the updated canister.
    #[allow(clippy::too_many_arguments)]
    fn run_method(
        &self,
        canister: &Canister,
        caller: &Principal,
        method_name: &str,
        args: &CallArgs,
        kind: MessageKind,
        round: u64,
        time_nanos: u64,
        seed: [u8; 32],
    ) -> (CallOutcome, Option<Canister>) {
        let reject = |code, message: String| {
            (
                CallOutcome {
                    result: Err(Reject::new(code, message)),
                    instructions: 0,
                },
                None,
            )
        };
        if canister.status == RunStatus::Stopped {
            return reject(
                RejectCode::CanisterError,
                format!("canister {} is stopped", canister.id.to_text()),
            );
        }
        let Some(code) = canister.code.clone() else {
            return reject(
                RejectCode::DestinationInvalid,
                format!("canister {} has no code installed", canister.id.to_text()),
            );
        };
        let method = match code.interface.resolve(method_name) {
            Ok(m) => m,
            Err(e) => return reject(RejectCode::DestinationInvalid, e.to_string()),
        };
        // A query method called as an update runs replicated, and its
        // changes are discarded like any query's.
        let kind = match (kind, method.kind) {
            (MessageKind::Query, MethodKind::Update) => {
                return reject(
                    RejectCode::DestinationInvalid,
                    format!(
                        "{} is an update method; send it as a call, not a query",
                        method.qualified_name()
                    ),
                );
            }
            (_, MethodKind::Query) => MessageKind::Query,
            (kind, MethodKind::Update) => kind,
        };
        if args.encoded_len() > self.options.limits.max_argument_bytes {
            return reject(
                RejectCode::DestinationInvalid,
                format!(
                    "the argument is {} bytes; the limit is {} bytes",
                    args.encoded_len(),
                    self.options.limits.max_argument_bytes
                ),
            );
        }
        let params = match decode_args(args, method) {
            Ok(p) => p,
            Err(e) => return reject(RejectCode::DestinationInvalid, e),
        };
        let ctx = message_context(
            canister,
            caller,
            &method.function,
            kind,
            (round, time_nanos, seed),
            &canister.state,
        );
        let outcome = execute(
            &code,
            &canister.state,
            method,
            &params,
            ctx,
            &self.options.limits,
        );
        let call = CallOutcome {
            result: outcome.result,
            instructions: outcome.instructions,
        };
        if kind == MessageKind::Query {
            return (call, None);
        }
        let mut updated = canister.clone();
        updated.append_logs(&outcome.logs);
        updated.updates += 1;
        if let Some(changes) = outcome.changes {
            updated.cycles = updated.cycles.saturating_add(changes.cycles_accepted);
            updated.state.apply(changes);
        }
        (call, Some(updated))
    }

    /// Runs a lifecycle hook (when exported) and returns the state after it.
    #[allow(clippy::too_many_arguments)]
    fn run_hook(
        &self,
        canister: &mut Canister,
        code: &CanisterCode,
        state: ExecutionState,
        hook: Hook,
        arg: Option<&str>,
        record: &Record,
    ) -> Result<ExecutionState, NodeError> {
        let Some(method) = code.interface.hook(hook) else {
            if arg.is_some_and(|a| !a.trim().is_empty()) {
                return Err(NodeError::BadRequest(format!(
                    "an argument was given but the canister exports no {} hook",
                    hook.wit_name()
                )));
            }
            return Ok(state);
        };
        let params = decode_hook_arg(arg.unwrap_or(""), method).map_err(NodeError::BadRequest)?;
        let kind = match hook {
            Hook::Init => MessageKind::Init,
            Hook::PreUpgrade => MessageKind::PreUpgrade,
            Hook::PostUpgrade => MessageKind::PostUpgrade,
        };
        let seed = random_seed(hook.wit_name(), record.round, &canister.id);
        let ctx = message_context(
            canister,
            &record.caller,
            &method.function,
            kind,
            (record.round, record.time_nanos, seed),
            &state,
        );
        let outcome = execute(code, &state, method, &params, ctx, &self.options.limits);
        canister.append_logs(&outcome.logs);
        if let Err(reject) = outcome.result {
            return Err(NodeError::HookFailed {
                hook: hook.wit_name(),
                reject,
            });
        }
        let mut state = state;
        if let Some(changes) = outcome.changes {
            state.apply(changes);
        }
        Ok(state)
    }

    fn install_code(
        &self,
        canister: Canister,
        code: Arc<CanisterCode>,
        mode: InstallMode,
        arg: Option<&str>,
        record: &Record,
    ) -> Result<Canister, NodeError> {
        let mut updated = canister.clone();
        let result = match mode {
            InstallMode::Install | InstallMode::Reinstall => {
                if mode == InstallMode::Install && canister.code.is_some() {
                    return Err(NodeError::BadRequest(format!(
                        "canister {} already has code; use reinstall or upgrade",
                        canister.id.to_text()
                    )));
                }
                self.run_hook(
                    &mut updated,
                    &code,
                    ExecutionState::default(),
                    Hook::Init,
                    arg,
                    record,
                )
            }
            InstallMode::Upgrade => {
                let Some(old_code) = canister.code.clone() else {
                    return Err(NodeError::BadRequest(format!(
                        "canister {} has no code to upgrade; install it first",
                        canister.id.to_text()
                    )));
                };
                let after_pre = match self.run_hook(
                    &mut updated,
                    &old_code,
                    canister.state.clone(),
                    Hook::PreUpgrade,
                    None,
                    record,
                ) {
                    Ok(state) => state,
                    Err(e) => return Err(self.keep_logs_only(canister, updated, e)),
                };
                // The heap and timers go; stable memory and certified data stay.
                let carried = ExecutionState {
                    stable: after_pre.stable,
                    certified_data: after_pre.certified_data,
                    next_timer_id: after_pre.next_timer_id,
                    ..ExecutionState::default()
                };
                self.run_hook(&mut updated, &code, carried, Hook::PostUpgrade, arg, record)
            }
        };
        match result {
            Ok(state) => {
                updated.state = state;
                updated.code = Some(code);
                updated.updates += 1;
                Ok(updated)
            }
            Err(e) => Err(self.keep_logs_only(canister, updated, e)),
        }
    }

    /// A failed install changes nothing but the log: the hook's lines
    /// explain the failure.
    fn keep_logs_only(&self, before: Canister, attempted: Canister, error: NodeError) -> NodeError {
        let mut kept = before;
        kept.logs = attempted.logs;
        kept.next_log_index = attempted.next_log_index;
        self.commit(kept);
        error
    }
}

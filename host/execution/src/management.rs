//! Management requests: create, install, upgrade, stop, start, delete,
//! controllers, cycles, policies, executed at their place in a round.

use std::sync::Arc;

use cellar_engine::{
    CallArgs, CanisterCode, ExecutionState, Hook, MessageKind, MethodKind, SchedulerPolicy,
    decode_args, execute,
};
use cellar_state::canister::Canister;
use cellar_state::journal::{CONSENSUS_POLICY_LAG, Op};
use cellar_types::api::{CanisterStatus, InstallMode, RunStatus};
use cellar_types::{Principal, Reject, RejectCode};

use crate::answer::{Applied, ResolvedCall, Step};
use crate::chunks;
use crate::context::*;
use crate::error::NodeError;
use crate::executor::Executor;

impl Executor {
    /// The scheduler policy stored under `hash`.
    pub fn load_policy(&self, hash: &str) -> anyhow::Result<SchedulerPolicy> {
        let path = self.modules.path(hash);
        let wasm = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read policy {}: {e}", path.display()))?;
        SchedulerPolicy::from_component(self.cache.engine(), &wasm)
            .map_err(|e| anyhow::anyhow!("stored policy {hash} no longer loads: {e}"))
    }

    /// The canister code stored under `hash`, compiled (or from the cache).
    pub fn load_module(&self, hash: &str) -> anyhow::Result<Arc<CanisterCode>> {
        let path = self.modules.path(hash);
        let wasm = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read module {}: {e}", path.display()))?;
        self.cache
            .load(&wasm)
            .map_err(|e| anyhow::anyhow!("stored module {hash} no longer loads: {e}"))
    }

    /// Creates an empty canister at the next free index (at the request's
    /// place in the round: concurrent creations get distinct ids, and
    /// replay assigns the same ones).
    pub fn create_now(&self, controllers: &[Principal]) -> Principal {
        let mut registry = self.registry.write().expect("registry lock");
        let id = Principal::canister(registry.next_index);
        registry.next_index += 1;
        let mut canister = Canister::new(id.clone(), controllers.to_vec());
        canister.cycles = self.options.initial_cycles;
        registry.canisters.insert(id.clone(), canister);
        id
    }

    /// Executes a management request (everything but calls, which go
    /// through input queues) at its place in the round.
    pub fn apply_management(&self, step: &Step<'_>, op: &Op) -> Result<Applied, NodeError> {
        let caller = step.caller;
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
        match op {
            Op::Create { controllers } => Ok(Applied::Created(self.create_now(controllers))),
            Op::CreateWithModule {
                controllers,
                module_hash,
                arg,
            } => {
                let id = self.create_now(controllers);
                let installed = (|| {
                    let canister = existing(&id)?;
                    let code = self.load_module(module_hash)?;
                    self.install_code(canister, code, InstallMode::Install, arg.as_deref(), step)
                })();
                match installed {
                    Ok(updated) => Ok(Applied::Status(self.commit(updated))),
                    Err(e) => {
                        let mut registry = self.registry.write().expect("registry lock");
                        registry.canisters.remove(&id);
                        registry.reindex(&id);
                        Err(e)
                    }
                }
            }
            Op::Install {
                id,
                mode,
                module_hash,
                arg,
            } => {
                self.abort_paused(Some(id));
                let canister = controlled(id)?;
                let code = self.load_module(module_hash)?;
                let updated = self.install_code(canister, code, *mode, arg.as_deref(), step)?;
                Ok(Applied::Status(self.commit(updated)))
            }
            Op::InstallChunked {
                id,
                mode,
                chunk_hashes,
                module_hash,
                arg,
            } => {
                self.abort_paused(Some(id));
                let install = chunks::ChunkedInstall {
                    mode: *mode,
                    chunk_hashes,
                    module_hash,
                    arg: arg.as_deref(),
                };
                self.apply_install_chunked(controlled(id)?, install, step)
            }
            Op::UploadChunk { id, hash } => self.apply_upload_chunk(controlled(id)?, hash),
            Op::ClearChunks { id } => Ok(self.apply_clear_chunks(controlled(id)?)),
            Op::Call { .. } => Err(NodeError::Internal(anyhow::anyhow!(
                "calls go through input queues"
            ))),
            Op::Stop { id } | Op::Start { id } => {
                self.abort_paused(Some(id));
                let mut canister = controlled(id)?;
                canister.status = if matches!(op, Op::Stop { .. }) {
                    RunStatus::Stopped
                } else {
                    RunStatus::Running
                };
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::Delete { id } => {
                self.abort_paused(Some(id));
                let canister = controlled(id)?;
                let status = canister.status();
                let mut registry = self.registry.write().expect("registry lock");
                if let Some(deleted) = registry.canisters.remove(id) {
                    let orphans = crate::round::reject_orphans(&mut registry, deleted);
                    self.orphans.lock().expect("orphans lock").extend(orphans);
                }
                registry.reindex(id);
                Ok(Applied::Status(status))
            }
            Op::SetControllers { id, controllers } => {
                let mut canister = controlled(id)?;
                canister.controllers = controllers.clone();
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::SetConsensusPolicy { module_hash } => {
                // (Replica mode is checked at submission: a restart replays
                // this before it turns replica mode on.)
                if step.caller.is_anonymous() {
                    return Err(NodeError::BadRequest(
                        "the anonymous principal cannot change the consensus policy".into(),
                    ));
                }
                let change = (step.round + CONSENSUS_POLICY_LAG, module_hash.clone());
                *self.consensus_change.lock().expect("consensus lock") = Some(change.clone());
                self.consensus_changes
                    .lock()
                    .expect("consensus lock")
                    .push(change);
                Ok(Applied::Policy)
            }
            Op::SetSchedulerPolicy { module_hash } => {
                let policy = match module_hash {
                    Some(hash) => Some((hash.clone(), self.load_policy(hash)?)),
                    None => None,
                };
                *self.scheduler_policy.write().expect("policy lock") = policy;
                Ok(Applied::Policy)
            }
            Op::TopUp { id, amount } => {
                let mut canister = existing(id)?;
                canister.cycles = canister.cycles.saturating_add(*amount);
                Ok(Applied::Status(self.commit(canister)))
            }
            Op::SetComputeAllocation { id, percent } => {
                let mut canister = controlled(id)?;
                if *percent > 100 {
                    return Err(NodeError::BadRequest(format!(
                        "a compute allocation is a percentage (0 to 100), got {percent}"
                    )));
                }
                let others: u64 = self
                    .registry
                    .read()
                    .expect("registry lock")
                    .canisters
                    .values()
                    .filter(|c| c.id != *id)
                    .map(|c| u64::from(c.messaging.compute_allocation))
                    .sum();
                if others + u64::from(*percent) > 100 {
                    return Err(NodeError::BadRequest(format!(
                        "other canisters hold {others}% of compute; {percent}% more would exceed 100%"
                    )));
                }
                canister.messaging.compute_allocation = *percent;
                Ok(Applied::Status(self.commit(canister)))
            }
        }
    }

    pub fn commit(&self, canister: Canister) -> CanisterStatus {
        let status = canister.status();
        let id = canister.id.clone();
        let mut registry = self.registry.write().expect("registry lock");
        registry.canisters.insert(id.clone(), canister);
        registry.reindex(&id);
        status
    }

    /// Resolves a method for a message of `kind` and decodes its arguments;
    /// a query method called as an update runs as a query (its changes are
    /// discarded).
    pub fn resolve_call(
        &self,
        canister: &Canister,
        method_name: &str,
        args: &CallArgs,
        kind: MessageKind,
    ) -> Result<ResolvedCall, Reject> {
        if canister.status == RunStatus::Stopped {
            return Err(Reject::new(
                RejectCode::CanisterError,
                format!("canister {} is stopped", canister.id.to_text()),
            ));
        }
        let Some(code) = canister.code.clone() else {
            return Err(Reject::new(
                RejectCode::DestinationInvalid,
                format!("canister {} has no code installed", canister.id.to_text()),
            ));
        };
        let method = code
            .interface
            .resolve(method_name)
            .map_err(|e| Reject::new(RejectCode::DestinationInvalid, e.to_string()))?
            .clone();
        let kind = match (kind, method.kind) {
            (MessageKind::Query, MethodKind::Update) => {
                return Err(Reject::new(
                    RejectCode::DestinationInvalid,
                    format!(
                        "{} is an update method; send it as a call, not a query",
                        method.qualified_name()
                    ),
                ));
            }
            (_, MethodKind::Query) => MessageKind::Query,
            (MessageKind::Query, MethodKind::CompositeQuery) => MessageKind::CompositeQuery,
            (_, MethodKind::CompositeQuery) => {
                // As on the IC: a composite query never runs replicated.
                return Err(Reject::new(
                    RejectCode::DestinationInvalid,
                    format!(
                        "{} is a composite query; it can only be sent as a query, not as an \
                         update (replicated) call",
                        method.qualified_name()
                    ),
                ));
            }
            (kind, MethodKind::Update) => kind,
        };
        if args.encoded_len() > self.options.limits.max_argument_bytes {
            return Err(Reject::new(
                RejectCode::DestinationInvalid,
                format!(
                    "the argument is {} bytes; the limit is {} bytes",
                    args.encoded_len(),
                    self.options.limits.max_argument_bytes
                ),
            ));
        }
        let params = decode_args(args, &method)
            .map_err(|e| Reject::new(RejectCode::DestinationInvalid, e))?;
        Ok(ResolvedCall {
            code,
            method,
            params,
            kind,
        })
    }

    /// Runs a lifecycle hook (when exported) and returns the state after it.
    #[allow(clippy::too_many_arguments)]
    pub fn run_hook(
        &self,
        canister: &mut Canister,
        code: &CanisterCode,
        state: ExecutionState,
        hook: Hook,
        arg: Option<&str>,
        step: &Step<'_>,
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
        let seed = random_seed(hook.wit_name(), step.round, &canister.id, step.sequence);
        let ctx = message_context(
            canister,
            step.caller,
            &method.function,
            kind,
            (step.round, step.time_nanos, seed),
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

    pub fn install_code(
        &self,
        canister: Canister,
        code: Arc<CanisterCode>,
        mode: InstallMode,
        arg: Option<&str>,
        step: &Step<'_>,
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
                    step,
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
                    step,
                ) {
                    Ok(state) => state,
                    Err(e) => return Err(self.keep_logs_only(canister, updated, e)),
                };
                // The heap and timers go; stable memory and certified data stay.
                let carried = ExecutionState {
                    stable: after_pre.stable,
                    certified_data: after_pre.certified_data,
                    next_timer_id: after_pre.next_timer_id,
                    next_call_id: after_pre.next_call_id,
                    ..ExecutionState::default()
                };
                self.run_hook(&mut updated, &code, carried, Hook::PostUpgrade, arg, step)
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
    pub fn keep_logs_only(
        &self,
        before: Canister,
        attempted: Canister,
        error: NodeError,
    ) -> NodeError {
        let mut kept = before;
        kept.logs = attempted.logs;
        kept.next_log_index = attempted.next_log_index;
        self.commit(kept);
        error
    }
}

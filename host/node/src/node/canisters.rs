//! The canister API: create, install, call, query, stop, start, delete, controllers, cycles.

use super::*;

impl Node {
    /// Refuses early a request the round would refuse anyway. A replica
    /// cannot: its state may lag the subnet's (the canister may have been
    /// created at a height it has not executed yet), so there the checks
    /// run only at execution, alike on every replica.
    pub(super) fn check_controller(
        &self,
        caller: &Principal,
        id: &Principal,
    ) -> Result<(), NodeError> {
        if self.replica.is_on() {
            return Ok(());
        }
        let registry = self.exec.registry.read().expect("registry lock");
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

    /// Refuses early a request to a canister that does not exist (on a
    /// replica the round decides: see `check_controller`).
    pub(super) fn check_exists(&self, id: &Principal) -> Result<(), NodeError> {
        if self.replica.is_on()
            || self
                .exec
                .registry
                .read()
                .expect("registry lock")
                .canisters
                .contains_key(id)
        {
            return Ok(());
        }
        Err(NodeError::NotFound(id.to_text()))
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
        match self.submit(caller, Op::Create { controllers })? {
            Applied::Created(id) => Ok(id),
            _ => unreachable!("create answers with an id"),
        }
    }

    /// Creates a canister (controlled by `controllers`, or the caller when
    /// empty) with the component `wasm` installed, as one request: the
    /// canister exists only if the install succeeds.
    pub fn create_with_module(
        &self,
        caller: &Principal,
        controllers: Vec<Principal>,
        wasm: &[u8],
        arg: Option<String>,
    ) -> Result<CanisterStatus, NodeError> {
        let controllers = if controllers.is_empty() {
            vec![caller.clone()]
        } else {
            controllers
        };
        let module_hash = self.check_and_store_module(wasm)?;
        let op = Op::CreateWithModule {
            controllers,
            module_hash,
            arg,
        };
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("create with a module answers with a status"),
        }
    }

    /// Loads the component `wasm` (refusing what does not load) and stores
    /// it under its hash, which it returns.
    pub(super) fn check_and_store_module(&self, wasm: &[u8]) -> Result<String, NodeError> {
        let module_hash = self.exec.cache.load(wasm)?.hash_hex();
        self.store_module(&module_hash, wasm)?;
        Ok(module_hash)
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
        let module_hash = self.check_and_store_module(wasm)?;
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
        self.check_exists(id)?;
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

    /// Submits an update and returns without waiting where it can: in
    /// replica mode the request goes to consensus and `done` runs with the
    /// answer once a finalized batch executed it (on the thread executing
    /// batches: `done` must be quick); a single node runs it as
    /// [`Node::update`] does, then calls `done`. So a replica's HTTP
    /// workers are not held while consensus orders their updates. `done`
    /// always runs once, with the error if the update cannot be submitted.
    pub fn submit_update(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
        done: impl FnOnce(Result<CallOutcome, NodeError>) + Send + 'static,
    ) {
        if !self.replica.is_on() {
            done(self.update(caller, id, method, args));
            return;
        }
        if let Err(e) = self.check_exists(id) {
            done(Err(e));
            return;
        }
        let ingress = Ingress {
            caller: caller.clone(),
            op: Op::Call {
                id: id.clone(),
                method: method.to_string(),
                args,
            },
            request: CURRENT_REQUEST.with(|c| c.borrow().clone()),
        };
        let waiter: crate::replica_link::Waiter =
            Box::new(move |result| done(result.and_then(Applied::into_call)));
        if let Err((e, waiter)) = self.replica.submit_then(&ingress, None, waiter) {
            waiter(Err(e));
        }
    }

    /// Runs a query against the last committed state; its changes are
    /// discarded. A composite query method (see `composite.rs`) runs with
    /// the queries it calls, all against the same committed state.
    pub fn query(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: Args,
    ) -> Result<CallOutcome, NodeError> {
        let (canister, round, time_nanos) = {
            let registry = self.exec.registry.read().expect("registry lock");
            let canister = registry
                .canisters
                .get(id)
                .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
            (canister.clone(), registry.round, registry.time_nanos)
        };
        let seed = random_seed("query", round, id, 0);
        let resolved = match self.exec.resolve_call(
            &canister,
            method,
            &to_call_args(&args),
            MessageKind::Query,
        ) {
            Ok(r) => r,
            Err(reject) => {
                return Ok(CallOutcome {
                    result: Err(reject),
                    instructions: 0,
                });
            }
        };
        if resolved.kind == MessageKind::CompositeQuery {
            let (result, instructions) =
                self.exec
                    .composite_query(caller, id, method, &to_call_args(&args));
            return Ok(CallOutcome {
                result,
                instructions,
            });
        }
        let ctx = message_context(
            &canister,
            caller,
            &resolved.method.function,
            MessageKind::Query,
            (round, time_nanos, seed),
            &canister.state,
        );
        let outcome = execute(
            &resolved.code,
            &canister.state,
            &resolved.method,
            &resolved.params,
            ctx,
            &self.options.limits,
        );
        Ok(CallOutcome {
            result: outcome.result,
            instructions: outcome.instructions,
        })
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

    pub(super) fn status_op(
        &self,
        caller: &Principal,
        op: Op,
    ) -> Result<CanisterStatus, NodeError> {
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("answers with a status"),
        }
    }

    /// Adds `amount` cycles to a canister's balance. Anyone may (cycles are
    /// minted on a local node); a frozen canister runs again once its
    /// balance is above the freezing threshold.
    pub fn top_up(
        &self,
        caller: &Principal,
        id: &Principal,
        amount: u64,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_exists(id)?;
        self.status_op(
            caller,
            Op::TopUp {
                id: id.clone(),
                amount,
            },
        )
    }

    /// Sets the percentage of every round's instructions guaranteed to the
    /// canister. The allocations of all canisters add up to at most 100.
    pub fn set_compute_allocation(
        &self,
        caller: &Principal,
        id: &Principal,
        percent: u8,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        self.status_op(
            caller,
            Op::SetComputeAllocation {
                id: id.clone(),
                percent,
            },
        )
    }
}

//! One deterministic round: induct the batch, fire due timers, schedule,
//! execute canisters in parallel, route the messages they sent.
//!
//! The result of a round is a function of the state before it and its
//! journal record (round number, time, ingress batch) only:
//!
//! * management requests execute first, at once, in batch order (see
//!   `management.rs`). An update call is checked (canister exists, running,
//!   method known, not frozen, queue not full: otherwise an immediate
//!   reject) and appended to the end of its canister's input queue
//!   (bounded: 500 messages);
//! * due timers queue an `on-timer` message, in canister and timer order;
//! * the scheduler (see `scheduler.rs`) orders the canisters with work and
//!   gives each an instruction allowance; a canister executes its queued
//!   messages in order until its allowance is spent (at least one);
//! * canisters execute in parallel on `execution_threads` threads, each on
//!   its own copy; nothing one canister does is visible to another before
//!   the round ends;
//! * results merge in the scheduler's order, then the calls and responses
//!   they produced are routed to input queues in that same order, for the
//!   next round (a missing, stopped or full callee answers with a reject);
//! * at the end of the round every answered request's result is recorded in
//!   the ingress history (`record_fates`: calls, management requests with a
//!   small reply, requests rejected before execution: unknown method, bad
//!   arguments, frozen, not a controller).
//!
//! So the thread count and timing never change the outcome: replaying a
//! journal on 1, 2 or 4 threads gives the same state hash (tested).
//!
//! A message is an ingress call, a call from a canister (`Request`), a
//! call's answer (`Response`, delivered to `callbacks.on-reply`) or a
//! timer. Its outcome is settled on the canister: cycles charged (per
//! message, per instruction, per call and argument byte), changes committed
//! or dropped, its calls recorded as outstanding and sent, its origin
//! answered — unless it deferred its reply (`message.defer-reply`), in
//! which case a later message answers with `reply-to`/`reject-to` (the Rust
//! SDK wraps this as `async` calls). A callback that traps, or that leaves a
//! deferred message with no call working for it, rejects that message so
//! nothing waits forever.
//!
//! Deleting a canister answers everything it owed ([`reject_orphans`]):
//! queued and deferred ingress messages get a reject for their waiters,
//! queued and deferred calls from canisters a reject response (attached
//! cycles refunded) that runs the caller's callback; a paused execution is
//! put back in the queue first, so it is answered too. Stopping a canister
//! keeps its queue: each message is rejected ("stopped") when the scheduler
//! reaches it, a paused one included (tested).
//!
//! Dirty-page budget: every message reports `delta_pages` (heap pages whose
//! contents changed plus stable chunks written: the same on every replica
//! and memory tracker); a canister's messages in a round stop once they
//! changed its share of `ExecutionConfig::round_dirty_pages` (set from
//! `NodeOptions::round_dirty_pages`): equal shares of the canisters
//! scheduled, capped by `canister_round_dirty_pages`; at least one message
//! runs, and the rest wait for the next round.
//!
//! A long update that uses up its slice is paused (`paused.rs`) and
//! continues in a later round. A checkpoint aborts paused executions
//! ([`Executor::abort_paused`](crate::Executor::abort_paused): their
//! messages go back to the front of their queues), which changes the rounds
//! after it, so every replica checkpoints, and aborts, at the same rounds
//! (multiples of the checkpoint interval).

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use cellar_engine::{
    CallArgs, MessageKind, MessageOutcome, Progress, Val, decode_results_wave, execute,
    execute_sliced, results_to_wave,
};
use cellar_types::api::{Args, CallResponse, RunStatus};
use cellar_types::{Principal, Reject, RejectCode};

use crate::answer::{Answered, Applied, Step};
use crate::context::{message_context, random_seed, to_call_args};
use crate::cycles;
use crate::error::{CallOutcome, NodeError, call_response, refused_response};
use crate::executor::Executor;
use crate::paused::{PausedMessage, Settle};
use crate::scheduler::{self, Summary};
use cellar_state::canister::Canister;
use cellar_state::history::HistoryRefusal;
use cellar_state::journal::{Op, Record};
use cellar_state::messages::{
    Answer, IngressId, InputMessage, OpenContext, Origin, OutstandingCall,
};
use cellar_state::registry::Registry;

/// Where a message comes from.
struct Source<'a> {
    caller: &'a Principal,
    cycles_attached: u64,
    origin: Option<Origin>,
    owner: Option<u64>,
    /// The message itself when it may be sliced across rounds (calls, not
    /// callbacks).
    sliceable: Option<InputMessage>,
}

/// A canister the scheduler picked for the round: its copy, its paused
/// execution if any, and its instruction allowance.
type Scheduled = (Canister, Option<PausedMessage>, u64);

/// What one canister did in a round.
struct CanisterRun {
    canister: Canister,
    /// An execution that continues in a later round.
    paused: Option<PausedMessage>,
    answered: Answered,
    /// Calls to route: (callee, request).
    requests: Vec<(Principal, InputMessage)>,
    /// Responses to route: (caller, response).
    responses: Vec<(Principal, InputMessage)>,
    instructions: u64,
    /// Pages its messages changed this round (`MessageOutcome::delta_pages`).
    delta_pages: u64,
}

impl Executor {
    /// Executes the round of `record` (live or during replay) and returns
    /// the ingress messages it answered.
    pub fn execute_round(&self, record: &Record) -> Answered {
        let (round, time) = (record.round, record.time_nanos);
        let mut answered = Answered::new();
        self.history
            .lock()
            .expect("history lock")
            .prune(time, round);
        for (index, ingress) in record.ingress.iter().enumerate() {
            let id = IngressId {
                round,
                index: index as u32,
            };
            if let Some(tag) = &ingress.request {
                let inducted = self.history.lock().expect("history lock").induct(
                    &tag.id,
                    &ingress.caller,
                    tag.expiry,
                    tag.encoding,
                    id,
                    round,
                    time,
                );
                // Refused alike on every replica: a full history, or a
                // request executed before.
                match inducted {
                    Ok(()) => {}
                    Err(e @ HistoryRefusal::Full) => {
                        answered.push((id, Err(NodeError::Overloaded(e.to_string()))));
                        continue;
                    }
                    Err(e @ HistoryRefusal::Duplicate(_)) => {
                        answered.push((id, Err(NodeError::BadRequest(e.to_string()))));
                        continue;
                    }
                }
            }
            match &ingress.op {
                Op::Call {
                    id: canister,
                    method,
                    args,
                } => {
                    if let Some(result) = self.induct(id, &ingress.caller, canister, method, args) {
                        answered.push((id, result));
                    }
                }
                op => {
                    let step = Step {
                        round,
                        time_nanos: time,
                        caller: &ingress.caller,
                        sequence: index as u64,
                    };
                    answered.push((id, self.apply_management(&step, op)));
                    answered.append(&mut self.orphans.lock().expect("orphans lock"));
                }
            }
        }
        self.fire_timers(time);

        let (summaries, canisters) = self.take_active();
        let plan = {
            let policy = self.scheduler_policy.read().expect("policy lock");
            scheduler::plan(
                policy.as_ref().map(|(_, p)| p),
                round,
                self.options.round_instructions,
                &summaries,
            )
        };
        if let Some(why) = &plan.fallback {
            tracing::error!(
                round,
                "the scheduler policy failed; the built-in default ran: {why}"
            );
            *self.last_policy_fallback.lock().expect("fallback lock") = Some((round, why.clone()));
        }
        let mut slots: Vec<Option<Canister>> = canisters.into_iter().map(Some).collect();
        let mut ordered = Vec::with_capacity(plan.schedule.len());
        {
            let mut paused = self.paused.lock().expect("paused lock");
            for (index, allowance) in &plan.schedule {
                if let Some(canister) = slots.get_mut(*index).and_then(Option::take) {
                    let execution = paused.remove(&canister.id);
                    ordered.push((canister, execution, *allowance));
                }
            }
        }
        // The round's dirty-page budget, in equal shares (a function of the
        // plan only, so every replica agrees).
        let dirty_budget = (self.options.round_dirty_pages / ordered.len().max(1) as u64)
            .min(self.options.canister_round_dirty_pages)
            .max(1);
        let mut runs = self.run_canisters(ordered, round, time, dirty_budget);
        {
            let mut paused = self.paused.lock().expect("paused lock");
            for run in &mut runs {
                if let Some(execution) = run.paused.take() {
                    paused.insert(run.canister.id.clone(), execution);
                }
            }
        }

        let mut registry = self.registry.write().expect("registry lock");
        for (summary, priority) in summaries.iter().zip(&plan.priorities) {
            if let Some(c) = registry.canisters.get_mut(&summary.id) {
                c.messaging.accumulated_priority = *priority;
            }
        }
        let mut requests = Vec::new();
        let mut responses = Vec::new();
        for mut run in runs {
            let id = run.canister.id.clone();
            // Keep the priority the scheduler just set.
            if let Some(current) = registry.canisters.get(&id) {
                run.canister.messaging.accumulated_priority =
                    current.messaging.accumulated_priority;
            }
            // An idle canister's priority starts again from zero.
            if !run.canister.messaging.has_work() && !self.is_paused(&id) {
                run.canister.messaging.accumulated_priority = 0;
            }
            registry.canisters.insert(id.clone(), run.canister);
            registry.reindex(&id);
            answered.append(&mut run.answered);
            requests.append(&mut run.requests);
            responses.append(&mut run.responses);
        }
        // Route what the round sent, in the scheduler's order.
        for (callee, request) in requests {
            let InputMessage::Request {
                caller,
                call_id,
                cycles,
                ..
            } = &request
            else {
                continue;
            };
            let refusal = match registry.canisters.get(&callee) {
                None => Some((
                    RejectCode::DestinationInvalid,
                    format!("canister {} does not exist", callee.to_text()),
                )),
                Some(c) if c.status == RunStatus::Stopped => Some((
                    RejectCode::CanisterError,
                    format!("canister {} is stopped", callee.to_text()),
                )),
                Some(c) if !c.messaging.has_room() => Some((
                    RejectCode::SystemTransient,
                    format!("the input queue of canister {} is full", callee.to_text()),
                )),
                Some(_) => None,
            };
            match refusal {
                None => {
                    let c = registry.canisters.get_mut(&callee).expect("checked above");
                    c.messaging.input_queue.push_back(request);
                    registry.reindex(&callee);
                }
                Some((code, message)) => {
                    let caller = caller.clone();
                    let response = InputMessage::Response {
                        call_id: *call_id,
                        callee: callee.clone(),
                        answer: Answer::Reject { code, message },
                        refund: *cycles,
                    };
                    responses.push((caller, response));
                }
            }
        }
        for (caller, response) in responses {
            if let Some(c) = registry.canisters.get_mut(&caller) {
                c.messaging.input_queue.push_back(response);
                registry.reindex(&caller);
            }
        }
        registry.round = round;
        registry.time_nanos = time;
        drop(registry);
        self.record_fates(&answered, round, time);
        answered
    }

    /// Records in the ingress history the result of every request the
    /// round answered (those inducted with an id).
    fn record_fates(&self, answered: &Answered, round: u64, time: u64) {
        let mut history = self.history.lock().expect("history lock");
        for (at, result) in answered {
            let Some(encoding) = history.processing_at(*at) else {
                continue;
            };
            let response = match result {
                Ok(Applied::Call(outcome)) => call_response(outcome.clone(), encoding),
                Ok(Applied::Created(id)) => CallResponse::Replied {
                    reply: serde_json::Value::String(id.to_text()),
                    instructions: 0,
                },
                Ok(_) => CallResponse::Replied {
                    reply: serde_json::Value::Null,
                    instructions: 0,
                },
                Err(e) => refused_response(e),
            };
            history.finish(*at, response, round, time);
        }
    }

    /// Puts an ingress call into its canister's input queue, or answers it
    /// at once when it cannot run.
    fn induct(
        &self,
        id: IngressId,
        caller: &Principal,
        canister_id: &Principal,
        method: &str,
        args: &Args,
    ) -> Option<Result<Applied, NodeError>> {
        let reject = |code, message: String| {
            Some(Ok(Applied::Call(CallOutcome {
                result: Err(Reject::new(code, message)),
                instructions: 0,
            })))
        };
        let mut registry = self.registry.write().expect("registry lock");
        let Some(canister) = registry.canisters.get_mut(canister_id) else {
            return Some(Err(NodeError::NotFound(canister_id.to_text())));
        };
        if canister.status == RunStatus::Stopped {
            return reject(
                RejectCode::CanisterError,
                format!("canister {} is stopped", canister_id.to_text()),
            );
        }
        let Some(code) = canister.code.clone() else {
            return reject(
                RejectCode::DestinationInvalid,
                format!("canister {} has no code installed", canister_id.to_text()),
            );
        };
        if let Err(e) = code.interface.resolve(method) {
            return reject(RejectCode::DestinationInvalid, e.to_string());
        }
        let threshold = cycles::freezing_threshold(self.options.limits.update_instructions);
        if canister.cycles < threshold {
            return reject(
                RejectCode::SystemTransient,
                format!(
                    "canister {} is frozen: its balance of {} cycles is below the {} cycles a \
                     message may cost; top it up with `cellar canister top-up`",
                    canister_id.to_text(),
                    canister.cycles,
                    threshold
                ),
            );
        }
        if !canister.messaging.has_room() {
            return reject(
                RejectCode::SystemTransient,
                format!(
                    "the input queue of canister {} is full; try again later",
                    canister_id.to_text()
                ),
            );
        }
        let bytes = to_call_args(args).encoded_len() as u64;
        canister.cycles = canister
            .cycles
            .saturating_sub(cycles::INGRESS_BYTE_FEE.saturating_mul(bytes));
        canister
            .messaging
            .input_queue
            .push_back(InputMessage::Ingress {
                id,
                caller: caller.clone(),
                method: method.to_string(),
                args: args.clone(),
            });
        registry.reindex(canister_id);
        None
    }

    /// Queues a timer message for every timer due at `time` (and moves
    /// periodic timers to their next time, one-shot timers out).
    fn fire_timers(&self, time: u64) {
        let mut registry = self.registry.write().expect("registry lock");
        let timed: Vec<Principal> = registry.timed.iter().cloned().collect();
        for id in timed {
            let Some(canister) = registry.canisters.get_mut(&id) else {
                continue;
            };
            let due: Vec<u64> = canister
                .state
                .timers
                .iter()
                .filter(|(_, t)| t.at_nanos <= time)
                .map(|(id, _)| *id)
                .collect();
            if due.is_empty() {
                continue;
            }
            let listens = canister.status == RunStatus::Running
                && canister
                    .code
                    .as_ref()
                    .is_some_and(|c| c.interface.on_timer.is_some());
            for timer_id in due {
                let timer = canister.state.timers[&timer_id];
                match timer.interval_nanos {
                    Some(interval) => {
                        let behind = (time - timer.at_nanos) / interval + 1;
                        let next = timer
                            .at_nanos
                            .saturating_add(behind.saturating_mul(interval));
                        canister
                            .state
                            .timers
                            .get_mut(&timer_id)
                            .expect("due timer")
                            .at_nanos = next;
                    }
                    None => {
                        canister.state.timers.remove(&timer_id);
                    }
                }
                if listens {
                    canister
                        .messaging
                        .input_queue
                        .push_back(InputMessage::Timer { timer_id });
                }
            }
            registry.reindex(&id);
        }
    }

    /// The scheduler's view of every canister with work, and copies of
    /// those canisters, in id order.
    fn take_active(&self) -> (Vec<Summary>, Vec<Canister>) {
        let registry = self.registry.read().expect("registry lock");
        let paused: std::collections::BTreeSet<Principal> = self
            .paused
            .lock()
            .expect("paused lock")
            .keys()
            .cloned()
            .collect();
        let mut summaries = Vec::with_capacity(registry.active.len());
        let mut canisters = Vec::with_capacity(registry.active.len());
        for id in registry.active.union(&paused) {
            let Some(c) = registry.canisters.get(id) else {
                continue;
            };
            summaries.push(Summary {
                id: id.clone(),
                queue_length: c.messaging.input_queue.len() as u32,
                compute_allocation: c.messaging.compute_allocation,
                accumulated_priority: c.messaging.accumulated_priority,
                paused: paused.contains(id),
                rounds_since_executed: registry
                    .round
                    .saturating_sub(c.messaging.last_executed_round),
            });
            canisters.push(c.clone());
        }
        (summaries, canisters)
    }

    /// Executes the canisters (each with its allowance) on the configured
    /// number of threads; the results come back in the given order.
    fn run_canisters(
        &self,
        ordered: Vec<Scheduled>,
        round: u64,
        time: u64,
        dirty_budget: u64,
    ) -> Vec<CanisterRun> {
        let threads = self.options.execution_threads.min(ordered.len()).max(1);
        let budget = |allowance| (allowance, dirty_budget);
        if threads == 1 {
            return ordered
                .into_iter()
                .map(|(c, paused, allowance)| {
                    self.run_canister(c, paused, budget(allowance), round, time)
                })
                .collect();
        }
        let inputs: Vec<Mutex<Option<Scheduled>>> =
            ordered.into_iter().map(|x| Mutex::new(Some(x))).collect();
        let outputs: Vec<Mutex<Option<CanisterRun>>> =
            inputs.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(input) = inputs.get(i) else { break };
                        let (canister, paused, allowance) = input
                            .lock()
                            .expect("input lock")
                            .take()
                            .expect("taken once");
                        let run =
                            self.run_canister(canister, paused, budget(allowance), round, time);
                        *outputs[i].lock().expect("output lock") = Some(run);
                    }
                });
            }
        });
        outputs
            .into_iter()
            .map(|o| {
                o.into_inner()
                    .expect("output lock")
                    .expect("every canister ran")
            })
            .collect()
    }

    /// Executes a canister's queued messages in order until its instruction
    /// allowance or its dirty-page budget is spent (always at least one
    /// message); the rest wait for the next round.
    fn run_canister(
        &self,
        canister: Canister,
        paused: Option<PausedMessage>,
        (allowance, dirty_budget): (u64, u64),
        round: u64,
        time: u64,
    ) -> CanisterRun {
        let mut run = CanisterRun {
            canister,
            paused: None,
            answered: Vec::new(),
            requests: Vec::new(),
            responses: Vec::new(),
            instructions: 0,
            delta_pages: 0,
        };
        let mut executed = 0u64;
        if let Some(paused) = paused {
            executed += 1;
            match paused.execution.resume() {
                Progress::Done(outcome) => {
                    let (used, _) = self.settle(&mut run, outcome, paused.settle);
                    run.instructions = used.min(self.options.limits.slice_instructions);
                }
                Progress::Paused(execution) => {
                    run.paused = Some(PausedMessage {
                        execution,
                        ..paused
                    });
                    run.instructions = self.options.limits.slice_instructions;
                }
            }
        }
        while run.paused.is_none() && (executed == 0 || run.instructions < allowance) {
            if executed > 0 && run.delta_pages >= dirty_budget {
                if !run.canister.messaging.input_queue.is_empty() {
                    tracing::debug!(
                        canister = %run.canister.id,
                        round,
                        pages = run.delta_pages,
                        budget = dirty_budget,
                        "the round's dirty-page budget is used: the rest waits for the next round"
                    );
                }
                break;
            }
            let Some(message) = run.canister.messaging.input_queue.pop_front() else {
                break;
            };
            let used = self.run_message(&mut run, message, round, time);
            run.instructions = run.instructions.saturating_add(used);
            executed += 1;
        }
        run.canister.messaging.last_executed_round = round;
        run
    }

    /// Executes one message; returns the instructions it used.
    fn run_message(
        &self,
        run: &mut CanisterRun,
        message: InputMessage,
        round: u64,
        time: u64,
    ) -> u64 {
        let original = message.clone();
        let c = &mut run.canister;
        let sequence = c.messaging.next_context_id;
        let seed = random_seed("message", round, &c.id, sequence);
        let threshold = cycles::freezing_threshold(self.options.limits.update_instructions);
        let frozen = c.cycles < threshold;
        let frozen_reject = || {
            Reject::new(
                RejectCode::SystemTransient,
                format!(
                    "canister {} is frozen: its balance of {} cycles is below {}; top it up \
                     with `cellar canister top-up`",
                    c.id.to_text(),
                    c.cycles,
                    threshold
                ),
            )
        };
        match message {
            InputMessage::Ingress {
                id,
                caller,
                method,
                args,
            } => {
                let origin = Origin::Ingress { id };
                if frozen {
                    let reject = frozen_reject();
                    answer(run, origin, Err(reject), 0, 0);
                    return 0;
                }
                let resolved =
                    self.resolve_call(c, &method, &to_call_args(&args), MessageKind::Update);
                let source = Source {
                    caller: &caller,
                    cycles_attached: 0,
                    origin: Some(origin),
                    owner: None,
                    sliceable: Some(original),
                };
                self.execute_resolved(run, resolved, source, (round, time, seed))
                    .0
            }
            InputMessage::Request {
                caller,
                call_id,
                method,
                args,
                cycles,
            } => {
                let origin = Origin::Canister {
                    caller: caller.clone(),
                    call_id,
                };
                if frozen {
                    let reject = frozen_reject();
                    answer(run, origin, Err(reject), cycles, 0);
                    return 0;
                }
                let resolved = match request_args(&args) {
                    Ok(args) => self.resolve_call(c, &method, &args, MessageKind::Update),
                    Err(e) => Err(Reject::new(RejectCode::DestinationInvalid, e)),
                };
                let source = Source {
                    caller: &caller,
                    cycles_attached: cycles,
                    origin: Some(origin),
                    owner: None,
                    sliceable: Some(original),
                };
                self.execute_resolved(run, resolved, source, (round, time, seed))
                    .0
            }
            InputMessage::Response {
                call_id,
                callee,
                answer: result,
                refund,
            } => {
                c.cycles = c.cycles.saturating_add(refund);
                let Some(call) = c.messaging.outstanding_calls.remove(&call_id) else {
                    tracing::warn!(canister = %c.id, call_id, "dropping a response to no outstanding call");
                    return 0;
                };
                let owner = call.owner;
                let callback = c
                    .code
                    .clone()
                    .and_then(|code| code.interface.on_reply.clone().map(|m| (code, m)));
                let Some((code, method)) = callback.filter(|_| c.status == RunStatus::Running)
                else {
                    settle_owner(run, owner, None);
                    return 0;
                };
                let params = vec![Val::U64(call_id), call_result_val(&result)];
                let resolved = Ok(crate::answer::ResolvedCall {
                    code,
                    method,
                    params,
                    kind: MessageKind::Update,
                });
                let (used, failure) =
                    self.execute_callback(run, resolved, &callee, owner, (round, time, seed));
                settle_owner(run, owner, failure);
                used
            }
            InputMessage::Timer { timer_id } => {
                if frozen || c.status == RunStatus::Stopped {
                    return 0;
                }
                let Some((code, method)) = c
                    .code
                    .clone()
                    .and_then(|code| code.interface.on_timer.clone().map(|m| (code, m)))
                else {
                    return 0;
                };
                let resolved = Ok(crate::answer::ResolvedCall {
                    code,
                    method,
                    params: vec![Val::U64(timer_id)],
                    kind: MessageKind::Update,
                });
                let me = c.id.clone();
                self.execute_callback(run, resolved, &me, None, (round, time, seed))
                    .0
            }
        }
    }

    /// Executes a resolved message (a slice of it, when it is long) and
    /// settles it. Returns the instructions used and the reject if it failed.
    fn execute_resolved(
        &self,
        run: &mut CanisterRun,
        resolved: Result<crate::answer::ResolvedCall, Reject>,
        source: Source<'_>,
        (round, time, seed): (u64, u64, [u8; 32]),
    ) -> (u64, Option<Reject>) {
        let resolved = match resolved {
            Ok(r) => r,
            Err(reject) => {
                if let Some(origin) = source.origin {
                    answer(run, origin, Err(reject.clone()), source.cycles_attached, 0);
                }
                return (0, Some(reject));
            }
        };
        let c = &mut run.canister;
        let mut ctx = message_context(
            c,
            source.caller,
            &resolved.method.function,
            resolved.kind,
            (round, time, seed),
            &c.state,
        );
        ctx.cycles_attached = source.cycles_attached;
        c.messaging.next_context_id += 1;
        let settle = Settle {
            cycles_attached: source.cycles_attached,
            origin: source.origin,
            owner: source.owner,
            method: resolved.method.qualified_name(),
            kind: resolved.kind,
            context_id: ctx.context_id,
        };
        let limits = &self.options.limits;
        let outcome = match source.sliceable {
            Some(message) if resolved.kind == MessageKind::Update => {
                match execute_sliced(
                    &resolved.code,
                    &c.state,
                    &resolved.method,
                    &resolved.params,
                    ctx,
                    limits,
                ) {
                    Progress::Done(outcome) => outcome,
                    Progress::Paused(execution) => {
                        run.paused = Some(PausedMessage {
                            execution,
                            message,
                            settle,
                        });
                        return (limits.slice_instructions, None);
                    }
                }
            }
            _ => execute(
                &resolved.code,
                &c.state,
                &resolved.method,
                &resolved.params,
                ctx,
                limits,
            ),
        };
        self.settle(run, outcome, settle)
    }

    /// Settles a finished message on its canister: charges cycles,
    /// commits or drops its changes, sends its calls, answers its origin
    /// (now, or later when it deferred its reply) and the deferred messages
    /// it answered.
    fn settle(
        &self,
        run: &mut CanisterRun,
        outcome: MessageOutcome,
        settle: Settle,
    ) -> (u64, Option<Reject>) {
        let Settle {
            cycles_attached,
            origin,
            owner,
            method,
            kind,
            context_id,
        } = settle;
        run.delta_pages = run.delta_pages.saturating_add(outcome.delta_pages);
        let c = &mut run.canister;
        let instructions = outcome.instructions;
        c.append_logs(&outcome.logs);
        c.cycles = c.cycles.saturating_sub(cycles::execution_fee(instructions));
        if kind != MessageKind::Query {
            c.updates += 1;
        }
        let mut refund = cycles_attached;
        let mut deferred = false;
        let mut late_answers = Vec::new();
        if let (Ok(_), Some(changes)) = (&outcome.result, outcome.changes) {
            refund = cycles_attached - changes.cycles_accepted.min(cycles_attached);
            c.cycles = c.cycles.saturating_add(changes.cycles_accepted);
            deferred = changes.deferred && origin.is_some();
            let call_owner = if deferred { Some(context_id) } else { owner };
            for call in &changes.calls {
                c.cycles = c
                    .cycles
                    .saturating_sub(call.cycles)
                    .saturating_sub(cycles::call_fee(call.args.len()));
                c.messaging.outstanding_calls.insert(
                    call.call_id,
                    OutstandingCall {
                        callee: call.callee.clone(),
                        owner: call_owner,
                    },
                );
                run.requests.push((
                    call.callee.clone(),
                    InputMessage::Request {
                        caller: c.id.clone(),
                        call_id: call.call_id,
                        method: call.method.clone(),
                        args: call.args.clone(),
                        cycles: call.cycles,
                    },
                ));
            }
            let late_replies = changes.late_replies.clone();
            c.state.apply(changes);
            for late in late_replies {
                let Some(open) = c.messaging.open_contexts.remove(&late.token) else {
                    continue;
                };
                let result = late_answer(c, &open, late.answer);
                late_answers.push((open.origin, result, open.refund));
            }
        }
        for (origin, result, refund) in late_answers {
            answer(run, origin, result, refund, 0);
        }
        let c = &mut run.canister;
        match (origin, deferred) {
            (None, _) => {}
            (Some(origin), true) => {
                c.messaging.open_contexts.insert(
                    context_id,
                    OpenContext {
                        origin,
                        method,
                        refund,
                    },
                );
            }
            (Some(origin), false) => {
                let result = outcome.result.clone().map(Reply::Values);
                answer(run, origin, result, refund, instructions);
            }
        }
        (instructions, outcome.result.err())
    }

    /// Executes a callback (`on-reply`, `on-timer`): a message nobody waits
    /// for directly. Returns the instructions used and the reject if it failed.
    fn execute_callback(
        &self,
        run: &mut CanisterRun,
        resolved: Result<crate::answer::ResolvedCall, Reject>,
        caller: &Principal,
        owner: Option<u64>,
        round_context: (u64, u64, [u8; 32]),
    ) -> (u64, Option<Reject>) {
        let source = Source {
            caller,
            cycles_attached: 0,
            origin: None,
            owner,
            sliceable: None,
        };
        self.execute_resolved(run, resolved, source, round_context)
    }
}

/// After the callback of a call that works for the deferred message
/// `owner`: when the callback failed, or no call works for that message any
/// more while it is still owed an answer, the message is rejected rather
/// than left waiting forever.
fn settle_owner(run: &mut CanisterRun, owner: Option<u64>, failure: Option<Reject>) {
    let Some(token) = owner else { return };
    let messaging = &run.canister.messaging;
    if !messaging.open_contexts.contains_key(&token) {
        return;
    }
    let message = match failure {
        Some(reject) => format!("the canister failed in a callback: {}", reject.message),
        None if messaging
            .outstanding_calls
            .values()
            .any(|c| c.owner == Some(token)) =>
        {
            return;
        }
        None => "the canister did not answer: no call works for it any more".to_string(),
    };
    let open = run
        .canister
        .messaging
        .open_contexts
        .remove(&token)
        .expect("checked above");
    answer(
        run,
        open.origin,
        Err(Reject::new(RejectCode::CanisterError, message)),
        open.refund,
        0,
    );
}

/// Answers everything a deleted canister owed, so that nothing waits
/// forever: its queued ingress messages and deferred ingress messages are
/// rejected (returned, for the round to answer their waiters), its queued
/// and deferred calls from other canisters get a reject response in their
/// caller's queue (whose callback then runs), with the attached cycles
/// refunded. Queued responses and timers need no answer.
pub fn reject_orphans(registry: &mut Registry, deleted: Canister) -> Answered {
    let id = deleted.id.clone();
    let reason = || {
        Reject::new(
            RejectCode::DestinationInvalid,
            format!("canister {} was deleted before it answered", id.to_text()),
        )
    };
    let mut owed: Vec<(Origin, u64)> = Vec::new();
    for message in deleted.messaging.input_queue {
        match message {
            InputMessage::Ingress { id, .. } => owed.push((Origin::Ingress { id }, 0)),
            InputMessage::Request {
                caller,
                call_id,
                cycles,
                ..
            } => owed.push((Origin::Canister { caller, call_id }, cycles)),
            InputMessage::Response { .. } | InputMessage::Timer { .. } => {}
        }
    }
    for open in deleted.messaging.open_contexts.into_values() {
        owed.push((open.origin, open.refund));
    }
    let mut answered = Answered::new();
    for (origin, refund) in owed {
        let reject = reason();
        match origin {
            Origin::Ingress { id } => answered.push((
                id,
                Ok(Applied::Call(CallOutcome {
                    result: Err(reject),
                    instructions: 0,
                })),
            )),
            Origin::Canister { caller, call_id } => {
                if let Some(c) = registry.canisters.get_mut(&caller) {
                    c.messaging.input_queue.push_back(InputMessage::Response {
                        call_id,
                        callee: id.clone(),
                        answer: Answer::Reject {
                            code: reject.code,
                            message: reject.message,
                        },
                        refund,
                    });
                    registry.reindex(&caller);
                }
            }
        }
    }
    answered
}

/// A reply, as values (from a method's return) or as WAVE text (from a
/// deferred reply checked against the method's result type).
enum Reply {
    Values(Vec<Val>),
    Checked(Vec<Val>, String),
}

/// Sends an answer to whoever waits for it.
fn answer(
    run: &mut CanisterRun,
    origin: Origin,
    result: Result<Reply, Reject>,
    refund: u64,
    instructions: u64,
) {
    match origin {
        Origin::Ingress { id } => {
            let result = result.map(|r| match r {
                Reply::Values(v) | Reply::Checked(v, _) => v,
            });
            run.answered.push((
                id,
                Ok(Applied::Call(CallOutcome {
                    result,
                    instructions,
                })),
            ));
        }
        Origin::Canister { caller, call_id } => {
            let answer = match result {
                Ok(Reply::Checked(_, text)) => Answer::Reply(text),
                Ok(Reply::Values(values)) => match results_to_wave(&values) {
                    Ok(text) => Answer::Reply(text),
                    Err(e) => Answer::Reject {
                        code: RejectCode::CanisterError,
                        message: format!("the reply cannot be encoded: {e}"),
                    },
                },
                Err(reject) => Answer::Reject {
                    code: reject.code,
                    message: reject.message,
                },
            };
            run.responses.push((
                caller,
                InputMessage::Response {
                    call_id,
                    callee: run.canister.id.clone(),
                    answer,
                    refund,
                },
            ));
        }
    }
}

/// Checks a deferred answer against the deferred method's result type.
fn late_answer(
    canister: &Canister,
    open: &OpenContext,
    answer: Result<String, String>,
) -> Result<Reply, Reject> {
    let text = answer.map_err(|m| Reject::new(RejectCode::CanisterReject, m))?;
    let method = canister
        .code
        .as_ref()
        .and_then(|code| code.interface.resolve(&open.method).ok().cloned())
        .ok_or_else(|| {
            Reject::new(
                RejectCode::CanisterError,
                format!("method {} no longer exists to type the reply", open.method),
            )
        })?;
    let values = decode_results_wave(&text, &method).map_err(|e| {
        Reject::new(
            RejectCode::CanisterError,
            format!("the canister answered with an invalid value: {e}"),
        )
    })?;
    Ok(Reply::Checked(values, text))
}

/// The arguments of an inter-canister call: a parenthesized WAVE list.
pub fn request_args(text: &str) -> Result<CallArgs, String> {
    let text = text.trim();
    let inner = text
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| format!("call arguments must be a parenthesized WAVE list, got {text:?}"))?;
    Ok(CallArgs::Wave(inner.to_string()))
}

/// The `call-result` value passed to `callbacks.on-reply`.
pub fn call_result_val(answer: &Answer) -> Val {
    match answer {
        Answer::Reply(text) => {
            Val::Variant("reply".into(), Some(Box::new(Val::String(text.clone()))))
        }
        Answer::Reject { code, message } => {
            let code = serde_json::to_value(code)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_else(|| "system-fatal".into());
            Val::Variant(
                "reject".into(),
                Some(Box::new(Val::Tuple(vec![
                    Val::Enum(code),
                    Val::String(message.clone()),
                ]))),
            )
        }
    }
}

impl Executor {
    /// Whether `id` has an execution paused between rounds.
    pub fn is_paused(&self, id: &Principal) -> bool {
        self.paused.lock().expect("paused lock").contains_key(id)
    }

    /// Aborts paused executions (of `id`, or all): their messages go back
    /// to the front of their queues and start again from the beginning.
    /// Called before every checkpoint (so a checkpoint never holds an
    /// execution half done, on every replica at the same round) and before
    /// management requests that change the canister.
    pub fn abort_paused(&self, id: Option<&Principal>) {
        let aborted: Vec<(Principal, PausedMessage)> = {
            let mut paused = self.paused.lock().expect("paused lock");
            match id {
                Some(id) => paused.remove_entry(id).into_iter().collect(),
                None => std::mem::take(&mut *paused).into_iter().collect(),
            }
        };
        if aborted.is_empty() {
            return;
        }
        self.aborted_executions
            .fetch_add(aborted.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let mut registry = self.registry.write().expect("registry lock");
        for (id, paused) in aborted {
            if let Some(c) = registry.canisters.get_mut(&id) {
                c.messaging.input_queue.push_front(paused.message);
            }
            registry.reindex(&id);
        }
    }

    /// Paused executions aborted so far (by checkpoints and management
    /// requests) since the node opened.
    pub fn aborted_executions(&self) -> u64 {
        self.aborted_executions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Executions paused between rounds.
    pub fn paused_executions(&self) -> usize {
        self.paused.lock().expect("paused lock").len()
    }

    /// Messages waiting in input queues, over all canisters.
    pub fn queued_messages(&self) -> usize {
        let registry = self.registry.read().expect("registry lock");
        registry
            .active
            .iter()
            .filter_map(|id| registry.canisters.get(id))
            .map(|c| c.messaging.input_queue.len())
            .sum()
    }
}

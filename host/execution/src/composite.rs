//! Composite queries: a query that calls query methods of other canisters
//! on the node and awaits their replies, as on the IC.
//!
//! A composite query method (`MethodKind::CompositeQuery`) is a function of
//! an exported interface named `composite-query`. It uses the same system
//! API as an update that makes calls (`calls.call`, `message.defer-reply`,
//! `reply-to`, the exported `callbacks.on-reply`), so the Rust SDK's
//! `async` calls work unchanged (example: `components/relay`, interface
//! `composite-query`). The node's `Node::query` hands it to
//! [`Executor::composite_query`], which runs the whole call graph at once
//! on the node that answers the query, outside every lock, without a
//! round, against the last committed state:
//!
//! * each call runs the callee's method on a copy of the callee's committed
//!   state, as of one round (a plain query, or a nested composite query);
//! * the composite query's own messages run as
//!   `MessageKind::CompositeQuery`: the engine returns their `StateChanges`
//!   (heap, globals, stable overlay) like an update's, and they are applied
//!   to the query's private copy only, so its changes carry over to its
//!   callbacks (its copy is updated after each of its messages) until it
//!   replies; then the copy is dropped. A callee's changes are dropped at
//!   once. Nothing reaches the registry, so nothing persists and the state
//!   hash does not move;
//! * the calls a message makes run one after the other, depth first, in
//!   the order they were made; each reply is delivered to the caller's
//!   `on-reply` before the next call runs, until the deferred reply is
//!   given (or no call is left: a reject);
//! * defined rejects: a call to an update method, to a missing canister or
//!   method, with bad arguments, to a callee that traps (the caller's
//!   callback gets the reject and may handle it), or nested deeper than
//!   [`MAX_QUERY_CALL_DEPTH`] (6); and for the whole query, more than
//!   [`MAX_QUERY_CALLS`] (1,000) calls or more than
//!   `Limits::composite_query_instructions` (5 B) instructions over the
//!   graph (each message's fuel is what is left of that budget). A plain
//!   query's `calls.call` fails; calls from composite queries cannot attach
//!   cycles; a composite query sent as an update, or called by an update,
//!   is rejected as on the IC.
//!
//! When a round commits while a composite query runs, the callees it has
//! not read yet could show a newer state than those it read; the query then
//! starts again on the new state (at most [`MAX_ATTEMPTS`] (4) times, then
//! a transient reject), so one composite query always sees one round's
//! state.
//!
//! Through the memory-image tracker a composite query's "commit" moves a
//! large canister's cached image to its private version, so the next
//! message of that canister rebuilds the image (a cost, never a wrong
//! state: images are looked up by page-map version).

use std::collections::VecDeque;

use cellar_engine::{
    CallArgs, Limits, MessageKind, MessageOutcome, OutgoingCall, Val, decode_results_wave, execute,
    results_to_wave,
};
use cellar_types::{Principal, Reject, RejectCode};

use crate::answer::ResolvedCall;
use crate::context::{message_context, random_seed};
use crate::executor::Executor;
use crate::round::{call_result_val, request_args};
use cellar_state::canister::Canister;
use cellar_state::messages::Answer;

/// How deep composite query calls nest: a call made by a message that is
/// itself this many calls below the client's query is rejected.
pub const MAX_QUERY_CALL_DEPTH: u32 = 6;

/// Calls one composite query may make over its whole call graph.
pub const MAX_QUERY_CALLS: u32 = 1_000;

/// Times a composite query starts again when rounds commit under it.
pub const MAX_ATTEMPTS: u32 = 4;

/// One composite query in progress: its view of the node and its budgets.
struct Graph<'a> {
    node: &'a Executor,
    /// The round whose state the query sees.
    round: u64,
    time_nanos: u64,
    /// Instructions spent so far over the whole graph.
    instructions: u64,
    /// Calls made so far over the whole graph.
    calls: u32,
    /// Messages executed so far (each gets its own random seed).
    messages: u64,
    /// Set when the whole query must stop: a total limit, or a round that
    /// committed under it (`stale`).
    abort: Option<Reject>,
    stale: bool,
}

impl Executor {
    /// Runs the composite query method `method` of `id` for `caller`;
    /// returns its reply or reject and the instructions spent over the whole
    /// call graph.
    pub fn composite_query(
        &self,
        caller: &Principal,
        id: &Principal,
        method: &str,
        args: &CallArgs,
    ) -> (Result<Vec<Val>, Reject>, u64) {
        let mut spent = 0;
        for _ in 0..MAX_ATTEMPTS {
            let (round, time_nanos) = {
                let registry = self.registry.read().expect("registry lock");
                (registry.round, registry.time_nanos)
            };
            let mut graph = Graph {
                node: self,
                round,
                time_nanos,
                instructions: 0,
                calls: 0,
                messages: 0,
                abort: None,
                stale: false,
            };
            let result = graph.run(caller, id, method, args, 0);
            spent += graph.instructions;
            if graph.stale {
                continue;
            }
            let result = match graph.abort {
                Some(reject) => Err(reject),
                None => result,
            };
            return (result, spent);
        }
        (
            Err(Reject::new(
                RejectCode::SystemTransient,
                format!(
                    "rounds kept committing while the composite query ran ({MAX_ATTEMPTS} \
                     attempts); try again"
                ),
            )),
            spent,
        )
    }
}

impl Graph<'_> {
    /// A copy of `id`'s committed state, as of the query's round.
    fn canister(&mut self, id: &Principal) -> Result<Canister, Reject> {
        let registry = self.node.registry.read().expect("registry lock");
        if registry.round != self.round {
            self.stale = true;
            return Err(self.stop(RejectCode::SystemTransient, "a round committed".into()));
        }
        registry.canisters.get(id).cloned().ok_or_else(|| {
            Reject::new(
                RejectCode::DestinationInvalid,
                format!("canister {} does not exist", id.to_text()),
            )
        })
    }

    /// Stops the whole query with `message` (kept if it is the first).
    fn stop(&mut self, code: RejectCode, message: String) -> Reject {
        self.abort
            .get_or_insert_with(|| Reject::new(code, message))
            .clone()
    }

    /// Runs `method` of `callee` as a query (plain or composite) at
    /// `depth` calls below the client's query.
    fn run(
        &mut self,
        caller: &Principal,
        callee: &Principal,
        method: &str,
        args: &CallArgs,
        depth: u32,
    ) -> Result<Vec<Val>, Reject> {
        let canister = self.canister(callee)?;
        let resolved = self
            .node
            .resolve_call(&canister, method, args, MessageKind::Query)
            .map_err(|reject| {
                if depth > 0 && reject.message.contains("is an update method") {
                    Reject::new(
                        RejectCode::DestinationInvalid,
                        format!(
                            "a query cannot call the update method {method} of canister {}",
                            callee.to_text()
                        ),
                    )
                } else {
                    reject
                }
            })?;
        if resolved.kind == MessageKind::Query {
            let outcome = self.execute(&canister, caller, &resolved, None)?;
            return outcome.result;
        }
        self.run_composite(canister, caller, resolved, depth)
    }

    /// Runs one message on `canister`'s copy with what is left of the
    /// graph's instruction budget; `callback` is the reply token the
    /// message may answer.
    fn execute(
        &mut self,
        canister: &Canister,
        caller: &Principal,
        resolved: &ResolvedCall,
        callback: Option<u64>,
    ) -> Result<MessageOutcome, Reject> {
        if let Some(reject) = &self.abort {
            return Err(reject.clone());
        }
        let total = self.node.options.limits.composite_query_instructions;
        let left = total.saturating_sub(self.instructions);
        let limits = Limits {
            query_instructions: self.node.options.limits.query_instructions.min(left),
            ..self.node.options.limits.clone()
        };
        self.messages += 1;
        let seed = random_seed("composite-query", self.round, &canister.id, self.messages);
        let mut ctx = message_context(
            canister,
            caller,
            &resolved.method.function,
            resolved.kind,
            (self.round, self.time_nanos, seed),
            &canister.state,
        );
        if let Some(token) = callback {
            ctx.context_id = token + 1;
            ctx.open_contexts = vec![token];
        }
        let outcome = execute(
            &resolved.code,
            &canister.state,
            &resolved.method,
            &resolved.params,
            ctx,
            &limits,
        );
        self.instructions = self.instructions.saturating_add(outcome.instructions);
        if outcome.result.is_err() && self.instructions >= total {
            return Err(self.stop(
                RejectCode::CanisterError,
                format!(
                    "the composite query exceeded its limit of {total} instructions over its \
                     call graph"
                ),
            ));
        }
        Ok(outcome)
    }

    /// Runs a composite query method and its callbacks until it replies.
    fn run_composite(
        &mut self,
        mut canister: Canister,
        caller: &Principal,
        resolved: ResolvedCall,
        depth: u32,
    ) -> Result<Vec<Val>, Reject> {
        let token = canister.messaging.next_context_id;
        let method = resolved.method.clone();
        let code = resolved.code.clone();
        let mut outcome = self.execute(&canister, caller, &resolved, None)?;
        let mut pending: VecDeque<OutgoingCall> = VecDeque::new();
        let mut first = true;
        loop {
            let values = match outcome.result {
                Ok(values) => values,
                Err(reject) if first => return Err(reject),
                Err(reject) => {
                    return Err(Reject::new(
                        RejectCode::CanisterError,
                        format!("the canister failed in a callback: {}", reject.message),
                    ));
                }
            };
            let Some(changes) = outcome.changes else {
                return Ok(values);
            };
            let deferred = changes.deferred;
            let answer = changes
                .late_replies
                .iter()
                .find(|r| r.token == token)
                .map(|r| r.answer.clone());
            pending.extend(changes.calls.iter().cloned());
            canister.state.apply(changes);
            if let Some(answer) = answer {
                let text = answer.map_err(|m| Reject::new(RejectCode::CanisterReject, m))?;
                return decode_results_wave(&text, &method).map_err(|e| {
                    Reject::new(
                        RejectCode::CanisterError,
                        format!("the canister answered with an invalid value: {e}"),
                    )
                });
            }
            if first && !deferred {
                return Ok(values);
            }
            first = false;
            let Some(call) = pending.pop_front() else {
                return Err(Reject::new(
                    RejectCode::CanisterError,
                    "the composite query did not reply: no call works for it any more",
                ));
            };
            let answer = self.call(&canister.id, &call, depth);
            if let Some(reject) = &self.abort {
                return Err(reject.clone());
            }
            let Some(on_reply) = code.interface.on_reply.clone() else {
                return Err(Reject::new(
                    RejectCode::CanisterError,
                    "the composite query made calls but does not export callbacks.on-reply",
                ));
            };
            let callback = ResolvedCall {
                code: code.clone(),
                method: on_reply,
                params: vec![Val::U64(call.call_id), call_result_val(&answer)],
                kind: MessageKind::CompositeQuery,
            };
            outcome = self.execute(&canister, &call.callee, &callback, Some(token))?;
        }
    }

    /// Runs one call of a composite query and turns its result into the
    /// answer its callback receives.
    fn call(&mut self, caller: &Principal, call: &OutgoingCall, depth: u32) -> Answer {
        let reject = |code, message: String| Answer::Reject { code, message };
        self.calls += 1;
        if self.calls > MAX_QUERY_CALLS {
            let r = self.stop(
                RejectCode::CanisterError,
                format!("the composite query made more than {MAX_QUERY_CALLS} calls"),
            );
            return reject(r.code, r.message);
        }
        if depth + 1 > MAX_QUERY_CALL_DEPTH {
            return reject(
                RejectCode::CanisterError,
                format!("composite query calls nest at most {MAX_QUERY_CALL_DEPTH} deep"),
            );
        }
        let args = match request_args(&call.args) {
            Ok(args) => args,
            Err(e) => return reject(RejectCode::DestinationInvalid, e),
        };
        match self.run(caller, &call.callee, &call.method, &args, depth + 1) {
            Ok(values) => match results_to_wave(&values) {
                Ok(text) => Answer::Reply(text),
                Err(e) => reject(
                    RejectCode::CanisterError,
                    format!("the reply cannot be encoded: {e}"),
                ),
            },
            Err(r) => reject(r.code, r.message),
        }
    }
}

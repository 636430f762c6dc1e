//! Scheduler policies as WebAssembly components.
//!
//! Once per round the node asks a policy which canisters execute, in which
//! order and with how many instructions. A policy is a component of the world
//! `cellar:scheduler/scheduler-policy` (`wit/scheduler/scheduler-policy.wit`):
//! it exports `schedule: func(input: round-input) -> round-plan` and imports
//! nothing, so it is a pure function of its input: the round number, the
//! budget and the canister summaries (queue length, compute allocation,
//! accumulated priority, paused, rounds since executed). The plan is the
//! execution order with per-canister allowances, plus the new priorities.
//!
//! [`SchedulerPolicy::from_component`] rejects core modules, imports, and a
//! missing or mistyped `schedule`, and caches the compiled code by engine
//! and SHA-256. [`SchedulerPolicy::schedule`] runs it on a fresh instance
//! with its own instruction limit (fuel: 50 M + 2,000 per canister) and
//! 256 MiB of memory, and checks the plan with [`validate`] (indices,
//! duplicates, budget, length and bound of the priorities, no starvation of
//! allocated canisters with work). A trap,
//! running out of instructions or memory, or an invalid plan makes the
//! built-in default ([`builtin_default`], the accumulated-priority policy)
//! plan the round instead, and the reason comes back in
//! [`PlanOutcome::fallback`] for the caller to log. Whatever the component
//! does, the host gets a valid plan and never panics.
//!
//! Determinism: the input is the same on every replica, the component
//! cannot observe anything else, instructions are counted by fuel, and the
//! built-in default and the validation use integers and `Vec`s only.
//!
//! The Rust types here ([`RoundInput`], [`CanisterSummary`], [`RoundPlan`],
//! [`Allowance`]) derive the component-model traits and are lowered into
//! and lifted out of the component directly: their field names and order
//! are those of the WIT records.
//!
//! The arithmetic lives in `components/policies/rt/src/algorithm.rs`,
//! compiled both into the `accumulated-priority` / `round-robin` components
//! and into the host, so the component and the fallback agree bit for bit
//! (tested).
//!
//! Cost per call (CPU time, shared 2-core machine): ~45 µs with 10
//! canisters (mostly the fresh instance), ~0.2–0.3 ms with 1,000, ~18–20 ms
//! with 100,000 (round robin 27 M, accumulated priority 49 M instructions);
//! the Rust default 0.5 µs / 30 µs / 2 ms. Idle canisters at priority 0 may
//! be left out of the input (the plan is the same), so a node pays for busy
//! canisters only.

use std::sync::Mutex;

use sha2::{Digest, Sha256};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentType, InstancePre, Lift, Linker, Lower,
    types::ComponentItem,
};
use wasmtime::{Engine, ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder};

use crate::cache::hex;

/// The arithmetic shared with the policy components (`components/policies/
/// rt/src/algorithm.rs`): the built-in default is the same code as the
/// `accumulated-priority` component.
#[path = "../../../components/policies/rt/src/algorithm.rs"]
mod algorithm;

use algorithm::Summary;

/// The largest magnitude of an accumulated priority a plan may return (2^43).
pub const MAX_PRIORITY: i64 = algorithm::MAX_PRIORITY;

/// Instructions a policy may execute per round unless configured otherwise
/// ([`SchedulerPolicy::with_instruction_limit`]): 50 M, plus
/// [`DEFAULT_POLICY_INSTRUCTIONS_PER_CANISTER`] for each canister.
pub const DEFAULT_POLICY_INSTRUCTIONS: u64 = 50_000_000;

/// Instructions a policy may execute per round for each canister in the
/// input, on top of the base limit (sorting 100,000 canisters takes tens of
/// millions of instructions).
pub const DEFAULT_POLICY_INSTRUCTIONS_PER_CANISTER: u64 = 2_000;

/// Linear memory a policy instance may use.
pub const POLICY_MEMORY_BYTES: usize = 256 << 20;

/// Largest policy component accepted.
pub const MAX_POLICY_BYTES: usize = 16 << 20;

/// The name of the function a policy exports.
pub const SCHEDULE_EXPORT: &str = "schedule";

/// What a policy knows about one canister at the start of a round
/// (WIT `canister-summary`).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    ComponentType,
    Lower,
    Lift,
)]
#[component(record)]
pub struct CanisterSummary {
    /// Position of the canister in [`RoundInput::canisters`] (the host keeps
    /// `index == position`; plans refer to canisters by it).
    pub index: u32,
    /// Messages waiting in the canister's input queue.
    #[component(name = "input-queue-length")]
    pub input_queue_length: u32,
    /// Guaranteed share of every round, in percent (0..=100). The host
    /// guarantees that the allocations of all canisters sum to at most 100.
    #[component(name = "compute-allocation")]
    pub compute_allocation: u8,
    /// The priority the previous plan gave the canister (0 for a new one).
    #[component(name = "accumulated-priority")]
    pub accumulated_priority: i64,
    /// Whether a long execution of the canister is paused, waiting for its
    /// next slice.
    pub paused: bool,
    /// Rounds since the canister last executed (0: in the previous round).
    #[component(name = "rounds-since-executed")]
    pub rounds_since_executed: u64,
}

impl CanisterSummary {
    /// Whether the canister has work: queued messages or a paused execution.
    pub fn has_work(&self) -> bool {
        self.input_queue_length > 0 || self.paused
    }
}

impl Summary for CanisterSummary {
    fn has_work(&self) -> bool {
        CanisterSummary::has_work(self)
    }
    fn allocation(&self) -> u8 {
        self.compute_allocation
    }
    fn priority(&self) -> i64 {
        self.accumulated_priority
    }
    fn rounds_since_executed(&self) -> u64 {
        self.rounds_since_executed
    }
}

/// The input of one round (WIT `round-input`).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    ComponentType,
    Lower,
    Lift,
)]
#[component(record)]
pub struct RoundInput {
    /// The round number.
    pub round: u64,
    /// Instructions all canisters together may execute in this round.
    #[component(name = "instruction-budget")]
    pub instruction_budget: u64,
    /// The canisters, in the host's order (`index` equals the position).
    /// The host may leave out canisters without work whose priority is 0:
    /// both shipped policies (and [`builtin_default`]) give them nothing and
    /// keep them at 0, so the plan for the others is the same and the cost
    /// of a round follows the busy canisters, not all of them.
    pub canisters: Vec<CanisterSummary>,
}

/// Instructions one canister may execute in a round (WIT `allowance`).
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    ComponentType,
    Lower,
    Lift,
)]
#[component(record)]
pub struct Allowance {
    /// The canister's [`CanisterSummary::index`].
    pub index: u32,
    /// Its allowance, in instructions. May be 0 (an allocated canister whose
    /// share rounds to 0 is still listed); the node then skips it.
    pub instructions: u64,
}

/// The decision for one round (WIT `round-plan`).
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    ComponentType,
    Lower,
    Lift,
)]
#[component(record)]
pub struct RoundPlan {
    /// The canisters that execute, in execution order, each at most once.
    pub schedule: Vec<Allowance>,
    /// The new accumulated priority of every input canister, in the order of
    /// [`RoundInput::canisters`]; the host stores it and passes it back in
    /// the next round.
    pub priorities: Vec<i64>,
}

/// What [`SchedulerPolicy::schedule`] decided for a round.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanOutcome {
    /// The plan to execute: always valid for the input.
    pub plan: RoundPlan,
    /// Why the built-in default planned the round instead of the policy
    /// (trap, instruction limit, invalid plan, ...); `None` when the
    /// policy's own plan is used. The caller should log it.
    pub fallback: Option<String>,
    /// Instructions the policy executed (instantiation included), counted by
    /// fuel: the same on every replica.
    pub instructions: u64,
}

/// Why a binary is not a usable scheduler policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The binary exceeds [`MAX_POLICY_BYTES`].
    #[error("the policy is {size} bytes; the limit is {limit} bytes")]
    TooLarge {
        /// Bytes given.
        size: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The binary is not WebAssembly.
    #[error("not a WebAssembly binary (it does not start with \\0asm)")]
    NotWasm,
    /// The binary is a core module, not a component.
    #[error(
        "this is a core WebAssembly module, not a component; a scheduler policy is a component \
         of the world cellar:scheduler/scheduler-policy (build for wasm32-wasip2)"
    )]
    CoreModule,
    /// The component does not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component imports something; a policy must import nothing.
    #[error(
        "a scheduler policy must import nothing (no WASI, no system API), but this component \
         imports: {}", .0.join(", ")
    )]
    Imports(Vec<String>),
    /// The component does not export a function `schedule`.
    #[error(
        "the component does not export a function `schedule` (world \
         cellar:scheduler/scheduler-policy); its exports: {}",
        if .0.is_empty() { "none".to_string() } else { .0.join(", ") }
    )]
    MissingExport(Vec<String>),
    /// `schedule` does not have the signature of the WIT world.
    #[error(
        "the export `schedule` does not have the signature \
         `func(input: round-input) -> round-plan` of cellar:scheduler/scheduler-policy: {0}"
    )]
    WrongSignature(String),
    /// Instantiating the component failed (for example a start function trapped).
    #[error("the policy cannot be instantiated: {0}")]
    Instantiation(String),
}

/// The store data of a policy instance: its resource limits, and whether
/// one of them refused a request (to explain the trap that follows). Shared
/// with the consensus policies (`consensus_policy.rs`).
pub(crate) struct PolicyState {
    pub(crate) limits: StoreLimits,
    pub(crate) refused_memory: bool,
}

impl ResourceLimiter for PolicyState {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.refused_memory |= !allowed;
        Ok(allowed)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// A compiled scheduler-policy component, checked against the WIT world.
///
/// Cloning is cheap (the compiled code is shared). `schedule` takes `&self`
/// and may run on any thread.
#[derive(Clone)]
pub struct SchedulerPolicy {
    hash: [u8; 32],
    size: usize,
    pre: InstancePre<PolicyState>,
    export: ComponentExportIndex,
    instruction_limit: u64,
    per_canister_instructions: u64,
}

impl std::fmt::Debug for SchedulerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerPolicy")
            .field("hash", &self.hash_hex())
            .field("size", &self.size)
            .field("instruction_limit", &self.instruction_limit)
            .field("per_canister_instructions", &self.per_canister_instructions)
            .finish_non_exhaustive()
    }
}

/// Compiled policies by engine and SHA-256, so that switching back to a
/// policy (or loading the same one twice) does not compile it again.
static COMPILED: Mutex<Vec<(Engine, [u8; 32], Component)>> = Mutex::new(Vec::new());

/// How many compiled policies [`COMPILED`] keeps (oldest dropped first).
const COMPILED_CAPACITY: usize = 16;

/// Compiles `wasm` (whose SHA-256 is `hash`) for `engine`, or takes it from
/// [`COMPILED`]. Shared with the consensus policies.
pub(crate) fn compile(
    engine: &Engine,
    wasm: &[u8],
    hash: &[u8; 32],
) -> Result<Component, PolicyError> {
    let mut cache = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, c)) = cache
        .iter()
        .find(|(e, h, _)| h == hash && Engine::same(e, engine))
    {
        return Ok(c.clone());
    }
    drop(cache);
    let component =
        Component::new(engine, wasm).map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
    cache = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if cache.len() >= COMPILED_CAPACITY {
        cache.remove(0);
    }
    cache.push((engine.clone(), *hash, component.clone()));
    Ok(component)
}

impl SchedulerPolicy {
    /// Checks and compiles a policy component for `engine` (the engine must
    /// consume fuel, as [`crate::new_engine`]'s does).
    ///
    /// Rejected, with a clear [`PolicyError`]: a binary that is not
    /// WebAssembly or is a core module, an invalid component, one that
    /// imports anything, one without a `schedule` function, one whose
    /// `schedule` has another signature, and one that cannot be
    /// instantiated. Compiled code is cached by engine and SHA-256.
    pub fn from_component(engine: &Engine, wasm: &[u8]) -> Result<Self, PolicyError> {
        if wasm.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::TooLarge {
                size: wasm.len(),
                limit: MAX_POLICY_BYTES,
            });
        }
        match binary_kind(wasm) {
            BinaryKind::NotWasm => return Err(PolicyError::NotWasm),
            BinaryKind::CoreModule => return Err(PolicyError::CoreModule),
            BinaryKind::Component => {}
        }
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        let component = compile(engine, wasm, &hash)?;

        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if !imports.is_empty() {
            return Err(PolicyError::Imports(imports));
        }
        let export = match component.get_export(None, SCHEDULE_EXPORT) {
            Some((ComponentItem::ComponentFunc(_), index)) => index,
            _ => {
                let exports = ty
                    .exports(engine)
                    .map(|(name, _)| name.to_string())
                    .collect();
                return Err(PolicyError::MissingExport(exports));
            }
        };
        let pre = Linker::<PolicyState>::new(engine)
            .instantiate_pre(&component)
            .map_err(|e| PolicyError::Invalid(format!("{e:#}")))?;
        let policy = SchedulerPolicy {
            hash,
            size: wasm.len(),
            pre,
            export,
            instruction_limit: DEFAULT_POLICY_INSTRUCTIONS,
            per_canister_instructions: DEFAULT_POLICY_INSTRUCTIONS_PER_CANISTER,
        };
        // Instantiate once to check the signature (and that instantiation works).
        let mut store = policy.store(DEFAULT_POLICY_INSTRUCTIONS)?;
        let instance = policy
            .pre
            .instantiate(&mut store)
            .map_err(|e| PolicyError::Instantiation(format!("{e:#}")))?;
        instance
            .get_typed_func::<(&RoundInput,), (RoundPlan,)>(&mut store, &policy.export)
            .map_err(|e| PolicyError::WrongSignature(format!("{e:#}")))?;
        Ok(policy)
    }

    /// The same policy with another instruction limit per round:
    /// `base + per_canister × number of canisters`.
    pub fn with_instruction_limit(mut self, base: u64, per_canister: u64) -> Self {
        self.instruction_limit = base;
        self.per_canister_instructions = per_canister;
        self
    }

    /// The instruction limit of a round with `canisters` canisters.
    pub fn instruction_limit(&self, canisters: usize) -> u64 {
        self.instruction_limit.saturating_add(
            self.per_canister_instructions
                .saturating_mul(canisters as u64),
        )
    }

    /// SHA-256 of the component binary.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// SHA-256 of the component binary, as lowercase hex.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// Size of the component binary in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    fn store(&self, fuel: u64) -> Result<Store<PolicyState>, PolicyError> {
        let state = PolicyState {
            limits: StoreLimitsBuilder::new()
                .memory_size(POLICY_MEMORY_BYTES)
                .instances(16)
                .memories(4)
                .tables(4)
                .table_elements(1 << 16)
                .build(),
            refused_memory: false,
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| s);
        store.set_fuel(fuel).map_err(|e| {
            PolicyError::Instantiation(format!("the engine does not consume fuel: {e:#}"))
        })?;
        Ok(store)
    }

    /// Runs the policy on a fresh instance and returns its plan, or the
    /// built-in default's plan with the reason when the policy traps, runs
    /// past its instruction limit or memory, or returns an invalid plan.
    /// Never panics; the same input gives the same outcome on every replica.
    pub fn schedule(&self, input: &RoundInput) -> PlanOutcome {
        let limit = self.instruction_limit(input.canisters.len());
        let mut store = match self.store(limit) {
            Ok(store) => store,
            Err(e) => return fallback(input, e.to_string(), 0),
        };
        let result: wasmtime::Result<RoundPlan> = (|| {
            let instance = self.pre.instantiate(&mut store)?;
            let func = instance
                .get_typed_func::<(&RoundInput,), (RoundPlan,)>(&mut store, &self.export)?;
            let (plan,) = func.call(&mut store, (input,))?;
            Ok(plan)
        })();
        let instructions = limit.saturating_sub(store.get_fuel().unwrap_or(0));
        match result {
            Ok(plan) => match validate(input, &plan) {
                Ok(()) => PlanOutcome {
                    plan,
                    fallback: None,
                    instructions,
                },
                Err(why) => fallback(input, format!("invalid plan: {why}"), instructions),
            },
            Err(e) => {
                let why = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::OutOfFuel) => {
                        format!("the policy ran past its limit of {limit} instructions")
                    }
                    Some(trap) if store.data().refused_memory => format!(
                        "the policy trapped ({trap}) after the host refused to grow its \
                         memory beyond {POLICY_MEMORY_BYTES} bytes"
                    ),
                    Some(trap) => format!("the policy trapped: {trap}"),
                    None => format!("the policy failed: {e:#}"),
                };
                fallback(input, why, instructions)
            }
        }
    }
}

/// Plans a round with `policy`, or with [`builtin_default`] when there is
/// none (then `fallback` is `None` and `instructions` 0): what a node calls
/// once per round.
pub fn plan_round(policy: Option<&SchedulerPolicy>, input: &RoundInput) -> PlanOutcome {
    match policy {
        Some(policy) => policy.schedule(input),
        None => PlanOutcome {
            plan: builtin_default(input),
            fallback: None,
            instructions: 0,
        },
    }
}

fn fallback(input: &RoundInput, why: String, instructions: u64) -> PlanOutcome {
    PlanOutcome {
        plan: builtin_default(input),
        fallback: Some(why),
        instructions,
    }
}

/// The built-in default policy: accumulated priority (IC style), the same
/// arithmetic as the `accumulated-priority` component.
///
/// Every canister with work earns its compute allocation plus an equal part
/// of the unallocated capacity; the highest priorities run first, allocated
/// canisters get their guaranteed share and the first `budget / 10 M`
/// canisters (at least one) share the rest, weighted by rank; those that run
/// pay back what was handed out, in proportion to their allowances; idle
/// canisters return to 0; priorities sum to zero. Always passes [`validate`].
pub fn builtin_default(input: &RoundInput) -> RoundPlan {
    to_plan(algorithm::accumulated_priority(
        input.round,
        input.instruction_budget,
        &input.canisters,
    ))
}

/// The round-robin policy in Rust (the same arithmetic as the `round-robin`
/// component), for comparison with the components.
pub fn builtin_round_robin(input: &RoundInput) -> RoundPlan {
    to_plan(algorithm::round_robin(
        input.round,
        input.instruction_budget,
        &input.canisters,
    ))
}

/// A plan from the shared algorithms' `(schedule, priorities)`.
fn to_plan((schedule, priorities): algorithm::RawPlan) -> RoundPlan {
    RoundPlan {
        schedule: schedule
            .into_iter()
            .map(|(index, instructions)| Allowance {
                index,
                instructions,
            })
            .collect(),
        priorities,
    }
}

/// What a policy binary is, judged by its header.
pub(crate) enum BinaryKind {
    /// Not WebAssembly at all.
    NotWasm,
    /// A core module, not a component.
    CoreModule,
    /// A component (or something claiming to be one).
    Component,
}

/// Reads a binary's header (magic, version and layer).
pub(crate) fn binary_kind(wasm: &[u8]) -> BinaryKind {
    if wasm.len() < 8 || &wasm[..4] != b"\0asm" {
        BinaryKind::NotWasm
    } else if wasm[4..8] == [1, 0, 0, 0] {
        // Core modules have version 1 and layer 0; components layer 1.
        BinaryKind::CoreModule
    } else {
        BinaryKind::Component
    }
}

/// The instructions a canister is guaranteed in a round of this input:
/// `compute_allocation × instruction_budget / 100` for a canister with work
/// (0 without work). Should the allocations of the canisters with work sum to
/// more than 100 (the host guarantees they do not), the shares shrink
/// proportionally so that they still fit in the budget.
pub fn guaranteed_share(input: &RoundInput, canister: &CanisterSummary) -> u64 {
    let denominator = algorithm::allocation_denominator(&input.canisters);
    algorithm::guaranteed_share(canister, input.instruction_budget, denominator)
}

/// Checks a plan against its input. The rules:
///
/// * every scheduled index is a canister of the input, and none appears
///   twice;
/// * the allowances sum to at most the instruction budget;
/// * there is exactly one priority per input canister, each within
///   ±[`MAX_PRIORITY`];
/// * no starvation: every canister with a compute allocation and work
///   (queued messages or a paused execution) is scheduled with at least its
///   [`guaranteed_share`].
///
/// Scheduling a canister without work is allowed (it has nothing to run).
/// The error says which rule failed and for which canister.
pub fn validate(input: &RoundInput, plan: &RoundPlan) -> Result<(), String> {
    let n = input.canisters.len();
    let mut scheduled: Vec<Option<u64>> = vec![None; n];
    let mut total: u128 = 0;
    for (position, a) in plan.schedule.iter().enumerate() {
        let slot = scheduled.get_mut(a.index as usize).ok_or_else(|| {
            format!(
                "schedule entry {position} names canister {}, but there are only {n} canisters",
                a.index
            )
        })?;
        if slot.is_some() {
            return Err(format!("canister {} is scheduled twice", a.index));
        }
        *slot = Some(a.instructions);
        total += u128::from(a.instructions);
    }
    if total > u128::from(input.instruction_budget) {
        return Err(format!(
            "the allowances sum to {total} instructions, more than the budget of {}",
            input.instruction_budget
        ));
    }
    if plan.priorities.len() != n {
        return Err(format!(
            "{} priorities for {n} canisters",
            plan.priorities.len()
        ));
    }
    if let Some((i, p)) = plan
        .priorities
        .iter()
        .enumerate()
        .find(|(_, p)| p.unsigned_abs() > MAX_PRIORITY.unsigned_abs())
    {
        return Err(format!(
            "priority {p} of canister {i} is beyond ±{MAX_PRIORITY}"
        ));
    }
    let denominator = algorithm::allocation_denominator(&input.canisters);
    for (i, c) in input.canisters.iter().enumerate() {
        if c.compute_allocation == 0 || !c.has_work() {
            continue;
        }
        let share = algorithm::guaranteed_share(c, input.instruction_budget, denominator);
        match scheduled[i] {
            None => {
                return Err(format!(
                    "canister {i} has a compute allocation of {}% and work but is not scheduled",
                    c.compute_allocation
                ));
            }
            Some(got) if got < share => {
                return Err(format!(
                    "canister {i} has a compute allocation of {}% and work but gets {got} \
                     instructions, less than its share of {share}",
                    c.compute_allocation
                ));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canister(index: u32, queue: u32, allocation: u8) -> CanisterSummary {
        CanisterSummary {
            index,
            input_queue_length: queue,
            compute_allocation: allocation,
            ..Default::default()
        }
    }

    #[test]
    fn builtin_plans_are_valid_and_zero_sum() {
        let mut input = RoundInput {
            round: 0,
            instruction_budget: 7_000_000_000,
            canisters: (0..50).map(|i| canister(i, i % 3, 0)).collect(),
        };
        input.canisters[4].compute_allocation = 30;
        input.canisters[7].compute_allocation = 70;
        input.canisters[9].paused = true;
        // A small budget: 3 slots for 33 busy canisters, so most wait.
        input.instruction_budget = 30_000_000;
        let mut largest = 0;
        for round in 0..3000 {
            input.round = round;
            let plan = builtin_default(&input);
            validate(&input, &plan).unwrap();
            validate(&input, &builtin_round_robin(&input)).unwrap();
            assert_eq!(plan.priorities.iter().sum::<i64>(), 0);
            for (c, p) in input.canisters.iter_mut().zip(&plan.priorities) {
                c.accumulated_priority = *p;
                largest = largest.max(p.unsigned_abs());
            }
            // Some canisters go idle and come back.
            let flip = (round * 7 % 50) as usize;
            input.canisters[flip].input_queue_length ^= 1;
        }
        // Priorities stay within a few rounds' capacity.
        assert!(largest < 4 * algorithm::CAPACITY as u64, "{largest}");
    }

    #[test]
    fn validation_rejects_bad_plans() {
        let input = RoundInput {
            round: 1,
            instruction_budget: 1000,
            canisters: vec![canister(0, 1, 50), canister(1, 1, 0)],
        };
        let good = builtin_default(&input);
        validate(&input, &good).unwrap();
        let mut bad = good.clone();
        bad.schedule.push(bad.schedule[0]);
        assert!(validate(&input, &bad).unwrap_err().contains("twice"));
        let mut bad = good.clone();
        bad.priorities.pop();
        assert!(
            validate(&input, &bad)
                .unwrap_err()
                .contains("1 priorities for 2")
        );
        let bad = RoundPlan {
            schedule: vec![Allowance {
                index: 1,
                instructions: 1000,
            }],
            priorities: vec![0, 0],
        };
        assert!(
            validate(&input, &bad)
                .unwrap_err()
                .contains("not scheduled")
        );
        let bad = RoundPlan {
            schedule: vec![Allowance {
                index: 0,
                instructions: 1001,
            }],
            priorities: vec![0, 0],
        };
        assert!(validate(&input, &bad).unwrap_err().contains("budget"));
    }
}

//! Consensus policies as WebAssembly components.
//!
//! A consensus policy ranks the block makers of each height from the random
//! beacon and sets the block-maker and notary delays and the payload limits
//! (`cellar_consensus::policy::ConsensusPolicy`). As a component it
//! implements the world `cellar:consensus-policy/consensus-policy`
//! (`wit/consensus/consensus-policy.wit`): five exported functions
//! (`name`, `ranking(height, beacon, n) -> list<u32>`,
//! `block-maker-delay-ms(rank)`, `notary-delay-ms(rank)`,
//! `payload-limits`) and no imports, so each answer is a pure function of
//! the arguments.
//!
//! [`WasmConsensusPolicy::from_component`] rejects what is not such a
//! component (a core module, imports, missing or mistyped functions, a
//! failing or empty `name`). [`WasmConsensusPolicy`] implements the trait by
//! running each call on a fresh instance with its own instruction limit
//! (fuel: 10 M instructions, + 50 k per node for `ranking`) and memory limit
//! (64 MiB).
//! It never fails and never panics: when the component traps, runs out of
//! instructions or memory, it answers with something the consensus crate's
//! `PolicyHost` refuses (an empty ranking, a delay of `u64::MAX`, payload
//! limits of zero), so `PolicyHost` uses the ICC default and reports a
//! `PolicyError`; the reason is kept for [`WasmConsensusPolicy::take_last_error`].
//! Answers that are not a valid ranking, delay or limit are left for
//! `PolicyHost` to refuse: the checks live in one place.
//!
//! The answers about ranks (delays) and the payload limits depend on their
//! arguments only, so they are memoized per policy (ICC asks for them on
//! every step of a round); rankings are asked once per height by ICC and are
//! not memoized. Memoizing cannot change an answer: a fresh instance with
//! the same fuel gives the same one every time, failures included.
//!
//! This lives in `cellar-engine` next to the scheduler policies: both run
//! policy components on the engine's deterministic configuration
//! ([`crate::new_engine`]) and share the compiled-code cache and the store
//! limiter; `cellar-consensus` stays free of wasmtime (it is a pure state
//! machine), and the engine depends on it only for the trait and its types.
//!
//! The components `icc-consensus` and `round-robin-consensus`
//! (`components/policies/rt/src/consensus.rs`, `no_std`, SHA-256 from
//! `sha2`) answer bit for bit as `IccPolicy` and `RoundRobinPolicy`, and a
//! 4-node `sim` run on the Wasm ICC policy delivers exactly the blocks of
//! the Rust one (tested); `misbehaving-consensus` is the fixture.
//!
//! Cost per call (dev build, 2-core machine at load 5–10): 30–65 µs for a
//! delay or the limits on a fresh instance (0.2 µs memoized, 0.9 µs on a
//! live instance), ICC ranking 85–105 µs (n = 4) to 300–390 µs (n = 100),
//! 20 µs for n = 13 on a live instance: instantiation dominates. A live
//! instance per height would save ~0.1 ms per height per node (0.01 % of a
//! block time) at the price of reusing an instance a trap may poison and
//! whose bump allocator never frees, so every call gets a fresh one. Fuel
//! per call (the same on every replica, tested): ranking 48 k instructions
//! for 4 nodes, 1.57 M for 100; a delay ~90.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::policy::BinaryKind;
use cellar_consensus::artifacts::{Hash32, Height};
use cellar_consensus::policy::{ConsensusPolicy, PayloadLimits};
use sha2::{Digest, Sha256};
use wasmtime::component::{
    ComponentExportIndex, ComponentType, InstancePre, Lift, Linker, Lower, types::ComponentItem,
};
use wasmtime::{Engine, Store, StoreLimitsBuilder};

use crate::cache::hex;
use crate::policy::{PolicyError, PolicyState, compile};

/// Instructions one call of a consensus policy may execute, on top of
/// [`DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS_PER_NODE`] per node for
/// `ranking` (instantiation included).
pub const DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS: u64 = 10_000_000;

/// Instructions `ranking` may execute for each node of the subnet, on top of
/// the base limit (the ICC permutation hashes once per node, ~16,000
/// instructions: 1.6 M for 100 nodes).
pub const DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS_PER_NODE: u64 = 50_000;

/// Linear memory a consensus-policy instance may use.
pub const CONSENSUS_POLICY_MEMORY_BYTES: usize = 64 << 20;

/// Largest consensus-policy component accepted.
pub const MAX_CONSENSUS_POLICY_BYTES: usize = 16 << 20;

/// Longest policy name accepted (bytes).
pub const MAX_CONSENSUS_POLICY_NAME: usize = 64;

/// The functions a consensus policy exports, by their WIT names.
pub const CONSENSUS_POLICY_EXPORTS: [&str; 5] = [
    "name",
    "ranking",
    "block-maker-delay-ms",
    "notary-delay-ms",
    "payload-limits",
];

/// Most memoized delay answers kept per policy (ranks are below the subnet
/// size, so this is never reached in practice; beyond it calls run anyway).
const MEMO_CAPACITY: usize = 4096;

/// WIT `payload-limits`, lifted out of the component.
#[derive(Clone, Copy, Debug, ComponentType, Lift, Lower)]
#[component(record)]
struct WitPayloadLimits {
    #[component(name = "max-messages")]
    max_messages: u32,
    #[component(name = "max-bytes")]
    max_bytes: u64,
}

/// Why a binary is not a usable consensus policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsensusPolicyLoadError {
    /// The binary exceeds [`MAX_CONSENSUS_POLICY_BYTES`].
    #[error("the consensus policy is {size} bytes; the limit is {limit} bytes")]
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
        "this is a core WebAssembly module, not a component; a consensus policy is a component \
         of the world cellar:consensus-policy/consensus-policy (build for wasm32-wasip2)"
    )]
    CoreModule,
    /// The component does not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component imports something; a policy must import nothing.
    #[error(
        "a consensus policy must import nothing (no WASI, no system API), but this component \
         imports: {}", .0.join(", ")
    )]
    Imports(Vec<String>),
    /// Functions of the world are not exported.
    #[error(
        "the component does not export {} of the world \
         cellar:consensus-policy/consensus-policy; its exports: {}",
        .missing.join(", "),
        if .exports.is_empty() { "none".to_string() } else { .exports.join(", ") }
    )]
    MissingExports {
        /// The functions of the world it lacks.
        missing: Vec<String>,
        /// What it exports.
        exports: Vec<String>,
    },
    /// An export does not have the signature of the WIT world.
    #[error("the export `{export}` does not have the signature `{expected}`: {detail}")]
    WrongSignature {
        /// The export.
        export: String,
        /// Its signature in the world.
        expected: String,
        /// What wasmtime reported.
        detail: String,
    },
    /// Instantiating the component failed (for example a start function trapped).
    #[error("the consensus policy cannot be instantiated: {0}")]
    Instantiation(String),
    /// `name()` failed or gave an empty or too long name.
    #[error("the consensus policy's `name` {0}")]
    BadName(String),
}

/// A call to a consensus policy that failed (trap, instruction or memory
/// limit): the host answered something `PolicyHost` refuses instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("consensus policy `{function}` failed: {reason}")]
pub struct ConsensusPolicyFailure {
    /// The export called (WIT name).
    pub function: &'static str,
    /// What went wrong, for the log.
    pub reason: String,
}

/// Export indices of the world's functions.
#[derive(Clone, Copy)]
struct Exports {
    name: ComponentExportIndex,
    ranking: ComponentExportIndex,
    block_maker_delay: ComponentExportIndex,
    notary_delay: ComponentExportIndex,
    payload_limits: ComponentExportIndex,
}

/// What is shared by clones: memoized answers and failures.
#[derive(Default)]
struct Shared {
    block_maker_delays: BTreeMap<u32, u64>,
    notary_delays: BTreeMap<u32, u64>,
    payload_limits: Option<PayloadLimits>,
    last_error: Option<ConsensusPolicyFailure>,
    failures: u64,
    last_instructions: u64,
}

/// A compiled consensus-policy component, checked against the WIT world;
/// implements `cellar_consensus::policy::ConsensusPolicy`.
///
/// Clones share the compiled code, the memoized answers and the failure
/// record, so a node can box one clone into its `ConsensusNode` and keep
/// another to read [`WasmConsensusPolicy::take_last_error`].
#[derive(Clone)]
pub struct WasmConsensusPolicy {
    hash: [u8; 32],
    size: usize,
    name: String,
    pre: InstancePre<PolicyState>,
    exports: Exports,
    instruction_limit: u64,
    per_node_instructions: u64,
    memoize: bool,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for WasmConsensusPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmConsensusPolicy")
            .field("name", &self.name)
            .field("hash", &self.hash_hex())
            .field("size", &self.size)
            .field("instruction_limit", &self.instruction_limit)
            .field("per_node_instructions", &self.per_node_instructions)
            .field("memoize", &self.memoize)
            .finish_non_exhaustive()
    }
}

fn signature(export: &str) -> &'static str {
    match export {
        "name" => "func() -> string",
        "ranking" => "func(height: u64, beacon: list<u8>, n: u32) -> list<u32>",
        "block-maker-delay-ms" | "notary-delay-ms" => "func(rank: u32) -> u64",
        _ => "func() -> payload-limits",
    }
}

fn wrong(export: &str, e: wasmtime::Error) -> ConsensusPolicyLoadError {
    ConsensusPolicyLoadError::WrongSignature {
        export: export.to_string(),
        expected: signature(export).to_string(),
        detail: format!("{e:#}"),
    }
}

impl WasmConsensusPolicy {
    /// Checks and compiles a consensus-policy component for `engine` (which
    /// must consume fuel, as [`crate::new_engine`]'s does) and reads its
    /// name.
    ///
    /// Rejected, with a clear [`ConsensusPolicyLoadError`]: a binary that is
    /// not WebAssembly or is a core module, an invalid component, one that
    /// imports anything, one that lacks a function of the world or has one
    /// with another signature, one that cannot be instantiated, and one
    /// whose `name` fails or is empty or longer than
    /// [`MAX_CONSENSUS_POLICY_NAME`] bytes. Compiled code is cached by
    /// engine and SHA-256 (with the scheduler policies).
    pub fn from_component(engine: &Engine, wasm: &[u8]) -> Result<Self, ConsensusPolicyLoadError> {
        if wasm.len() > MAX_CONSENSUS_POLICY_BYTES {
            return Err(ConsensusPolicyLoadError::TooLarge {
                size: wasm.len(),
                limit: MAX_CONSENSUS_POLICY_BYTES,
            });
        }
        match crate::policy::binary_kind(wasm) {
            BinaryKind::NotWasm => return Err(ConsensusPolicyLoadError::NotWasm),
            BinaryKind::CoreModule => return Err(ConsensusPolicyLoadError::CoreModule),
            BinaryKind::Component => {}
        }
        let hash: [u8; 32] = Sha256::digest(wasm).into();
        let component = compile(engine, wasm, &hash).map_err(|e| match e {
            PolicyError::Invalid(why) => ConsensusPolicyLoadError::Invalid(why),
            other => ConsensusPolicyLoadError::Invalid(other.to_string()),
        })?;

        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        if !imports.is_empty() {
            return Err(ConsensusPolicyLoadError::Imports(imports));
        }
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for name in CONSENSUS_POLICY_EXPORTS {
            match component.get_export(None, name) {
                Some((ComponentItem::ComponentFunc(_), index)) => found.push(index),
                _ => missing.push(name.to_string()),
            }
        }
        if !missing.is_empty() {
            let exports = ty
                .exports(engine)
                .map(|(name, _)| name.to_string())
                .collect();
            return Err(ConsensusPolicyLoadError::MissingExports { missing, exports });
        }
        let exports = Exports {
            name: found[0],
            ranking: found[1],
            block_maker_delay: found[2],
            notary_delay: found[3],
            payload_limits: found[4],
        };
        let pre = Linker::<PolicyState>::new(engine)
            .instantiate_pre(&component)
            .map_err(|e| ConsensusPolicyLoadError::Invalid(format!("{e:#}")))?;
        let mut policy = WasmConsensusPolicy {
            hash,
            size: wasm.len(),
            name: String::new(),
            pre,
            exports,
            instruction_limit: DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS,
            per_node_instructions: DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS_PER_NODE,
            memoize: true,
            shared: Arc::default(),
        };

        // Instantiate once to check the signatures, then ask for the name.
        let mut store = policy.store(DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS)?;
        let instance = policy
            .pre
            .instantiate(&mut store)
            .map_err(|e| ConsensusPolicyLoadError::Instantiation(format!("{e:#}")))?;
        let [name, ranking, bm, nt, limits] = CONSENSUS_POLICY_EXPORTS;
        instance
            .get_typed_func::<(), (String,)>(&mut store, &exports.name)
            .map_err(|e| wrong(name, e))?;
        instance
            .get_typed_func::<(u64, &[u8], u32), (Vec<u32>,)>(&mut store, &exports.ranking)
            .map_err(|e| wrong(ranking, e))?;
        instance
            .get_typed_func::<(u32,), (u64,)>(&mut store, &exports.block_maker_delay)
            .map_err(|e| wrong(bm, e))?;
        instance
            .get_typed_func::<(u32,), (u64,)>(&mut store, &exports.notary_delay)
            .map_err(|e| wrong(nt, e))?;
        instance
            .get_typed_func::<(), (WitPayloadLimits,)>(&mut store, &exports.payload_limits)
            .map_err(|e| wrong(limits, e))?;
        drop(store);

        let name = policy
            .call::<(), String>(exports.name, DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS, ())
            .map_err(|why| ConsensusPolicyLoadError::BadName(format!("failed: {why}")))?;
        if name.is_empty() || name.len() > MAX_CONSENSUS_POLICY_NAME {
            return Err(ConsensusPolicyLoadError::BadName(format!(
                "is {} bytes long; it must be 1 to {MAX_CONSENSUS_POLICY_NAME}",
                name.len()
            )));
        }
        policy.name = name;
        Ok(policy)
    }

    /// The same policy with other instruction limits per call: `base` for
    /// every call, plus `per_node` × n for `ranking`. The copy has its own
    /// memoized answers and failure record.
    pub fn with_instruction_limit(mut self, base: u64, per_node: u64) -> Self {
        self.instruction_limit = base;
        self.per_node_instructions = per_node;
        self.shared = Arc::default();
        self
    }

    /// The same policy with memoization of delays and payload limits on or
    /// off (on by default; off runs every call, for measurements). The copy
    /// has its own memoized answers and failure record.
    pub fn with_memoization(mut self, memoize: bool) -> Self {
        self.memoize = memoize;
        self.shared = Arc::default();
        self
    }

    /// The instruction limit of one call: the base limit, plus the per-node
    /// part times `n` for `ranking` (saturating).
    pub fn instruction_limit(&self, n: u32) -> u64 {
        self.instruction_limit
            .saturating_add(self.per_node_instructions.saturating_mul(u64::from(n)))
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

    /// The most recent failed call since the last take (trap, instruction or
    /// memory limit), if any; clears it. Shared by clones. A memoized
    /// failure is recorded once, when it first happened.
    pub fn take_last_error(&self) -> Option<ConsensusPolicyFailure> {
        self.lock().last_error.take()
    }

    /// How many calls failed since the policy was loaded (shared by clones).
    pub fn failures(&self) -> u64 {
        self.lock().failures
    }

    /// Instructions (fuel) the most recent call that ran the component
    /// executed, instantiation included (memoized answers run nothing);
    /// shared by clones. The same call costs the same on every replica.
    pub fn last_instructions(&self) -> u64 {
        self.lock().last_instructions
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn store(&self, fuel: u64) -> Result<Store<PolicyState>, ConsensusPolicyLoadError> {
        let state = PolicyState {
            limits: StoreLimitsBuilder::new()
                .memory_size(CONSENSUS_POLICY_MEMORY_BYTES)
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
            ConsensusPolicyLoadError::Instantiation(format!(
                "the engine does not consume fuel: {e:#}"
            ))
        })?;
        Ok(store)
    }

    /// Calls `export` on a fresh instance with `fuel` instructions; the
    /// reason on failure.
    fn call<P, R>(&self, export: ComponentExportIndex, fuel: u64, params: P) -> Result<R, String>
    where
        P: wasmtime::component::ComponentNamedList + Lower + Send + Sync,
        (R,): wasmtime::component::ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let mut store = self.store(fuel).map_err(|e| e.to_string())?;
        let result: wasmtime::Result<R> = (|| {
            let instance = self.pre.instantiate(&mut store)?;
            let func = instance.get_typed_func::<P, (R,)>(&mut store, &export)?;
            let (r,) = func.call(&mut store, params)?;
            Ok(r)
        })();
        self.lock().last_instructions = fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        result.map_err(|e| match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::OutOfFuel) => {
                format!("ran past its limit of {fuel} instructions")
            }
            Some(trap) if store.data().refused_memory => format!(
                "trapped ({trap}) after the host refused to grow its memory beyond \
                 {CONSENSUS_POLICY_MEMORY_BYTES} bytes"
            ),
            Some(trap) => format!("trapped: {trap}"),
            None => format!("failed: {e:#}"),
        })
    }

    fn record(&self, function: &'static str, reason: String) {
        let mut shared = self.lock();
        shared.failures += 1;
        shared.last_error = Some(ConsensusPolicyFailure { function, reason });
    }

    fn delay(&self, notary: bool, rank: u32) -> u64 {
        let (export, function) = if notary {
            (self.exports.notary_delay, "notary-delay-ms")
        } else {
            (self.exports.block_maker_delay, "block-maker-delay-ms")
        };
        if self.memoize {
            let shared = self.lock();
            let memo = if notary {
                &shared.notary_delays
            } else {
                &shared.block_maker_delays
            };
            if let Some(&ms) = memo.get(&rank) {
                return ms;
            }
        }
        let ms = match self.call::<(u32,), u64>(export, self.instruction_limit, (rank,)) {
            Ok(ms) => ms,
            Err(reason) => {
                self.record(function, reason);
                // Over the cap: `PolicyHost` uses the default.
                u64::MAX
            }
        };
        if self.memoize {
            let mut shared = self.lock();
            let memo = if notary {
                &mut shared.notary_delays
            } else {
                &mut shared.block_maker_delays
            };
            if memo.len() < MEMO_CAPACITY {
                memo.insert(rank, ms);
            }
        }
        ms
    }
}

impl ConsensusPolicy for WasmConsensusPolicy {
    /// The name the component gave when it was loaded.
    fn name(&self) -> &str {
        &self.name
    }

    /// The component's ranking; an empty one (refused by `PolicyHost` for
    /// n > 0) if the call fails.
    fn ranking(&self, height: Height, beacon: &Hash32, n: u32) -> Vec<u32> {
        let fuel = self.instruction_limit(n);
        match self.call::<(u64, &[u8], u32), Vec<u32>>(
            self.exports.ranking,
            fuel,
            (height, &beacon.0[..], n),
        ) {
            Ok(order) => order,
            Err(reason) => {
                self.record("ranking", reason);
                Vec::new()
            }
        }
    }

    /// The component's block-maker delay; `u64::MAX` if the call fails.
    fn block_maker_delay_ms(&self, rank: u32) -> u64 {
        self.delay(false, rank)
    }

    /// The component's notary delay; `u64::MAX` if the call fails.
    fn notary_delay_ms(&self, rank: u32) -> u64 {
        self.delay(true, rank)
    }

    /// The component's payload limits; zero limits if the call fails.
    fn payload_limits(&self) -> PayloadLimits {
        if self.memoize
            && let Some(limits) = self.lock().payload_limits
        {
            return limits;
        }
        let limits = match self.call::<(), WitPayloadLimits>(
            self.exports.payload_limits,
            self.instruction_limit,
            (),
        ) {
            Ok(l) => PayloadLimits {
                max_messages: l.max_messages,
                max_bytes: l.max_bytes,
            },
            Err(reason) => {
                self.record("payload-limits", reason);
                // Zero: `PolicyHost` uses the default.
                PayloadLimits {
                    max_messages: 0,
                    max_bytes: 0,
                }
            }
        };
        if self.memoize {
            self.lock().payload_limits = Some(limits);
        }
        limits
    }
}

//! The canisters that ship with Cellar, as WebAssembly components.
//!
//! The build script compiles the guest workspace `components/` for
//! `wasm32-wasip2` (release profile) and embeds the results here. The
//! examples ([`examples`]) are what `cellar start` deploys on a fresh node;
//! [`testbed`] is a fixture canister for host tests.
//!
//! The scheduler policies of `components/policies` are embedded too:
//! [`ROUND_ROBIN_POLICY`], [`ACCUMULATED_PRIORITY_POLICY`] and the test
//! fixture [`MISBEHAVING_POLICY`]. They implement the world
//! `cellar:scheduler/scheduler-policy` and import nothing. So are the
//! consensus policies: [`ICC_CONSENSUS_POLICY`],
//! [`ROUND_ROBIN_CONSENSUS_POLICY`] and the fixture
//! [`MISBEHAVING_CONSENSUS_POLICY`], of the world
//! `cellar:consensus-policy/consensus-policy`, importing nothing.

/// An embedded canister.
#[derive(Debug)]
pub struct Example {
    /// Short name, also the canister's suggested name (for example `kv`).
    pub name: &'static str,
    /// One line describing what the canister does.
    pub description: &'static str,
    /// The WebAssembly component.
    pub wasm: &'static [u8],
    /// The default argument list for the `lifecycle.init` hook, as WAVE
    /// without the parentheses (for example `some(0)`); `None` for none.
    pub init_arg: Option<&'static str>,
}

const COUNTER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/counter.wasm"));
const KV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kv.wasm"));
const LEDGER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ledger.wasm"));
const TESTBED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/testbed.wasm"));
const RELAY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/relay.wasm"));

/// The round-robin scheduler policy component: canisters with work take
/// turns, a group per round, with equal allowances (allocated canisters
/// always get their guaranteed share).
pub const ROUND_ROBIN_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/round_robin.wasm"));

/// The accumulated-priority (IC-style) scheduler policy component: the same
/// arithmetic as the host's built-in default policy.
pub const ACCUMULATED_PRIORITY_POLICY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/accumulated_priority.wasm"));

/// A scheduler-policy test fixture that misbehaves according to
/// `round % 10`: valid plan, trap, endless loop, duplicate, over budget,
/// starving an allocated canister, short priorities, bad index, priority
/// out of bounds, memory exhaustion.
pub const MISBEHAVING_POLICY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/misbehaving_policy.wasm"));

/// The ICC default consensus policy component: block makers ranked by a
/// permutation drawn from the random beacon, delays 2δr and 2δr + ε
/// (δ = 150 ms, ε = 100 ms), default payload limits; the same answers as
/// `cellar_consensus::IccPolicy`.
pub const ICC_CONSENSUS_POLICY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/icc_consensus.wasm"));

/// The fixed round-robin consensus policy component (leader of height h is
/// node h mod n), ICC delays and limits; the same answers as
/// `cellar_consensus::RoundRobinPolicy`.
pub const ROUND_ROBIN_CONSENSUS_POLICY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/round_robin_consensus.wasm"));

/// A consensus-policy test fixture that misbehaves by its arguments:
/// rankings by `height % 8` (valid, trap, endless loop, duplicate, too
/// short, unknown node, memory exhaustion, too long), delays by `rank % 4`
/// (valid, over the cap, trap, endless loop), payload limits over the caps.
pub const MISBEHAVING_CONSENSUS_POLICY: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/misbehaving_consensus.wasm"));

static EXAMPLES: [Example; 4] = [
    Example {
        name: "counter",
        description: "A counter: update `api.increment`, `api.add(n)`, query `query.get`.",
        wasm: COUNTER,
        init_arg: Some("some(0)"),
    },
    Example {
        name: "kv",
        description: "The key-value store: update `api.add(key, value)`, query `query.get(key)`.",
        wasm: KV,
        init_arg: None,
    },
    Example {
        name: "ledger",
        description: "A token: `api.mint` (controllers), `api.transfer`, queries `query.balance`, `query.total-supply`.",
        wasm: LEDGER,
        init_arg: None,
    },
    Example {
        name: "relay",
        description: "Calls other canisters (async Rust) and sets timers: `api.forward(callee, method, args)`, `api.lookup(kv, key)`, `api.start-timer`.",
        wasm: RELAY,
        init_arg: None,
    },
];

static TESTBED_EXAMPLE: Example = Example {
    name: "testbed",
    description: "A fixture canister for host tests (traps, limits, rollback, stable memory, upgrades).",
    wasm: TESTBED,
    init_arg: Some("none"),
};

/// The example canisters `cellar start` deploys on a fresh node: `counter`,
/// `kv`, `ledger` and `relay`, in that order.
pub fn examples() -> &'static [Example] {
    &EXAMPLES
}

/// Finds an embedded canister by name: one of [`examples`] or `testbed`.
pub fn get(name: &str) -> Option<&'static Example> {
    EXAMPLES
        .iter()
        .chain(std::iter::once(&TESTBED_EXAMPLE))
        .find(|e| e.name == name)
}

/// A scheduler policy component shipped with Cellar, by name:
/// `round-robin` or `accumulated-priority`.
pub fn scheduler_policy(name: &str) -> Option<&'static [u8]> {
    match name {
        "round-robin" => Some(ROUND_ROBIN_POLICY),
        "accumulated-priority" => Some(ACCUMULATED_PRIORITY_POLICY),
        _ => None,
    }
}

/// The testbed fixture component used by host tests.
pub fn testbed() -> &'static [u8] {
    TESTBED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_are_embedded() {
        for e in examples() {
            assert!(e.wasm.starts_with(b"\0asm"), "{} is not wasm", e.name);
            // Component layer (0x0d 0x00 0x01 0x00), not a core module.
            assert_eq!(
                &e.wasm[4..8],
                &[0x0d, 0, 1, 0],
                "{} is not a component",
                e.name
            );
        }
        for policy in [
            ROUND_ROBIN_POLICY,
            ACCUMULATED_PRIORITY_POLICY,
            MISBEHAVING_POLICY,
            ICC_CONSENSUS_POLICY,
            ROUND_ROBIN_CONSENSUS_POLICY,
            MISBEHAVING_CONSENSUS_POLICY,
        ] {
            assert_eq!(&policy[..8], b"\0asm\x0d\0\x01\0");
        }
        assert_eq!(get("testbed").map(|e| e.wasm), Some(testbed()));
        assert!(get("nope").is_none());
    }
}

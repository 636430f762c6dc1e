//! The canisters that ship with Cellar, as WebAssembly components.
//!
//! The build script compiles the guest workspace `components/` for
//! `wasm32-wasip2` (release profile) and embeds the results here. The
//! examples ([`examples`]) are what `cellar start` deploys on a fresh node;
//! [`testbed`] is a fixture canister for host tests.

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
        assert_eq!(get("testbed").map(|e| e.wasm), Some(testbed()));
        assert!(get("nope").is_none());
    }
}

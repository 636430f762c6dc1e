//! A counter canister: the smallest useful Cellar canister.

use cellar_sdk::State;

cellar_sdk::wit_bindgen::generate!({
    path: "wit",
    world: "counter",
    runtime_path: "cellar_sdk::wit_bindgen::rt",
});

use exports::example::counter::{api, lifecycle, query};

/// The counter, kept in linear memory (persisted by the host).
static COUNTER: State<u64> = State::new();

struct Counter;

impl lifecycle::Guest for Counter {
    fn init(start: Option<u64>) {
        COUNTER.replace(start.unwrap_or(0));
    }
}

impl api::Guest for Counter {
    fn increment() -> u64 {
        Self::add(1)
    }

    fn add(n: u64) -> u64 {
        COUNTER.with_mut(|c| {
            *c = c.saturating_add(n);
            *c
        })
    }
}

impl query::Guest for Counter {
    fn get() -> u64 {
        COUNTER.with(|c| *c)
    }
}

export!(Counter);

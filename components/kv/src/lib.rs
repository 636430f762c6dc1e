//! The key-value store canister: a `HashMap` that simply lives in memory.

use cellar_sdk::State;
use std::collections::HashMap;

cellar_sdk::wit_bindgen::generate!({
    path: "wit",
    world: "kv",
    runtime_path: "cellar_sdk::wit_bindgen::rt",
});

use exports::example::kv::{api, query};

static STORE: State<HashMap<String, u64>> = State::new();

struct Kv;

impl api::Guest for Kv {
    fn add(key: String, value: u64) {
        STORE.with_mut(|s| s.insert(key, value));
    }
}

impl query::Guest for Kv {
    fn get(key: String) -> Option<u64> {
        STORE.with(|s| s.get(&key).copied())
    }
}

export!(Kv);

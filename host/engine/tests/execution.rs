//! The engine's semantics on real components: persistence of updates,
//! discarded queries, rollback on traps and instruction exhaustion,
//! determinism, typed arguments and clear errors.

use cellar_engine::{
    CallArgs, CanisterCode, CodeCache, ExecutionState, InstallError, Limits, MessageContext,
    MessageKind, MessageOutcome, Val, decode_args, execute, parse_call_text, results_to_wave,
};
use cellar_types::{Principal, RejectCode};
use std::sync::Arc;

/// One canister driven directly through the engine.
struct Harness {
    code: Arc<CanisterCode>,
    state: ExecutionState,
    limits: Limits,
    round: u64,
    caller: Principal,
    /// The canister's id (tests that depend on per-canister history kept
    /// by the engine use their own).
    canister_id: Principal,
}

impl Harness {
    fn new(wasm: &[u8]) -> Self {
        Self::with_limits(wasm, Self::limits())
    }

    /// Limits with the tracker named by `CELLAR_MEMORY_TRACKER`, if set (the
    /// suite runs once per tracker in CI).
    fn limits() -> Limits {
        let mut limits = Limits::default();
        if let Ok(name) = std::env::var("CELLAR_MEMORY_TRACKER") {
            limits.memory_tracker = name.parse().unwrap();
        }
        limits
    }

    fn with_limits(wasm: &[u8], limits: Limits) -> Self {
        let cache = CodeCache::new(cellar_engine::new_engine().unwrap(), None, 64 << 20).unwrap();
        Harness {
            code: cache.load(wasm).unwrap(),
            state: ExecutionState::default(),
            limits,
            round: 0,
            caller: Principal::self_authenticating(&[1; 32]),
            canister_id: Principal::canister(7),
        }
    }

    fn run(&mut self, call: &str, kind: MessageKind) -> MessageOutcome {
        let call = parse_call_text(call).unwrap();
        let method = self.code.interface.resolve(&call.method).unwrap().clone();
        let params = decode_args(&CallArgs::Wave(call.args), &method).unwrap();
        self.round += 1;
        let ctx = MessageContext {
            canister_id: self.canister_id.clone(),
            caller: self.caller.clone(),
            method: method.function.clone(),
            kind,
            cycles_attached: 0,
            cycle_balance: 1_000,
            time_nanos: 1_700_000_000_000_000_000 + self.round,
            round: self.round,
            controllers: vec![self.caller.clone()],
            certified_data: self.state.certified_data.clone(),
            random_seed: [self.round as u8; 32],
            context_id: 0,
            open_contexts: Vec::new(),
        };
        let outcome = execute(&self.code, &self.state, &method, &params, ctx, &self.limits);
        if let Some(changes) = outcome.changes.clone() {
            self.state.apply(changes);
        }
        outcome
    }

    fn update(&mut self, call: &str) -> MessageOutcome {
        self.run(call, MessageKind::Update)
    }

    fn query(&mut self, call: &str) -> MessageOutcome {
        self.run(call, MessageKind::Query)
    }

    /// The reply as WAVE text, or the reject's code (for comparing runs).
    fn shown(outcome: &MessageOutcome) -> String {
        match &outcome.result {
            Ok(values) => results_to_wave(values).unwrap(),
            Err(reject) => format!("reject {:?}", reject.code),
        }
    }

    /// The reply as WAVE text; panics on a reject.
    fn reply(outcome: &MessageOutcome) -> String {
        match &outcome.result {
            Ok(values) => results_to_wave(values).unwrap(),
            Err(reject) => panic!("unexpected reject: {reject}"),
        }
    }
}

fn testbed() -> Harness {
    Harness::new(cellar_examples::testbed())
}

#[test]
fn updates_persist_across_many_messages() {
    let mut kv = Harness::new(cellar_examples::get("kv").unwrap().wasm);
    for i in 0..10_000u64 {
        let outcome = kv.update(&format!("add(\"k{}\", {i})", i % 500));
        assert!(outcome.result.is_ok(), "message {i}: {:?}", outcome.result);
    }
    for k in [0u64, 123, 499] {
        let expected = 9_500 + k;
        assert_eq!(
            Harness::reply(&kv.query(&format!("get(\"k{k}\")"))),
            format!("some({expected})")
        );
    }
    assert_eq!(Harness::reply(&kv.query("get(\"missing\")")), "none");
}

#[test]
fn query_writes_are_discarded() {
    let mut t = testbed();
    t.update("set(\"a\", \"1\")");
    let before = t.state.clone();
    let inside = t.query("write-in-query(\"b\", \"2\")");
    assert_eq!(Harness::reply(&inside), "2", "the query sees its own write");
    assert!(inside.changes.is_none());
    assert_eq!(t.state, before);
    assert_eq!(Harness::reply(&t.query("count()")), "1");
    assert_eq!(Harness::reply(&t.query("get(\"b\")")), "none");
}

#[test]
fn trap_rolls_back_and_the_canister_stays_usable() {
    let mut t = testbed();
    t.update("set(\"a\", \"1\")");
    let before = t.state.clone();
    let trapped = t.update("set-then-trap(\"b\", \"2\")");
    let reject = trapped.result.unwrap_err();
    assert_eq!(reject.code, RejectCode::CanisterError);
    assert!(reject.message.contains("trapped"), "{}", reject.message);
    assert!(trapped.changes.is_none());
    assert_eq!(t.state, before);
    assert_eq!(Harness::reply(&t.query("get(\"b\")")), "none");
    // The canister keeps working after the trap.
    t.update("set(\"c\", \"3\")");
    assert_eq!(Harness::reply(&t.query("count()")), "2");
}

#[test]
fn a_panic_message_reaches_the_caller() {
    let mut t = testbed();
    let reject = t.update("trap(\"boom-42\")").result.unwrap_err();
    assert_eq!(reject.code, RejectCode::CanisterError);
    assert!(reject.message.contains("boom-42"), "{}", reject.message);
}

#[test]
fn looping_canister_runs_out_of_instructions_and_recovers() {
    let limits = Limits {
        update_instructions: 20_000_000,
        query_instructions: 10_000_000,
        ..Harness::limits()
    };
    let mut t = Harness::with_limits(cellar_examples::testbed(), limits);
    t.update("set(\"a\", \"1\")");
    let before = t.state.clone();
    let outcome = t.update("spin(100000000000)");
    let reject = outcome.result.unwrap_err();
    assert_eq!(reject.code, RejectCode::CanisterError);
    assert!(
        reject.message.contains("ran out of instructions"),
        "{}",
        reject.message
    );
    assert_eq!(outcome.instructions, 20_000_000);
    assert_eq!(t.state, before);
    // A small loop within the limit still works.
    assert!(t.update("spin(1000)").result.is_ok());
    assert_eq!(Harness::reply(&t.query("get(\"a\")")), "some(\"1\")");
}

#[test]
fn two_fresh_engines_agree_on_instructions_and_state() {
    let script = [
        "set(\"a\", \"1\")",
        "spin(5000)",
        "grow-heap(3)",
        "stable-write(100, [1, 2, 3])",
        "set-then-trap(\"x\", \"y\")",
        "random-bytes()",
        "wasi-random()",
        "now()",
        "set(\"b\", \"2\")",
    ];
    let run = || {
        let mut t = testbed();
        let counts: Vec<(u64, String)> = script
            .iter()
            .map(|call| {
                let o = t.update(call);
                let shown = Harness::shown(&o);
                (o.instructions, shown)
            })
            .collect();
        (counts, t.state)
    };
    let (first_counts, first_state) = run();
    let (second_counts, second_state) = run();
    assert_eq!(first_counts, second_counts);
    assert!(first_state == second_state, "states differ");
    assert!(first_counts.iter().all(|(n, _)| *n > 0));
}

#[test]
fn randomness_and_time_come_from_the_round() {
    let mut t = testbed();
    let a = Harness::reply(&t.update("random-bytes()"));
    let b = Harness::reply(&t.update("random-bytes()"));
    assert_ne!(a, b, "each round has its own tape");
    let now = Harness::reply(&t.update("now()"));
    assert_eq!(now, format!("{}", 1_700_000_000_000_000_000u64 + t.round));
    let info = Harness::reply(&t.query("time-info()"));
    assert_eq!(
        info,
        format!("({}, {})", 1_700_000_000_000_000_000u64 + t.round, t.round)
    );
}

#[test]
fn stable_memory_and_heap_growth_persist() {
    let mut t = testbed();
    t.update("stable-write(65530, [9, 8, 7, 6, 5, 4, 3, 2])");
    assert_eq!(Harness::reply(&t.query("stable-size()")), "2");
    assert_eq!(
        Harness::reply(&t.query("stable-read(65532, 4)")),
        "[7, 6, 5, 4]"
    );
    let pages: u64 = Harness::reply(&t.update("grow-heap(8)")).parse().unwrap();
    assert!(pages >= 128, "{pages}");
    assert!(t.state.heap.total_bytes() >= 8 << 20);
    t.update("set(\"after-growth\", \"ok\")");
    assert_eq!(
        Harness::reply(&t.query("get(\"after-growth\")")),
        "some(\"ok\")"
    );
}

#[test]
fn reject_is_returned_and_logs_are_captured() {
    let mut t = testbed();
    let outcome = t.update("reject-me(\"not today\")");
    let reject = outcome.result.unwrap_err();
    assert_eq!(reject.code, RejectCode::CanisterReject);
    assert_eq!(reject.message, "not today");
    let logged = t.update("log-line(\"hello\")");
    let lines: Vec<&str> = logged.logs.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        lines.iter().filter(|l| l.contains("hello")).count(),
        2,
        "{lines:?}"
    );
    assert_eq!(
        Harness::reply(&t.update("whoami()")),
        format!("\"{}\"", t.caller.to_text())
    );
}

/// Rust's `println!` caches the WASI stdout handle in linear memory: it
/// works in the first message that prints, and a later one traps with a
/// reject that says why (use the system API's log instead).
#[test]
fn stdout_handles_cached_across_messages_get_an_explained_reject() {
    let mut t = testbed();
    assert!(t.update("log-line(\"first\")").result.is_ok());
    let reject = t.update("log-line(\"second\")").result.unwrap_err();
    assert_eq!(reject.code, RejectCode::CanisterError);
    assert!(
        reject.message.contains("unknown handle index")
            && reject.message.contains("log.write instead of stdout"),
        "{}",
        reject.message
    );
}

#[test]
fn certified_data_is_limited_and_refused_in_queries() {
    let mut t = testbed();
    assert_eq!(Harness::reply(&t.update("set-certified([1, 2, 3])")), "ok");
    assert_eq!(t.state.certified_data, vec![1, 2, 3]);
    let too_long = format!("set-certified([{}])", vec!["0"; 33].join(", "));
    assert!(Harness::reply(&t.update(&too_long)).starts_with("err("));
}

#[test]
fn arguments_are_checked_against_the_signature() {
    let t = testbed();
    let method = t.code.interface.resolve("set").unwrap();
    let err = decode_args(&CallArgs::Wave("5, \"x\"".into()), method).unwrap_err();
    assert!(
        err.contains("set: func(key: string, value: string)"),
        "{err}"
    );
    let err = decode_args(&CallArgs::Wave("\"x\"".into()), method).unwrap_err();
    assert!(err.contains("expected"), "{err}");
    let json = decode_args(&CallArgs::Json(serde_json::json!(["k", "v"])), method).unwrap();
    assert_eq!(json, vec![Val::String("k".into()), Val::String("v".into())]);
    let named = decode_args(
        &CallArgs::Json(serde_json::json!({"key": "k", "value": "v"})),
        method,
    )
    .unwrap();
    assert_eq!(named, json);
    assert!(decode_args(&CallArgs::Json(serde_json::json!([1, "v"])), method).is_err());
}

#[test]
fn methods_resolve_with_clear_errors() {
    let t = testbed();
    let interface = &t.code.interface;
    assert_eq!(interface.resolve("api.set").unwrap().function, "set");
    let unknown = interface.resolve("nope").unwrap_err().to_string();
    assert!(
        unknown.contains("nope") && unknown.contains("api.set"),
        "{unknown}"
    );
    assert!(interface.resolve("init").is_err(), "hooks are not callable");
    let text = interface.describe();
    assert!(text.contains("query"), "{text}");
    assert!(text.contains("update"), "{text}");
}

#[test]
fn malformed_components_get_clear_errors() {
    let cache = CodeCache::new(cellar_engine::new_engine().unwrap(), None, 1 << 20).unwrap();
    assert_eq!(
        cache.load(b"hello world").unwrap_err(),
        InstallError::NotWasm
    );
    let core = b"\0asm\x01\0\0\0";
    assert_eq!(cache.load(core).unwrap_err(), InstallError::CoreModule);
    let mut broken = b"\0asm\x0d\0\x01\0".to_vec();
    broken.extend_from_slice(&[0xff; 64]);
    assert!(matches!(
        cache.load(&broken).unwrap_err(),
        InstallError::Invalid(_)
    ));
    let huge = vec![0u8; (1 << 20) + 1];
    assert!(matches!(
        cache.load(&huge).unwrap_err(),
        InstallError::TooLarge { .. }
    ));
}

#[test]
fn compiled_code_is_shared_and_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = cellar_examples::get("counter").unwrap().wasm;
    let cache = CodeCache::new(
        cellar_engine::new_engine().unwrap(),
        Some(dir.path()),
        64 << 20,
    )
    .unwrap();
    let a = cache.load(wasm).unwrap();
    let b = cache.load(wasm).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.len(), 1);
    let cwasm = walk(dir.path())
        .into_iter()
        .filter(|p| p.ends_with(".cwasm"))
        .count();
    assert_eq!(cwasm, 1);
    // A second cache (a restarted node) loads the compiled file.
    let again = CodeCache::new(
        cellar_engine::new_engine().unwrap(),
        Some(dir.path()),
        64 << 20,
    )
    .unwrap();
    assert_eq!(again.load(wasm).unwrap().hash, a.hash);
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

#[test]
fn a_message_costs_the_pages_it_touches_not_the_heap() {
    let mut t = testbed();
    let pages: u64 = Harness::reply(&t.update("grow-heap(64)")).parse().unwrap();
    assert!(pages >= 1024, "{pages}");
    let resident = t.state.heap.resident_bytes();
    assert!(resident >= 64 << 20, "{resident}");
    // Writing 10 scattered pages dirties about 10 pages (plus a few for the
    // allocator and the stack), not the 16,384 pages of the heap.
    let outcome = t.update("write-pages(10, 99)");
    assert!(outcome.result.is_ok());
    let dirty = outcome.tracking.dirty_pages;
    assert!((10..40).contains(&dirty), "dirty pages: {dirty}");
    // The deterministic count (what budgets use): pages whose contents
    // changed, never more than the tracker saw written.
    assert!(
        (10..=dirty).contains(&outcome.delta_pages),
        "{} of {dirty}",
        outcome.delta_pages
    );
    // Reading dirties (almost) nothing.
    let read = t.update("read-pages(100, 7)");
    assert!(read.tracking.dirty_pages < 30, "{:?}", read.tracking);
    // Copies need no fault, nor does a kept memory (it holds every page;
    // `uffd-auto` keeps memories up to about this size).
    if matches!(
        t.limits.memory_tracker,
        cellar_engine::MemoryTracker::Signal | cellar_engine::MemoryTracker::Userfaultfd
    ) {
        assert!(read.tracking.faults >= 1);
    }
    // A query changes nothing.
    assert_eq!(t.query("read-pages(10, 99)").delta_pages, 0);
    // The written bytes are there in the next message.
    let again = t.update("write-pages(10, 99)");
    assert!(again.result.is_ok());
    assert_eq!(
        Harness::reply(&t.query("read-pages(10, 99)")),
        "20",
        "2 per page"
    );
}

#[test]
fn out_of_bounds_accesses_still_trap_and_memory_growth_is_tracked() {
    let mut t = testbed();
    t.update("set(\"a\", \"1\")");
    // Memory 0 is the canister's heap (the last one holds its globals).
    let size = t.state.heap.memories[0].size;
    let reject = t
        .update(&format!("peek({})", size + 70_000))
        .result
        .unwrap_err();
    assert_eq!(reject.code, RejectCode::CanisterError);
    assert!(
        reject.message.contains("out of bounds"),
        "{}",
        reject.message
    );
    assert_eq!(Harness::reply(&t.update("peek(0)")), "0");
    // Growth inside a message: new pages are mapped on first touch.
    let pages: u64 = Harness::reply(&t.update("grow-heap(4)")).parse().unwrap();
    assert_eq!(pages * 65536, t.state.heap.memories[0].size);
    assert_eq!(Harness::reply(&t.query("get(\"a\")")), "some(\"1\")");
}

#[test]
fn a_message_that_dirties_too_many_pages_is_rolled_back() {
    let limits = Limits {
        max_dirty_pages_per_message: 200,
        ..Harness::limits()
    };
    let mut t = Harness::with_limits(cellar_examples::testbed(), limits);
    t.update("set(\"a\", \"1\")");
    let before = t.state.clone();
    let reject = t.update("grow-heap(4)").result.unwrap_err();
    assert!(
        reject.message.contains("the limit is 200 pages"),
        "{}",
        reject.message
    );
    assert_eq!(t.state, before);
    assert_eq!(Harness::reply(&t.query("get(\"a\")")), "some(\"1\")");
}

/// Prints the cost of faults for each tracker (`--ignored --nocapture`).
#[test]
#[ignore]
fn fault_cost_probe() {
    for tracker in ["signal", "userfaultfd"] {
        let mut limits = Harness::limits();
        limits.memory_tracker = tracker.parse().unwrap();
        if limits.memory_tracker.check_available().is_err() {
            continue;
        }
        let mut t = Harness::with_limits(cellar_examples::testbed(), limits);
        t.update("grow-heap(256)");
        for call in ["read-pages(10000, 3)", "write-pages(10000, 3)"] {
            let o = t.update(call);
            let s = o.tracking;
            println!(
                "{tracker:<12} {call:<22} faults {:>6} dirty {:>6} setup {:>7.1} µs call {:>9.1} µs ({:.2} µs/fault) commit {:>8.1} µs",
                s.faults,
                s.dirty_pages,
                s.setup_nanos as f64 / 1e3,
                s.call_nanos as f64 / 1e3,
                s.call_nanos as f64 / 1e3 / s.faults.max(1) as f64,
                s.commit_nanos as f64 / 1e3
            );
        }
    }
}

#[test]
fn scattered_writes_do_not_exhaust_kernel_mappings() {
    // 40,000 random pages of a 1 GiB heap: ~37,000 distinct, mostly
    // isolated pages, each a protection change that splits a kernel
    // mapping; vm.max_map_count is 65,530 by default.
    let mut t = testbed();
    t.update("grow-heap(1000)");
    let outcome = t.update("write-pages(60000, 5)");
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    assert!(
        outcome.tracking.dirty_pages > 45_000,
        "{:?}",
        outcome.tracking
    );
    // Reading the same pages sums, per pick, how often that page was
    // written: at least one per pick.
    let sum: u64 = Harness::reply(&t.query("read-pages(60000, 5)"))
        .parse()
        .unwrap();
    assert!(sum >= 60_000, "{sum}");
    let again: u64 = Harness::reply(&t.query("read-pages(60000, 5)"))
        .parse()
        .unwrap();
    assert_eq!(sum, again);
}

// ---- Persisted mutable globals ---------------------------------------------

/// A canister whose whole state is in mutable globals (see `globals.wat`).
fn globals_canister() -> Vec<u8> {
    wat::parse_str(include_str!("globals.wat")).unwrap()
}

#[test]
fn mutable_globals_persist_across_messages_and_roll_back_on_traps() {
    let mut g = Harness::new(&globals_canister());
    for expected in 1..=3 {
        assert_eq!(Harness::reply(&g.update("bump()")), expected.to_string());
    }
    // Every value type keeps its exact bits.
    assert_eq!(Harness::reply(&g.query("wide()")), "3000000000005");
    assert_eq!(Harness::reply(&g.query("float()")), "12");
    assert_eq!(Harness::reply(&g.query("vector-high()")), "10");
    assert_eq!(Harness::reply(&g.query("constant()")), "42");
    // Two instances of one module keep their globals apart.
    assert_eq!(Harness::reply(&g.update("tick-a()")), "1");
    assert_eq!(Harness::reply(&g.update("tick-a()")), "2");
    assert_eq!(Harness::reply(&g.update("tick-b()")), "1");

    // A trap rolls the globals back with the rest of the state.
    let before = g.state.clone();
    let trapped = g.update("bump-then-trap()");
    assert!(trapped.result.unwrap_err().message.contains("trapped"));
    assert_eq!(g.state, before);
    assert_eq!(Harness::reply(&g.query("peek()")), "3");

    // A query sees the committed globals and its changes are discarded.
    assert_eq!(Harness::reply(&g.query("bump-in-query()")), "4");
    assert_eq!(Harness::reply(&g.query("bump-in-query()")), "4");
    assert_eq!(Harness::reply(&g.update("bump()")), "4");

    // A fresh engine and code cache (a restarted node) given the committed
    // state continues from the saved globals.
    let state = g.state.clone();
    let mut restarted = Harness::new(&globals_canister());
    restarted.state = state;
    assert_eq!(Harness::reply(&restarted.update("bump()")), "5");
    assert_eq!(Harness::reply(&restarted.update("tick-b()")), "2");
    assert_eq!(Harness::reply(&restarted.query("float()")), "48");
}

#[test]
fn unchanged_globals_dirty_no_page() {
    // The Rust kv's only mutable global is its stack pointer, which returns
    // to the same value after every call: after the first update (which
    // writes the globals page once), an update dirties only heap pages.
    let mut kv = Harness::new(cellar_examples::get("kv").unwrap().wasm);
    let memories = |kv: &Harness| kv.state.heap.memories.len();
    kv.update("add(\"a\", 1)");
    let globals_page = kv.state.heap.memories.last().unwrap().pages.clone();
    assert_eq!(globals_page.len(), 1, "the globals page is written once");
    for i in 0..10 {
        kv.update(&format!("add(\"a\", {i})"));
    }
    let after = &kv.state.heap.memories.last().unwrap().pages;
    assert!(after.same_version(&globals_page));
    assert!(memories(&kv) >= 2);
}

#[test]
fn instrumentation_leaves_the_interface_and_global_free_components_alone() {
    let instrumented = cellar_engine::instrument(&globals_canister()).unwrap();
    // count, wide, float, vector in one instance, ticks in two.
    assert_eq!(instrumented.globals, 6);
    let g = Harness::new(&globals_canister());
    let names: Vec<String> = g
        .code
        .interface
        .methods
        .iter()
        .map(|m| m.qualified_name())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("cellar-globals")),
        "{names:?}"
    );
    assert!(
        g.code
            .interface
            .resolve(cellar_engine::SAVE_EXPORT)
            .is_err()
    );

    let plain = wat::parse_str(
        r#"(component
             (core module $m (func (export "f") (result i32) (i32.const 1)))
             (core instance $i (instantiate $m))
             (func (export "f") (result u32) (canon lift (core func $i "f"))))"#,
    )
    .unwrap();
    let out = cellar_engine::instrument(&plain).unwrap();
    assert_eq!(out.globals, 0);
    assert_eq!(out.wasm, plain);
}

// ---- Kept memories (the `uffd-mapped` tracker) ------------------------------

/// Limits with the `uffd-mapped` tracker, or `None` when the kernel lacks
/// userfaultfd (the tests then have nothing to check).
fn mapped_limits() -> Option<Limits> {
    let tracker: cellar_engine::MemoryTracker = "uffd-mapped".parse().unwrap();
    if let Err(e) = tracker.check_available() {
        eprintln!("skipping: {e}");
        return None;
    }
    Some(Limits {
        memory_tracker: tracker,
        ..Limits::default()
    })
}

#[test]
fn a_stack_overflow_traps_cleanly_and_the_next_message_runs() {
    let mut g = Harness::new(&globals_canister());
    assert_eq!(Harness::reply(&g.update("bump()")), "1");
    // Fiber stacks are reused between executions (`stacks`): each overflow
    // leaves a used stack behind, and each next message still runs.
    for _ in 0..3 {
        let before = g.state.clone();
        let overflowed = g.update("bump-then-overflow()");
        let error = overflowed.result.unwrap_err().message;
        assert!(error.contains("stack"), "{error}");
        assert_eq!(g.state, before, "an overflow rolls back like any trap");
        assert_eq!(Harness::reply(&g.query("peek()")), "1");
    }
    assert_eq!(Harness::reply(&g.update("bump()")), "2");
    assert_eq!(Harness::reply(&g.query("bump-in-query()")), "3");
}

/// A canister with data segments (see `data.wat`).
fn data_canister() -> Vec<u8> {
    wat::parse_str(include_str!("data.wat")).unwrap()
}

#[test]
fn kept_memories_agree_with_the_lazy_tracker_message_by_message() {
    let Some(mapped) = mapped_limits() else {
        return;
    };
    let lazy = Limits {
        memory_tracker: "userfaultfd".parse().unwrap(),
        ..Limits::default()
    };
    let script = [
        "set(\"a\", \"1\")",
        "set(\"b\", \"2\")",
        "set-then-trap(\"c\", \"3\")",
        "grow-heap(3)",
        "write-pages(50, 7)",
        "set-then-trap(\"d\", \"4\")",
        "write-pages(20, 9)",
        "stable-write(100, [1, 2, 3])",
        "reject-me(\"no\")",
        "set(\"e\", \"5\")",
    ];
    let run = |limits: Limits| {
        let mut t = Harness::with_limits(cellar_examples::testbed(), limits);
        let mut trace = Vec::new();
        for call in script {
            let o = t.update(call);
            let shown = Harness::shown(&o);
            let q = Harness::reply(&t.query("write-in-query(\"q\", \"x\")"));
            trace.push((o.instructions, shown, o.delta_pages, q));
        }
        (trace, t.state)
    };
    let (lazy_trace, lazy_state) = run(lazy);
    let (mapped_trace, mapped_state) = run(mapped);
    assert_eq!(lazy_trace, mapped_trace);
    assert!(lazy_state == mapped_state, "states differ");
}

#[test]
fn the_auto_tracker_keeps_small_memories_and_maps_large_ones_from_images() {
    let auto: cellar_engine::MemoryTracker = "uffd-auto".parse().unwrap();
    if let Err(e) = auto.check_available() {
        eprintln!("skipping: {e}");
        return;
    }
    let lazy = Limits {
        memory_tracker: "userfaultfd".parse().unwrap(),
        ..Limits::default()
    };
    // The heap grows past KEPT_MAX_PAGES (64 MiB) half-way: messages before
    // run in a kept memory, messages after in an image.
    let grow_mib = ((cellar_engine::KEPT_MAX_PAGES * cellar_engine::PAGE_SIZE as u64) >> 20) + 8;
    let grow = format!("grow-heap({grow_mib})");
    let script = [
        "set(\"a\", \"1\")",
        "set(\"b\", \"2\")",
        "set-then-trap(\"c\", \"3\")",
        "write-pages(20, 9)",
        grow.as_str(),
        "write-pages(50, 7)",
        "set-then-trap(\"d\", \"4\")",
        "set(\"e\", \"5\")",
    ];
    let run = |limits: Limits| {
        let mut t = Harness::with_limits(cellar_examples::testbed(), limits);
        // Its own id: no other test's history (per canister) applies.
        t.canister_id = Principal::canister(1000);
        let mut trace = Vec::new();
        let mut faults = Vec::new();
        for call in script {
            let o = t.update(call);
            let shown = Harness::shown(&o);
            let q = Harness::reply(&t.query("get(\"a\")"));
            faults.push(o.tracking.faults);
            trace.push((o.instructions, shown, o.delta_pages, q));
        }
        (trace, faults, t.state)
    };
    let (lazy_trace, lazy_faults, lazy_state) = run(lazy);
    let (auto_trace, auto_faults, auto_state) = run(Limits {
        memory_tracker: auto,
        ..Limits::default()
    });
    assert_eq!(lazy_trace, auto_trace);
    assert!(lazy_state == auto_state, "states differ");
    let stored: u64 = auto_state
        .heap
        .memories
        .iter()
        .map(|m| m.pages.len())
        .max()
        .unwrap();
    assert!(stored > cellar_engine::KEPT_MAX_PAGES, "{stored} pages");
    // Up to the growth the memory was kept, as with `uffd-mapped` (no fault
    // after the message that created it); the lazy tracker faulted pages in.
    let Some(mapped) = mapped_limits() else {
        return;
    };
    let (_, mapped_faults, _) = run(mapped);
    assert_eq!(auto_faults[..4], mapped_faults[..4]);
    assert_ne!(auto_faults[..4], lazy_faults[..4]);
    // After it, the memory is mapped from an image, as with `userfaultfd`
    // (a growth fault per message that grows; a kept memory takes none).
    assert_eq!(auto_faults[5..], lazy_faults[5..]);
    assert_ne!(auto_faults[5..], mapped_faults[5..]);
}

#[test]
fn the_auto_tracker_keeps_a_large_memory_while_its_updates_write_many_pages() {
    let auto: cellar_engine::MemoryTracker = "uffd-auto".parse().unwrap();
    if let Err(e) = auto.check_available() {
        eprintln!("skipping: {e}");
        return;
    }
    // A heap past KEPT_MAX_PAGES (64 MiB): 72 MiB, where an update that
    // changes 18 pages or more is heavy and one under 4.5 light.
    let grow_mib = ((cellar_engine::KEPT_MAX_PAGES * cellar_engine::PAGE_SIZE as u64) >> 20) + 8;
    let grow = format!("grow-heap({grow_mib})");
    let mut script = vec![
        grow, // heavy, but one of four
        "set(\"a\", \"1\")".to_string(),
        "write-pages(200, 1)".to_string(),
        "write-pages(200, 2)".to_string(),
        "write-pages(200, 3)".to_string(), // three of four heavy: kept from the next
        "write-pages(200, 4)".to_string(),
        "set-then-trap(\"b\", \"2\")".to_string(),
        "write-pages(200, 5)".to_string(),
    ];
    // The choice holds for 16 updates after a switch (the trap does not
    // count), then three light ones of the last four switch back.
    script.extend((0..15).map(|i| format!("set(\"k{i}\", \"{i}\")")));
    let images_again = script.len();
    script.extend([
        "set(\"f\", \"6\")".to_string(),
        "write-pages(20, 6)".to_string(),
    ]);
    let run = |tracker: &str, id: u64| {
        let mut t = Harness::with_limits(
            cellar_examples::testbed(),
            Limits {
                memory_tracker: tracker.parse().unwrap(),
                ..Limits::default()
            },
        );
        t.canister_id = Principal::canister(id);
        let mut trace = Vec::new();
        let mut faults = Vec::new();
        for call in &script {
            let o = t.update(call);
            let shown = Harness::shown(&o);
            let q = Harness::reply(&t.query("get(\"a\")"));
            faults.push(o.tracking.faults);
            trace.push((o.instructions, shown, o.delta_pages, q));
        }
        (trace, faults, t.state)
    };
    let (image_trace, image_faults, image_state) = run("userfaultfd", 1001);
    let (auto_trace, auto_faults, auto_state) = run("uffd-auto", 1002);
    let (_, mapped_faults, _) = run("uffd-mapped", 1003);
    assert_eq!(image_trace, auto_trace);
    assert!(image_state == auto_state, "states differ");
    // Which way each message ran shows in its faults: an image takes one
    // (the globals' page), a kept memory none.
    let end = script.len();
    let phases = [
        (1..5, &image_faults),
        (5..images_again, &mapped_faults),
        (images_again..end, &image_faults),
    ];
    for (phase, expected) in phases {
        assert_eq!(
            auto_faults[phase.clone()],
            expected[phase.clone()],
            "{phase:?}"
        );
    }
    assert_ne!(
        image_faults[5..images_again],
        mapped_faults[5..images_again]
    );
    assert_ne!(image_faults[images_again..], mapped_faults[images_again..]);
}

/// Runs a script whose steps alternate between `main` and `aside` (the
/// trackers named) and checks that it gives the same replies, queries and
/// state as running every step with `aside`. A step run aside commits a
/// version without `main`'s cached memory (kept memory or image), as when
/// a query has borrowed it; the next step finds the cached memory of the
/// older version and must see every change.
fn brought_forward_agrees(main: &str, aside: &str, canister: u64, first: &str) {
    let limits = |name: &str| Limits {
        memory_tracker: name.parse().unwrap(),
        ..Limits::default()
    };
    let script = [
        (first, false),
        ("set(\"a\", \"1\")", false),
        ("set(\"b\", \"2\")", false),
        ("set(\"c\", \"3\")", true),
        ("set(\"d\", \"4\")", false),
        ("write-pages(30, 3)", true),
        ("write-pages(30, 4)", true),
        ("grow-heap(1)", true),
        ("write-pages(40, 5)", false),
        ("set-then-trap(\"x\", \"9\")", false),
        ("set(\"c\", \"33\")", true),
        ("set(\"e\", \"5\")", false),
    ];
    let run = |mixed: bool| {
        let mut t = Harness::with_limits(cellar_examples::testbed(), limits(aside));
        t.canister_id = Principal::canister(canister);
        let mut trace = Vec::new();
        for (call, aside_step) in script {
            t.limits = limits(if mixed && !aside_step { main } else { aside });
            let o = t.update(call);
            let shown = Harness::shown(&o);
            let seen: Vec<String> = ["a", "c", "d", "e"]
                .iter()
                .map(|k| Harness::reply(&t.query(&format!("get(\"{k}\")"))))
                .collect();
            trace.push((o.instructions, shown, o.delta_pages, seen));
        }
        (trace, t.state)
    };
    let (aside_trace, aside_state) = run(false);
    let (mixed_trace, mixed_state) = run(true);
    assert_eq!(aside_trace, mixed_trace);
    assert!(aside_state == mixed_state, "states differ");
}

#[test]
fn a_kept_memory_is_brought_forward_past_updates_committed_without_it() {
    if mapped_limits().is_none() {
        return;
    }
    brought_forward_agrees("uffd-mapped", "userfaultfd", 1010, "set(\"z\", \"0\")");
}

#[test]
fn an_image_is_brought_forward_past_updates_committed_without_it() {
    if mapped_limits().is_none() {
        return;
    }
    // 8 MiB of written pages: past the smallest memory with an image.
    brought_forward_agrees("userfaultfd", "signal", 1011, "grow-heap(8)");
}

#[test]
fn kept_memories_roll_back_traps_and_queries() {
    let Some(limits) = mapped_limits() else {
        return;
    };
    let mut t = Harness::with_limits(cellar_examples::testbed(), limits);
    // The first message creates the heap, the second keeps its memory, the
    // rest run in the kept memory.
    for i in 0..4 {
        t.update(&format!("set(\"k{i}\", \"{i}\")"));
    }
    let before = t.state.clone();
    assert!(t.update("set-then-trap(\"x\", \"y\")").result.is_err());
    assert_eq!(t.state, before);
    assert_eq!(Harness::reply(&t.query("get(\"x\")")), "none");
    assert_eq!(
        Harness::reply(&t.query("write-in-query(\"q\", \"1\")")),
        "5"
    );
    assert_eq!(Harness::reply(&t.query("get(\"q\")")), "none");
    assert_eq!(Harness::reply(&t.query("count()")), "4");
    assert_eq!(t.state, before);
    t.update("set(\"k9\", \"9\")");
    assert_eq!(Harness::reply(&t.query("count()")), "5");
    assert_eq!(Harness::reply(&t.query("get(\"k2\")")), "some(\"2\")");
}

#[test]
fn data_segments_do_not_overwrite_the_kept_heap() {
    let Some(limits) = mapped_limits() else {
        return;
    };
    let mut t = Harness::with_limits(&data_canister(), limits);
    assert_eq!(Harness::reply(&t.query("get(0)")), "97", "the data segment");
    for round in 0..4u8 {
        t.update(&format!("set(0, {})", 10 + round));
        t.update(&format!("set(70001, {})", 20 + round));
        assert_eq!(
            Harness::reply(&t.query("get(0)")),
            format!("{}", 10 + round)
        );
        assert_eq!(
            Harness::reply(&t.query("get(70001)")),
            format!("{}", 20 + round)
        );
        // Untouched bytes of the segments keep their initial values.
        assert_eq!(Harness::reply(&t.query("get(1)")), "98");
        assert_eq!(Harness::reply(&t.query("get(70000)")), "119");
    }
    // The committed heap holds the canister's bytes, not the segment's.
    let heap = t.state.heap.memories[0].to_bytes();
    assert_eq!(&heap[..4], &[13, 98, 99, 100]);
    assert_eq!(&heap[70000..70004], &[119, 23, 121, 122]);
    // A trap and a query after writes over the segments leave them so.
    assert!(t.update("set-then-trap(0, 99)").result.is_err());
    assert_eq!(Harness::reply(&t.query("set-in-query(1, 1)")), "()");
    assert_eq!(Harness::reply(&t.query("get(0)")), "13");
    assert_eq!(Harness::reply(&t.query("get(1)")), "98");
    assert_eq!(t.state.heap.memories[0].to_bytes(), heap);
}

#[test]
fn two_canisters_keep_their_own_memories() {
    let Some(limits) = mapped_limits() else {
        return;
    };
    let mut a = Harness::with_limits(cellar_examples::testbed(), limits.clone());
    let mut b = Harness::with_limits(cellar_examples::testbed(), limits.clone());
    let mut d = Harness::with_limits(&data_canister(), limits);
    for i in 0..5 {
        a.update(&format!("set(\"a{i}\", \"{i}\")"));
        b.update(&format!("set(\"b{i}\", \"{i}\")"));
        b.update(&format!("set(\"b{i}x\", \"{i}\")"));
        d.update(&format!("set({i}, {i})"));
    }
    assert_eq!(Harness::reply(&a.query("count()")), "5");
    assert_eq!(Harness::reply(&b.query("count()")), "10");
    assert_eq!(Harness::reply(&a.query("get(\"b1\")")), "none");
    assert_eq!(Harness::reply(&b.query("get(\"a1\")")), "none");
    assert_eq!(Harness::reply(&b.query("get(\"b4x\")")), "some(\"4\")");
    assert_eq!(Harness::reply(&d.query("get(4)")), "4");
    // A copy of a state (a second node) continues from it in its own right.
    let mut c = Harness::with_limits(cellar_examples::testbed(), a.limits.clone());
    c.state = a.state.clone();
    c.update("set(\"c\", \"1\")");
    a.update("set(\"only-a\", \"1\")");
    assert_eq!(Harness::reply(&c.query("get(\"only-a\")")), "none");
    assert_eq!(Harness::reply(&a.query("get(\"c\")")), "none");
    assert_eq!(Harness::reply(&c.query("count()")), "6");
    assert_eq!(Harness::reply(&a.query("count()")), "6");
}

#[test]
fn a_query_runs_beside_an_update_that_holds_the_kept_memory() {
    let Some(mut limits) = mapped_limits() else {
        return;
    };
    limits.slice_instructions = 1_000_000;
    let mut t = Harness::with_limits(cellar_examples::testbed(), limits.clone());
    for i in 0..3 {
        t.update(&format!("set(\"k{i}\", \"{i}\")"));
    }
    // An update that takes several slices holds the kept memory while it
    // is paused; a query meanwhile runs on a fresh memory.
    let call = parse_call_text("spin(20000000)").unwrap();
    let method = t.code.interface.resolve(&call.method).unwrap().clone();
    let params = decode_args(&CallArgs::Wave(call.args), &method).unwrap();
    let ctx = MessageContext {
        canister_id: Principal::canister(7),
        caller: t.caller.clone(),
        method: method.function.clone(),
        kind: MessageKind::Update,
        cycles_attached: 0,
        cycle_balance: 1_000,
        time_nanos: 1,
        round: 1,
        controllers: vec![t.caller.clone()],
        certified_data: Vec::new(),
        random_seed: [1; 32],
        context_id: 0,
        open_contexts: Vec::new(),
    };
    let mut progress =
        cellar_engine::execute_sliced(&t.code, &t.state, &method, &params, ctx, &limits);
    let mut queries = 0;
    let outcome = loop {
        match progress {
            cellar_engine::Progress::Done(outcome) => break outcome,
            cellar_engine::Progress::Paused(paused) => {
                assert_eq!(Harness::reply(&t.query("get(\"k1\")")), "some(\"1\")");
                assert_eq!(
                    Harness::reply(&t.query("write-in-query(\"q\", \"1\")")),
                    "4"
                );
                queries += 1;
                progress = paused.resume();
            }
        }
    };
    assert!(queries > 0, "the update paused");
    assert!(outcome.result.is_ok(), "{:?}", outcome.result);
    t.state.apply(outcome.changes.unwrap());
    t.update("set(\"after\", \"1\")");
    assert_eq!(Harness::reply(&t.query("count()")), "4");
    assert_eq!(Harness::reply(&t.query("get(\"q\")")), "none");
}

#[test]
fn kept_memories_grow_and_roll_back_growth() {
    let Some(limits) = mapped_limits() else {
        return;
    };
    let mut t = Harness::with_limits(&data_canister(), limits.clone());
    for i in 0..3 {
        t.update(&format!("set({i}, 7)"));
    }
    assert_eq!(Harness::reply(&t.update("grow(2)")), "2");
    assert_eq!(t.state.heap.memories[0].size, 4 * 65536);
    t.update("set(200000, 5)");
    assert_eq!(Harness::reply(&t.query("get(200000)")), "5");
    assert_eq!(Harness::reply(&t.query("get(262143)")), "0");
    assert!(t.query("get(262144)").result.is_err(), "beyond the memory");
    // A query that writes and grows leaves the memory as committed.
    assert_eq!(Harness::reply(&t.query("grow-in-query(3, 100)")), "4");
    assert_eq!(Harness::reply(&t.query("get(100)")), "0");
    assert!(t.query("get(262144)").result.is_err(), "still beyond");
    // Growth then a trap: rolled back, the new pages are gone.
    let before = t.state.clone();
    assert!(t.update("grow-then-trap(2, 300000)").result.is_err());
    assert_eq!(t.state, before);
    assert!(t.query("get(300000)").result.is_err(), "not grown");
    // A message rejected after its writes (over the dirty-page limit) on
    // the same version, from a second harness: the kept memory is put back.
    let mut strict = Harness::with_limits(
        &data_canister(),
        Limits {
            max_dirty_pages_per_message: 0,
            ..limits
        },
    );
    strict.state = t.state.clone();
    let reject = strict.update("set(0, 1)").result.unwrap_err();
    assert!(reject.message.contains("the limit is 0 pages"), "{reject}");
    assert_eq!(strict.state, before);
    assert_eq!(Harness::reply(&t.query("get(0)")), "7");
    // Growing again gives zero pages.
    assert_eq!(Harness::reply(&t.update("grow(2)")), "4");
    assert_eq!(Harness::reply(&t.query("get(300000)")), "0");
    t.update("set(300001, 3)");
    assert_eq!(Harness::reply(&t.query("get(300001)")), "3");
    assert_eq!(Harness::reply(&t.query("get(300000)")), "0");
    assert_eq!(Harness::reply(&t.query("get(200000)")), "5");
    assert_eq!(Harness::reply(&t.query("get(2)")), "7");
}

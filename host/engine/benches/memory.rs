//! Per-message cost of the memory trackers on a 1 GiB heap: a message that
//! writes `k` pseudo-random pages (an update) and one that reads `k` pages
//! (a query), for k = 0, 1, 100, 10,000, under each available tracker.
//! First, a small realistic message for scale: `add`/`get` on the `kv`
//! example holding 1,000 keys.
//! The heap is grown by 1023 MiB in one message (the per-message limit on
//! dirty pages is 1 GiB, and the allocator and stack dirty a few more).
//!
//! Run with `cargo bench -p cellar-engine --bench memory` (prints a table;
//! not a criterion benchmark: a copy-all message on 1 GiB takes ~a second).
//! `CELLAR_BENCH_HEAP_MIB` and `CELLAR_BENCH_ITERATIONS` change the heap
//! size (default 1023) and the runs per cell (default 7; copy-all runs 3).

use std::time::{Duration, Instant};

use cellar_engine::{
    CallArgs, CodeCache, ExecutionState, Limits, MemoryTracker, MessageContext, MessageKind,
    MessageOutcome, decode_args, execute, parse_call_text,
};
use cellar_types::Principal;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One message on `code` against `state`, timed.
fn message(
    code: &cellar_engine::CanisterCode,
    state: &ExecutionState,
    limits: &Limits,
    text: &str,
    kind: MessageKind,
    round: u64,
) -> (Duration, MessageOutcome) {
    let call = parse_call_text(text).unwrap();
    let method = code.interface.resolve(&call.method).unwrap().clone();
    let params = decode_args(&CallArgs::Wave(call.args), &method).unwrap();
    let ctx = MessageContext {
        canister_id: Principal::canister(1),
        caller: Principal::anonymous(),
        method: method.function.clone(),
        kind,
        cycles_attached: 0,
        cycle_balance: 0,
        time_nanos: round,
        round,
        controllers: Vec::new(),
        certified_data: Vec::new(),
        random_seed: [0; 32],
    };
    let start = Instant::now();
    let outcome = execute(code, state, &method, &params, ctx, limits);
    let elapsed = start.elapsed();
    if let Err(reject) = &outcome.result {
        panic!("{text}: {reject}");
    }
    (elapsed, outcome)
}

fn median(times: &mut [Duration]) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e3
}

/// `add` and `get` on a `kv` canister with 1,000 keys, per tracker.
fn small_messages(iterations: usize) {
    let cache = CodeCache::new(cellar_engine::new_engine().unwrap(), None, 64 << 20).unwrap();
    let code = cache
        .load(cellar_examples::get("kv").unwrap().wasm)
        .unwrap();
    let mut state = ExecutionState::default();
    for i in 0..1_000u64 {
        let text = format!("add(\"key-{i}\", {i})");
        let (_, outcome) = message(
            &code,
            &state,
            &Limits::default(),
            &text,
            MessageKind::Update,
            i,
        );
        state.apply(outcome.changes.unwrap());
    }
    println!(
        "kv, 1,000 keys ({} KiB heap): median ms of {} messages",
        state.heap.total_bytes() >> 10,
        iterations * 30
    );
    for tracker in TRACKERS {
        if tracker.check_available().is_err() {
            continue;
        }
        let limits = Limits {
            memory_tracker: tracker,
            ..Limits::default()
        };
        let (mut adds, mut gets) = (Vec::new(), Vec::new());
        for i in 0..iterations as u64 * 30 {
            let text = format!("add(\"key-{}\", 1)", i % 1000);
            adds.push(message(&code, &state, &limits, &text, MessageKind::Update, 2000 + i).0);
            let text = format!("get(\"key-{}\")", i % 1000);
            gets.push(message(&code, &state, &limits, &text, MessageKind::Query, 2000 + i).0);
        }
        println!(
            "{:<12} add {:>8.3}  get {:>8.3}",
            tracker.name(),
            median(&mut adds),
            median(&mut gets)
        );
    }
}

const TRACKERS: [MemoryTracker; 3] = [
    MemoryTracker::Signal,
    MemoryTracker::Userfaultfd,
    MemoryTracker::CopyAll,
];

fn main() {
    // `cargo bench` passes `--bench`; ignore every argument.
    let heap_mib = env("CELLAR_BENCH_HEAP_MIB", 1023);
    let iterations = env("CELLAR_BENCH_ITERATIONS", 7);
    let cache = CodeCache::new(cellar_engine::new_engine().unwrap(), None, 64 << 20).unwrap();
    let code = cache.load(cellar_examples::testbed()).unwrap();
    let run = |state: &ExecutionState, limits: &Limits, text: &str, kind, round| {
        message(&code, state, limits, text, kind, round)
    };

    small_messages(iterations);

    let mut state = ExecutionState::default();
    let build = Limits::default();
    let start = Instant::now();
    let (_, grown) = run(
        &state,
        &build,
        &format!("grow-heap({heap_mib})"),
        MessageKind::Update,
        1,
    );
    state.apply(grown.changes.unwrap());
    println!(
        "heap: {} MiB ({} resident), built in {:.1} s with {}",
        state.heap.total_bytes() >> 20,
        state.heap.resident_bytes() >> 20,
        start.elapsed().as_secs_f64(),
        build.memory_tracker.name()
    );
    println!(
        "{:<12} {:>6} {:>12} {:>9} {:>7} {:>12} {:>9}",
        "tracker", "k", "write ms", "faults", "dirty", "read ms", "faults"
    );
    let mut round = 10;
    for tracker in TRACKERS {
        if let Err(e) = tracker.check_available() {
            println!("{:<12} unavailable: {e}", tracker.name());
            continue;
        }
        let limits = Limits {
            memory_tracker: tracker,
            ..Limits::default()
        };
        let runs = if tracker == MemoryTracker::CopyAll {
            iterations.min(3)
        } else {
            iterations
        };
        for k in [0u32, 1, 100, 10_000] {
            let mut writes = Vec::new();
            let mut reads = Vec::new();
            let (mut write_stats, mut read_stats) = Default::default();
            for i in 0..runs as u64 {
                round += 1;
                let (t, outcome) = run(
                    &state,
                    &limits,
                    &format!("write-pages({k}, {})", 1000 + i),
                    MessageKind::Update,
                    round,
                );
                writes.push(t);
                write_stats = outcome.tracking;
                drop(outcome);
                let (t, outcome) = run(
                    &state,
                    &limits,
                    &format!("read-pages({k}, {})", 2000 + i),
                    MessageKind::Query,
                    round,
                );
                reads.push(t);
                read_stats = outcome.tracking;
            }
            let write_stats: cellar_engine::TrackingStats = write_stats;
            let read_stats: cellar_engine::TrackingStats = read_stats;
            println!(
                "{:<12} {:>6} {:>12.3} {:>9} {:>7} {:>12.3} {:>9}",
                tracker.name(),
                k,
                median(&mut writes),
                write_stats.faults,
                write_stats.dirty_pages,
                median(&mut reads),
                read_stats.faults,
            );
        }
    }
}

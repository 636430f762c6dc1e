//! In-process calls on the `kv` example: updates and queries through
//! [`execute`] (a fresh instance per message, the heap mapped in and, for
//! updates, copied out) against a warm instance kept alive across calls.
//!
//! Run with `cargo bench -p cellar-engine --bench calls`.

use std::hint::black_box;

use cellar_engine::{
    CallArgs, CodeCache, ExecutionState, Limits, MessageContext, MessageKind, WarmInstance,
    decode_args, execute, parse_call_text,
};
use cellar_types::Principal;
use criterion::{Criterion, criterion_group, criterion_main};

fn context(kind: MessageKind, round: u64) -> MessageContext {
    MessageContext {
        canister_id: Principal::canister(1),
        caller: Principal::anonymous(),
        method: String::new(),
        kind,
        cycles_attached: 0,
        cycle_balance: 0,
        time_nanos: round,
        round,
        controllers: Vec::new(),
        certified_data: Vec::new(),
        random_seed: [0; 32],
        context_id: 0,
        open_contexts: Vec::new(),
    }
}

fn calls(c: &mut Criterion) {
    let limits = Limits::default();
    let cache = CodeCache::new(cellar_engine::new_engine().unwrap(), None, 64 << 20).unwrap();
    let code = cache
        .load(cellar_examples::get("kv").unwrap().wasm)
        .unwrap();
    let resolve = |text: &str| {
        let call = parse_call_text(text).unwrap();
        let method = code.interface.resolve(&call.method).unwrap().clone();
        let params = decode_args(&CallArgs::Wave(call.args), &method).unwrap();
        (method, params)
    };
    let (add, add_params) = resolve("add(\"apple\", 5)");
    let (get, get_params) = resolve("get(\"apple\")");

    // A populated store: 1,000 keys.
    let mut state = ExecutionState::default();
    for i in 0..1_000u64 {
        let (m, p) = resolve(&format!("add(\"key-{i}\", {i})"));
        let outcome = execute(
            &code,
            &state,
            &m,
            &p,
            context(MessageKind::Update, i),
            &limits,
        );
        state.apply(outcome.changes.unwrap());
    }

    let mut group = c.benchmark_group("kv");
    let mut round = 1_000;
    group.bench_function("update/fresh-instance", |b| {
        b.iter(|| {
            round += 1;
            let outcome = execute(
                &code,
                &state,
                &add,
                &add_params,
                context(MessageKind::Update, round),
                &limits,
            );
            black_box(outcome.changes.unwrap());
        })
    });
    group.bench_function("query/fresh-instance", |b| {
        b.iter(|| {
            let outcome = execute(
                &code,
                &state,
                &get,
                &get_params,
                context(MessageKind::Query, 1),
                &limits,
            );
            black_box(outcome.result.unwrap());
        })
    });
    let mut warm = WarmInstance::new(&code, context(MessageKind::Update, 0), &limits).unwrap();
    for i in 0..1_000u64 {
        let (m, p) = resolve(&format!("add(\"key-{i}\", {i})"));
        warm.call(&m, &p).unwrap();
    }
    group.bench_function("update/warm-instance", |b| {
        b.iter(|| black_box(warm.call(&add, &add_params).unwrap()))
    });
    group.bench_function("query/warm-instance", |b| {
        b.iter(|| black_box(warm.call(&get, &get_params).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, calls);
criterion_main!(benches);

//! Consensus policies as components: the shipped ICC and round-robin
//! components answer bit for bit as the Rust `IccPolicy` and
//! `RoundRobinPolicy`; a policy that traps, loops, exhausts memory or
//! answers nonsense makes `PolicyHost` fall back to the ICC default with a
//! reason, and never panics; binaries that are not consensus policies are
//! rejected with clear errors; a simulated 4-node subnet running the Wasm
//! ICC policy agrees, progresses, and delivers exactly the blocks of the
//! same subnet running the Rust policy.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use cellar_consensus::policy::{
    ConsensusPolicy, IccPolicy, PayloadLimits, PolicyError, PolicyHost, RoundRobinPolicy,
};
use cellar_consensus::sim::{PolicyFactory, PolicyKind, SimConfig, Simulation};
use cellar_consensus::{Hash32, Height};
use cellar_engine::{ConsensusPolicyLoadError, WasmConsensusPolicy};
use cellar_examples::{
    ICC_CONSENSUS_POLICY, MISBEHAVING_CONSENSUS_POLICY, ROUND_ROBIN_CONSENSUS_POLICY,
    ROUND_ROBIN_POLICY,
};

fn engine() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| cellar_engine::new_engine().unwrap())
}

fn load(wasm: &[u8]) -> WasmConsensusPolicy {
    WasmConsensusPolicy::from_component(engine(), wasm).unwrap()
}

/// A deterministic pseudo-random generator (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn beacon(&mut self) -> Hash32 {
        let mut b = [0u8; 32];
        for chunk in b.chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        Hash32(b)
    }
}

const SIZES: [u32; 11] = [0, 1, 2, 3, 4, 5, 7, 13, 28, 40, 100];

/// Compares every answer of `wasm` with `rust` over many heights, beacons,
/// subnet sizes and ranks.
fn assert_same_answers(wasm: &WasmConsensusPolicy, rust: &dyn ConsensusPolicy, seed: u64) {
    assert_eq!(wasm.name(), rust.name());
    let mut rng = Rng(seed);
    let mut heights: Vec<Height> = (0..40).collect();
    heights.extend([u64::MAX, u64::MAX - 1, 1 << 32, 1 << 63]);
    heights.extend((0..40).map(|_| rng.next()));
    for &height in &heights {
        let beacon = rng.beacon();
        for n in SIZES {
            assert_eq!(
                wasm.ranking(height, &beacon, n),
                rust.ranking(height, &beacon, n),
                "height {height}, n {n}, beacon {beacon:?}"
            );
        }
    }
    // Special beacons.
    for beacon in [Hash32([0; 32]), Hash32([0xff; 32])] {
        assert_eq!(wasm.ranking(7, &beacon, 10), rust.ranking(7, &beacon, 10));
    }
    let ranks = (0..300).chain([1000, 65_535, u32::MAX - 1, u32::MAX]);
    for rank in ranks {
        assert_eq!(
            wasm.block_maker_delay_ms(rank),
            rust.block_maker_delay_ms(rank),
            "rank {rank}"
        );
        assert_eq!(
            wasm.notary_delay_ms(rank),
            rust.notary_delay_ms(rank),
            "rank {rank}"
        );
        // Memoized answers are the same.
        assert_eq!(
            wasm.block_maker_delay_ms(rank),
            rust.block_maker_delay_ms(rank)
        );
    }
    assert_eq!(wasm.payload_limits(), rust.payload_limits());
    assert_eq!(wasm.payload_limits(), PayloadLimits::default());
    assert_eq!(wasm.failures(), 0);
    assert_eq!(wasm.take_last_error(), None);
}

#[test]
fn icc_component_answers_as_icc_policy() {
    let wasm = load(ICC_CONSENSUS_POLICY);
    let rust = IccPolicy::default();
    assert_eq!(wasm.name(), "icc-random-beacon");
    assert_same_answers(&wasm, &rust, 1);
    // Without memoization, too.
    assert_same_answers(&wasm.clone().with_memoization(false), &rust, 2);
    // The ICC delays: 2δr and 2δr + ε with δ = 150, ε = 100.
    assert_eq!(wasm.block_maker_delay_ms(3), 900);
    assert_eq!(wasm.notary_delay_ms(3), 1000);
    assert_eq!(wasm.notary_delay_ms(0), 100);
}

#[test]
fn round_robin_component_answers_as_round_robin_policy() {
    let wasm = load(ROUND_ROBIN_CONSENSUS_POLICY);
    assert_eq!(wasm.name(), "round-robin");
    assert_same_answers(&wasm, &RoundRobinPolicy::default(), 3);
    assert_eq!(wasm.ranking(5, &Hash32::default(), 4), vec![1, 2, 3, 0]);
}

#[test]
fn shipped_components_pass_the_host_checks() {
    for wasm in [ICC_CONSENSUS_POLICY, ROUND_ROBIN_CONSENSUS_POLICY] {
        let policy = load(wasm);
        let host = PolicyHost::new(Box::new(policy.clone()), IccPolicy::default());
        let mut rng = Rng(9);
        for h in 0..50 {
            let (ranks, err) = host.ranks(h, &rng.beacon(), 13);
            assert_eq!(err, None);
            assert_eq!(ranks.len(), 13);
        }
        for rank in 0..13 {
            assert_eq!(host.block_maker_delay_ms(rank).1, None);
            assert_eq!(host.notary_delay_ms(rank).1, None);
        }
        assert_eq!(host.payload_limits(), (PayloadLimits::default(), None));
        assert_eq!(policy.failures(), 0);
    }
}

#[test]
fn misbehaving_policy_falls_back_with_a_reason() {
    let policy = load(MISBEHAVING_CONSENSUS_POLICY);
    assert_eq!(policy.name(), "misbehaving");
    let host = PolicyHost::new(Box::new(policy.clone()), IccPolicy::default());
    let icc = PolicyHost::new(Box::new(IccPolicy::default()), IccPolicy::default());
    let mut rng = Rng(4);
    let n = 7;
    for height in 0..32u64 {
        let beacon = rng.beacon();
        let (ranks, err) = host.ranks(height, &beacon, n);
        // Whatever happened, the ranks are the ICC default's.
        assert_eq!(ranks, icc.ranks(height, &beacon, n).0, "height {height}");
        let failure = policy.take_last_error();
        match height % 8 {
            0 => {
                assert_eq!(err, None);
                assert_eq!(failure, None);
            }
            case => {
                assert_eq!(err, Some(PolicyError::NotAPermutation { height, n }));
                let reason = failure.as_ref().map(|f| f.reason.as_str());
                match case {
                    1 => assert!(reason.unwrap().contains("trapped"), "{failure:?}"),
                    2 => assert!(reason.unwrap().contains("instructions"), "{failure:?}"),
                    6 => assert!(
                        reason.unwrap().contains("refused to grow its memory"),
                        "{failure:?}"
                    ),
                    // Answered, but not a permutation: PolicyHost refuses it.
                    _ => assert_eq!(failure, None, "height {height}"),
                }
                if let Some(f) = failure {
                    assert_eq!(f.function, "ranking");
                    assert!(f.to_string().contains("consensus policy `ranking` failed"));
                }
            }
        }
    }

    let default = IccPolicy::default();
    for rank in 0..12u32 {
        for notary in [false, true] {
            let (ms, err) = if notary {
                host.notary_delay_ms(rank)
            } else {
                host.block_maker_delay_ms(rank)
            };
            let expected = if notary {
                default.notary_delay_ms(rank)
            } else {
                default.block_maker_delay_ms(rank)
            };
            assert_eq!(ms, expected, "rank {rank}");
            let failure = policy.take_last_error();
            match rank % 4 {
                0 => assert_eq!((err, failure), (None, None)),
                1 => {
                    assert!(matches!(err, Some(PolicyError::DelayTooLong { .. })));
                    assert_eq!(failure, None);
                }
                case => {
                    assert!(matches!(err, Some(PolicyError::DelayTooLong { .. })));
                    let failure = failure.unwrap();
                    let function = if notary {
                        "notary-delay-ms"
                    } else {
                        "block-maker-delay-ms"
                    };
                    assert_eq!(failure.function, function);
                    let expect = if case == 2 { "trapped" } else { "instructions" };
                    assert!(failure.reason.contains(expect), "{failure}");
                }
            }
            // Asking again gives the memoized answer, no new failure.
            let again = if notary {
                host.notary_delay_ms(rank)
            } else {
                host.block_maker_delay_ms(rank)
            };
            assert_eq!(again.0, ms);
            assert_eq!(policy.take_last_error(), None);
        }
    }

    let (limits, err) = host.payload_limits();
    assert_eq!(limits, PayloadLimits::default());
    assert_eq!(
        err,
        Some(PolicyError::LimitsOutOfRange {
            max_messages: 1_000_000,
            max_bytes: u64::MAX
        })
    );
    // 3 ranking failures per 8 heights, 2 per 4 ranks for each delay.
    assert_eq!(policy.failures(), 12 + 6 + 6);
}

#[test]
fn instruction_counts_are_deterministic() {
    let counts = || {
        let policy = load(ICC_CONSENSUS_POLICY).with_memoization(false);
        let mut counts = Vec::new();
        for n in [1, 4, 13, 100] {
            policy.ranking(42, &Hash32([9; 32]), n);
            counts.push(policy.last_instructions());
        }
        policy.notary_delay_ms(3);
        counts.push(policy.last_instructions());
        policy.payload_limits();
        counts.push(policy.last_instructions());
        counts
    };
    let a = counts();
    assert_eq!(a, counts());
    // More nodes, more hashing.
    assert!(a[0] < a[1] && a[1] < a[2] && a[2] < a[3], "{a:?}");
    assert!(a.iter().all(|&c| c > 0));
    // A ranking of 100 nodes stays well within its limit.
    assert!(
        a[3] < load(ICC_CONSENSUS_POLICY).instruction_limit(100) / 5,
        "{a:?}"
    );
    println!("instructions: ranking n=1,4,13,100, notary delay, limits: {a:?}");
}

#[test]
fn instruction_limit_is_per_call_and_scales_with_n() {
    let policy = load(ICC_CONSENSUS_POLICY);
    assert_eq!(
        policy.instruction_limit(4),
        cellar_engine::DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS
            + 4 * cellar_engine::DEFAULT_CONSENSUS_POLICY_INSTRUCTIONS_PER_NODE
    );
    // Too few instructions for a ranking of 100 nodes: the call fails with
    // a reason and PolicyHost falls back, the same way every time.
    let tight = policy.clone().with_instruction_limit(50_000, 0);
    let host = PolicyHost::new(Box::new(tight.clone()), IccPolicy::default());
    let beacon = Hash32([5; 32]);
    for _ in 0..3 {
        let (ranks, err) = host.ranks(10, &beacon, 100);
        assert_eq!(
            err,
            Some(PolicyError::NotAPermutation { height: 10, n: 100 })
        );
        assert_eq!(
            ranks,
            PolicyHost::new(Box::new(IccPolicy::default()), IccPolicy::default())
                .ranks(10, &beacon, 100)
                .0
        );
        let failure = tight.take_last_error().unwrap();
        assert!(
            failure.reason.contains("limit of 50000 instructions"),
            "{failure}"
        );
    }
    // The original keeps its own (default) limit and record.
    assert_eq!(policy.failures(), 0);
    assert_eq!(policy.ranking(10, &beacon, 100).len(), 100);
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[test]
fn binaries_that_are_not_consensus_policies_are_rejected_clearly() {
    let err = |wasm: &[u8]| WasmConsensusPolicy::from_component(engine(), wasm).unwrap_err();

    assert_eq!(err(b"hello"), ConsensusPolicyLoadError::NotWasm);
    assert_eq!(err(b""), ConsensusPolicyLoadError::NotWasm);
    assert_eq!(err(&wat("(module)")), ConsensusPolicyLoadError::CoreModule);
    assert!(
        err(&wat("(module)"))
            .to_string()
            .contains("not a component")
    );
    assert!(matches!(
        err(b"\0asm\x0d\0\x01\0garbage"),
        ConsensusPolicyLoadError::Invalid(_)
    ));
    let huge = vec![0u8; cellar_engine::MAX_CONSENSUS_POLICY_BYTES + 1];
    assert!(matches!(
        err(&huge),
        ConsensusPolicyLoadError::TooLarge { .. }
    ));

    // A canister: imports the system API and WASI.
    let kv = cellar_examples::get("kv").unwrap().wasm;
    match err(kv) {
        ConsensusPolicyLoadError::Imports(names) => {
            assert!(names.iter().any(|n| n.starts_with("wasi:")), "{names:?}")
        }
        other => panic!("{other}"),
    }
    assert!(err(kv).to_string().contains("must import nothing"));

    // A scheduler policy: the wrong world.
    match err(ROUND_ROBIN_POLICY) {
        ConsensusPolicyLoadError::MissingExports { missing, exports } => {
            assert_eq!(missing, cellar_engine::CONSENSUS_POLICY_EXPORTS.to_vec());
            assert_eq!(exports, vec!["schedule".to_string()]);
        }
        other => panic!("{other}"),
    }
    let text = err(ROUND_ROBIN_POLICY).to_string();
    assert!(
        text.contains("does not export name, ranking,") && text.contains("its exports: schedule"),
        "{text}"
    );
    assert!(
        err(&wat("(component)"))
            .to_string()
            .contains("its exports: none")
    );

    // All five names, every one `func() -> u32`: `name` is mistyped first;
    // with a right `name`, `ranking` is.
    let component = |name_fn: &str| {
        wat(&format!(
            r#"(component
                (core module $m
                    (memory (export "memory") 1)
                    (data (i32.const 16) "\08\00\00\00\00\00\00\00")
                    (func (export "f") (result i32) i32.const 7)
                    (func (export "s") (result i32) i32.const 16)
                    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 64))
                (core instance $i (instantiate $m))
                (func $f (result u32) (canon lift (core func $i "f")))
                (func $s (result string)
                    (canon lift (core func $i "s") (memory (core memory $i "memory"))
                        (realloc (core func $i "realloc"))))
                (export "name" (func {name_fn}))
                (export "ranking" (func $f))
                (export "block-maker-delay-ms" (func $f))
                (export "notary-delay-ms" (func $f))
                (export "payload-limits" (func $f)))"#
        ))
    };
    match err(&component("$f")) {
        ConsensusPolicyLoadError::WrongSignature {
            export, expected, ..
        } => {
            assert_eq!(export, "name");
            assert_eq!(expected, "func() -> string");
        }
        other => panic!("{other}"),
    }
    let wrong = err(&component("$s"));
    assert!(
        matches!(&wrong, ConsensusPolicyLoadError::WrongSignature { export, .. } if export == "ranking"),
        "{wrong}"
    );
    assert!(
        wrong
            .to_string()
            .contains("func(height: u64, beacon: list<u8>, n: u32) -> list<u32>")
    );

    let importing = wat(r#"(component
        (import "clock" (func $now (result u64)))
        (core func $now_lowered (canon lower (func $now)))
        (core module $m (import "" "now" (func (result i64))))
        (core instance $i (instantiate $m (with "" (instance (export "now" (func $now_lowered)))))))"#);
    assert_eq!(
        err(&importing),
        ConsensusPolicyLoadError::Imports(vec!["clock".into()])
    );
}

fn wasm_factory(wasm: &'static [u8]) -> PolicyFactory {
    let policy = load(wasm);
    PolicyFactory(Arc::new(move |_node| Box::new(policy.clone())))
}

fn delivered_blocks(s: &Simulation) -> Vec<Vec<Hash32>> {
    s.nodes
        .iter()
        .map(|n| n.delivered.iter().map(|b| b.block).collect())
        .collect()
}

#[test]
fn simulated_subnet_runs_on_the_wasm_icc_policy() {
    let run = |factory: Option<PolicyFactory>, kind: PolicyKind| {
        let mut s = Simulation::new(SimConfig {
            policy: kind,
            policy_factory: factory,
            ..SimConfig::default()
        })
        .unwrap();
        assert!(
            s.run_until_height(25, 60_000),
            "stuck at {}",
            s.min_honest_height()
        );
        s.run_until(s.now() + 500);
        let top = s.check_agreement().unwrap();
        assert!(top >= 25);
        for n in &s.nodes {
            assert_eq!(n.node.stats().policy_errors, 0);
        }
        s
    };
    let wasm = run(Some(wasm_factory(ICC_CONSENSUS_POLICY)), PolicyKind::Icc);
    let rust = run(None, PolicyKind::Icc);
    // Same seed, same answers: the very same run.
    assert_eq!(delivered_blocks(&wasm), delivered_blocks(&rust));
    assert_eq!(wasm.now(), rust.now());

    let rr = run(
        Some(wasm_factory(ROUND_ROBIN_CONSENSUS_POLICY)),
        PolicyKind::Icc,
    );
    for b in &rr.nodes[0].delivered {
        assert_eq!(u64::from(b.proposer), b.height % 4);
    }
    assert_eq!(
        delivered_blocks(&rr),
        delivered_blocks(&run(None, PolicyKind::RoundRobin))
    );
}

#[test]
fn simulated_subnet_survives_the_misbehaving_policy() {
    let mut s = Simulation::new(SimConfig {
        policy_factory: Some(wasm_factory(MISBEHAVING_CONSENSUS_POLICY)),
        ..SimConfig::default()
    })
    .unwrap();
    assert!(
        s.run_until_height(20, 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    assert!(s.check_agreement().unwrap() >= 20);
    for n in &s.nodes {
        assert!(n.node.stats().policy_errors > 0);
    }
}

fn per_call_us(iterations: u32, mut f: impl FnMut(u32)) -> f64 {
    f(0);
    let start = Instant::now();
    for i in 0..iterations {
        f(i);
    }
    start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations)
}

/// µs per call of each function, component (fresh instance per call, and
/// memoized where the host memoizes) vs the Rust policy:
/// `cargo test -p cellar-engine --test consensus_policy -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run explicitly"]
fn measure_call_cost() {
    let beacon = Hash32([7; 32]);
    let fresh = load(ICC_CONSENSUS_POLICY).with_memoization(false);
    let memo = load(ICC_CONSENSUS_POLICY);
    let rust = IccPolicy::default();
    let it = 2000;
    for n in [4u32, 13, 40, 100] {
        let w = per_call_us(it, |i| {
            std::hint::black_box(fresh.ranking(u64::from(i), &beacon, n));
        });
        let r = per_call_us(it, |i| {
            std::hint::black_box(rust.ranking(u64::from(i), &beacon, n));
        });
        println!("ranking n={n:<4} component {w:8.2} µs   rust {r:8.3} µs");
    }
    let rr = load(ROUND_ROBIN_CONSENSUS_POLICY).with_memoization(false);
    let w = per_call_us(it, |i| {
        std::hint::black_box(rr.ranking(u64::from(i), &beacon, 13));
    });
    let r = per_call_us(it, |i| {
        std::hint::black_box(RoundRobinPolicy::default().ranking(u64::from(i), &beacon, 13));
    });
    println!("round-robin ranking n=13 component {w:8.2} µs   rust {r:8.3} µs");
    let w = per_call_us(it, |i| {
        std::hint::black_box(fresh.block_maker_delay_ms(i % 13));
    });
    let m = per_call_us(it, |i| {
        std::hint::black_box(memo.block_maker_delay_ms(i % 13));
    });
    let r = per_call_us(it, |i| {
        std::hint::black_box(rust.block_maker_delay_ms(i % 13));
    });
    println!("block-maker-delay-ms component {w:8.2} µs   memoized {m:6.3} µs   rust {r:6.3} µs");
    let w = per_call_us(it, |i| {
        std::hint::black_box(fresh.notary_delay_ms(i % 13));
    });
    let m = per_call_us(it, |i| {
        std::hint::black_box(memo.notary_delay_ms(i % 13));
    });
    let r = per_call_us(it, |i| {
        std::hint::black_box(rust.notary_delay_ms(i % 13));
    });
    println!("notary-delay-ms      component {w:8.2} µs   memoized {m:6.3} µs   rust {r:6.3} µs");
    let w = per_call_us(it, |_| {
        std::hint::black_box(fresh.payload_limits());
    });
    let m = per_call_us(it, |_| {
        std::hint::black_box(memo.payload_limits());
    });
    let r = per_call_us(it, |_| {
        std::hint::black_box(rust.payload_limits());
    });
    println!("payload-limits       component {w:8.2} µs   memoized {m:6.3} µs   rust {r:6.3} µs");
    // The alternative to a fresh instance per call: one live instance (per
    // height, say), called again and again.
    let component = wasmtime::component::Component::new(engine(), ICC_CONSENSUS_POLICY).unwrap();
    let linker = wasmtime::component::Linker::<()>::new(engine());
    let mut store = wasmtime::Store::new(engine(), ());
    store.set_fuel(u64::MAX).unwrap();
    let instance = linker.instantiate(&mut store, &component).unwrap();
    let delay = instance
        .get_typed_func::<(u32,), (u64,)>(&mut store, "block-maker-delay-ms")
        .unwrap();
    let ranking = instance
        .get_typed_func::<(u64, &[u8], u32), (Vec<u32>,)>(&mut store, "ranking")
        .unwrap();
    let w = per_call_us(it, |i| {
        std::hint::black_box(delay.call(&mut store, (i % 13,)).unwrap());
    });
    // The bump allocator never frees: keep the instance's memory small.
    let r = per_call_us(200, |i| {
        std::hint::black_box(
            ranking
                .call(&mut store, (u64::from(i), &beacon.0[..], 13))
                .unwrap(),
        );
    });
    println!("live instance: block-maker-delay-ms {w:6.3} µs   ranking n=13 {r:8.2} µs");
    // The same on an engine with fuel but wasmtime's own memories (no
    // host-owned memory reservations): what the engine's memory creator costs.
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true);
    let plain = wasmtime::Engine::new(&config).unwrap();
    let light = WasmConsensusPolicy::from_component(&plain, ICC_CONSENSUS_POLICY)
        .unwrap()
        .with_memoization(false);
    let w = per_call_us(it, |i| {
        std::hint::black_box(light.block_maker_delay_ms(i % 13));
    });
    let r = per_call_us(it, |i| {
        std::hint::black_box(light.ranking(u64::from(i), &beacon, 13));
    });
    println!(
        "plain engine, fresh instance: block-maker-delay-ms {w:6.2} µs   ranking n=13 {r:8.2} µs"
    );
    let start = Instant::now();
    let loaded = load(ICC_CONSENSUS_POLICY);
    println!(
        "from_component (cached code, checks + name): {:.1} µs",
        start.elapsed().as_secs_f64() * 1e6
    );
    std::hint::black_box(loaded);
}

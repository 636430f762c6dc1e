//! Scheduler policies as components: the shipped policies give valid,
//! deterministic plans of the expected shape; fairness under a flood; a
//! policy that traps, loops, exhausts memory or returns an invalid plan makes
//! the built-in default run with a reason; binaries that are not policies are
//! rejected with clear errors.

use cellar_engine::{
    Allowance, CanisterSummary, PolicyError, RoundInput, RoundPlan, SchedulerPolicy,
    builtin_default, builtin_round_robin, plan_round, validate,
};
use cellar_examples::{ACCUMULATED_PRIORITY_POLICY, MISBEHAVING_POLICY, ROUND_ROBIN_POLICY};
use std::sync::OnceLock;

fn engine() -> &'static wasmtime::Engine {
    static ENGINE: OnceLock<wasmtime::Engine> = OnceLock::new();
    ENGINE.get_or_init(|| cellar_engine::new_engine().unwrap())
}

fn load(wasm: &[u8]) -> SchedulerPolicy {
    SchedulerPolicy::from_component(engine(), wasm).unwrap()
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
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `n` canisters, some idle, some paused, a few with allocations summing to
/// at most 100, random priorities.
fn random_input(rng: &mut Rng, n: usize) -> RoundInput {
    let mut allocated = 0u64;
    let canisters = (0..n as u32)
        .map(|index| {
            let mut allocation = 0;
            if rng.below(8) == 0 {
                let a = rng.below(30);
                if allocated + a <= 100 {
                    allocated += a;
                    allocation = a as u8;
                }
            }
            CanisterSummary {
                index,
                input_queue_length: if rng.below(3) == 0 {
                    0
                } else {
                    rng.below(50) as u32
                },
                compute_allocation: allocation,
                accumulated_priority: rng.below(2_000_000) as i64 - 1_000_000,
                paused: rng.below(10) == 0,
                rounds_since_executed: rng.below(100),
            }
        })
        .collect();
    RoundInput {
        round: rng.next() >> 20,
        instruction_budget: [0, 1, 5_000_000, 1_000_000_000, 7_000_000_000, u64::MAX]
            [rng.below(6) as usize],
        canisters,
    }
}

/// Applies a plan to the summaries: executed canisters lose one message (and
/// their paused execution), the others wait one more round.
fn apply(input: &mut RoundInput, plan: &RoundPlan) {
    let mut executed = vec![false; input.canisters.len()];
    for a in &plan.schedule {
        executed[a.index as usize] = true;
    }
    for (c, (&p, ran)) in input
        .canisters
        .iter_mut()
        .zip(plan.priorities.iter().zip(executed))
    {
        c.accumulated_priority = p;
        if ran {
            c.rounds_since_executed = 0;
            c.input_queue_length = c.input_queue_length.saturating_sub(1);
            c.paused = false;
        } else {
            c.rounds_since_executed += 1;
        }
    }
    input.round += 1;
}

#[test]
fn shipped_policies_give_valid_plans_equal_to_their_rust_twins() {
    let rr = load(ROUND_ROBIN_POLICY);
    let ap = load(ACCUMULATED_PRIORITY_POLICY);
    let mut rng = Rng(42);
    for case in 0..60 {
        let n = [0, 1, 2, 10, 100, 1000][case % 6];
        let input = random_input(&mut rng, n);
        for (policy, twin) in [
            (&rr, builtin_round_robin as fn(&RoundInput) -> RoundPlan),
            (&ap, builtin_default),
        ] {
            let outcome = policy.schedule(&input);
            assert_eq!(outcome.fallback, None, "case {case}");
            validate(&input, &outcome.plan).unwrap();
            assert_eq!(outcome.plan, twin(&input), "case {case}");
            assert!(outcome.instructions > 0);
        }
        let ap_plan = builtin_default(&input);
        assert_eq!(ap_plan.priorities.iter().sum::<i64>(), 0, "case {case}");
    }
}

#[test]
fn plans_and_instruction_counts_are_deterministic() {
    let mut rng = Rng(7);
    let input = random_input(&mut rng, 500);
    for wasm in [ROUND_ROBIN_POLICY, ACCUMULATED_PRIORITY_POLICY] {
        let a = load(wasm).schedule(&input);
        // A second policy object (cached compiled code) and a second call.
        let policy = load(wasm);
        let b = policy.schedule(&input);
        let c = policy.schedule(&input);
        assert_eq!(a, b);
        assert_eq!(b, c);
        let bytes = serde_json::to_vec(&a).unwrap();
        assert_eq!(bytes, serde_json::to_vec(&c).unwrap());
        // Another engine (another "replica") counts the same instructions.
        let other = cellar_engine::new_engine().unwrap();
        let d = SchedulerPolicy::from_component(&other, wasm)
            .unwrap()
            .schedule(&input);
        assert_eq!(a, d);
    }
}

#[test]
fn policies_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync + Clone + 'static>() {}
    shareable::<SchedulerPolicy>();
    let policy = load(ACCUMULATED_PRIORITY_POLICY);
    let input = random_input(&mut Rng(3), 50);
    let expected = policy.schedule(&input);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| assert_eq!(policy.schedule(&input), expected));
        }
    });
}

/// Both shipped policies leave idle canisters at priority 0 and never give
/// them instructions, so a host may pass only the canisters with work or a
/// non-zero priority: the plan is the same, up to renumbering. This keeps the
/// policy's cost proportional to the busy canisters, not to all of them.
#[test]
fn leaving_out_idle_canisters_at_zero_changes_nothing() {
    let mut rng = Rng(11);
    for wasm in [ROUND_ROBIN_POLICY, ACCUMULATED_PRIORITY_POLICY] {
        let policy = load(wasm);
        for _ in 0..10 {
            let mut full = random_input(&mut rng, 300);
            full.instruction_budget = 1_000_000_000;
            for c in &mut full.canisters {
                if !c.has_work() && rng.below(2) == 0 {
                    c.accumulated_priority = 0;
                }
            }
            let kept: Vec<usize> = (0..full.canisters.len())
                .filter(|&i| {
                    let c = &full.canisters[i];
                    c.has_work() || c.accumulated_priority != 0
                })
                .collect();
            let subset = RoundInput {
                canisters: kept
                    .iter()
                    .enumerate()
                    .map(|(j, &i)| CanisterSummary {
                        index: j as u32,
                        ..full.canisters[i]
                    })
                    .collect(),
                ..full.clone()
            };
            let (a, b) = (policy.schedule(&full).plan, policy.schedule(&subset).plan);
            let renumbered: Vec<Allowance> = b
                .schedule
                .iter()
                .map(|x| Allowance {
                    index: kept[x.index as usize] as u32,
                    ..*x
                })
                .collect();
            assert_eq!(a.schedule, renumbered);
            for (j, &i) in kept.iter().enumerate() {
                assert_eq!(a.priorities[i], b.priorities[j]);
            }
            for (i, &p) in a.priorities.iter().enumerate() {
                if !kept.contains(&i) {
                    assert_eq!(p, 0);
                }
            }
        }
    }
}

fn busy(index: u32, allocation: u8) -> CanisterSummary {
    CanisterSummary {
        index,
        input_queue_length: 3,
        compute_allocation: allocation,
        ..Default::default()
    }
}

#[test]
fn round_robin_rotates_with_equal_allowances() {
    let rr = load(ROUND_ROBIN_POLICY);
    // 30 M instructions: three slots of 10 M.
    let mut input = RoundInput {
        round: 0,
        instruction_budget: 30_000_000,
        canisters: (0..10).map(|i| busy(i, 0)).collect(),
    };
    input.canisters[5].input_queue_length = 0; // idle: skipped
    let active: Vec<u32> = vec![0, 1, 2, 3, 4, 6, 7, 8, 9];
    let mut seen = vec![0; 10];
    for round in 0..6u64 {
        input.round = round;
        let plan = rr.schedule(&input).plan;
        let start = (round as usize * 3) % active.len();
        let expected: Vec<Allowance> = (0..3)
            .map(|j| Allowance {
                index: active[(start + j) % active.len()],
                instructions: 10_000_000,
            })
            .collect();
        assert_eq!(plan.schedule, expected, "round {round}");
        for a in &plan.schedule {
            seen[a.index as usize] += 1;
        }
        assert_eq!(plan.priorities, vec![0; 10], "round robin keeps priorities");
    }
    // Six rounds of three slots over nine canisters: each ran twice.
    assert_eq!(seen, vec![2, 2, 2, 2, 2, 0, 2, 2, 2, 2]);
}

#[test]
fn allocated_canisters_get_their_share_under_both_policies() {
    let rr = load(ROUND_ROBIN_POLICY);
    let ap = load(ACCUMULATED_PRIORITY_POLICY);
    let budget = 7_000_000_000;
    let mut canisters: Vec<CanisterSummary> = (0..2000).map(|i| busy(i, 0)).collect();
    canisters[1234].compute_allocation = 50;
    canisters[77].compute_allocation = 10;
    for policy in [&rr, &ap] {
        let mut input = RoundInput {
            round: 0,
            instruction_budget: budget,
            canisters: canisters.clone(),
        };
        for _ in 0..20 {
            let outcome = policy.schedule(&input);
            assert_eq!(outcome.fallback, None);
            let get = |i: u32| {
                outcome
                    .plan
                    .schedule
                    .iter()
                    .find(|a| a.index == i)
                    .map(|a| a.instructions)
            };
            assert!(get(1234).unwrap() >= budget / 2);
            assert!(get(77).unwrap() >= budget / 10);
            let mut next = input.clone();
            apply(&mut next, &outcome.plan);
            // Keep the flood going.
            for c in &mut next.canisters {
                c.input_queue_length = 3;
            }
            input = next;
        }
    }
}

#[test]
fn accumulated_priority_runs_highest_first_and_sums_to_zero() {
    let ap = load(ACCUMULATED_PRIORITY_POLICY);
    let mut input = RoundInput {
        round: 3,
        instruction_budget: 40_000_000,
        canisters: (0..8).map(|i| busy(i, 0)).collect(),
    };
    input.canisters[6].accumulated_priority = 5_000_000;
    input.canisters[2].accumulated_priority = 1_000_000;
    input.canisters[0].accumulated_priority = -6_000_000;
    let plan = ap.schedule(&input).plan;
    let order: Vec<u32> = plan.schedule.iter().map(|a| a.index).collect();
    assert_eq!(order[..2], [6, 2]);
    assert!(!order.contains(&0), "the most indebted canister waits");
    // Bigger allowances for higher priorities.
    assert!(plan.schedule[0].instructions > plan.schedule[3].instructions);
    assert_eq!(plan.priorities.iter().sum::<i64>(), 0);
    assert!(plan.priorities[6] < 5_000_000, "the executed pay back");
}

/// Simulates `rounds` rounds of `flood` canisters that always have work plus
/// one light canister (the last) that receives a message every `period`
/// rounds and has `allocation` percent; returns the light canister's worst
/// latency in rounds (0: it runs in the round its message arrives) and how
/// many of the policy's plans were rejected.
fn light_canister_latency(
    policy: &SchedulerPolicy,
    flood: u32,
    allocation: u8,
    rounds: u64,
    period: u64,
) -> (u64, usize) {
    let mut canisters: Vec<CanisterSummary> = (0..flood).map(|i| busy(i, 0)).collect();
    canisters.push(CanisterSummary {
        index: flood,
        compute_allocation: allocation,
        ..Default::default()
    });
    let mut input = RoundInput {
        round: 0,
        // 100 slots of 10 M per round.
        instruction_budget: 1_000_000_000,
        canisters,
    };
    let light = flood as usize;
    let (mut worst, mut waiting_since, mut fallbacks) = (0, None, 0);
    for round in 0..rounds {
        if round % period == 0 && waiting_since.is_none() {
            input.canisters[light].input_queue_length = 1;
            waiting_since = Some(round);
        }
        let outcome = policy.schedule(&input);
        fallbacks += usize::from(outcome.fallback.is_some());
        if let Some(since) = waiting_since
            && outcome
                .plan
                .schedule
                .iter()
                .any(|a| a.index as usize == light)
        {
            worst = worst.max(round - since);
            waiting_since = None;
        }
        apply(&mut input, &outcome.plan);
        for c in &mut input.canisters[..light] {
            c.input_queue_length = 3;
        }
    }
    if let Some(since) = waiting_since {
        worst = worst.max(rounds - since);
    }
    (worst, fallbacks)
}

#[test]
fn a_flood_does_not_delay_a_light_canister_beyond_a_bound() {
    let rr = load(ROUND_ROBIN_POLICY);
    let ap = load(ACCUMULATED_PRIORITY_POLICY);
    // 5,000 flooding canisters, 100 slots per round: a full turn is 50 rounds.
    let (rr_worst, rr_fallbacks) = light_canister_latency(&rr, 5000, 0, 400, 37);
    let (ap_worst, ap_fallbacks) = light_canister_latency(&ap, 5000, 0, 400, 37);
    eprintln!(
        "light canister, worst latency in rounds: round robin {rr_worst}, accumulated priority {ap_worst}"
    );
    assert_eq!((rr_fallbacks, ap_fallbacks), (0, 0));
    assert!(rr_worst <= 51, "round robin: {rr_worst}");
    assert!(ap_worst <= 51, "accumulated priority: {ap_worst}");
    // With a 1 % compute allocation it runs in the round its message arrives.
    assert_eq!(light_canister_latency(&ap, 5000, 1, 200, 13), (0, 0));
    assert_eq!(light_canister_latency(&rr, 5000, 1, 200, 13), (0, 0));
}

#[test]
fn a_misbehaving_policy_makes_the_default_run_with_the_reason() {
    let policy = load(MISBEHAVING_POLICY);
    let mut canisters: Vec<CanisterSummary> = (0..20).map(|i| busy(i, 0)).collect();
    canisters[3].compute_allocation = 40;
    let expected = [
        None,
        Some("the policy trapped"),
        Some("ran past its limit"),
        Some("invalid plan: canister"),
        Some("more than the budget"),
        Some(
            "invalid plan: canister 3 has a compute allocation of 40% and work but is not scheduled",
        ),
        Some("invalid plan: 19 priorities for 20 canisters"),
        Some("names canister 20, but there are only 20 canisters"),
        Some("is beyond ±"),
        Some("refused to grow its memory beyond 268435456 bytes"),
    ];
    for round in 0..20u64 {
        let input = RoundInput {
            round,
            instruction_budget: 7_000_000_000,
            canisters: canisters.clone(),
        };
        let outcome = policy.schedule(&input);
        eprintln!("round {round}: {:?}", outcome.fallback);
        let want = expected[(round % 10) as usize];
        match (want, &outcome.fallback) {
            (None, None) => {}
            (Some(want), Some(got)) => assert!(got.contains(want), "round {round}: {got}"),
            _ => panic!("round {round}: {:?}", outcome.fallback),
        }
        // Whatever happened, the plan is valid and, on fallback, the default's.
        validate(&input, &outcome.plan).unwrap();
        assert_eq!(outcome.plan, builtin_default(&input));
        if round % 10 == 2 {
            assert_eq!(outcome.instructions, policy.instruction_limit(20));
        }
    }
}

#[test]
fn without_a_policy_the_builtin_default_plans() {
    let input = random_input(&mut Rng(5), 40);
    let outcome = plan_round(None, &input);
    assert_eq!(outcome.plan, builtin_default(&input));
    assert_eq!((outcome.fallback, outcome.instructions), (None, 0));
    let ap = load(ACCUMULATED_PRIORITY_POLICY);
    assert_eq!(plan_round(Some(&ap), &input).plan, outcome.plan);
}

#[test]
fn a_policy_past_its_instruction_limit_falls_back() {
    let policy = load(ACCUMULATED_PRIORITY_POLICY).with_instruction_limit(5_000, 0);
    let input = RoundInput {
        round: 1,
        instruction_budget: 1_000_000_000,
        canisters: (0..100).map(|i| busy(i, 0)).collect(),
    };
    let outcome = policy.schedule(&input);
    assert_eq!(
        outcome.fallback.as_deref(),
        Some("the policy ran past its limit of 5000 instructions")
    );
    assert_eq!(outcome.instructions, 5_000);
    assert_eq!(outcome.plan, builtin_default(&input));
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

#[test]
fn binaries_that_are_not_policies_are_rejected_clearly() {
    let err = |wasm: &[u8]| SchedulerPolicy::from_component(engine(), wasm).unwrap_err();

    assert_eq!(err(b"hello"), PolicyError::NotWasm);
    assert_eq!(err(b"\0asm\x01\0\0\0"), PolicyError::CoreModule);
    assert!(matches!(
        err(b"\0asm\x0d\0\x01\0garbage"),
        PolicyError::Invalid(_)
    ));

    // A canister: imports the system API and WASI.
    let kv = cellar_examples::get("kv").unwrap().wasm;
    match err(kv) {
        PolicyError::Imports(names) => {
            assert!(names.iter().any(|n| n.starts_with("wasi:")), "{names:?}")
        }
        other => panic!("{other}"),
    }
    assert!(err(kv).to_string().contains("must import nothing"));

    let lifted = |export: &str| {
        wat(&format!(
            r#"(component
                (core module $m (func (export "f") (result i32) i32.const 7))
                (core instance $i (instantiate $m))
                (func $f (result u32) (canon lift (core func $i "f")))
                (export "{export}" (func $f)))"#
        ))
    };
    let missing = err(&lifted("plan"));
    assert_eq!(missing, PolicyError::MissingExport(vec!["plan".into()]));
    assert!(
        missing
            .to_string()
            .contains("does not export a function `schedule`")
    );

    let wrong = err(&lifted("schedule"));
    assert!(matches!(wrong, PolicyError::WrongSignature(_)), "{wrong}");
    assert!(
        wrong
            .to_string()
            .contains("func(input: round-input) -> round-plan")
    );

    let importing = wat(r#"(component
        (import "clock" (func $now (result u64)))
        (core func $now_lowered (canon lower (func $now)))
        (core module $m (import "" "now" (func (result i64))))
        (core instance $i (instantiate $m (with "" (instance (export "now" (func $now_lowered)))))))"#);
    assert_eq!(err(&importing), PolicyError::Imports(vec!["clock".into()]));

    // A component exporting nothing at all.
    assert_eq!(
        err(&wat("(component)")),
        PolicyError::MissingExport(Vec::new())
    );
}

/// The cost of one `schedule` call for each policy and the Rust default:
/// `cargo test -p cellar-engine --test policy -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; run explicitly"]
fn measure_schedule_cost() {
    let rr = load(ROUND_ROBIN_POLICY);
    let ap = load(ACCUMULATED_PRIORITY_POLICY);
    let mut rng = Rng(1);
    for n in [10usize, 1_000, 100_000] {
        let mut input = random_input(&mut rng, n);
        input.instruction_budget = 7_000_000_000;
        let iterations = (200_000 / n).clamp(5, 2_000);
        // Thread CPU time: the machine is shared, wall time counts waiting.
        let cpu_micros = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid out-pointer.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
        };
        let time = |f: &dyn Fn() -> u64| {
            let instructions = f();
            // The best of three batches.
            let best = (0..3)
                .map(|_| {
                    let start = cpu_micros();
                    for _ in 0..iterations {
                        std::hint::black_box(f());
                    }
                    (cpu_micros() - start) / iterations as f64
                })
                .fold(f64::INFINITY, f64::min);
            (best, instructions)
        };
        let rows: [(&str, (f64, u64)); 4] = [
            (
                "round-robin component",
                time(&|| {
                    let o = rr.schedule(&input);
                    assert!(o.fallback.is_none(), "{:?}", o.fallback);
                    o.instructions
                }),
            ),
            (
                "accumulated-priority component",
                time(&|| {
                    let o = ap.schedule(&input);
                    assert!(o.fallback.is_none(), "{:?}", o.fallback);
                    o.instructions
                }),
            ),
            (
                "built-in round robin (Rust)",
                time(&|| builtin_round_robin(&input).schedule.len() as u64),
            ),
            (
                "built-in default (Rust)",
                time(&|| builtin_default(&input).schedule.len() as u64),
            ),
        ];
        for (name, (us, instructions)) in rows {
            eprintln!(
                "{n:>7} canisters  {name:<32} {us:>10.1} µs CPU/call  ({instructions} instructions or scheduled)"
            );
        }
    }
}

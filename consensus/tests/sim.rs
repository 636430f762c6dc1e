//! Deterministic simulation tests of the ICC state machine: real crypto,
//! simulated time, seeded delays and faults.

use cellar_consensus::sim::{Behavior, PolicyKind, SimConfig, Simulation};

fn sim(cfg: SimConfig) -> Simulation {
    Simulation::new(cfg).expect("simulation")
}

fn ingress_count(s: &Simulation, node: usize) -> usize {
    s.nodes[node]
        .delivered
        .iter()
        .map(|b| b.payload.ingress.len())
        .sum()
}

#[test]
fn four_nodes_agree_and_deliver_ingress() {
    let mut s = sim(SimConfig::default());
    assert!(
        s.run_until_height(30, 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    let top = s.check_agreement().unwrap();
    assert!(top >= 30);
    // All nodes delivered the same sequence (same prefix up to the lowest).
    let len = s.nodes.iter().map(|n| n.delivered.len()).min().unwrap();
    for n in &s.nodes[1..] {
        assert_eq!(n.delivered[..len], s.nodes[0].delivered[..len]);
    }
    // Ingress flows into blocks; catch-up packages were made every 10 heights.
    assert!(
        ingress_count(&s, 0) > 10,
        "ingress {}",
        ingress_count(&s, 0)
    );
    for n in &s.nodes {
        assert!(n.catch_ups.len() >= 2);
        assert_eq!(n.node.stats().invalid, 0);
        assert_eq!(n.node.stats().policy_errors, 0);
    }
    let cup = s.nodes[0].node.catch_up_package().clone();
    assert!(cup.content.height >= 20);
    // The CUP state hash equals what the nodes computed at that height.
    assert!(s.nodes.iter().all(|n| n.node.catch_up_package() == &cup));
}

#[test]
fn same_seed_same_run() {
    let run = |seed| {
        let mut s = sim(SimConfig {
            seed,
            ..SimConfig::default()
        });
        s.run_until(2_000);
        s.nodes[0]
            .delivered
            .iter()
            .map(|b| b.block)
            .collect::<Vec<_>>()
    };
    let a = run(7);
    assert!(!a.is_empty());
    assert_eq!(a, run(7));
    assert_ne!(a, run(8));
}

#[test]
fn round_robin_policy() {
    let mut s = sim(SimConfig {
        policy: PolicyKind::RoundRobin,
        ..SimConfig::default()
    });
    assert!(s.run_until_height(12, 30_000));
    s.check_agreement().unwrap();
    // With no faults the leader (rank 0) makes every block: h mod n.
    for b in &s.nodes[0].delivered {
        assert_eq!(u64::from(b.proposer), b.height % 4);
    }
}

#[test]
fn one_crashed_node_progress_continues() {
    let mut s = sim(SimConfig::default());
    s.crash(2);
    assert!(
        s.run_until_height(20, 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
    assert!(s.nodes[2].delivered.is_empty());
}

#[test]
fn two_crashed_stall_then_restart_resumes() {
    let mut s = sim(SimConfig::default());
    assert!(s.run_until_height(5, 20_000));
    s.crash(3);
    let t = s.now();
    s.run_until(t + 1_000);
    s.crash(2);
    let t = s.now();
    s.run_until(t + 500);
    let stalled_at = s.min_honest_height();
    s.run_until(t + 5_000);
    // No progress without n−f nodes, and nothing diverged.
    assert!(s.min_honest_height() <= stalled_at + 1);
    let top_stalled = s.check_agreement().unwrap();
    s.restart(3);
    let t = s.now();
    assert!(
        s.run_until_height(top_stalled + 10, t + 60_000),
        "stuck at {} (was {top_stalled})",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
    // The restarted node caught up too.
    assert!(s.nodes[3].node.finalized_height() >= top_stalled + 10);
}

fn byzantine(behavior: Behavior, seed: u64) {
    let mut s = sim(SimConfig {
        seed,
        ..SimConfig::default()
    });
    s.set_behavior(1, behavior);
    assert!(
        s.run_until_height(20, 60_000),
        "{behavior:?}: stuck at {}",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
    let invalid: u64 = s
        .nodes
        .iter()
        .filter(|n| n.behavior == Behavior::Honest)
        .map(|n| n.node.stats().invalid)
        .sum();
    eprintln!(
        "{behavior:?}: invalid dropped {invalid}, undecodable {}",
        s.stats.undecodable
    );
    if behavior == Behavior::Equivocate {
        let seen: u64 = s.nodes.iter().map(|n| n.node.stats().equivocations).sum();
        assert!(seen > 0, "no equivocation observed");
    }
    if behavior == Behavior::BadShares {
        assert!(invalid > 0);
    }
    if behavior == Behavior::Garbage {
        assert!(s.stats.undecodable > 0);
    }
}

#[test]
fn byzantine_equivocating_block_maker() {
    byzantine(Behavior::Equivocate, 3);
}

#[test]
fn byzantine_bad_signature_shares() {
    byzantine(Behavior::BadShares, 4);
}

#[test]
fn byzantine_garbage() {
    byzantine(Behavior::Garbage, 5);
}

#[test]
fn fifty_ms_one_way_delay_still_live() {
    let mut s = sim(SimConfig {
        latency_ms: 50,
        jitter_ms: 20,
        ..SimConfig::default()
    });
    assert!(
        s.run_until_height(15, 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
}

#[test]
fn node_joins_from_catch_up_package() {
    let mut s = sim(SimConfig::default());
    s.crash(3);
    assert!(s.run_until_height(22, 60_000));
    let cup = s.nodes[0].node.catch_up_package().clone();
    assert!(cup.content.height >= 20);
    s.rejoin_from(3, cup.clone()).unwrap();
    let t = s.now();
    assert!(
        s.run_until_height(45, t + 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
    let joined = &s.nodes[3];
    assert!(joined.node.finalized_height() >= 45);
    assert!(!joined.delivered.is_empty());
    // Its state hash chain matches the others' from the package on.
    let h = joined.node.catch_up_package().content.height;
    assert!(h >= cup.content.height);
    assert_eq!(
        joined.node.catch_up_package(),
        s.nodes[0].node.catch_up_package()
    );
}

#[test]
fn seven_nodes_two_byzantine() {
    let mut s = sim(SimConfig {
        n: 7,
        seed: 11,
        policy: PolicyKind::RoundRobin,
        ..SimConfig::default()
    });
    s.set_behavior(1, Behavior::Equivocate);
    s.set_behavior(2, Behavior::BadShares);
    assert!(
        s.run_until_height(15, 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
    let seen: u64 = s.nodes.iter().map(|n| n.node.stats().equivocations).sum();
    assert!(seen > 0);
}

#[test]
fn asynchrony_never_forks() {
    // Delays far above the policy's δ (150 ms): ranks time out, several
    // blocks get notarized at a height; finalization must stay consistent.
    for seed in 0..3 {
        let mut s = sim(SimConfig {
            seed,
            latency_ms: 20,
            jitter_ms: 1500,
            ..SimConfig::default()
        });
        s.set_behavior(0, Behavior::Equivocate);
        s.run_until(30_000);
        let top = s.check_agreement().unwrap();
        assert!(top > 0, "seed {seed}: nothing finalized");
    }
}

#[test]
fn node_far_behind_catches_up_through_a_catch_up_package() {
    let mut s = sim(SimConfig::default());
    assert!(s.run_until_height(5, 20_000));
    s.crash(3);
    let t = s.now();
    assert!(s.run_until_height(35, t + 60_000));
    let behind = s.nodes[3].node.finalized_height();
    assert!(behind < 10);
    s.restart(3);
    let t = s.now();
    let target = s.min_honest_height() + 20;
    assert!(s.run_until_height(target, t + 60_000));
    s.check_agreement().unwrap();
    let n3 = &s.nodes[3];
    assert!(n3.node.finalized_height() >= target);
    // It jumped (state sync) to a package at or above 40, and its state
    // hash chain continued from the package's.
    let cup = n3.catch_ups.iter().map(|c| c.content.height).max().unwrap();
    assert!(cup >= 40, "{cup}");
    assert_eq!(
        n3.node.catch_up_package(),
        s.nodes[0].node.catch_up_package()
    );
}

#[test]
fn diverged_execution_is_repaired_by_the_next_catch_up_package() {
    let mut s = sim(SimConfig::default());
    s.nodes[3].diverge_at = Some(3);
    assert!(s.run_until_height(25, 60_000));
    s.check_agreement().unwrap();
    // The package at 10 certifies the 3 agreeing nodes' state; node 3 is told
    // to sync, and from then on its state matches.
    assert_eq!(s.nodes[3].state_syncs, 1);
    assert!(s.nodes[..3].iter().all(|n| n.state_syncs == 0));
    assert_eq!(s.nodes[3].state_hash, s.nodes[0].state_hash);
    assert!(s.nodes[3].node.catch_up_package().content.height >= 20);
}

#[test]
fn partition_halts_without_divergence_then_heals() {
    let mut s = sim(SimConfig::default());
    assert!(s.run_until_height(5, 20_000));
    s.partition(vec![0, 0, 1, 1]);
    let t = s.now();
    s.run_until(t + 500);
    let during = s.min_honest_height();
    s.run_until(t + 5_000);
    // Neither half has n−f nodes.
    assert!(
        s.nodes
            .iter()
            .all(|n| n.node.finalized_height() <= during + 1)
    );
    s.check_agreement().unwrap();
    s.heal();
    let t = s.now();
    assert!(
        s.run_until_height(during + 15, t + 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            // PROPTEST_CASES=200 for a longer search.
            cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(8),
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        /// Over random seeds, delays, 4 or 7 nodes and up to f faulty nodes
        /// of any kind, no two nodes ever deliver different blocks at one
        /// height, and the subnet makes progress.
        #[test]
        fn no_divergence(
            seed in any::<u64>(),
            latency in 1u64..80,
            jitter in 0u64..60,
            seven in any::<bool>(),
            kinds in proptest::collection::vec(0u8..5, 2),
            first in 0u32..7,
        ) {
            let n = if seven { 7 } else { 4 };
            let f = (n - 1) / 3;
            let mut s = sim(SimConfig { n, seed, latency_ms: latency, jitter_ms: jitter, ..SimConfig::default() });
            for k in 0..f {
                let node = (first + k * 3) % n;
                match kinds[k as usize] {
                    0 => s.set_behavior(node, Behavior::Equivocate),
                    1 => s.set_behavior(node, Behavior::BadShares),
                    2 => s.set_behavior(node, Behavior::Garbage),
                    3 => s.crash(node),
                    _ => {}
                }
            }
            s.run_until(4_000);
            let top = s.check_agreement();
            prop_assert!(top.is_ok(), "{:?}", top);
            prop_assert!(s.min_honest_height() >= 3, "stuck at {}", s.min_honest_height());
        }
    }
}

/// A policy switch scheduled at the same height on every node (as replicas
/// derive it from a finalized batch): the subnet keeps agreeing and making
/// progress, and from that height on, with every node up, the round-robin
/// leader (height mod n) makes every block.
#[test]
fn policy_switch_at_an_agreed_height() {
    let mut s = sim(SimConfig {
        seed: 11,
        ..SimConfig::default()
    });
    assert!(s.run_until_height(5, 60_000), "stuck before the switch");
    let from = 12;
    for n in &mut s.nodes {
        n.node.schedule_policy(
            from,
            Box::new(cellar_consensus::RoundRobinPolicy::default()),
        );
    }
    assert!(
        s.run_until_height(30, 120_000),
        "stuck at {} after the switch",
        s.min_honest_height()
    );
    s.check_agreement().unwrap();
    let after: Vec<(u64, u32)> = s.nodes[0]
        .delivered
        .iter()
        .filter(|b| b.height >= from)
        .map(|b| (b.height, b.proposer))
        .collect();
    assert!(after.len() >= 10);
    for (height, proposer) in after {
        assert_eq!(u64::from(proposer), height % 4, "height {height}");
    }
}

/// One node at a time crashes — at a random moment or at a chosen one:
/// right after persisting what it signed (before sending it), when handed a
/// finalized block (before executing it), when told to state-sync — stays
/// down for a while and restarts with only what it persisted (`keep_disk`)
/// plus its executed state, from its newest catch-up package at or below
/// it. Returns agreement's verdict and whether the subnet still made
/// progress after the last restart.
fn crash_restart_loop(seed: u64, keep_disk: bool, restarts: usize) -> Result<(), String> {
    use cellar_consensus::sim::{CrashPoint, SimRng};
    let mut s = sim(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let mut rng = SimRng::new(seed ^ 0xc4a5);
    s.run_until(1_000);
    let mut log = Vec::new();
    for _ in 0..restarts {
        let i = rng.below(4) as u32;
        let point = match rng.below(4) {
            0 => None,
            1 => Some(CrashPoint::AfterPersist),
            2 => Some(CrashPoint::BeforeExecute),
            _ => Some(CrashPoint::OnStateSync),
        };
        let t = s.now();
        if let Some(p) = point {
            s.crash_at(i, p);
            while s.nodes[i as usize].up && s.now() < t + 3_000 {
                let next = s.now() + 10;
                s.run_until(next);
            }
        }
        s.crash(i);
        let down = 100 + rng.below(2_500);
        let up = 200 + rng.below(3_000);
        log.push(format!(
            "node {i} at {} ms ({point:?}), down {down} ms",
            s.now()
        ));
        let t = s.now();
        s.run_until(t + down);
        s.reboot(i, keep_disk).map_err(|e| e.to_string())?;
        let t = s.now();
        s.run_until(t + up);
    }
    let before = s.min_honest_height();
    let t = s.now();
    let live = s.run_until_height(before + 10, t + 20_000);
    let agreed = s.check_agreement();
    let describe = || format!("seed {seed}: {}", log.join("; "));
    agreed.map_err(|e| format!("{e} ({})", describe()))?;
    if !live {
        return Err(format!(
            "no progress after the last restart: stuck at {} ({})",
            s.min_honest_height(),
            describe()
        ));
    }
    Ok(())
}

#[test]
fn restarts_at_every_moment_keep_agreement_and_liveness() {
    // Seeds 1..=N: a failure names its seed; rerun it alone with
    // CELLAR_SIM_SEED=<seed>.
    let seeds: Vec<u64> = match std::env::var("CELLAR_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("CELLAR_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("CELLAR_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(3);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        crash_restart_loop(seed, true, 12).unwrap();
    }
}

/// A block maker crashes right after sending its block and restarts at
/// at once, from an older catch-up package, while another node is down
/// (so the subnet waits at that height and the maker comes back to it):
/// with its records it does not propose again at that height; without them
/// (the amnesia of issue 32) its peers see two blocks of one maker at one
/// height.
#[test]
fn a_restarted_block_maker_does_not_propose_twice() {
    use cellar_consensus::sim::CrashPoint;
    fn equivocations(keep_disk: bool) -> u64 {
        let mut s = sim(SimConfig::default());
        s.run_until(1_500);
        s.crash_at(0, CrashPoint::AfterProposal);
        let t = s.now();
        while s.nodes[0].up && s.now() < t + 10_000 {
            let next = s.now() + 5;
            s.run_until(next);
        }
        assert!(!s.nodes[0].up, "node 0 proposed within 10 s");
        // Another node is down meanwhile, so the subnet stalls at that
        // height and the restarted maker comes back to it.
        s.crash(1);
        let t = s.now();
        s.run_until(t + 20);
        s.reboot(0, keep_disk).unwrap();
        let t = s.now();
        s.run_until(t + 4_000);
        let seen = s.nodes[2..]
            .iter()
            .map(|n| n.node.stats().equivocations)
            .sum();
        s.restart(1);
        let before = s.min_honest_height();
        let t = s.now();
        assert!(s.run_until_height(before + 5, t + 20_000), "live again");
        s.check_agreement().unwrap();
        seen
    }
    assert_eq!(equivocations(true), 0, "with its records");
    assert!(equivocations(false) > 0, "without them it equivocates");
}

/// With one node of four down, a node that knows it (its transport hears
/// nothing from it) does not wait for its rank: heights whose best-ranked
/// maker is the dead node go at the next maker's pace. More heights in the
/// same simulated time, and agreement as ever.
#[test]
fn an_absent_block_maker_is_not_waited_for() {
    fn heights(detect_absent: bool) -> u64 {
        let mut s = sim(SimConfig {
            detect_absent,
            ..SimConfig::default()
        });
        assert!(s.run_until_height(3, 10_000));
        s.crash(0);
        let (start, t) = (s.min_honest_height(), s.now());
        s.run_until(t + 20_000);
        s.check_agreement().unwrap();
        s.min_honest_height() - start
    }
    let (waiting, skipping) = (heights(false), heights(true));
    eprintln!("20 s with a dead node: {waiting} heights waiting for it, {skipping} not");
    assert!(
        skipping > waiting + waiting / 10,
        "{skipping} heights knowing the dead maker, {waiting} waiting for it"
    );
}

//! Deterministic simulation tests of the ICC state machine.

use cellar_consensus::sim::{Behavior, PolicyKind, SimConfig, Simulation};

fn sim(cfg: SimConfig) -> Simulation {
    Simulation::new(cfg).expect("simulation")
}

#[test]
fn four_nodes_agree() {
    let mut s = sim(SimConfig::default());
    assert!(
        s.run_until_height(30, 60_000),
        "stuck at {}",
        s.min_honest_height()
    );
    let top = s.check_agreement().unwrap();
    assert!(top >= 30);
    eprintln!("t={} ms heights={} stats={:?}", s.now(), top, s.stats);
    for n in &s.nodes {
        eprintln!("{:?} cups={}", n.node.stats(), n.catch_ups.len());
    }
}

//! Crypto costs and simulated consensus figures.
//!
//! `cargo run -p cellar-consensus --release --example measure`

use std::time::Instant;

use cellar_consensus::bls::{self, NodeIndex, SecretKey, SignatureBytes};
use cellar_consensus::keys::deal_subnet;
use cellar_consensus::sim::{SimConfig, Simulation};

/// CPU time of this thread (ns), from /proc/thread-self/schedstat (0 if unavailable).
/// The machine is shared, so wall time overstates the cost.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn time<T>(label: &str, iters: u32, mut f: impl FnMut() -> T) {
    let start = Instant::now();
    let cpu = cpu_ns();
    for _ in 0..iters {
        std::hint::black_box(f());
    }
    let us = start.elapsed().as_secs_f64() * 1e6 / f64::from(iters);
    let cpu_us = (cpu_ns() - cpu) as f64 / 1e3 / f64::from(iters);
    println!("  {label:<44} {cpu_us:>9.1} µs CPU ({us:.1} µs wall)");
}

fn crypto() {
    println!("BLS12-381 min-sig (blst):");
    let sk = SecretKey::from_seed(b"bench", b"k").expect("key");
    let pk = sk.public_key();
    let msg = b"a block hash of thirty-two bytes";
    let sig = sk.sign(msg);
    time("sign", 200, || sk.sign(msg));
    time("verify", 200, || bls::verify(&pk, msg, &sig));
    let d = deal_subnet(b"bench", 4).expect("deal");
    let shares: Vec<SignatureBytes> = d.secrets.iter().map(|s| s.signing.sign(msg)).collect();
    let pks: Vec<&bls::PublicKey> = d.public.node_keys.iter().take(3).collect();
    let agg = bls::aggregate(&shares[..3]).expect("aggregate");
    time("multi-sig aggregate 3 of 4", 200, || {
        bls::aggregate(&shares[..3])
    });
    time("multi-sig verify 3 of 4", 200, || {
        bls::verify_multi(&pks, msg, &agg)
    });
    for (name, key, secret) in [
        ("beacon t=2", &d.public.beacon, 0),
        ("catch-up t=3", &d.public.catch_up, 1),
    ] {
        let s: Vec<(NodeIndex, SignatureBytes)> = d
            .secrets
            .iter()
            .map(|k| {
                let sk = if secret == 0 {
                    &k.beacon_share
                } else {
                    &k.catch_up_share
                };
                (k.index, sk.sign(msg))
            })
            .collect();
        time(&format!("threshold {name}: verify share"), 200, || {
            key.verify_share(0, msg, &s[0].1)
        });
        time(
            &format!("threshold {name}: combine (verified)"),
            200,
            || key.combine_verified(&s),
        );
        time(
            &format!("threshold {name}: verify 4 shares + combine"),
            100,
            || key.combine(msg, &s),
        );
    }
    let d7 = deal_subnet(b"bench", 13).expect("deal");
    let s: Vec<(NodeIndex, SignatureBytes)> = d7
        .secrets
        .iter()
        .map(|k| (k.index, k.catch_up_share.sign(msg)))
        .collect();
    time("threshold n=13 t=9: combine (verified)", 100, || {
        d7.public.catch_up.combine_verified(&s)
    });
}

fn simulate(label: &str, cfg: SimConfig, heights: u64) {
    let mut sim = Simulation::new(cfg).expect("sim");
    let start = Instant::now();
    let cpu0 = cpu_ns();
    let ok = sim.run_until_height(heights, 10_000_000);
    let wall = start.elapsed().as_secs_f64();
    let cpu = (cpu_ns() - cpu0) as f64 / 1e9;
    sim.check_agreement().expect("agreement");
    let n0 = &sim.nodes[0];
    let h = n0.node.finalized_height();
    let lat: Vec<u64> = n0
        .delivered
        .iter()
        .zip(&n0.delivered_at_ms)
        .map(|(b, at)| at - b.time_ms)
        .collect();
    let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64;
    let mut sorted = lat.clone();
    sorted.sort();
    let p99 = sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(0);
    let ingress: usize = n0.delivered.iter().map(|b| b.payload.ingress.len()).sum();
    println!(
        "{label}: reached={ok} heights={h} sim_time={:.1} s → {:.2} blocks/s; \
         finalization latency (proposal→delivery) mean {mean:.0} ms p99 {p99} ms; \
         ingress delivered {ingress}; messages {} ({:.1} KiB/height); \
         CPU {:.2} s (wall {wall:.2} s) = {:.1} ms CPU per height for all 4 nodes",
        sim.now() as f64 / 1000.0,
        h as f64 / (sim.now() as f64 / 1000.0),
        sim.stats.messages,
        sim.stats.bytes as f64 / 1024.0 / h.max(1) as f64,
        cpu,
        cpu * 1000.0 / h.max(1) as f64,
    );
}

fn main() {
    crypto();
    println!("\nSimulated subnet, 4 nodes, ICC default policy (δ=150 ms, ε=100 ms):");
    simulate(
        "  10 ms ± 5 ms one-way",
        SimConfig {
            consensus: cellar_consensus::ConsensusConfig {
                catch_up_interval: 50,
                ..SimConfig::default().consensus
            },
            ..SimConfig::default()
        },
        300,
    );
    simulate(
        "  50 ms ± 20 ms one-way",
        SimConfig {
            latency_ms: 50,
            jitter_ms: 20,
            ..SimConfig::default()
        },
        200,
    );
    let mut crashed = Simulation::new(SimConfig::default()).expect("sim");
    crashed.crash(3);
    let cpu0 = cpu_ns();
    crashed.run_until_height(100, 10_000_000);
    println!(
        "  one node crashed: {} heights in {:.1} s simulated ({:.2} blocks/s), CPU {:.2} s",
        crashed.min_honest_height(),
        crashed.now() as f64 / 1000.0,
        crashed.min_honest_height() as f64 * 1000.0 / crashed.now() as f64,
        (cpu_ns() - cpu0) as f64 / 1e9
    );
}

//! `cellar bench scheduler`: rounds at scale.
//!
//! * Install time and resident memory for many canisters sharing one
//!   compiled module.
//! * Round time with many idle canisters against a handful (the target:
//!   idle canisters cost a round nothing).
//! * A light canister's latency, in rounds, while others flood the node.
//! * Inter-canister call round trips per second.

use std::time::Instant;

use anyhow::{Context, Result};
use cellar_node::{Durability, Node, NodeOptions};
use cellar_types::Principal;
use cellar_types::api::{Args, InstallMode};
use serde::Serialize;

/// Options of `cellar bench scheduler`.
#[derive(clap::Args, Debug)]
pub struct SchedulerBenchArgs {
    /// Idle canisters to install.
    #[arg(long, default_value_t = 100_000)]
    pub canisters: usize,
    /// Update messages timed per round-time measurement.
    #[arg(long, default_value_t = 300)]
    pub messages: usize,
}

#[derive(Serialize, Debug, Default)]
struct Report {
    canisters: usize,
    install_seconds: f64,
    installs_per_second: f64,
    resident_mib_before: f64,
    resident_mib_after: f64,
    resident_kib_per_canister: f64,
    round_micros_with_10: f64,
    round_micros_with_all: f64,
    round_time_ratio: f64,
    flood_light_latency_rounds: u64,
    flood_rounds: u64,
    call_round_trips_per_second: f64,
    sequential_call_millis: f64,
}

fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn me() -> Principal {
    Principal::self_authenticating(&[0x5c; 32])
}

fn wave(text: &str) -> Args {
    Args::Wave(text.to_string())
}

fn open(dir: &std::path::Path) -> Result<Node> {
    let mut options = NodeOptions::new(dir);
    options.durability = Durability::Process;
    options.checkpoint_interval = u64::MAX;
    Node::open(options)
}

fn deploy(node: &Node, name: &str) -> Result<Principal> {
    let e = cellar_examples::get(name).context("no such example")?;
    let id = node.create(&me(), vec![])?;
    node.install(
        &me(),
        &id,
        InstallMode::Install,
        e.wasm,
        e.init_arg.map(str::to_string),
    )?;
    Ok(id)
}

fn ok(outcome: cellar_node::CallOutcome) -> Result<String> {
    match outcome.result {
        Ok(values) => cellar_node::engine::results_to_wave(&values).map_err(anyhow::Error::msg),
        Err(reject) => anyhow::bail!("rejected: {reject}"),
    }
}

/// Micros per update message (each its own round) to one kv canister.
fn round_micros(node: &Node, kv: &Principal, messages: usize) -> Result<f64> {
    let start = Instant::now();
    for i in 0..messages {
        ok(node.update(&me(), kv, "add", wave(&format!("\"k{}\", {i}", i % 50)))?)?;
    }
    Ok(start.elapsed().as_secs_f64() * 1e6 / messages as f64)
}

/// Runs the benchmark and prints its figures.
pub fn scheduler(args: &SchedulerBenchArgs, json: bool) -> Result<()> {
    let mut report = Report {
        canisters: args.canisters,
        ..Report::default()
    };
    let small_dir = tempfile::tempdir()?;
    let small = open(small_dir.path())?;
    let small_kv = deploy(&small, "kv")?;
    for _ in 0..9 {
        deploy(&small, "kv")?;
    }
    round_micros(&small, &small_kv, args.messages / 3)?; // warm up

    // Many idle canisters, installed by concurrent clients (their requests
    // share rounds).
    let big_dir = tempfile::tempdir()?;
    let big = open(big_dir.path())?;
    report.resident_mib_before = resident_mib();
    let start = Instant::now();
    let threads = 8;
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let big = &big;
                let n = args.canisters / threads + usize::from(t < args.canisters % threads);
                s.spawn(move || -> Result<()> {
                    for _ in 0..n {
                        deploy(big, "kv")?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("installer thread")?;
        }
        Ok(())
    })?;
    report.install_seconds = start.elapsed().as_secs_f64();
    report.installs_per_second = args.canisters as f64 / report.install_seconds;
    report.resident_mib_after = resident_mib();
    report.resident_kib_per_canister = (report.resident_mib_after - report.resident_mib_before)
        * 1024.0
        / args.canisters.max(1) as f64;
    let big_kv = deploy(&big, "kv")?;
    round_micros(&big, &big_kv, args.messages / 3)?;
    // Alternate the two nodes and keep each one's best run: the machine is
    // noisy, and the ratio is what matters.
    report.round_micros_with_10 = f64::MAX;
    report.round_micros_with_all = f64::MAX;
    for _ in 0..3 {
        let small_run = round_micros(&small, &small_kv, args.messages)?;
        report.round_micros_with_10 = report.round_micros_with_10.min(small_run);
        let big_run = round_micros(&big, &big_kv, args.messages)?;
        report.round_micros_with_all = report.round_micros_with_all.min(big_run);
    }
    report.round_time_ratio = report.round_micros_with_all / report.round_micros_with_10;
    drop(big);

    // A light canister under a flood of calls from other canisters.
    let light = deploy(&small, "counter")?;
    let targets: Vec<Principal> = (0..4)
        .map(|_| deploy(&small, "counter"))
        .collect::<Result<_>>()?;
    let relays: Vec<Principal> = (0..4)
        .map(|_| deploy(&small, "relay"))
        .collect::<Result<_>>()?;
    let flood_start = small.round();
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = relays
            .iter()
            .zip(&targets)
            .map(|(relay, target)| {
                let small = &small;
                s.spawn(move || -> Result<String> {
                    ok(small.update(
                        &me(),
                        relay,
                        "fan-out",
                        wave(&format!("\"{}\", \"increment\", 400", target.to_text())),
                    )?)
                })
            })
            .collect();
        while targets.iter().all(|t| {
            small
                .query(&me(), t, "get", wave(""))
                .ok()
                .and_then(|o| o.result.ok())
                .is_some_and(|v| matches!(v.first(), Some(cellar_node::engine::Val::U64(0))))
        }) {
            std::thread::yield_now();
        }
        let before = small.round();
        ok(small.update(&me(), &light, "increment", wave(""))?)?;
        report.flood_light_latency_rounds = small.round() - before;
        for h in handles {
            h.join().expect("flood thread")?;
        }
        Ok(())
    })?;
    report.flood_rounds = small.round() - flood_start;

    // Inter-canister round trips.
    let relay = &relays[0];
    let target = &targets[0];
    let start = Instant::now();
    let calls = 400u32;
    ok(small.update(
        &me(),
        relay,
        "fan-out",
        wave(&format!("\"{}\", \"increment\", {calls}", target.to_text())),
    )?)?;
    report.call_round_trips_per_second = f64::from(calls) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    let n = 50;
    for _ in 0..n {
        ok(small.update(
            &me(),
            relay,
            "lookup",
            wave(&format!("\"{}\", \"k1\"", small_kv.to_text())),
        )?)?;
    }
    report.sequential_call_millis = start.elapsed().as_secs_f64() * 1e3 / n as f64;

    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "cellar bench scheduler ({} idle canisters)",
        report.canisters
    );
    println!(
        "  install: {:.1} s ({:.0}/s), resident memory {:.0} -> {:.0} MiB ({:.2} KiB per canister)",
        report.install_seconds,
        report.installs_per_second,
        report.resident_mib_before,
        report.resident_mib_after,
        report.resident_kib_per_canister
    );
    println!(
        "  round time (one update per round): {:.0} us with 10 canisters, {:.0} us with {} ({:.2}x)",
        report.round_micros_with_10,
        report.round_micros_with_all,
        report.canisters + 1,
        report.round_time_ratio
    );
    println!(
        "  flood of 4 x 400 calls: the light canister answered after {} rounds (flood took {} rounds)",
        report.flood_light_latency_rounds, report.flood_rounds
    );
    println!(
        "  inter-canister calls: {:.0} round trips/s in a fan-out of {calls}; one awaited call {:.2} ms",
        report.call_round_trips_per_second, report.sequential_call_millis
    );
    Ok(())
}

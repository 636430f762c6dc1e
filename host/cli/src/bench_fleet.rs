//! `cellar bench fleet`: update throughput and latency (p50, p99) through
//! a local subnet of replica processes (`cellar fleet up`) on loopback, with
//! and without an injected one-way delay, and the blocks finalized per
//! second. Clients are threads, each with its own identity, spread over the
//! replicas; every update is signed, ordered by consensus and executed by
//! every replica before it is answered.
//!
//! Figures (4 processes, debug build of the cellar crates, shared 2-core
//! machine, kv `add`): 64 clients 224 updates/s, p50 247 ms, p99 792 ms,
//! 7.6 blocks/s; with 50 ms injected one-way delay 132 updates/s, p50
//! 450 ms, p99 881 ms, 4.1 blocks/s; 256 clients 508 updates/s, p50
//! 453 ms. Release-build figures: `docs/known-limits.md`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cellar_agent::{Agent, Identity};
use cellar_types::api::{CallRequest, CreateRequest, ModuleSource};
use serde::Serialize;

use crate::render;

/// Options of `cellar bench fleet`.
#[derive(clap::Args, Debug)]
pub struct FleetBenchArgs {
    /// Replicas in the subnet.
    #[arg(long, default_value_t = 4)]
    pub nodes: usize,
    /// Concurrent clients (threads), each waiting for its update's answer
    /// before it sends the next: throughput is at most clients / latency.
    /// Comma separated for several runs on the same fleet.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    pub clients: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Injected one-way delays to measure (ms), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    pub delays_ms: Vec<u64>,
    /// The replicas' memory tracker [default: the fastest the kernel
    /// supports].
    #[arg(long, value_name = "TRACKER")]
    pub memory_tracker: Option<cellar_node::engine::MemoryTracker>,
}

/// One measurement.
#[derive(Serialize, Debug)]
struct Row {
    delay_ms: u64,
    clients: usize,
    updates: usize,
    failed: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    blocks_per_second: f64,
    /// CPU time (user + system) the replica processes used per answered
    /// update, all replicas together: less sensitive to a busy machine
    /// than throughput.
    replica_cpu_ms_per_update: f64,
}

/// CPU time (user + system, in ms) the processes `pids` have used so far,
/// from `/proc/<pid>/stat`; processes that are gone count nothing.
fn cpu_ms(pids: &[i32]) -> f64 {
    // SAFETY: sysconf with a valid name has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces), from
            // field 3 on: utime and stime are fields 14 and 15.
            let rest = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 * 1e3 / ticks_per_second
}

/// Runs the benchmark and prints a table (or JSON).
pub fn run(args: &FleetBenchArgs, json: bool) -> Result<()> {
    let mut rows = Vec::new();
    for &delay in &args.delays_ms {
        let dir = tempfile::tempdir()?;
        let urls = crate::fleet::fleet_up(
            args.nodes,
            dir.path(),
            delay,
            None,
            None,
            crate::fleet::ReplicaOptions {
                memory_tracker: args.memory_tracker,
                ..Default::default()
            },
        )?;
        let measured: Result<Vec<Row>> = args
            .clients
            .iter()
            .map(|&clients| measure(args, clients, &urls, dir.path(), delay))
            .collect();
        let _ = crate::fleet::fleet_down(dir.path());
        rows.extend(measured?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.delay_ms.to_string(),
                r.clients.to_string(),
                r.updates.to_string(),
                r.failed.to_string(),
                format!("{:.0}", r.per_second),
                format!("{:.0}", r.p50_ms),
                format!("{:.0}", r.p99_ms),
                format!("{:.1}", r.blocks_per_second),
                format!("{:.2}", r.replica_cpu_ms_per_update),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &[
                "DELAY ms",
                "CLIENTS",
                "UPDATES",
                "FAILED",
                "UPDATES/S",
                "P50 ms",
                "P99 ms",
                "BLOCKS/S",
                "REPLICA CPU ms/UPDATE"
            ],
            &table
        )
    );
    println!(
        "\n{} replica processes on loopback, real QUIC; kv `add` updates, each signed, \
         ordered by ICC consensus and executed by every replica before it is answered.",
        args.nodes
    );
    Ok(())
}

fn measure(
    args: &FleetBenchArgs,
    clients: usize,
    urls: &[String],
    fleet_dir: &std::path::Path,
    delay_ms: u64,
) -> Result<Row> {
    let pids = crate::fleet::fleet_pids(fleet_dir)?;
    let admin = Agent::new(&urls[0], Identity::generate()?);
    let kv = admin
        .create(&CreateRequest {
            module: Some(ModuleSource::Example("kv".into())),
            ..CreateRequest::default()
        })
        .context("deploy kv on the fleet")?
        .canister_id;
    let rounds =
        |url: &str| -> Result<u64> { Ok(Agent::new(url, Identity::anonymous()).status()?.round) };
    let first_round = rounds(&urls[0])?;
    let first_cpu_ms = cpu_ms(&pids);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.seconds);
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let url = urls[i % urls.len()].clone();
            let kv = kv.clone();
            std::thread::spawn(move || -> Result<(Vec<f64>, usize)> {
                let agent = Agent::new(&url, Identity::generate()?);
                let (mut latencies, mut failed) = (Vec::new(), 0);
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let request = CallRequest::wave("add", &format!("\"c{i}\", {n}"));
                    match agent.call(&kv, &request) {
                        Ok(_) => latencies.push(t.elapsed().as_secs_f64() * 1e3),
                        Err(_) => failed += 1,
                    }
                    n += 1;
                }
                Ok((latencies, failed))
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut failed = 0;
    for h in handles {
        let (l, f) = h.join().expect("a client thread")?;
        all.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let used_cpu_ms = cpu_ms(&pids) - first_cpu_ms;
    let last_round = rounds(&urls[0])?;
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() - 1) as f64 * p).round() as usize]
        }
    };
    Ok(Row {
        delay_ms,
        clients,
        updates: all.len(),
        failed,
        per_second: all.len() as f64 / elapsed,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        blocks_per_second: (last_round - first_round) as f64 / elapsed,
        replica_cpu_ms_per_update: used_cpu_ms / all.len().max(1) as f64,
    })
}

//! `cellar bench api`: queries and updates per second through the HTTP API
//! on loopback with N concurrent clients (each its own connection and
//! identity; every request signed and verified), against the same calls
//! made in-process on the same node; p50 and p99 latency of each.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cellar_agent::{Agent, Identity};
use cellar_node::{Durability, Node, NodeOptions};
use cellar_types::Principal;
use cellar_types::api::{Args, CallRequest, InstallMode};
use serde::Serialize;

use crate::render;

/// Options of `cellar bench api`.
#[derive(clap::Args, Debug)]
pub struct ApiBenchArgs {
    /// Concurrent clients (threads), comma separated for several runs.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// Seconds each measurement runs.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Sync the journal to disk on every update (as `cellar start` does).
    #[arg(long)]
    pub fsync: bool,
}

/// One measurement.
#[derive(Serialize, Debug)]
struct Row {
    path: &'static str,
    kind: &'static str,
    clients: usize,
    calls: usize,
    per_second: f64,
    p50_micros: f64,
    p99_micros: f64,
}

/// Runs the benchmark and prints a table (or JSON).
pub fn run(args: &ApiBenchArgs, json: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut options = NodeOptions::new(dir.path());
    options.durability = if args.fsync {
        Durability::Sync
    } else {
        Durability::Process
    };
    options.checkpoint_interval = 1_000_000;
    let node = Arc::new(Node::open(options)?);
    let me = Principal::anonymous();
    let kv = node.create(&me, vec![])?;
    let example = cellar_examples::get("kv").context("the kv example")?;
    node.install(&me, &kv, InstallMode::Install, example.wasm, None)?;
    node.update(&me, &kv, "add", Args::Wave("\"apple\", 5".into()))?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let running = runtime.block_on(cellar_node::serve(
        node.clone(),
        "127.0.0.1:0".parse().expect("an address"),
    ))?;
    let url = format!("http://{}", running.addr);
    let duration = Duration::from_secs_f64(args.seconds);
    let mut rows = Vec::new();
    for &clients in &args.clients {
        for kind in ["query", "update"] {
            rows.push(measure("in-process", kind, clients, duration, |i| {
                let node = node.clone();
                let kv = kv.clone();
                let caller = Principal::self_authenticating(&[i as u8; 32]);
                Box::new(move |n| {
                    let result = if kind == "query" {
                        node.query(&caller, &kv, "get", Args::Wave("\"apple\"".into()))
                    } else {
                        node.update(&caller, &kv, "add", Args::Wave(format!("\"k{n}\", {n}")))
                    };
                    result.map(|o| o.result.is_ok()).unwrap_or(false)
                })
            }));
            rows.push(measure("http", kind, clients, duration, |_| {
                let agent = Agent::new(&url, Identity::generate().expect("randomness"));
                let kv = kv.clone();
                Box::new(move |n| {
                    let result = if kind == "query" {
                        agent.query(&kv, &CallRequest::wave("get", "\"apple\""))
                    } else {
                        agent.call(&kv, &CallRequest::wave("add", &format!("\"k{n}\", {n}")))
                    };
                    result
                        .map(|r| matches!(r, cellar_types::api::CallResponse::Replied { .. }))
                        .unwrap_or(false)
                })
            }));
        }
        rows.push(measure(
            "http submit+poll",
            "update",
            clients,
            duration,
            |_| {
                let agent = Agent::new(&url, Identity::generate().expect("randomness"));
                let kv = kv.clone();
                Box::new(move |n| {
                    let request = CallRequest::wave("add", &format!("\"s{n}\", {n}"));
                    agent.call_and_wait(&kv, &request).is_ok()
                })
            },
        ));
    }
    runtime.block_on(running.shutdown())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.kind.to_string(),
                r.path.to_string(),
                r.clients.to_string(),
                r.calls.to_string(),
                format!("{:.0}", r.per_second),
                format!("{:.0}", r.p50_micros),
                format!("{:.0}", r.p99_micros),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &[
                "KIND", "PATH", "CLIENTS", "CALLS", "CALLS/S", "P50 µs", "P99 µs"
            ],
            &table
        )
    );
    println!(
        "\nkv `get` queries and `add` updates ({}); HTTP: signed requests on loopback, \
         updates through the ingress queue answered synchronously (`http`) or submitted and \
         polled from 1 ms with backoff (`http submit+poll`).",
        if args.fsync {
            "journal synced per update"
        } else {
            "journal written, not synced"
        }
    );
    Ok(())
}

/// A client's call: takes a sequence number, says whether it replied.
type Client = Box<dyn FnMut(usize) -> bool + Send>;

/// Runs `clients` threads doing calls for `duration`.
fn measure(
    path: &'static str,
    kind: &'static str,
    clients: usize,
    duration: Duration,
    make: impl Fn(usize) -> Client,
) -> Row {
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let mut client = make(i);
            std::thread::spawn(move || {
                let mut latencies = Vec::new();
                let mut n = i * 1_000_000_000;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ok = client(n);
                    latencies.push(t.elapsed().as_secs_f64() * 1e6);
                    assert!(ok, "a benchmark call failed");
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("a client thread"))
        .collect();
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        if all.is_empty() {
            0.0
        } else {
            all[((all.len() - 1) as f64 * p).round() as usize]
        }
    };
    Row {
        path,
        kind,
        clients,
        calls: all.len(),
        per_second: all.len() as f64 / elapsed,
        p50_micros: pct(0.5),
        p99_micros: pct(0.99),
    }
}

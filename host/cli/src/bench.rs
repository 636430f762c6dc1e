//! `cellar bench memory`: the cost of orthogonal persistence (the IC
//! paper's Figure 4, redone side by side in one run).
//!
//! * Message time for messages that write, or only read, `k` random pages
//!   of a large heap, for each memory tracker and for the naive baseline
//!   that copies the whole heap (`copy-all`).
//! * Checkpoint time against the number of pages dirtied since the last one.
//! * Restart time (loading the last checkpoint) against state size, in
//!   this process and as a new `cellar start` until its API answers.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cellar_node::engine::{
    CallArgs, CanisterCode, CodeCache, ExecutionState, Limits, MemoryTracker, MessageContext,
    MessageKind, decode_args, execute, parse_call_text,
};
use cellar_node::{Durability, Node, NodeOptions};
use cellar_types::Principal;
use cellar_types::api::{Args, InstallMode};
use serde::Serialize;

/// Options of `cellar bench memory`.
#[derive(clap::Args, Debug)]
pub struct MemoryBenchArgs {
    /// Heap sizes to test, in GiB (1 to 4; a 4 GiB heap is grown in
    /// 1000 MiB blocks to just under the 4 GiB wasm32 limit).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub heap_gib: Vec<u32>,
    /// Pages touched per message.
    #[arg(long, value_delimiter = ',', default_value = "1,7,100,10000")]
    pub pages: Vec<u32>,
    /// Messages measured per data point (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// Parts to run: `messages`, `checkpoints` (checkpoints and the
    /// restart after them).
    #[arg(long, value_delimiter = ',', default_value = "messages,checkpoints")]
    pub parts: Vec<String>,
    /// Trackers to measure messages with (`signal`, `uffd-lazy`,
    /// `uffd-image`, `uffd-mapped`, `uffd-auto`, `copy-all`); all available ones by
    /// default.
    #[arg(long, value_delimiter = ',')]
    pub trackers: Vec<String>,
}

/// One message-cost measurement.
#[derive(Serialize, Debug)]
struct MessageRow {
    tracker: &'static str,
    heap_gib: u32,
    access: &'static str,
    pages: u32,
    micros_per_message: f64,
    micros_per_page: f64,
    faults: u64,
    dirty_pages: u64,
    setup_micros: f64,
    call_micros: f64,
    commit_micros: f64,
}

/// One checkpoint measurement.
#[derive(Serialize, Debug)]
struct CheckpointRow {
    /// The store's state when the checkpoint starts: `quiet` (no flush or
    /// compaction running) or `after 1 GiB written` (compacting it).
    store: &'static str,
    dirty_pages: u64,
    pages_written: u64,
    /// How long the round that checkpoints is held up (snapshot and the
    /// next journal; the write runs in the background).
    round_millis: f64,
    /// Until the checkpoint is durable.
    millis: f64,
    /// Of the background write: diffing and building the batch, committing
    /// it (journal write, memtables), syncing the journal.
    build_millis: f64,
    commit_millis: f64,
    sync_millis: f64,
}

/// One restart measurement.
#[derive(Serialize, Debug)]
struct RestartRow {
    /// `in-process` (the store opened again by this process) or
    /// `cellar start N` (the Nth new node process on the data dir, until
    /// its API answers; the first also deploys the example canisters).
    how: &'static str,
    state_mib: u64,
    millis: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    messages: Vec<MessageRow>,
    checkpoints: Vec<CheckpointRow>,
    restarts: Vec<RestartRow>,
}

/// A testbed canister driven directly through the engine.
struct Subject {
    code: std::sync::Arc<CanisterCode>,
    state: ExecutionState,
    limits: Limits,
    round: u64,
}

impl Subject {
    fn run(
        &mut self,
        call: &str,
        kind: MessageKind,
    ) -> Result<cellar_node::engine::MessageOutcome> {
        let call = parse_call_text(call).map_err(anyhow::Error::msg)?;
        let method = self.code.interface.resolve(&call.method)?.clone();
        let params =
            decode_args(&CallArgs::Wave(call.args.clone()), &method).map_err(anyhow::Error::msg)?;
        self.round += 1;
        let ctx = MessageContext {
            canister_id: Principal::canister(0),
            caller: Principal::anonymous(),
            method: method.function.clone(),
            kind,
            cycles_attached: 0,
            cycle_balance: 0,
            time_nanos: self.round,
            round: self.round,
            controllers: Vec::new(),
            certified_data: Vec::new(),
            random_seed: [0; 32],
            context_id: 0,
            open_contexts: Vec::new(),
        };
        let outcome = execute(&self.code, &self.state, &method, &params, ctx, &self.limits);
        if let Err(reject) = &outcome.result {
            anyhow::bail!("{call:?} was rejected: {reject}");
        }
        if let Some(changes) = outcome.changes.clone() {
            self.state.apply(changes);
        }
        Ok(outcome)
    }

    /// Grows the heap to about `gib` GiB, the last 1 GiB (or less) in the
    /// block that `write-pages`/`read-pages` use.
    fn grow(&mut self, gib: u32) -> Result<()> {
        for _ in 1..gib {
            self.run("grow-heap(1000)", MessageKind::Update)?;
        }
        self.run("grow-heap(1000)", MessageKind::Update)?;
        Ok(())
    }
}

/// Unmeasured messages before each data point of `uffd-auto`: enough for
/// its choice for a large memory to settle.
const AUTO_WARM_UP: u32 = 5;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Runs the benchmark and prints its report.
pub fn memory(args: &MemoryBenchArgs, json: bool) -> Result<()> {
    // The node's own timings (RUST_LOG=cellar_node=debug: how long opening
    // the store, loading the checkpoint and its code took).
    if std::env::var_os("RUST_LOG").is_some() {
        crate::start::init_logging();
    }
    // (tracker, memory images on, name in the table): the userfaultfd
    // tracker maps large memories from images; its lazy mode (every page
    // mapped on first touch) is measured too, side by side.
    let mut trackers = vec![(MemoryTracker::Signal, false, "signal")];
    match MemoryTracker::Userfaultfd.check_available() {
        Ok(()) => {
            trackers.push((MemoryTracker::Userfaultfd, false, "uffd-lazy"));
            trackers.push((MemoryTracker::Userfaultfd, true, "uffd-image"));
            trackers.push((MemoryTracker::Mapped, false, "uffd-mapped"));
            trackers.push((MemoryTracker::Auto, true, "uffd-auto"));
        }
        Err(why) => eprintln!("userfaultfd tracker skipped: {why}"),
    }
    trackers.push((MemoryTracker::CopyAll, false, "copy-all"));
    if !args.trackers.is_empty() {
        trackers.retain(|(_, _, name)| args.trackers.iter().any(|t| t == name));
    }
    for part in &args.parts {
        anyhow::ensure!(
            part == "messages" || part == "checkpoints",
            "--parts takes `messages` and `checkpoints`, not {part:?}"
        );
    }
    if !args.parts.iter().any(|p| p == "messages") {
        trackers.clear();
    }
    let engine = cellar_node::engine::new_engine()?;
    let cache = CodeCache::new(engine, None, 64 << 20)?;
    let code = cache.load(cellar_examples::testbed())?;

    let mut report = Report {
        messages: Vec::new(),
        checkpoints: Vec::new(),
        restarts: Vec::new(),
    };
    for &gib in &args.heap_gib {
        anyhow::ensure!(
            (1..=4).contains(&gib),
            "--heap-gib takes values from 1 to 4"
        );
        for &(tracker, images, name) in &trackers {
            cellar_node::engine::set_memory_images(images);
            eprintln!("heap {gib} GiB, tracker {name}: growing the heap");
            let mut subject = Subject {
                code: code.clone(),
                state: ExecutionState::default(),
                limits: Limits {
                    memory_tracker: tracker,
                    ..Limits::default()
                },
                round: 0,
            };
            subject.grow(gib)?;
            // "aside": a write right after another write committed without
            // the tracker's cached memory (an update armed lazily while a
            // query borrowed it), which brings the cached memory forward;
            // for the trackers that cache.
            let caches = images || matches!(tracker, MemoryTracker::Mapped | MemoryTracker::Auto);
            for &k in &args.pages {
                let accesses = [
                    ("write", "write-pages", MessageKind::Update),
                    ("read", "read-pages", MessageKind::Update),
                    ("aside", "write-pages", MessageKind::Update),
                ];
                for (access, call, kind) in accesses
                    .into_iter()
                    .filter(|(access, ..)| caches || *access != "aside")
                {
                    let repeat = if tracker == MemoryTracker::CopyAll {
                        args.repeat.min(3)
                    } else {
                        args.repeat
                    };
                    // `uffd-auto` chooses per canister from its last
                    // updates (`write_rate`): measured once settled on the
                    // k-page messages, from no history (and no cached
                    // image or kept memory, whose versions would pin old
                    // pages), after unmeasured ones of the kind.
                    if tracker == MemoryTracker::Auto {
                        cellar_node::engine::forget_write_rates();
                        cellar_node::engine::set_memory_images(false);
                        cellar_node::engine::set_memory_images(true);
                        for r in 0..AUTO_WARM_UP {
                            subject.run(&format!("{call}({k}, {})", 900 + r), kind)?;
                        }
                    }
                    let mut samples = Vec::new();
                    let mut last = None;
                    for r in 0..repeat {
                        if access == "aside" {
                            let own = subject.limits.memory_tracker;
                            subject.limits.memory_tracker = MemoryTracker::Signal;
                            let aside = subject.run(&format!("{call}({k}, {})", 2000 + r), kind);
                            subject.limits.memory_tracker = own;
                            aside?;
                        }
                        let text = format!("{call}({k}, {})", 1000 + r);
                        let started = Instant::now();
                        let outcome = subject.run(&text, kind)?;
                        samples.push(started.elapsed());
                        last = Some(outcome.tracking);
                    }
                    let micros = median(samples).as_secs_f64() * 1e6;
                    let tracking = last.unwrap_or_default();
                    report.messages.push(MessageRow {
                        tracker: name,
                        heap_gib: gib,
                        access,
                        pages: k,
                        micros_per_message: micros,
                        micros_per_page: micros / f64::from(k),
                        faults: tracking.faults,
                        dirty_pages: tracking.dirty_pages,
                        setup_micros: tracking.setup_nanos as f64 / 1e3,
                        call_micros: tracking.call_nanos as f64 / 1e3,
                        commit_micros: tracking.commit_nanos as f64 / 1e3,
                    });
                }
            }
        }
    }
    // Free the images of the last heap before the node measurements.
    cellar_node::engine::set_memory_images(false);
    cellar_node::engine::set_memory_images(true);
    if args.parts.iter().any(|p| p == "checkpoints") {
        checkpoints_and_restarts(args, &mut report)?;
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn checkpoints_and_restarts(args: &MemoryBenchArgs, report: &mut Report) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let options = || {
        let mut options = NodeOptions::new(dir.path());
        options.durability = Durability::Process;
        options.checkpoint_interval = u64::MAX;
        options
    };
    let me = Principal::anonymous();
    let id;
    {
        let node = Node::open(options())?;
        id = node.create(&me, vec![])?;
        node.install(
            &me,
            &id,
            InstallMode::Install,
            cellar_examples::testbed(),
            None,
        )?;
        eprintln!("checkpoints: growing the heap");
        node.update(&me, &id, "grow-heap", Args::Wave("1000".into()))?
            .result
            .map_err(|r| anyhow::anyhow!("{r}"))?;
        node.checkpoint()?;
        // The largest first, right after the heap's checkpoint (its flush
        // done, its compaction under way); then each from a quiet store
        // (no flush or compaction running).
        let largest = args.pages.iter().copied().max();
        let runs = largest
            .map(|k| (k, false))
            .into_iter()
            .chain(args.pages.iter().map(|&k| (k, true)));
        for (k, quiet) in runs {
            node.update(&me, &id, "write-pages", Args::Wave(format!("{k}, {k}")))?
                .result
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            let store = if !quiet {
                node.settle_checkpoint()?;
                "after 1 GiB written"
            } else if node.quiesce_checkpoints(Duration::from_secs(120))? {
                "quiet"
            } else {
                "busy (2 min)"
            };
            let started = Instant::now();
            node.start_checkpoint()?;
            let round_millis = started.elapsed().as_secs_f64() * 1e3;
            let stats = node.wait_for_checkpoint()?;
            let millis = started.elapsed().as_secs_f64() * 1e3;
            report.checkpoints.push(CheckpointRow {
                store,
                dirty_pages: u64::from(k),
                pages_written: stats.pages,
                round_millis,
                millis,
                build_millis: stats.build_micros as f64 / 1e3,
                commit_millis: stats.commit_micros as f64 / 1e3,
                sync_millis: stats.sync_micros as f64 / 1e3,
            });
        }
    }
    let state_mib = {
        let node = Node::open(options())?;
        node.execution_state(&id)?.heap.resident_bytes() >> 20
    };
    let started = Instant::now();
    let node = Node::open(options()).context("restart")?;
    report.restarts.push(RestartRow {
        how: "in-process",
        state_mib,
        millis: started.elapsed().as_secs_f64() * 1e3,
    });
    drop(node);
    // What a user sees: a new `cellar start` on the same data dir, until
    // its API answers (its status includes the state hash: every page is
    // hashed once after loading). The first start also deploys the example
    // canisters (and checkpoints them); the next ones only restart.
    for how in ["cellar start 1", "cellar start 2", "cellar start 3"] {
        eprintln!("restart: {how} on the data dir");
        report.restarts.push(RestartRow {
            how,
            state_mib,
            millis: node_process_start(dir.path())?.as_secs_f64() * 1e3,
        });
    }
    Ok(())
}

/// Runs `cellar start` on `data_dir` until its status endpoint answers,
/// stops it (SIGINT, as Ctrl-C) and returns how long it took to answer.
fn node_process_start(data_dir: &std::path::Path) -> Result<Duration> {
    use std::io::{Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let started = Instant::now();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("start")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--listen")
        .arg(addr.to_string())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("cannot start a node process")?;
    let answered = loop {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("the node process exited before answering: {status}");
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "the node process did not answer within 120 s"
        );
        let answer = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100))
            .and_then(|mut stream| {
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                stream.write_all(
                    b"GET /api/v1/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                )?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head)?;
                Ok(head)
            });
        match answer {
            Ok(head) if head.starts_with(b"HTTP/1.1 200") => break started.elapsed(),
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    // SAFETY: signals our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let stopping = Instant::now();
    while child.try_wait()?.is_none() {
        if stopping.elapsed() > Duration::from_secs(30) {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("the node process did not stop within 30 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(answered)
}

fn print_table(report: &Report) {
    println!("Message cost (median per message)");
    println!(
        "{:<12} {:>4} {:<6} {:>6} {:>12} {:>10} {:>7} {:>7} {:>10} {:>10} {:>10}",
        "tracker",
        "GiB",
        "access",
        "pages",
        "µs/message",
        "µs/page",
        "faults",
        "dirty",
        "setup µs",
        "call µs",
        "commit µs"
    );
    for row in &report.messages {
        println!(
            "{:<12} {:>4} {:<6} {:>6} {:>12.1} {:>10.2} {:>7} {:>7} {:>10.1} {:>10.1} {:>10.1}",
            row.tracker,
            row.heap_gib,
            row.access,
            row.pages,
            row.micros_per_message,
            row.micros_per_page,
            row.faults,
            row.dirty_pages,
            row.setup_micros,
            row.call_micros,
            row.commit_micros
        );
    }
    println!("\nCheckpoint (1 GiB heap)");
    println!(
        "{:<20} {:>12} {:>14} {:>10} {:>12} {:>9} {:>10} {:>8}",
        "store",
        "dirty pages",
        "pages written",
        "round ms",
        "durable ms",
        "build ms",
        "commit ms",
        "sync ms"
    );
    for row in &report.checkpoints {
        println!(
            "{:<20} {:>12} {:>14} {:>10.2} {:>12.1} {:>9.1} {:>10.1} {:>8.1}",
            row.store,
            row.dirty_pages,
            row.pages_written,
            row.round_millis,
            row.millis,
            row.build_millis,
            row.commit_millis,
            row.sync_millis
        );
    }
    println!("\nRestart");
    println!("{:<14} {:>12} {:>10}", "how", "state MiB", "ms");
    for row in &report.restarts {
        println!("{:<14} {:>12} {:>10.1}", row.how, row.state_mib, row.millis);
    }
}

//! Rounds, input queues, inter-canister calls, timers and cycles, through a
//! real node with real components.

use std::path::Path;

use cellar_node::{Node, NodeOptions};
use cellar_tests::{alice, bob, options, reply, wave};
use cellar_types::Principal;
use cellar_types::api::InstallMode;

fn deploy(node: &Node, example: &str) -> Principal {
    let id = node.create(&alice(), vec![]).unwrap();
    let e = cellar_examples::get(example).unwrap();
    node.install(
        &alice(),
        &id,
        InstallMode::Install,
        e.wasm,
        e.init_arg.map(str::to_string),
    )
    .unwrap();
    id
}

fn call(node: &Node, id: &Principal, method: &str, args: &str) -> Result<String, String> {
    // A replica executes only signed requests from signed callers; these
    // tests sign nothing, so there they call as the anonymous principal.
    let caller = if node.is_replica() {
        Principal::anonymous()
    } else {
        alice()
    };
    match node.update(&caller, id, method, wave(args)).unwrap().result {
        Ok(values) => Ok(cellar_engine::results_to_wave(&values).unwrap()),
        Err(reject) => Err(reject.to_string()),
    }
}

fn query(node: &Node, id: &Principal, method: &str, args: &str) -> String {
    reply(node.query(&bob(), id, method, wave(args)).unwrap())
}

fn text(id: &Principal) -> String {
    format!("\"{}\"", id.to_text())
}

#[test]
fn a_canister_awaits_typed_replies_from_another() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path(), 1000)).unwrap();
    let kv = deploy(&node, "kv");
    let relay = deploy(&node, "relay");
    call(&node, &kv, "add", "\"apple\", 5").unwrap();

    let before = node.round();
    let got = call(
        &node,
        &relay,
        "lookup",
        &format!("{}, \"apple\"", text(&kv)),
    );
    assert_eq!(got.unwrap(), "some(5)");
    // Request in one round, reply in the next, callback in the one after.
    assert!(
        node.round() - before >= 3,
        "{} rounds",
        node.round() - before
    );
    assert_eq!(
        call(&node, &relay, "lookup", &format!("{}, \"pear\"", text(&kv))).unwrap(),
        "none"
    );
    // Two calls in sequence from one task; the write persists in kv.
    assert_eq!(
        call(
            &node,
            &relay,
            "store-and-read",
            &format!("{}, \"pear\", 9", text(&kv))
        )
        .unwrap(),
        "some(9)"
    );
    assert_eq!(query(&node, &kv, "get", "\"pear\""), "some(9)");
    // Raw WAVE forwarding, also to a query method.
    assert_eq!(
        call(
            &node,
            &relay,
            "forward",
            &format!("{}, \"get\", \"(\\\"apple\\\")\"", text(&kv))
        )
        .unwrap(),
        "\"some(5)\""
    );
    assert_eq!(query(&node, &relay, "stats", ""), "(5, 0, 0)");
}

#[test]
fn every_call_failure_gives_a_defined_reject() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path(), 1000)).unwrap();
    let kv = deploy(&node, "kv");
    let testbed = deploy(&node, "testbed");
    let relay = deploy(&node, "relay");

    // A canister that does not exist.
    let missing = Principal::canister(999);
    let err = call(
        &node,
        &relay,
        "forward",
        &format!("{}, \"get\", \"()\"", text(&missing)),
    )
    .unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    // An unknown method, and bad arguments.
    let err = call(
        &node,
        &relay,
        "forward",
        &format!("{}, \"nope\", \"()\"", text(&kv)),
    )
    .unwrap_err();
    assert!(err.contains("no method"), "{err}");
    let err = call(
        &node,
        &relay,
        "forward",
        &format!("{}, \"get\", \"(1)\"", text(&kv)),
    )
    .unwrap_err();
    assert!(err.contains("bad arguments"), "{err}");
    // A callee that traps: its changes roll back, the caller gets the trap.
    let err = call(
        &node,
        &relay,
        "forward",
        &format!(
            "{}, \"set-then-trap\", \"(\\\"k\\\", \\\"v\\\")\"",
            text(&testbed)
        ),
    )
    .unwrap_err();
    assert!(err.contains("trapped"), "{err}");
    assert_eq!(query(&node, &testbed, "get", "\"k\""), "none");
    // A caller that traps in its callback: the waiting message is rejected.
    let err = call(
        &node,
        &relay,
        "trap-in-callback",
        &format!("{}, \"increment\"", text(&deploy(&node, "counter"))),
    )
    .unwrap_err();
    assert!(err.contains("failed in a callback"), "{err}");
    // A stopped callee.
    node.stop(&alice(), &kv).unwrap();
    let err = call(&node, &relay, "lookup", &format!("{}, \"a\"", text(&kv))).unwrap_err();
    assert!(err.contains("stopped"), "{err}");
    // Nothing is left waiting, and the relay still works.
    node.start(&alice(), &kv).unwrap();
    assert_eq!(node.run_until_idle(100).unwrap(), 0);
    assert_eq!(
        call(&node, &relay, "lookup", &format!("{}, \"a\"", text(&kv))).unwrap(),
        "none"
    );
}

#[test]
fn a_full_input_queue_rejects_what_does_not_fit_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path(), 1000)).unwrap();
    let counter = deploy(&node, "counter");
    let relay = deploy(&node, "relay");
    let capacity = 500;
    // 600 calls in one message: they reach the counter's queue in one round.
    let replied = call(
        &node,
        &relay,
        "fan-out",
        &format!("{}, \"increment\", 600", text(&counter)),
    )
    .unwrap();
    assert_eq!(replied, capacity.to_string());
    assert_eq!(query(&node, &counter, "get", ""), capacity.to_string());
    assert_eq!(
        query(&node, &relay, "stats", ""),
        format!("({capacity}, 100, 0)")
    );
}

/// Runs a workload of calls between canisters and returns the data dir.
fn busy_workload(dir: &Path, threads: usize) -> [u8; 32] {
    let mut opts = options(dir, 1000);
    opts.execution_threads = threads;
    let node = Node::open(opts).unwrap();
    let counters: Vec<Principal> = (0..3).map(|_| deploy(&node, "counter")).collect();
    let relays: Vec<Principal> = (0..3).map(|_| deploy(&node, "relay")).collect();
    let kv = deploy(&node, "kv");
    std::thread::scope(|s| {
        for (i, relay) in relays.iter().enumerate() {
            let node = &node;
            let counters = &counters;
            let kv = &kv;
            s.spawn(move || {
                for round in 0..4 {
                    let target = &counters[(i + round) % counters.len()];
                    call(
                        node,
                        relay,
                        "fan-out",
                        &format!("{}, \"increment\", 20", text(target)),
                    )
                    .unwrap();
                    call(
                        node,
                        relay,
                        "store-and-read",
                        &format!("{}, \"k{i}\", {round}", text(kv)),
                    )
                    .unwrap();
                }
            });
        }
    });
    node.state_hash()
}

fn copy_journal(from: &Path, to: &Path) {
    for sub in ["state", "modules"] {
        std::fs::create_dir_all(to.join(sub)).unwrap();
        for entry in std::fs::read_dir(from.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if sub == "modules" || path.extension().is_some_and(|e| e == "log") {
                std::fs::copy(&path, to.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
}

#[test]
fn the_thread_count_never_changes_the_state() {
    // A live run on 2 threads, with concurrent clients, replayed on 1 and on
    // 4 threads: every replay reaches the same state hash.
    let live = tempfile::tempdir().unwrap();
    let hash = busy_workload(live.path(), 2);
    for threads in [1, 4] {
        let replay = tempfile::tempdir().unwrap();
        copy_journal(live.path(), replay.path());
        let mut opts = options(replay.path(), 1000);
        opts.execution_threads = threads;
        let node = Node::open(opts).unwrap();
        assert_eq!(
            node.state_hash(),
            hash,
            "replay on {threads} threads differs"
        );
    }
}

#[test]
fn timers_fire_in_rounds_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay;
    {
        let node = Node::open(options(dir.path(), 1000)).unwrap();
        relay = deploy(&node, "relay");
        // One-shot, due at once.
        call(&node, &relay, "start-timer", "0, none").unwrap();
        node.run_until_idle(10).unwrap();
        assert_eq!(query(&node, &relay, "ticks", ""), "1");
        node.run_until_idle(10).unwrap();
        assert_eq!(
            query(&node, &relay, "ticks", ""),
            "1",
            "a one-shot timer fires once"
        );
        // Periodic every millisecond: it keeps firing while rounds run.
        let id = call(&node, &relay, "start-timer", "0, some(1000000)").unwrap();
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            node.tick().unwrap();
        }
        let ticks: u64 = query(&node, &relay, "ticks", "").parse().unwrap();
        assert!(ticks >= 4, "{ticks} ticks");
        node.checkpoint().unwrap();
        drop(node);
        let node = Node::open(options(dir.path(), 1000)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        node.tick().unwrap();
        let after: u64 = query(&node, &relay, "ticks", "").parse().unwrap();
        assert!(after > ticks, "the periodic timer survived the restart");
        assert_eq!(call(&node, &relay, "stop-timer", &id).unwrap(), "true");
        node.run_until_idle(10).unwrap();
        let stopped: u64 = query(&node, &relay, "ticks", "").parse().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(3));
        assert_eq!(node.run_until_idle(10).unwrap(), 0);
        assert_eq!(query(&node, &relay, "ticks", ""), stopped.to_string());
    }
}

#[test]
fn a_canister_that_runs_dry_is_frozen_until_topped_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts: NodeOptions = options(dir.path(), 1000);
    opts.limits.update_instructions = 1_000_000_000;
    let threshold = 590_000 + 1_000_000_000 / 10 * 4;
    opts.initial_cycles = threshold + 20_000_000;
    let node = Node::open(opts).unwrap();
    let relay = deploy(&node, "relay");
    let mut frozen = None;
    for i in 0..200 {
        match call(&node, &relay, "burn", "1000000") {
            Ok(_) => {}
            Err(e) => {
                frozen = Some((i, e));
                break;
            }
        }
    }
    let (i, err) = frozen.expect("the canister never froze");
    assert!(i > 0, "the first message already failed: {err}");
    assert!(err.contains("frozen") && err.contains("top-up"), "{err}");
    let balance = node.status(&relay).unwrap().cycles;
    assert!(balance < threshold);
    // Queries still work; top-up (by anyone) unfreezes.
    assert_eq!(query(&node, &relay, "ticks", ""), "0");
    node.top_up(&bob(), &relay, 1_000_000_000_000).unwrap();
    call(&node, &relay, "burn", "1000").unwrap();
    // Every message cost something.
    assert!(node.status(&relay).unwrap().cycles < balance + 1_000_000_000_000);
}

#[test]
fn a_flood_from_many_canisters_does_not_delay_a_light_one() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path(), 1000)).unwrap();
    let light = deploy(&node, "counter");
    let targets: Vec<Principal> = (0..4).map(|_| deploy(&node, "counter")).collect();
    let relays: Vec<Principal> = (0..4).map(|_| deploy(&node, "relay")).collect();
    std::thread::scope(|s| {
        for (relay, target) in relays.iter().zip(&targets) {
            let node = &node;
            s.spawn(move || {
                call(
                    node,
                    relay,
                    "fan-out",
                    &format!("{}, \"increment\", 400", text(target)),
                )
                .unwrap();
            });
        }
        // Let the flood reach the queues, then send the light call.
        let start = std::time::Instant::now();
        while targets.iter().all(|t| query(&node, t, "get", "") == "0")
            && start.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::yield_now();
        }
        let before = node.round();
        assert_eq!(call(&node, &light, "increment", "").unwrap(), "1");
        // At most: the round running when it was sent, the round that had
        // already taken its batch, and the round that runs it.
        let waited = node.round() - before;
        assert!(waited <= 3, "the light call waited {waited} rounds");
    });
}

#[test]
fn the_scheduler_policy_is_swapped_at_a_round_boundary_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let (kv, hash_with_policy);
    {
        let node = Node::open(options(dir.path(), 1000)).unwrap();
        kv = deploy(&node, "kv");
        assert_eq!(node.policy_info().scheduler_module_hash, None);
        // Only components that are scheduler policies, from signed callers.
        let err = node
            .set_scheduler_policy(&alice(), Some(cellar_examples::get("kv").unwrap().wasm))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a scheduler policy"), "{err}");
        let err = node
            .set_scheduler_policy(&Principal::anonymous(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("anonymous"), "{err}");

        let before = node.state_hash();
        let rr = cellar_examples::scheduler_policy("round-robin").unwrap();
        let info = node.set_scheduler_policy(&alice(), Some(rr)).unwrap();
        assert!(info.scheduler_module_hash.is_some());
        assert_ne!(node.state_hash(), before, "the policy is replicated state");
        for i in 0..20 {
            call(&node, &kv, "add", &format!("\"k{i}\", {i}")).unwrap();
        }
        assert_eq!(node.policy_info().last_fallback_round, None);
        hash_with_policy = node.state_hash();
    }
    // Replayed from the journal: same policy, same state.
    {
        let node = Node::open(options(dir.path(), 1000)).unwrap();
        assert_eq!(node.state_hash(), hash_with_policy);
        assert!(node.policy_info().scheduler_module_hash.is_some());
        node.checkpoint().unwrap();
    }
    // From the checkpoint.
    let node = Node::open(options(dir.path(), 1000)).unwrap();
    assert_eq!(node.state_hash(), hash_with_policy);
    assert_eq!(query(&node, &kv, "get", "\"k7\""), "some(7)");

    // A policy that misbehaves every other way: the default runs for those
    // rounds, the reason is kept, and nothing is lost.
    node.set_scheduler_policy(&alice(), Some(cellar_examples::MISBEHAVING_POLICY))
        .unwrap();
    for i in 0..20 {
        call(&node, &kv, "add", &format!("\"m{i}\", {i}")).unwrap();
    }
    let info = node.policy_info();
    assert!(info.last_fallback_round.is_some(), "{info:?}");
    assert!(!info.last_fallback_reason.unwrap().is_empty());
    assert_eq!(query(&node, &kv, "get", "\"m19\""), "some(19)");
    // Back to the built-in default.
    node.set_scheduler_policy(&alice(), None).unwrap();
    assert_eq!(node.policy_info().scheduler_module_hash, None);
}

/// Node options with small slices, so `burn` runs across rounds.
fn sliced_options(dir: &Path, slice: u64, checkpoint_interval: u64) -> NodeOptions {
    let mut opts = options(dir, checkpoint_interval);
    opts.limits.slice_instructions = slice;
    opts.limits.update_instructions = 50 * slice;
    opts
}

#[test]
fn a_long_message_runs_across_rounds_and_others_wait_for_it() {
    let iterations = "20000000";
    // The reference: one slice is enough.
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path(), 1000)).unwrap();
        let relay = deploy(&node, "relay");
        let before = node.round();
        let value = call(&node, &relay, "burn", iterations).unwrap();
        assert_eq!(node.round() - before, 1);
        value
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(sliced_options(dir.path(), 20_000_000, 1000)).unwrap();
    let relay = deploy(&node, "relay");
    let kv = deploy(&node, "kv");
    call(&node, &relay, "start-timer", "1000000000000, none").unwrap();
    std::thread::scope(|s| {
        let long = s.spawn(|| {
            let before = node.round();
            let value = call(&node, &relay, "burn", iterations).unwrap();
            (value, node.round() - before)
        });
        // While it runs across rounds: queries answer from the state before
        // it, other canisters run, and the relay's next message waits. It
        // needs about 20 slices, so three rounds in it is still running.
        let start_round = node.round();
        let start = std::time::Instant::now();
        while node.round() < start_round + 3
            && start.elapsed() < std::time::Duration::from_secs(120)
        {
            std::thread::yield_now();
        }
        assert!(!long.is_finished(), "the message did not run across rounds");
        assert_eq!(query(&node, &relay, "ticks", ""), "0");
        call(&node, &kv, "add", "\"during\", 1").unwrap();
        let (value, rounds) = long.join().unwrap();
        assert_eq!(value, reference, "slicing changed the result");
        assert!(rounds >= 3, "it took {rounds} rounds");
    });
    assert_eq!(node.paused_executions(), 0);
    assert_eq!(query(&node, &kv, "get", "\"during\""), "some(1)");
    // Replayed from the journal, with the same slices: the same state.
    let hash = node.state_hash();
    drop(node);
    let node = Node::open(sliced_options(dir.path(), 20_000_000, 1000)).unwrap();
    assert_eq!(node.state_hash(), hash);
}

#[test]
fn a_checkpoint_during_a_long_message_restarts_it_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Slices of 20 M instructions, at most 50 per message, checkpoints every
    // 60 rounds: sooner or later a checkpoint lands inside a message.
    let node = Node::open(sliced_options(dir.path(), 20_000_000, 60)).unwrap();
    let relay = deploy(&node, "relay");
    let mut values = Vec::new();
    while node.aborted_executions() == 0 && values.len() < 60 {
        values.push(call(&node, &relay, "burn", "15000000").unwrap());
    }
    assert!(
        node.aborted_executions() > 0,
        "no checkpoint fell inside a message"
    );
    assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
    let hash = node.state_hash();
    drop(node);
    let node = Node::open(sliced_options(dir.path(), 20_000_000, 60)).unwrap();
    assert_eq!(node.state_hash(), hash);
    assert_eq!(node.paused_executions(), 0);
    // A checkpoint interval too short for the longest message makes the
    // slices bigger: messages still finish.
    drop(node);
    let node = Node::open(sliced_options(dir.path(), 20_000_000, 10)).unwrap();
    let before = node.aborted_executions();
    assert_eq!(call(&node, &relay, "burn", "15000000").unwrap(), values[0]);
    assert_eq!(node.paused_executions(), 0);
    assert_eq!(node.aborted_executions(), before);
}

/// A query's reply or reject, as WAVE or the reject's text.
fn try_query(node: &Node, id: &Principal, method: &str, args: &str) -> Result<String, String> {
    match node.query(&bob(), id, method, wave(args)).unwrap().result {
        Ok(values) => Ok(cellar_engine::results_to_wave(&values).unwrap()),
        Err(reject) => Err(reject.to_string()),
    }
}

/// `"<callee>", "<method>", "<args>"` for relay's forwarding methods.
fn forward_args(callee: &Principal, method: &str, args: &str) -> String {
    let args = args.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{}, \"{method}\", \"{args}\"", text(callee))
}

#[test]
fn a_composite_query_awaits_queries_and_nothing_persists() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path(), 1000)).unwrap();
    let kv = deploy(&node, "kv");
    let testbed = deploy(&node, "testbed");
    let relay = deploy(&node, "relay");
    let other = deploy(&node, "relay");
    call(&node, &kv, "add", "\"apple\", 5").unwrap();
    call(&node, &testbed, "set", "\"k\", \"v\"").unwrap();
    let (round, hash) = (node.round(), node.state_hash());

    // A reply, through the Rust SDK's async calls, without any round.
    assert_eq!(
        try_query(
            &node,
            &relay,
            "forward-query",
            &forward_args(&kv, "get", "(\"apple\")")
        )
        .unwrap(),
        "\"some(5)\""
    );
    // The caller's own changes carry over to its callback (the counter is 2
    // there), and are discarded after: the next probe sees 2 again. The
    // callee's write (in a query) is discarded too.
    for _ in 0..2 {
        assert_eq!(
            try_query(
                &node,
                &relay,
                "probe",
                &forward_args(&testbed, "write-in-query", "(\"new\", \"x\")")
            )
            .unwrap(),
            "(2, \"2\")"
        );
    }
    assert_eq!(query(&node, &testbed, "count", ""), "1");
    // Nested composite queries: relay -> other -> relay -> other.
    let hops = format!("[{}, {}, {}]", text(&other), text(&relay), text(&other));
    assert_eq!(try_query(&node, &relay, "chain", &hops).unwrap(), "3");
    // Several calls in sequence; plain queries of the caller itself too.
    assert_eq!(
        try_query(
            &node,
            &relay,
            "repeat",
            &format!("{}, 3", forward_args(&relay, "spin", "(10)"))
        )
        .unwrap(),
        "3"
    );
    // Nothing ran in a round and nothing changed.
    assert_eq!(node.round(), round);
    assert_eq!(node.state_hash(), hash);
    assert_eq!(query(&node, &relay, "stats", ""), "(0, 0, 0)");
}

#[test]
fn composite_query_failures_give_defined_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 1000);
    opts.limits.composite_query_instructions = 50_000_000;
    let node = Node::open(opts).unwrap();
    let kv = deploy(&node, "kv");
    let relay = deploy(&node, "relay");
    let hash = node.state_hash();
    let forward = |callee: &Principal, method: &str, args: &str| {
        try_query(
            &node,
            &relay,
            "forward-query",
            &forward_args(callee, method, args),
        )
    };

    // An update method called from a query.
    let err = forward(&kv, "add", "(\"apple\", 1)").unwrap_err();
    assert!(err.contains("cannot call the update method"), "{err}");
    // A missing canister, a missing method.
    let err = forward(&Principal::canister(999), "get", "(\"a\")").unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    let err = forward(&kv, "nope", "()").unwrap_err();
    assert!(err.contains("no method"), "{err}");
    // A callee that traps.
    let err = forward(&relay, "fail", "(\"on purpose\")").unwrap_err();
    assert!(err.contains("trapped"), "{err}");
    // Calls nested too deep.
    let hops = format!("[{}]", vec![text(&relay); 8].join(", "));
    let err = try_query(&node, &relay, "chain", &hops).unwrap_err();
    assert!(err.contains("nest at most"), "{err}");
    let hops = format!("[{}]", vec![text(&relay); 6].join(", "));
    assert_eq!(try_query(&node, &relay, "chain", &hops).unwrap(), "6");
    // The total instruction limit over the call graph: each spin fits the
    // per-query limit, 40 of them do not fit the graph's.
    let err = try_query(
        &node,
        &relay,
        "repeat",
        &format!("{}, 40", forward_args(&relay, "spin", "(500000)")),
    )
    .unwrap_err();
    assert!(err.contains("exceeded its limit"), "{err}");
    // A composite query sent as an update is rejected, as on the IC.
    let err = call(
        &node,
        &relay,
        "forward-query",
        &forward_args(&kv, "get", "(\"a\")"),
    )
    .unwrap_err();
    assert!(err.contains("composite query"), "{err}");
    // And so is a composite query called by another canister's update.
    let err = call(
        &node,
        &relay,
        "forward",
        &forward_args(&relay, "chain", "([])"),
    )
    .unwrap_err();
    assert!(err.contains("composite query"), "{err}");
    // The failures left nothing behind but the two update calls' rounds.
    assert_eq!(query(&node, &relay, "stats", ""), "(0, 1, 0)");
    assert_ne!(node.state_hash(), hash);
}

/// A finalized batch as a replica executes it: height, time, items.
type Batch = (u64, u64, Vec<([u8; 32], Vec<u8>)>);

/// A node in replica mode whose requests are captured instead of going to
/// consensus: the test finalizes them itself, and keeps the batches to
/// feed them to other nodes.
struct Subnet {
    node: Node,
    requests: std::sync::mpsc::Receiver<([u8; 32], Vec<u8>)>,
    batches: Vec<Batch>,
}

impl Subnet {
    fn new(opts: NodeOptions) -> Self {
        let node = Node::open(opts).unwrap();
        let (tx, requests) = std::sync::mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let next = std::sync::atomic::AtomicU64::new(1);
        node.set_replica_sink(Box::new(move |content, _expiry_ms| {
            let mut id = [0u8; 32];
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            id[..8].copy_from_slice(&n.to_le_bytes());
            tx.lock().unwrap().send((id, content)).unwrap();
            Ok(id)
        }));
        Subnet {
            node,
            requests,
            batches: Vec::new(),
        }
    }

    /// Runs `request` on a thread, finalizes it, then empty heights until
    /// nothing is paused or queued; returns its answer.
    fn run<T: Send>(&mut self, request: impl FnOnce(&Node) -> T + Send) -> T {
        let Subnet {
            node,
            requests,
            batches,
        } = self;
        let node = &*node;
        std::thread::scope(|s| {
            let handle = s.spawn(move || request(node));
            let item = requests.recv().unwrap();
            finalize(node, batches, vec![item]);
            while node.paused_executions() > 0 || node.queued_messages() > 0 {
                finalize(node, batches, Vec::new());
            }
            handle.join().unwrap()
        })
    }
}

/// Finalizes the next height of `node` with `items` (the time follows from
/// the height) and keeps the batch.
fn finalize(node: &Node, batches: &mut Vec<Batch>, items: Vec<([u8; 32], Vec<u8>)>) {
    let height = node.round() + 1;
    let time = 1_700_000_000_000_000_000 + height * 1_000_000_000;
    assert!(node.apply_finalized(height, time, &items).unwrap());
    batches.push((height, time, items));
}

#[test]
fn a_restart_keeps_paused_executions_so_replicas_agree() {
    // Checkpoints every 1000 rounds: no message meets one. Every 10 rounds
    // (slices grow to ~111 M instructions, 3 per message): three messages
    // in a row meet the checkpoint at height 10, which aborts and restarts
    // one of them on every replica.
    for (interval, messages) in [(1000, 1), (10, 3)] {
        let opts = |dir: &Path| sliced_options(dir, 20_000_000, interval);
        // Replica A never stops.
        let a_dir = tempfile::tempdir().unwrap();
        let mut a = Subnet::new(opts(a_dir.path()));
        let relay = a.run(|n| n.create(&Principal::anonymous(), vec![]).unwrap());
        let e = cellar_examples::get("relay").unwrap();
        a.run(|n| {
            n.install(
                &Principal::anonymous(),
                &relay,
                InstallMode::Install,
                e.wasm,
                None,
            )
            .unwrap()
        });
        let mut values = Vec::new();
        for _ in 0..messages {
            values.push(a.run(|n| {
                reply(
                    n.update(&Principal::anonymous(), &relay, "burn", wave("15000000"))
                        .unwrap(),
                )
            }));
        }
        assert!(values.windows(2).all(|w| w[0] == w[1]), "{values:?}");
        assert_eq!(a.node.aborted_executions() > 0, interval == 10);
        let hash = a.node.state_hash();

        // Replica B executes the same batches and restarts (from its own
        // directory) twice while a message is paused, at rounds that are
        // not checkpoint rounds.
        let b_dir = tempfile::tempdir().unwrap();
        let open_b = || Node::open(opts(b_dir.path())).unwrap();
        let mut b = open_b();
        let mut paused_heights = 0;
        for (height, time, items) in &a.batches {
            assert!(b.apply_finalized(*height, *time, items).unwrap());
            if b.paused_executions() > 0 {
                paused_heights += 1;
                if paused_heights == 2 || paused_heights == 4 {
                    drop(b);
                    b = open_b();
                    assert_eq!(b.round(), *height);
                    assert_eq!(b.paused_executions(), 1, "the restart lost the execution");
                }
            }
        }
        assert!(paused_heights >= 4, "{paused_heights} heights paused");
        assert_eq!(b.paused_executions(), 0);
        assert_eq!(
            b.state_hash(),
            hash,
            "the restarted replica diverged (checkpoints every {interval})"
        );
        // Restarted once more, it still agrees.
        drop(b);
        assert_eq!(open_b().state_hash(), hash);
    }
}

#[test]
fn deleting_or_stopping_a_canister_answers_everything_queued_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut subnet = Subnet::new(sliced_options(dir.path(), 20_000_000, 1000));
    let deploy_relay = |subnet: &mut Subnet| {
        let id = subnet.run(|n| n.create(&Principal::anonymous(), vec![]).unwrap());
        let e = cellar_examples::get("relay").unwrap();
        subnet.run(|n| {
            n.install(
                &Principal::anonymous(),
                &id,
                InstallMode::Install,
                e.wasm,
                None,
            )
            .unwrap()
        });
        id
    };
    let caller = deploy_relay(&mut subnet);
    let doomed = deploy_relay(&mut subnet);
    let stopped = deploy_relay(&mut subnet);
    let Subnet {
        node,
        requests,
        batches,
    } = &mut subnet;
    let node = &*node;
    std::thread::scope(|s| {
        let (caller, doomed, stopped) = (&caller, &doomed, &stopped);
        macro_rules! submit {
            ($request:expr) => {{
                let handle = s.spawn(move || $request);
                (handle, requests.recv().unwrap())
            }};
        }
        // Height 1: a long message on each of the two canisters (they pause),
        // a short one queued behind each, and a call from another canister
        // to `doomed` (its request reaches the queue at the end of the round).
        let long = "15000000";
        let (doomed_long, i1) = submit!(call(node, doomed, "burn", long));
        let (doomed_short, i2) = submit!(call(node, doomed, "burn", "1"));
        let (stopped_long, i3) = submit!(call(node, stopped, "burn", long));
        let (stopped_short, i4) = submit!(call(node, stopped, "burn", "1"));
        let (forwarded, i5) = submit!(call(
            node,
            caller,
            "forward",
            &forward_args(doomed, "burn", "(1)")
        ));
        finalize(node, batches, vec![i1, i2, i3, i4, i5]);
        assert_eq!(node.paused_executions(), 2);
        // Height 2: delete one, stop the other.
        let (deleted, i6) = submit!(
            node.delete(&Principal::anonymous(), doomed)
                .map_err(|e| e.to_string())
        );
        let (stop, i7) = submit!(
            node.stop(&Principal::anonymous(), stopped)
                .map_err(|e| e.to_string())
        );
        finalize(node, batches, vec![i6, i7]);
        while node.paused_executions() > 0 || node.queued_messages() > 0 {
            finalize(node, batches, Vec::new());
        }
        deleted.join().unwrap().unwrap();
        stop.join().unwrap().unwrap();
        // Every waiter got a reject: the deleted canister's queued ingress
        // (the paused one included) at once, its queued request as a reject
        // response that ran the caller's callback, which rejected in turn.
        for handle in [doomed_long, doomed_short, forwarded] {
            let err = handle.join().unwrap().unwrap_err();
            assert!(err.contains("was deleted"), "{err}");
        }
        for handle in [stopped_long, stopped_short] {
            let err = handle.join().unwrap().unwrap_err();
            assert!(err.contains("stopped"), "{err}");
        }
    });
    assert_eq!(query(&subnet.node, &caller, "stats", ""), "(0, 1, 0)");
    assert_eq!(subnet.node.queued_messages(), 0);
}

/// Executes `calls` (method, WAVE arguments) to `id` as one replicated
/// batch: all of them are inducted into the same round.
fn one_round(node: &Node, id: &Principal, calls: &[(&str, &str)]) {
    let items: Vec<([u8; 32], Vec<u8>)> = calls
        .iter()
        .enumerate()
        .map(|(i, (method, args))| {
            let content = serde_json::json!({
                "ingress": {
                    "caller": Principal::anonymous().to_text(),
                    "op": {
                        "op": "call",
                        "id": id.to_text(),
                        "method": method,
                        "args": serde_json::to_value(wave(args)).unwrap(),
                    },
                },
                "module": null,
                "nonce": i,
            });
            ([i as u8; 32], serde_json::to_vec(&content).unwrap())
        })
        .collect();
    assert!(node.apply_finalized(node.round() + 1, 0, &items).unwrap());
}

#[test]
fn the_round_dirty_page_budget_defers_messages_to_the_next_round() {
    // Three messages that each change ~85 pages arrive in one round. The
    // rounds that follow depend on the budget only; the heap they leave
    // does not depend on it at all.
    let run = |budget: u64| {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), 1000);
        opts.round_dirty_pages = budget;
        let node = Node::open(opts).unwrap();
        let testbed = deploy(&node, "testbed");
        call(&node, &testbed, "grow-heap", "1").unwrap();
        one_round(
            &node,
            &testbed,
            &[
                ("write-pages", "100, 1"),
                ("write-pages", "100, 2"),
                ("write-pages", "100, 3"),
            ],
        );
        let later_rounds = node.run_until_idle(10).unwrap();
        let sum = call(&node, &testbed, "read-pages", "100, 2").unwrap();
        (
            later_rounds,
            sum,
            node.execution_state(&testbed).unwrap().heap,
        )
    };
    let (rounds, sum, heap) = run(u64::MAX);
    assert_eq!(rounds, 0, "no budget: all three in one round");
    // After the first message (~85 pages) the second still fits in 150,
    // the third waits.
    let (rounds_150, sum_150, heap_150) = run(150);
    assert_eq!(rounds_150, 1);
    // One message per round.
    let (rounds_1, sum_1, heap_1) = run(1);
    assert_eq!(rounds_1, 2);
    assert_eq!((&sum_150, &sum_1), (&sum, &sum));
    assert!(heap_150 == heap && heap_1 == heap, "the heaps differ");
}

#[test]
fn a_message_over_the_per_message_page_budget_is_rejected_and_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = options(dir.path(), 1000);
    opts.limits.max_dirty_pages_per_message = 200;
    let node = Node::open(opts).unwrap();
    let testbed = deploy(&node, "testbed");
    call(&node, &testbed, "set", "\"a\", \"1\"").unwrap();
    let before = node.execution_state(&testbed).unwrap();
    // 1 MiB of fresh heap: 256 pages and more.
    let err = call(&node, &testbed, "grow-heap", "1").unwrap_err();
    assert!(
        err.contains("the limit is 200 pages") && err.contains("discarded"),
        "{err}"
    );
    assert_eq!(node.execution_state(&testbed).unwrap(), before);
    assert_eq!(query(&node, &testbed, "get", "\"a\""), "some(\"1\")");
    // Smaller messages still go through.
    call(&node, &testbed, "set", "\"b\", \"2\"").unwrap();
    assert_eq!(query(&node, &testbed, "get", "\"b\""), "some(\"2\")");
}

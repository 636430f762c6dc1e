//! A node in-process, on real files: lifecycle, controllers, durability
//! across restarts, upgrades and determinism.

use cellar_engine::{MessageKind, Val};
use cellar_node::{Node, NodeError, NodeOptions};
use cellar_tests::{alice, bob, reply, wave};
use cellar_types::api::{Args, InstallMode, RunStatus};
use cellar_types::{Principal, RejectCode};

fn options(dir: &std::path::Path) -> NodeOptions {
    cellar_tests::options(dir, 1_000)
}

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

#[test]
fn ten_thousand_updates_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let kv;
    {
        let node = Node::open(options(dir.path())).unwrap();
        kv = deploy(&node, "kv");
        for i in 0..5_000u64 {
            let args = wave(&format!("\"k{}\", {i}", i % 100));
            node.update(&alice(), &kv, "add", args)
                .unwrap()
                .result
                .unwrap();
        }
        // Dropped without a checkpoint: the journal carries the tail.
    }
    {
        let node = Node::open(options(dir.path())).unwrap();
        assert_eq!(
            reply(node.query(&bob(), &kv, "get", wave("\"k99\"")).unwrap()),
            "some(4999)"
        );
        for i in 5_000..10_000u64 {
            let args = wave(&format!("\"k{}\", {i}", i % 100));
            node.update(&alice(), &kv, "add", args)
                .unwrap()
                .result
                .unwrap();
        }
        node.checkpoint().unwrap();
    }
    let node = Node::open(options(dir.path())).unwrap();
    for k in [0u64, 42, 99] {
        assert_eq!(
            reply(
                node.query(&bob(), &kv, "get", wave(&format!("\"k{k}\"")))
                    .unwrap()
            ),
            format!("some({})", 9_900 + k)
        );
    }
    assert_eq!(node.status(&kv).unwrap().updates, 10_000 + 1);
}

#[test]
fn a_torn_journal_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let kv;
    {
        let node = Node::open(options(dir.path())).unwrap();
        kv = deploy(&node, "kv");
        node.update(&alice(), &kv, "add", wave("\"a\", 1")).unwrap();
    }
    let journal = std::fs::read_dir(dir.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "log"))
        .unwrap();
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes.extend_from_slice(b"0badc0de {\"round\": 9");
    std::fs::write(&journal, bytes).unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(
        reply(node.query(&bob(), &kv, "get", wave("\"a\"")).unwrap()),
        "some(1)"
    );
    node.update(&alice(), &kv, "add", wave("\"b\", 2")).unwrap();
    assert_eq!(
        reply(node.query(&bob(), &kv, "get", wave("\"b\"")).unwrap()),
        "some(2)"
    );
}

#[test]
fn upgrade_keeps_stable_memory_and_runs_the_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let id = node.create(&alice(), vec![]).unwrap();
    let testbed = cellar_examples::testbed();
    node.install(
        &alice(),
        &id,
        InstallMode::Install,
        testbed,
        Some("some(\"first\")".into()),
    )
    .unwrap();
    node.update(&alice(), &id, "set", wave("\"k\", \"v\""))
        .unwrap()
        .result
        .unwrap();
    node.update(&alice(), &id, "stable-write", wave("0, [7, 7, 7]"))
        .unwrap()
        .result
        .unwrap();
    node.install(
        &alice(),
        &id,
        InstallMode::Upgrade,
        testbed,
        Some("some(\"second\")".into()),
    )
    .unwrap();
    assert_eq!(
        reply(node.query(&bob(), &id, "upgrade-log", wave("")).unwrap()),
        "[\"init:first\", \"post-upgrade:second\"]"
    );
    // pre-upgrade saved the map to stable memory, post-upgrade restored it.
    assert_eq!(
        reply(node.query(&bob(), &id, "get", wave("\"k\"")).unwrap()),
        "some(\"v\")"
    );
    assert_eq!(node.status(&id).unwrap().module_hash.unwrap().len(), 64);

    // Reinstall wipes everything, stable memory included.
    node.install(&alice(), &id, InstallMode::Reinstall, testbed, None)
        .unwrap();
    assert_eq!(
        reply(node.query(&bob(), &id, "get", wave("\"k\"")).unwrap()),
        "none"
    );
    assert_eq!(
        reply(node.query(&bob(), &id, "stable-size", wave("")).unwrap()),
        "0"
    );
}

#[test]
fn only_controllers_change_a_canister() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let kv = deploy(&node, "kv");
    let wasm = cellar_examples::get("kv").unwrap().wasm;
    let refused = |r: Result<_, NodeError>| matches!(r, Err(NodeError::NotController { .. }));
    assert!(refused(node.install(
        &bob(),
        &kv,
        InstallMode::Upgrade,
        wasm,
        None
    )));
    assert!(refused(node.stop(&bob(), &kv)));
    assert!(refused(node.delete(&bob(), &kv)));
    assert!(refused(node.set_controllers(&bob(), &kv, vec![bob()])));
    assert!(refused(node.stop(&Principal::anonymous(), &kv)));
    // Anyone may call.
    node.update(&bob(), &kv, "add", wave("\"x\", 1"))
        .unwrap()
        .result
        .unwrap();
    // A controller hands over control.
    node.set_controllers(&alice(), &kv, vec![bob()]).unwrap();
    assert!(refused(node.stop(&alice(), &kv)));
    assert_eq!(node.stop(&bob(), &kv).unwrap().status, RunStatus::Stopped);
    let stopped = node.update(&alice(), &kv, "add", wave("\"x\", 2")).unwrap();
    assert!(stopped.result.unwrap_err().message.contains("stopped"));
    node.start(&bob(), &kv).unwrap();
    node.delete(&bob(), &kv).unwrap();
    assert!(matches!(node.status(&kv), Err(NodeError::NotFound(_))));
    assert!(matches!(
        node.update(&alice(), &kv, "add", wave("\"x\", 3")),
        Err(NodeError::NotFound(_))
    ));
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let kv = deploy(&node, "kv");
    node.update(&alice(), &kv, "add", wave("\"a\", 1")).unwrap();
    let before = node.execution_state(&kv).unwrap();

    let unknown = node.update(&alice(), &kv, "nope", wave("")).unwrap();
    let reject = unknown.result.unwrap_err();
    assert_eq!(reject.code, RejectCode::DestinationInvalid);
    assert!(reject.message.contains("api.add"), "{}", reject.message);

    let wrong = node.update(&alice(), &kv, "add", wave("1, \"a\"")).unwrap();
    let message = wrong.result.unwrap_err().message;
    assert!(
        message.contains("add: func(key: string, value: u64)"),
        "{message}"
    );

    let as_query = node.query(&alice(), &kv, "add", wave("\"a\", 2")).unwrap();
    assert!(
        as_query
            .result
            .unwrap_err()
            .message
            .contains("update method")
    );

    for garbage in [
        &b"not wasm"[..],
        b"\0asm\x01\0\0\0",
        b"\0asm\x0d\0\x01\0junk",
    ] {
        let err = node.install(&alice(), &kv, InstallMode::Upgrade, garbage, None);
        assert!(matches!(err, Err(NodeError::Install(_))), "{err:?}");
    }
    // A bad init argument fails the install and leaves the canister empty.
    let empty = node.create(&alice(), vec![]).unwrap();
    let counter = cellar_examples::get("counter").unwrap().wasm;
    let err = node.install(
        &alice(),
        &empty,
        InstallMode::Install,
        counter,
        Some("\"x\"".into()),
    );
    assert!(matches!(err, Err(NodeError::BadRequest(_))), "{err:?}");
    assert!(node.status(&empty).unwrap().module_hash.is_none());

    assert_eq!(node.execution_state(&kv).unwrap(), before);
    assert_eq!(
        reply(node.query(&bob(), &kv, "get", wave("\"a\"")).unwrap()),
        "some(1)"
    );
}

#[test]
fn json_arguments_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let ledger = deploy(&node, "ledger");
    let to = bob().to_text();
    let minted = node
        .update(
            &alice(),
            &ledger,
            "mint",
            Args::Json(serde_json::json!([to, 500])),
        )
        .unwrap();
    let values = minted.result.unwrap();
    assert_eq!(
        cellar_engine::results_to_json(&values).unwrap(),
        serde_json::json!({"ok": 500})
    );
    // Bob is not a controller: minting is refused by the canister.
    let refused = node
        .update(
            &bob(),
            &ledger,
            "mint",
            Args::Json(serde_json::json!([to, 1])),
        )
        .unwrap();
    assert!(matches!(
        refused.result.unwrap().as_slice(),
        [Val::Result(Err(_))]
    ));
    let overdraw = node
        .update(
            &bob(),
            &ledger,
            "transfer",
            wave(&format!("\"{}\", 501", alice().to_text())),
        )
        .unwrap();
    assert!(reply(overdraw).starts_with("err(insufficient-funds"));
}

#[test]
fn two_fresh_nodes_fed_the_same_messages_agree() {
    let run = || {
        let dir = tempfile::tempdir().unwrap();
        let node = Node::open(options(dir.path())).unwrap();
        let counter = deploy(&node, "counter");
        let kv = deploy(&node, "kv");
        let mut instructions = Vec::new();
        for i in 0..50u64 {
            instructions.push(
                node.update(&alice(), &counter, "add", wave(&format!("{i}")))
                    .unwrap()
                    .instructions,
            );
            instructions.push(
                node.update(&alice(), &kv, "add", wave(&format!("\"k{i}\", {i}")))
                    .unwrap()
                    .instructions,
            );
        }
        (
            instructions,
            node.execution_state(&counter).unwrap(),
            node.execution_state(&kv).unwrap(),
        )
    };
    let first = run();
    let second = run();
    assert!(first.0.iter().all(|n| *n > 0));
    assert_eq!(first.0, second.0);
    assert!(first.1 == second.1 && first.2 == second.2, "states differ");
    let _ = MessageKind::Update;
}

/// Rounds that touch every part of the state: code, heap, stable memory,
/// certified data, controllers, run status, a rejected and a trapping call.
fn varied_rounds(node: &Node) -> (Principal, Principal) {
    let kv = deploy(node, "kv");
    let id = node.create(&alice(), vec![]).unwrap();
    let testbed = cellar_examples::testbed();
    node.install(&alice(), &id, InstallMode::Install, testbed, None)
        .unwrap();
    for i in 0..20u64 {
        node.update(&bob(), &kv, "add", wave(&format!("\"k{i}\", {i}")))
            .unwrap();
    }
    for call in [
        "set(\"k\", \"v\")",
        "stable-write(70000, [1, 2, 3])",
        "set-certified([9, 9])",
        "trap(\"no\")",
        "random-bytes()",
    ] {
        let (method, args) = call.split_once('(').unwrap();
        let args = args.strip_suffix(')').unwrap();
        node.update(&alice(), &id, method, wave(args)).unwrap();
    }
    let status = node.status(&id).unwrap();
    assert!(status.stable_bytes > 0 && status.certified_data == "0909");
    node.update(&alice(), &kv, "add", wave("5")).unwrap();
    node.stop(&alice(), &kv).unwrap();
    node.start(&alice(), &kv).unwrap();
    node.set_controllers(&alice(), &id, vec![alice(), bob()])
        .unwrap();
    (kv, id)
}

#[test]
fn nodes_fed_the_same_journal_have_the_same_state_hash() {
    let first = tempfile::tempdir().unwrap();
    let node = Node::open(options(first.path())).unwrap();
    let empty = node.state_hash();
    let (kv, _) = varied_rounds(&node);
    let hash = node.state_hash();
    assert_ne!(hash, empty);
    assert_eq!(
        node.node_status().state_hash,
        data_encoding::HEXLOWER.encode(&hash)
    );
    // Queries change nothing.
    node.query(&bob(), &kv, "get", wave("\"k1\"")).unwrap();
    assert_eq!(node.state_hash(), hash);
    drop(node);

    // A second node gets the first one's journal (and the modules it names).
    let second = tempfile::tempdir().unwrap();
    for sub in ["state", "modules"] {
        std::fs::create_dir_all(second.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(first.path().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if sub == "modules" || path.extension().is_some_and(|e| e == "log") {
                std::fs::copy(
                    &path,
                    second.path().join(sub).join(path.file_name().unwrap()),
                )
                .unwrap();
            }
        }
    }
    let replica = Node::open(options(second.path())).unwrap();
    assert_eq!(replica.state_hash(), hash);

    // And a third node, fed the same requests, agrees too.
    let third = tempfile::tempdir().unwrap();
    let fresh = Node::open(options(third.path())).unwrap();
    varied_rounds(&fresh);
    assert_eq!(fresh.state_hash(), hash);

    // One more round, anywhere, and they differ.
    fresh
        .update(&alice(), &kv, "add", wave("\"k0\", 1"))
        .unwrap();
    assert_ne!(fresh.state_hash(), hash);
}

#[test]
fn the_state_hash_survives_reopening_by_replay_and_by_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::open(options(dir.path())).unwrap();
    let (kv, _) = varied_rounds(&node);
    let hash = node.state_hash();
    drop(node);
    // Replay of the journal (which then writes a checkpoint) ...
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.state_hash(), hash);
    drop(node);
    // ... loading that checkpoint ...
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.state_hash(), hash);
    // ... and a checkpoint written by the node itself, after more rounds.
    node.update(&bob(), &kv, "add", wave("\"late\", 1"))
        .unwrap();
    let later = node.state_hash();
    assert_ne!(later, hash);
    node.checkpoint().unwrap();
    node.checkpoint().unwrap();
    drop(node);
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.state_hash(), later);
}

#[test]
fn replay_that_cannot_reproduce_a_round_fails_loudly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = Node::open(options(dir.path())).unwrap();
        deploy(&node, "kv");
    }
    // The installed module is gone: replaying the install cannot work, and
    // going on without it would silently lose the acknowledged install.
    for entry in std::fs::read_dir(dir.path().join("modules")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let error = format!("{:#}", Node::open(options(dir.path())).err().unwrap());
    assert!(error.contains("cannot replay round 2"), "{error}");
}

/// Mutable wasm globals are canister state: they survive journal replay and
/// checkpoints, are part of the state hash, and an upgrade resets them with
/// the heap.
#[test]
fn mutable_globals_survive_restarts_and_count_in_the_state_hash() {
    let wasm = wat::parse_str(include_str!("../../host/engine/tests/globals.wat")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bump =
        |node: &Node, id: &Principal| reply(node.update(&alice(), id, "bump", wave("")).unwrap());
    let id;
    let hash;
    {
        let node = Node::open(options(dir.path())).unwrap();
        id = node.create(&alice(), vec![]).unwrap();
        node.install(&alice(), &id, InstallMode::Install, &wasm, None)
            .unwrap();
        assert_eq!(bump(&node, &id), "1");
        let before = node.state_hash();
        assert_eq!(bump(&node, &id), "2");
        assert_ne!(
            node.state_hash(),
            before,
            "a global's change changes the hash"
        );
        // A trap rolls the globals back.
        let trapped = node
            .update(&alice(), &id, "bump-then-trap", wave(""))
            .unwrap();
        assert!(trapped.result.is_err());
        assert_eq!(
            reply(node.query(&bob(), &id, "peek", wave("")).unwrap()),
            "2"
        );
        hash = node.state_hash();
    }
    // Replay of the journal.
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.state_hash(), hash);
    assert_eq!(bump(&node, &id), "3");
    node.checkpoint().unwrap();
    let hash = node.state_hash();
    drop(node);
    // Loading the checkpoint.
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.state_hash(), hash);
    assert_eq!(
        reply(node.query(&bob(), &id, "peek", wave("")).unwrap()),
        "3"
    );
    assert_eq!(bump(&node, &id), "4");
    // An upgrade starts the instance afresh: globals from their initial values.
    node.install(&alice(), &id, InstallMode::Upgrade, &wasm, None)
        .unwrap();
    assert_eq!(bump(&node, &id), "1");
}

/// Creating with a module is one request: the canister exists with its code,
/// or, when the install fails, not at all; a restart replays it alike.
#[test]
fn create_with_module_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let counter = cellar_examples::get("counter").unwrap();
    let (made, before) = {
        let node = Node::open(options(dir.path())).unwrap();
        let made = node
            .create_with_module(
                &alice(),
                vec![],
                counter.wasm,
                counter.init_arg.map(str::to_string),
            )
            .unwrap();
        assert!(made.module_hash.is_some());
        assert_eq!(made.controllers, vec![alice()]);
        let count = node.list().len();
        // An init argument that does not parse: the install fails, and no
        // empty canister is left behind.
        let failed = node.create_with_module(&alice(), vec![], counter.wasm, Some("(((".into()));
        assert!(failed.is_err(), "{failed:?}");
        assert_eq!(node.list().len(), count);
        (made.canister_id, node.state_hash())
    };
    let node = Node::open(options(dir.path())).unwrap();
    assert_eq!(node.state_hash(), before);
    let reply = node
        .update(&bob(), &made, "increment", wave(""))
        .unwrap()
        .result
        .unwrap();
    assert!(!reply.is_empty());
}

/// A module installed from chunks: every chunk must be in the store, the
/// concatenation must match the module hash, only controllers upload, the
/// store is bounded and survives restarts (journal replay and checkpoint),
/// and a successful install empties it.
#[test]
fn chunked_install_checks_every_chunk_and_survives_restarts() {
    use cellar_types::api::{MAX_CHUNK_BYTES, MAX_STORED_CHUNKS};
    let dir = tempfile::tempdir().unwrap();
    let counter = cellar_examples::get("counter").unwrap();
    let third = counter.wasm.len().div_ceil(3);
    let parts: Vec<&[u8]> = counter.wasm.chunks(third).collect();
    let hash = |b: &[u8]| cellar_agent::sha256_hex(b);
    let hashes: Vec<String> = parts.iter().map(|p| hash(p)).collect();
    let module_hash = hash(counter.wasm);
    let init = counter.init_arg.map(str::to_string);
    let install = |node: &Node, id: &Principal, chunks: Vec<String>, module: &str| {
        node.install_chunked(
            &alice(),
            id,
            InstallMode::Install,
            chunks,
            module.to_string(),
            init.clone(),
        )
    };
    let (id, before) = {
        let node = Node::open(cellar_tests::options(dir.path(), 5)).unwrap();
        let id = node.create(&alice(), vec![]).unwrap();
        node.upload_chunk(&alice(), &id, parts[0]).unwrap();
        let stored = node.upload_chunk(&alice(), &id, parts[1]).unwrap();
        assert_eq!(stored.len(), 2);
        let missing = install(&node, &id, hashes.clone(), &module_hash).unwrap_err();
        assert!(
            missing.to_string().contains("not in the chunk store"),
            "{missing}"
        );
        let not_controller = node.upload_chunk(&bob(), &id, parts[2]).unwrap_err();
        assert!(matches!(not_controller, NodeError::NotController { .. }));
        for _ in 0..2 {
            assert_eq!(node.upload_chunk(&alice(), &id, parts[2]).unwrap().len(), 3);
        }
        for bad in [vec![], vec![7; MAX_CHUNK_BYTES + 1]] {
            let e = node.upload_chunk(&alice(), &id, &bad).unwrap_err();
            assert!(e.to_string().contains("a chunk is 1 byte"), "{e}");
        }
        let swapped = vec![hashes[1].clone(), hashes[0].clone(), hashes[2].clone()];
        let wrong = install(&node, &id, swapped, &module_hash).unwrap_err();
        assert!(
            wrong.to_string().contains("assemble to a module"),
            "{wrong}"
        );
        assert!(node.status(&id).unwrap().module_hash.is_none());
        (id, node.state_hash())
    };
    let node = Node::open(cellar_tests::options(dir.path(), 5)).unwrap();
    assert_eq!(
        node.state_hash(),
        before,
        "the chunk store is replicated state"
    );
    assert_eq!(node.chunks(&id).unwrap().len(), 3);
    let status = install(&node, &id, hashes.clone(), &module_hash).unwrap();
    assert_eq!(status.module_hash.as_deref(), Some(module_hash.as_str()));
    assert!(
        node.chunks(&id).unwrap().is_empty(),
        "an install empties it"
    );
    node.update(&alice(), &id, "increment", wave(""))
        .unwrap()
        .result
        .unwrap();

    // The store is bounded; clearing it empties it.
    for i in 0..MAX_STORED_CHUNKS {
        node.upload_chunk(&alice(), &id, format!("chunk {i}").as_bytes())
            .unwrap();
    }
    let full = node.upload_chunk(&alice(), &id, b"one more").unwrap_err();
    assert!(full.to_string().contains("is full"), "{full}");
    node.clear_chunks(&alice(), &id).unwrap();
    assert!(node.chunks(&id).unwrap().is_empty());
    let after = node.state_hash();
    drop(node);
    let node = Node::open(cellar_tests::options(dir.path(), 5)).unwrap();
    assert_eq!(node.state_hash(), after);
    assert_eq!(
        node.status(&id).unwrap().module_hash.as_deref(),
        Some(module_hash.as_str())
    );
}

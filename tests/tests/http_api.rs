//! The HTTP API on loopback with signed requests (through `cellar-agent`):
//! deploy, call, submit and poll, query, read state, describe, logs,
//! metrics, and the refusals (bad signature, replay, expiry, body size,
//! non-controller, unknown canister, malformed body, module and headers).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

use cellar_agent::{Agent, AgentError, Identity, RawResponse};
use cellar_types::Principal;
use cellar_types::api::{
    CallRequest, CallResponse, CanisterStatus, InterfaceInfo, LogEntry, MAX_CALL_BODY_BYTES,
    NodeStatus, RequestState,
};
use data_encoding::BASE64;
use serde_json::{Value, json};

/// Sends a signed request built by `agent` and returns status and JSON.
fn send(agent: &Agent, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let bytes = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    let response = agent
        .send_raw(&agent.sign(method, path, bytes).unwrap())
        .unwrap();
    (response.status, response.json())
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    running: Option<cellar_node::RunningNode>,
    base: String,
    _dir: tempfile::TempDir,
}

impl Fixture {
    /// A node whose examples are controlled by `controller`.
    fn start(controller: &Identity) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let mut config = cellar_node::NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
        config.example_controllers = vec![controller.principal().clone()];
        let running = runtime.block_on(cellar_node::start(config)).unwrap();
        let base = format!("http://{}", running.addr);
        Fixture {
            runtime,
            running: Some(running),
            base,
            _dir: dir,
        }
    }

    /// Shuts the node down (it writes a checkpoint) and starts it again on
    /// the same data directory (on a new port); the examples keep their ids.
    fn restart(&mut self) {
        let running = self.running.take().unwrap();
        let examples = running.examples.clone();
        self.runtime.block_on(running.shutdown()).unwrap();
        let config = cellar_node::NodeConfig::new(self._dir.path(), "127.0.0.1:0".parse().unwrap());
        let mut running = self.runtime.block_on(cellar_node::start(config)).unwrap();
        assert!(running.examples.is_empty(), "examples are deployed once");
        running.examples = examples;
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    fn agent(&self, identity: &Identity) -> Agent {
        Agent::new(&self.base, identity.clone())
    }

    fn example(&self, name: &str) -> Principal {
        let running = self.running.as_ref().unwrap();
        running
            .examples
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            self.runtime.block_on(running.shutdown()).unwrap();
        }
    }
}

#[test]
fn signed_requests_over_loopback() {
    let alice_id = Identity::from_seed([1; 32]);
    let node = Fixture::start(&alice_id);
    let alice = node.agent(&alice_id);
    let bob = node.agent(&Identity::from_seed([2; 32]));
    let anonymous = node.agent(&Identity::anonymous());

    let kv = node.example("kv");
    let kv_text = kv.to_text();
    let status = anonymous.canister_status(&kv).unwrap();
    assert_eq!(status.controllers, vec![alice_id.principal().clone()]);

    // Update then query, in WAVE and in JSON.
    let answer = bob
        .call(&kv, &CallRequest::wave("add", "\"apple\", 5"))
        .unwrap();
    assert!(matches!(answer, CallResponse::Replied { .. }), "{answer:?}");
    let reply = anonymous
        .query(&kv, &CallRequest::json("get", json!(["apple"])))
        .unwrap();
    assert_eq!(cellar_agent::replied(reply).unwrap(), json!(5));
    let reply = anonymous
        .query(&kv, &CallRequest::wave("get", "\"apple\""))
        .unwrap();
    assert_eq!(cellar_agent::replied(reply).unwrap(), json!("some(5)"));

    // A reject is a 200 with the reject inside.
    let (code, answer) = send(
        &bob,
        "POST",
        &format!("/api/v1/canisters/{kv_text}/call"),
        Some(json!({"method": "add", "args": {"wave": "5"}})),
    );
    assert_eq!(code, 200);
    assert_eq!(answer["status"], "rejected");
    assert_eq!(answer["reject"]["code"], "destination-invalid");

    // Interface and node status.
    let interface: InterfaceInfo = anonymous.interface(&kv).unwrap();
    assert!(
        interface
            .methods
            .iter()
            .any(|m| m.name == "query.get" && m.kind == "query")
    );
    let status: NodeStatus = anonymous.status().unwrap();
    assert_eq!(status.canisters, 4);

    // Deploy a component by bytes; the creator controls it; logs are served.
    let (code, created) = send(
        &bob,
        "POST",
        "/api/v1/canisters",
        Some(
            json!({"module": {"wasm": BASE64.encode(cellar_examples::testbed())}, "arg": "some(\"hi\")"}),
        ),
    );
    assert_eq!(code, 201, "{created}");
    let created: CanisterStatus = serde_json::from_value(created).unwrap();
    assert_eq!(
        created.controllers,
        vec![bob.identity().principal().clone()]
    );
    let testbed = created.canister_id;
    bob.call(&testbed, &CallRequest::wave("log-line", "\"over http\""))
        .unwrap();
    let logs: Vec<LogEntry> = anonymous.logs(&testbed).unwrap();
    assert!(
        logs.iter().any(|l| l.message.contains("over http")),
        "{logs:?}"
    );

    // Management: only controllers.
    let forbidden = |r: Result<CanisterStatus, AgentError>| {
        matches!(r, Err(AgentError::Http { status: 403, .. }))
    };
    assert!(forbidden(bob.stop(&kv)));
    assert!(forbidden(anonymous.stop(&kv)));
    assert!(forbidden(
        bob.set_controllers(&kv, vec![Principal::anonymous()])
    ));
    assert!(forbidden(bob.delete(&kv)));
    alice.stop(&kv).unwrap();
    alice.start(&kv).unwrap();

    // Unknown canisters, bad ids and bodies.
    let missing = Principal::canister(999);
    assert!(matches!(
        bob.query(&missing, &CallRequest::wave("get", "\"a\"")),
        Err(AgentError::Http { status: 404, .. })
    ));
    assert!(matches!(
        bob.submit(&missing, &CallRequest::wave("get", "\"a\"")),
        Err(AgentError::Http { status: 404, .. })
    ));
    let (code, _) = send(
        &bob,
        "POST",
        "/api/v1/canisters/not-an-id/query",
        Some(json!({})),
    );
    assert_eq!(code, 400);
    let (code, answer) = send(
        &bob,
        "POST",
        &format!("/api/v1/canisters/{kv_text}/call"),
        Some(json!({"nope": 1})),
    );
    assert_eq!(code, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("not valid"),
        "{answer}"
    );
    let (code, answer) = send(
        &bob,
        "POST",
        "/api/v1/canisters",
        Some(json!({"module": {"wasm": BASE64.encode(b"\0asm\x01\0\0\0")}})),
    );
    assert_eq!(code, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{answer}"
    );
    let (code, answer) = send(&bob, "GET", "/api/v2/nothing", None);
    assert_eq!(code, 404);
    assert!(answer["error"].is_string(), "{answer}");

    // A forged signature: alice's key and signature on other content.
    let path = format!("/api/v1/canisters/{kv_text}/call");
    let body = serde_json::to_vec(&json!({"method": "add", "args": {"wave": "\"x\", 1"}})).unwrap();
    let mut forged = alice.sign("POST", &path, b"{}".to_vec()).unwrap();
    forged.body = body;
    let response: RawResponse = alice.send_raw(&forged).unwrap();
    assert_eq!(response.status, 401, "{:?}", response.json());
}

#[test]
fn submit_and_poll_replays_expiry_and_limits() {
    let alice_id = Identity::from_seed([1; 32]);
    let node = Fixture::start(&alice_id);
    let alice = node.agent(&alice_id);
    let bob = node.agent(&Identity::from_seed([2; 32]));
    let kv = node.example("kv");
    let call_path = format!("/api/v1/canisters/{}/call", kv.to_text());
    let submit_path = format!("/api/v1/canisters/{}/submit", kv.to_text());

    // Submit answers with the id derived from the signed content; polling
    // reaches replied with the result; only the sender sees it.
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"pear\", 7")).unwrap();
    let request = alice.sign("POST", &submit_path, body).unwrap();
    let response = alice.send_raw(&request).unwrap();
    assert_eq!(response.status, 202, "{:?}", response.json());
    assert_eq!(response.json()["request_id"], request.request_id());
    let answer = alice.wait(request.request_id()).unwrap();
    assert!(matches!(answer, CallResponse::Replied { .. }), "{answer:?}");
    let status = alice.request_status(request.request_id()).unwrap();
    assert_eq!(status.status, RequestState::Replied);
    assert_eq!(
        bob.request_status(request.request_id()).unwrap().status,
        RequestState::Unknown
    );
    assert_eq!(
        alice.request_status(&"0".repeat(64)).unwrap().status,
        RequestState::Unknown
    );
    // A rejected update is reported as rejected.
    let id = alice
        .submit(&kv, &CallRequest::wave("add", "\"only-key\""))
        .unwrap();
    let answer = alice.wait(&id).unwrap();
    assert!(
        matches!(answer, CallResponse::Rejected { .. }),
        "{answer:?}"
    );
    assert_eq!(
        alice.request_status(&id).unwrap().status,
        RequestState::Rejected
    );
    assert_eq!(
        alice
            .call_and_wait(&kv, &CallRequest::json("add", json!(["fig", 3])))
            .unwrap(),
        Value::Null
    );

    // The same signed request again is a replay: refused, not executed.
    let replay = alice.send_raw(&request).unwrap();
    assert_eq!(replay.status, 409, "{:?}", replay.json());
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"plum\", 1")).unwrap();
    let call = alice.sign("POST", &call_path, body).unwrap();
    assert_eq!(alice.send_raw(&call).unwrap().status, 200);
    let replay = alice.send_raw(&call).unwrap();
    assert_eq!(replay.status, 409);
    assert!(
        replay.json()["error"]
            .as_str()
            .unwrap()
            .contains("already received"),
        "{:?}",
        replay.json()
    );
    let updates_before = alice.canister_status(&kv).unwrap().updates;
    let _ = alice.send_raw(&call).unwrap();
    assert_eq!(alice.canister_status(&kv).unwrap().updates, updates_before);
    // The same content with another nonce is a new request.
    let again = alice.sign_with(
        "POST",
        &call_path,
        call.body.clone(),
        call.ingress_expiry,
        b"another nonce".to_vec(),
    );
    assert_eq!(alice.send_raw(&again).unwrap().status, 200);

    // Expired, too far ahead, or without an expiry: 400 with a message.
    let now = now_nanos();
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"x\", 1")).unwrap();
    for (expiry, needle) in [
        (now - 1_000_000_000, "expired"),
        (now + 3_600 * 1_000_000_000, "future"),
        (0, "expired"),
    ] {
        let request = alice.sign_with("POST", &call_path, body.clone(), expiry, vec![1]);
        let response = alice.send_raw(&request).unwrap();
        assert_eq!(response.status, 400, "{:?}", response.json());
        let error = response.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(needle), "{error}");
    }

    // Bodies over the limit: 413, and the node goes on.
    let big = json!({"method": "add", "args": {"wave": format!("\"{}\", 1", "a".repeat(MAX_CALL_BODY_BYTES))}});
    let (code, _) = send(&alice, "POST", &call_path, Some(big));
    assert_eq!(code, 413);
    let (code, answer) = send(&alice, "POST", &call_path, Some(json!("garbage")));
    assert_eq!(code, 400, "{answer}");

    // Read state: module hash and certified data of the committed state.
    let state = bob.read_state(&kv).unwrap();
    let status = bob.canister_status(&kv).unwrap();
    assert_eq!(state.module_hash, status.module_hash);
    assert_eq!(state.certified_data, status.certified_data);
    assert!(state.round >= 4, "{state:?}");

    // Metrics moved with what happened above.
    let text = alice.metrics().unwrap();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
            .unwrap_or_else(|| panic!("no {name} in\n{text}")) as u64
    };
    assert!(value("cellar_messages_total{kind=\"update\",outcome=\"replied\"}") >= 4);
    assert!(value("cellar_messages_total{kind=\"update\",outcome=\"rejected\"}") >= 1);
    assert!(value("cellar_http_responses_total{class=\"4xx\"}") >= 5);
    assert!(value("cellar_message_duration_seconds_count{kind=\"update\"}") >= 5);
    assert!(value("cellar_instructions_total{kind=\"update\"}") > 0);
    assert_eq!(value("cellar_canisters{status=\"running\"}"), 4);
    assert!(value("cellar_memory_bytes{kind=\"heap\"}") > 0);
    let activity = alice.activity().unwrap();
    assert!(activity.messages.updates >= 5);
    assert!(activity.recent.iter().any(|c| c.method == "add"));
}

/// Sends one HTTP/1.1 request with exactly the given headers (the agent
/// only writes well-formed ones); returns the status and the JSON body.
fn raw_http(base: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = TcpStream::connect(addr).unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"));
    let json = answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .and_then(|body| {
            // A chunked body: the JSON is the line that starts with '{'.
            body.lines().find(|l| l.starts_with('{'))
        })
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

/// Malformed authentication headers get 400 with a message naming the
/// header; a well-formed signature that does not verify gets 401.
#[test]
fn malformed_headers_are_bad_requests_and_bad_signatures_unauthorized() {
    let alice_id = Identity::from_seed([1; 32]);
    let node = Fixture::start(&alice_id);
    let alice = node.agent(&alice_id);
    let kv = node.example("kv");
    let path = format!("/api/v1/canisters/{}/call", kv.to_text());
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"h\", 1")).unwrap();
    let good = alice.sign("POST", &path, body.clone()).unwrap();
    let key = good.signature.public_key.clone().unwrap();
    let signature = good.signature.signature.clone().unwrap();
    let headers = |expiry: String, nonce: String, key: String, signature: String| {
        vec![
            (cellar_types::api::INGRESS_EXPIRY_HEADER, expiry),
            (cellar_types::api::NONCE_HEADER, nonce),
            (cellar_types::api::PUBLIC_KEY_HEADER, key),
            (cellar_types::api::SIGNATURE_HEADER, signature),
        ]
    };
    let expiry = good.ingress_expiry.to_string();
    let nonce = data_encoding::HEXLOWER.encode(&good.nonce);
    for (case, headers, needle) in [
        (
            "non-numeric expiry",
            headers("soon".into(), nonce.clone(), key.clone(), signature.clone()),
            "ingress expiry 'soon' is not a number",
        ),
        (
            "nonce not hex",
            headers(
                expiry.clone(),
                "xyz!".into(),
                key.clone(),
                signature.clone(),
            ),
            "nonce is not hex",
        ),
        (
            "nonce too long",
            headers(
                expiry.clone(),
                "ab".repeat(cellar_types::api::MAX_NONCE_BYTES + 1),
                key.clone(),
                signature.clone(),
            ),
            "nonce must be at most",
        ),
        (
            "signature not hex",
            headers(expiry.clone(), nonce.clone(), key.clone(), "not-hex".into()),
            "signature header is not hex",
        ),
        (
            "signature of the wrong length",
            headers(expiry.clone(), nonce.clone(), key.clone(), "abcd".into()),
            "signature must be 64 bytes",
        ),
        (
            "public key of the wrong length",
            headers(
                expiry.clone(),
                nonce.clone(),
                "00".into(),
                signature.clone(),
            ),
            "public key must be 32 bytes",
        ),
    ] {
        let (status, answer) = raw_http(&node.base, &path, &headers, &body);
        assert_eq!(status, 400, "{case}: {answer}");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(error.contains(needle), "{case}: {error}");
    }
    // A well-formed signature over other content: 401, and nothing ran.
    let updates = alice.canister_status(&kv).unwrap().updates;
    let other_body = serde_json::to_vec(&CallRequest::wave("add", "\"h\", 2")).unwrap();
    let (status, answer) = raw_http(
        &node.base,
        &path,
        &headers(
            expiry.clone(),
            nonce.clone(),
            key.clone(),
            signature.clone(),
        ),
        &other_body,
    );
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("does not match"),
        "{answer}"
    );
    // The intact request goes through once.
    let (status, answer) = raw_http(
        &node.base,
        &path,
        &headers(expiry, nonce, key, signature),
        &body,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(alice.canister_status(&kv).unwrap().updates, updates + 1);
}

/// A signed request executed before a restart is still refused as a replay
/// after it (the journal and the checkpoint carry its id and expiry), and
/// is not executed again.
#[test]
fn replays_are_refused_after_a_restart() {
    let alice_id = Identity::from_seed([1; 32]);
    let mut node = Fixture::start(&alice_id);
    let kv = node.example("kv");
    let alice = node.agent(&alice_id);
    let submit_path = format!("/api/v1/canisters/{}/submit", kv.to_text());
    let call_path = format!("/api/v1/canisters/{}/call", kv.to_text());
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"once\", 1")).unwrap();
    let submitted = alice.sign("POST", &submit_path, body).unwrap();
    assert_eq!(alice.send_raw(&submitted).unwrap().status, 202);
    let answer = alice.wait(submitted.request_id()).unwrap();
    assert!(matches!(answer, CallResponse::Replied { .. }), "{answer:?}");
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"twice\", 2")).unwrap();
    let called = alice.sign("POST", &call_path, body).unwrap();
    assert_eq!(alice.send_raw(&called).unwrap().status, 200);
    let top_up_path = format!("/api/v1/canisters/{}/top-up", kv.to_text());
    let body = serde_json::to_vec(&json!({"cycles": 1000})).unwrap();
    let topped = alice.sign("POST", &top_up_path, body).unwrap();
    assert_eq!(alice.send_raw(&topped).unwrap().status, 200);
    let before = alice.canister_status(&kv).unwrap();

    // Twice: the first start rebuilds the cache from the checkpoint the
    // shutdown wrote, the second from the checkpoint that start wrote.
    for restart in 0..2 {
        node.restart();
        let alice = node.agent(&alice_id);
        for request in [&submitted, &called, &topped] {
            let replay = alice.send_raw(request).unwrap();
            assert_eq!(replay.status, 409, "restart {restart}: {:?}", replay.json());
            assert!(
                replay.json()["error"]
                    .as_str()
                    .unwrap()
                    .contains("already received"),
                "{:?}",
                replay.json()
            );
        }
        let after = alice.canister_status(&kv).unwrap();
        assert_eq!(after.updates, before.updates, "restart {restart}");
        assert_eq!(after.cycles, before.cycles, "restart {restart}");
        // The result survives the restart (the ingress history).
        let status = alice.request_status(submitted.request_id()).unwrap();
        assert_eq!(status.status, RequestState::Replied);
        assert_eq!(status.response, Some(answer.clone()));
    }
    // New requests still go through.
    let alice = node.agent(&alice_id);
    alice
        .call_and_wait(&kv, &CallRequest::wave("add", "\"three\", 3"))
        .unwrap();
    assert_eq!(
        alice.canister_status(&kv).unwrap().updates,
        before.updates + 1
    );
}

/// After a crash (no checkpoint: the node is dropped), the journal alone
/// carries the ids of the signed requests it executed; reopening rebuilds
/// them, and the checkpoint written after the replay keeps them.
#[test]
fn journaled_request_ids_survive_a_crash() {
    use cellar_node::{Node, NodeOptions, RequestTag};
    let dir = tempfile::tempdir().unwrap();
    let alice = Principal::self_authenticating(&[1; 32]);
    let expiry = now_nanos() + 60_000_000_000;
    let tag = RequestTag {
        id: "ab".repeat(32),
        expiry,
        encoding: Default::default(),
    };
    let expired = RequestTag {
        id: "cd".repeat(32),
        expiry: 1,
        encoding: Default::default(),
    };
    {
        let node = Node::open(NodeOptions::new(dir.path())).unwrap();
        let id = Node::tagged(Some(tag.clone()), || node.create(&alice, vec![])).unwrap();
        Node::tagged(Some(expired.clone()), || node.stop(&alice, &id)).unwrap();
        // Dropped without a checkpoint: only the journal has them.
    }
    for open in 0..2 {
        let node = Node::open(NodeOptions::new(dir.path())).unwrap();
        assert_eq!(
            node.journaled_requests(now_nanos()),
            vec![(tag.id.clone(), expiry)],
            "open {open}"
        );
        assert_eq!(node.list().len(), 1);
    }
}

/// A request's fate is in the replicated ingress history: after a restart
/// (a shutdown with a checkpoint, then a crash that leaves only the
/// journal) the node still answers `replied` with the same reply, to the
/// sender only (anonymous requests to anonymous callers), and still
/// refuses a replay of the signed request.
#[test]
fn request_statuses_survive_restarts() {
    let alice_id = Identity::from_seed([1; 32]);
    let mut node = Fixture::start(&alice_id);
    let kv = node.example("kv");
    let alice = node.agent(&alice_id);
    let anonymous = node.agent(&Identity::anonymous());
    let body = serde_json::to_vec(&CallRequest::wave("add", "\"fate\", 2")).unwrap();
    let signed = alice
        .sign(
            "POST",
            &format!("/api/v1/canisters/{}/submit", kv.to_text()),
            body,
        )
        .unwrap();
    let submitted = alice.send_raw(&signed).unwrap();
    assert_eq!(submitted.status, 202);
    let signed_id = submitted.json()["request_id"].as_str().unwrap().to_string();
    let reply = alice.wait(&signed_id).unwrap();
    let anonymous_id = anonymous
        .submit(&kv, &CallRequest::json("add", json!(["fate", 3])))
        .unwrap();
    let anonymous_reply = anonymous.wait(&anonymous_id).unwrap();
    let check = |node: &Fixture| {
        let (alice, anonymous) = (node.agent(&alice_id), node.agent(&Identity::anonymous()));
        let status = alice.request_status(&signed_id).unwrap();
        assert_eq!(status.status, RequestState::Replied);
        assert_eq!(status.response.as_ref(), Some(&reply));
        let status = anonymous.request_status(&anonymous_id).unwrap();
        assert_eq!(status.status, RequestState::Replied);
        assert_eq!(status.response.as_ref(), Some(&anonymous_reply));
        // Only to their senders.
        assert_eq!(
            anonymous.request_status(&signed_id).unwrap().status,
            RequestState::Unknown
        );
        assert_eq!(
            alice.request_status(&anonymous_id).unwrap().status,
            RequestState::Unknown
        );
        // The signed request is not executed again.
        assert_eq!(alice.send_raw(&signed).unwrap().status, 409);
    };
    check(&node);
    node.restart();
    check(&node);
}

/// After a crash (the node dropped without a checkpoint), replaying the
/// journal rebuilds the ingress history: the same status and reply, and
/// the checkpoint written after the replay keeps them.
#[test]
fn request_statuses_survive_a_crash() {
    use cellar_node::{Node, NodeOptions, RequestTag};
    let dir = tempfile::tempdir().unwrap();
    let alice = Principal::self_authenticating(&[1; 32]);
    let tag = |n: u8| RequestTag {
        id: format!("{n:02x}").repeat(32),
        expiry: now_nanos() + 60_000_000_000,
        encoding: Default::default(),
    };
    let counter = cellar_examples::get("counter").unwrap();
    let (id, reply) = {
        let node = Node::open(NodeOptions::new(dir.path())).unwrap();
        let id = Node::tagged(Some(tag(1)), || {
            node.create_with_module(
                &alice,
                vec![],
                counter.wasm,
                counter.init_arg.map(String::from),
            )
        })
        .unwrap()
        .canister_id;
        Node::tagged(Some(tag(2)), || {
            node.update(
                &alice,
                &id,
                "increment",
                cellar_types::api::Args::Wave(String::new()),
            )
        })
        .unwrap();
        let status = node.request_status(&tag(2).id, &alice).unwrap();
        assert_eq!(status.status, RequestState::Replied);
        (id, status.response)
        // Dropped without a checkpoint: only the journal has them.
    };
    for open in 0..2 {
        let node = Node::open(NodeOptions::new(dir.path())).unwrap();
        let status = node.request_status(&tag(2).id, &alice).unwrap();
        assert_eq!(status.status, RequestState::Replied, "open {open}");
        assert_eq!(status.response, reply, "open {open}");
        assert!(
            node.request_status(&tag(2).id, &Principal::anonymous())
                .is_none()
        );
        assert_eq!(
            node.request_status(&tag(1).id, &alice).unwrap().status,
            RequestState::Replied
        );
        assert_eq!(node.list()[0].canister_id, id);
        node.checkpoint().unwrap();
    }
}

/// A full ingress history refuses new requests deterministically in the
/// round ("the ingress history is full; retry later"), never by dropping
/// live entries, and makes room once results expire.
#[test]
fn a_full_ingress_history_refuses_new_requests() {
    use cellar_node::history::HistoryLimits;
    use cellar_node::{Node, NodeError, NodeOptions, RequestTag};
    let dir = tempfile::tempdir().unwrap();
    let mut options = NodeOptions::new(dir.path());
    options.ingress_history = HistoryLimits {
        entries: 2,
        reply_bytes: 1 << 20,
        margin_nanos: 1,
    };
    let node = Node::open(options).unwrap();
    let alice = Principal::self_authenticating(&[1; 32]);
    let tag = |n: u8, expiry: u64| RequestTag {
        id: format!("{n:02x}").repeat(32),
        expiry,
        encoding: Default::default(),
    };
    let later = now_nanos() + 60_000_000_000;
    let id = Node::tagged(Some(tag(1, later)), || node.create(&alice, vec![])).unwrap();
    // Expires soon: its entry goes at the first round after that.
    let soon = now_nanos() + 300_000_000;
    Node::tagged(Some(tag(2, soon)), || node.stop(&alice, &id)).unwrap();
    assert!(node.ingress_history_full());
    let refused = Node::tagged(Some(tag(3, later)), || node.start(&alice, &id));
    assert!(
        matches!(&refused, Err(NodeError::Overloaded(m)) if m == "the ingress history is full; retry later"),
        "{refused:?}"
    );
    assert!(node.request_status(&tag(3, later).id, &alice).is_none());
    assert_eq!(
        node.request_status(&tag(1, later).id, &alice)
            .unwrap()
            .status,
        RequestState::Replied,
        "live entries stay"
    );
    // Once the short-lived request is past its expiry (and margin), an idle
    // node runs a round that makes room.
    assert_eq!(node.run_until_idle(10).unwrap(), 0, "nothing to prune yet");
    std::thread::sleep(std::time::Duration::from_nanos(
        soon.saturating_sub(now_nanos()) + 1_000_000,
    ));
    assert_eq!(node.run_until_idle(10).unwrap(), 1);
    assert!(!node.ingress_history_full());
    Node::tagged(Some(tag(3, later)), || node.start(&alice, &id)).unwrap();
}

/// An agent given several URLs, the first dead, submits, waits and
/// queries through the next.
#[test]
fn an_agent_falls_back_to_the_next_url() {
    let alice_id = Identity::from_seed([1; 32]);
    let node = Fixture::start(&alice_id);
    let kv = node.example("kv");
    let agent = Agent::with_urls(
        &["http://127.0.0.1:1".to_string(), node.base.clone()],
        alice_id.clone(),
        Default::default(),
    );
    agent
        .call_and_wait(&kv, &CallRequest::wave("add", "\"urls\", 7"))
        .unwrap();
    assert_eq!(
        agent.base_url(),
        node.base,
        "it stays with the one that answered"
    );
    let answer = agent
        .query(&kv, &CallRequest::wave("get", "\"urls\""))
        .unwrap();
    assert!(matches!(answer, CallResponse::Replied { .. }), "{answer:?}");
    // Nothing answers at all: the error names the last URL tried.
    let dead = Agent::with_urls(
        &[
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string(),
        ],
        alice_id,
        Default::default(),
    );
    assert!(matches!(dead.status(), Err(AgentError::Unreachable { .. })));
}

/// Read-state answers carry the node's signature over round, state hash and
/// the canister's readable state; the agent verifies it against the key in
/// `/api/v1/status`, any change of the answer fails verification, and the
/// key (in the data directory, 0600) is the same after a restart.
#[test]
fn read_state_is_certified_and_tampering_is_detected() {
    use std::os::unix::fs::PermissionsExt;
    let alice_id = Identity::from_seed([1; 32]);
    let mut node = Fixture::start(&alice_id);
    let kv = node.example("kv");
    let alice = node.agent(&alice_id);
    let key = alice.status().unwrap().node_key.expect("a node key");
    let state = alice.read_state_certified(&kv).unwrap();
    assert!(state.certificate.is_some());
    assert_eq!(state.state_hash.len(), 64, "{state:?}");
    cellar_agent::verify_read_state(&state, &key).unwrap();

    let tampered = [
        ReadStateEdit::CertifiedData,
        ReadStateEdit::Round,
        ReadStateEdit::StateHash,
        ReadStateEdit::ModuleHash,
        ReadStateEdit::Controllers,
        ReadStateEdit::NoCertificate,
    ];
    for edit in tampered {
        let mut forged = state.clone();
        match edit {
            ReadStateEdit::CertifiedData => forged.certified_data = "00".into(),
            ReadStateEdit::Round => forged.round += 1,
            ReadStateEdit::StateHash => forged.state_hash = "0".repeat(64),
            ReadStateEdit::ModuleHash => forged.module_hash = None,
            ReadStateEdit::Controllers => forged.controllers.push(Principal::anonymous()),
            ReadStateEdit::NoCertificate => forged.certificate = None,
        }
        let error = cellar_agent::verify_read_state(&forged, &key).unwrap_err();
        assert!(
            error.contains("does not match") || error.contains("no certificate"),
            "{edit:?}: {error}"
        );
    }
    // Another node's key does not verify it.
    let other = Identity::from_seed([9; 32]);
    let other_key = data_encoding::HEXLOWER.encode(&other.public_key().unwrap());
    assert!(cellar_agent::verify_read_state(&state, &other_key).is_err());

    let path = node._dir.path().join(cellar_node::certify::NODE_KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    node.restart();
    let alice = node.agent(&alice_id);
    assert_eq!(alice.status().unwrap().node_key, Some(key));
    alice.read_state_certified(&kv).unwrap();
}

/// The fields `read_state_is_certified_and_tampering_is_detected` changes.
#[derive(Debug, Clone, Copy)]
enum ReadStateEdit {
    CertifiedData,
    Round,
    StateHash,
    ModuleHash,
    Controllers,
    NoCertificate,
}

//! The HTTP API on loopback with signed requests: deploy, call, query,
//! describe, logs, and the refusals (bad signature, non-controller, unknown
//! canister, malformed body and module).

use cellar_types::Principal;
use cellar_types::api::{
    CallResponse, CanisterStatus, InterfaceInfo, LogEntry, NodeStatus, PUBLIC_KEY_HEADER,
    SIGNATURE_HEADER, signing_payload,
};
use data_encoding::{BASE64, HEXLOWER};
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{Value, json};

struct Client {
    base: String,
    key: Option<SigningKey>,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: &str, seed: Option<u8>) -> Self {
        Client {
            base: base.to_string(),
            key: seed.map(|s| SigningKey::from_bytes(&[s; 32])),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .new_agent(),
        }
    }

    fn principal(&self) -> Principal {
        match &self.key {
            Some(k) => Principal::self_authenticating(k.verifying_key().as_bytes()),
            None => Principal::anonymous(),
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let url = format!("{}{path}", self.base);
        let mut headers = Vec::new();
        if let Some(key) = &self.key {
            let signature = key.sign(&signing_payload(method, path, &bytes));
            headers.push((
                PUBLIC_KEY_HEADER,
                HEXLOWER.encode(key.verifying_key().as_bytes()),
            ));
            headers.push((SIGNATURE_HEADER, HEXLOWER.encode(&signature.to_bytes())));
        }
        let response = match method {
            "GET" => {
                let mut request = self.agent.get(&url);
                for (k, v) in &headers {
                    request = request.header(*k, v);
                }
                request.call()
            }
            _ => {
                let mut request = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => unreachable!(),
                };
                for (k, v) in &headers {
                    request = request.header(*k, v);
                }
                request
                    .header("content-type", "application/json")
                    .send(&bytes[..])
            }
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
}

#[test]
fn signed_requests_over_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let alice = Client::new("", Some(1));
    let mut config = cellar_node::NodeConfig::new(dir.path(), "127.0.0.1:0".parse().unwrap());
    config.example_controllers = vec![alice.principal()];
    let running = runtime.block_on(cellar_node::start(config)).unwrap();
    let base = format!("http://{}", running.addr);
    let alice = Client::new(&base, Some(1));
    let bob = Client::new(&base, Some(2));
    let anonymous = Client::new(&base, None);

    // The examples are deployed and controlled by the configured principal.
    let names: Vec<&str> = running.examples.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["counter", "kv", "ledger", "relay"]);
    let kv = running.examples[1].1.to_text();
    let (code, status) = anonymous.send("GET", &format!("/api/v1/canisters/{kv}"), None);
    assert_eq!(code, 200);
    let status: CanisterStatus = serde_json::from_value(status).unwrap();
    assert_eq!(status.controllers, vec![alice.principal()]);

    // Update then query, in WAVE and in JSON.
    let call = json!({"method": "add", "args": {"wave": "\"apple\", 5"}});
    let (code, answer) = bob.send("POST", &format!("/api/v1/canisters/{kv}/call"), Some(call));
    assert_eq!(code, 200, "{answer}");
    assert!(matches!(
        serde_json::from_value(answer).unwrap(),
        CallResponse::Replied { .. }
    ));
    let query = json!({"method": "get", "args": {"json": ["apple"]}, "reply_encoding": "json"});
    let (_, answer) = anonymous.send(
        "POST",
        &format!("/api/v1/canisters/{kv}/query"),
        Some(query),
    );
    assert_eq!(answer["status"], "replied", "{answer}");
    assert_eq!(answer["reply"], json!(5));
    let query = json!({"method": "get", "args": {"wave": "\"apple\""}});
    let (_, answer) = anonymous.send(
        "POST",
        &format!("/api/v1/canisters/{kv}/query"),
        Some(query),
    );
    assert_eq!(answer["reply"], json!("some(5)"));

    // A reject is a 200 with the reject inside.
    let bad = json!({"method": "add", "args": {"wave": "5"}});
    let (code, answer) = bob.send("POST", &format!("/api/v1/canisters/{kv}/call"), Some(bad));
    assert_eq!(code, 200);
    assert_eq!(answer["status"], "rejected");
    assert_eq!(answer["reject"]["code"], "destination-invalid");

    // Interface and node status.
    let (_, interface) = anonymous.send("GET", &format!("/api/v1/canisters/{kv}/interface"), None);
    let interface: InterfaceInfo = serde_json::from_value(interface).unwrap();
    assert!(
        interface
            .methods
            .iter()
            .any(|m| m.name == "query.get" && m.kind == "query")
    );
    let (_, node) = anonymous.send("GET", "/api/v1/status", None);
    let node: NodeStatus = serde_json::from_value(node).unwrap();
    assert_eq!(node.canisters, 4);

    // Deploy a component by bytes; the creator controls it; logs are served.
    let testbed = BASE64.encode(cellar_examples::testbed());
    let create = json!({"module": {"wasm": testbed}, "arg": "some(\"hi\")"});
    let (code, created) = bob.send("POST", "/api/v1/canisters", Some(create));
    assert_eq!(code, 201, "{created}");
    let created: CanisterStatus = serde_json::from_value(created).unwrap();
    assert_eq!(created.controllers, vec![bob.principal()]);
    let id = created.canister_id.to_text();
    let log = json!({"method": "log-line", "args": {"wave": "\"over http\""}});
    bob.send("POST", &format!("/api/v1/canisters/{id}/call"), Some(log));
    let (_, logs) = anonymous.send("GET", &format!("/api/v1/canisters/{id}/logs"), None);
    let logs: Vec<LogEntry> = serde_json::from_value(logs).unwrap();
    assert!(
        logs.iter().any(|l| l.message.contains("over http")),
        "{logs:?}"
    );

    // Refusals.
    let (code, _) = bob.send("POST", &format!("/api/v1/canisters/{kv}/stop"), None);
    assert_eq!(code, 403);
    let (code, _) = anonymous.send("POST", &format!("/api/v1/canisters/{kv}/stop"), None);
    assert_eq!(code, 403);
    let (code, answer) = alice.send("POST", &format!("/api/v1/canisters/{kv}/stop"), None);
    assert_eq!(code, 200, "{answer}");
    let missing = Principal::canister(999).to_text();
    let call = json!({"method": "get", "args": {"wave": "\"a\""}});
    let (code, _) = bob.send(
        "POST",
        &format!("/api/v1/canisters/{missing}/query"),
        Some(call),
    );
    assert_eq!(code, 404);
    let (code, _) = bob.send("POST", "/api/v1/canisters/not-an-id/query", Some(json!({})));
    assert_eq!(code, 400);
    let (code, _) = bob.send(
        "POST",
        &format!("/api/v1/canisters/{kv}/call"),
        Some(json!({"nope": 1})),
    );
    assert_eq!(code, 400);
    let junk = json!({"module": {"wasm": BASE64.encode(b"\0asm\x01\0\0\0")}});
    let (code, answer) = bob.send("POST", "/api/v1/canisters", Some(junk));
    assert_eq!(code, 400);
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{answer}"
    );

    // A forged signature: bob's key, alice's signature.
    let body = serde_json::to_vec(&json!({"method": "get", "args": {"wave": "\"a\""}})).unwrap();
    let path = format!("/api/v1/canisters/{kv}/query");
    let key = SigningKey::from_bytes(&[1; 32]);
    let forged = key.sign(&signing_payload("POST", &path, b"other body"));
    let response = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent()
        .post(format!("{base}{path}"))
        .header(
            PUBLIC_KEY_HEADER,
            HEXLOWER.encode(key.verifying_key().as_bytes()),
        )
        .header(SIGNATURE_HEADER, HEXLOWER.encode(&forged.to_bytes()))
        .send(&body[..])
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);

    runtime.block_on(running.shutdown()).unwrap();
}

//! How a request travels as a replicated ingress message: its envelope
//! (the signed HTTP request it came in), decoding and checking it on every
//! replica, and the node's link to the replica task (the sink requests go
//! into, the callers waiting for their message's answer).
//!
//! In replica mode (`Node::set_replica_sink`) `Node::submit` does not queue
//! the request for a local round: it encodes it (`{caller, op, attachment,
//! nonce, envelope}` as JSON) and hands it to the [`IngressSink`], which
//! wraps it in an `IngressMessage` and sends it to the replica task; the
//! caller waits for the answer of that message id. The **envelope** is the
//! user's signed HTTP request as it arrived (method, path, body, expiry,
//! nonce, public key, Ed25519 signature: [`Envelope`], handed from the HTTP
//! layer to `Node` by [`with_envelope`]). A signed request gets nonce 0 and
//! the consensus expiry of its signed expiry, so its message id is a
//! function of what the user signed and consensus refuses a replay of it
//! within its expiry; unsigned (anonymous) requests get a random nonce and
//! 4 minutes.
//!
//! The bytes an op names by hash (an install's module, a chunk, a
//! consensus-policy component) travel once: a signed request's are derived
//! from its envelope's body (an example's from the embedded examples), an
//! anonymous request's come in `attachment`; they are stored if they match
//! the op's hash, and an op whose bytes are missing or do not match is
//! refused alike everywhere (`check_attachment`).
//!
//! Every replica checks each item before it enters the round
//! (`verify_request`, a pure function of the item and the block time): a
//! request from a non-anonymous caller must carry its envelope, the
//! signature must verify (`auth::authenticate`; a block's signatures are
//! checked in one Ed25519 batch, `auth::check_all`) for exactly that
//! caller, the signed expiry must not have passed, the signed request must
//! ask for exactly this operation (`binds`: the same parsing as the HTTP
//! handlers: path, method and body against the op; an install's module
//! hash and argument; a signed "create with this module" request is one
//! `Op::CreateWithModule`, created and installed in one step, so it cannot
//! authorize an install into any other canister), and the content must be
//! canonical with the message id the envelope implies. A failing item is
//! skipped alike everywhere and a caller waiting for it gets
//! `NodeError::Unauthorized` (401). So a malicious replica cannot forge a
//! caller (tested in `replica.rs` with forged batches fed to two nodes).
//!
//! Each item's request id is derived here, alike on every replica, from
//! what the item carries (`request_tag`), never from the id the sending
//! replica claims: a signed request's from its verified signature; an
//! unsigned one carries the HTTP request it came from (method, path, body,
//! expiry and nonce, with no key or signature), from which every replica
//! computes the id the HTTP layer returned to the caller (in the anonymous
//! domain of `request_id`, so it cannot collide with a signed id), after
//! checking it asks for exactly this operation and has not expired. The id
//! goes into the journaled `Ingress` (`request`), and the round records the
//! request's fate under it in the ingress history: an update submitted to
//! one replica reads the same on every replica once executed (before that a
//! replica answers `unknown`: not yet), also after a restart, and the same
//! request sent again through another replica is not executed again.
//!
//! Messages this replica's callers wait for are mapped from their
//! `IngressId{round, index}` to the message id and answered when they
//! finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cellar_consensus::ingress::IngressMessage;
use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};

use cellar_execution::{Applied, NodeError};
use cellar_state::journal::{Ingress, Op};
use cellar_state::messages::IngressId;

/// Hands the encoded request to consensus (with the expiry in ms a signed
/// request fixes, else the sink's own) and returns its ingress message id.
/// It must only enqueue: the answer must not arrive before it returns.
pub type IngressSink = Box<dyn Fn(Vec<u8>, Option<u64>) -> Result<[u8; 32], String> + Send + Sync>;

/// What runs with the answer of a message a caller on this node waits for
/// (on the thread that executes the batch: it must be quick).
pub(crate) type Waiter = Box<dyn FnOnce(Result<Applied, NodeError>) + Send>;

/// The node's side of replica mode: the sink and the waiting callers.
#[derive(Default)]
pub(crate) struct ReplicaLink {
    sink: OnceLock<IngressSink>,
    /// Callers on this node waiting for their message, by message id.
    waiters: Mutex<HashMap<[u8; 32], Waiter>>,
    /// Waited-for messages inducted into a round, by their place in it.
    inducted: Mutex<HashMap<IngressId, [u8; 32]>>,
}

/// The id under which the round records a payload item's fate in the
/// ingress history, derived alike by every replica from what travels in
/// the item (whatever id the sending replica claims): a verified signed
/// request's id (`verified`); for an unsigned request that carries the
/// HTTP request it came from (method, path, body, expiry, nonce), the id
/// the HTTP layer computed from them, when it asks for exactly this
/// operation (else none), and it must not have expired at `time_nanos`;
/// none for anything else (not recorded). An error skips the item alike
/// everywhere.
pub(crate) fn request_tag(
    d: &Decoded,
    verified: Option<&crate::auth::Authenticated>,
    time_nanos: u64,
) -> Result<Option<cellar_state::journal::RequestTag>, String> {
    let Some(env) = &d.envelope else {
        return Ok(None);
    };
    let body = data_encoding::BASE64
        .decode(env.body.as_bytes())
        .map_err(|_| "the request's body is not base64")?;
    let encoding = match &d.ingress.op {
        Op::Call { .. } => serde_json::from_slice::<cellar_types::api::CallRequest>(&body)
            .map(|r| r.reply_encoding)
            .unwrap_or_default(),
        _ => Default::default(),
    };
    let auth = match verified {
        Some(auth) => auth.clone(),
        None if d.ingress.caller.is_anonymous() => {
            let auth = crate::auth::authenticate(
                &env.method,
                &env.path,
                &body,
                crate::auth::Credentials {
                    public_key: None,
                    signature: None,
                    ingress_expiry: env.ingress_expiry.map(|e| e.to_string()).as_deref(),
                    nonce: env.nonce.as_deref(),
                },
            )
            .map_err(|e| e.to_string())?;
            match env.ingress_expiry {
                Some(e) if e >= time_nanos => {}
                _ => return Err("the request's ingress expiry has passed".into()),
            }
            // What it sent asks for something else: it executes as the
            // anonymous request it is, under no id.
            if let Err(reason) = binds(env, &body, &d.ingress.caller, &d.ingress.op) {
                tracing::debug!("an unsigned request is recorded under no id: {reason}");
                return Ok(None);
            }
            auth
        }
        None => return Ok(None),
    };
    Ok(auth
        .ingress_expiry
        .map(|expiry| cellar_state::journal::RequestTag {
            id: auth.request_id,
            expiry,
            encoding,
        }))
}

/// What travels in an ingress message's content: the request, the user's
/// signed request as sent (so every replica checks the signature itself
/// instead of trusting the replica that received it), the bytes an unsigned
/// request names (module or chunk, base64; a signed request's are in its
/// signed body, so they travel once), and a nonce that keeps identical
/// unsigned requests distinct (0 for signed ones: their content, hence
/// their message id, is a function of the signed request, so consensus
/// refuses a replay within its expiry).
#[derive(Serialize, Deserialize)]
pub(crate) struct ReplicatedRequest {
    pub(crate) ingress: Ingress,
    #[serde(default)]
    pub(crate) attachment: Option<String>,
    pub(crate) nonce: u64,
    #[serde(default)]
    pub(crate) envelope: Option<Envelope>,
}

/// A user's signed HTTP request as it arrived: what
/// [`cellar_types::api::signing_payload`] covers, the public key and the
/// Ed25519 signature (hex, as in the headers).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// The HTTP method.
    pub method: String,
    /// The path and query.
    pub path: String,
    /// The body (base64).
    pub body: String,
    /// The ingress expiry (ns since the epoch).
    pub ingress_expiry: Option<u64>,
    /// The nonce header (hex).
    pub nonce: Option<String>,
    /// The public key header (hex).
    pub public_key: String,
    /// The signature header (hex).
    pub signature: String,
}

thread_local! {
    static ENVELOPE: std::cell::RefCell<Option<Envelope>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` (a request to the node on this thread) with the signed request
/// it comes from, which replica mode puts into the ingress message.
pub fn with_envelope<T>(envelope: Option<Envelope>, f: impl FnOnce() -> T) -> T {
    let old = ENVELOPE.with(|e| e.replace(envelope));
    let result = f();
    ENVELOPE.with(|e| e.replace(old));
    result
}

static NONCE: AtomicU64 = AtomicU64::new(0);

/// A payload item as every replica sees it.
pub(crate) struct Decoded {
    pub(crate) ingress: Ingress,
    /// The bytes the request names ([`attached_hash`]), when it carries
    /// them: attached, or in its signed body.
    pub(crate) attachment: Option<Vec<u8>>,
    envelope: Option<Envelope>,
    canonical: bool,
}

/// Decodes a payload item into the request, the bytes it names and the
/// signed request.
pub(crate) fn decode_request(content: &[u8]) -> Option<Decoded> {
    let r: ReplicatedRequest = serde_json::from_slice(content).ok()?;
    let canonical = serde_json::to_vec(&r).ok().as_deref() == Some(content) && r.nonce == 0;
    let attachment = match (r.attachment, &r.envelope) {
        (Some(b64), _) => Some(data_encoding::BASE64.decode(b64.as_bytes()).ok()?),
        (None, Some(envelope)) => signed_attachment(envelope, &r.ingress.op),
        (None, None) => None,
    };
    Some(Decoded {
        ingress: r.ingress,
        attachment,
        envelope: r.envelope,
        canonical,
    })
}

/// The hash of the bytes `op` names and every replica must store before
/// it executes: an install's module, a policy's component, a chunk.
pub(crate) fn attached_hash(op: &Op) -> Option<&str> {
    match op {
        Op::Install { module_hash, .. }
        | Op::CreateWithModule { module_hash, .. }
        | Op::SetConsensusPolicy { module_hash } => Some(module_hash),
        Op::UploadChunk { hash, .. } => Some(hash),
        _ => None,
    }
}

/// The bytes a request carries for `op`, checked against the `hash` it
/// names (and a chunk against the chunk size limit): a pure function of
/// the payload item, so every replica decides alike.
pub(crate) fn check_attachment(
    op: &Op,
    hash: &str,
    attachment: Option<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let bytes = attachment.ok_or("the request does not carry the module or chunk it names")?;
    if HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(&bytes)) != hash {
        return Err("the bytes the request carries do not match the hash it names".into());
    }
    if matches!(op, Op::UploadChunk { .. }) {
        cellar_execution::check_chunk_size(bytes.len()).map_err(|e| e.to_string())?;
    }
    Ok(bytes)
}

/// The bytes a signed request carries for `op` in its body: the module of
/// an install (an example's from the embedded examples), the component of
/// a consensus-policy change, the body of a chunk upload.
fn signed_attachment(envelope: &Envelope, op: &Op) -> Option<Vec<u8>> {
    use cellar_types::api::{CreateRequest, InstallRequest, SetPolicyRequest};
    attached_hash(op)?;
    let body = data_encoding::BASE64
        .decode(envelope.body.as_bytes())
        .ok()?;
    match op {
        Op::UploadChunk { .. } => Some(body),
        Op::Install { .. } => {
            let r: InstallRequest = serde_json::from_slice(&body).ok()?;
            source_bytes(&r.module).map(|(wasm, _)| wasm)
        }
        Op::CreateWithModule { .. } => {
            let r: CreateRequest = serde_json::from_slice(&body).ok()?;
            source_bytes(r.module.as_ref()?).map(|(wasm, _)| wasm)
        }
        Op::SetConsensusPolicy { .. } => {
            let r: SetPolicyRequest = serde_json::from_slice(&body).ok()?;
            consensus_policy_module(r.module.as_ref()).ok()
        }
        _ => None,
    }
}

/// A module source's bytes and default init argument (examples have one);
/// none for a chunked module, whose bytes are in the canister's chunk
/// store.
fn source_bytes(source: &cellar_types::api::ModuleSource) -> Option<(Vec<u8>, Option<String>)> {
    match source {
        cellar_types::api::ModuleSource::Example(name) => {
            let e = cellar_examples::get(name)?;
            Some((e.wasm.to_vec(), e.init_arg.map(str::to_string)))
        }
        cellar_types::api::ModuleSource::Wasm(b) => {
            Some((data_encoding::BASE64.decode(b.as_bytes()).ok()?, None))
        }
        cellar_types::api::ModuleSource::Chunked(_) => None,
    }
}

/// The consensus expiry (ms) of a signed request's message.
pub(crate) fn message_expiry_ms(envelope: &Envelope) -> u64 {
    envelope.ingress_expiry.unwrap_or(0) / 1_000_000
}

/// Checks, the same way on every replica, that a payload item (message
/// `id`, executing at `time_nanos`) is what its caller signed: an anonymous
/// request needs nothing; any other needs its signed request, whose
/// signature must verify for exactly that caller, whose expiry must not have
/// passed, which must ask for exactly this operation, and which must be the
/// one message its signature allows (canonical content, nonce 0, consensus
/// expiry = the signed expiry), so a replayed copy has the same id.
/// Returns the signed request's id and expiry (none for anonymous ones).
#[cfg(test)]
pub(crate) fn verify_request(
    id: &[u8; 32],
    content: &[u8],
    d: &Decoded,
    time_nanos: u64,
) -> Result<Option<crate::auth::Authenticated>, String> {
    let claim = claim_request(id, content, d)?;
    let holds = claim
        .as_ref()
        .and_then(SignedClaim::signature)
        .is_none_or(|s| s.holds());
    settle_request(claim, holds, d, time_nanos)
}

/// The request id an ingress item claims (a signed request's, or an
/// unsigned one's from the HTTP request it carries), without checking its
/// signature: enough to ask the ingress history whether it was executed
/// (a forged claim only keeps the forgery out of this node's pool).
pub(crate) fn claimed_request_id(id: &[u8; 32], content: &[u8]) -> Option<String> {
    let decoded = decode_request(content)?;
    match claim_request(id, content, &decoded) {
        Ok(Some(signed)) => Some(signed.claim.authenticated.request_id),
        Ok(None) => request_tag(&decoded, None, 0).ok().flatten().map(|t| t.id),
        Err(_) => None,
    }
}

/// A signed request's claim ([`claim_request`]) with its decoded body,
/// which [`settle_request`] checks against the operation.
pub(crate) struct SignedClaim {
    claim: crate::auth::Claim,
    body: Vec<u8>,
}

impl SignedClaim {
    /// The signature that must hold for the claim to stand.
    pub(crate) fn signature(&self) -> Option<&crate::auth::PendingSignature> {
        self.claim.signature.as_ref()
    }
}

/// The first half of [`verify_request`]: everything up to the signature
/// check, which the caller does (for a whole block at once, with
/// [`crate::auth::check_all`]). None for an anonymous request.
pub(crate) fn claim_request(
    id: &[u8; 32],
    content: &[u8],
    d: &Decoded,
) -> Result<Option<SignedClaim>, String> {
    if d.ingress.caller == cellar_types::Principal::anonymous() {
        return Ok(None);
    }
    let env = d
        .envelope
        .as_ref()
        .ok_or("a request from a non-anonymous caller must carry its signed request")?;
    let message = IngressMessage {
        expiry_ms: message_expiry_ms(env),
        content: content.to_vec(),
    };
    if !d.canonical || message.id().0 != *id {
        return Err("the message is not the one its signature allows".into());
    }
    let body = data_encoding::BASE64
        .decode(env.body.as_bytes())
        .map_err(|_| "the signed body is not base64")?;
    let claim = crate::auth::claim(
        &env.method,
        &env.path,
        &body,
        crate::auth::Credentials {
            public_key: Some(&env.public_key),
            signature: Some(&env.signature),
            ingress_expiry: env.ingress_expiry.map(|e| e.to_string()).as_deref(),
            nonce: env.nonce.as_deref(),
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(Some(SignedClaim { claim, body }))
}

/// The second half of [`verify_request`]: given the claim and whether its
/// signature `holds`, checks the caller, the expiry against `time_nanos`
/// and that the signed request asks for exactly this operation.
pub(crate) fn settle_request(
    claim: Option<SignedClaim>,
    holds: bool,
    d: &Decoded,
    time_nanos: u64,
) -> Result<Option<crate::auth::Authenticated>, String> {
    let Some(SignedClaim { claim, body }) = claim else {
        return Ok(None);
    };
    if !holds {
        return Err(crate::auth::bad_signature().to_string());
    }
    let env = d.envelope.as_ref().expect("a claim comes from an envelope");
    let caller = &d.ingress.caller;
    if claim.authenticated.caller != *caller {
        return Err("the signature is not the caller's".into());
    }
    match env.ingress_expiry {
        Some(e) if e >= time_nanos => {}
        _ => return Err("the request's ingress expiry has passed".into()),
    }
    binds(env, &body, caller, &d.ingress.op)?;
    Ok(Some(claim.authenticated))
}

/// Whether the signed request asks for `op` (the same parsing as the HTTP
/// handlers).
fn binds(
    env: &Envelope,
    body: &[u8],
    caller: &cellar_types::Principal,
    op: &Op,
) -> Result<(), String> {
    use cellar_types::api::{
        CallRequest, ControllersRequest, CreateRequest, InstallRequest, SetPolicyRequest,
        TopUpRequest,
    };
    fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
        serde_json::from_slice(body).map_err(|e| format!("the signed body is not valid: {e}"))
    }
    let path = env.path.split('?').next().unwrap_or_default();
    let parts: Vec<&str> = path.trim_start_matches("/api/v1/").split('/').collect();
    let target = |id: &cellar_types::Principal, action: &str| {
        parts.len() == 3
            && parts[0] == "canisters"
            && parts[1] == id.to_text()
            && parts[2] == action
    };
    let sha256 = |bytes: &[u8]| HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(bytes));
    let module_hash = |m: &cellar_types::api::ModuleSource| -> Option<(String, Option<String>)> {
        let (wasm, default_arg) = source_bytes(m)?;
        Some((sha256(&wasm), default_arg))
    };
    let ok = match (env.method.as_str(), op) {
        ("POST", Op::Call { id, method, args }) => {
            let r: CallRequest = json(body)?;
            (target(id, "call") || target(id, "submit")) && r.method == *method && r.args == *args
        }
        ("POST", Op::Create { controllers }) => {
            let r: CreateRequest = json(body)?;
            // As `Node::create`: no controllers means the caller.
            let expected = if r.controllers.is_empty() {
                vec![caller.clone()]
            } else {
                r.controllers
            };
            path == "/api/v1/canisters" && r.module.is_none() && expected == *controllers
        }
        (
            "POST",
            Op::CreateWithModule {
                controllers,
                module_hash: hash,
                arg,
            },
        ) => {
            let r: CreateRequest = json(body)?;
            let expected = if r.controllers.is_empty() {
                vec![caller.clone()]
            } else {
                r.controllers.clone()
            };
            let m = r.module.as_ref().and_then(module_hash);
            path == "/api/v1/canisters"
                && expected == *controllers
                && matches!(m, Some((h, default)) if h == *hash
                    && *arg == r.arg.clone().or(default.clone()))
        }
        (
            "POST",
            Op::Install {
                id,
                mode,
                module_hash: hash,
                arg,
            },
        ) => {
            // A signed create-with-module request is `CreateWithModule`:
            // it cannot authorize an install into another canister.
            let r: InstallRequest = json(body)?;
            let expected_arg = |default: Option<String>| match r.mode {
                cellar_types::api::InstallMode::Upgrade => r.arg.clone(),
                _ => r.arg.clone().or(default),
            };
            target(id, "install")
                && r.mode == *mode
                && matches!(module_hash(&r.module), Some((h, default))
                    if h == *hash && *arg == expected_arg(default.clone()))
        }
        (
            "POST",
            Op::InstallChunked {
                id,
                mode,
                chunk_hashes,
                module_hash,
                arg,
            },
        ) => {
            let r: InstallRequest = json(body)?;
            let named =
                cellar_types::api::ModuleSource::Chunked(cellar_types::api::ChunkedModule {
                    chunk_hashes: chunk_hashes.clone(),
                    module_hash: module_hash.clone(),
                });
            target(id, "install") && r.mode == *mode && r.module == named && r.arg == *arg
        }
        ("POST", Op::UploadChunk { id, hash }) => target(id, "chunks") && sha256(body) == *hash,
        ("DELETE", Op::ClearChunks { id }) => target(id, "chunks"),
        ("POST", Op::Stop { id }) => target(id, "stop"),
        ("POST", Op::Start { id }) => target(id, "start"),
        ("DELETE", Op::Delete { id }) => {
            parts.len() == 2 && parts[0] == "canisters" && parts[1] == id.to_text()
        }
        ("PUT", Op::SetControllers { id, controllers }) => {
            let r: ControllersRequest = json(body)?;
            target(id, "controllers") && r.controllers == *controllers
        }
        ("POST", Op::TopUp { id, amount }) => {
            let r: TopUpRequest = json(body)?;
            target(id, "top-up") && r.cycles == *amount
        }
        ("PUT", Op::SetConsensusPolicy { module_hash }) => {
            let r: SetPolicyRequest = json(body)?;
            let wasm = consensus_policy_module(r.module.as_ref())?;
            path == "/api/v1/policy/consensus"
                && HEXLOWER.encode(&<sha2::Sha256 as sha2::Digest>::digest(&wasm)) == *module_hash
        }
        ("PUT", Op::SetSchedulerPolicy { .. }) => {
            let _: SetPolicyRequest = json(body)?;
            path == "/api/v1/policy/scheduler"
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err("the signed request does not ask for this operation".into())
    }
}

impl ReplicaLink {
    pub(crate) fn is_on(&self) -> bool {
        self.sink.get().is_some()
    }

    pub(crate) fn turn_on(&self, sink: IngressSink) {
        let _ = self.sink.set(sink);
    }

    /// Sends the request to consensus; the receiver gets its answer.
    pub(crate) fn submit(
        &self,
        ingress: &Ingress,
        module: Option<Vec<u8>>,
    ) -> Result<mpsc::Receiver<Result<Applied, NodeError>>, NodeError> {
        let (reply, answer) = mpsc::channel();
        let done: Waiter = Box::new(move |result| {
            let _ = reply.send(result);
        });
        self.submit_then(ingress, module, done)
            .map_err(|(e, _)| e)?;
        Ok(answer)
    }

    /// Sends the request to consensus and returns at once; `done` runs
    /// with its answer. When the request cannot be sent, `done` comes back
    /// with the error, not run.
    pub(crate) fn submit_then(
        &self,
        ingress: &Ingress,
        module: Option<Vec<u8>>,
        done: Waiter,
    ) -> Result<(), (NodeError, Waiter)> {
        // An unsigned request's envelope carries no signature; it travels
        // so that every replica derives its request id (`request_tag`).
        let envelope = ENVELOPE.with(|e| e.borrow().clone());
        let signed = envelope.is_some() && !ingress.caller.is_anonymous();
        let nonce = match signed {
            true => 0,
            false => now_nanos() ^ (NONCE.fetch_add(1, Ordering::Relaxed) << 40),
        };
        let expiry_ms = envelope.as_ref().map(message_expiry_ms);
        // A request's bytes are in its (signed) body already.
        let attachment = match envelope {
            Some(_) => None,
            None => module.map(|m| data_encoding::BASE64.encode(&m)),
        };
        let content = match serde_json::to_vec(&ReplicatedRequest {
            ingress: ingress.clone(),
            attachment,
            nonce,
            envelope,
        }) {
            Ok(content) => content,
            Err(e) => return Err((NodeError::Internal(e.into()), done)),
        };
        let sink = self.sink.get().expect("replica mode is on");
        // Hold the lock while submitting so the answer finds the waiter.
        let mut waiters = self.waiters.lock().expect("waiters lock");
        match sink(content, expiry_ms) {
            Ok(id) => {
                waiters.insert(id, done);
                Ok(())
            }
            Err(e) => Err((NodeError::BadRequest(e), done)),
        }
    }

    /// Message `id` was inducted at `index`: remember it if someone waits.
    pub(crate) fn expect(&self, index: IngressId, id: &[u8; 32]) {
        if self.waiters.lock().expect("waiters lock").contains_key(id) {
            self.inducted
                .lock()
                .expect("inducted lock")
                .insert(index, *id);
        }
    }

    /// Message `id` was skipped (its signature does not hold): answer its
    /// caller if it is here.
    pub(crate) fn refuse(&self, id: &[u8; 32], reason: String) {
        let waiter = self.waiters.lock().expect("waiters lock").remove(id);
        if let Some(done) = waiter {
            done(Err(NodeError::Unauthorized(reason)));
        }
    }

    /// The message at `index` finished: answer its caller if it is here.
    pub(crate) fn answer(&self, index: IngressId, result: Result<Applied, NodeError>) {
        let Some(id) = self.inducted.lock().expect("inducted lock").remove(&index) else {
            return;
        };
        let waiter = self.waiters.lock().expect("waiters lock").remove(&id);
        if let Some(done) = waiter {
            done(result);
        }
    }
}

pub(crate) fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> u64 {
    now_nanos() / 1_000_000
}

/// The component a `PUT /api/v1/policy/consensus` body names: a shipped
/// policy (`icc`, `round-robin`) or a module (base64).
pub fn consensus_policy_module(
    source: Option<&cellar_types::api::ModuleSource>,
) -> Result<Vec<u8>, String> {
    use cellar_types::api::ModuleSource;
    match source {
        Some(ModuleSource::Example(name)) => match name.as_str() {
            "icc" => Ok(cellar_examples::ICC_CONSENSUS_POLICY.to_vec()),
            "round-robin" => Ok(cellar_examples::ROUND_ROBIN_CONSENSUS_POLICY.to_vec()),
            other => Err(format!(
                "there is no consensus policy named {other:?}; policies: icc, round-robin"
            )),
        },
        Some(ModuleSource::Wasm(b)) => data_encoding::BASE64
            .decode(b.as_bytes())
            .map_err(|e| format!("the module is not valid base64: {e}")),
        Some(ModuleSource::Chunked(_)) => {
            Err("a consensus policy is sent whole (base64), not in chunks".into())
        }
        None => Err("name a consensus policy (icc, round-robin) or send a module".into()),
    }
}

//! `cellar-agent`: a blocking client of a Cellar node's HTTP API
//! (`/api/v1`, see [`cellar_types::api`]).
//!
//! Every request is signed by the agent's [`Identity`] with a fresh nonce
//! and an ingress expiry, so the node can refuse replays. Updates can be
//! sent synchronously ([`Agent::call`]) or submitted and polled
//! ([`Agent::submit`], [`Agent::request_status`], [`Agent::wait`],
//! [`Agent::call_and_wait`]). [`Agent::wait`] polls until the request is
//! replied or rejected; `unknown` means "not executed there yet" until the
//! request's expiry has passed.
//!
//! [`Agent::with_urls`] talks to several replicas: a URL that does not
//! answer (connection refused or reset, a timeout) passes the same signed
//! request to the next (the CLI's repeated `--url`, comma-separated
//! `CELLAR_URL` and `--fleet DIR`). [`Agent::sign`] and [`Agent::send_raw`]
//! let tests resend the same signed bytes. [`Agent::read_state_certified`]
//! and [`verify_read_state`] check read-state certificates (`cellar
//! canister status` prints whether it verified). [`Agent::install_module`]
//! sends a module inline or through the canister's chunk store (`chunked.rs`).
//!
//! ```no_run
//! use cellar_agent::{Agent, Identity};
//! use cellar_types::api::{Args, CallRequest};
//! # fn main() -> Result<(), cellar_agent::AgentError> {
//! let agent = Agent::new("http://127.0.0.1:7070", Identity::generate()?);
//! let kv = "rwlgt-iiaaa-aaaaa-aaaaa-cai".parse().unwrap();
//! agent.call_and_wait(&kv, &CallRequest::wave("add", "\"apple\", 5"))?;
//! let reply = agent.query(&kv, &CallRequest::wave("get", "\"apple\""))?;
//! # Ok(()) }
//! ```

mod chunked;
mod identity;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cellar_types::api::{
    Activity, ApiError, CallRequest, CallResponse, CanisterStatus, ControllersRequest,
    CreateRequest, INGRESS_EXPIRY_HEADER, InstallRequest, InterfaceInfo, LogEntry, NONCE_HEADER,
    NodeStatus, PUBLIC_KEY_HEADER, ReadState, RequestState, RequestStatus, SIGNATURE_HEADER,
    SubmitResponse,
};
use cellar_types::{Principal, Reject};
use data_encoding::HEXLOWER;
use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::http::{Method, Request, Uri};

pub use chunked::{INLINE_MODULE_BYTES, sha256_hex};
pub use identity::{Identity, Signature};

/// What can go wrong talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Nothing answers at the node's address.
    #[error("cannot reach the node at {url}: is `cellar start` running? ({message})")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// The transport's message.
        message: String,
    },
    /// The node refused the request (4xx/5xx) with a message.
    #[error("{message}")]
    Http {
        /// The HTTP status.
        status: u16,
        /// The node's explanation.
        message: String,
    },
    /// The node at the address did not answer in time, or cut the
    /// connection.
    #[error("the node at {url} did not answer ({message})")]
    NoAnswer {
        /// The node's URL.
        url: String,
        /// The transport's message.
        message: String,
    },
    /// Another transport failure.
    #[error("request to the node failed: {0}")]
    Transport(String),
    /// The answer is not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The node's URL is not valid.
    #[error("invalid node URL {0}: expected http://HOST:PORT")]
    Url(String),
    /// A key file problem.
    #[error("{0}")]
    Identity(String),
    /// A read-state answer whose certificate is missing or does not verify.
    #[error("the read-state answer is not certified: {0}")]
    Uncertified(String),
    /// The call reached the canister and was rejected.
    #[error("rejected ({}): {}", .0.code_text(), .0.message)]
    Rejected(Reject),
    /// A submitted request did not finish before the agent gave up.
    #[error("request {0} did not finish in time")]
    Timeout(String),
    /// The request's ingress expiry passed and the node still did not
    /// know it.
    #[error(
        "request {0} expired and no node executed it (or it is a wrong id, or one another \
         identity sent)"
    )]
    UnknownRequest(String),
    /// The request finished, but its result was dropped at its expiry.
    #[error("request {0} finished, but its result was dropped after its expiry")]
    ResultDropped(String),
}

/// Extension to print reject codes as the API spells them.
trait CodeText {
    fn code_text(&self) -> String;
}

impl CodeText for Reject {
    fn code_text(&self) -> String {
        serde_json::to_value(self.code)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| format!("{:?}", self.code))
    }
}

/// A request signed and ready to send (possibly more than once, to test
/// replay protection).
#[derive(Debug, Clone)]
pub struct SignedRequest {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: String,
    /// Path and query, as signed.
    pub path: String,
    /// Nanoseconds since the Unix epoch after which the node refuses it.
    pub ingress_expiry: u64,
    /// The nonce.
    pub nonce: Vec<u8>,
    /// The body.
    pub body: Vec<u8>,
    /// The signature headers and the request id.
    pub signature: Signature,
}

impl SignedRequest {
    /// The request's id, as the node computes it.
    pub fn request_id(&self) -> &str {
        &self.signature.request_id
    }
}

/// A raw answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// How long requests live and how submitted requests are polled.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Ingress expiry of requests, from now (at most 5 minutes).
    pub ingress_expiry: Duration,
    /// The longest [`Agent::wait`] polls a request (it stops earlier once
    /// the request's expiry has passed).
    pub max_wait: Duration,
    /// Timeout of one HTTP exchange.
    pub timeout: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            ingress_expiry: Duration::from_secs(240),
            max_wait: Duration::from_secs(330),
            timeout: Duration::from_secs(300),
        }
    }
}

/// A client of a node (or of any of several replicas of a subnet, tried in
/// turn: see [`Agent::with_urls`]), acting as one identity.
pub struct Agent {
    urls: Vec<String>,
    /// The URL in use: an index into `urls`.
    current: AtomicUsize,
    identity: Identity,
    options: AgentOptions,
    http: ureq::Agent,
    /// Expiries of the requests submitted, for [`Agent::wait`].
    submitted: Mutex<BTreeMap<String, u64>>,
}

/// Nanoseconds since the Unix epoch.
fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// `/api/v1/canisters/{id}{suffix}`.
fn canister_path(id: &Principal, suffix: &str) -> String {
    format!("/api/v1/canisters/{}{suffix}", id.to_text())
}

impl Agent {
    /// A client of the node at `base_url` (`http://127.0.0.1:7070`).
    pub fn new(base_url: &str, identity: Identity) -> Self {
        Self::with_options(base_url, identity, AgentOptions::default())
    }

    /// A client with explicit options.
    pub fn with_options(base_url: &str, identity: Identity, options: AgentOptions) -> Self {
        Self::with_urls(&[base_url.to_string()], identity, options)
    }

    /// A client of several replicas of one subnet (or nodes serving the
    /// same state): requests go to the first; when it does not answer
    /// (connection refused or reset, timeout) the agent tries the next,
    /// and stays with the one that answered. Resending is safe: a request
    /// keeps its id, so it executes at most once. `urls` must not be
    /// empty.
    pub fn with_urls(urls: &[String], identity: Identity, options: AgentOptions) -> Self {
        assert!(!urls.is_empty(), "an agent needs a URL");
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(options.timeout))
            .build();
        Agent {
            urls: urls
                .iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
            current: AtomicUsize::new(0),
            identity,
            options,
            http: ureq::Agent::new_with_config(config),
            submitted: Mutex::new(BTreeMap::new()),
        }
    }

    /// The URLs the agent may use, in order.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The identity requests come from.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The base URL in use.
    pub fn base_url(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> Result<NodeStatus, AgentError> {
        self.get("/api/v1/status")
    }

    /// `GET /api/v1/activity`: counters, canisters and recent calls.
    pub fn activity(&self) -> Result<Activity, AgentError> {
        self.get("/api/v1/activity")
    }

    /// `GET /metrics`: the Prometheus text.
    pub fn metrics(&self) -> Result<String, AgentError> {
        let response = self.send_raw(&self.sign("GET", "/metrics", Vec::new())?)?;
        let body = check(response)?;
        String::from_utf8(body).map_err(|e| AgentError::Decode(e.to_string()))
    }

    /// `GET /api/v1/canisters`.
    pub fn canisters(&self) -> Result<Vec<CanisterStatus>, AgentError> {
        self.get("/api/v1/canisters")
    }

    /// `POST /api/v1/canisters`: creates a canister, installing its code when given.
    pub fn create(&self, request: &CreateRequest) -> Result<CanisterStatus, AgentError> {
        self.send_json("POST", "/api/v1/canisters", Some(request))
    }

    /// `GET /api/v1/canisters/{id}`.
    pub fn canister_status(&self, id: &Principal) -> Result<CanisterStatus, AgentError> {
        self.get(&canister_path(id, ""))
    }

    /// `GET /api/v1/canisters/{id}/read-state`.
    pub fn read_state(&self, id: &Principal) -> Result<ReadState, AgentError> {
        self.get(&canister_path(id, "/read-state"))
    }

    /// `GET .../read-state`, checked against the node's key from
    /// `/api/v1/status` ([`verify_read_state`]); fails with
    /// [`AgentError::Uncertified`] when the certificate is missing or does
    /// not match the answer.
    pub fn read_state_certified(&self, id: &Principal) -> Result<ReadState, AgentError> {
        let key = self
            .status()?
            .node_key
            .ok_or_else(|| AgentError::Uncertified("the node publishes no node key".to_string()))?;
        let state = self.read_state(id)?;
        verify_read_state(&state, &key).map_err(AgentError::Uncertified)?;
        Ok(state)
    }

    /// `POST /api/v1/canisters/{id}/install`.
    pub fn install(
        &self,
        id: &Principal,
        request: &InstallRequest,
    ) -> Result<CanisterStatus, AgentError> {
        self.send_json("POST", &canister_path(id, "/install"), Some(request))
    }

    /// `POST /api/v1/canisters/{id}/stop`.
    pub fn stop(&self, id: &Principal) -> Result<CanisterStatus, AgentError> {
        self.send_json::<(), _>("POST", &canister_path(id, "/stop"), None)
    }

    /// `POST /api/v1/canisters/{id}/start`.
    pub fn start(&self, id: &Principal) -> Result<CanisterStatus, AgentError> {
        self.send_json::<(), _>("POST", &canister_path(id, "/start"), None)
    }

    /// `DELETE /api/v1/canisters/{id}`.
    pub fn delete(&self, id: &Principal) -> Result<CanisterStatus, AgentError> {
        self.send_json::<(), _>("DELETE", &canister_path(id, ""), None)
    }

    /// `POST /api/v1/canisters/{id}/top-up`: adds cycles.
    pub fn top_up(&self, id: &Principal, cycles: u64) -> Result<CanisterStatus, AgentError> {
        let body = cellar_types::api::TopUpRequest { cycles };
        self.send_json("POST", &canister_path(id, "/top-up"), Some(&body))
    }

    /// `GET /api/v1/policy`: the policies the node runs.
    pub fn policy(&self) -> Result<cellar_types::api::PolicyInfo, AgentError> {
        self.get("/api/v1/policy")
    }

    /// `PUT /api/v1/policy/scheduler`: replaces the scheduler policy (a
    /// component, a shipped policy by name, or `None` for the built-in).
    pub fn set_scheduler_policy(
        &self,
        module: Option<cellar_types::api::ModuleSource>,
    ) -> Result<cellar_types::api::PolicyInfo, AgentError> {
        let body = cellar_types::api::SetPolicyRequest { module };
        self.send_json("PUT", "/api/v1/policy/scheduler", Some(&body))
    }

    /// `PUT /api/v1/policy/consensus` (replicas of a subnet): the new
    /// consensus policy, applied by every replica at the same height.
    pub fn set_consensus_policy(
        &self,
        module: cellar_types::api::ModuleSource,
    ) -> Result<cellar_types::api::PolicyInfo, AgentError> {
        let body = cellar_types::api::SetPolicyRequest {
            module: Some(module),
        };
        self.send_json("PUT", "/api/v1/policy/consensus", Some(&body))
    }

    /// `PUT /api/v1/canisters/{id}/controllers`.
    pub fn set_controllers(
        &self,
        id: &Principal,
        controllers: Vec<Principal>,
    ) -> Result<CanisterStatus, AgentError> {
        let body = ControllersRequest { controllers };
        self.send_json("PUT", &canister_path(id, "/controllers"), Some(&body))
    }

    /// `POST /api/v1/canisters/{id}/call`: an update, answered when done.
    pub fn call(&self, id: &Principal, request: &CallRequest) -> Result<CallResponse, AgentError> {
        self.send_json("POST", &canister_path(id, "/call"), Some(request))
    }

    /// `POST /api/v1/canisters/{id}/submit`: queues an update and returns
    /// its request id at once.
    pub fn submit(&self, id: &Principal, request: &CallRequest) -> Result<String, AgentError> {
        let body = serde_json::to_vec(request).map_err(|e| AgentError::Decode(e.to_string()))?;
        let path = canister_path(id, "/submit");
        let signed = self.sign("POST", &path, body)?;
        let response = self.send_raw(&signed)?;
        let answer: SubmitResponse = self.decode(&format!("POST {path}"), response)?;
        let mut submitted = self.submitted.lock().expect("submitted lock");
        let now = now_nanos();
        submitted.retain(|_, expiry| *expiry > now);
        submitted.insert(answer.request_id.clone(), signed.ingress_expiry);
        Ok(answer.request_id)
    }

    /// `GET /api/v1/requests/{request_id}`: a submitted request's status.
    pub fn request_status(&self, request_id: &str) -> Result<RequestStatus, AgentError> {
        self.get(&format!("/api/v1/requests/{request_id}"))
    }

    /// Polls a submitted request until it is replied or rejected (backing
    /// off from 1 ms to 100 ms), until its ingress expiry has passed (the
    /// one this agent submitted it with, else the agent's own expiry from
    /// now) or for at most the agent's `max_wait`.
    ///
    /// Every replica of a subnet answers from the replicated ingress
    /// history, so "unknown" means "not executed here yet" (a replica that
    /// did not receive the request learns of it when consensus orders it):
    /// it is an answer only once the request has expired.
    pub fn wait(&self, request_id: &str) -> Result<CallResponse, AgentError> {
        let started = Instant::now();
        let deadline = started + self.options.max_wait;
        let expiry = self
            .submitted
            .lock()
            .expect("submitted lock")
            .get(request_id)
            .copied()
            .unwrap_or_else(|| now_nanos() + self.options.ingress_expiry.as_nanos() as u64);
        let mut pause = Duration::from_millis(1);
        loop {
            let status = self.request_status(request_id)?;
            if status.status.is_done() {
                return status
                    .response
                    .ok_or_else(|| AgentError::Decode("a finished request without result".into()));
            }
            if status.status == RequestState::Done {
                return Err(AgentError::ResultDropped(request_id.to_string()));
            }
            if status.status == RequestState::Unknown && now_nanos() > expiry {
                return Err(AgentError::UnknownRequest(request_id.to_string()));
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout(request_id.to_string()));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// Submits an update and polls it: the reply, or [`AgentError::Rejected`].
    pub fn call_and_wait(
        &self,
        id: &Principal,
        request: &CallRequest,
    ) -> Result<serde_json::Value, AgentError> {
        let request_id = self.submit(id, request)?;
        replied(self.wait(&request_id)?)
    }

    /// `POST /api/v1/canisters/{id}/query`: a query.
    pub fn query(&self, id: &Principal, request: &CallRequest) -> Result<CallResponse, AgentError> {
        self.send_json("POST", &canister_path(id, "/query"), Some(request))
    }

    /// `GET /api/v1/canisters/{id}/interface`.
    pub fn interface(&self, id: &Principal) -> Result<InterfaceInfo, AgentError> {
        self.get(&canister_path(id, "/interface"))
    }

    /// `GET /api/v1/canisters/{id}/logs`.
    pub fn logs(&self, id: &Principal) -> Result<Vec<LogEntry>, AgentError> {
        self.get(&canister_path(id, "/logs"))
    }

    /// Signs a request with a fresh nonce and the agent's ingress expiry.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<SignedRequest, AgentError> {
        let nonce = identity::random_bytes::<16>()?.to_vec();
        let expiry = now_nanos() + self.options.ingress_expiry.as_nanos() as u64;
        Ok(self.sign_with(method, path, body, expiry, nonce))
    }

    /// Signs a request with the given expiry and nonce.
    pub fn sign_with(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        ingress_expiry: u64,
        nonce: Vec<u8>,
    ) -> SignedRequest {
        let signature = self
            .identity
            .sign(method, path, ingress_expiry, &nonce, &body);
        SignedRequest {
            method: method.to_string(),
            path: path.to_string(),
            ingress_expiry,
            nonce,
            body,
            signature,
        }
    }

    /// Sends a signed request as it is and returns the raw answer: to the
    /// URL in use, and when it does not answer to the next ones in turn.
    pub fn send_raw(&self, request: &SignedRequest) -> Result<RawResponse, AgentError> {
        let first = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..self.urls.len() {
            let index = (first + attempt) % self.urls.len();
            match self.send_to(&self.urls[index], request) {
                Err(e) if no_answer(&e) => last = Some(e),
                answer => {
                    if attempt > 0 {
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        Err(last.expect("at least one URL"))
    }

    /// Sends a signed request to the node at `base_url`.
    fn send_to(&self, base_url: &str, request: &SignedRequest) -> Result<RawResponse, AgentError> {
        let url = format!("{}{}", base_url, request.path);
        let uri: Uri = url
            .parse()
            .map_err(|_| AgentError::Url(base_url.to_string()))?;
        if uri.scheme().is_none() || uri.host().is_none() {
            return Err(AgentError::Url(base_url.to_string()));
        }
        let method: Method = request
            .method
            .parse()
            .map_err(|_| AgentError::Transport(format!("bad method {}", request.method)))?;
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(INGRESS_EXPIRY_HEADER, request.ingress_expiry.to_string())
            .header(NONCE_HEADER, HEXLOWER.encode(&request.nonce));
        if let (Some(key), Some(signature)) =
            (&request.signature.public_key, &request.signature.signature)
        {
            builder = builder
                .header(PUBLIC_KEY_HEADER, key)
                .header(SIGNATURE_HEADER, signature);
        }
        let sent = if method == Method::GET {
            self.http.run(
                builder
                    .body(())
                    .map_err(|e| AgentError::Transport(e.to_string()))?,
            )
        } else {
            self.http.run(
                builder
                    .header("content-type", "application/json")
                    .body(request.body.clone())
                    .map_err(|e| AgentError::Transport(e.to_string()))?,
            )
        };
        let mut response = sent.map_err(|e| transport_error(base_url, e))?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| transport_error(base_url, e))?;
        Ok(RawResponse { status, body })
    }

    /// A signed `GET`, decoded.
    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, AgentError> {
        self.send_json::<(), T>("GET", path, None)
    }

    /// A signed request with an optional JSON body, decoded.
    fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AgentError> {
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| AgentError::Decode(e.to_string()))?,
            None => Vec::new(),
        };
        let response = self.send_raw(&self.sign(method, path, body)?)?;
        self.decode(&format!("{method} {path}"), response)
    }

    /// A successful answer's JSON body, decoded (`what` names the request
    /// in the error), or the node's error.
    fn decode<T: DeserializeOwned>(
        &self,
        what: &str,
        response: RawResponse,
    ) -> Result<T, AgentError> {
        let bytes = check(response)?;
        serde_json::from_slice(&bytes).map_err(|e| AgentError::Decode(format!("{what}: {e}")))
    }
}

/// Whether an error means the node did not answer (so another may).
fn no_answer(e: &AgentError) -> bool {
    matches!(
        e,
        AgentError::Unreachable { .. } | AgentError::NoAnswer { .. }
    )
}

/// Explains a transport failure, pointing at `cellar start` when nothing
/// listens.
fn transport_error(base_url: &str, error: ureq::Error) -> AgentError {
    let unreachable = match &error {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::NotFound
                | ErrorKind::AddrNotAvailable
        ),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
        _ => false,
    };
    let silent = match &error {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::TimedOut
                | ErrorKind::UnexpectedEof
                | ErrorKind::BrokenPipe
                | ErrorKind::ConnectionAborted
        ),
        _ => false,
    };
    if unreachable {
        AgentError::Unreachable {
            url: base_url.to_string(),
            message: error.to_string(),
        }
    } else if silent {
        AgentError::NoAnswer {
            url: base_url.to_string(),
            message: error.to_string(),
        }
    } else {
        AgentError::Transport(error.to_string())
    }
}

/// The body of a successful answer, or the node's error.
fn check(response: RawResponse) -> Result<Vec<u8>, AgentError> {
    if (200..300).contains(&response.status) {
        return Ok(response.body);
    }
    let message = match serde_json::from_slice::<ApiError>(&response.body) {
        Ok(ApiError { error }) => error,
        Err(_) => format!(
            "the node answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body).trim()
        ),
    };
    Err(AgentError::Http {
        status: response.status,
        message,
    })
}

/// The reply of a call, or [`AgentError::Rejected`].
pub fn replied(response: CallResponse) -> Result<serde_json::Value, AgentError> {
    match response {
        CallResponse::Replied { reply, .. } => Ok(reply),
        CallResponse::Rejected { reject, .. } => Err(AgentError::Rejected(reject)),
    }
}

/// Checks that `state.certificate` is the signature of the node whose
/// Ed25519 public key is `node_key` (hex) over the rest of `state`
/// ([`cellar_types::api::read_state_payload`]).
pub fn verify_read_state(state: &ReadState, node_key: &str) -> Result<(), String> {
    use ed25519_dalek::{Signature as EdSignature, Verifier, VerifyingKey};
    let certificate = state
        .certificate
        .as_deref()
        .ok_or("the answer has no certificate")?;
    let key: [u8; 32] = HEXLOWER
        .decode(node_key.trim().as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the node key is not 32 bytes of hex")?;
    let signature: [u8; 64] = HEXLOWER
        .decode(certificate.trim().as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the certificate is not 64 bytes of hex")?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| "the node key is not an Ed25519 key")?;
    key.verify(
        &cellar_types::api::read_state_payload(state),
        &EdSignature::from_bytes(&signature),
    )
    .map_err(|_| "the certificate does not match the answer".to_string())
}

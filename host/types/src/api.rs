//! The JSON bodies of the node's HTTP API, version 1 (`/api/v1`).
//!
//! | Method and path                          | Body                  | Answer               |
//! |------------------------------------------|-----------------------|----------------------|
//! | `GET  /api/v1/status`                    |                       | [`NodeStatus`]       |
//! | `GET  /api/v1/canisters`                 |                       | `[CanisterStatus]`   |
//! | `POST /api/v1/canisters`                 | [`CreateRequest`]     | [`CanisterStatus`]   |
//! | `GET  /api/v1/canisters/{id}`            |                       | [`CanisterStatus`]   |
//! | `DELETE /api/v1/canisters/{id}`          |                       | [`CanisterStatus`]   |
//! | `POST /api/v1/canisters/{id}/install`    | [`InstallRequest`]    | [`CanisterStatus`]   |
//! | `POST /api/v1/canisters/{id}/call`       | [`CallRequest`]       | [`CallResponse`]     |
//! | `POST /api/v1/canisters/{id}/query`      | [`CallRequest`]       | [`CallResponse`]     |
//! | `POST /api/v1/canisters/{id}/stop`       |                       | [`CanisterStatus`]   |
//! | `POST /api/v1/canisters/{id}/start`      |                       | [`CanisterStatus`]   |
//! | `PUT  /api/v1/canisters/{id}/controllers`| [`ControllersRequest`]| [`CanisterStatus`]   |
//! | `GET  /api/v1/canisters/{id}/interface`  |                       | [`InterfaceInfo`]    |
//! | `GET  /api/v1/canisters/{id}/logs`       |                       | `[LogEntry]`         |
//! | `GET  /api/v1/canisters/{id}/read-state` |                       | [`ReadState`]        |
//! | `POST /api/v1/canisters/{id}/submit`     | [`CallRequest`]       | 202 [`SubmitResponse`] |
//! | `GET  /api/v1/requests/{request_id}`     |                       | [`RequestStatus`]    |
//! | `GET  /api/v1/activity`                  |                       | [`Activity`]         |
//! | `GET  /metrics`                          |                       | Prometheus text      |
//! | `GET  /dashboard`                        |                       | the web dashboard    |
//!
//! Errors of the request itself (bad JSON, unknown canister, a caller who is
//! not a controller, a malformed component) are 4xx answers with an
//! [`ApiError`] body. A message that reaches a canister always answers 200
//! with a [`CallResponse`], replied or rejected.
//!
//! Requests that change anything carry an ingress expiry ([`INGRESS_EXPIRY_HEADER`],
//! at most [`MAX_INGRESS_EXPIRY_NANOS`] ahead) and are usually signed (see
//! [`signing_payload`]); the node refuses a request whose [`request_id`] it
//! has already seen before the request expires (409), an expired one or
//! one too far in the future (400), and bodies over the limits (413).

use serde::{Deserialize, Serialize};

use crate::{Principal, Reject};

/// Header carrying the caller's Ed25519 public key, hex encoded.
pub const PUBLIC_KEY_HEADER: &str = "x-cellar-public-key";
/// Header carrying the Ed25519 signature of [`signing_payload`], hex encoded.
pub const SIGNATURE_HEADER: &str = "x-cellar-signature";
/// Header carrying the request's ingress expiry: nanoseconds since the Unix
/// epoch, decimal. Signed; required on every request that changes anything.
pub const INGRESS_EXPIRY_HEADER: &str = "x-cellar-ingress-expiry";
/// Header carrying the request's nonce, hex encoded (at most
/// [`MAX_NONCE_BYTES`] bytes). Signed; makes otherwise equal requests distinct.
pub const NONCE_HEADER: &str = "x-cellar-nonce";
/// The address `cellar start` listens on by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7070";
/// How far in the future a request's ingress expiry may lie (5 minutes).
pub const MAX_INGRESS_EXPIRY_NANOS: u64 = 5 * 60 * 1_000_000_000;
/// Clock skew tolerated beyond [`MAX_INGRESS_EXPIRY_NANOS`] (30 seconds).
pub const INGRESS_EXPIRY_SKEW_NANOS: u64 = 30 * 1_000_000_000;
/// The longest nonce, in bytes.
pub const MAX_NONCE_BYTES: usize = 32;
/// The largest body of a call, query or submission (2 MiB); larger bodies are
/// refused with 413. Installs take modules up to the node's component limit.
pub const MAX_CALL_BODY_BYTES: usize = 2 << 20;

/// The bytes a client signs for a request: a domain separator, the HTTP
/// method, the path (with query string), the ingress expiry (0 when absent),
/// the nonce and the body. A request without signature headers comes from
/// the anonymous principal.
pub fn signing_payload(
    method: &str,
    path: &str,
    ingress_expiry: u64,
    nonce: &[u8],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + path.len() + nonce.len() + body.len());
    out.extend_from_slice(b"cellar-request-v2\0");
    out.extend_from_slice(method.as_bytes());
    out.push(0);
    out.extend_from_slice(path.as_bytes());
    out.push(0);
    out.extend_from_slice(&ingress_expiry.to_be_bytes());
    out.extend_from_slice(&(nonce.len() as u32).to_be_bytes());
    out.extend_from_slice(nonce);
    out.extend_from_slice(body);
    out
}

/// The id of a request: SHA-256 of its sender's public key (empty for
/// anonymous requests) and its [`signing_payload`], hex. Two requests have
/// the same id exactly when they are the same signed content, so the id
/// names a request before it is sent and a replay has the id of the original.
pub fn request_id(public_key: Option<&[u8; 32]>, payload: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"cellar-request-id\0");
    match public_key {
        Some(key) => {
            hasher.update([1]);
            hasher.update(key);
        }
        None => hasher.update([0]),
    }
    hasher.update(payload);
    data_encoding::HEXLOWER.encode(&hasher.finalize())
}

/// An error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong.
    pub error: String,
}

/// The node's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's software version.
    pub version: String,
    /// Rounds executed so far.
    pub round: u64,
    /// Number of canisters.
    pub canisters: u64,
    /// Where the node keeps its state.
    pub data_dir: String,
    /// SHA-256 of the replicated state at `round`, hex: replicas that
    /// executed the same rounds report the same hash.
    pub state_hash: String,
    /// The node's Ed25519 public key (hex) that signs read-state
    /// certificates ([`ReadState::certificate`]); `None` when the node
    /// certifies nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
}

/// Where a module comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleSource {
    /// One of the examples embedded in the node (`counter`, `kv`, `ledger`).
    Example(String),
    /// A component binary, base64 encoded.
    Wasm(String),
    /// A component assembled from chunks already uploaded to the target
    /// canister's chunk store (`POST .../chunks`): for modules larger than
    /// one request may carry.
    Chunked(ChunkedModule),
}

/// A module as the concatenation of stored chunks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChunkedModule {
    /// SHA-256 (hex) of each chunk, in module order; each must be in the
    /// canister's chunk store.
    pub chunk_hashes: Vec<String>,
    /// SHA-256 (hex) of the whole module, which the concatenation must
    /// match.
    pub module_hash: String,
}

/// Largest chunk one upload may carry (1 MiB).
pub const MAX_CHUNK_BYTES: usize = 1 << 20;

/// Chunks a canister's chunk store may hold (so modules up to 100 MiB).
pub const MAX_STORED_CHUNKS: usize = 100;

/// A canister's chunk store: the SHA-256 (hex) of every chunk it holds, in
/// ascending order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkList {
    /// The chunk hashes.
    pub hashes: Vec<String>,
}

/// Creates a canister and, when a module is given, installs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The code to install.
    #[serde(default)]
    pub module: Option<ModuleSource>,
    /// The init argument list as WAVE (`5, "x"`); for examples, `None` means
    /// the example's default argument.
    #[serde(default)]
    pub arg: Option<String>,
    /// Controllers; empty means the caller alone.
    #[serde(default)]
    pub controllers: Vec<Principal>,
}

/// How to install code on an existing canister.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InstallMode {
    /// First installation on an empty canister.
    Install,
    /// Fresh heap and stable memory, then `init`.
    Reinstall,
    /// `pre-upgrade` on the old code, new code, `post-upgrade`; the heap is
    /// replaced and stable memory kept.
    Upgrade,
}

/// Installs, reinstalls or upgrades a canister's code.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallRequest {
    /// Install, reinstall or upgrade.
    pub mode: InstallMode,
    /// The code.
    pub module: ModuleSource,
    /// The argument list for `init`/`post-upgrade`, as WAVE.
    #[serde(default)]
    pub arg: Option<String>,
}

/// Call arguments: WAVE text or JSON values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Args {
    /// WAVE text of the argument list, without parentheses: `"apple", 5`.
    Wave(String),
    /// A JSON array of positional arguments or an object by name.
    Json(serde_json::Value),
}

/// An update or query call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// Method name: `add`, or qualified `api.add`.
    pub method: String,
    /// Arguments.
    pub args: Args,
    /// Encoding of the reply: `wave` (default) or `json`.
    #[serde(default)]
    pub reply_encoding: ReplyEncoding,
    /// Cycles attached to the call.
    #[serde(default)]
    pub cycles: u64,
}

impl CallRequest {
    /// A call with WAVE arguments (`"apple", 5`) and a WAVE reply.
    pub fn wave(method: &str, args: &str) -> Self {
        CallRequest {
            method: method.to_string(),
            args: Args::Wave(args.to_string()),
            reply_encoding: ReplyEncoding::Wave,
            cycles: 0,
        }
    }

    /// A call with JSON arguments (an array, or an object by name) and a
    /// JSON reply.
    pub fn json(method: &str, args: serde_json::Value) -> Self {
        CallRequest {
            method: method.to_string(),
            args: Args::Json(args),
            reply_encoding: ReplyEncoding::Json,
            cycles: 0,
        }
    }
}

/// How the reply should be encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplyEncoding {
    /// WAVE text (a JSON string).
    #[default]
    Wave,
    /// JSON values.
    Json,
}

/// The answer to a call that reached a canister.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CallResponse {
    /// The canister replied.
    Replied {
        /// The reply, in the requested encoding (WAVE as a JSON string).
        reply: serde_json::Value,
        /// Instructions the message executed.
        instructions: u64,
    },
    /// The message was rejected.
    Rejected {
        /// Code and message.
        reject: Reject,
        /// Instructions the message executed.
        instructions: u64,
    },
}

/// Replaces a canister's controllers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControllersRequest {
    /// The new controllers (at least one).
    pub controllers: Vec<Principal>,
}

/// Whether a canister processes messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Accepts calls.
    Running,
    /// Rejects calls until started.
    Stopped,
}

/// A canister's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanisterStatus {
    /// The canister's id.
    pub canister_id: Principal,
    /// Running or stopped.
    pub status: RunStatus,
    /// SHA-256 of the installed module, hex; `None` when empty.
    pub module_hash: Option<String>,
    /// Bytes of linear memory.
    pub heap_bytes: u64,
    /// Bytes of stable memory.
    pub stable_bytes: u64,
    /// Cycle balance.
    pub cycles: u64,
    /// Controllers.
    pub controllers: Vec<Principal>,
    /// Certified data, hex.
    pub certified_data: String,
    /// Update messages executed (including hooks).
    pub updates: u64,
}

/// One method as clients see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MethodInfo {
    /// Qualified name (`api.add`).
    pub name: String,
    /// `update` or `query`.
    pub kind: String,
    /// WIT signature (`add: func(key: string, value: u64)`).
    pub signature: String,
}

/// A canister's interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceInfo {
    /// Callable methods.
    pub methods: Vec<MethodInfo>,
    /// Lifecycle hooks the canister exports, with signatures.
    pub hooks: Vec<String>,
    /// The interface as text, with update/query marks.
    pub text: String,
}

/// One log line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Position in the canister's log.
    pub index: u64,
    /// Round time when written.
    pub time_nanos: u64,
    /// `debug`, `info`, `warn` or `error`.
    pub level: String,
    /// The text.
    pub message: String,
}

/// Which policies a node runs (`GET /api/v1/policy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// SHA-256 (hex) of the scheduler policy component in force; `None`
    /// means the built-in accumulated-priority default.
    pub scheduler_module_hash: Option<String>,
    /// The last round in which the policy failed and the default ran.
    pub last_fallback_round: Option<u64>,
    /// Why it failed.
    pub last_fallback_reason: Option<String>,
    /// On a replica of a subnet: the consensus policy in force (its name
    /// and, for a component, the SHA-256 of its module).
    #[serde(default)]
    pub consensus: Option<String>,
}

/// Body of `PUT /api/v1/policy/scheduler`: a policy component, or none to
/// return to the built-in default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPolicyRequest {
    /// The component; `None` selects the built-in default.
    #[serde(default)]
    pub module: Option<ModuleSource>,
}

/// Body of `POST /api/v1/canisters/{id}/top-up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpRequest {
    /// Cycles to add.
    pub cycles: u64,
}

/// The answer to a submitted update: its id, to poll with
/// `GET /api/v1/requests/{request_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// The request id (see [`request_id`]).
    pub request_id: String,
}

/// Where a request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestState {
    /// Accepted and queued.
    Received,
    /// Executing.
    Processing,
    /// Done: the canister replied.
    Replied,
    /// Done: the message was rejected (by the canister or the system).
    Rejected,
    /// Done, and its result dropped: the request's ingress expiry passed
    /// (the id is still remembered for a while, so it is not executed
    /// again).
    Done,
    /// Never seen, or forgotten after its expiry.
    Unknown,
}

impl RequestState {
    /// Whether the request is finished (replied or rejected).
    pub fn is_done(self) -> bool {
        matches!(self, RequestState::Replied | RequestState::Rejected)
    }
}

/// A request's status and, once done, its result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestStatus {
    /// The request id.
    pub request_id: String,
    /// Where it is.
    pub status: RequestState,
    /// The result once replied or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<CallResponse>,
    /// The round of the last change, once a round inducted the request
    /// (from the replicated ingress history: the same on every replica).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u64>,
    /// That round's time (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_nanos: Option<u64>,
}

/// The replicated state of one canister a client may read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadState {
    /// The canister.
    pub canister_id: Principal,
    /// The round the state is of.
    pub round: u64,
    /// Running or stopped.
    pub status: RunStatus,
    /// SHA-256 of the module, hex; `None` when empty.
    pub module_hash: Option<String>,
    /// Certified data, hex.
    pub certified_data: String,
    /// Controllers.
    pub controllers: Vec<Principal>,
    /// SHA-256 of the node's replicated state at `round`, hex.
    #[serde(default)]
    pub state_hash: String,
    /// The node's Ed25519 signature (hex) over [`read_state_payload`]:
    /// everything above, so a client holding the node's key
    /// ([`NodeStatus::node_key`]) detects any change on the way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// What a read-state certificate signs: a domain tag and the canonical
/// JSON of `state` without its certificate.
pub fn read_state_payload(state: &ReadState) -> Vec<u8> {
    let unsigned = ReadState {
        certificate: None,
        ..state.clone()
    };
    let mut payload = b"cellar-read-state-v1\0".to_vec();
    payload.extend(serde_json::to_vec(&unsigned).expect("a ReadState serializes"));
    payload
}

/// Counters of messages since the node started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    /// Update calls executed (replied or rejected).
    pub updates: u64,
    /// Queries executed.
    pub queries: u64,
    /// Management requests (create, install, stop, start, delete, controllers).
    pub management: u64,
    /// Messages the canister replied to.
    pub replied: u64,
    /// Messages rejected (by the canister or the system).
    pub rejected: u64,
    /// Requests refused before reaching a canister (4xx).
    pub refused: u64,
    /// Instructions executed by updates and queries.
    pub instructions: u64,
}

/// One recent call, for the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentCall {
    /// Wall-clock time it finished, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The canister.
    pub canister_id: String,
    /// The method.
    pub method: String,
    /// `update` or `query`.
    pub kind: String,
    /// `replied` or `rejected`.
    pub outcome: String,
    /// Instructions executed.
    pub instructions: u64,
    /// Time the node took, microseconds.
    pub micros: u64,
}

/// A cheap snapshot of the node's activity (what the dashboard polls).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    /// The node's software version.
    pub version: String,
    /// Milliseconds since the Unix epoch when taken.
    pub time_ms: u64,
    /// Seconds since the node started serving.
    pub uptime_seconds: u64,
    /// Rounds executed so far.
    pub round: u64,
    /// Updates waiting in the ingress queue.
    pub queued: u64,
    /// Message counters.
    pub messages: MessageCounts,
    /// Every canister's status.
    pub canisters: Vec<CanisterStatus>,
    /// The most recent calls, newest first.
    pub recent: Vec<RecentCall>,
}

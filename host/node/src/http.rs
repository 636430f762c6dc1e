//! The node's HTTP API (`/api/v1`, see [`cellar_types::api`]), `/metrics`
//! and `/dashboard`: an axum router.
//!
//! Body limits: 2 MiB for calls, a chunk (1 MiB) plus a little for chunk
//! uploads, the component limit for installs. Every error is a 4xx/5xx
//! with an `ApiError` body.
//!
//! A submitted update is authenticated (`auth.rs`: the caller is the
//! self-authenticating principal of the key, or anonymous when unsigned),
//! gets its request id, is admitted in the replay cache (`requests.rs`),
//! put in the ingress queue and answered 202 with the id; the client polls
//! `GET /api/v1/requests/{id}` until it is replied or rejected.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cellar_types::Principal;
use cellar_types::api::{
    Activity, ApiError, CallRequest, CallResponse, ChunkList, ControllersRequest, CreateRequest,
    INGRESS_EXPIRY_HEADER, InstallMode, InstallRequest, MAX_CALL_BODY_BYTES, MAX_CHUNK_BYTES,
    ModuleSource, NONCE_HEADER, PUBLIC_KEY_HEADER, SIGNATURE_HEADER, SetPolicyRequest,
    SubmitResponse, TopUpRequest,
};
use data_encoding::BASE64;
use serde::de::DeserializeOwned;

use crate::auth::{AuthError, Credentials, authenticate};
use crate::certify::{NODE_KEY_FILE, NodeKey};
use crate::dashboard;
use crate::metrics::{Gauges, Kind, Metrics};
use crate::node::{Node, NodeError};
use crate::replica_link::{Envelope, with_envelope};
use crate::requests::{
    DEFAULT_CAPACITY, Ingress, Job, Refusal, Requests, call_response, check_expiry, now_nanos,
};
use cellar_state::journal::RequestTag;

/// An error answer.
struct HttpError(StatusCode, String);

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<NodeError> for HttpError {
    fn from(e: NodeError) -> Self {
        let status = match &e {
            NodeError::NotFound(_) => StatusCode::NOT_FOUND,
            NodeError::NotController { .. } => StatusCode::FORBIDDEN,
            NodeError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            NodeError::BadRequest(_) | NodeError::Install(_) => StatusCode::BAD_REQUEST,
            NodeError::HookFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            NodeError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        HttpError(status, e.to_string())
    }
}

impl From<Refusal> for HttpError {
    fn from(r: Refusal) -> Self {
        let status = match r {
            Refusal::Replay(_) => StatusCode::CONFLICT,
            Refusal::Full | Refusal::HistoryFull => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        HttpError(status, r.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message.into())
}

/// The state the handlers share.
#[derive(Clone)]
struct Api {
    node: Arc<Node>,
    /// Signs read-state answers; `None` when the key cannot be had.
    key: Option<Arc<NodeKey>>,
    requests: Arc<Requests>,
    metrics: Arc<Metrics>,
    ingress: Arc<Ingress>,
}

/// A request body with its authenticated sender and id. Requests that
/// change anything (every method but `GET`) are admitted by the replay
/// cache: they need a valid ingress expiry and an id not seen before.
struct Signed {
    caller: Principal,
    request_id: String,
    /// The id and expiry to journal, for a request admitted by the replay
    /// cache.
    tag: Option<RequestTag>,
    body: Bytes,
    /// The signed request as sent, which a replica hands to consensus so
    /// every replica checks the signature itself (none when unsigned).
    envelope: Option<Envelope>,
}

impl Signed {
    fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| bad_request(format!("the request body is not valid: {e}")))
    }
}

impl FromRequest<Api> for Signed {
    type Rejection = HttpError;

    async fn from_request(request: Request, api: &Api) -> Result<Self, Self::Rejection> {
        let method = request.method().as_str().to_string();
        // Queries change nothing: their expiry is checked when they have
        // one, but they are not remembered.
        let is_query = request.uri().path().ends_with("/query");
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let public_key = header(&request, PUBLIC_KEY_HEADER);
        let signature = header(&request, SIGNATURE_HEADER);
        let expiry = header(&request, INGRESS_EXPIRY_HEADER);
        let nonce = header(&request, NONCE_HEADER);
        let body = Bytes::from_request(request, &())
            .await
            .map_err(|e| HttpError(e.status(), e.body_text()))?;
        let credentials = Credentials {
            public_key: public_key.as_deref(),
            signature: signature.as_deref(),
            ingress_expiry: expiry.as_deref(),
            nonce: nonce.as_deref(),
        };
        let auth = authenticate(&method, &path, &body, credentials).map_err(|e| match e {
            AuthError::Malformed(m) => bad_request(m),
            AuthError::BadSignature(m) => HttpError(StatusCode::UNAUTHORIZED, m),
        })?;
        let mut tag = None;
        if method != "GET" && !is_query {
            // Executed (or at least inducted) before, here or on another
            // replica, and not forgotten: never again.
            if api.node.knows_request(&auth.request_id) {
                return Err(Refusal::Replay(auth.request_id).into());
            }
            if api.node.ingress_history_full() {
                return Err(Refusal::HistoryFull.into());
            }
            api.requests.admit(
                &auth.request_id,
                &auth.caller,
                auth.ingress_expiry,
                now_nanos(),
            )?;
            tag = auth.ingress_expiry.map(|expiry| RequestTag {
                id: auth.request_id.clone(),
                expiry,
                encoding: Default::default(),
            });
        } else if auth.ingress_expiry.is_some() {
            check_expiry(auth.ingress_expiry, now_nanos())?;
        }
        // An unsigned request with an expiry travels as sent too (no key,
        // no signature), so every replica derives its id alike.
        let envelope = match (public_key, signature) {
            (Some(public_key), Some(signature)) => Some(Envelope {
                method,
                path,
                body: BASE64.encode(&body),
                ingress_expiry: auth.ingress_expiry,
                nonce,
                public_key,
                signature,
            }),
            (None, None) if auth.ingress_expiry.is_some() && auth.caller.is_anonymous() => {
                Some(Envelope {
                    method,
                    path,
                    body: BASE64.encode(&body),
                    ingress_expiry: auth.ingress_expiry,
                    nonce,
                    public_key: String::new(),
                    signature: String::new(),
                })
            }
            _ => None,
        };
        Ok(Signed {
            caller: auth.caller,
            request_id: auth.request_id,
            tag,
            body,
            envelope,
        })
    }
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Runs blocking node work off the async executor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HttpError> + Send + 'static,
) -> Result<T, HttpError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        HttpError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("worker failed: {e}"),
        )
    })?
}

fn canister_id(text: &str) -> Result<Principal, HttpError> {
    Principal::from_text(text)
        .map_err(|e| bad_request(format!("'{text}' is not a canister id: {e}")))
}

fn module_bytes(source: &ModuleSource) -> Result<(Vec<u8>, Option<&'static str>), HttpError> {
    match source {
        ModuleSource::Example(name) => {
            let example = cellar_examples::get(name).ok_or_else(|| {
                let names: Vec<&str> = cellar_examples::examples().iter().map(|e| e.name).collect();
                bad_request(format!(
                    "there is no example named '{name}'; examples: {}",
                    names.join(", ")
                ))
            })?;
            Ok((example.wasm.to_vec(), example.init_arg))
        }
        ModuleSource::Wasm(base64) => BASE64
            .decode(base64.as_bytes())
            .map(|b| (b, None))
            .map_err(|e| bad_request(format!("the module is not valid base64: {e}"))),
        ModuleSource::Chunked(_) => Err(bad_request(
            "a chunked module installs into an existing canister: create the canister, \
             upload the chunks (POST .../chunks), then install from them",
        )),
    }
}

/// The API router over a node; bodies of installs may be up to
/// `max_body_bytes`, those of calls up to [`MAX_CALL_BODY_BYTES`].
pub fn router(node: Arc<Node>, max_body_bytes: usize) -> Router {
    let metrics = Arc::new(Metrics::new());
    let requests = Arc::new(Requests::new(DEFAULT_CAPACITY));
    // Requests executed before a restart are in the node's ingress
    // history: refused until they are forgotten after their expiry.
    let ingress = Arc::new(Ingress::start(
        node.clone(),
        requests.clone(),
        metrics.clone(),
    ));
    let key_path = node.data_dir().join(NODE_KEY_FILE);
    let key = match NodeKey::load_or_create(&key_path) {
        Ok(key) => Some(Arc::new(key)),
        Err(e) => {
            tracing::error!("read-state answers are not certified: {e:#}");
            None
        }
    };
    let api = Api {
        node,
        key,
        requests,
        metrics,
        ingress,
    };
    let small = || DefaultBodyLimit::max(MAX_CALL_BODY_BYTES);
    Router::new()
        .route("/api/v1/status", get(node_status))
        .route("/api/v1/activity", get(activity))
        .route("/api/v1/canisters", get(list).post(create))
        .route(
            "/api/v1/canisters/{id}",
            get(status).delete(delete).layer(small()),
        )
        .route("/api/v1/canisters/{id}/install", post(install))
        .route(
            "/api/v1/canisters/{id}/chunks",
            get(chunks)
                .post(upload_chunk)
                .delete(clear_chunks)
                // The signed request's headers and a little slack beyond the chunk.
                .layer(DefaultBodyLimit::max(MAX_CHUNK_BYTES + 1024)),
        )
        .route("/api/v1/canisters/{id}/call", post(call).layer(small()))
        .route("/api/v1/canisters/{id}/submit", post(submit).layer(small()))
        .route("/api/v1/canisters/{id}/query", post(query).layer(small()))
        .route("/api/v1/canisters/{id}/stop", post(stop).layer(small()))
        .route("/api/v1/canisters/{id}/start", post(start).layer(small()))
        .route(
            "/api/v1/canisters/{id}/controllers",
            put(controllers).layer(small()),
        )
        .route("/api/v1/canisters/{id}/interface", get(interface))
        .route("/api/v1/canisters/{id}/logs", get(logs))
        .route("/api/v1/canisters/{id}/top-up", post(top_up).layer(small()))
        .route("/api/v1/policy", get(policy))
        .route("/api/v1/policy/scheduler", put(set_scheduler_policy))
        .route("/api/v1/policy/consensus", put(set_consensus_policy))
        .route("/api/v1/canisters/{id}/read-state", get(read_state))
        .route("/api/v1/requests/{request_id}", get(request_status))
        .route("/metrics", get(metrics_text))
        .route("/dashboard", get(dashboard::page))
        .fallback(|| async {
            HttpError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1".into(),
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(api.clone(), count_answers))
        .with_state(api)
}

/// Counts every answer by status class; 4xx answers are refused requests.
async fn count_answers(State(api): State<Api>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status().as_u16();
    api.metrics.record_http(status);
    if (400..500).contains(&status) {
        api.metrics.record_refused();
    }
    response
}

async fn node_status(State(api): State<Api>) -> impl IntoResponse {
    let node = api.node.clone();
    let node_key = api.key.as_ref().map(|k| k.public_hex());
    blocking(move || {
        let mut status = node.node_status();
        status.node_key = node_key;
        Ok(Json(status))
    })
    .await
}

fn gauges(api: &Api) -> Gauges {
    let (history_entries, history_reply_bytes) = api.node.ingress_history_size();
    Gauges {
        round: api.node.round(),
        queued: api.ingress.queued(),
        tracked_requests: api.requests.len() as u64,
        history_entries: history_entries as u64,
        history_reply_bytes,
        canisters: api.node.list(),
    }
}

async fn activity(State(api): State<Api>) -> impl IntoResponse {
    let gauges = gauges(&api);
    Json(Activity {
        version: env!("CARGO_PKG_VERSION").to_string(),
        time_ms: now_nanos() / 1_000_000,
        uptime_seconds: api.metrics.uptime().as_secs(),
        round: gauges.round,
        queued: gauges.queued,
        messages: api.metrics.counts(),
        canisters: gauges.canisters,
        recent: api.metrics.recent(),
    })
}

async fn metrics_text(State(api): State<Api>) -> impl IntoResponse {
    let text = api.metrics.render(&gauges(&api));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

async fn list(State(api): State<Api>) -> impl IntoResponse {
    Json(api.node.list())
}

async fn status(State(api): State<Api>, Path(id): Path<String>) -> Result<Response, HttpError> {
    Ok(Json(api.node.status(&canister_id(&id)?)?).into_response())
}

async fn read_state(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let node = api.node.clone();
    let key = api.key.clone();
    let state = blocking(move || {
        let mut state = node.read_state(&id)?;
        if let Some(key) = key {
            key.certify(&mut state);
        }
        Ok(state)
    })
    .await?;
    Ok(Json(state))
}

async fn interface(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    Ok(Json(api.node.interface(&canister_id(&id)?)?))
}

async fn logs(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    Ok(Json(api.node.logs(&canister_id(&id)?)?))
}

async fn request_status(
    State(api): State<Api>,
    Path(request_id): Path<String>,
    signed: Signed,
) -> impl IntoResponse {
    // The replicated history first (the same answer on every replica,
    // before and after a restart), then what this node admitted and has
    // not seen inducted yet.
    Json(
        api.node
            .request_status(&request_id, &signed.caller)
            .unwrap_or_else(|| {
                api.requests
                    .status(&request_id, &signed.caller, now_nanos())
            }),
    )
}

/// Runs a management request, counting it; `tag` is journaled with it.
async fn management<T: Send + 'static>(
    api: &Api,
    tag: Option<RequestTag>,
    envelope: Option<Envelope>,
    f: impl FnOnce(&Node) -> Result<T, NodeError> + Send + 'static,
) -> Result<T, HttpError> {
    let node = api.node.clone();
    let metrics = api.metrics.clone();
    blocking(move || {
        let started = Instant::now();
        let result = Node::tagged(tag, || with_envelope(envelope, || f(&node)));
        metrics.record_management(result.is_ok(), started.elapsed());
        Ok(result?)
    })
    .await
}

async fn create(State(api): State<Api>, signed: Signed) -> Result<impl IntoResponse, HttpError> {
    let request: CreateRequest = signed.json()?;
    let module = request.module.as_ref().map(module_bytes).transpose()?;
    let caller = signed.caller;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| match module {
            None => {
                let id = node.create(&caller, request.controllers)?;
                node.status(&id)
            }
            // One request: the install can only target the new canister.
            Some((wasm, default_arg)) => {
                let arg = request.arg.or(default_arg.map(str::to_string));
                node.create_with_module(&caller, request.controllers, &wasm, arg)
            }
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn install(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let request: InstallRequest = signed.json()?;
    if let ModuleSource::Chunked(chunked) = request.module {
        let caller = signed.caller;
        let status = management(
            &api,
            signed.tag.clone(),
            signed.envelope.clone(),
            move |node| {
                node.install_chunked(
                    &caller,
                    &id,
                    request.mode,
                    chunked.chunk_hashes,
                    chunked.module_hash,
                    request.arg,
                )
            },
        )
        .await?;
        return Ok(Json(status));
    }
    let (wasm, default_arg) = module_bytes(&request.module)?;
    let arg = match request.mode {
        InstallMode::Upgrade => request.arg,
        _ => request.arg.or(default_arg.map(str::to_string)),
    };
    let caller = signed.caller;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.install(&caller, &id, request.mode, &wasm, arg),
    )
    .await?;
    Ok(Json(status))
}

/// Parses a call and checks its canister exists.
fn parse_call(api: &Api, id: &str, signed: &Signed) -> Result<(Principal, CallRequest), HttpError> {
    let id = canister_id(id)?;
    let request: CallRequest = signed.json()?;
    if request.cycles > 0 {
        return Err(bad_request("calls from users cannot carry cycles"));
    }
    // A replica may not have executed the block that created the canister
    // yet (it was deployed through another replica a moment ago): the call
    // goes to consensus, and execution rejects it alike everywhere if the
    // canister does not exist there either.
    if !api.node.is_replica() {
        api.node.status(&id)?;
    }
    Ok((id, request))
}

/// Queues an update in the ingress queue.
fn enqueue(
    api: &Api,
    signed: Signed,
    canister: Principal,
    request: CallRequest,
    reply: Option<tokio::sync::oneshot::Sender<Result<CallResponse, NodeError>>>,
) -> Result<(), HttpError> {
    let job = Job {
        request_id: signed.request_id,
        tag: signed.tag,
        envelope: signed.envelope,
        caller: signed.caller,
        canister,
        request,
        reply,
    };
    api.ingress.push(job).map_err(|_| {
        HttpError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the ingress queue is full; retry later".into(),
        )
    })
}

async fn top_up(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let request: TopUpRequest = signed.json()?;
    let caller = signed.caller;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.top_up(&caller, &id, request.cycles),
    )
    .await?;
    Ok(Json(status))
}

async fn policy(State(api): State<Api>) -> impl IntoResponse {
    Json(api.node.policy_info())
}

async fn set_consensus_policy(
    State(api): State<Api>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let request: SetPolicyRequest = signed.json()?;
    let wasm =
        crate::replica::consensus_policy_module(request.module.as_ref()).map_err(bad_request)?;
    let caller = signed.caller;
    let info = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.set_consensus_policy(&caller, &wasm),
    )
    .await?;
    Ok(Json(info))
}

async fn set_scheduler_policy(
    State(api): State<Api>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let request: SetPolicyRequest = signed.json()?;
    let wasm = match &request.module {
        None => None,
        Some(ModuleSource::Example(name)) => Some(
            cellar_examples::scheduler_policy(name)
                .ok_or_else(|| {
                    bad_request(format!(
                        "there is no scheduler policy named '{name}'; policies: round-robin, \
                         accumulated-priority"
                    ))
                })?
                .to_vec(),
        ),
        Some(source) => Some(module_bytes(source)?.0),
    };
    let caller = signed.caller;
    let info = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.set_scheduler_policy(&caller, wasm.as_deref()),
    )
    .await?;
    Ok(Json(info))
}

async fn call(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Json<CallResponse>, HttpError> {
    let (id, request) = parse_call(&api, &id, &signed)?;
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let request_id = signed.request_id.clone();
    enqueue(&api, signed, id, request, Some(sender))?;
    let timeout = api.node.reply_timeout();
    let result = match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => {
            return Err(HttpError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the ingress queue stopped".into(),
            ));
        }
        Err(_) => {
            return Err(HttpError(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no answer within {timeout:?}; request {request_id} may still execute \
                     (poll it with GET /api/v1/requests/{request_id})"
                ),
            ));
        }
    };
    Ok(Json(result?))
}

async fn submit(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let (id, request) = parse_call(&api, &id, &signed)?;
    let request_id = signed.request_id.clone();
    enqueue(&api, signed, id, request, None)?;
    Ok((StatusCode::ACCEPTED, Json(SubmitResponse { request_id })))
}

async fn query(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Json<CallResponse>, HttpError> {
    let id = canister_id(&id)?;
    let request: CallRequest = signed.json()?;
    if request.cycles > 0 {
        return Err(bad_request("calls from users cannot carry cycles"));
    }
    let node = api.node.clone();
    let metrics = api.metrics.clone();
    blocking(move || {
        let started = Instant::now();
        let outcome = node.query(&signed.caller, &id, &request.method, request.args)?;
        metrics.record_call(
            Kind::Query,
            &id,
            &request.method,
            outcome.result.is_ok(),
            outcome.instructions,
            started.elapsed(),
        );
        Ok(Json(call_response(outcome, request.reply_encoding)))
    })
    .await
}

async fn stop(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.stop(&signed.caller, &id),
    )
    .await?;
    Ok(Json(status))
}

async fn start(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.start(&signed.caller, &id),
    )
    .await?;
    Ok(Json(status))
}

async fn chunks(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<ChunkList>, HttpError> {
    let hashes = api.node.chunks(&canister_id(&id)?)?;
    Ok(Json(ChunkList { hashes }))
}

/// `POST .../chunks`: the body is the chunk's bytes.
async fn upload_chunk(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Json<ChunkList>, HttpError> {
    let id = canister_id(&id)?;
    let caller = signed.caller;
    let chunk = signed.body.clone();
    let hashes = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.upload_chunk(&caller, &id, &chunk),
    )
    .await?;
    Ok(Json(ChunkList { hashes }))
}

async fn clear_chunks(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<Json<ChunkList>, HttpError> {
    let id = canister_id(&id)?;
    let caller = signed.caller;
    management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.clear_chunks(&caller, &id),
    )
    .await?;
    Ok(Json(ChunkList::default()))
}

async fn delete(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.delete(&signed.caller, &id),
    )
    .await?;
    Ok(Json(status))
}

async fn controllers(
    State(api): State<Api>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let request: ControllersRequest = signed.json()?;
    let status = management(
        &api,
        signed.tag.clone(),
        signed.envelope.clone(),
        move |node| node.set_controllers(&signed.caller, &id, request.controllers),
    )
    .await?;
    Ok(Json(status))
}

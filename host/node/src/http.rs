//! The node's HTTP API (`/api/v1`, see [`cellar_types::api`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cellar_engine::{Encoding, encode_results};
use cellar_types::Principal;
use cellar_types::api::{
    ApiError, CallRequest, CallResponse, ControllersRequest, CreateRequest, InstallMode,
    InstallRequest, ModuleSource, PUBLIC_KEY_HEADER, ReplyEncoding, SIGNATURE_HEADER,
    SetPolicyRequest, TopUpRequest,
};
use data_encoding::BASE64;
use serde::de::DeserializeOwned;

use crate::auth::authenticate;
use crate::node::{CallOutcome, Node, NodeError};

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
            NodeError::BadRequest(_) | NodeError::Install(_) => StatusCode::BAD_REQUEST,
            NodeError::HookFailed { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            NodeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("{e}");
        }
        HttpError(status, e.to_string())
    }
}

fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError(StatusCode::BAD_REQUEST, message.into())
}

/// A request body together with its authenticated sender.
struct Signed {
    caller: Principal,
    body: Bytes,
}

impl Signed {
    fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| bad_request(format!("the request body is not valid: {e}")))
    }
}

impl<S: Send + Sync> FromRequest<S> for Signed {
    type Rejection = HttpError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let method = request.method().as_str().to_string();
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let public_key = header(&request, PUBLIC_KEY_HEADER);
        let signature = header(&request, SIGNATURE_HEADER);
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|e| HttpError(e.status(), e.body_text()))?;
        let caller = authenticate(
            &method,
            &path,
            &body,
            public_key.as_deref(),
            signature.as_deref(),
        )
        .map_err(|e| HttpError(StatusCode::UNAUTHORIZED, e))?;
        Ok(Signed { caller, body })
    }
}

fn header(request: &Request, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

type AppState = Arc<Node>;

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
    }
}

fn call_response(outcome: CallOutcome, encoding: ReplyEncoding) -> CallResponse {
    let encoding = match encoding {
        ReplyEncoding::Wave => Encoding::Wave,
        ReplyEncoding::Json => Encoding::Json,
    };
    match outcome.result {
        Ok(values) => match encode_results(&values, encoding) {
            Ok(reply) => CallResponse::Replied {
                reply,
                instructions: outcome.instructions,
            },
            Err(e) => CallResponse::Rejected {
                reject: cellar_types::Reject::new(
                    cellar_types::RejectCode::CanisterError,
                    format!("the reply cannot be encoded: {e}"),
                ),
                instructions: outcome.instructions,
            },
        },
        Err(reject) => CallResponse::Rejected {
            reject,
            instructions: outcome.instructions,
        },
    }
}

/// The API router over a node.
pub fn router(node: Arc<Node>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/api/v1/status", get(node_status))
        .route("/api/v1/canisters", get(list).post(create))
        .route("/api/v1/canisters/{id}", get(status).delete(delete))
        .route("/api/v1/canisters/{id}/install", post(install))
        .route("/api/v1/canisters/{id}/call", post(call))
        .route("/api/v1/canisters/{id}/query", post(query))
        .route("/api/v1/canisters/{id}/stop", post(stop))
        .route("/api/v1/canisters/{id}/start", post(start))
        .route("/api/v1/canisters/{id}/controllers", put(controllers))
        .route("/api/v1/canisters/{id}/interface", get(interface))
        .route("/api/v1/canisters/{id}/logs", get(logs))
        .route("/api/v1/canisters/{id}/top-up", post(top_up))
        .route("/api/v1/policy", get(policy))
        .route("/api/v1/policy/scheduler", put(set_scheduler_policy))
        .fallback(|| async {
            HttpError(
                StatusCode::NOT_FOUND,
                "no such endpoint; see /api/v1".into(),
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(node)
}

async fn node_status(State(node): State<AppState>) -> impl IntoResponse {
    Json(node.node_status())
}

async fn list(State(node): State<AppState>) -> impl IntoResponse {
    Json(node.list())
}

async fn status(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    Ok(Json(node.status(&canister_id(&id)?)?))
}

async fn interface(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    Ok(Json(node.interface(&canister_id(&id)?)?))
}

async fn logs(
    State(node): State<AppState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, HttpError> {
    Ok(Json(node.logs(&canister_id(&id)?)?))
}

async fn create(
    State(node): State<AppState>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let request: CreateRequest = signed.json()?;
    let module = request.module.as_ref().map(module_bytes).transpose()?;
    blocking(move || {
        let id = node.create(&signed.caller, request.controllers)?;
        let status = match module {
            None => node.status(&id)?,
            Some((wasm, default_arg)) => {
                let arg = request.arg.or(default_arg.map(str::to_string));
                node.install(&signed.caller, &id, InstallMode::Install, &wasm, arg)?
            }
        };
        Ok((StatusCode::CREATED, Json(status)))
    })
    .await
}

async fn install(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let request: InstallRequest = signed.json()?;
    let (wasm, default_arg) = module_bytes(&request.module)?;
    let arg = match request.mode {
        InstallMode::Upgrade => request.arg,
        _ => request.arg.or(default_arg.map(str::to_string)),
    };
    blocking(move || {
        Ok(Json(node.install(
            &signed.caller,
            &id,
            request.mode,
            &wasm,
            arg,
        )?))
    })
    .await
}

async fn top_up(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let request: TopUpRequest = signed.json()?;
    blocking(move || Ok(Json(node.top_up(&signed.caller, &id, request.cycles)?))).await
}

async fn policy(State(node): State<AppState>) -> impl IntoResponse {
    Json(node.policy_info())
}

async fn set_scheduler_policy(
    State(node): State<AppState>,
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
    blocking(move || {
        Ok(Json(
            node.set_scheduler_policy(&signed.caller, wasm.as_deref())?,
        ))
    })
    .await
}

async fn call(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    run_call(node, id, signed, false).await
}

async fn query(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    run_call(node, id, signed, true).await
}

async fn run_call(
    node: AppState,
    id: String,
    signed: Signed,
    is_query: bool,
) -> Result<Json<CallResponse>, HttpError> {
    let id = canister_id(&id)?;
    let request: CallRequest = signed.json()?;
    if request.cycles > 0 {
        return Err(bad_request("calls from users cannot carry cycles"));
    }
    blocking(move || {
        let outcome = if is_query {
            node.query(&signed.caller, &id, &request.method, request.args)?
        } else {
            node.update(&signed.caller, &id, &request.method, request.args)?
        };
        Ok(Json(call_response(outcome, request.reply_encoding)))
    })
    .await
}

async fn stop(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    blocking(move || Ok(Json(node.stop(&signed.caller, &id)?))).await
}

async fn start(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    blocking(move || Ok(Json(node.start(&signed.caller, &id)?))).await
}

async fn delete(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    blocking(move || Ok(Json(node.delete(&signed.caller, &id)?))).await
}

async fn controllers(
    State(node): State<AppState>,
    Path(id): Path<String>,
    signed: Signed,
) -> Result<impl IntoResponse, HttpError> {
    let id = canister_id(&id)?;
    let request: ControllersRequest = signed.json()?;
    blocking(move || {
        Ok(Json(node.set_controllers(
            &signed.caller,
            &id,
            request.controllers,
        )?))
    })
    .await
}

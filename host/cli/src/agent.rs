//! A small blocking client of the node's HTTP API (`/api/v1`) that signs
//! every request with the user's identity.

use std::io::ErrorKind;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use cellar_types::Principal;
use cellar_types::api::{
    ApiError, CallRequest, CallResponse, CanisterStatus, CreateRequest, InstallRequest,
    InterfaceInfo, LogEntry, NodeStatus, PUBLIC_KEY_HEADER, SIGNATURE_HEADER,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use ureq::http::{Method, Request, Uri};

use crate::identity::Identity;

/// A client of one node, acting as one identity.
pub struct Agent {
    /// The node's base URL without a trailing slash (`http://127.0.0.1:7070`).
    base_url: String,
    /// Who signs the requests.
    identity: Identity,
    /// The HTTP client.
    http: ureq::Agent,
}

impl Agent {
    /// A client of the node at `base_url`.
    pub fn new(base_url: &str, identity: Identity) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build();
        Agent {
            base_url: base_url.trim_end_matches('/').to_string(),
            identity,
            http: ureq::Agent::new_with_config(config),
        }
    }

    /// The identity requests come from.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The node's base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `GET /api/v1/status`.
    pub fn status(&self) -> Result<NodeStatus> {
        self.get("/api/v1/status")
    }

    /// `GET /api/v1/canisters`.
    pub fn canisters(&self) -> Result<Vec<CanisterStatus>> {
        self.get("/api/v1/canisters")
    }

    /// `POST /api/v1/canisters`: creates a canister, installing its code when given.
    pub fn create(&self, request: &CreateRequest) -> Result<CanisterStatus> {
        self.post("/api/v1/canisters", request)
    }

    /// `GET /api/v1/canisters/{id}`.
    pub fn canister_status(&self, id: &Principal) -> Result<CanisterStatus> {
        self.get(&canister_path(id, ""))
    }

    /// `POST /api/v1/canisters/{id}/install`.
    pub fn install(&self, id: &Principal, request: &InstallRequest) -> Result<CanisterStatus> {
        self.post(&canister_path(id, "/install"), request)
    }

    /// `POST /api/v1/canisters/{id}/call`: an update call.
    pub fn call(&self, id: &Principal, request: &CallRequest) -> Result<CallResponse> {
        self.post(&canister_path(id, "/call"), request)
    }

    /// `POST /api/v1/canisters/{id}/query`: a query call.
    pub fn query(&self, id: &Principal, request: &CallRequest) -> Result<CallResponse> {
        self.post(&canister_path(id, "/query"), request)
    }

    /// `GET /api/v1/canisters/{id}/interface`.
    pub fn interface(&self, id: &Principal) -> Result<InterfaceInfo> {
        self.get(&canister_path(id, "/interface"))
    }

    /// `GET /api/v1/canisters/{id}/logs`.
    pub fn logs(&self, id: &Principal) -> Result<Vec<LogEntry>> {
        self.get(&canister_path(id, "/logs"))
    }

    /// A signed `GET`.
    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(Method::GET, path, None)
    }

    /// A signed `POST` with a JSON body.
    fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let body = serde_json::to_vec(body).context("cannot encode the request")?;
        self.send(Method::POST, path, Some(body))
    }

    /// Sends a signed request and decodes the JSON answer, turning error
    /// answers into errors carrying the node's message.
    fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T> {
        let url = format!("{}{path}", self.base_url);
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid node URL {}", self.base_url))?;
        if uri.scheme().is_none() || uri.host().is_none() {
            bail!(
                "invalid node URL {}: expected http://HOST:PORT",
                self.base_url
            );
        }
        // Sign the path exactly as it goes on the wire.
        let signed_path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let headers = self.identity.sign(
            method.as_str(),
            &signed_path,
            body.as_deref().unwrap_or_default(),
        );
        let builder = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(PUBLIC_KEY_HEADER, headers.public_key)
            .header(SIGNATURE_HEADER, headers.signature);
        let sent = match body {
            Some(body) => self.http.run(
                builder
                    .header("content-type", "application/json")
                    .body(body)?,
            ),
            None => self.http.run(builder.body(())?),
        };
        let mut response = sent.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            if let Ok(ApiError { error }) = serde_json::from_slice::<ApiError>(&bytes) {
                bail!("{error}");
            }
            let text = String::from_utf8_lossy(&bytes);
            bail!(
                "the node answered {status} to {method} {path}: {}",
                text.trim()
            );
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected answer to {method} {path}"))
    }

    /// Explains a transport failure, pointing at `cellar start` when nothing listens.
    fn transport_error(&self, error: ureq::Error) -> anyhow::Error {
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
        if unreachable {
            anyhow!(
                "cannot reach the node at {}: is `cellar start` running? ({error})",
                self.base_url
            )
        } else {
            anyhow!(error).context(format!("request to {} failed", self.base_url))
        }
    }
}

/// `/api/v1/canisters/{id}{suffix}`.
fn canister_path(id: &Principal, suffix: &str) -> String {
    format!("/api/v1/canisters/{}{suffix}", id.to_text())
}

//! Installing modules of any size: inline when the module fits one request,
//! through the canister's chunk store when it does not.
//!
//! A module up to [`INLINE_MODULE_BYTES`] (768 KiB) is sent inline; a
//! larger one is uploaded in chunks, skipping those the store already
//! holds, so an interrupted upload resumes.

use cellar_types::Principal;
use cellar_types::api::{
    CanisterStatus, ChunkList, ChunkedModule, InstallMode, InstallRequest, MAX_CHUNK_BYTES,
    ModuleSource,
};
use data_encoding::{BASE64, HEXLOWER};
use sha2::{Digest, Sha256};

use crate::{Agent, AgentError, canister_path};

/// Modules up to this size travel inline in one install request; larger
/// ones are uploaded in chunks of [`MAX_CHUNK_BYTES`]. An inline module is
/// base64 in a JSON body that a replica forwards base64 again, so this
/// keeps such a request well inside a subnet's 2 MiB ingress limit.
pub const INLINE_MODULE_BYTES: usize = 768 << 10;

/// SHA-256 of `bytes`, lowercase hex (how modules and chunks are named).
pub fn sha256_hex(bytes: &[u8]) -> String {
    HEXLOWER.encode(&Sha256::digest(bytes))
}

impl Agent {
    /// `POST /api/v1/canisters/{id}/chunks`: adds one chunk (at most
    /// [`MAX_CHUNK_BYTES`]) to the canister's chunk store.
    pub fn upload_chunk(&self, id: &Principal, chunk: &[u8]) -> Result<ChunkList, AgentError> {
        let request = self.sign("POST", &canister_path(id, "/chunks"), chunk.to_vec())?;
        self.decode("POST chunks", self.send_raw(&request)?)
    }

    /// `GET /api/v1/canisters/{id}/chunks`: the hashes in the chunk store.
    pub fn chunks(&self, id: &Principal) -> Result<ChunkList, AgentError> {
        self.get(&canister_path(id, "/chunks"))
    }

    /// `DELETE /api/v1/canisters/{id}/chunks`: empties the chunk store.
    pub fn clear_chunks(&self, id: &Principal) -> Result<ChunkList, AgentError> {
        self.send_json::<(), _>("DELETE", &canister_path(id, "/chunks"), None)
    }

    /// Installs (or reinstalls, upgrades) `wasm` on the canister: in one
    /// request when it is at most [`INLINE_MODULE_BYTES`], otherwise by
    /// uploading the chunks the store lacks (`progress` hears chunks done
    /// and chunks in all) and installing from them, which empties the
    /// store.
    pub fn install_module(
        &self,
        id: &Principal,
        mode: InstallMode,
        wasm: &[u8],
        arg: Option<String>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<CanisterStatus, AgentError> {
        if wasm.len() <= INLINE_MODULE_BYTES {
            let request = InstallRequest {
                mode,
                module: ModuleSource::Wasm(BASE64.encode(wasm)),
                arg,
            };
            return self.install(id, &request);
        }
        let chunks: Vec<&[u8]> = wasm.chunks(MAX_CHUNK_BYTES).collect();
        let stored = self.chunks(id)?.hashes;
        let mut chunk_hashes = Vec::with_capacity(chunks.len());
        for (done, chunk) in chunks.iter().enumerate() {
            let hash = sha256_hex(chunk);
            // An upload interrupted before resumes where it stopped.
            if stored.binary_search(&hash).is_err() {
                self.upload_chunk(id, chunk)?;
            }
            chunk_hashes.push(hash);
            progress(done + 1, chunks.len());
        }
        let request = InstallRequest {
            mode,
            module: ModuleSource::Chunked(ChunkedModule {
                chunk_hashes,
                module_hash: sha256_hex(wasm),
            }),
            arg,
        };
        self.install(id, &request)
    }
}

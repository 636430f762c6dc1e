//! Chunked installs, the node's API side: the chunk store for modules
//! larger than one request may carry (2 MiB of ingress).
//!
//! A controller uploads the module in chunks of at most
//! [`MAX_CHUNK_BYTES`] (1 MiB; `POST /api/v1/canisters/{id}/chunks`,
//! controllers only) into the canister's chunk store (each upload is an
//! ordinary replicated request), then installs from the store with
//! `{"chunked": {"chunk-hashes": [...], "module-hash": h}}`, naming the
//! chunks in order and the whole module's hash; `DELETE` on the same path
//! empties the store. The chunk bytes live in the content-addressed
//! `modules/` directory (`modules/<sha256>.wasm`, the same files as
//! modules), stored before the record naming them is journaled, exactly as
//! modules are; the canister's state holds only their hashes (at most
//! `MAX_STORED_CHUNKS`, 100), so they are replicated state: in the
//! checkpoint metadata and the state hash, and state sync ships the chunk
//! blobs too. Assembling the chunks in that order, checking the whole
//! against `h`, installing it and emptying the store happen in the round
//! (`cellar_execution`'s `chunks.rs`).
//!
//! Clients choose: `cellar_agent::Agent::install_module` sends a module up
//! to 768 KiB inline and a larger one in chunks (skipping those already
//! stored, so an interrupted upload resumes); `cellar deploy` creates an
//! empty canister first for a large one.

use super::*;

impl Node {
    /// Adds `chunk` to the canister's chunk store (controllers only) and
    /// returns the store's hashes.
    pub fn upload_chunk(
        &self,
        caller: &Principal,
        id: &Principal,
        chunk: &[u8],
    ) -> Result<Vec<String>, NodeError> {
        self.check_controller(caller, id)?;
        check_chunk_size(chunk.len())?;
        let hash = HEXLOWER.encode(&Sha256::digest(chunk));
        self.store_module(&hash, chunk)?;
        let op = Op::UploadChunk {
            id: id.clone(),
            hash,
        };
        self.submit(caller, op)?.into_chunks()
    }

    /// Empties the canister's chunk store (controllers only).
    pub fn clear_chunks(&self, caller: &Principal, id: &Principal) -> Result<(), NodeError> {
        self.check_controller(caller, id)?;
        self.submit(caller, Op::ClearChunks { id: id.clone() })?
            .into_chunks()
            .map(|_| ())
    }

    /// The hashes in the canister's chunk store, in ascending order.
    pub fn chunks(&self, id: &Principal) -> Result<Vec<String>, NodeError> {
        let registry = self.exec.registry.read().expect("registry lock");
        let canister = registry
            .canisters
            .get(id)
            .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
        Ok(canister.chunks.iter().cloned().collect())
    }

    /// Installs, reinstalls or upgrades the canister's code with the module
    /// assembled from its chunk store. On a single node the module is
    /// assembled and loaded first, so a wrong hash or a module that does
    /// not load is refused before it reaches the journal.
    pub fn install_chunked(
        &self,
        caller: &Principal,
        id: &Principal,
        mode: InstallMode,
        chunk_hashes: Vec<String>,
        module_hash: String,
        arg: Option<String>,
    ) -> Result<CanisterStatus, NodeError> {
        self.check_controller(caller, id)?;
        if !self.replica.is_on() {
            let canister = self
                .exec
                .registry
                .read()
                .expect("registry lock")
                .canisters
                .get(id)
                .cloned()
                .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
            let wasm = self
                .exec
                .assemble_chunks(&canister, &chunk_hashes, &module_hash)?;
            self.check_and_store_module(&wasm)?;
        }
        let op = Op::InstallChunked {
            id: id.clone(),
            mode,
            chunk_hashes,
            module_hash,
            arg,
        };
        match self.submit(caller, op)? {
            Applied::Status(status) => Ok(status),
            _ => unreachable!("install answers with a status"),
        }
    }
}

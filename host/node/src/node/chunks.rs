//! Chunked installs: modules larger than one request may carry.
//!
//! A controller uploads the module in chunks of at most
//! [`MAX_CHUNK_BYTES`] into the canister's chunk store (each upload is an
//! ordinary replicated request), then installs from the store naming the
//! chunks in order and the whole module's hash. The chunk bytes live in the
//! content-addressed `modules/` directory, stored before the record naming
//! them is journaled, exactly as modules are; the canister's state holds
//! only their hashes (so they are part of the state hash, checkpoints and
//! state sync). Assembling checks the concatenation against the module
//! hash; a successful install empties the store.

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

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

use cellar_types::api::{MAX_CHUNK_BYTES, MAX_STORED_CHUNKS};

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
        let registry = self.registry.read().expect("registry lock");
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
                .registry
                .read()
                .expect("registry lock")
                .canisters
                .get(id)
                .cloned()
                .ok_or_else(|| NodeError::NotFound(id.to_text()))?;
            let wasm = self.assemble_chunks(&canister, &chunk_hashes, &module_hash)?;
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

    /// Executes [`Op::UploadChunk`]: the chunk joins the store unless the
    /// store is full.
    pub(super) fn apply_upload_chunk(
        &self,
        mut canister: Canister,
        hash: &str,
    ) -> Result<Applied, NodeError> {
        if !canister.chunks.contains(hash) {
            if canister.chunks.len() >= MAX_STORED_CHUNKS {
                return Err(NodeError::BadRequest(format!(
                    "the chunk store of canister {} is full ({MAX_STORED_CHUNKS} chunks); \
                     install from it or clear it",
                    canister.id.to_text()
                )));
            }
            if !self.modules_dir.join(format!("{hash}.wasm")).exists() {
                return Err(NodeError::Internal(anyhow::anyhow!(
                    "chunk {hash} was journaled but is not stored"
                )));
            }
            canister.chunks.insert(hash.to_string());
        }
        let hashes = canister.chunks.iter().cloned().collect();
        self.commit(canister);
        Ok(Applied::Chunks(hashes))
    }

    /// Executes [`Op::ClearChunks`].
    pub(super) fn apply_clear_chunks(&self, mut canister: Canister) -> Applied {
        canister.chunks.clear();
        self.commit(canister);
        Applied::Chunks(Vec::new())
    }

    /// Executes [`Op::InstallChunked`]: assembles the module, stores it
    /// under its hash and installs it; success empties the chunk store.
    pub(super) fn apply_install_chunked(
        &self,
        canister: Canister,
        install: ChunkedInstall<'_>,
        step: &Step<'_>,
    ) -> Result<Applied, NodeError> {
        let wasm = self.assemble_chunks(&canister, install.chunk_hashes, install.module_hash)?;
        self.store_module(install.module_hash, &wasm)?;
        drop(wasm);
        let code = self
            .load_module(install.module_hash)
            .map_err(|e| NodeError::BadRequest(format!("the assembled module: {e:#}")))?;
        let mut updated = self.install_code(canister, code, install.mode, install.arg, step)?;
        updated.chunks.clear();
        Ok(Applied::Status(self.commit(updated)))
    }

    /// The concatenation of the named chunks, each of which must be in the
    /// canister's store, checked against `module_hash`.
    fn assemble_chunks(
        &self,
        canister: &Canister,
        chunk_hashes: &[String],
        module_hash: &str,
    ) -> Result<Vec<u8>, NodeError> {
        if chunk_hashes.is_empty() || chunk_hashes.len() > MAX_STORED_CHUNKS {
            return Err(NodeError::BadRequest(format!(
                "a chunked module names 1 to {MAX_STORED_CHUNKS} chunks, not {}",
                chunk_hashes.len()
            )));
        }
        let mut wasm = Vec::new();
        for hash in chunk_hashes {
            if !canister.chunks.contains(hash) {
                return Err(NodeError::BadRequest(format!(
                    "chunk {hash} is not in the chunk store of canister {}",
                    canister.id.to_text()
                )));
            }
            let chunk = self.read_module(hash).map_err(|e| {
                NodeError::Internal(anyhow::anyhow!("stored chunk {hash} cannot be read: {e}"))
            })?;
            wasm.extend_from_slice(&chunk);
        }
        let assembled = HEXLOWER.encode(&Sha256::digest(&wasm));
        if assembled != module_hash {
            return Err(NodeError::BadRequest(format!(
                "the chunks assemble to a module with hash {assembled}, not {module_hash}"
            )));
        }
        Ok(wasm)
    }
}

/// What an [`Op::InstallChunked`] asks, borrowed from the op.
pub(super) struct ChunkedInstall<'a> {
    pub(super) mode: InstallMode,
    pub(super) chunk_hashes: &'a [String],
    pub(super) module_hash: &'a str,
    pub(super) arg: Option<&'a str>,
}

/// Refuses empty chunks and chunks over [`MAX_CHUNK_BYTES`].
pub(crate) fn check_chunk_size(len: usize) -> Result<(), NodeError> {
    if len == 0 || len > MAX_CHUNK_BYTES {
        return Err(NodeError::BadRequest(format!(
            "a chunk is 1 byte to {MAX_CHUNK_BYTES} bytes, not {len}"
        )));
    }
    Ok(())
}

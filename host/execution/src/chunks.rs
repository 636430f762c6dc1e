//! Chunked installs: uploads into a canister's chunk store, and installs
//! from it (the node's API side is `cellar_node`'s `node/chunks.rs`).
//!
//! An upload adds a chunk's hash to the store unless it is full
//! (`MAX_STORED_CHUNKS`, 100); an install from the store assembles the
//! named chunks in that order, checks the whole against the module hash it
//! names, installs it and empties the store; clearing empties it.

use cellar_state::canister::Canister;
use cellar_types::api::{InstallMode, MAX_CHUNK_BYTES, MAX_STORED_CHUNKS};
use data_encoding::HEXLOWER;
use sha2::{Digest, Sha256};

use crate::answer::{Applied, Step};
use crate::error::NodeError;
use crate::executor::Executor;

impl Executor {
    /// Executes [`Op::UploadChunk`](cellar_state::journal::Op::UploadChunk):
    /// the chunk joins the store unless the store is full.
    pub fn apply_upload_chunk(
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
            if !self.modules.contains(hash) {
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

    /// Executes [`Op::ClearChunks`](cellar_state::journal::Op::ClearChunks).
    pub fn apply_clear_chunks(&self, mut canister: Canister) -> Applied {
        canister.chunks.clear();
        self.commit(canister);
        Applied::Chunks(Vec::new())
    }

    /// Executes [`Op::InstallChunked`](cellar_state::journal::Op::InstallChunked):
    /// assembles the module, stores it under its hash and installs it;
    /// success empties the chunk store.
    pub fn apply_install_chunked(
        &self,
        canister: Canister,
        install: ChunkedInstall<'_>,
        step: &Step<'_>,
    ) -> Result<Applied, NodeError> {
        let wasm = self.assemble_chunks(&canister, install.chunk_hashes, install.module_hash)?;
        self.modules.store(install.module_hash, &wasm)?;
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
    pub fn assemble_chunks(
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
            let chunk = self.modules.read(hash).map_err(|e| {
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
/// What an [`Op::InstallChunked`](cellar_state::journal::Op::InstallChunked)
/// asks, borrowed from the op.
pub struct ChunkedInstall<'a> {
    pub mode: InstallMode,
    pub chunk_hashes: &'a [String],
    pub module_hash: &'a str,
    pub arg: Option<&'a str>,
}

/// Refuses empty chunks and chunks over [`MAX_CHUNK_BYTES`].
pub fn check_chunk_size(len: usize) -> Result<(), NodeError> {
    if len == 0 || len > MAX_CHUNK_BYTES {
        return Err(NodeError::BadRequest(format!(
            "a chunk is 1 byte to {MAX_CHUNK_BYTES} bytes, not {len}"
        )));
    }
    Ok(())
}

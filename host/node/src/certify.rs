//! Read-state certificates: the node's Ed25519 key and its signature over
//! every read-state answer.
//!
//! The node signs what `GET /api/v1/canisters/{id}/read-state` answers
//! (round, state hash, canister status, module hash, certified data,
//! controllers, taken from one snapshot; the signed bytes are
//! `read_state_payload` in [`cellar_types::api`]) with its own Ed25519 key,
//! kept in `node.key` in the data directory (hex seed, mode 0600, created
//! on first start) and published in `/api/v1/status`. A client that knows
//! the node's key detects any change of the answer on the way
//! (`cellar_agent::verify_read_state`). This is one node's word, not yet a
//! subnet's threshold signature.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use cellar_types::api::{ReadState, read_state_payload};
use data_encoding::HEXLOWER;
use ed25519_dalek::{Signer, SigningKey};

/// The file under the data directory that holds the node's key.
pub const NODE_KEY_FILE: &str = "node.key";

/// The node's signing key.
pub struct NodeKey(SigningKey);

impl NodeKey {
    /// Loads the key in `path`, or creates it (0600) when there is none.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => {
                let seed: [u8; 32] = HEXLOWER
                    .decode(text.trim().as_bytes())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("{} is not a node key (64 hex digits)", path.display())
                    })?;
                Ok(NodeKey(SigningKey::from_bytes(&seed)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)?;
                writeln!(file, "{}", HEXLOWER.encode(&seed))?;
                file.sync_all()?;
                Ok(NodeKey(SigningKey::from_bytes(&seed)))
            }
            Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        }
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        HEXLOWER.encode(self.0.verifying_key().as_bytes())
    }

    /// Sets `state.certificate` to the signature of its payload.
    pub fn certify(&self, state: &mut ReadState) {
        state.certificate = None;
        let signature = self.0.sign(&read_state_payload(state));
        state.certificate = Some(HEXLOWER.encode(&signature.to_bytes()));
    }
}

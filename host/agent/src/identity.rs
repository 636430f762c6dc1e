//! Identities: Ed25519 keys, the principals they authenticate as, and
//! request signing.
//!
//! A key file holds the 32-byte secret seed as lower-case hex, readable by
//! its owner only (mode 0600).

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use cellar_types::Principal;
use cellar_types::api::{request_id, signing_payload};
use data_encoding::HEXLOWER;
use ed25519_dalek::{Signer, SigningKey};

use crate::AgentError;

/// An Ed25519 key pair and the principal it authenticates as, or the
/// anonymous identity (requests go unsigned).
#[derive(Clone)]
pub struct Identity {
    /// The secret key; `None` for the anonymous identity.
    key: Option<SigningKey>,
    /// `Principal::self_authenticating` of the public key, or anonymous.
    principal: Principal,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.principal)
    }
}

/// The authentication headers of one request and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The 32-byte public key, hex; `None` when anonymous.
    pub public_key: Option<String>,
    /// The 64-byte signature of the signing payload, hex; `None` when anonymous.
    pub signature: Option<String>,
    /// The request's id ([`request_id`]).
    pub request_id: String,
}

impl Identity {
    /// The identity of a secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let principal = Principal::self_authenticating(key.verifying_key().as_bytes());
        Identity {
            key: Some(key),
            principal,
        }
    }

    /// The anonymous identity: requests go unsigned.
    pub fn anonymous() -> Self {
        Identity {
            key: None,
            principal: Principal::anonymous(),
        }
    }

    /// A new random identity.
    pub fn generate() -> Result<Self, AgentError> {
        Ok(Self::from_seed(random_bytes()?))
    }

    /// Loads the identity in `path`.
    pub fn load(path: &Path) -> Result<Self, AgentError> {
        let text = fs::read_to_string(path)
            .map_err(|e| AgentError::Identity(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| {
            AgentError::Identity(format!("invalid identity file {}: {e}", path.display()))
        })
    }

    /// Loads the identity in `path`, creating a new random one there when
    /// the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, AgentError> {
        match fs::metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let identity = Self::generate()?;
                identity.save(path)?;
                Ok(identity)
            }
            Err(e) => Err(AgentError::Identity(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the seed to `path`, which must not exist yet (mode 0600,
    /// parent directories created as needed).
    pub fn save(&self, path: &Path) -> Result<(), AgentError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| AgentError::Identity("the anonymous identity has no key".into()))?;
        let fail = |e: std::io::Error| {
            AgentError::Identity(format!("cannot write {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(fail)?;
        writeln!(file, "{}", HEXLOWER.encode(key.as_bytes())).map_err(fail)?;
        file.sync_all().map_err(fail)
    }

    /// Parses a key file's contents: 64 hex digits, whitespace around allowed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bytes = HEXLOWER
            .decode(text.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| "expected 64 hex digits".to_string())?;
        let seed = <[u8; 32]>::try_from(bytes.as_slice())
            .map_err(|_| format!("expected a 32-byte seed, got {} bytes", bytes.len()))?;
        Ok(Self::from_seed(seed))
    }

    /// The principal requests signed by this identity come from.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The 32-byte public key; `None` when anonymous.
    pub fn public_key(&self) -> Option<[u8; 32]> {
        self.key.as_ref().map(|k| k.verifying_key().to_bytes())
    }

    /// Signs a request: `path` is the path and query exactly as sent.
    pub fn sign(
        &self,
        method: &str,
        path: &str,
        ingress_expiry: u64,
        nonce: &[u8],
        body: &[u8],
    ) -> Signature {
        let payload = signing_payload(method, path, ingress_expiry, nonce, body);
        match &self.key {
            None => Signature {
                public_key: None,
                signature: None,
                request_id: request_id(None, &payload),
            },
            Some(key) => {
                let public = key.verifying_key().to_bytes();
                Signature {
                    public_key: Some(HEXLOWER.encode(&public)),
                    signature: Some(HEXLOWER.encode(&key.sign(&payload).to_bytes())),
                    request_id: request_id(Some(&public), &payload),
                }
            }
        }
    }
}

/// Random bytes from the operating system.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], AgentError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| AgentError::Identity(format!("no randomness: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature as Ed25519Signature, Verifier, VerifyingKey};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_with_mode_0600_and_reloads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("identity.key");
        let first = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.principal(), again.principal());
        assert_eq!(
            first.principal(),
            &Principal::self_authenticating(&first.public_key().unwrap())
        );
        assert!(first.save(&path).is_err(), "never overwrites a key");
        fs::write(&path, "not hex").unwrap();
        assert!(Identity::load(&path).is_err());
        fs::write(&path, "abcd").unwrap();
        assert!(Identity::load(&path).is_err());
    }

    #[test]
    fn signature_verifies_against_the_payload() {
        let identity = Identity::from_seed([7; 32]);
        let body = br#"{"method":"add"}"#;
        let path = "/api/v1/canisters/abc/call";
        let signed = identity.sign("POST", path, 99, b"n", body);
        let key_bytes: [u8; 32] = HEXLOWER
            .decode(signed.public_key.unwrap().as_bytes())
            .unwrap()
            .try_into()
            .unwrap();
        let sig_bytes: [u8; 64] = HEXLOWER
            .decode(signed.signature.unwrap().as_bytes())
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
        let signature = Ed25519Signature::from_bytes(&sig_bytes);
        key.verify(&signing_payload("POST", path, 99, b"n", body), &signature)
            .unwrap();
        assert!(
            key.verify(&signing_payload("POST", path, 98, b"n", body), &signature)
                .is_err()
        );
        let anonymous = Identity::anonymous().sign("POST", path, 99, b"n", body);
        assert!(anonymous.signature.is_none());
        assert_ne!(anonymous.request_id, signed.request_id);
    }
}

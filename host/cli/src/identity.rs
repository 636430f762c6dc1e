//! The user's identity: an Ed25519 key kept in a file, and request signing.
//!
//! The file holds the 32-byte secret seed as lower-case hex. The default file
//! is created on first use, readable by its owner only (mode 0600).

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cellar_types::Principal;
use cellar_types::api::signing_payload;
use data_encoding::HEXLOWER;
use ed25519_dalek::{Signer, SigningKey};

/// An Ed25519 key pair and the principal it authenticates as.
pub struct Identity {
    /// The secret key.
    key: SigningKey,
    /// `Principal::self_authenticating` of the public key.
    principal: Principal,
}

/// The two signature headers of one request, hex encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// The 32-byte public key.
    pub public_key: String,
    /// The 64-byte signature of [`signing_payload`].
    pub signature: String,
}

impl Identity {
    /// The identity of a secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        let key = SigningKey::from_bytes(&seed);
        let principal = Principal::self_authenticating(key.verifying_key().as_bytes());
        Identity { key, principal }
    }

    /// Loads the identity in `path`, creating a new random one (file mode
    /// 0600, parent directories as needed) when the file does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text)
                .with_context(|| format!("invalid identity file {}", path.display())),
            Err(e) if e.kind() == ErrorKind::NotFound => Self::create(path),
            Err(e) => {
                Err(e).with_context(|| format!("cannot read identity file {}", path.display()))
            }
        }
    }

    /// Creates a new random identity in `path`, which must not exist yet.
    fn create(path: &Path) -> Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .with_context(|| format!("cannot create directory {}", dir.display()))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create identity file {}", path.display()))?;
        writeln!(file, "{}", HEXLOWER.encode(&seed))
            .with_context(|| format!("cannot write identity file {}", path.display()))?;
        Ok(Self::from_seed(seed))
    }

    /// Parses the file contents: 64 hex digits, surrounding whitespace allowed.
    fn parse(text: &str) -> Result<Self> {
        let bytes = HEXLOWER
            .decode(text.trim().to_ascii_lowercase().as_bytes())
            .context("expected 64 hex digits")?;
        let Ok(seed) = <[u8; 32]>::try_from(bytes.as_slice()) else {
            bail!("expected a 32-byte seed, got {} bytes", bytes.len());
        };
        Ok(Self::from_seed(seed))
    }

    /// The principal requests signed by this identity come from.
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Signs a request: `path` is the path and query exactly as sent.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> SignatureHeaders {
        let signature = self.key.sign(&signing_payload(method, path, body));
        SignatureHeaders {
            public_key: HEXLOWER.encode(&self.public_key()),
            signature: HEXLOWER.encode(&signature.to_bytes()),
        }
    }
}

/// The default identity file: `<config dir>/cellar/identity.key`.
pub fn default_path() -> PathBuf {
    dirs::config_dir()
        .unwrap_or_else(|| PathBuf::from(".cellar"))
        .join("cellar")
        .join("identity.key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    use std::os::unix::fs::PermissionsExt;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("cellar-cli-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn created_with_mode_0600_and_reloads_the_same() {
        let dir = temp_dir("identity");
        let path = dir.join("nested").join("identity.key");
        let first = Identity::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.principal(), again.principal());
        assert_eq!(first.public_key(), again.public_key());
        assert_eq!(
            first.principal(),
            &Principal::self_authenticating(&first.public_key())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rejects_a_malformed_file() {
        let dir = temp_dir("bad-identity");
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("identity.key");
        fs::write(&path, "not hex").unwrap();
        assert!(Identity::load_or_create(&path).is_err());
        fs::write(&path, "abcd").unwrap();
        assert!(Identity::load_or_create(&path).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn signature_verifies_against_the_payload() {
        let identity = Identity::from_seed([7; 32]);
        let body = br#"{"method":"add"}"#;
        let path = "/api/v1/canisters/abc/call";
        let headers = identity.sign("POST", path, body);

        let key_bytes: [u8; 32] = HEXLOWER
            .decode(headers.public_key.as_bytes())
            .unwrap()
            .try_into()
            .unwrap();
        let sig_bytes: [u8; 64] = HEXLOWER
            .decode(headers.signature.as_bytes())
            .unwrap()
            .try_into()
            .unwrap();
        let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
        let signature = Signature::from_bytes(&sig_bytes);
        key.verify(&signing_payload("POST", path, body), &signature)
            .unwrap();
        // Another path or body does not verify.
        assert!(
            key.verify(&signing_payload("POST", "/other", body), &signature)
                .is_err()
        );
        assert!(
            key.verify(&signing_payload("GET", path, body), &signature)
                .is_err()
        );
    }
}

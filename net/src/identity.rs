//! A node's long-term identity: an Ed25519 key pair, kept in a file.
//!
//! The file holds the 32-byte secret seed as lower-case hex (the format of
//! the `cellar` command's user identity), readable by its owner only
//! (mode 0600). The public key is what the subnet's membership pins.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use data_encoding::HEXLOWER;
use ed25519_dalek::SigningKey;

use crate::error::NetError;

/// The DER prefix of a PKCS#8 v1 Ed25519 private key (RFC 8410); the 32-byte
/// seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410); the 32-byte
/// public key follows.
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// An Ed25519 key pair identifying one node of a subnet.
#[derive(Clone)]
pub struct NodeKeyPair {
    /// The secret key (and its public half).
    key: SigningKey,
}

impl NodeKeyPair {
    /// A new random key pair (from the operating system's randomness).
    pub fn generate() -> Result<Self, NetError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| NetError::Randomness(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key pair of a 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        NodeKeyPair {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// The 32-byte secret seed (keep it secret).
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The 32-byte public key, as pinned in the membership.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Writes the seed to `path` as hex, creating the file with mode 0600;
    /// fails if the file exists.
    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        let io = |e| NetError::KeyFile(path.to_path_buf(), e);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{}", HEXLOWER.encode(&self.seed())).map_err(io)?;
        file.sync_all().map_err(io)
    }

    /// Reads a key pair written by [`NodeKeyPair::save`] (64 hex digits,
    /// surrounding whitespace allowed).
    pub fn load(path: &Path) -> Result<Self, NetError> {
        let text =
            fs::read_to_string(path).map_err(|e| NetError::KeyFile(path.to_path_buf(), e))?;
        let invalid = || NetError::InvalidKeyFile(path.to_path_buf());
        let bytes = HEXLOWER
            .decode(text.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| invalid())?;
        let seed = <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| invalid())?;
        Ok(Self::from_seed(seed))
    }

    /// The private key as PKCS#8 v1 DER, for the TLS stack.
    pub(crate) fn pkcs8_der(&self) -> Vec<u8> {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&self.seed());
        der
    }

    /// The public key as a DER SubjectPublicKeyInfo: the raw public key
    /// (RFC 7250) this node presents in TLS.
    pub(crate) fn spki_der(&self) -> Vec<u8> {
        spki_der(&self.public_key())
    }
}

impl fmt::Debug for NodeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeyPair")
            .field("public_key", &HEXLOWER.encode(&self.public_key()))
            .finish_non_exhaustive()
    }
}

/// The DER SubjectPublicKeyInfo of an Ed25519 public key.
pub(crate) fn spki_der(public_key: &[u8; 32]) -> Vec<u8> {
    let mut der = SPKI_ED25519_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    der
}

/// The Ed25519 public key in a DER SubjectPublicKeyInfo, if it is one.
pub(crate) fn public_key_of_spki(der: &[u8]) -> Option<[u8; 32]> {
    let key = der.strip_prefix(SPKI_ED25519_PREFIX.as_slice())?;
    <[u8; 32]>::try_from(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_and_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let keys = NodeKeyPair::generate().unwrap();
        keys.save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            NodeKeyPair::load(&path).unwrap().public_key(),
            keys.public_key()
        );
        assert!(keys.save(&path).is_err(), "save never overwrites");
    }

    #[test]
    fn invalid_key_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.key");
        fs::write(&path, "abcd").unwrap();
        assert!(matches!(
            NodeKeyPair::load(&path),
            Err(NetError::InvalidKeyFile(_))
        ));
    }

    #[test]
    fn spki_round_trips() {
        let keys = NodeKeyPair::from_seed([3; 32]);
        assert_eq!(
            public_key_of_spki(&keys.spki_der()),
            Some(keys.public_key())
        );
        assert_eq!(public_key_of_spki(&keys.spki_der()[1..]), None);
        assert_eq!(public_key_of_spki(&[]), None);
    }
}

//! Principals: opaque byte strings with a checksummed, human-typable text form.
//!
//! The text form follows the Internet Computer's: the CRC-32 of the bytes
//! (big endian) is prepended, the result is base32-encoded (lower case, no
//! padding) and split into groups of five characters joined by dashes. A typo
//! in a principal is therefore caught by the checksum.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha224};

/// Longest principal in bytes (the IC's limit).
pub const MAX_PRINCIPAL_LEN: usize = 29;

/// Suffix byte of principals that name canisters.
const CANISTER_SUFFIX: [u8; 2] = [0x01, 0x01];
/// Suffix byte of principals derived from a public key.
const SELF_AUTHENTICATING_SUFFIX: u8 = 0x02;
/// The only byte of the anonymous principal.
const ANONYMOUS_TAG: u8 = 0x04;

/// A user or canister identity.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Principal(Vec<u8>);

/// Why a text or byte string is not a valid principal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrincipalError {
    /// The text contains characters outside the base32 alphabet and dashes.
    #[error("'{0}' is not a principal: it must be base32 groups of five separated by dashes")]
    BadText(String),
    /// The checksum does not match: most likely a typo.
    #[error("'{0}' is not a principal: its checksum does not match (a typo?)")]
    BadChecksum(String),
    /// Too many bytes.
    #[error("a principal has at most {MAX_PRINCIPAL_LEN} bytes, got {0}")]
    TooLong(usize),
    /// The dashes are not where the canonical form puts them.
    #[error("'{0}' is not in canonical form; did you mean '{1}'?")]
    NotCanonical(String, String),
}

impl Principal {
    /// Builds a principal from raw bytes.
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Result<Self, PrincipalError> {
        let bytes = bytes.into();
        if bytes.len() > MAX_PRINCIPAL_LEN {
            return Err(PrincipalError::TooLong(bytes.len()));
        }
        Ok(Principal(bytes))
    }

    /// The anonymous principal (`2vxsx-fae`): the sender of unsigned requests.
    pub fn anonymous() -> Self {
        Principal(vec![ANONYMOUS_TAG])
    }

    /// The principal of the canister with the given index on this subnet.
    pub fn canister(index: u64) -> Self {
        let mut bytes = index.to_be_bytes().to_vec();
        bytes.extend_from_slice(&CANISTER_SUFFIX);
        Principal(bytes)
    }

    /// The self-authenticating principal of a user holding `public_key`
    /// (SHA-224 of the key followed by the tag byte 0x02).
    pub fn self_authenticating(public_key: &[u8]) -> Self {
        let mut bytes = Sha224::digest(public_key).to_vec();
        bytes.push(SELF_AUTHENTICATING_SUFFIX);
        Principal(bytes)
    }

    /// The canister index, when this principal names a canister.
    pub fn canister_index(&self) -> Option<u64> {
        if self.0.len() == 10 && self.0[8..] == CANISTER_SUFFIX {
            Some(u64::from_be_bytes(self.0[..8].try_into().ok()?))
        } else {
            None
        }
    }

    /// True for the anonymous principal.
    pub fn is_anonymous(&self) -> bool {
        self.0 == [ANONYMOUS_TAG]
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The checksummed text form.
    pub fn to_text(&self) -> String {
        let mut buf = crc32fast::hash(&self.0).to_be_bytes().to_vec();
        buf.extend_from_slice(&self.0);
        let encoded = data_encoding::BASE32_NOPAD.encode(&buf).to_lowercase();
        let groups: Vec<&str> = encoded
            .as_bytes()
            .chunks(5)
            .map(|c| std::str::from_utf8(c).expect("base32 is ascii"))
            .collect();
        groups.join("-")
    }

    /// Parses the checksummed text form.
    pub fn from_text(text: &str) -> Result<Self, PrincipalError> {
        let compact: String = text.chars().filter(|c| *c != '-').collect();
        let decoded = data_encoding::BASE32_NOPAD
            .decode(compact.to_uppercase().as_bytes())
            .map_err(|_| PrincipalError::BadText(text.to_string()))?;
        if decoded.len() < 4 {
            return Err(PrincipalError::BadText(text.to_string()));
        }
        let (checksum, bytes) = decoded.split_at(4);
        if checksum != crc32fast::hash(bytes).to_be_bytes() {
            return Err(PrincipalError::BadChecksum(text.to_string()));
        }
        let principal = Principal::from_bytes(bytes.to_vec())?;
        let canonical = principal.to_text();
        if canonical != text {
            return Err(PrincipalError::NotCanonical(text.to_string(), canonical));
        }
        Ok(principal)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Principal({})", self.to_text())
    }
}

impl FromStr for Principal {
    type Err = PrincipalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Principal::from_text(s)
    }
}

impl serde::Serialize for Principal {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

impl<'de> serde::Deserialize<'de> for Principal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Principal::from_text(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_has_the_ic_text_form() {
        assert_eq!(Principal::anonymous().to_text(), "2vxsx-fae");
    }

    #[test]
    fn canister_ids_match_the_ic_text_form() {
        // The IC's management-adjacent canister 0 and a well-known ledger id.
        assert_eq!(
            Principal::canister(0).to_text(),
            "rwlgt-iiaaa-aaaaa-aaaaa-cai"
        );
        assert_eq!(
            Principal::canister(2).to_text(),
            "ryjl3-tyaaa-aaaaa-aaaba-cai"
        );
    }

    #[test]
    fn text_round_trips() {
        for p in [
            Principal::anonymous(),
            Principal::canister(7),
            Principal::canister(u64::MAX),
            Principal::self_authenticating(b"some public key"),
        ] {
            assert_eq!(Principal::from_text(&p.to_text()).unwrap(), p);
            assert_eq!(p.to_text().parse::<Principal>().unwrap(), p);
        }
        assert_eq!(Principal::canister(9).canister_index(), Some(9));
        assert_eq!(Principal::anonymous().canister_index(), None);
    }

    #[test]
    fn typos_are_caught() {
        let text = Principal::canister(2).to_text();
        let mut typo = text.clone().into_bytes();
        typo[0] = if typo[0] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(typo).unwrap();
        assert!(matches!(
            Principal::from_text(&typo),
            Err(PrincipalError::BadChecksum(_))
        ));
        assert!(Principal::from_text("not a principal!").is_err());
        assert!(matches!(
            Principal::from_text(&text.replace('-', "")),
            Err(PrincipalError::NotCanonical(..))
        ));
    }
}

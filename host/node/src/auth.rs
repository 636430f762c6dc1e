//! Who sent a request: Ed25519 signatures over the request.
//!
//! A request signed per [`cellar_types::api::signing_payload`] comes from the
//! self-authenticating principal of its public key; an unsigned request comes
//! from the anonymous principal. A request with a bad signature is refused.

use cellar_types::Principal;
use cellar_types::api::signing_payload;
use data_encoding::HEXLOWER_PERMISSIVE;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// Determines the caller of a request from its signature headers.
pub fn authenticate(
    method: &str,
    path: &str,
    body: &[u8],
    public_key: Option<&str>,
    signature: Option<&str>,
) -> Result<Principal, String> {
    let (public_key, signature) = match (public_key, signature) {
        (None, None) => return Ok(Principal::anonymous()),
        (Some(k), Some(s)) => (k, s),
        _ => {
            return Err(
                "a signed request needs both the public key and the signature header".into(),
            );
        }
    };
    let key_bytes: [u8; 32] = HEXLOWER_PERMISSIVE
        .decode(public_key.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the public key must be 32 bytes, hex encoded")?;
    let sig_bytes: [u8; 64] = HEXLOWER_PERMISSIVE
        .decode(signature.as_bytes())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or("the signature must be 64 bytes, hex encoded")?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| "the public key is not a valid Ed25519 key")?;
    key.verify(
        &signing_payload(method, path, body),
        &Signature::from_bytes(&sig_bytes),
    )
    .map_err(|_| "the signature does not match the request".to_string())?;
    Ok(Principal::self_authenticating(&key_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::HEXLOWER;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn signed_unsigned_and_forged_requests() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = HEXLOWER.encode(key.verifying_key().as_bytes());
        let sig = HEXLOWER.encode(&key.sign(&signing_payload("POST", "/p", b"body")).to_bytes());
        let caller = authenticate("POST", "/p", b"body", Some(&public), Some(&sig)).unwrap();
        assert_eq!(
            caller,
            Principal::self_authenticating(key.verifying_key().as_bytes())
        );
        assert_eq!(
            authenticate("GET", "/", b"", None, None).unwrap(),
            Principal::anonymous()
        );
        assert!(authenticate("POST", "/p", b"bodz", Some(&public), Some(&sig)).is_err());
        assert!(authenticate("POST", "/q", b"body", Some(&public), Some(&sig)).is_err());
        assert!(authenticate("POST", "/p", b"body", Some(&public), None).is_err());
        assert!(authenticate("POST", "/p", b"body", Some("zz"), Some(&sig)).is_err());
    }
}

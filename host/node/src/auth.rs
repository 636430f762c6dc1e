//! Who sent a request: Ed25519 signatures over the request.
//!
//! A request signed per [`cellar_types::api::signing_payload`] comes from the
//! self-authenticating principal of its public key; an unsigned request comes
//! from the anonymous principal. A request with a bad signature is refused.
//! Either way the request gets its id ([`cellar_types::api::request_id`]).

use cellar_types::Principal;
use cellar_types::api::{MAX_NONCE_BYTES, request_id, signing_payload};
use data_encoding::HEXLOWER_PERMISSIVE;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};

/// The headers of a request that authenticate it, as sent.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The public key header (hex).
    pub public_key: Option<&'a str>,
    /// The signature header (hex).
    pub signature: Option<&'a str>,
    /// The ingress expiry header (decimal nanoseconds).
    pub ingress_expiry: Option<&'a str>,
    /// The nonce header (hex).
    pub nonce: Option<&'a str>,
}

/// An authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// Who sent it.
    pub caller: Principal,
    /// Its id.
    pub request_id: String,
    /// Its ingress expiry, when it has one.
    pub ingress_expiry: Option<u64>,
}

/// Determines the caller and id of a request from its headers and content.
pub fn authenticate(
    method: &str,
    path: &str,
    body: &[u8],
    credentials: Credentials<'_>,
) -> Result<Authenticated, String> {
    let ingress_expiry = credentials
        .ingress_expiry
        .map(|text| {
            text.trim()
                .parse::<u64>()
                .map_err(|_| format!("the ingress expiry '{text}' is not a number of nanoseconds"))
        })
        .transpose()?;
    let nonce = match credentials.nonce {
        None => Vec::new(),
        Some(text) => HEXLOWER_PERMISSIVE
            .decode(text.as_bytes())
            .ok()
            .filter(|n| n.len() <= MAX_NONCE_BYTES)
            .ok_or_else(|| format!("the nonce must be at most {MAX_NONCE_BYTES} bytes, hex"))?,
    };
    let payload = signing_payload(method, path, ingress_expiry.unwrap_or(0), &nonce, body);
    let (public_key, signature) = match (credentials.public_key, credentials.signature) {
        (None, None) => {
            return Ok(Authenticated {
                caller: Principal::anonymous(),
                request_id: request_id(None, &payload),
                ingress_expiry,
            });
        }
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
    key.verify(&payload, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| "the signature does not match the request".to_string())?;
    Ok(Authenticated {
        caller: Principal::self_authenticating(&key_bytes),
        request_id: request_id(Some(&key_bytes), &payload),
        ingress_expiry,
    })
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
        let payload = signing_payload("POST", "/p", 42, &[1, 2], b"body");
        let sig = HEXLOWER.encode(&key.sign(&payload).to_bytes());
        let signed = |method, path, body: &'static [u8], expiry, nonce, sig: Option<&str>| {
            authenticate(
                method,
                path,
                body,
                Credentials {
                    public_key: Some(&public),
                    signature: sig,
                    ingress_expiry: expiry,
                    nonce,
                },
            )
        };
        let ok = signed("POST", "/p", b"body", Some("42"), Some("0102"), Some(&sig)).unwrap();
        assert_eq!(
            ok.caller,
            Principal::self_authenticating(key.verifying_key().as_bytes())
        );
        assert_eq!(ok.ingress_expiry, Some(42));
        assert_eq!(
            ok.request_id,
            request_id(Some(key.verifying_key().as_bytes()), &payload)
        );
        let anonymous = authenticate("GET", "/", b"", Credentials::default()).unwrap();
        assert_eq!(anonymous.caller, Principal::anonymous());
        // Any change of a signed field breaks the signature.
        assert!(signed("POST", "/p", b"bodz", Some("42"), Some("0102"), Some(&sig)).is_err());
        assert!(signed("POST", "/q", b"body", Some("42"), Some("0102"), Some(&sig)).is_err());
        assert!(signed("POST", "/p", b"body", Some("43"), Some("0102"), Some(&sig)).is_err());
        assert!(signed("POST", "/p", b"body", Some("42"), Some("0103"), Some(&sig)).is_err());
        assert!(signed("POST", "/p", b"body", Some("42"), Some("0102"), None).is_err());
        assert!(signed("POST", "/p", b"body", Some("x"), Some("0102"), Some(&sig)).is_err());
    }
}

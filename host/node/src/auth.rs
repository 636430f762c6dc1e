//! Who sent a request: Ed25519 signatures over the request.
//!
//! A request signed per [`cellar_types::api::signing_payload`] (over its
//! method, path, ingress expiry, nonce and body) comes from the
//! self-authenticating principal of its public key; an unsigned request
//! comes from the anonymous principal. Headers that cannot be read (a
//! non-numeric expiry, a nonce or key or signature that is not hex of the
//! right length) make the request malformed ([`AuthError::Malformed`],
//! 400); a well-formed signature that does not verify makes it unauthorized
//! ([`AuthError::BadSignature`], 401). Either way an accepted request gets
//! its id ([`cellar_types::api::request_id`]).
//!
//! A replica checks a block's request signatures in one Ed25519 batch
//! ([`check_all`]; its weights come from the list itself, so every replica
//! reaches the same verdict).

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

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header cannot be read: the request is malformed (400).
    #[error("{0}")]
    Malformed(String),
    /// The signature is well formed but does not verify (401).
    #[error("{0}")]
    BadSignature(String),
}

fn malformed(message: impl Into<String>) -> AuthError {
    AuthError::Malformed(message.into())
}

/// Decodes a hex header of exactly `N` bytes.
fn hex_array<const N: usize>(text: &str, what: &str) -> Result<[u8; N], AuthError> {
    let bytes = HEXLOWER_PERMISSIVE
        .decode(text.trim().as_bytes())
        .map_err(|_| malformed(format!("the {what} header is not hex: '{}'", shorten(text))))?;
    let len = bytes.len();
    bytes.try_into().map_err(|_| {
        malformed(format!(
            "the {what} must be {N} bytes (hex encoded), not {len}"
        ))
    })
}

/// `text` cut to 80 characters for an error message.
fn shorten(text: &str) -> String {
    let mut cut: String = text.chars().take(80).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

/// A request's credentials, read but with its signature not yet checked:
/// the caller and id it claims, and the signature that must hold for the
/// claim to stand (none for an anonymous request).
#[derive(Debug, Clone)]
pub struct Claim {
    /// Who the request says it is from, and its id.
    pub authenticated: Authenticated,
    /// The signature to check, when the request is signed.
    pub signature: Option<PendingSignature>,
}

/// An Ed25519 signature over a signing payload, to be checked alone
/// ([`PendingSignature::holds`]) or with others ([`check_all`]).
#[derive(Debug, Clone)]
pub struct PendingSignature {
    key: VerifyingKey,
    signature: Signature,
    payload: Vec<u8>,
}

impl PendingSignature {
    /// Whether the signature verifies for its key and payload.
    pub fn holds(&self) -> bool {
        self.key.verify(&self.payload, &self.signature).is_ok()
    }
}

/// Checks many signatures at once, the same way on every replica given the
/// same list: one batch verification (its random weights are derived from
/// the list itself, so the outcome is a function of the list), and only when
/// the batch fails, each signature alone to find the ones that do not hold.
/// Returns whether each signature holds, in order.
pub fn check_all(signatures: &[&PendingSignature]) -> Vec<bool> {
    if signatures.is_empty() {
        return Vec::new();
    }
    let payloads: Vec<&[u8]> = signatures.iter().map(|s| s.payload.as_slice()).collect();
    let sigs: Vec<Signature> = signatures.iter().map(|s| s.signature).collect();
    let keys: Vec<VerifyingKey> = signatures.iter().map(|s| s.key).collect();
    if ed25519_dalek::verify_batch(&payloads, &sigs, &keys).is_ok() {
        return vec![true; signatures.len()];
    }
    signatures.iter().map(|s| s.holds()).collect()
}

/// Reads a request's credentials (without checking its signature): the
/// caller and id it claims, and the signature that must hold.
pub fn claim(
    method: &str,
    path: &str,
    body: &[u8],
    credentials: Credentials<'_>,
) -> Result<Claim, AuthError> {
    let ingress_expiry = credentials
        .ingress_expiry
        .map(|text| {
            text.trim().parse::<u64>().map_err(|_| {
                malformed(format!(
                    "the ingress expiry '{}' is not a number of nanoseconds since the Unix epoch",
                    shorten(text)
                ))
            })
        })
        .transpose()?;
    let nonce = match credentials.nonce {
        None => Vec::new(),
        Some(text) => {
            let nonce = HEXLOWER_PERMISSIVE
                .decode(text.trim().as_bytes())
                .map_err(|_| malformed(format!("the nonce is not hex: '{}'", shorten(text))))?;
            if nonce.len() > MAX_NONCE_BYTES {
                return Err(malformed(format!(
                    "the nonce must be at most {MAX_NONCE_BYTES} bytes, not {}",
                    nonce.len()
                )));
            }
            nonce
        }
    };
    let payload = signing_payload(method, path, ingress_expiry.unwrap_or(0), &nonce, body);
    let (public_key, signature) = match (credentials.public_key, credentials.signature) {
        (None, None) => {
            return Ok(Claim {
                authenticated: Authenticated {
                    caller: Principal::anonymous(),
                    request_id: request_id(None, &payload),
                    ingress_expiry,
                },
                signature: None,
            });
        }
        (Some(k), Some(s)) => (k, s),
        _ => {
            return Err(malformed(
                "a signed request needs both the public key and the signature header",
            ));
        }
    };
    let key_bytes: [u8; 32] = hex_array(public_key, "public key")?;
    let sig_bytes: [u8; 64] = hex_array(signature, "signature")?;
    let key = VerifyingKey::from_bytes(&key_bytes)
        .map_err(|_| malformed("the public key is not a valid Ed25519 key"))?;
    Ok(Claim {
        authenticated: Authenticated {
            caller: Principal::self_authenticating(&key_bytes),
            request_id: request_id(Some(&key_bytes), &payload),
            ingress_expiry,
        },
        signature: Some(PendingSignature {
            key,
            signature: Signature::from_bytes(&sig_bytes),
            payload,
        }),
    })
}

/// The error of a signature that does not hold.
pub fn bad_signature() -> AuthError {
    AuthError::BadSignature("the signature does not match the request".to_string())
}

/// Determines the caller and id of a request from its headers and content.
pub fn authenticate(
    method: &str,
    path: &str,
    body: &[u8],
    credentials: Credentials<'_>,
) -> Result<Authenticated, AuthError> {
    let claim = claim(method, path, body, credentials)?;
    match &claim.signature {
        Some(signature) if !signature.holds() => Err(bad_signature()),
        _ => Ok(claim.authenticated),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use data_encoding::HEXLOWER;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn signatures_checked_together_agree_with_each_checked_alone() {
        let pending = |seed: u8, forged: bool| {
            let key = SigningKey::from_bytes(&[seed; 32]);
            let body = [seed; 3];
            let payload = signing_payload("POST", "/p", 1, &[], &body);
            let mut sig = key.sign(&payload).to_bytes();
            if forged {
                sig[0] ^= 1;
            }
            claim(
                "POST",
                "/p",
                &body,
                Credentials {
                    public_key: Some(&HEXLOWER.encode(key.verifying_key().as_bytes())),
                    signature: Some(&HEXLOWER.encode(&sig)),
                    ingress_expiry: Some("1"),
                    nonce: None,
                },
            )
            .unwrap()
            .signature
            .unwrap()
        };
        assert!(check_all(&[]).is_empty());
        let good: Vec<_> = (1..=20).map(|i| pending(i, false)).collect();
        assert_eq!(check_all(&good.iter().collect::<Vec<_>>()), vec![true; 20]);
        let mixed: Vec<_> = (1..=20).map(|i| pending(i, i % 7 == 0)).collect();
        let together = check_all(&mixed.iter().collect::<Vec<_>>());
        let alone: Vec<bool> = mixed.iter().map(PendingSignature::holds).collect();
        assert_eq!(together, alone);
        assert_eq!(together.iter().filter(|h| !**h).count(), 2);
    }

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
        assert!(matches!(
            signed("POST", "/p", b"body", Some("43"), Some("0102"), Some(&sig)),
            Err(AuthError::BadSignature(_))
        ));
        // Headers that cannot be read are malformed, not unauthorized.
        let malformed = |r: Result<Authenticated, AuthError>| match r {
            Err(AuthError::Malformed(m)) => m,
            other => panic!("expected a malformed request, got {other:?}"),
        };
        assert!(
            malformed(signed(
                "POST",
                "/p",
                b"body",
                Some("42"),
                Some("0102"),
                None
            ))
            .contains("both")
        );
        assert!(
            malformed(signed(
                "POST",
                "/p",
                b"body",
                Some("x"),
                Some("0102"),
                Some(&sig)
            ))
            .contains("not a number")
        );
        assert!(
            malformed(signed(
                "POST",
                "/p",
                b"body",
                Some("42"),
                Some("zz"),
                Some(&sig)
            ))
            .contains("nonce is not hex")
        );
        let long_nonce = "00".repeat(MAX_NONCE_BYTES + 1);
        assert!(
            malformed(signed(
                "POST",
                "/p",
                b"body",
                Some("42"),
                Some(&long_nonce),
                Some(&sig)
            ))
            .contains("at most")
        );
        assert!(
            malformed(signed(
                "POST",
                "/p",
                b"body",
                Some("42"),
                Some("0102"),
                Some("abc")
            ))
            .contains("signature header is not hex")
        );
        assert!(
            malformed(signed(
                "POST",
                "/p",
                b"body",
                Some("42"),
                Some("0102"),
                Some("abcd")
            ))
            .contains("signature must be 64 bytes")
        );
    }
}

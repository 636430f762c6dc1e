//! BLS signatures on BLS12-381 (blst), **min-sig** variant: signatures are
//! G1 points (48 bytes compressed), public keys G2 points (96 bytes).
//!
//! Min-sig keeps every artifact that carries a signature small and makes the
//! hot operations (signing, share combination by Lagrange interpolation,
//! multi-signature aggregation) G1 operations, the cheaper group. Public keys
//! are few and known from the genesis, so their size does not matter.
//!
//! Three schemes share the one hash-to-curve (`DST` below):
//! - individual signatures (`sign` / `verify`),
//! - multi-signatures (`aggregate` / `verify_multi`): the sum of individual
//!   signatures on one message, verified against the sum of the signers'
//!   public keys. Rogue-key attacks are excluded because every key comes from
//!   the trusted dealing (a DKG would add proofs of possession),
//! - threshold signatures (`deal`, `ThresholdPublicKey::verify_share`,
//!   `ThresholdPublicKey::combine`): `deal` shares a random degree t−1
//!   polynomial, node i holds p(i+1); each share is verified against the
//!   node's public share, and `combine` interpolates any t verified shares
//!   (Lagrange at 0) into the one signature p(0)·H(m) the subnet key
//!   verifies, whichever t are used.

use std::fmt;

use blst::min_sig;
use blst::{
    BLST_ERROR, blst_bendian_from_scalar, blst_fr, blst_fr_add, blst_fr_from_scalar,
    blst_fr_from_uint64, blst_fr_inverse, blst_fr_mul, blst_fr_sub, blst_p1, blst_p1_add_or_double,
    blst_p1_affine, blst_p1_compress, blst_p1_from_affine, blst_p1_mult, blst_scalar,
    blst_scalar_from_bendian, blst_scalar_from_fr,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Index of a node in its subnet (0-based); threshold shares are evaluated at `index + 1`.
pub type NodeIndex = u32;

/// Size of a compressed signature (a G1 point).
pub const SIGNATURE_BYTES: usize = 48;
/// Size of a compressed public key (a G2 point).
pub const PUBLIC_KEY_BYTES: usize = 96;
/// Size of a secret key (a big-endian scalar).
pub const SECRET_KEY_BYTES: usize = 32;

/// The hash-to-curve domain separation tag (the basic scheme of the BLS draft).
const DST: &[u8] = b"BLS_SIG_BLS12381G1_XMD:SHA-256_SSWU_RO_NUL_";

/// What went wrong with a key, a signature or a share.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Bytes that are not a valid public key (not on the curve, not in G2, or the identity).
    #[error("invalid public key")]
    InvalidPublicKey,
    /// Bytes that are not a valid secret key (zero or not below the group order).
    #[error("invalid secret key")]
    InvalidSecretKey,
    /// A signature that does not parse or does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// The share of this node does not verify under its public key share.
    #[error("invalid signature share from node {0}")]
    InvalidShare(NodeIndex),
    /// Two shares claim the same node.
    #[error("duplicate share from node {0}")]
    DuplicateShare(NodeIndex),
    /// A node index outside the subnet.
    #[error("node index {0} out of range")]
    IndexOutOfRange(NodeIndex),
    /// Fewer shares or signers than required.
    #[error("not enough shares: {have} of {need}")]
    NotEnoughShares {
        /// Shares given.
        have: usize,
        /// Shares required.
        need: usize,
    },
    /// A threshold outside 1..=n.
    #[error("threshold {threshold} invalid for {n} nodes")]
    BadThreshold {
        /// The requested threshold.
        threshold: u32,
        /// The number of nodes.
        n: u32,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serializes a byte array as a sequence and reads it back with a length check.
macro_rules! byte_array_serde {
    ($name:ident, $len:expr) => {
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let v: ByteBuf = ByteBuf::deserialize(d)?;
                let arr: [u8; $len] = v.0.try_into().map_err(|v: Vec<u8>| {
                    serde::de::Error::invalid_length(v.len(), &stringify!($len))
                })?;
                Ok($name(arr))
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}…)", stringify!($name), hex(&self.0[..6]))
            }
        }
    };
}

/// Bytes read by `deserialize_bytes` or from a sequence of u8 (for self-describing formats).
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ByteBuf, A::Error> {
                let mut v = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    if v.len() >= 1 << 16 {
                        return Err(serde::de::Error::custom("byte string too long"));
                    }
                    v.push(b);
                }
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A compressed signature, signature share or aggregate, as carried in artifacts.
/// It is parsed (and group-checked) only when verified.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignatureBytes(pub [u8; SIGNATURE_BYTES]);
byte_array_serde!(SignatureBytes, SIGNATURE_BYTES);

/// A compressed public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKeyBytes(pub [u8; PUBLIC_KEY_BYTES]);
byte_array_serde!(PublicKeyBytes, PUBLIC_KEY_BYTES);

/// A validated public key (in G2, not the identity). Serializes as its compressed bytes.
#[derive(Clone, Copy)]
pub struct PublicKey {
    key: min_sig::PublicKey,
    bytes: PublicKeyBytes,
}

impl PublicKey {
    /// Parses and validates a compressed public key.
    pub fn from_bytes(bytes: &PublicKeyBytes) -> Result<Self, CryptoError> {
        let key = min_sig::PublicKey::key_validate(&bytes.0)
            .map_err(|_| CryptoError::InvalidPublicKey)?;
        Ok(PublicKey { key, bytes: *bytes })
    }

    /// The compressed bytes.
    pub fn to_bytes(&self) -> PublicKeyBytes {
        self.bytes
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}
impl Eq for PublicKey {}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}…)", hex(&self.bytes.0[..6]))
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.bytes.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = PublicKeyBytes::deserialize(d)?;
        PublicKey::from_bytes(&bytes).map_err(serde::de::Error::custom)
    }
}

/// A secret key or secret key share. Serializes as its 32 big-endian bytes;
/// `Debug` does not show it.
#[derive(Clone)]
pub struct SecretKey(min_sig::SecretKey);

impl SecretKey {
    /// Derives a key from at least 32 bytes of key material (the IETF KeyGen).
    pub fn from_seed(ikm: &[u8], info: &[u8]) -> Result<Self, CryptoError> {
        let mut material = Sha256::digest(ikm).to_vec();
        material.extend_from_slice(ikm);
        min_sig::SecretKey::key_gen(&material, info)
            .map(SecretKey)
            .map_err(|_| CryptoError::InvalidSecretKey)
    }

    /// Parses 32 big-endian bytes (non-zero, below the group order).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        min_sig::SecretKey::from_bytes(bytes)
            .map(SecretKey)
            .map_err(|_| CryptoError::InvalidSecretKey)
    }

    /// The 32 big-endian bytes.
    pub fn to_bytes(&self) -> [u8; SECRET_KEY_BYTES] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let key = self.0.sk_to_pk();
        PublicKey {
            key,
            bytes: PublicKeyBytes(key.to_bytes()),
        }
    }

    /// Signs `msg` (individual signature, multi-signature part or threshold share).
    pub fn sign(&self, msg: &[u8]) -> SignatureBytes {
        SignatureBytes(self.0.sign(msg, DST, &[]).to_bytes())
    }

    fn scalar(&self) -> blst_fr {
        let mut s = blst_scalar::default();
        let mut fr = blst_fr::default();
        let be = self.0.to_bytes();
        // SAFETY: pointers to live, correctly sized blst values.
        unsafe {
            blst_scalar_from_bendian(&mut s, be.as_ptr());
            blst_fr_from_scalar(&mut fr, &s);
        }
        fr
    }

    fn from_fr(fr: &blst_fr) -> Result<Self, CryptoError> {
        let mut s = blst_scalar::default();
        let mut be = [0u8; 32];
        // SAFETY: pointers to live, correctly sized blst values.
        unsafe {
            blst_scalar_from_fr(&mut s, fr);
            blst_bendian_from_scalar(be.as_mut_ptr(), &s);
        }
        SecretKey::from_bytes(&be)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl Serialize for SecretKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = ByteBuf::deserialize(d)?;
        SecretKey::from_bytes(&v.0).map_err(serde::de::Error::custom)
    }
}

fn parse_signature(sig: &SignatureBytes) -> Result<min_sig::Signature, CryptoError> {
    min_sig::Signature::from_bytes(&sig.0).map_err(|_| CryptoError::InvalidSignature)
}

/// Verifies an individual signature (or one threshold share against its public key share).
pub fn verify(pk: &PublicKey, msg: &[u8], sig: &SignatureBytes) -> Result<(), CryptoError> {
    let s = parse_signature(sig)?;
    match s.verify(true, msg, DST, &[], &pk.key, false) {
        BLST_ERROR::BLST_SUCCESS => Ok(()),
        _ => Err(CryptoError::InvalidSignature),
    }
}

/// Aggregates individual signatures on one message into a multi-signature.
/// Every input is group-checked; the caller verifies them individually first.
pub fn aggregate(sigs: &[SignatureBytes]) -> Result<SignatureBytes, CryptoError> {
    let parsed = sigs
        .iter()
        .map(parse_signature)
        .collect::<Result<Vec<_>, _>>()?;
    let refs: Vec<&min_sig::Signature> = parsed.iter().collect();
    let agg = min_sig::AggregateSignature::aggregate(&refs, true)
        .map_err(|_| CryptoError::InvalidSignature)?;
    Ok(SignatureBytes(agg.to_signature().to_bytes()))
}

/// Verifies a multi-signature on `msg` by the holders of `pks` (one pairing check).
pub fn verify_multi(
    pks: &[&PublicKey],
    msg: &[u8],
    sig: &SignatureBytes,
) -> Result<(), CryptoError> {
    if pks.is_empty() {
        return Err(CryptoError::NotEnoughShares { have: 0, need: 1 });
    }
    let s = parse_signature(sig)?;
    let keys: Vec<&min_sig::PublicKey> = pks.iter().map(|p| &p.key).collect();
    match s.fast_aggregate_verify(true, msg, DST, &keys) {
        BLST_ERROR::BLST_SUCCESS => Ok(()),
        _ => Err(CryptoError::InvalidSignature),
    }
}

/// The public side of a (t, n) threshold key: the subnet public key and each
/// node's public key share. Serializable; shares are validated on load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThresholdPublicKey {
    /// Shares needed to sign (t).
    pub threshold: u32,
    /// The subnet public key, g2^p(0).
    pub public_key: PublicKey,
    /// Public key share of node i, g2^p(i+1).
    pub shares: Vec<PublicKey>,
}

fn fr_from_u64(x: u64) -> blst_fr {
    let mut fr = blst_fr::default();
    let limbs = [x, 0, 0, 0];
    // SAFETY: `limbs` is the 4-limb array blst reads.
    unsafe { blst_fr_from_uint64(&mut fr, limbs.as_ptr()) };
    fr
}

/// A threshold dealing: the public key and each node's secret share. Produced
/// by a trusted dealer here (tests, genesis); a DKG would produce the same shapes.
pub struct Dealing {
    /// The public side.
    pub public: ThresholdPublicKey,
    /// Secret share of node i.
    pub secret_shares: Vec<SecretKey>,
}

/// Deals a (threshold, n) key from `seed`: a random polynomial of degree
/// threshold−1 whose coefficients are derived from the seed and `label`.
pub fn deal(seed: &[u8], label: &str, threshold: u32, n: u32) -> Result<Dealing, CryptoError> {
    if threshold == 0 || threshold > n {
        return Err(CryptoError::BadThreshold { threshold, n });
    }
    let coefficients = (0..threshold)
        .map(|j| {
            let ikm = [seed, label.as_bytes(), &j.to_be_bytes()].concat();
            SecretKey::from_seed(&ikm, b"cellar-threshold-coefficient").map(|k| k.scalar())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut secret_shares = Vec::with_capacity(n as usize);
    for i in 0..n {
        let x = fr_from_u64(u64::from(i) + 1);
        let mut acc = blst_fr::default();
        for c in coefficients.iter().rev() {
            let mut t = blst_fr::default();
            // SAFETY: blst field arithmetic on live values; outputs may alias nothing.
            unsafe {
                blst_fr_mul(&mut t, &acc, &x);
                blst_fr_add(&mut acc, &t, c);
            }
        }
        secret_shares.push(SecretKey::from_fr(&acc)?);
    }
    let secret = SecretKey::from_fr(&coefficients[0])?;
    let public = ThresholdPublicKey {
        threshold,
        public_key: secret.public_key(),
        shares: secret_shares.iter().map(SecretKey::public_key).collect(),
    };
    Ok(Dealing {
        public,
        secret_shares,
    })
}

/// The Lagrange coefficients at 0 for the evaluation points `index + 1`.
fn lagrange_at_zero(indices: &[NodeIndex]) -> Result<Vec<blst_fr>, CryptoError> {
    let xs: Vec<blst_fr> = indices
        .iter()
        .map(|&i| fr_from_u64(u64::from(i) + 1))
        .collect();
    let mut out = Vec::with_capacity(xs.len());
    for (i, xi) in xs.iter().enumerate() {
        let mut num = fr_from_u64(1);
        let mut den = fr_from_u64(1);
        for (j, xj) in xs.iter().enumerate() {
            if i == j {
                continue;
            }
            let mut diff = blst_fr::default();
            let mut t = blst_fr::default();
            // SAFETY: blst field arithmetic on live values.
            unsafe {
                blst_fr_mul(&mut t, &num, xj);
                num = t;
                blst_fr_sub(&mut diff, xj, xi);
                blst_fr_mul(&mut t, &den, &diff);
                den = t;
            }
        }
        if den.l == [0; 4] {
            return Err(CryptoError::DuplicateShare(indices[i]));
        }
        let mut inv = blst_fr::default();
        let mut l = blst_fr::default();
        // SAFETY: blst field arithmetic on live values; `den` is non-zero.
        unsafe {
            blst_fr_inverse(&mut inv, &den);
            blst_fr_mul(&mut l, &num, &inv);
        }
        out.push(l);
    }
    Ok(out)
}

impl ThresholdPublicKey {
    /// Number of nodes holding a share.
    pub fn n(&self) -> u32 {
        self.shares.len() as u32
    }

    /// Verifies node `index`'s share on `msg`.
    pub fn verify_share(
        &self,
        index: NodeIndex,
        msg: &[u8],
        share: &SignatureBytes,
    ) -> Result<(), CryptoError> {
        let pk = self
            .shares
            .get(index as usize)
            .ok_or(CryptoError::IndexOutOfRange(index))?;
        verify(pk, msg, share).map_err(|_| CryptoError::InvalidShare(index))
    }

    /// Verifies a combined signature under the subnet public key.
    pub fn verify(&self, msg: &[u8], sig: &SignatureBytes) -> Result<(), CryptoError> {
        verify(&self.public_key, msg, sig)
    }

    /// Verifies every share, then combines the first `threshold` of them. A
    /// bad share is reported, never combined.
    pub fn combine(
        &self,
        msg: &[u8],
        shares: &[(NodeIndex, SignatureBytes)],
    ) -> Result<SignatureBytes, CryptoError> {
        for (index, share) in shares {
            self.verify_share(*index, msg, share)?;
        }
        self.combine_verified(shares)
    }

    /// Combines shares the caller has already verified: any `threshold` of
    /// them give the same signature.
    pub fn combine_verified(
        &self,
        shares: &[(NodeIndex, SignatureBytes)],
    ) -> Result<SignatureBytes, CryptoError> {
        let t = self.threshold as usize;
        if shares.len() < t {
            return Err(CryptoError::NotEnoughShares {
                have: shares.len(),
                need: t,
            });
        }
        let used = &shares[..t];
        let mut indices = Vec::with_capacity(t);
        for (index, _) in used {
            if *index >= self.n() {
                return Err(CryptoError::IndexOutOfRange(*index));
            }
            if indices.contains(index) {
                return Err(CryptoError::DuplicateShare(*index));
            }
            indices.push(*index);
        }
        let lambdas = lagrange_at_zero(&indices)?;
        let mut acc = blst_p1::default();
        for ((_, share), lambda) in used.iter().zip(&lambdas) {
            let sig = parse_signature(share)?;
            let affine: &blst_p1_affine = (&sig).into();
            let mut point = blst_p1::default();
            let mut scaled = blst_p1::default();
            let mut scalar = blst_scalar::default();
            // SAFETY: blst group arithmetic on live values; the scalar is 32 little-endian bytes.
            unsafe {
                blst_scalar_from_fr(&mut scalar, lambda);
                blst_p1_from_affine(&mut point, affine);
                blst_p1_mult(&mut scaled, &point, scalar.b.as_ptr(), 255);
                let prev = acc;
                blst_p1_add_or_double(&mut acc, &prev, &scaled);
            }
        }
        let mut out = [0u8; SIGNATURE_BYTES];
        // SAFETY: `out` holds a compressed G1 point.
        unsafe { blst_p1_compress(out.as_mut_ptr(), &acc) };
        Ok(SignatureBytes(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject() {
        let sk = SecretKey::from_seed(b"seed", b"x").unwrap();
        let pk = sk.public_key();
        let sig = sk.sign(b"hello");
        verify(&pk, b"hello", &sig).unwrap();
        assert_eq!(
            verify(&pk, b"hellO", &sig),
            Err(CryptoError::InvalidSignature)
        );
        let mut bad = sig;
        bad.0[10] ^= 1;
        assert!(verify(&pk, b"hello", &bad).is_err());
        assert!(verify(&pk, b"hello", &SignatureBytes([0xff; 48])).is_err());
        let sk2 = SecretKey::from_bytes(&sk.to_bytes()).unwrap();
        assert_eq!(sk2.public_key(), pk);
        assert!(SecretKey::from_bytes(&[0; 32]).is_err());
        assert!(PublicKey::from_bytes(&PublicKeyBytes([0; 96])).is_err());
    }

    #[test]
    fn multi_signature() {
        let keys: Vec<SecretKey> = (0..4u8)
            .map(|i| SecretKey::from_seed(&[i; 32], b"m").unwrap())
            .collect();
        let pks: Vec<PublicKey> = keys.iter().map(SecretKey::public_key).collect();
        let sigs: Vec<SignatureBytes> = keys[..3].iter().map(|k| k.sign(b"block")).collect();
        let agg = aggregate(&sigs).unwrap();
        let signers: Vec<&PublicKey> = pks[..3].iter().collect();
        verify_multi(&signers, b"block", &agg).unwrap();
        let wrong: Vec<&PublicKey> = pks[1..].iter().collect();
        assert!(verify_multi(&wrong, b"block", &agg).is_err());
        assert!(verify_multi(&signers, b"other", &agg).is_err());
        assert!(verify_multi(&[], b"block", &agg).is_err());
    }

    #[test]
    fn threshold_unique_and_rejects_bad_shares() {
        let d = deal(b"test seed", "beacon", 3, 7).unwrap();
        let msg = b"round 5";
        let shares: Vec<(NodeIndex, SignatureBytes)> = d
            .secret_shares
            .iter()
            .enumerate()
            .map(|(i, k)| (i as NodeIndex, k.sign(msg)))
            .collect();
        for (i, s) in &shares {
            d.public.verify_share(*i, msg, s).unwrap();
        }
        let a = d.public.combine(msg, &shares[0..3]).unwrap();
        let b = d
            .public
            .combine(msg, &[shares[6], shares[2], shares[4]])
            .unwrap();
        let c = d.public.combine(msg, &shares[3..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        d.public.verify(msg, &a).unwrap();
        assert!(d.public.verify(b"other", &a).is_err());
        // A bad share is detected and named.
        let mut bad = shares[1];
        bad.1 = d.secret_shares[1].sign(b"other");
        assert_eq!(
            d.public.combine(msg, &[shares[0], bad, shares[2]]),
            Err(CryptoError::InvalidShare(1))
        );
        // Share of another node under a wrong index.
        assert_eq!(
            d.public
                .combine(msg, &[shares[0], (1, shares[2].1), shares[3]]),
            Err(CryptoError::InvalidShare(1))
        );
        assert_eq!(
            d.public.combine(msg, &shares[..2]),
            Err(CryptoError::NotEnoughShares { have: 2, need: 3 })
        );
        assert_eq!(
            d.public
                .combine_verified(&[shares[0], shares[0], shares[1]]),
            Err(CryptoError::DuplicateShare(0))
        );
        // Deterministic from the seed; another seed gives another key.
        let d2 = deal(b"test seed", "beacon", 3, 7).unwrap();
        assert_eq!(d2.public, d.public);
        let d3 = deal(b"other seed", "beacon", 3, 7).unwrap();
        assert_ne!(d3.public.public_key, d.public.public_key);
        assert!(deal(b"s", "x", 0, 3).is_err());
        assert!(deal(b"s", "x", 4, 3).is_err());
    }

    #[test]
    fn threshold_one_of_one_equals_plain_signature() {
        let d = deal(b"seed", "solo", 1, 1).unwrap();
        let s = d.secret_shares[0].sign(b"m");
        let c = d.public.combine(b"m", &[(0, s)]).unwrap();
        d.public.verify(b"m", &c).unwrap();
    }

    #[test]
    fn serde_round_trip() {
        let d = deal(b"seed", "x", 2, 3).unwrap();
        let bytes = postcard::to_stdvec(&d.public).unwrap();
        let back: ThresholdPublicKey = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, d.public);
        let sk_bytes = postcard::to_stdvec(&d.secret_shares[0]).unwrap();
        let sk: SecretKey = postcard::from_bytes(&sk_bytes).unwrap();
        assert_eq!(sk.to_bytes(), d.secret_shares[0].to_bytes());
        let sig = sk.sign(b"m");
        let sb = postcard::to_stdvec(&sig).unwrap();
        assert_eq!(sb.len(), 49);
        let back: SignatureBytes = postcard::from_bytes(&sb).unwrap();
        assert_eq!(back, sig);
        // Truncated input fails cleanly.
        assert!(postcard::from_bytes::<SignatureBytes>(&sb[..20]).is_err());
        assert!(postcard::from_bytes::<ThresholdPublicKey>(&bytes[..50]).is_err());
    }
}

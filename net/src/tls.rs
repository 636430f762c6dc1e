//! TLS 1.3 with raw public keys (RFC 7250) pinned by the membership.
//!
//! Every node presents its Ed25519 public key as a raw public key, proves it
//! owns the key with the handshake signature, and requires the same of its
//! peer. A dialing node accepts only the key of the node it meant to reach;
//! a listening node accepts only keys of other members. There are no
//! certificate authorities, names or expiry dates: the genesis file is the
//! trust root. The server verifier admits any other member's key, the
//! client verifier only the key of the node it dialed; the ALPN protocol is
//! `cellar-net/1`. Outsiders fail the handshake.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, ServerName, SubjectPublicKeyInfoDer, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::error::NetError;
use crate::identity::{NodeKeyPair, public_key_of_spki};
use crate::membership::Membership;
use crate::node_index::NodeIndex;

/// The ALPN protocol of this transport; peers speaking another are refused.
pub(crate) const ALPN: &[u8] = b"cellar-net/1";

/// The crypto provider (ring).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// This node's key as rustls presents it.
fn certified_key(
    keys: &NodeKeyPair,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, NetError> {
    let private = PrivateKeyDer::Pkcs8(keys.pkcs8_der().into());
    let signer = provider.key_provider.load_private_key(private)?;
    let spki = CertificateDer::from(keys.spki_der());
    Ok(Arc::new(CertifiedKey::new(vec![spki], signer)))
}

/// The server side: accepts clients whose raw key is another member's.
pub(crate) fn server_config(
    keys: &NodeKeyPair,
    membership: Arc<Membership>,
    own_index: NodeIndex,
) -> Result<rustls::ServerConfig, NetError> {
    let provider = provider();
    let verifier = MemberClientVerifier {
        membership,
        own_index,
        algorithms: provider.signature_verification_algorithms,
    };
    let resolver =
        rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified_key(keys, &provider)?);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The client side for dialing the node whose key is `expected`.
pub(crate) fn client_config(
    keys: &NodeKeyPair,
    expected: [u8; 32],
) -> Result<rustls::ClientConfig, NetError> {
    let provider = provider();
    let verifier = PinnedServerVerifier {
        expected,
        algorithms: provider.signature_verification_algorithms,
    };
    let resolver =
        rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified_key(keys, &provider)?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The server name used when dialing (ignored by the pinned verifier, but
/// TLS wants one).
pub(crate) fn server_name(index: NodeIndex) -> String {
    format!("node-{index}.cellar")
}

/// The Ed25519 key a peer authenticated with on `conn`.
pub(crate) fn peer_public_key(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    public_key_of_spki(certs.first()?.as_ref())
}

/// Checks a TLS 1.3 handshake signature made with the raw key `spki`.
fn verify_signature(
    message: &[u8],
    spki: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let spki = SubjectPublicKeyInfoDer::from(spki.as_ref());
    rustls::crypto::verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

/// The error for a peer key we do not accept.
fn refused() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

/// The error for TLS 1.2, which QUIC never uses.
fn no_tls12() -> rustls::Error {
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered)
}

/// Accepts a server only if it presents the pinned key.
struct PinnedServerVerifier {
    /// The key of the node being dialed.
    expected: [u8; 32],
    /// Signature algorithms of the provider.
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match public_key_of_spki(end_entity.as_ref()) {
            Some(key) if key == self.expected && intermediates.is_empty() => {
                Ok(ServerCertVerified::assertion())
            }
            _ => Err(refused()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Accepts a client only if it presents another member's key.
struct MemberClientVerifier {
    /// The pinned membership.
    membership: Arc<Membership>,
    /// This node, which never dials itself.
    own_index: NodeIndex,
    /// Signature algorithms of the provider.
    algorithms: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for MemberClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemberClientVerifier")
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for MemberClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let index =
            public_key_of_spki(end_entity.as_ref()).and_then(|key| self.membership.index_of(&key));
        match index {
            Some(i) if i != self.own_index && intermediates.is_empty() => {
                Ok(ClientCertVerified::assertion())
            }
            _ => Err(refused()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

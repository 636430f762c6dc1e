//! Helpers for tests and benchmarks that run a subnet on one machine:
//! [`loopback_subnet`]`(n)` makes the keys and the membership of `n` nodes
//! on loopback.

use std::net::{SocketAddr, UdpSocket};

use crate::error::NetError;
use crate::identity::NodeKeyPair;
use crate::membership::{Membership, PeerInfo};

/// `n` fresh key pairs and a membership listing them on 127.0.0.1, each on
/// a UDP port that was free a moment ago (the ports are found by binding
/// port 0 and released at once, so another process could take one in
/// between: fine for tests, not for deployments).
pub fn loopback_subnet(n: usize) -> Result<(Vec<NodeKeyPair>, Membership), NetError> {
    let mut keys = Vec::with_capacity(n);
    let mut peers = Vec::with_capacity(n);
    // All sockets stay bound until every port is chosen, so they differ.
    let mut sockets = Vec::with_capacity(n);
    for i in 0..n {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let socket = UdpSocket::bind(any).map_err(|e| NetError::Bind(any, e))?;
        let address = socket.local_addr().map_err(|e| NetError::Bind(any, e))?;
        sockets.push(socket);
        let key = NodeKeyPair::generate()?;
        let node_index =
            u32::try_from(i).map_err(|_| NetError::InvalidMembership("too many nodes".into()))?;
        peers.push(PeerInfo {
            node_index,
            address,
            public_key: key.public_key(),
        });
        keys.push(key);
    }
    Ok((keys, Membership::new(peers)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_ports_and_keys() {
        let (keys, membership) = loopback_subnet(4).unwrap();
        assert_eq!(keys.len(), 4);
        let mut ports: Vec<u16> = membership
            .peers()
            .iter()
            .map(|p| p.address.port())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 4);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(membership.index_of(&k.public_key()), Some(i as u32));
        }
    }
}

//! The incoming side: accept connections from members, read their frames,
//! and drop (and ban for a while) any peer that breaks the protocol.
//!
//! Accepted connections are read frame by frame (see [`crate::wire`]: a
//! 4-byte length, a tag, fields); an oversized, truncated or undecodable
//! frame closes the connection, is logged with `tracing`, and bans the
//! peer for `misbehaviour_ban`. A newer connection from a peer replaces its
//! older one; the accept loop bounds the connections it handles.

use std::sync::Arc;

use quinn::{Connection, Endpoint, Incoming};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::node_index::NodeIndex;
use crate::shared::{CLOSE_BANNED, CLOSE_PROTOCOL, CLOSE_SUPERSEDED, Shared, lock};
use crate::stats::Counters;
use crate::tls;
use crate::wire::{FrameError, Message, read_frame};

/// Connections handled at once beyond two per member (each member has
/// one, plus a stale one while it reconnects): room for handshakes, so a
/// flood of them from outsiders cannot grow memory without bound.
const SPARE_CONNECTIONS: usize = 64;

/// Accepts connections until the endpoint closes; one task per connection.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: Endpoint) {
    let limit = 2 * shared.membership.len() + SPARE_CONNECTIONS;
    // Dropping the set (when this task is aborted) aborts the readers.
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) if readers.len() >= limit => {
                    Counters::bump(&shared.counters.refused);
                    warn!(remote = %incoming.remote_address(), "too many connections, refusing");
                    incoming.refuse();
                }
                Some(incoming) => {
                    readers.spawn(serve(shared.clone(), incoming));
                }
                None => return,
            },
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
        }
    }
}

/// Completes the handshake (the TLS verifier admits members only), then
/// reads the peer's frames until the connection ends.
async fn serve(shared: Arc<Shared>, incoming: Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            Counters::bump(&shared.counters.refused);
            warn!(%remote, error = %e, "refused an incoming connection");
            return;
        }
    };
    let from = tls::peer_public_key(&conn).and_then(|key| shared.membership.index_of(&key));
    let Some(from) = from else {
        // The verifier admits members only; this is a safety net.
        Counters::bump(&shared.counters.refused);
        conn.close(CLOSE_PROTOCOL, b"not a member");
        return;
    };
    if shared.is_banned(from) {
        Counters::bump(&shared.counters.refused);
        debug!(peer = from, %remote, "refused a banned peer");
        conn.close(CLOSE_BANNED, b"banned");
        return;
    }
    let old = lock(&shared.incoming).insert(from, conn.clone());
    if let Some(old) = old {
        old.close(CLOSE_SUPERSEDED, b"superseded");
        shared.peer_returned(from);
    }
    debug!(peer = from, %remote, "accepted");
    match read_all(&shared, from, &conn).await {
        Err(e) if e.is_misbehaviour() => {
            Counters::bump(&shared.counters.misbehaviours);
            warn!(peer = from, %remote, error = %e, "dropping a peer that broke the protocol");
            shared.ban(from);
            conn.close(CLOSE_PROTOCOL, b"protocol violation");
        }
        Err(e) => info!(peer = from, error = %e, "incoming connection ended"),
        Ok(()) => debug!(peer = from, "incoming connection closed"),
    }
    let mut incoming = lock(&shared.incoming);
    if incoming.get(&from).map(Connection::stable_id) == Some(conn.stable_id()) {
        incoming.remove(&from);
    }
}

/// Reads frames from every stream the peer opens, one stream at a time.
async fn read_all(shared: &Shared, from: NodeIndex, conn: &Connection) -> Result<(), FrameError> {
    let max = shared.config.max_message_size;
    loop {
        let mut stream = match conn.accept_uni().await {
            Ok(stream) => stream,
            Err(_) => return Ok(()),
        };
        while let Some(body) = read_frame(&mut stream, max).await? {
            shared.handle(from, Message::decode(body)?).await;
        }
    }
}

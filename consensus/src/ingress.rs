//! The ingress pool: client messages waiting to be put in a block.
//!
//! A message is opaque bytes with an expiry; its id is the hash of both, so a
//! node never trusts an id it is sent. Messages older than their expiry are
//! dropped. Blocks carry messages valid at their time and not in an
//! ancestor: a block may only carry a message whose expiry lies in
//! `(block time, block time + MAX_INGRESS_TTL_MS]`: that window bounds how far
//! back a block maker must look for duplicates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::hash::Hash32;

/// Longest time to live of an ingress message.
pub const MAX_INGRESS_TTL_MS: u64 = 5 * 60 * 1000;

/// A client message: opaque content and an expiry time (ms).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressMessage {
    /// Expiry in the subnet's time (ms); not executed at or after it.
    pub expiry_ms: u64,
    /// The message bytes.
    pub content: Vec<u8>,
}

impl IngressMessage {
    /// The message id: hash of expiry and content.
    pub fn id(&self) -> Hash32 {
        Hash32::digest(
            b"cellar/ingress",
            &[&self.expiry_ms.to_be_bytes(), &self.content],
        )
    }

    /// Whether a block with time `time_ms` may carry it.
    pub fn valid_at(&self, time_ms: u64) -> bool {
        self.expiry_ms > time_ms && self.expiry_ms <= time_ms.saturating_add(MAX_INGRESS_TTL_MS)
    }
}

/// Bounds of the ingress pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressLimits {
    /// Largest message content.
    pub max_message_bytes: usize,
    /// Most messages kept.
    pub max_pool_messages: usize,
    /// Most content bytes kept.
    pub max_pool_bytes: usize,
}

impl Default for IngressLimits {
    fn default() -> Self {
        IngressLimits {
            max_message_bytes: 256 << 10,
            max_pool_messages: 50_000,
            max_pool_bytes: 256 << 20,
        }
    }
}

/// Why a message was not taken into the pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngressError {
    /// Content over the size limit.
    #[error("message of {0} bytes is too large")]
    TooLarge(usize),
    /// Expired, or expiring further out than the time to live.
    #[error("expiry outside the accepted window")]
    BadExpiry,
    /// Already in the pool.
    #[error("duplicate message")]
    Duplicate,
    /// The pool is full.
    #[error("ingress pool full")]
    Full,
}

/// Messages by id (ordered, so payload selection is deterministic).
#[derive(Debug, Default)]
pub struct IngressPool {
    limits: IngressLimits,
    messages: BTreeMap<Hash32, IngressMessage>,
    bytes: usize,
}

impl IngressPool {
    /// An empty pool.
    pub fn new(limits: IngressLimits) -> Self {
        IngressPool {
            limits,
            messages: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// Adds a message received at `now_ms`.
    pub fn insert(&mut self, msg: IngressMessage, now_ms: u64) -> Result<Hash32, IngressError> {
        if msg.content.len() > self.limits.max_message_bytes {
            return Err(IngressError::TooLarge(msg.content.len()));
        }
        if !msg.valid_at(now_ms) {
            return Err(IngressError::BadExpiry);
        }
        let id = msg.id();
        if self.messages.contains_key(&id) {
            return Err(IngressError::Duplicate);
        }
        if self.messages.len() >= self.limits.max_pool_messages
            || self.bytes + msg.content.len() > self.limits.max_pool_bytes
        {
            return Err(IngressError::Full);
        }
        self.bytes += msg.content.len();
        self.messages.insert(id, msg);
        Ok(id)
    }

    /// Whether the message is in the pool.
    pub fn contains(&self, id: &Hash32) -> bool {
        self.messages.contains_key(id)
    }

    /// Number of messages.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Removes a message (delivered in a finalized block).
    pub fn remove(&mut self, id: &Hash32) {
        if let Some(m) = self.messages.remove(id) {
            self.bytes -= m.content.len();
        }
    }

    /// Drops every message.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// Drops the messages expired at `now_ms`.
    pub fn purge_expired(&mut self, now_ms: u64) {
        let expired: Vec<Hash32> = self
            .messages
            .iter()
            .filter(|(_, m)| m.expiry_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.remove(&id);
        }
    }

    /// Chooses messages for a block at `time_ms`, in id order, up to
    /// `max_messages` and `max_bytes`, skipping those `exclude` names.
    pub fn select(
        &self,
        time_ms: u64,
        max_messages: u32,
        max_bytes: u64,
        exclude: impl Fn(&Hash32) -> bool,
    ) -> Vec<IngressMessage> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        for (id, m) in &self.messages {
            if out.len() >= max_messages as usize {
                break;
            }
            let size = m.content.len() as u64;
            if !m.valid_at(time_ms) || exclude(id) || bytes + size > max_bytes {
                continue;
            }
            bytes += size;
            out.push(m.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u8, expiry_ms: u64) -> IngressMessage {
        IngressMessage {
            expiry_ms,
            content: vec![i; 10],
        }
    }

    #[test]
    fn pool_limits_and_selection() {
        let mut p = IngressPool::new(IngressLimits {
            max_message_bytes: 16,
            max_pool_messages: 3,
            max_pool_bytes: 100,
        });
        let a = p.insert(msg(1, 1000), 0).unwrap();
        assert_eq!(p.insert(msg(1, 1000), 0), Err(IngressError::Duplicate));
        assert_eq!(p.insert(msg(2, 0), 0), Err(IngressError::BadExpiry));
        assert_eq!(
            p.insert(msg(2, MAX_INGRESS_TTL_MS + 1), 0),
            Err(IngressError::BadExpiry)
        );
        assert!(matches!(
            p.insert(
                IngressMessage {
                    expiry_ms: 10,
                    content: vec![0; 17]
                },
                0
            ),
            Err(IngressError::TooLarge(17))
        ));
        p.insert(msg(2, 500), 0).unwrap();
        p.insert(msg(3, 1000), 0).unwrap();
        assert_eq!(p.insert(msg(4, 1000), 0), Err(IngressError::Full));
        assert_eq!(p.select(0, 10, 1000, |_| false).len(), 3);
        assert_eq!(p.select(0, 2, 1000, |_| false).len(), 2);
        assert_eq!(p.select(0, 10, 25, |_| false).len(), 2);
        assert_eq!(p.select(600, 10, 1000, |_| false).len(), 2);
        assert_eq!(p.select(0, 10, 1000, |id| *id == a).len(), 2);
        p.purge_expired(500);
        assert_eq!(p.len(), 2);
        p.remove(&a);
        assert_eq!(p.len(), 1);
    }
}

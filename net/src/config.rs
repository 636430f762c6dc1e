//! The transport's settings.

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::NetError;

/// Settings of a [`Transport`](crate::Transport); `Default` suits a subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportConfig {
    /// The UDP address to bind; `None` binds the node's address in the
    /// membership (set it to bind e.g. `0.0.0.0:port` behind a public one).
    pub bind_addr: Option<SocketAddr>,
    /// The largest message body accepted or sent, in bytes (the artifact
    /// payload plus 2). A peer announcing a larger frame is disconnected,
    /// so every member of a subnet should use the same value.
    pub max_message_size: usize,
    /// Delay added to every message before it is written (for tests and
    /// benchmarks that simulate wide-area latency). Messages to one peer
    /// stay pipelined: the delay adds latency, not a limit on throughput.
    /// [`TransportHandle::set_injected_delay`](crate::TransportHandle::set_injected_delay)
    /// changes it while running.
    pub injected_delay: Option<Duration>,
    /// The first wait before redialing a peer after a failure.
    pub backoff_min: Duration,
    /// The longest wait between dials (the wait doubles up to it).
    pub backoff_max: Duration,
    /// Messages queued per peer while it is slow or unreachable. Sending
    /// never blocks: while the peer is unreachable the oldest queued
    /// messages are dropped; while it is connected but slow, new messages
    /// are refused with [`SendError::QueueFull`](crate::SendError::QueueFull).
    /// Both are counted in `TransportStats::send_dropped`.
    pub send_queue_capacity: usize,
    /// Bytes queued per peer at most (whichever limit is reached first);
    /// at least `max_message_size + 4`.
    pub send_queue_bytes: usize,
    /// Received artifacts buffered for the application before readers
    /// stop reading (and QUIC flow control slows the senders).
    pub inbound_capacity: usize,
    /// Requested UDP socket send and receive buffer sizes (the kernel caps
    /// them at `net.core.wmem_max` / `rmem_max`). Small buffers drop
    /// bursts of large messages, and QUIC then slows down.
    pub socket_buffer_bytes: usize,
    /// How many artifact ids are remembered for deduplication.
    pub seen_capacity: usize,
    /// Payload bytes of recent artifacts kept to answer pull requests.
    pub cache_bytes: usize,
    /// How long a dial may take before it counts as failed.
    pub connect_timeout: Duration,
    /// How often an idle connection is probed.
    pub keep_alive: Duration,
    /// A connection silent for this long is considered dead.
    pub idle_timeout: Duration,
    /// How long a peer that broke the protocol (garbage or oversized
    /// frames) is refused after it was disconnected.
    pub misbehaviour_ban: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            bind_addr: None,
            max_message_size: 8 << 20,
            injected_delay: None,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            send_queue_capacity: 4096,
            send_queue_bytes: 64 << 20,
            inbound_capacity: 4096,
            socket_buffer_bytes: 4 << 20,
            seen_capacity: 100_000,
            cache_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(5),
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            misbehaviour_ban: Duration::from_secs(10),
        }
    }
}

impl TransportConfig {
    /// Checks that the settings are usable together.
    pub fn validate(&self) -> Result<(), NetError> {
        let bad = |why: &str| Err(NetError::InvalidConfig(why.into()));
        if self.max_message_size < 34 || self.max_message_size > u32::MAX as usize {
            return bad("max_message_size must be between 34 bytes and 4 GiB");
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        if self.send_queue_capacity == 0 || self.inbound_capacity == 0 || self.seen_capacity == 0 {
            return bad("queue capacities and seen_capacity must be positive");
        }
        if self.send_queue_bytes < self.max_message_size + 4 {
            return bad("send_queue_bytes must hold at least one message of max_message_size");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must be positive");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be positive and shorter than idle_timeout");
        }
        if self.idle_timeout > Duration::from_secs(3600) {
            return bad("idle_timeout must be at most an hour");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_nonsense_is_not() {
        TransportConfig::default().validate().unwrap();
        let mut c = TransportConfig {
            backoff_min: Duration::from_secs(10),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c = TransportConfig {
            max_message_size: 0,
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}

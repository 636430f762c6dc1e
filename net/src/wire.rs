//! The wire format: length-prefixed frames on one unidirectional QUIC
//! stream per connection.
//!
//! A frame is a 4-byte big-endian body length, then the body. A body is a
//! tag byte and its fields:
//!
//! | tag | message | fields |
//! |---|---|---|
//! | 1 | artifact | kind (1 byte), payload (the rest) |
//! | 2 | request | artifact id (32 bytes) |
//!
//! Anything else is garbage: the reader drops the connection.

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{ReadExactError, RecvStream};

use crate::artifact::{Artifact, ArtifactId, ArtifactKind};

/// The length of a frame header.
pub(crate) const HEADER_LEN: usize = 4;
/// Tag of [`Message::Artifact`].
const TAG_ARTIFACT: u8 = 1;
/// Tag of [`Message::Request`].
const TAG_REQUEST: u8 = 2;

/// What nodes tell each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Message {
    /// Here is an artifact.
    Artifact(Artifact),
    /// Please send me this artifact if you have it.
    Request(ArtifactId),
}

impl Message {
    /// The length of the encoded body (without the frame header).
    pub(crate) fn body_len(&self) -> usize {
        match self {
            Message::Artifact(a) => 2 + a.payload().len(),
            Message::Request(_) => 1 + 32,
        }
    }

    /// The whole frame: header and body.
    pub(crate) fn encode(&self) -> Bytes {
        let len = self.body_len();
        let mut buf = BytesMut::with_capacity(HEADER_LEN + len);
        // `body_len` fits in u32: callers check it against the maximum
        // message size, which is a u32.
        buf.put_u32(len as u32);
        match self {
            Message::Artifact(a) => {
                buf.put_u8(TAG_ARTIFACT);
                buf.put_u8(a.kind().0);
                buf.put_slice(a.payload());
            }
            Message::Request(id) => {
                buf.put_u8(TAG_REQUEST);
                buf.put_slice(&id.0);
            }
        }
        buf.freeze()
    }

    /// Decodes a frame body.
    pub(crate) fn decode(body: Bytes) -> Result<Message, FrameError> {
        match body.first() {
            Some(&TAG_ARTIFACT) if body.len() >= 2 => {
                let kind = ArtifactKind(body[1]);
                Ok(Message::Artifact(Artifact::new(kind, body.slice(2..))))
            }
            Some(&TAG_REQUEST) if body.len() == 33 => {
                let mut id = [0u8; 32];
                id.copy_from_slice(&body[1..]);
                Ok(Message::Request(ArtifactId(id)))
            }
            Some(&tag) => Err(FrameError::Garbage(format!(
                "tag {tag} with a body of {} bytes",
                body.len()
            ))),
            None => Err(FrameError::Garbage("empty body".into())),
        }
    }
}

/// Why reading a frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The peer announced a frame larger than the maximum (misbehaviour).
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    Oversized {
        /// The announced length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The peer ended its stream inside a frame (misbehaviour).
    #[error("stream ended inside a frame")]
    Truncated,
    /// The body is not a message (misbehaviour).
    #[error("undecodable frame: {0}")]
    Garbage(String),
    /// The stream or connection failed (not the peer's fault as far as we
    /// can tell).
    #[error("stream: {0}")]
    Stream(#[from] quinn::ReadError),
}

impl FrameError {
    /// Whether the error proves the peer broke the protocol.
    pub(crate) fn is_misbehaviour(&self) -> bool {
        !matches!(self, FrameError::Stream(_))
    }
}

/// Reads the next frame body from `recv`; `None` when the peer finished
/// the stream between frames.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    max_body: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match recv.read_exact(&mut header).await {
        Ok(()) => {}
        Err(ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(ReadExactError::ReadError(e)) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > max_body {
        return Err(FrameError::Oversized { len, max: max_body });
    }
    let mut body = vec![0u8; len];
    match recv.read_exact(&mut body).await {
        Ok(()) => Ok(Some(Bytes::from(body))),
        Err(ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(ReadExactError::ReadError(e)) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: Message) {
        let frame = msg.encode();
        let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, msg.body_len());
        assert_eq!(frame.len(), HEADER_LEN + len);
        assert_eq!(Message::decode(frame.slice(HEADER_LEN..)).unwrap(), msg);
    }

    #[test]
    fn messages_round_trip() {
        round_trip(Message::Artifact(Artifact::new(
            ArtifactKind::BLOCK,
            vec![1, 2, 3],
        )));
        round_trip(Message::Artifact(Artifact::new(
            ArtifactKind(7),
            Vec::new(),
        )));
        round_trip(Message::Request(ArtifactId([9; 32])));
    }

    #[test]
    fn random_bodies_never_panic() {
        // A fixed xorshift stream: 10,000 bodies of 0..64 random bytes,
        // biased to start with a valid tag.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..10_000 {
            let len = (next() % 64) as usize;
            let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = body.first_mut() {
                *first %= 4;
            }
            match Message::decode(Bytes::from(body.clone())) {
                Ok(msg) => assert_eq!(msg.encode().slice(HEADER_LEN..), body),
                Err(e) => assert!(e.is_misbehaviour()),
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for body in [
            &[][..],
            &[0][..],
            &[1][..],
            &[2, 1, 2][..],
            &[3, 0, 0][..],
            &[255; 40][..],
        ] {
            let err = Message::decode(Bytes::copy_from_slice(body)).unwrap_err();
            assert!(err.is_misbehaviour());
        }
    }
}

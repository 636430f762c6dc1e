//! The frames a peer's writer has taken out of its queue but not written
//! yet: a FIFO bounded in frames and bytes that forgets the oldest frames
//! first, so that a peer coming back after an outage gets the newest
//! messages (older ones can be pulled by id).

use std::collections::VecDeque;

use crate::shared::OutFrame;

/// A bounded FIFO of frames.
#[derive(Debug)]
pub(crate) struct Backlog {
    /// The frames, oldest first.
    frames: VecDeque<OutFrame>,
    /// The sum of their lengths.
    bytes: usize,
    /// The most frames kept.
    max_frames: usize,
    /// The most bytes kept (a single larger frame is still kept).
    max_bytes: usize,
}

impl Backlog {
    /// An empty backlog within `max_frames` and `max_bytes`.
    pub(crate) fn new(max_frames: usize, max_bytes: usize) -> Self {
        Backlog {
            frames: VecDeque::new(),
            bytes: 0,
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    /// Appends `frame`; returns how many old frames were dropped to make
    /// room.
    pub(crate) fn push(&mut self, frame: OutFrame) -> usize {
        self.bytes += frame.bytes.len();
        self.frames.push_back(frame);
        let mut dropped = 0;
        while self.frames.len() > 1
            && (self.frames.len() > self.max_frames || self.bytes > self.max_bytes)
        {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.bytes.len();
                dropped += 1;
            }
        }
        dropped
    }

    /// The oldest frame.
    pub(crate) fn front(&self) -> Option<&OutFrame> {
        self.frames.front()
    }

    /// The frames, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &OutFrame> {
        self.frames.iter()
    }

    /// Forgets the `n` oldest frames (written).
    pub(crate) fn remove_oldest(&mut self, n: usize) {
        for frame in self.frames.drain(..n.min(self.frames.len())) {
            self.bytes -= frame.bytes.len();
        }
    }

    /// The number of frames.
    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether there is no frame.
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(tag: u8, len: usize) -> OutFrame {
        OutFrame {
            bytes: Bytes::from(vec![tag; len]),
            due: None,
        }
    }

    #[test]
    fn forgets_the_oldest_beyond_its_bounds() {
        let mut backlog = Backlog::new(3, 100);
        for tag in 0..4 {
            backlog.push(frame(tag, 10));
        }
        assert_eq!(backlog.len(), 3);
        assert_eq!(backlog.front().unwrap().bytes[0], 1);
        assert_eq!(backlog.push(frame(9, 95)), 3, "bytes bound");
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog.push(frame(8, 200)), 1, "a huge frame is kept alone");
        assert_eq!(backlog.iter().map(|f| f.bytes[0]).collect::<Vec<_>>(), [8]);
        backlog.remove_oldest(5);
        assert!(backlog.is_empty());
        assert_eq!(backlog.bytes, 0);
    }
}

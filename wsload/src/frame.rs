//! Load messages: a header (sequence number, send time, check word) followed by a fixed filler,
//! so that echoes can be matched, timed and verified without keeping a copy of what was sent.
//!
//! Layout of every binary message, all integers little-endian:
//!
//! ```text
//! offset 0   u64  sequence number (0, 1, 2, … per connection)
//! offset 8   u64  send time, nanoseconds since the start of the run
//! offset 16  u64  check word: a hash of the two fields above
//! offset 24  …    filler, the same pseudo-random bytes in every message of the run
//! ```

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Bytes taken by the header; the smallest possible message.
pub const HEADER_LEN: usize = 24;

/// What a message carries besides its filler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub seq: u64,
    /// Send time in nanoseconds since the start of the run.
    pub sent_ns: u64,
}

/// Why a received message is not the echo of one we sent.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("echo of {got} bytes, expected {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("echo header corrupted (check word does not match)")]
    BadCheck,
    #[error("echo payload corrupted at offset {offset}")]
    BadFiller { offset: usize },
}

/// The filler shared by every message of a run (read-only, one copy for all connections).
#[derive(Debug, Clone)]
pub struct Filler(Arc<[u8]>);

impl Filler {
    /// Filler for messages of `message_size` bytes (at least [`HEADER_LEN`]).
    pub fn new(message_size: usize) -> Self {
        assert!(
            message_size >= HEADER_LEN,
            "message smaller than its header"
        );
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        let bytes: Vec<u8> = (0..message_size - HEADER_LEN)
            .map(|_| {
                // xorshift64: cheap bytes that are not all alike, so shifted or
                // truncated data does not compare equal by accident.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        Self(bytes.into())
    }

    /// Size of the messages this filler is for.
    pub fn message_size(&self) -> usize {
        HEADER_LEN + self.0.len()
    }

    /// Decodes an echo and verifies all of it: length, check word and filler.
    pub fn decode(&self, payload: &[u8]) -> Result<Header, FrameError> {
        if payload.len() != self.message_size() {
            return Err(FrameError::WrongLength {
                expected: self.message_size(),
                got: payload.len(),
            });
        }
        let word = |i: usize| {
            let bytes: [u8; 8] = payload[i * 8..i * 8 + 8].try_into().expect("8 bytes");
            u64::from_le_bytes(bytes)
        };
        let header = Header {
            seq: word(0),
            sent_ns: word(1),
        };
        if word(2) != check_word(header) {
            return Err(FrameError::BadCheck);
        }
        let filler = &payload[HEADER_LEN..];
        if filler != &*self.0 {
            let bad = filler.iter().zip(self.0.iter()).position(|(a, b)| a != b);
            return Err(FrameError::BadFiller {
                offset: HEADER_LEN + bad.unwrap_or(0),
            });
        }
        Ok(header)
    }
}

/// Builds messages into one reused buffer: once tungstenite has copied a message into its
/// write buffer and dropped it, the next `encode` reuses the same allocation.
#[derive(Debug)]
pub struct Encoder {
    filler: Filler,
    buf: BytesMut,
}

impl Encoder {
    pub fn new(filler: Filler) -> Self {
        Self {
            filler,
            buf: BytesMut::new(),
        }
    }

    /// The payload of one message.
    pub fn encode(&mut self, header: Header) -> Bytes {
        self.buf.reserve(self.filler.message_size());
        self.buf.extend_from_slice(&header.seq.to_le_bytes());
        self.buf.extend_from_slice(&header.sent_ns.to_le_bytes());
        self.buf
            .extend_from_slice(&check_word(header).to_le_bytes());
        self.buf.extend_from_slice(&self.filler.0);
        self.buf.split().freeze()
    }
}

/// splitmix64 finaliser of both header fields: any flipped bit changes it.
fn check_word(header: Header) -> u64 {
    let mut z = header.seq ^ header.sent_ns.rotate_left(29) ^ 0x5753_4C4F_4144_2121;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: Header = Header {
        seq: 7,
        sent_ns: 1_234_567_890,
    };

    #[test]
    fn encoded_messages_decode_to_their_header() {
        for size in [HEADER_LEN, HEADER_LEN + 1, 64, 4096] {
            let filler = Filler::new(size);
            let mut encoder = Encoder::new(filler.clone());
            let message = encoder.encode(HEADER);
            assert_eq!(message.len(), size);
            assert_eq!(filler.decode(&message), Ok(HEADER));
        }
    }

    #[test]
    fn encoder_reuses_its_buffer_once_a_message_is_dropped() {
        let mut encoder = Encoder::new(Filler::new(256));
        let first = encoder.encode(HEADER);
        let first_ptr = first.as_ptr();
        drop(first);
        let second = encoder.encode(Header { seq: 8, ..HEADER });
        assert_eq!(second.as_ptr(), first_ptr);
        assert_eq!(second[0], 8);
    }

    #[test]
    fn every_corruption_is_detected() {
        let filler = Filler::new(64);
        let message = Encoder::new(filler.clone()).encode(HEADER).to_vec();
        for offset in 0..message.len() {
            let mut bad = message.clone();
            bad[offset] ^= 0x01;
            let err = filler.decode(&bad).unwrap_err();
            if offset < HEADER_LEN {
                assert_eq!(err, FrameError::BadCheck, "offset {offset}");
            } else {
                assert_eq!(err, FrameError::BadFiller { offset }, "offset {offset}");
            }
        }
        assert_eq!(
            filler.decode(&message[..63]),
            Err(FrameError::WrongLength {
                expected: 64,
                got: 63
            })
        );
    }
}

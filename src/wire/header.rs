//! The fixed part of every datagram: magic, version, flags, cluster and
//! stream, checked before anything else of a received datagram is read.

use serde::{Deserialize, Serialize};

use super::{config, malformed, put, DecodeError, MAX_DATAGRAM};

/// The four bytes every cachecast datagram starts with.
pub const MAGIC: [u8; 4] = *b"CCST";
/// The wire format version this build speaks.
pub const VERSION: u8 = 1;
/// Header flag bit 0: the datagram ends with an authentication trailer
/// (see `auth`).
pub const FLAG_AUTH: u8 = 0x01;
/// Header flag bit 1: the sending node never publishes (it was configured
/// receive-only), so its stream has no events to lose: receivers do not
/// follow it, and its death, even unannounced, costs nobody a `Reset`. Set
/// on every datagram such a node sends.
pub const FLAG_RECEIVE_ONLY: u8 = 0x02;
/// Every flag version 1 accepts: a datagram with any other bit set is
/// dropped.
const KNOWN_FLAGS: u8 = FLAG_AUTH | FLAG_RECEIVE_ONLY;

/// The fixed part of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// Always [`VERSION`].
    pub version: u8,
    /// Bit 0: [`FLAG_AUTH`]; bit 1:
    /// [`FLAG_RECEIVE_ONLY`]; the others are reserved and must be zero.
    pub flags: u8,
    /// [`cluster_hash`] of the cluster name; foreign traffic is dropped.
    pub cluster: u32,
    /// The sending node's stream: random per process start, never 0 (a
    /// received header of stream 0 is invalid).
    pub stream: u64,
}

impl Header {
    /// A version-1 header with no flags.
    pub fn new(cluster: u32, stream: u64) -> Self {
        Header {
            magic: MAGIC,
            version: VERSION,
            flags: 0,
            cluster,
            stream,
        }
    }

    /// True if the datagram ends with an authentication trailer
    /// ([`FLAG_AUTH`]).
    pub fn authenticated(&self) -> bool {
        self.flags & FLAG_AUTH != 0
    }

    /// True if the sender declared itself receive-only
    /// ([`FLAG_RECEIVE_ONLY`]).
    pub fn receive_only(&self) -> bool {
        self.flags & FLAG_RECEIVE_ONLY != 0
    }

    /// The header's bytes: how every datagram with it starts.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        put(&mut buf, self);
        buf
    }
}

/// FNV-1a (32 bit) of the cluster name: stable across builds and platforms.
pub fn cluster_hash(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Decodes and validates the header of a received datagram of cluster
/// `cluster`; returns it and the offset of the body. Cheap: the node checks
/// the stream (its own traffic is ignored) before the body is decoded.
pub fn decode_header(bytes: &[u8], cluster: u32) -> Result<(Header, usize), DecodeError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    // The version byte follows the magic in every version: checked before
    // the header is decoded, as another version's header may differ.
    if let Some(&version) = bytes.get(4).filter(|&&v| v != VERSION) {
        return Err(DecodeError::BadVersion(version));
    }
    let (header, used): (Header, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)?;
    if header.flags & !KNOWN_FLAGS != 0 {
        return Err(DecodeError::BadFlags(header.flags));
    }
    if header.cluster != cluster {
        return Err(DecodeError::WrongCluster(header.cluster));
    }
    // No node has stream 0 (as no `Report` or `AckRequest` may name it): a
    // node that followed one would name it in its Reports, which every
    // receiver then refused.
    if header.stream == 0 {
        return Err(DecodeError::Invalid("stream id 0"));
    }
    Ok((header, used))
}

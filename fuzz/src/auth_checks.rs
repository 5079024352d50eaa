//! What the trailer target asserts about one input ([`check_trailer`]):
//!
//! - read as a received datagram: its header is at most 20 bytes (the
//!   associated data of an encrypted body holds that much);
//!   [`Trailer::read`] never panics and reads the last [`TRAILER_LEN`]
//!   bytes; a datagram that opens under one of the [`keys`] is exactly what
//!   sealing its body with that trailer writes (no two datagrams verify as
//!   one); under a key of another id, or the wrong one, it does not open;
//! - used as a body to seal (under a header and a trailer drawn from the
//!   input): it opens to itself, and no change of one byte, no truncation
//!   and no extension of the sealed datagram opens at all;
//! - opening allocates at most a datagram (the decrypted body).

use cachecast::wire::{
    self, Algorithm, AuthError, Header, Key, Trailer, FLAG_AUTH, MAX_DATAGRAM, TAG_LEN, TRAILER_LEN,
};

use crate::alloc::allocated_by;
use crate::node::keys;
use crate::wire_checks::cluster;

/// The longest header there is: magic, version, flags, a varint `u32` and
/// a varint `u64`.
const MAX_HEADER_LEN: usize = 20;

/// Opens `dgram` (header of `header_len` bytes) with `key`, bounding what
/// it allocates.
fn open(key: &Key, dgram: &[u8], header_len: usize, stream: u64) -> Result<Vec<u8>, AuthError> {
    let (trailer, tag) = Trailer::read(dgram, header_len)?;
    let mut scratch = Vec::new();
    let (r, bytes) = allocated_by(|| {
        key.open(dgram, header_len, stream, &trailer, &tag, &mut scratch)
            .map(<[u8]>::to_vec)
    });
    // The decrypted body, and the copy returned here.
    assert!(bytes <= 2 * dgram.len() + 64, "open allocated {bytes}");
    r
}

/// The checks of the module docs on one input.
pub fn check_trailer(data: &[u8]) {
    received(data);
    sealed(data);
}

/// `data` as a received datagram.
fn received(data: &[u8]) {
    let Ok((header, used)) = wire::decode_header(data, cluster()) else {
        return;
    };
    assert!(used <= MAX_HEADER_LEN, "a header of {used} bytes");
    let (trailer, tag) = match Trailer::read(data, used) {
        Ok(t) => t,
        Err(AuthError::Truncated) => {
            assert!(data.len() < used + TRAILER_LEN);
            return;
        }
        Err(AuthError::UnknownAlgorithm(a)) => {
            assert_eq!(a, data[data.len() - TRAILER_LEN + 4]);
            return;
        }
        Err(AuthError::BadTag) => panic!("reading a trailer checks no tag"),
    };
    let end = &data[data.len() - TRAILER_LEN..];
    assert_eq!(end[..4], trailer.key_id.to_le_bytes());
    assert_eq!(end[4], trailer.algorithm as u8);
    assert_eq!(end[5..13], trailer.timestamp_ms.to_le_bytes());
    assert_eq!(end[13..21], trailer.counter.to_le_bytes());
    assert_eq!(end[21..], tag);
    for key in keys() {
        let Ok(body) = open(key, data, used, header.stream) else {
            continue;
        };
        assert_eq!(key.id(), trailer.key_id, "opened under another key's id");
        assert!(header.authenticated(), "opened without the flag");
        // Sealing the body again with the same trailer writes these bytes.
        let mut again = data[..used].to_vec();
        again.extend_from_slice(&body);
        key.seal(
            &mut again,
            used,
            header.stream,
            trailer.algorithm,
            trailer.timestamp_ms,
            trailer.counter,
        );
        assert_eq!(again, data, "two datagrams verify as one");
    }
}

/// `data` as a body to seal: byte 0 picks the algorithm, the stream and
/// the key; bytes 1-4 a place to change and how; the rest is the body.
fn sealed(data: &[u8]) {
    let [how, at0, at1, xor, cut, body @ ..] = data else {
        return;
    };
    if body.len() > MAX_DATAGRAM - MAX_HEADER_LEN - TRAILER_LEN {
        return;
    }
    let algorithm = if how & 1 == 0 {
        Algorithm::HmacSha256
    } else {
        Algorithm::Aes256Gcm
    };
    let stream = [2, 250, 0x0102_0304_0506_0708, u64::MAX][(how >> 1) as usize % 4];
    let key = &keys()[(how >> 3) as usize % 2];
    let other = &keys()[2];
    let mut header = Header::new(cluster(), stream);
    header.flags |= FLAG_AUTH;
    let mut dgram = header.to_bytes();
    let used = dgram.len();
    dgram.extend_from_slice(body);
    let counter = u64::from_le_bytes([*at0, *at1, *xor, *cut, 0, 0, 0, 1]);
    key.seal(
        &mut dgram,
        used,
        stream,
        algorithm,
        1_750_000_000_000,
        counter,
    );
    assert_eq!(dgram.len(), used + body.len() + TRAILER_LEN);
    // It opens to itself, under its key only.
    assert_eq!(open(key, &dgram, used, stream).as_deref(), Ok(body));
    assert_eq!(
        open(other, &dgram, used, stream),
        Err(AuthError::BadTag),
        "opened under a key it was not sealed with"
    );
    // Another stream's nonce (encrypt) or header (MAC): no.
    let mut moved = dgram.clone();
    let mut other_header = header;
    other_header.stream = stream ^ 1;
    let h = other_header.to_bytes();
    if h.len() == used {
        moved[..used].copy_from_slice(&h);
        assert!(open(key, &moved, used, stream ^ 1).is_err());
    }
    // Read back by the node's decoder, a MAC'd datagram is its body.
    if algorithm == Algorithm::HmacSha256 {
        if let Ok(d) = wire::decode(&dgram, cluster()) {
            assert_eq!(Ok(d.body), wire::decode_body(body));
        }
    }
    // One byte changed anywhere: nothing opens.
    let i = u16::from_le_bytes([*at0, *at1]) as usize % dgram.len();
    let x = if *xor == 0 { 1 } else { *xor };
    let mut flipped = dgram.clone();
    flipped[i] ^= x;
    if i >= used {
        assert!(
            open(key, &flipped, used, stream).is_err(),
            "byte {i} ^ {x:#04x} of {} still opens",
            dgram.len()
        );
    } else if let Ok((h, u)) = wire::decode_header(&flipped, cluster()) {
        // A changed header: read as the node would.
        assert!(
            open(key, &flipped, u, h.stream).is_err(),
            "header byte {i} ^ {x:#04x} still opens"
        );
    }
    // Truncated or extended: nothing opens.
    let n = 1 + (*cut as usize) % dgram.len();
    let short = &dgram[..dgram.len() - n];
    assert!(open(key, short, used, stream).is_err(), "cut by {n}");
    let mut long = dgram.clone();
    long.insert(dgram.len() - TAG_LEN, *xor);
    assert!(open(key, &long, used, stream).is_err(), "extended");
}

//! The authentication trailer: its layout, the keys, and the two
//! operations on bytes, sealing a datagram and opening one. Which datagrams
//! are accepted (key ids, replay windows, freshness, modes) is the
//! protocol's business (`proto::auth`); this module only turns keys and
//! bytes into tags and back.
//!
//! # Layout
//!
//! A datagram whose header sets flag bit 0 ([`FLAG_AUTH`](super::FLAG_AUTH))
//! ends with a trailer of [`TRAILER_LEN`] bytes, fixed-width and
//! little-endian (not varints: a receiver finds it by counting back from
//! the end, before it decodes anything):
//!
//! ```text
//! key id     u32   which key of the cluster (from the secret: `key_id`)
//! algorithm  u8    1 HMAC-SHA256 truncated to 16 bytes, 2 XAES-256-GCM
//! timestamp  u64   the sender's clock, ms since the Unix epoch
//! counter    u64   the stream's transmit counter: 1, 2, ... for every datagram it sends
//!                  to everyone; 2^63 + 1, 2^63 + 2, ... for those to one node alone
//! tag        [u8; 16]
//! ```
//!
//! - **HMAC** (`mac`): the tag is the first 16 bytes of HMAC-SHA256 over
//!   every byte before it (header, body, and the trailer's fields).
//! - **XAES-256-GCM** (`encrypt`): AES-256-GCM with the key derived per
//!   stream as [C2SP's XAES-256-GCM](https://c2sp.org/XAES-256-GCM) derives
//!   it from the first half of its 24-byte nonce. That half is the stream
//!   id (`u64` LE) and four zero bytes, so each end derives a stream's key
//!   once and keeps it; the 12-byte GCM nonce is the counter (`u64` LE) and
//!   the timestamp's low 32 bits (LE). The body is encrypted in place, the
//!   header and the trailer's fields are associated data, the tag is GCM's.
//!   No (key, nonce) pair is used twice as long as stream ids are unique
//!   under a key: a `Node` draws its stream id at random (64 bits) at every
//!   start, and a stream's counters never repeat (the two counts never
//!   meet). A `NodeCore` built by
//!   hand must do the same: two cores sending with one stream id and one
//!   key would repeat nonces from their first datagrams (their counters
//!   start alike) whenever their clocks agree to the millisecond, and a
//!   repeated GCM nonce gives away the stream key's authentication key.
//!   The per-stream key is what makes a 96-bit GCM nonce safe: a counter
//!   alone would repeat across streams under one key. It is the sending
//!   algorithm of `encrypt` because with AES-NI it is cheaper than HMAC
//!   alone: sealing 1.1 KB costs 0.33 us, HMAC-SHA256 1.1 us (see README,
//!   Speed).
//!
//! # Keys
//!
//! A cluster secret (at least [`MIN_SECRET_LEN`] random bytes) is never
//! used directly: HKDF-SHA256 with a salt that binds the wire version and
//! the cluster derives one key per purpose (MAC, encryption), so the same
//! secret in two clusters or two versions gives unrelated keys. The key id
//! is derived from the secret alone (HKDF with its own salt), so every
//! holder of a secret computes the same id and `cachecast keygen` can print
//! it. A key proves membership of the cluster, not which member sent.

use aes::cipher::{BlockEncrypt, KeyInit};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Bytes of the trailer at the end of an authenticated datagram.
pub const TRAILER_LEN: usize = 4 + 1 + 8 + 8 + TAG_LEN;
/// Bytes of the tag that ends the trailer.
pub const TAG_LEN: usize = 16;
/// The shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;
/// The longest cluster secret accepted.
pub const MAX_SECRET_LEN: usize = 512;
/// Keys one node holds at once (the sending key and those it accepts).
pub const MAX_HELD_KEYS: usize = 8;
/// The trailer's fields before the tag.
const FIELDS_LEN: usize = TRAILER_LEN - TAG_LEN;
/// The longest header: magic, version, flags, cluster (a varint `u32`, at
/// most 5 bytes) and stream (a varint `u64`, at most 9).
const MAX_HEADER_LEN: usize = 4 + 1 + 1 + 5 + 9;

/// How a datagram is protected: the trailer's algorithm byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Algorithm {
    /// HMAC-SHA256 over the whole datagram, truncated to 16 bytes: the body
    /// travels in the clear.
    HmacSha256 = 1,
    /// XAES-256-GCM (AES-256-GCM under a per-stream key): the body is
    /// encrypted, header and trailer authenticated.
    Aes256Gcm = 2,
}

impl Algorithm {
    /// The algorithm named by a trailer's byte, if any.
    pub fn from_u8(b: u8) -> Option<Algorithm> {
        match b {
            1 => Some(Algorithm::HmacSha256),
            2 => Some(Algorithm::Aes256Gcm),
            _ => None,
        }
    }
}

/// Why a trailer could not be read or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Shorter than a header and a trailer.
    #[error("too short for an authentication trailer")]
    Truncated,
    /// The algorithm byte names no algorithm.
    #[error("unknown algorithm {0}")]
    UnknownAlgorithm(u8),
    /// The tag does not match.
    #[error("bad tag")]
    BadTag,
}

/// The fields of a trailer, before its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// The key the datagram was sealed with.
    pub key_id: u32,
    /// How it was sealed.
    pub algorithm: Algorithm,
    /// The sender's clock when it sealed it, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// The sending stream's transmit counter.
    pub counter: u64,
}

impl Trailer {
    fn fields(&self) -> [u8; FIELDS_LEN] {
        let mut f = [0u8; FIELDS_LEN];
        f[0..4].copy_from_slice(&self.key_id.to_le_bytes());
        f[4] = self.algorithm as u8;
        f[5..13].copy_from_slice(&self.timestamp_ms.to_le_bytes());
        f[13..21].copy_from_slice(&self.counter.to_le_bytes());
        f
    }

    /// Appends this trailer with `tag` to `buf`, as [`Key::seal`] does
    /// with the tag it computes. For tools that must write a trailer
    /// without the key (a forger in a bench or a test): a datagram so
    /// written verifies only if `tag` is its tag.
    pub fn write(&self, tag: &[u8; TAG_LEN], buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.fields());
        buf.extend_from_slice(tag);
    }

    /// Reads the trailer at the end of `dgram`, whose header is `header_len`
    /// bytes long. Returns the trailer and its tag; reads nothing else and
    /// checks nothing but the lengths and the algorithm byte.
    pub fn read(dgram: &[u8], header_len: usize) -> Result<(Trailer, [u8; TAG_LEN]), AuthError> {
        if dgram.len() < header_len + TRAILER_LEN {
            return Err(AuthError::Truncated);
        }
        let t = &dgram[dgram.len() - TRAILER_LEN..];
        let u32_at = |i: usize| u32::from_le_bytes(t[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(t[i..i + 8].try_into().expect("8 bytes"));
        let algorithm = Algorithm::from_u8(t[4]).ok_or(AuthError::UnknownAlgorithm(t[4]))?;
        let tag = t[FIELDS_LEN..].try_into().expect("16 bytes");
        Ok((
            Trailer {
                key_id: u32_at(0),
                algorithm,
                timestamp_ms: u64_at(5),
                counter: u64_at(13),
            },
            tag,
        ))
    }
}

/// The key id of a cluster secret: derived from the secret alone, so
/// every node holding it (and `cachecast keygen`) computes the same.
pub fn key_id(secret: &[u8]) -> u32 {
    let hk = Hkdf::<Sha256>::new(Some(b"cachecast key id"), secret);
    let mut id = [0u8; 4];
    hk.expand(b"id", &mut id)
        .expect("4 bytes is a valid HKDF-SHA256 length");
    u32::from_le_bytes(id)
}

/// One key of a cluster: the per-purpose keys derived from one secret for
/// one cluster. Holds no secret bytes itself that `Debug` would print.
#[derive(Clone)]
pub struct Key {
    id: u32,
    /// HMAC-SHA256 keyed once (its pads computed): cloned per datagram.
    mac: Hmac<Sha256>,
    /// The XAES-256-GCM key (derives the per-stream AES-256-GCM keys).
    xaes: Xaes,
}

/// XAES-256-GCM's key derivation (C2SP): from a 256-bit key and the first
/// 12 bytes of a 24-byte nonce, the AES-256-GCM key for that half. Written
/// here because no crate we use exposes it over ring's AES-GCM (RustCrypto's
/// `aes-gcm` has it, with its slower GHASH); it is two AES blocks.
#[derive(Clone)]
struct Xaes {
    aes: aes::Aes256,
    /// K1 = dbl(AES(0)), as in CMAC.
    k1: [u8; 16],
}

impl Xaes {
    fn new(key: &[u8; 32]) -> Xaes {
        let aes = aes::Aes256::new(key.into());
        let mut l = aes::Block::default();
        aes.encrypt_block(&mut l);
        let l = u128::from_be_bytes(l.into());
        let k1 = (l << 1) ^ if l >> 127 == 1 { 0x87 } else { 0 };
        Xaes {
            aes,
            k1: k1.to_be_bytes(),
        }
    }

    /// The AES-256-GCM key for the nonce half `n`.
    fn derive(&self, n: &[u8; 12]) -> ring::aead::LessSafeKey {
        let mut kx = Zeroizing::new([0u8; 32]);
        for (i, half) in kx.chunks_exact_mut(16).enumerate() {
            let mut m = [0u8; 16];
            m[1] = i as u8 + 1;
            m[2] = b'X';
            m[4..].copy_from_slice(n);
            for (b, k) in m.iter_mut().zip(self.k1) {
                *b ^= k;
            }
            let mut block = aes::Block::from(m);
            self.aes.encrypt_block(&mut block);
            half.copy_from_slice(&block);
        }
        ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &kx[..])
                .expect("32 bytes is an AES-256 key"),
        )
    }
}

/// The AES-256-GCM key of one stream under one [`Key`]
/// ([`Algorithm::Aes256Gcm`]): derived once per stream and kept by each end
/// (two AES blocks and a key schedule, about a microsecond).
pub struct StreamKey {
    key_id: u32,
    stream: u64,
    aead: ring::aead::LessSafeKey,
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamKey({:#010x}, {:016x})", self.key_id, self.stream)
    }
}

impl StreamKey {
    /// True if this is the key of `stream` under the key of id `key_id`.
    pub fn is_for(&self, key_id: u32, stream: u64) -> bool {
        self.key_id == key_id && self.stream == stream
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:#010x})", self.id)
    }
}

/// The HKDF salt of a cluster's keys: binds the wire version and the
/// cluster, so that the same secret elsewhere gives unrelated keys.
fn salt(cluster: u32) -> [u8; 20] {
    let mut s = [0u8; 20];
    s[..15].copy_from_slice(b"cachecast wire ");
    s[15] = super::VERSION;
    s[16..].copy_from_slice(&cluster.to_le_bytes());
    s
}

impl Key {
    /// Derives the keys of `secret` for cluster `cluster`
    /// ([`cluster_hash`](super::cluster_hash) of its name). The secret must
    /// hold [`MIN_SECRET_LEN`] to [`MAX_SECRET_LEN`] bytes.
    pub fn derive(secret: &[u8], cluster: u32) -> Result<Key, KeyError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::TooShort(secret.len()));
        }
        if secret.len() > MAX_SECRET_LEN {
            return Err(KeyError::TooLong(secret.len()));
        }
        let hk = Hkdf::<Sha256>::new(Some(&salt(cluster)), secret);
        let mut mac_key = Zeroizing::new([0u8; 32]);
        hk.expand(b"cachecast datagram mac", &mut mac_key[..])
            .expect("32 bytes is a valid HKDF-SHA256 length");
        let mut xaes_key = Zeroizing::new([0u8; 32]);
        hk.expand(b"cachecast datagram xaes-256-gcm", &mut xaes_key[..])
            .expect("32 bytes is a valid HKDF-SHA256 length");
        Ok(Key {
            id: key_id(secret),
            mac: <Hmac<Sha256> as Mac>::new_from_slice(&mac_key[..])
                .expect("HMAC takes any key length"),
            xaes: Xaes::new(&xaes_key),
        })
    }

    /// Its id, as trailers carry it.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `given` if it is `stream`'s key under this key, else that key
    /// derived into `derived`.
    fn stream_key_or<'k>(
        &self,
        given: Option<&'k StreamKey>,
        stream: u64,
        derived: &'k mut Option<StreamKey>,
    ) -> &'k StreamKey {
        match given.filter(|k| k.is_for(self.id, stream)) {
            Some(k) => k,
            None => derived.insert(self.stream_key(stream)),
        }
    }

    /// The AES-256-GCM key of `stream` under this key, for
    /// [`Key::seal_with`] and [`Key::open_with`].
    pub fn stream_key(&self, stream: u64) -> StreamKey {
        let mut n = [0u8; 12];
        n[..8].copy_from_slice(&stream.to_le_bytes());
        StreamKey {
            key_id: self.id,
            stream,
            aead: self.xaes.derive(&n),
        }
    }

    /// Seals the datagram in `buf`: `header_len` bytes of header (with
    /// [`FLAG_AUTH`](super::FLAG_AUTH) set), then the body. Appends the
    /// trailer; with [`Algorithm::Aes256Gcm`], encrypts the body in place
    /// first. `stream` must be the header's stream.
    pub fn seal(
        &self,
        buf: &mut Vec<u8>,
        header_len: usize,
        stream: u64,
        algorithm: Algorithm,
        timestamp_ms: u64,
        counter: u64,
    ) {
        self.seal_with(
            None,
            buf,
            header_len,
            stream,
            algorithm,
            timestamp_ms,
            counter,
        )
    }

    /// [`Key::seal`] with the stream's key derived before (see
    /// [`Key::stream_key`]; derived anew if `None` or another's).
    #[allow(clippy::too_many_arguments)]
    pub fn seal_with(
        &self,
        stream_key: Option<&StreamKey>,
        buf: &mut Vec<u8>,
        header_len: usize,
        stream: u64,
        algorithm: Algorithm,
        timestamp_ms: u64,
        counter: u64,
    ) {
        debug_assert!(buf.len() >= header_len && header_len <= MAX_HEADER_LEN);
        debug_assert!(buf[5] & super::FLAG_AUTH != 0, "header must set FLAG_AUTH");
        let trailer = Trailer {
            key_id: self.id,
            algorithm,
            timestamp_ms,
            counter,
        };
        let fields = trailer.fields();
        match algorithm {
            Algorithm::HmacSha256 => {
                buf.extend_from_slice(&fields);
                let mut mac = self.mac.clone();
                mac.update(buf);
                let tag = mac.finalize().into_bytes();
                buf.extend_from_slice(&tag[..TAG_LEN]);
            }
            Algorithm::Aes256Gcm => {
                let mut derived = None;
                let sk = self.stream_key_or(stream_key, stream, &mut derived);
                let (aad, aad_len) = associated(&buf[..header_len], &fields);
                let tag = sk
                    .aead
                    .seal_in_place_separate_tag(
                        gcm_nonce(counter, timestamp_ms),
                        ring::aead::Aad::from(&aad[..aad_len]),
                        &mut buf[header_len..],
                    )
                    .expect("a datagram is far below the cipher's length limit");
                buf.extend_from_slice(&fields);
                buf.extend_from_slice(tag.as_ref());
            }
        }
    }

    /// Verifies the datagram `dgram` (header of `header_len` bytes, body,
    /// trailer as [`Trailer::read`] returned it with `tag`) in constant
    /// time, and returns its body. An encrypted body is decrypted into
    /// `scratch` (cleared first; it grows at most to one datagram and is
    /// reused), a clear one is borrowed from `dgram`. On failure nothing of
    /// the datagram is returned, and `scratch` holds nothing of it.
    pub fn open<'a>(
        &self,
        dgram: &'a [u8],
        header_len: usize,
        stream: u64,
        trailer: &Trailer,
        tag: &[u8; TAG_LEN],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], AuthError> {
        self.open_with(None, dgram, header_len, stream, trailer, tag, scratch)
    }

    /// [`Key::open`] with the stream's key derived before (see
    /// [`Key::stream_key`]; derived anew if `None` or another's).
    #[allow(clippy::too_many_arguments)]
    pub fn open_with<'a>(
        &self,
        stream_key: Option<&StreamKey>,
        dgram: &'a [u8],
        header_len: usize,
        stream: u64,
        trailer: &Trailer,
        tag: &[u8; TAG_LEN],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], AuthError> {
        if dgram.len() < header_len + TRAILER_LEN || header_len > MAX_HEADER_LEN {
            return Err(AuthError::Truncated);
        }
        let body_end = dgram.len() - TRAILER_LEN;
        match trailer.algorithm {
            Algorithm::HmacSha256 => {
                let mut mac = self.mac.clone();
                mac.update(&dgram[..dgram.len() - TAG_LEN]);
                mac.verify_truncated_left(tag)
                    .map_err(|_| AuthError::BadTag)?;
                Ok(&dgram[header_len..body_end])
            }
            Algorithm::Aes256Gcm => {
                let mut derived = None;
                let sk = self.stream_key_or(stream_key, stream, &mut derived);
                let (aad, aad_len) = associated(&dgram[..header_len], &trailer.fields());
                scratch.clear();
                scratch.extend_from_slice(&dgram[header_len..body_end]);
                if sk
                    .aead
                    .open_in_place_separate_tag(
                        gcm_nonce(trailer.counter, trailer.timestamp_ms),
                        ring::aead::Aad::from(&aad[..aad_len]),
                        ring::aead::Tag::from(*tag),
                        scratch,
                        0..,
                    )
                    .is_err()
                {
                    scratch.clear();
                    return Err(AuthError::BadTag);
                }
                Ok(&scratch[..])
            }
        }
    }
}

/// The associated data of an encrypted datagram: its header, then the
/// trailer's fields (on the stack: a header is at most 20 bytes).
fn associated(
    header: &[u8],
    fields: &[u8; FIELDS_LEN],
) -> ([u8; MAX_HEADER_LEN + FIELDS_LEN], usize) {
    let mut aad = [0u8; MAX_HEADER_LEN + FIELDS_LEN];
    // Callers check the length (a header is at most 20 bytes).
    let h = header.len().min(MAX_HEADER_LEN);
    aad[..h].copy_from_slice(&header[..h]);
    aad[h..h + FIELDS_LEN].copy_from_slice(fields);
    (aad, h + FIELDS_LEN)
}

/// The 12-byte GCM nonce of [`Algorithm::Aes256Gcm`] (the second half of
/// XAES-256-GCM's nonce): the counter, then the timestamp's low 32 bits.
fn gcm_nonce(counter: u64, timestamp_ms: u64) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&counter.to_le_bytes());
    n[8..].copy_from_slice(&(timestamp_ms as u32).to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(n)
}

/// Why a secret or a set of keys was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fewer than [`MIN_SECRET_LEN`] bytes.
    #[error("the secret has {0} bytes; at least {MIN_SECRET_LEN} are needed (cachecast keygen writes 32 random bytes)")]
    TooShort(usize),
    /// More than [`MAX_SECRET_LEN`] bytes.
    #[error("the secret has {0} bytes; at most {MAX_SECRET_LEN} are accepted")]
    TooLong(usize),
    /// More than [`MAX_HELD_KEYS`] keys.
    #[error("{0} keys; a node holds at most {MAX_HELD_KEYS}")]
    TooMany(usize),
    /// Two secrets with the same key id.
    #[error("two keys have the id {0:#010x} (the same secret twice?)")]
    DuplicateId(u32),
    /// The sending key is not among the keys.
    #[error("the sending key {0:#010x} is not among the keys")]
    NoSendKey(u32),
}

/// The keys one node holds: every key it accepts, and the one it sends
/// with. Cheap to clone (the derived keys only).
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    keys: Vec<Key>,
    send: Option<u32>,
}

impl Keyring {
    /// A keyring of `keys`, sending with the key of id `send` (if any: a
    /// keyring without a sending key only verifies).
    pub fn new(keys: Vec<Key>, send: Option<u32>) -> Result<Keyring, KeyError> {
        if keys.len() > MAX_HELD_KEYS {
            return Err(KeyError::TooMany(keys.len()));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id == k.id) {
                return Err(KeyError::DuplicateId(k.id));
            }
        }
        if let Some(id) = send {
            if !keys.iter().any(|k| k.id == id) {
                return Err(KeyError::NoSendKey(id));
            }
        }
        Ok(Keyring { keys, send })
    }

    /// One key, sending with it: the usual case.
    pub fn single(key: Key) -> Keyring {
        let send = Some(key.id);
        Keyring {
            keys: vec![key],
            send,
        }
    }

    /// The key of id `id`, if held.
    pub fn get(&self, id: u32) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// The sending key, if any.
    pub fn sending(&self) -> Option<&Key> {
        self.send.and_then(|id| self.get(id))
    }

    /// The ids of every key held, sending key first.
    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.send.into_iter().collect();
        ids.extend(
            self.keys
                .iter()
                .map(|k| k.id)
                .filter(|&id| Some(id) != self.send),
        );
        ids
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C2SP's XAES-256-GCM test vectors (c2sp.org/XAES-256-GCM): the
    /// derivation, then ring's AES-256-GCM under the derived key.
    #[test]
    fn xaes_256_gcm_matches_the_c2sp_vectors() {
        let cases: [(u8, &[u8], &str); 2] = [
            (
                1,
                b"",
                "ce546ef63c9cc60765923609b33a9a1974e96e52daf2fcf7075e2271",
            ),
            (
                3,
                b"c2sp.org/XAES-256-GCM",
                "986ec1832593df5443a179437fd083bf3fdb41abd740a21f71eb769d",
            ),
        ];
        for (k, aad, want) in cases {
            let xaes = Xaes::new(&[k; 32]);
            let nonce = b"ABCDEFGHIJKLMNOPQRSTUVWX";
            let key = xaes.derive(nonce[..12].try_into().unwrap());
            let mut buf = b"XAES-256-GCM".to_vec();
            let tag = key
                .seal_in_place_separate_tag(
                    ring::aead::Nonce::assume_unique_for_key(nonce[12..].try_into().unwrap()),
                    ring::aead::Aad::from(aad),
                    &mut buf,
                )
                .unwrap();
            buf.extend_from_slice(tag.as_ref());
            let got: String = buf.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(got, want, "key {k:#04x}");
        }
    }
}

//! Authenticated datagrams on the wire: golden bytes of every body kind
//! sealed with a fixed secret (HMAC-SHA256 for all, XAES-256-GCM for two),
//! the documented derivation recomputed from its parts, a seal/open
//! round trip property, and a keyed core that refuses every truncation and
//! every flipped bit of them without any change of state.

use std::time::{Duration, Instant};

use cachecast::proto::NodeCore;
use cachecast::wire::*;
use cachecast::{AuthMode, CoreConfig};
use proptest::prelude::*;

// Allocation counting: the fuzz targets' counting allocator (the bytes
// this thread asks for while `alloc::allocated_by` runs).
#[path = "../fuzz/src/alloc.rs"]
mod alloc;

#[global_allocator]
static GLOBAL: alloc::Counting = alloc::Counting;

// ---------------------------------------------------------------------------
// The fixed inputs of the goldens.

/// The golden secret: bytes 00 01 02 … 1f.
fn secret() -> Vec<u8> {
    (0u8..32).collect()
}

/// `cluster_hash("golden")` = 0x1705ad44, as in tests/wire.rs.
fn cluster() -> u32 {
    cluster_hash("golden")
}

fn golden_key() -> Key {
    Key::derive(&secret(), cluster()).unwrap()
}

/// The key id of the golden secret (HKDF-SHA256 of the secret alone).
const GOLDEN_KEY_ID: u32 = 0x59d8_0cb1;
/// The sender's clock in every golden trailer: 1,750,000,000,000 ms since
/// the Unix epoch (2025-06-15), 0x0000_0197_7420_dc00.
const TS: u64 = 1_750_000_000_000;

fn data(first_seq: u64, events: Vec<Event>) -> Body {
    Body::Data {
        first_seq,
        events: Events::new_unchecked(&events),
    }
}

/// Seals `body` under `header` (flag bit 0 added) with `key`: the datagram
/// and its header's length.
fn seal(
    header: &Header,
    body: &Body,
    key: &Key,
    alg: Algorithm,
    ts: u64,
    counter: u64,
) -> (Vec<u8>, usize) {
    let mut h = *header;
    h.flags |= FLAG_AUTH;
    let mut buf = Vec::new();
    encode(&h, body, &mut buf);
    let header_len = h.to_bytes().len();
    key.seal(&mut buf, header_len, h.stream, alg, ts, counter);
    (buf, header_len)
}

/// The unkeyed encoding of `body` under `header`.
fn plain(header: &Header, body: &Body) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(header, body, &mut buf);
    buf
}

// ---------------------------------------------------------------------------
// Golden bytes. Every header is tests/wire.rs's with flags 01 (FLAG_AUTH):
// "CCST" (43435354), version 01, flags 01, cluster fc + 0x1705ad44 LE,
// stream as a varint. The body follows as in the unkeyed goldens (in the
// clear with HMAC, encrypted in place, same length, with XAES-256-GCM),
// then the 37-byte trailer: key id u32 LE, algorithm u8, timestamp u64 LE,
// counter u64 LE, tag [u8; 16].

struct Golden {
    /// The header before sealing (flags 0).
    header: Header,
    body: Body,
    alg: Algorithm,
    counter: u64,
    hex: &'static str,
}

const GOLDEN_DATA: &str = concat!(
    "434353540101fc44ad0517fd0807060504030201", // header, flags 01, stream 0x0102030405060708
    "00",                                       // Data
    "01",                                       // first_seq 1
    "04",                                       // 4 events
    "000206757365723a3106757365723a32",         // Invalidate ["user:1", "user:2"]
    "010873657373696f6e3a",                     // InvalidatePrefix "session:"
    "02",                                       // ClearAll
    "030672656c6f616402dead",                   // Custom "reload" [de ad]
    "b10cd859",                                 // key id 0x59d80cb1
    "01",                                       // HMAC-SHA256
    "00dc207497010000",                         // timestamp 1_750_000_000_000 ms
    "0100000000000000",                         // counter 1
    "bf55649aa4621a0f28716e7ffe163fa4",         // tag
);
const GOLDEN_HEARTBEAT: &str = concat!(
    "434353540101fc44ad051707",         // header, flags 01, stream 7
    "01fb2c01fa066e6f64652d61",         // Heartbeat 300, 250, "node-a"
    "b10cd859",                         // key id
    "01",                               // HMAC-SHA256
    "00dc207497010000",                 // timestamp
    "0200000000000000",                 // counter 2
    "8b588538537f348907667a97d49d3ba5", // tag
);
const GOLDEN_HELLO: &str = concat!(
    "434353540101fc44ad051707",         // header, flags 01, stream 7
    "02066e6f64652d62",                 // Hello "node-b"
    "b10cd859",                         // key id
    "01",                               // HMAC-SHA256
    "00dc207497010000",                 // timestamp
    "0300000000000000",                 // counter 3
    "aa4a0089539a72d1eba40bfe88ac640f", // tag
);
const GOLDEN_NAK: &str = concat!(
    "434353540101fc44ad051707",         // header, flags 01, stream 7
    "032a0205070a0b",                   // Nak 42 [(5, 7), (10, 11)]
    "b10cd859",                         // key id
    "01",                               // HMAC-SHA256
    "00dc207497010000",                 // timestamp
    "0400000000000000",                 // counter 4
    "f3e12139d1439c585fc431fea6182bba", // tag
);
const GOLDEN_REPAIR: &str = concat!(
    "434353540101fc44ad0517fd0807060504030201", // header, flags 01, stream 0x0102030405060708
    "04fc70110100010001016b",                   // Repair 70000 [Invalidate ["k"]]
    "b10cd859",                                 // key id
    "01",                                       // HMAC-SHA256
    "00dc207497010000",                         // timestamp
    "0500000000000000",                         // counter 5
    "5b1d2e3866bd28c54fb726f0ce30fcc8",         // tag
);
const GOLDEN_UNAVAILABLE: &str = concat!(
    "434353540101fc44ad051707",         // header, flags 01, stream 7
    "05fdffffffffffffffff010105",       // Unavailable u64::MAX [(1, 5)]
    "b10cd859",                         // key id
    "01",                               // HMAC-SHA256
    "00dc207497010000",                 // timestamp
    "0600000000000000",                 // counter 6
    "092cc090b09f6ae16a076ffea9f8ba51", // tag
);
const GOLDEN_GOODBYE: &str = concat!(
    "434353540101fc44ad051707",         // header, flags 01, stream 7
    "06fd0000000000010000",             // Goodbye 1 << 40
    "b10cd859",                         // key id
    "01",                               // HMAC-SHA256
    "00dc207497010000",                 // timestamp
    "0700000000000000",                 // counter 7
    "215901afa5b61f260d8006fc08c82455", // tag
);
const GOLDEN_ACK_REQUEST: &str = concat!(
    "434353540101fc44ad051707",         // header, flags 01, stream 7
    "07fb2c010209fd0000000000010000",   // AckRequest 300 [9, 1 << 40]
    "b10cd859",                         // key id
    "01",                               // HMAC-SHA256
    "00dc207497010000",                 // timestamp
    "0800000000000000",                 // counter 8
    "39461206cc5b48c65ca9b18071b6d7a8", // tag
);
const GOLDEN_REPORT: &str = concat!(
    "434353540101fc44ad051707", // header, flags 01, stream 7
    "08066e6f64652d63",         // Report "node-c"
    "022a070000",               //   positions: 2; (42, 7, 0, 0)
    "fdfffffffffffffffffd000000000001000005fbe803", // (u64::MAX, 1 << 40, 5, 1000)
    "02fcb10cd85901",           //   keys: 2; 0x59d80cb1 (fc + u32 LE), 1
    "b10cd859",                 // key id
    "01",                       // HMAC-SHA256
    "00dc207497010000",         // timestamp
    "0900000000000000",         // counter 9
    "53fe38387fb472f7471079321f5c7c4d", // tag
);
const GOLDEN_DATA_ENCRYPTED: &str = concat!(
    "434353540101fc44ad0517fd0807060504030201", // header, flags 01, stream 0x0102030405060708
    // GOLDEN_DATA's body, encrypted (same length: 41 bytes)
    "2bd7247a8a0ebdeb2d15f8cfadd9d75ea7a5e658e013e13e72bf4ff467b5d55ae5e1df6405aff12796",
    "b10cd859",         // key id
    "02",               // XAES-256-GCM
    "00dc207497010000", // timestamp
    "0403020100000000", // counter 0x01020304
    "43a7d7c49969972d2a906215adae0a11",
);
const GOLDEN_GOODBYE_ENCRYPTED: &str = concat!(
    "434353540101fc44ad051707", // header, flags 01, stream 7
    "72b13072a33c98d10ec9",
    "b10cd859",         // key id
    "02",               // XAES-256-GCM
    "00dc207497010000", // timestamp
    "ffffffffffffffff", // counter u64::MAX
    "9bc072486631785f60ddfdd40d67ad28",
);

fn goldens() -> Vec<Golden> {
    use Algorithm::{Aes256Gcm as Enc, HmacSha256 as Mac};
    let big = Header::new(cluster(), 0x0102_0304_0506_0708);
    let hdr = Header::new(cluster(), 7);
    let events = || {
        vec![
            Event::Invalidate {
                keys: vec!["user:1".into(), "user:2".into()],
            },
            Event::InvalidatePrefix {
                prefix: "session:".into(),
            },
            Event::ClearAll,
            Event::Custom {
                topic: "reload".into(),
                payload: vec![0xde, 0xad],
            },
        ]
    };
    let g = |header, body, alg, counter, hex| Golden {
        header,
        body,
        alg,
        counter,
        hex,
    };
    vec![
        g(big, data(1, events()), Mac, 1, GOLDEN_DATA),
        g(
            hdr,
            Body::Heartbeat {
                next_seq: 300,
                oldest: 250,
                node: "node-a".into(),
            },
            Mac,
            2,
            GOLDEN_HEARTBEAT,
        ),
        g(
            hdr,
            Body::Hello {
                node: "node-b".into(),
            },
            Mac,
            3,
            GOLDEN_HELLO,
        ),
        g(
            hdr,
            Body::Nak {
                stream: 42,
                ranges: vec![(5, 7), (10, 11)],
            },
            Mac,
            4,
            GOLDEN_NAK,
        ),
        g(
            big,
            Body::Repair {
                first_seq: 70_000,
                events: Events::new_unchecked(&[Event::Invalidate {
                    keys: vec!["k".into()],
                }]),
            },
            Mac,
            5,
            GOLDEN_REPAIR,
        ),
        g(
            hdr,
            Body::Unavailable {
                stream: u64::MAX,
                ranges: vec![(1, 5)],
            },
            Mac,
            6,
            GOLDEN_UNAVAILABLE,
        ),
        g(
            hdr,
            Body::Goodbye { next_seq: 1 << 40 },
            Mac,
            7,
            GOLDEN_GOODBYE,
        ),
        g(
            hdr,
            Body::AckRequest {
                next_seq: 300,
                members: vec![9, 1 << 40],
            },
            Mac,
            8,
            GOLDEN_ACK_REQUEST,
        ),
        g(
            hdr,
            Body::Report {
                node: "node-c".into(),
                positions: vec![
                    Position {
                        stream: 42,
                        delivered: 7,
                        reset_end: 0,
                        idle_ms: 0,
                    },
                    Position {
                        stream: u64::MAX,
                        delivered: 1 << 40,
                        reset_end: 5,
                        idle_ms: 1000,
                    },
                ],
                keys: vec![GOLDEN_KEY_ID, 1],
            },
            Mac,
            9,
            GOLDEN_REPORT,
        ),
        g(
            big,
            data(1, events()),
            Enc,
            0x0102_0304,
            GOLDEN_DATA_ENCRYPTED,
        ),
        g(
            hdr,
            Body::Goodbye { next_seq: 1 << 40 },
            Enc,
            u64::MAX,
            GOLDEN_GOODBYE_ENCRYPTED,
        ),
    ]
}

#[test]
fn golden_bytes() {
    let key = golden_key();
    assert_eq!(key.id(), GOLDEN_KEY_ID);
    assert_eq!(key_id(&secret()), GOLDEN_KEY_ID);
    let mut scratch = Vec::new();
    for g in goldens() {
        let what = format!("{:?} {:?}", g.body.tag(), g.alg);
        let (bytes, hl) = seal(&g.header, &g.body, &key, g.alg, TS, g.counter);
        assert_eq!(hex::encode(&bytes), g.hex, "seal {what}");
        assert_eq!(hex::decode(g.hex).unwrap(), bytes);
        let unkeyed = plain(&g.header, &g.body);
        // The header is the unkeyed one with flag bit 0; the trailer comes
        // after a body of the same length.
        assert_eq!(bytes.len(), unkeyed.len() + TRAILER_LEN, "{what}");
        assert_eq!(bytes[5], FLAG_AUTH, "{what}");
        assert_eq!(bytes[..5], unkeyed[..5], "{what}");
        assert_eq!(bytes[6..hl], unkeyed[6..hl], "{what}");
        let (trailer, tag) = Trailer::read(&bytes, hl).unwrap();
        assert_eq!(
            trailer,
            Trailer {
                key_id: GOLDEN_KEY_ID,
                algorithm: g.alg,
                timestamp_ms: TS,
                counter: g.counter,
            },
            "{what}"
        );
        assert_eq!(tag[..], bytes[bytes.len() - TAG_LEN..], "{what}");
        let body = key
            .open(&bytes, hl, g.header.stream, &trailer, &tag, &mut scratch)
            .unwrap();
        assert_eq!(body, &unkeyed[hl..], "open {what}");
        assert_eq!(decode_body(body), Ok(g.body.clone()), "{what}");
        let mut header = g.header;
        header.flags |= FLAG_AUTH;
        let body_bytes = &bytes[hl..bytes.len() - TRAILER_LEN];
        match g.alg {
            Algorithm::HmacSha256 => {
                // In the clear: tools read it without the key (not verified).
                assert_eq!(body_bytes, &unkeyed[hl..], "{what}");
                assert_eq!(
                    decode(&bytes, cluster()),
                    Ok(Datagram {
                        header,
                        body: g.body.clone()
                    }),
                    "{what}"
                );
            }
            Algorithm::Aes256Gcm => {
                assert_ne!(body_bytes, &unkeyed[hl..], "{what}");
                assert!(
                    !bytes.windows(6).any(|w| w == b"user:1"),
                    "an encrypted datagram shows a key"
                );
                assert_eq!(
                    decode(&bytes, cluster()),
                    Err(DecodeError::Invalid("encrypted body")),
                    "{what}"
                );
            }
        }
    }
}

/// The goldens' key id and tags recomputed from the documented derivation
/// (src/wire/auth.rs), with the primitives themselves: HKDF-SHA256,
/// HMAC-SHA256 and XAES-256-GCM. A change of salt, label, nonce or
/// associated data shows here even if seal and open changed alike.
#[test]
fn goldens_follow_the_documented_derivation() {
    use hkdf::Hkdf;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    // Key id: HKDF-SHA256, salt "cachecast key id", the secret, info "id",
    // 4 bytes read as u32 LE.
    let mut id = [0u8; 4];
    Hkdf::<Sha256>::new(Some(b"cachecast key id"), &secret())
        .expand(b"id", &mut id)
        .unwrap();
    assert_eq!(u32::from_le_bytes(id), GOLDEN_KEY_ID);
    // Per-purpose keys: salt "cachecast wire " + version + cluster (u32 LE).
    let mut salt = b"cachecast wire ".to_vec();
    salt.push(VERSION);
    salt.extend_from_slice(&cluster().to_le_bytes());
    let hk = Hkdf::<Sha256>::new(Some(&salt), &secret());
    let mut mac_key = [0u8; 32];
    hk.expand(b"cachecast datagram mac", &mut mac_key).unwrap();
    for g in goldens() {
        let bytes = hex::decode(g.hex).unwrap();
        let n = bytes.len();
        let hl = g.header.to_bytes().len();
        match g.alg {
            Algorithm::HmacSha256 => {
                // The first 16 bytes of HMAC-SHA256 over everything before the tag.
                let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&mac_key).unwrap();
                mac.update(&bytes[..n - TAG_LEN]);
                let full = mac.finalize().into_bytes();
                assert_eq!(full[..TAG_LEN], bytes[n - TAG_LEN..], "{:?}", g.body);
            }
            Algorithm::Aes256Gcm => {
                // XAES-256-GCM (c2sp.org/XAES-256-GCM) under the HKDF key
                // "cachecast datagram xaes-256-gcm", its 24-byte nonce the
                // stream (u64 LE), four zero bytes, the counter (u64 LE)
                // and the timestamp's low 32 bits (LE); recomputed with
                // RustCrypto's AES and AES-GCM (the node uses ring's).
                use aes::cipher::{BlockEncrypt, KeyInit as _};
                use aes_gcm::aead::AeadInPlace as _;
                let mut xaes_key = [0u8; 32];
                hk.expand(b"cachecast datagram xaes-256-gcm", &mut xaes_key)
                    .unwrap();
                let aes = aes::Aes256::new((&xaes_key).into());
                let mut l = aes::Block::default();
                aes.encrypt_block(&mut l);
                let l = u128::from_be_bytes(l.into());
                let k1 = ((l << 1) ^ if l >> 127 == 1 { 0x87 } else { 0 }).to_be_bytes();
                let mut kx = [0u8; 32];
                for (i, half) in kx.chunks_exact_mut(16).enumerate() {
                    let mut m = [0u8; 16];
                    m[..4].copy_from_slice(&[0, i as u8 + 1, b'X', 0]);
                    m[4..12].copy_from_slice(&g.header.stream.to_le_bytes());
                    for (b, k) in m.iter_mut().zip(k1) {
                        *b ^= k;
                    }
                    let mut block = aes::Block::from(m);
                    aes.encrypt_block(&mut block);
                    half.copy_from_slice(&block);
                }
                let mut nonce = [0u8; 12];
                nonce[..8].copy_from_slice(&g.counter.to_le_bytes());
                nonce[8..].copy_from_slice(&(TS as u32).to_le_bytes());
                let mut aad = bytes[..hl].to_vec();
                aad.extend_from_slice(&bytes[n - TRAILER_LEN..n - TAG_LEN]);
                let mut body = bytes[hl..n - TRAILER_LEN].to_vec();
                <aes_gcm::Aes256Gcm as aes_gcm::KeyInit>::new((&kx).into())
                    .decrypt_in_place_detached(
                        (&nonce).into(),
                        &aad,
                        &mut body,
                        aes_gcm::Tag::from_slice(&bytes[n - TAG_LEN..]),
                    )
                    .unwrap();
                assert_eq!(body, plain(&g.header, &g.body)[hl..], "{:?}", g.body);
            }
        }
    }
}

#[test]
fn another_secret_or_cluster_gives_other_keys() {
    let other_secret: Vec<u8> = (1u8..33).collect();
    let other = Key::derive(&other_secret, cluster()).unwrap();
    assert_ne!(other.id(), GOLDEN_KEY_ID);
    // The same secret in another cluster: the same id (it names the
    // secret), unrelated tags.
    let elsewhere = Key::derive(&secret(), cluster_hash("elsewhere")).unwrap();
    assert_eq!(elsewhere.id(), GOLDEN_KEY_ID);
    let mut scratch = Vec::new();
    for g in goldens() {
        let bytes = hex::decode(g.hex).unwrap();
        let hl = g.header.to_bytes().len();
        let (t, tag) = Trailer::read(&bytes, hl).unwrap();
        for key in [&other, &elsewhere] {
            assert_eq!(
                key.open(&bytes, hl, g.header.stream, &t, &tag, &mut scratch),
                Err(AuthError::BadTag)
            );
            assert!(scratch.is_empty(), "a refused body was left in scratch");
        }
    }
    assert_eq!(
        Key::derive(&[7; 31], cluster()).unwrap_err(),
        KeyError::TooShort(31)
    );
}

// ---------------------------------------------------------------------------
// Round trip: any datagram, sealed, opens with its key only, and not once
// any bit of it is flipped or any byte cut.

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1), Just(MAX_SEQ - 1), 1..MAX_SEQ]
}

fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter)
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        proptest::collection::vec(text(16), 1..8).prop_map(|keys| Event::Invalidate { keys }),
        text(16).prop_map(|prefix| Event::InvalidatePrefix { prefix }),
        Just(Event::ClearAll),
        (text(16), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(topic, payload)| Event::Custom { topic, payload }),
    ]
}

fn events() -> impl Strategy<Value = (u64, Vec<Event>)> {
    (seq(), proptest::collection::vec(event(), 1..8))
        .prop_map(|(first, events)| (first.min(MAX_SEQ - events.len() as u64), events))
}

fn ranges() -> impl Strategy<Value = Vec<SeqRange>> {
    let range = (1..MAX_SEQ).prop_flat_map(|start| (Just(start), start + 1..=MAX_SEQ));
    proptest::collection::vec(range, 1..=8)
}

/// Every body kind (tests/wire.rs's strategy, smaller).
fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        events().prop_map(|(first_seq, events)| data(first_seq, events)),
        seq()
            .prop_flat_map(|next| (Just(next), 1..=next, text(16)))
            .prop_map(|(next_seq, oldest, node)| Body::Heartbeat {
                next_seq,
                oldest,
                node
            }),
        text(16).prop_map(|node| Body::Hello { node }),
        (any::<u64>(), ranges()).prop_map(|(stream, ranges)| Body::Nak { stream, ranges }),
        events().prop_map(|(first_seq, events)| Body::Repair {
            first_seq,
            events: Events::new_unchecked(&events)
        }),
        (any::<u64>(), ranges()).prop_map(|(stream, ranges)| Body::Unavailable { stream, ranges }),
        seq().prop_map(|next_seq| Body::Goodbye { next_seq }),
        (seq(), proptest::collection::vec(1..=u64::MAX, 0..=8))
            .prop_map(|(next_seq, members)| Body::AckRequest { next_seq, members }),
        (
            text(16),
            proptest::collection::vec(
                (1..=u64::MAX, seq(), any::<u64>()).prop_map(|(stream, delivered, idle_ms)| {
                    Position {
                        stream,
                        delivered,
                        reset_end: delivered / 2,
                        idle_ms,
                    }
                }),
                0..=8
            ),
            proptest::collection::vec(any::<u32>(), 0..=MAX_REPORT_KEYS)
        )
            .prop_map(|(node, positions, keys)| Body::Report {
                node,
                positions,
                keys
            }),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u32>(), any::<u64>(), any::<bool>()).prop_map(|(cluster, stream, receive_only)| {
        let mut h = Header::new(cluster, stream);
        if receive_only {
            h.flags |= FLAG_RECEIVE_ONLY;
        }
        h
    })
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![Just(Algorithm::HmacSha256), Just(Algorithm::Aes256Gcm)]
}

fn a_secret() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), MIN_SECRET_LEN..=64)
}

/// What a receiver holding `key` makes of `bytes` (cluster `cluster`): the
/// body's bytes if it would accept them, as the node reads a datagram
/// (header, then trailer, then tag).
fn accepted(key: &Key, bytes: &[u8], cluster: u32) -> Option<Vec<u8>> {
    let (header, hl) = decode_header(bytes, cluster).ok()?;
    if !header.authenticated() {
        return None;
    }
    let (trailer, tag) = Trailer::read(bytes, hl).ok()?;
    if trailer.key_id != key.id() {
        return None;
    }
    let mut scratch = Vec::new();
    key.open(bytes, hl, header.stream, &trailer, &tag, &mut scratch)
        .ok()
        .map(<[u8]>::to_vec)
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn sealed_datagrams_open_with_their_key_only(
        header in header(),
        body in body(),
        secret in a_secret(),
        other in a_secret(),
        alg in algorithm(),
        ts in any::<u64>(),
        counter in any::<u64>(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        prop_assume!(other != secret);
        let key = Key::derive(&secret, header.cluster).unwrap();
        let (bytes, hl) = seal(&header, &body, &key, alg, ts, counter);
        let unkeyed = plain(&header, &body);
        prop_assert_eq!(bytes.len(), unkeyed.len() + TRAILER_LEN);
        // The same key: the body back, and its trailer as sealed.
        let opened = accepted(&key, &bytes, header.cluster);
        prop_assert_eq!(opened.as_deref(), Some(&unkeyed[hl..]));
        prop_assert_eq!(decode_body(&unkeyed[hl..]), Ok(body));
        let (t, _) = Trailer::read(&bytes, hl).unwrap();
        prop_assert_eq!(t, Trailer { key_id: key.id(), algorithm: alg, timestamp_ms: ts, counter });
        // Another secret (another id; and its tag fails even when asked
        // with this id), or this secret for another cluster: refused.
        let wrong = Key::derive(&other, header.cluster).unwrap();
        prop_assert!(accepted(&wrong, &bytes, header.cluster).is_none());
        let mut scratch = Vec::new();
        let (t, tag) = Trailer::read(&bytes, hl).unwrap();
        prop_assert_eq!(
            wrong.open(&bytes, hl, header.stream, &t, &tag, &mut scratch),
            Err(AuthError::BadTag)
        );
        let elsewhere = Key::derive(&secret, header.cluster ^ 1).unwrap();
        prop_assert_eq!(
            elsewhere.open(&bytes, hl, header.stream, &t, &tag, &mut scratch),
            Err(AuthError::BadTag)
        );
        // Any single bit flipped, anywhere: refused.
        let mut flipped = bytes.clone();
        flipped[flip.index(bytes.len())] ^= 1 << bit;
        prop_assert!(accepted(&key, &flipped, header.cluster).is_none());
        // Cut anywhere: refused.
        prop_assert!(accepted(&key, &bytes[..cut.index(bytes.len())], header.cluster).is_none());
    }
}

// ---------------------------------------------------------------------------
// A keyed core refuses every truncation and every flipped bit of every
// golden, counts each as one drop, and changes nothing else.

/// A receiver of the goldens' cluster holding the golden key, its clock at
/// the goldens' timestamp, its `Hello` sent.
fn receiver(mode: AuthMode, t: Instant) -> NodeCore {
    let mut cfg = CoreConfig {
        cluster: cluster(),
        stream: 99,
        node_name: "receiver".into(),
        seed: 1,
        ..CoreConfig::default()
    };
    cfg.auth.mode = mode;
    cfg.auth.keyring = Keyring::single(golden_key());
    cfg.auth.wall_clock_ms = TS;
    let mut core = NodeCore::new(cfg, t).unwrap();
    let mut buf = Vec::new();
    while core.poll_transmit(t, &mut buf) {}
    while core.poll_delivery().is_some() {}
    core
}

/// Everything of a core a received datagram could change, but the counts
/// of datagrams received and dropped.
fn state(core: &NodeCore, t: Instant) -> String {
    let mut stats = core.stats_snapshot();
    stats.dropped.clear();
    stats.datagrams_received = 0;
    format!(
        "{:?}",
        (
            stats,
            core.stream_states(),
            core.members(t),
            core.poll_timeout(),
            core.has_pending_output(),
            core.replay_windows(),
        )
    )
}

fn dropped(core: &NodeCore) -> u64 {
    core.stats().dropped.values().sum()
}

fn dropped_as(core: &NodeCore, reason: &str) -> u64 {
    core.stats().dropped.get(reason).copied().unwrap_or(0)
}

#[test]
fn every_truncation_and_flipped_bit_is_refused_without_a_trace() {
    for mode in [AuthMode::Require, AuthMode::Accept] {
        for g in goldens() {
            let bytes = hex::decode(g.hex).unwrap();
            let n = bytes.len();
            let hl = g.header.to_bytes().len();
            let trailer = n - TRAILER_LEN;
            let t = Instant::now();
            let mut r = receiver(mode, t);
            let before = state(&r, t);
            let mut fed = 0;
            let mut feed = |r: &mut NodeCore, m: &[u8], what: &str, reason: Option<&str>| {
                let by_reason = reason.map(|x| dropped_as(r, x));
                r.handle_datagram(t, m);
                fed += 1;
                let ctx = format!("{mode} {:?} {:?}: {what}", g.body.tag(), g.alg);
                assert_eq!(dropped(r), fed, "{ctx} was not dropped: {:?}", r.stats());
                if let (Some(reason), Some(was)) = (reason, by_reason) {
                    assert_eq!(dropped_as(r, reason), was + 1, "{ctx}: not {reason}");
                }
                assert_eq!(state(r, t), before, "{ctx} changed state");
            };
            for len in 0..n {
                feed(&mut r, &bytes[..len], &format!("cut to {len}"), None);
            }
            for i in 0..n {
                for x in [1u8, 2, 4, 8, 16, 32, 64, 128, 0xff] {
                    let mut m = bytes.clone();
                    m[i] ^= x;
                    // The reason, where the order of the checks fixes it.
                    let reason = match i {
                        // The flags' auth bit cleared: no trailer, as far
                        // as the header says.
                        5 if x & FLAG_AUTH != 0 && x & !(FLAG_AUTH | FLAG_RECEIVE_ONLY) == 0 => {
                            (mode == AuthMode::Require).then_some("auth_missing")
                        }
                        // Key id, or algorithm (no other valid value is one
                        // flip away): no such key.
                        i if (trailer..trailer + 5).contains(&i) => Some("auth_unknown_key"),
                        // Body, timestamp, counter, tag: the tag fails.
                        i if i >= hl => Some("auth_bad_tag"),
                        _ => None,
                    };
                    feed(&mut r, &m, &format!("byte {i} ^ {x:#04x}"), reason);
                }
            }
            // The untouched datagram is taken: what was refused was
            // refused for the change.
            r.handle_datagram(t, &bytes);
            assert_eq!(r.stats().auth_verified, 1, "{mode} {:?}", g.body.tag());
            assert_eq!(dropped(&r), fed);
        }
    }
}

/// A refused datagram allocates nothing: every check runs on the received
/// bytes, the stack and buffers reused from earlier datagrams (once each
/// reason has been counted once, and the decryption buffer has grown to a
/// datagram).
#[test]
fn refusing_a_datagram_allocates_nothing() {
    let t = Instant::now();
    let mac = hex::decode(GOLDEN_DATA).unwrap();
    let enc = hex::decode(GOLDEN_DATA_ENCRYPTED).unwrap();
    // A stream not heard yet: its key would be derived, then refused.
    let enc_new = hex::decode(GOLDEN_GOODBYE_ENCRYPTED).unwrap();
    let hl = 20;
    let mut unkeyed = mac[..mac.len() - TRAILER_LEN].to_vec();
    unkeyed[5] = 0;
    let mut unknown_key = mac.clone();
    unknown_key[hl + 41] ^= 1; // the key id's first byte
    let bad_tag = |d: &[u8]| {
        let mut d = d.to_vec();
        let n = d.len();
        d[n - 1] ^= 1;
        d
    };
    let refused: Vec<(&str, Vec<u8>)> = vec![
        ("auth_missing", unkeyed),
        ("auth_unknown_key", unknown_key),
        ("auth_bad_tag", bad_tag(&mac)),
        ("auth_bad_tag", bad_tag(&enc)),
        ("auth_bad_tag", bad_tag(&enc_new)),
        ("auth_bad_tag", mac[..hl + TRAILER_LEN - 1].to_vec()),
        ("auth_replay", mac.clone()),
        ("auth_replay", enc.clone()),
    ];
    let mut r = receiver(AuthMode::Require, t);
    // Taken once: the windows exist, the rest are replays.
    r.handle_datagram(t, &mac);
    r.handle_datagram(t, &enc);
    assert_eq!(r.stats().auth_verified, 2);
    // A receiver whose clock is 10 minutes on: the goldens are stale.
    let mut late = {
        let mut cfg = CoreConfig {
            cluster: cluster(),
            stream: 98,
            seed: 2,
            ..CoreConfig::default()
        };
        cfg.auth.mode = AuthMode::Require;
        cfg.auth.keyring = Keyring::single(golden_key());
        cfg.auth.wall_clock_ms = TS + Duration::from_secs(600).as_millis() as u64;
        NodeCore::new(cfg, t).unwrap()
    };
    for round in 0..3 {
        let ((), bytes) = alloc::allocated_by(|| {
            for (_, d) in &refused {
                r.handle_datagram(t, d);
            }
            late.handle_datagram(t, &mac);
            late.handle_datagram(t, &enc);
        });
        if round == 0 {
            // The first drop of each reason makes its counter.
            assert!(bytes > 0, "the allocator counts nothing");
        } else {
            assert_eq!(bytes, 0, "refusing datagrams allocated {bytes} bytes");
        }
    }
    for (reason, _) in &refused {
        let n = refused.iter().filter(|(x, _)| x == reason).count() as u64;
        assert_eq!(dropped_as(&r, reason), 3 * n, "{reason}");
    }
    assert_eq!(dropped_as(&late, "auth_stale"), 6);
    assert_eq!(r.stats().auth_verified, 2);
}

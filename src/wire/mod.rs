//! Wire format, version 1: every byte cachecast puts on the network.
//!
//! # The format
//!
//! A datagram is a [`Datagram`]: a [`Header`] then one [`Body`], in
//! bincode 2's format with its standard config (little-endian, variable-length
//! integers). The serde derives of [`Datagram`], [`Header`], [`Body`] and
//! [`Event`] are the format's definition: the bytes of any datagram are what
//! bincode writes for them, and golden-byte tests pin those bytes.
//!
//! - An integer (a count, a length, a sequence number) is a varint: below
//!   251 one byte; else a marker (251, 252, 253) and a `u16`, `u32` or `u64`,
//!   little-endian.
//! - An enum value is its variant's position as a varint (its *tag*,
//!   [`BodyTag`] and [`EventTag`]), then the variant's fields in order.
//! - A string or byte string is its length, then its bytes; a `Vec` is its
//!   length, then its elements; `[u8; 4]` and `u8` are raw bytes.
//!
//! ```text
//! Header  magic "CCST", version 1, flags (bit 0 auth, bit 1 receive-only), cluster (u32), stream (u64)
//! Body    Data { first_seq, events: [Event] } | Heartbeat { next_seq, oldest, node }
//!         | Hello { node } | Nak { stream, ranges: [(u64, u64)] }
//!         | Repair { first_seq, events: [Event] } | Unavailable { stream, ranges }
//!         | Goodbye { next_seq } | AckRequest { next_seq, members: [u64] }
//!         | Report { node, positions: [Position], keys: [u32] }
//! Position { stream, delivered, reset_end, idle_ms }
//! Event   Invalidate { keys: [String] } | InvalidatePrefix { prefix }
//!         | ClearAll | Custom { topic, payload: [u8] }
//! Trailer (flag bit 0 only) key id u32, algorithm u8, timestamp u64, counter u64, tag [u8; 16]
//! ```
//!
//! The trailer is fixed-width and little-endian, read from the end of the
//! datagram; its layout and the keys are described in `auth`.
//!
//! # Two paths, one definition
//!
//! The header and the control bodies are encoded and decoded by bincode
//! through those derives. The events of `Data` and `Repair` are written and
//! read by hand, in the same format ([`Events`]), because they are the hot
//! path: a received event is checked once, in place, and then shared, never
//! copied into an owned value unless asked for. Each tag is named once: the
//! enums and their tag enums come from one list of variants (`tagged!`), and
//! the hand path writes and matches tags only through [`BodyTag`] and
//! [`EventTag`]. Tests encode arbitrary datagrams both ways and compare the
//! bytes, and decode arbitrary and mutated bytes both ways and compare the
//! results.
//!
//! # Hostile input
//!
//! Decoding is hostile-input safe: the header is checked (magic, version,
//! flags, cluster) before the body is decoded, trailing bytes are rejected,
//! and every count and length is checked against the limits below before it
//! is used. Nothing here panics on received bytes. Allocation is bounded: a
//! received run of events is copied once (at most a datagram) with the length
//! of each; strings of control bodies are bounded by bincode's size limit
//! ([`MAX_DATAGRAM`] per datagram); sequences decoded through serde (ranges,
//! and the definition's events, keys and payloads) reject a claimed length
//! over their limit before allocating.
//!
//! # Layout
//!
//! `header` (the fixed part), `auth` (the trailer and the keys), `body` (the bodies, encode and decode),
//! `event` (owned events, their limits), `run` (the hand-written event run:
//! [`Events`], [`EncodedEvent`], [`EventRef`], the walk that checks a received
//! run, and the one `unsafe` shortcut that relies on it), `batch`
//! ([`EventBatch`]), `varint` and `bounded` (shared pieces).
//!
//! This module may not know anything about protocol state: it only turns
//! values into bytes and back.

/// Declares an enum of the format and its tags from one list of variants:
/// the enum itself (its serde derive writes a variant's position as its
/// tag) and `$Tag`, a fieldless enum of the same variants in the same order,
/// so that `$Tag::X as u32` is the tag serde writes for `X`. The hand path
/// reads and writes tags only through `$Tag`: each number exists once, as a
/// position in this list.
macro_rules! tagged {
    (
        $(#[$meta:meta])*
        pub enum $Name:ident, tags $Tag:ident {
            $(
                $(#[$vmeta:meta])*
                $Variant:ident $({
                    $( $(#[$fmeta:meta])* $field:ident : $fty:ty ),* $(,)?
                })?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub enum $Name {
            $(
                $(#[$vmeta])*
                $Variant $({ $( $(#[$fmeta])* $field : $fty ),* })?
            ),*
        }

        #[doc = concat!(
            "The tag of each [`", stringify!($Name), "`] variant on the wire: its ",
            "position, which bincode writes (as a varint) before the variant's fields."
        )]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $Tag {
            $(
                #[doc = concat!("[`", stringify!($Name), "::", stringify!($Variant), "`]")]
                $Variant,
            )*
        }

        // Every tag is a one-byte varint, so the hand path writes it as a byte.
        const _: () = assert!($Tag::ALL.len() <= 251);

        impl $Tag {
            /// Every tag, in wire order: `ALL[i] as usize == i`.
            pub const ALL: &'static [$Tag] = &[$($Tag::$Variant),*];

            /// The tag read from the wire, if it names a variant.
            #[inline]
            pub fn from_u32(tag: u32) -> Option<$Tag> {
                $(
                    if tag == $Tag::$Variant as u32 {
                        return Some($Tag::$Variant);
                    }
                )*
                None
            }
        }

        impl $Name {
            /// This value's tag on the wire.
            pub fn tag(&self) -> $Tag {
                match self {
                    $( $Name::$Variant { .. } => $Tag::$Variant ),*
                }
            }
        }
    };
}

mod auth;
mod batch;
mod body;
mod bounded;
mod event;
mod header;
mod run;
mod varint;

pub use auth::{
    key_id, Algorithm, AuthError, Key, KeyError, Keyring, StreamKey, Trailer, MAX_HELD_KEYS,
    MAX_SECRET_LEN, MIN_SECRET_LEN, TAG_LEN, TRAILER_LEN,
};
pub use batch::{EventBatch, MAX_BATCH};
pub use body::{decode, decode_body, encode, Body, BodyTag, Datagram, Position};
pub use event::{check_event, check_size, pack_keys, Event, EventError, EventTag};
pub use header::{
    cluster_hash, decode_header, Header, FLAG_AUTH, FLAG_RECEIVE_ONLY, MAGIC, VERSION,
};
pub(crate) use run::RunBuf;
pub use run::{
    decode_event, encode_event, encoded_event_len, EncodedEvent, EventRef, EventViews, Events,
    EventsIter, Keys,
};

/// Largest datagram accepted on receive (the UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_507;
/// Events in one `Data` or `Repair` datagram.
pub const MAX_EVENTS: usize = 1024;
/// Keys in one `Invalidate` event.
pub const MAX_KEYS: usize = 1024;
/// Bytes in one key, prefix or topic.
pub const MAX_KEY_LEN: usize = 1024;
/// Bytes in a node name.
pub const MAX_NODE_NAME: usize = 64;
/// Ranges in one `Nak` or `Unavailable`.
pub const MAX_RANGES: usize = 64;
/// Members named in one `AckRequest`.
pub const MAX_ACK_MEMBERS: usize = 128;
/// Positions in one `Report`.
pub const MAX_POSITIONS: usize = 256;
/// Key ids in one `Report`.
pub const MAX_REPORT_KEYS: usize = MAX_HELD_KEYS;
/// Sequence numbers at or above this are rejected (they never occur: a
/// stream would need centuries to reach it), so `seq + 1` never overflows.
pub const MAX_SEQ: u64 = 1 << 62;
/// Upper bound on the bytes a `Data`/`Repair` datagram needs besides its
/// events (header, body tag, `first_seq`, event count).
pub const DATA_OVERHEAD: usize = 40;

/// A half-open range of sequence numbers `start..end`.
pub type SeqRange = (u64, u64);

/// Why a received datagram was dropped. Every variant is counted in
/// `Stats`; none of them is a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is over the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    /// Not a cachecast datagram at all.
    #[error("bad magic: not a cachecast datagram")]
    BadMagic,
    /// A cachecast datagram of a version this build does not speak.
    #[error("wire version {0} is not supported (this build speaks {VERSION})")]
    BadVersion(u8),
    /// Another cluster on the same group and port.
    #[error("datagram of another cluster ({0:#010x})")]
    WrongCluster(u32),
    /// A reserved flag bit is set.
    #[error("flags {0:#04x} not supported")]
    BadFlags(u8),
    /// The bytes do not decode as a header and body.
    #[error("malformed datagram: {0}")]
    Malformed(String),
    /// Bytes left over after the body.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// A count or a length is over its limit, or a value is out of range.
    #[error("invalid datagram: {0}")]
    Invalid(&'static str),
}

impl DecodeError {
    /// A short, stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::WrongCluster(_) => "wrong_cluster",
            DecodeError::BadFlags(_) => "bad_flags",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

// Reasons for counts over their limits: the same whether read by hand or
// through serde's bounded sequences (`malformed` maps them back).
const TOO_MANY_EVENTS: &str = "too many events";
const TOO_MANY_KEYS: &str = "too many keys";
const BAD_RANGE_COUNT: &str = "bad range count";
const PAYLOAD_TOO_LONG: &str = "payload too long";
const TOO_MANY_MEMBERS: &str = "too many members";
const TOO_MANY_POSITIONS: &str = "too many positions";
const TOO_MANY_KEY_IDS: &str = "too many key ids";

/// The bincode config of the format, with the size limit that bounds every
/// length-prefixed allocation while decoding.
fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DATAGRAM>()
}

/// Appends `value`, encoded with bincode.
fn put(buf: &mut Vec<u8>, value: &impl serde::Serialize) {
    // Writing into a Vec cannot fail, and every value here is encodable.
    bincode::serde::encode_into_std_write(value, buf, config())
        .expect("encoding into a Vec cannot fail");
}

/// Maps a bincode error to a [`DecodeError`]: a bounded sequence over its
/// limit is `Invalid` with the same reason the hand path gives, anything
/// else is `Malformed`.
fn malformed(e: bincode::error::DecodeError) -> DecodeError {
    if let bincode::error::DecodeError::OtherString(msg) = &e {
        for reason in [
            TOO_MANY_EVENTS,
            TOO_MANY_KEYS,
            BAD_RANGE_COUNT,
            PAYLOAD_TOO_LONG,
            TOO_MANY_MEMBERS,
            TOO_MANY_POSITIONS,
            TOO_MANY_KEY_IDS,
        ] {
            if msg == reason {
                return DecodeError::Invalid(reason);
            }
        }
    }
    DecodeError::Malformed(e.to_string())
}

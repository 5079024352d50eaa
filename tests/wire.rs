//! Wire format v1: golden bytes, round trips, rejections and hostile input.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use cachecast::wire::*;
use proptest::prelude::*;

// ---------------------------------------------------------------------------
// Allocation counting: this test binary counts the bytes each thread asks the
// allocator for while `allocated_by` runs, so hostile-input tests can bound it.

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATED.try_with(|n| n.set(n.get() + bytes));
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns its result with the bytes it allocated on this thread
/// (every allocation and reallocation counted in full, frees not subtracted).
fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let (r, bytes, _) = counted(f);
    (r, bytes)
}

/// Runs `f` and returns its result with the number of allocations (and
/// reallocations) it made on this thread.
fn allocations_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let (r, _, n) = counted(f);
    (r, n)
}

fn counted<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
    ALLOCATED.with(|n| n.set(0));
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    let r = f();
    COUNTING.with(|on| on.set(false));
    (
        r,
        ALLOCATED.with(|n| n.get()),
        ALLOCATIONS.with(|n| n.get()),
    )
}

// ---------------------------------------------------------------------------
// Helpers

fn cluster() -> u32 {
    cluster_hash("golden")
}

fn enc(header: &Header, body: &Body) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(header, body, &mut buf);
    buf
}

fn hdr() -> Header {
    Header::new(cluster(), 7)
}

/// Encodes `body` under a valid header and decodes it.
fn roundtrip(body: Body) -> Result<Datagram, DecodeError> {
    decode(&enc(&hdr(), &body), cluster())
}

fn data(first_seq: u64, events: Vec<Event>) -> Body {
    Body::Data {
        first_seq,
        events: Events::new_unchecked(&events),
    }
}

fn keys(n: usize) -> Event {
    Event::Invalidate {
        keys: (0..n).map(|i| format!("k{i}")).collect(),
    }
}

fn invalid(reason: &'static str) -> Result<Datagram, DecodeError> {
    Err(DecodeError::Invalid(reason))
}

// ---------------------------------------------------------------------------
// Golden bytes. Layout of every header: "CCST" (43435354), version 01,
// flags 00, cluster as a bincode varint (fc + u32 LE: cluster_hash("golden")
// is 0x1705ad44), stream as a varint (fd + u64 LE, or one byte below 251).
// Then the body's variant index (one byte) and its fields in order.

const GOLDEN_DATA: &str = concat!(
    "434353540100fc44ad0517fd0807060504030201", // header, stream 0x0102030405060708
    "00",                                       // Data
    "01",                                       // first_seq 1
    "04",                                       // 4 events
    "000206757365723a3106757365723a32",         // Invalidate ["user:1", "user:2"]
    "010873657373696f6e3a",                     // InvalidatePrefix "session:"
    "02",                                       // ClearAll
    "030672656c6f616402dead",                   // Custom "reload" [de ad]
);
const GOLDEN_HEARTBEAT: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "01",                       // Heartbeat
    "fb2c01",                   // next_seq 300 (fb + u16 LE)
    "fa",                       // oldest 250 (one byte)
    "066e6f64652d61",           // node "node-a"
);
const GOLDEN_HELLO: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "02",                       // Hello
    "066e6f64652d62",           // node "node-b"
);
const GOLDEN_NAK: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "03",                       // Nak
    "2a",                       // stream 42
    "0205070a0b",               // ranges [(5, 7), (10, 11)]
);
const GOLDEN_REPAIR: &str = concat!(
    "434353540100fc44ad0517fd0807060504030201", // header, stream 0x0102030405060708
    "04",                                       // Repair
    "fc70110100",                               // first_seq 70000 (fc + u32 LE)
    "01",                                       // 1 event
    "0001016b",                                 // Invalidate ["k"]
);
const GOLDEN_UNAVAILABLE: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "05",                       // Unavailable
    "fdffffffffffffffff",       // stream u64::MAX (fd + u64 LE)
    "010105",                   // ranges [(1, 5)]
);
const GOLDEN_GOODBYE: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "06",                       // Goodbye
    "fd0000000000010000",       // next_seq 1 << 40
);

const GOLDEN_ACK_REQUEST: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "07",                       // AckRequest
    "fb2c01",                   // next_seq 300 (fb + u16 LE)
    "02",                       // members: 2
    "09",                       // stream 9
    "fd0000000000010000",       // stream 1 << 40
);
const GOLDEN_REPORT: &str = concat!(
    "434353540100fc44ad051707", // header, stream 7
    "08",                       // Report
    "066e6f64652d63",           // node "node-c"
    "02",                       // positions: 2
    "2a070000",                 // stream 42, delivered 7, reset_end 0, idle_ms 0
    "fdffffffffffffffff",       // stream u64::MAX,
    "fd0000000000010000",       //   delivered 1 << 40,
    "05",                       //   reset_end 5,
    "fbe803",                   //   idle_ms 1000 (fb + u16 LE)
    "02",                       // keys: 2
    "fc7e0a1c5d",               //   0x5d1c0a7e (fc + u32 LE)
    "01",                       //   1
);

fn goldens() -> Vec<(Header, Body, &'static str)> {
    let big = Header::new(cluster(), 0x0102_0304_0506_0708);
    vec![
        (
            big,
            data(
                1,
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
                ],
            ),
            GOLDEN_DATA,
        ),
        (
            hdr(),
            Body::Heartbeat {
                next_seq: 300,
                oldest: 250,
                node: "node-a".into(),
            },
            GOLDEN_HEARTBEAT,
        ),
        (
            hdr(),
            Body::Hello {
                node: "node-b".into(),
            },
            GOLDEN_HELLO,
        ),
        (
            hdr(),
            Body::Nak {
                stream: 42,
                ranges: vec![(5, 7), (10, 11)],
            },
            GOLDEN_NAK,
        ),
        (
            big,
            Body::Repair {
                first_seq: 70_000,
                events: Events::new_unchecked(&[Event::Invalidate {
                    keys: vec!["k".into()],
                }]),
            },
            GOLDEN_REPAIR,
        ),
        (
            hdr(),
            Body::Unavailable {
                stream: u64::MAX,
                ranges: vec![(1, 5)],
            },
            GOLDEN_UNAVAILABLE,
        ),
        (hdr(), Body::Goodbye { next_seq: 1 << 40 }, GOLDEN_GOODBYE),
        (
            hdr(),
            Body::AckRequest {
                next_seq: 300,
                members: vec![9, 1 << 40],
            },
            GOLDEN_ACK_REQUEST,
        ),
        (
            hdr(),
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
                keys: vec![0x5d1c_0a7e, 1],
            },
            GOLDEN_REPORT,
        ),
    ]
}

#[test]
fn golden_bytes() {
    for (header, body, golden) in goldens() {
        let bytes = hex::decode(golden).unwrap();
        assert_eq!(hex::encode(enc(&header, &body)), golden, "encode {body:?}");
        assert_eq!(
            decode(&bytes, cluster()),
            Ok(Datagram { header, body }),
            "decode {golden}"
        );
    }
}

/// Events are written by hand (for the zero-copy receive path): they must
/// be exactly the bytes bincode's serde encoding gives.
fn assert_bincode_bytes(event: &Event) {
    let bincode = bincode::serde::encode_to_vec(event, bincode::config::standard()).unwrap();
    let ours = EncodedEvent::new(event).unwrap();
    assert_eq!(ours.as_bytes(), &bincode[..], "{event:?}");
    assert_eq!(encoded_event_len(event), bincode.len(), "{event:?}");
}

#[test]
fn events_are_bincodes_bytes_at_every_varint_width() {
    for len in [0, 1, 250, 251, MAX_DATAGRAM] {
        assert_bincode_bytes(&Event::Custom {
            topic: "t".into(),
            payload: vec![7; len],
        });
    }
    for n in [1, 250, 251, MAX_KEYS] {
        assert_bincode_bytes(&keys(n));
    }
}

// ---------------------------------------------------------------------------
// One codec: the hand-written path (the node's) against the definition (the
// serde derives of `Datagram`, `Header`, `Body` and `Event`, through bincode).

/// bincode's config for the format: standard, with the size limit.
fn definition() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DATAGRAM>()
}

/// Encodes a datagram through the definition.
fn enc_by_definition(header: &Header, body: &Body) -> Vec<u8> {
    let datagram = Datagram {
        header: *header,
        body: body.clone(),
    };
    bincode::serde::encode_to_vec(&datagram, definition()).unwrap()
}

/// Both paths encode `body` to the same bytes.
fn assert_same_bytes(header: &Header, body: &Body) -> Vec<u8> {
    let hand = enc(header, body);
    assert_eq!(
        hex::encode(&hand),
        hex::encode(enc_by_definition(header, body)),
        "{body:?}"
    );
    hand
}

/// Decodes `bytes` through both paths and checks that they agree: what the
/// node decodes, the definition decodes to the same datagram from the same
/// bytes; what the definition decodes whole, the node either decodes the
/// same or refuses for a check the definition does not make (the header's
/// values, the limits). Returns the node's result.
fn assert_paths_agree(bytes: &[u8], cluster: u32) -> Result<Datagram, DecodeError> {
    let hand = decode(bytes, cluster);
    let def = bincode::serde::decode_from_slice::<Datagram, _>(bytes, definition());
    let at = hex::encode(bytes);
    match (&hand, &def) {
        (Ok(d), Ok((d2, used))) => {
            assert_eq!(d, d2, "{at}");
            assert_eq!(*used, bytes.len(), "{at}");
        }
        (Ok(d), Err(e)) => panic!("{at}: the node decoded {d:?}, the definition refused: {e}"),
        (Err(DecodeError::TrailingBytes(n)), Ok((_, used))) => {
            assert_eq!(used + n, bytes.len(), "{at}")
        }
        (Err(e), Ok((d2, _))) => assert!(
            matches!(
                e,
                DecodeError::Invalid(_)
                    | DecodeError::BadMagic
                    | DecodeError::BadVersion(_)
                    | DecodeError::BadFlags(_)
                    | DecodeError::WrongCluster(_)
            ),
            "{at}: the definition decoded {d2:?}, the node refused: {e:?}"
        ),
        (Err(_), Err(_)) => {}
    }
    hand
}

/// The same for one event: [`decode_event`] (the walk that checks received
/// events) against [`Event`]'s derive.
fn assert_event_paths_agree(bytes: &[u8]) {
    let hand = decode_event(bytes);
    let def = bincode::serde::decode_from_slice::<Event, _>(bytes, definition());
    let at = hex::encode(bytes);
    match (&hand, &def) {
        (Ok(e), Ok((e2, used))) => {
            assert_eq!(e, e2, "{at}");
            assert_eq!(*used, bytes.len(), "{at}");
        }
        (Ok(e), Err(err)) => panic!("{at}: the walk decoded {e:?}, the definition refused: {err}"),
        (Err(DecodeError::TrailingBytes(n)), Ok((_, used))) => {
            assert_eq!(used + n, bytes.len(), "{at}")
        }
        (Err(err), Ok((e2, _))) => assert!(
            matches!(err, DecodeError::Invalid(_)),
            "{at}: the definition decoded {e2:?}, the walk refused: {err:?}"
        ),
        (Err(_), Err(_)) => {}
    }
}

/// Reads a decoded run back every way there is: owned, in place, taken
/// apart at every point, and each event alone through both decoders. A
/// wrong event boundary anywhere fails here.
fn assert_run_reads_back(run: &Events) {
    let owned = run.to_vec();
    assert_eq!(owned.len(), run.len());
    let views: Vec<Event> = run.views().map(|v| v.to_event()).collect();
    assert_eq!(views, owned, "read in place");
    for (e, o) in run.iter().zip(&owned) {
        assert_eq!(&e.to_event(), o);
        assert_eq!(decode_event(e.as_bytes()).as_ref(), Ok(o));
        let (def, used): (Event, usize) =
            bincode::serde::decode_from_slice(e.as_bytes(), definition()).unwrap();
        assert_eq!((&def, used), (o, e.as_bytes().len()));
    }
    for k in 0..=run.len() {
        let mut rest = run.clone();
        rest.skip(k);
        assert_eq!(rest.to_vec(), owned[k..], "skip {k}");
        if let Some(first) = rest.pop_front() {
            assert_eq!(first, owned[k]);
            assert_eq!(
                rest.views().map(|v| v.to_event()).collect::<Vec<_>>(),
                owned[k + 1..]
            );
        }
    }
}

/// The datagram's run, if it has one.
fn run_of(d: &Datagram) -> Option<&Events> {
    match &d.body {
        Body::Data { events, .. } | Body::Repair { events, .. } => Some(events),
        _ => None,
    }
}

/// Applies up to a few edits (overwrite, insert, truncate) to `bytes`.
fn mutate(bytes: &mut Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) {
    for (at, byte, op) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at.index(bytes.len());
        match op {
            0 => bytes[i] = *byte,
            1 => bytes.insert(i, *byte),
            _ => bytes.truncate(i),
        }
    }
}

/// One sample event of every variant.
fn one_of_each_event() -> Vec<Event> {
    vec![
        keys(2),
        Event::InvalidatePrefix { prefix: "p".into() },
        Event::ClearAll,
        Event::Custom {
            topic: "t".into(),
            payload: vec![1, 2],
        },
    ]
}

#[test]
fn goldens_are_the_definitions_bytes() {
    for (header, body, golden) in goldens() {
        let bytes = hex::decode(golden).unwrap();
        assert_eq!(hex::encode(enc_by_definition(&header, &body)), golden);
        let (d, used): (Datagram, usize) =
            bincode::serde::decode_from_slice(&bytes, definition()).unwrap();
        assert_eq!((d, used), (Datagram { header, body }, bytes.len()));
        assert_paths_agree(&bytes, cluster()).unwrap();
    }
}

/// Every tag is its variant's position, which is what bincode writes before
/// the variant's fields: for bodies and for events, in both paths.
#[test]
fn tags_are_the_positions_bincode_writes() {
    for (i, tag) in BodyTag::ALL.iter().enumerate() {
        assert_eq!(*tag as usize, i);
        assert_eq!(BodyTag::from_u32(i as u32), Some(*tag));
    }
    assert_eq!(BodyTag::from_u32(BodyTag::ALL.len() as u32), None);
    for (i, tag) in EventTag::ALL.iter().enumerate() {
        assert_eq!(*tag as usize, i);
        assert_eq!(EventTag::from_u32(i as u32), Some(*tag));
    }
    assert_eq!(EventTag::from_u32(EventTag::ALL.len() as u32), None);

    let header_len = Header::new(cluster(), 7).to_bytes().len();
    let mut seen = Vec::new();
    for (header, body, _) in goldens() {
        let at = header.to_bytes().len();
        let hand = assert_same_bytes(&header, &body);
        assert_eq!(hand[at], body.tag() as u8, "{body:?}");
        seen.push(body.tag());
    }
    assert_eq!(seen, BodyTag::ALL, "the goldens cover every body, in order");
    let mut seen = Vec::new();
    for event in one_of_each_event() {
        let def = bincode::serde::encode_to_vec(&event, definition()).unwrap();
        assert_eq!(def[0], event.tag() as u8);
        assert_eq!(EncodedEvent::new(&event).unwrap().as_bytes()[0], def[0]);
        seen.push(event.tag());
    }
    assert_eq!(seen, EventTag::ALL, "one event of every variant, in order");
    // A tag past the last is refused by both paths.
    let mut bytes = enc(&hdr(), &Body::Goodbye { next_seq: 1 });
    bytes[header_len] = BodyTag::ALL.len() as u8;
    assert!(matches!(
        assert_paths_agree(&bytes, cluster()),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode_event(&[EventTag::ALL.len() as u8]),
        Err(DecodeError::Malformed(_))
    ));
    assert_event_paths_agree(&[EventTag::ALL.len() as u8]);
}

/// Every way to write a varint (each width, each marker byte, canonical or
/// not), at every place the node reads one by hand in a `Data` body: both
/// paths read it alike.
#[test]
fn every_varint_form_reads_alike() {
    // A Data body with one Invalidate of one key "k": the varints are
    // first_seq (1), the event count (1), the key count (1) and the key's
    // length (1). `{}` marks the one under test.
    let places = [
        "00 {} 01 00 01 01 6b",
        "00 01 {} 00 01 01 6b",
        "00 01 01 00 {} 01 6b",
        "00 01 01 00 01 {} 6b",
    ];
    let mut forms: Vec<String> = (0..=255u8).map(|b| format!("{b:02x}")).collect();
    for marker in 251..=255u8 {
        for width in [2, 4, 8] {
            let mut one = vec![0u8; width];
            one[0] = 1;
            forms.push(format!("{marker:02x}{}", hex::encode(&one)));
        }
    }
    for place in places {
        for form in &forms {
            let bytes = claim(&place.replace("{}", form));
            let result = assert_paths_agree(&bytes, cluster());
            // 1 in any width decodes (neither path insists on the shortest
            // form), and so the event reads back.
            if ["01", "fb0100", "fc01000000", "fd0100000000000000"].contains(&form.as_str()) {
                let d = result.unwrap_or_else(|e| panic!("{place} with {form}: {e:?}"));
                let k = Event::Invalidate {
                    keys: vec!["k".into()],
                };
                assert_eq!(run_of(&d).unwrap().to_vec(), vec![k]);
            }
        }
    }
}

/// The definition's own decoding is as bounded as the node's: a claimed
/// count over its limit is refused before anything is allocated for it.
#[test]
fn the_definition_decodes_hostile_claims_cheaply() {
    let by_definition = |bytes: &[u8]| {
        allocated_by(|| bincode::serde::decode_from_slice::<Datagram, _>(bytes, definition()))
    };
    for body in [
        format!("0001{HUGE}"),          // Data claiming u64::MAX events
        format!("0401{HUGE}"),          // Repair
        "0001fb0104".to_string(),       // MAX_EVENTS + 1
        format!("000101 00{HUGE}"),     // an Invalidate claiming u64::MAX keys
        format!("000101 0300{HUGE}"),   // a Custom claiming u64::MAX payload bytes
        format!("0301{HUGE}"),          // Nak claiming u64::MAX ranges
        "0001fb0004".to_string(),       // MAX_EVENTS, no bytes behind
        "00010100fb0004".to_string(),   // MAX_KEYS, no bytes behind
        "0001010300fbe3ff".to_string(), // MAX_DATAGRAM payload, no bytes behind
    ] {
        let bytes = claim(&body);
        let (result, allocated) = by_definition(&bytes);
        assert!(result.is_err(), "{body}");
        assert!(allocated <= SMALL, "{body}: allocated {allocated} bytes");
        assert!(decode(&bytes, cluster()).is_err(), "{body}");
    }
}

/// A received run knows where each event ends; taking events off it, by
/// one or by many, and reading a clone, all agree with the events sent.
#[test]
fn a_received_run_is_taken_apart_in_order_and_clones_are_independent() {
    let events: Vec<Event> = (0..10)
        .map(|i| match i % 3 {
            0 => Event::Invalidate {
                keys: (0..=i).map(|k| format!("k{k}")).collect(),
            },
            1 => Event::InvalidatePrefix {
                prefix: "p".repeat(i),
            },
            _ => Event::Custom {
                topic: "t".into(),
                payload: vec![i as u8; 300 * i],
            },
        })
        .collect();
    let bytes = enc(&hdr(), &data(1, events.clone()));
    let Body::Data {
        events: mut run, ..
    } = decode(&bytes, cluster()).unwrap().body
    else {
        panic!("not data")
    };
    let whole = run.clone();
    let views: Vec<Event> = run.views().map(|v| v.to_event()).collect();
    assert_eq!(views, events, "read in place");
    assert_eq!(run.pop_front().unwrap(), events[0]);
    assert_eq!(run.pop_front().unwrap(), events[1]);
    // A clone taken part way goes on by itself.
    let mut part = run.clone();
    part.skip(1);
    assert_eq!(part.to_vec(), events[3..]);
    assert_eq!(
        part.views().map(|v| v.to_event()).collect::<Vec<_>>(),
        events[3..]
    );
    run.skip(3);
    assert_eq!(run.len(), 5);
    assert_eq!(run.iter().collect::<Vec<_>>(), events[5..]);
    assert_eq!(run.pop_front().unwrap(), events[5]);
    run.skip(100);
    assert!(run.is_empty() && run.pop_front().is_none());
    assert_eq!(whole.to_vec(), events);
    // A body larger than any datagram is refused before its events are
    // read (so no event's length is ever beyond what a datagram holds).
    let big = Event::Invalidate {
        keys: (0..100).map(|i| format!("{i:0>1000}")).collect(),
    };
    let mut body = Vec::new();
    encode(&hdr(), &data(1, vec![big, keys(1)]), &mut body);
    let header_len = Header::new(cluster(), 7).to_bytes().len();
    assert!(matches!(
        decode_body(&body[header_len..]),
        Err(DecodeError::TooLarge(n)) if n > MAX_DATAGRAM
    ));
    // The same, sent: a run built here walks its events instead.
    let mut built = Events::new(&events).unwrap();
    built.skip(5);
    assert_eq!(built.to_vec(), events[5..]);
}

#[test]
fn received_events_are_read_without_allocating_per_event() {
    let events: Vec<Event> = (0..200)
        .map(|i| Event::Invalidate {
            keys: vec![format!("user:{i:027}")],
        })
        .collect();
    let bytes = enc(&hdr(), &data(1, events.clone()));
    // Two allocations for the whole run of events, whatever their number:
    // its bytes, and each event's length (so reading needs no second walk).
    let (d, n) = allocations_by(|| decode(&bytes, cluster()).unwrap());
    assert_eq!(n, 2, "allocations decoding 200 events");
    let Body::Data { events: got, .. } = d.body else {
        panic!("{:?}", d.body)
    };
    // Reading every key in place allocates nothing per event (sharing the
    // run's bytes may allocate its reference count, once).
    let (total, n) = allocations_by(|| {
        got.iter()
            .map(|e| match e.view() {
                EventRef::Invalidate { keys } => keys.map(str::len).sum::<usize>(),
                _ => 0,
            })
            .sum::<usize>()
    });
    assert_eq!(total, 200 * 32);
    assert!(n <= 1, "{n} allocations reading 200 events");
    assert_eq!(got.to_vec(), events);
    assert!(got.iter().zip(&events).all(|(a, b)| a == *b));
}

#[test]
fn a_batch_encodes_what_events_do_without_allocating_per_event() {
    let names: Vec<String> = (0..100).map(|i| format!("user:{i:027}")).collect();
    let events: Vec<Event> = (names.iter())
        .map(|k| Event::Invalidate {
            keys: vec![k.clone()],
        })
        .collect();
    let mut batch = EventBatch::with_capacity(64 * 1024);
    let (r, n) = allocations_by(|| names.iter().try_for_each(|k| batch.invalidate(&[k])));
    assert_eq!((r, n), (Ok(()), 0));
    batch.push(&Event::ClearAll).unwrap();
    assert_eq!(batch.len(), 101);
    assert_eq!(batch.largest(), encoded_event_len(&events[0]));
    let mut all = events.clone();
    all.push(Event::ClearAll);
    assert_eq!(batch.take(), Events::new(&all).unwrap());
    assert!(batch.is_empty());
    // The limits, as for any event.
    assert_eq!(batch.invalidate(&[]), Err(EventError::NoKeys));
    let many = vec!["k"; MAX_KEYS + 1];
    assert_eq!(
        batch.invalidate(&many),
        Err(EventError::TooManyKeys(MAX_KEYS + 1))
    );
    let long = "x".repeat(MAX_KEY_LEN + 1);
    assert_eq!(
        batch.invalidate(&["ok", &long]),
        Err(EventError::KeyTooLong(MAX_KEY_LEN + 1))
    );
    assert_eq!(batch.push(&keys(0)), Err(EventError::NoKeys));
    let huge = Event::Custom {
        topic: "t".into(),
        payload: vec![0; MAX_DATAGRAM + 1],
    };
    assert!(matches!(
        batch.push(&huge),
        Err(EventError::TooLarge { .. })
    ));
    assert!(batch.is_empty(), "refused events are not added");
}

#[test]
fn golden_cluster_hash() {
    // FNV-1a 32-bit reference vectors.
    assert_eq!(cluster_hash(""), 0x811c_9dc5);
    assert_eq!(cluster_hash("a"), 0xe40c_292c);
    assert_eq!(cluster_hash("foobar"), 0xbf9c_f968);
    assert_eq!(cluster_hash("golden"), 0x1705_ad44);
}

#[test]
fn encode_replaces_buffer_contents() {
    let mut buf = vec![1, 2, 3];
    encode(&hdr(), &Body::Goodbye { next_seq: 1 << 40 }, &mut buf);
    assert_eq!(hex::encode(&buf), GOLDEN_GOODBYE);
}

// ---------------------------------------------------------------------------
// Round trip

fn seq() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1), Just(MAX_SEQ - 1), 1..MAX_SEQ]
}

fn text(max_chars: usize) -> impl Strategy<Value = String> {
    // At most 4 bytes a char, so the byte limits hold.
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
    (seq(), proptest::collection::vec(event(), 1..8)).prop_map(|(first, events)| {
        // Keep first_seq + len <= MAX_SEQ.
        (first.min(MAX_SEQ - events.len() as u64), events)
    })
}

fn ranges() -> impl Strategy<Value = Vec<SeqRange>> {
    let range = (1..MAX_SEQ).prop_flat_map(|start| (Just(start), start + 1..=MAX_SEQ));
    proptest::collection::vec(range, 1..=MAX_RANGES)
}

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
        (
            seq(),
            proptest::collection::vec(1..=u64::MAX, 0..=MAX_ACK_MEMBERS)
        )
            .prop_map(|(next_seq, members)| Body::AckRequest { next_seq, members }),
        (
            text(16),
            proptest::collection::vec(position(), 0..=40),
            proptest::collection::vec(any::<u32>(), 0..=cachecast::wire::MAX_REPORT_KEYS)
        )
            .prop_map(|(node, positions, keys)| Body::Report {
                node,
                positions,
                keys
            }),
    ]
}

fn position() -> impl Strategy<Value = Position> {
    (1..=u64::MAX, seq(), any::<u64>())
        .prop_flat_map(|(stream, delivered, idle_ms)| {
            (Just(stream), Just(delivered), 0..=delivered, Just(idle_ms))
        })
        .prop_map(|(stream, delivered, reset_end, idle_ms)| Position {
            stream,
            delivered,
            reset_end,
            idle_ms,
        })
}

/// Events whose counts and lengths also take the wider varints.
fn wide_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => event(),
        1 => (text(4), proptest::collection::vec(any::<u8>(), 245..1100))
            .prop_map(|(topic, payload)| Event::Custom { topic, payload }),
        1 => (245..300usize).prop_map(keys),
        1 => (60..300usize).prop_map(|n| Event::InvalidatePrefix { prefix: "x".repeat(n) }),
    ]
}

/// Bodies with runs of [`wide_event`]s.
fn wide_body() -> impl Strategy<Value = Body> {
    let run = || {
        (seq(), proptest::collection::vec(wide_event(), 1..6))
            .prop_map(|(first, events)| (first.min(MAX_SEQ - events.len() as u64), events))
    };
    prop_oneof![
        body(),
        run().prop_map(|(first_seq, events)| data(first_seq, events)),
        run().prop_map(|(first_seq, events)| Body::Repair {
            first_seq,
            events: Events::new_unchecked(&events)
        }),
    ]
}

fn header() -> impl Strategy<Value = Header> {
    (any::<u32>(), 1..=u64::MAX).prop_map(|(cluster, stream)| Header::new(cluster, stream))
}

proptest! {
    // A failure prints its minimal input; nothing is written to the tree.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn roundtrip_valid(header in header(), body in body()) {
        let bytes = enc(&header, &body);
        prop_assert_eq!(decode(&bytes, header.cluster), Ok(Datagram { header, body }));
    }

    #[test]
    fn events_match_bincode_and_read_back(e in event()) {
        assert_bincode_bytes(&e);
        let encoded = EncodedEvent::new(&e).unwrap();
        prop_assert_eq!(encoded.to_event(), e.clone());
        prop_assert!(encoded == e);
        prop_assert_eq!(decode_event(encoded.as_bytes()), Ok(e));
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        assert_paths_agree(&bytes, cluster()).ok();
        // Past the header checks, so the body decoder sees the noise.
        let mut framed = hex::decode("434353540100fc44ad051707").unwrap();
        framed.extend_from_slice(&bytes);
        if let Ok(d) = assert_paths_agree(&framed, cluster()) {
            // Whatever decodes is valid: it encodes and decodes again.
            prop_assert_eq!(decode(&enc(&d.header, &d.body), cluster()), Ok(d.clone()));
            if let Some(run) = run_of(&d) {
                assert_run_reads_back(run);
            }
        }
        assert_event_paths_agree(&bytes);
    }

    #[test]
    fn mutated_encodings_never_panic(
        header in header(),
        body in body(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut bytes = enc(&header, &body);
        mutate(&mut bytes, &edits);
        if let Ok(d) = assert_paths_agree(&bytes, header.cluster) {
            prop_assert_eq!(decode(&enc(&d.header, &d.body), header.cluster), Ok(d.clone()));
            if let Some(run) = run_of(&d) {
                assert_run_reads_back(run);
            }
        }
    }

    /// Both paths write the same bytes for any datagram, and read them back
    /// the same; a run decoded from them reads back every way.
    #[test]
    fn both_paths_write_and_read_the_same_bytes(header in header(), body in wide_body()) {
        let bytes = assert_same_bytes(&header, &body);
        let d = assert_paths_agree(&bytes, header.cluster).unwrap();
        prop_assert_eq!(&d.body, &body);
        if let Some(run) = run_of(&d) {
            assert_run_reads_back(run);
        }
    }

    /// One event, mutated: the walk that checks received events and the
    /// definition agree on what it is, or that it is none.
    #[test]
    fn mutated_events_decode_alike(
        e in wide_event(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..4),
    ) {
        let mut bytes = EncodedEvent::new(&e).unwrap().as_bytes().to_vec();
        assert_event_paths_agree(&bytes);
        mutate(&mut bytes, &edits);
        assert_event_paths_agree(&bytes);
    }
}

// ---------------------------------------------------------------------------
// Rejections, each with its exact error

fn golden_hello() -> Vec<u8> {
    hex::decode(GOLDEN_HELLO).unwrap()
}

#[test]
fn rejects_bad_magic() {
    let mut bytes = golden_hello();
    bytes[0] = b'X';
    assert_eq!(decode(&bytes, cluster()), Err(DecodeError::BadMagic));
}

/// No node has stream 0: a header of stream 0 is invalid (a node once
/// followed such a stream and named it in its Reports, which every
/// receiver refused: found by fuzzing).
#[test]
fn rejects_stream_zero() {
    let bytes = enc(
        &Header::new(cluster(), 0),
        &Body::Hello { node: "x".into() },
    );
    assert_eq!(
        decode_header(&bytes, cluster()),
        Err(DecodeError::Invalid("stream id 0"))
    );
    assert_eq!(decode(&bytes, cluster()), invalid("stream id 0"));
    // Another cluster's is still foreign traffic first.
    assert_eq!(
        decode(&bytes, cluster() ^ 1),
        Err(DecodeError::WrongCluster(cluster()))
    );
}

#[test]
fn rejects_too_short() {
    assert_eq!(decode(b"", cluster()), Err(DecodeError::BadMagic));
    assert_eq!(decode(b"CCS", cluster()), Err(DecodeError::BadMagic));
    assert!(matches!(
        decode(b"CCST", cluster()),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(
        decode(b"CCST\x01\x00", cluster()),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn rejects_version_2() {
    let mut bytes = golden_hello();
    bytes[4] = 2;
    assert_eq!(decode(&bytes, cluster()), Err(DecodeError::BadVersion(2)));
    // Named as another version even when nothing else of the header follows.
    assert_eq!(
        decode(b"CCST\x02", cluster()),
        Err(DecodeError::BadVersion(2))
    );
}

#[test]
fn rejects_another_cluster() {
    let bytes = golden_hello();
    assert_eq!(
        decode(&bytes, cluster_hash("other")),
        Err(DecodeError::WrongCluster(cluster()))
    );
}

#[test]
fn reads_a_report_of_a_build_before_key_ids() {
    // GOLDEN_REPORT less its key ids: what the previous build sends.
    let legacy = GOLDEN_REPORT.strip_suffix("02fc7e0a1c5d01").unwrap();
    let d = decode(&hex::decode(legacy).unwrap(), cluster()).unwrap();
    assert!(
        matches!(d.body, Body::Report { ref keys, ref positions, .. } if keys.is_empty() && positions.len() == 2)
    );
    // One byte short of either form: refused.
    let short = &legacy[..legacy.len() - 2];
    assert!(decode(&hex::decode(short).unwrap(), cluster()).is_err());
}

#[test]
fn rejects_auth_flag_without_a_trailer() {
    let mut bytes = golden_hello();
    bytes[5] = FLAG_AUTH;
    assert_eq!(
        decode(&bytes, cluster()),
        Err(DecodeError::Invalid("bad authentication trailer"))
    );
}

#[test]
fn rejects_reserved_flag() {
    let mut bytes = golden_hello();
    bytes[5] = 0x80;
    assert_eq!(decode(&bytes, cluster()), Err(DecodeError::BadFlags(0x80)));
}

#[test]
fn rejects_trailing_byte() {
    let mut bytes = golden_hello();
    bytes.push(0);
    assert_eq!(
        decode(&bytes, cluster()),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn rejects_oversize_datagram() {
    let mut bytes = golden_hello();
    bytes.resize(MAX_DATAGRAM + 1, 0);
    assert_eq!(
        decode(&bytes, cluster()),
        Err(DecodeError::TooLarge(MAX_DATAGRAM + 1))
    );
}

#[test]
fn rejects_bad_event_counts() {
    let too_many = vec![Event::ClearAll; MAX_EVENTS + 1];
    assert_eq!(
        roundtrip(data(1, too_many.clone())),
        invalid("too many events")
    );
    assert_eq!(
        roundtrip(Body::Repair {
            first_seq: 1,
            events: Events::new_unchecked(&too_many)
        }),
        invalid("too many events")
    );
    assert_eq!(roundtrip(data(1, vec![])), invalid("no events"));
    assert!(roundtrip(data(1, vec![Event::ClearAll; MAX_EVENTS])).is_ok());
}

#[test]
fn rejects_bad_keys() {
    assert_eq!(
        roundtrip(data(1, vec![keys(MAX_KEYS + 1)])),
        invalid("too many keys")
    );
    assert!(roundtrip(data(1, vec![keys(MAX_KEYS)])).is_ok());
    assert_eq!(roundtrip(data(1, vec![keys(0)])), invalid("no keys"));
    let long = "x".repeat(MAX_KEY_LEN + 1);
    for event in [
        Event::Invalidate {
            keys: vec!["ok".into(), long.clone()],
        },
        Event::InvalidatePrefix {
            prefix: long.clone(),
        },
        Event::Custom {
            topic: long.clone(),
            payload: vec![],
        },
    ] {
        assert_eq!(roundtrip(data(1, vec![event])), invalid("key too long"));
    }
    let longest = Event::InvalidatePrefix {
        prefix: "x".repeat(MAX_KEY_LEN),
    };
    assert!(roundtrip(data(1, vec![longest])).is_ok());
}

#[test]
fn rejects_long_node_name() {
    let long = "n".repeat(MAX_NODE_NAME + 1);
    assert_eq!(
        roundtrip(Body::Hello { node: long.clone() }),
        invalid("node name too long")
    );
    assert_eq!(
        roundtrip(Body::Heartbeat {
            next_seq: 1,
            oldest: 1,
            node: long
        }),
        invalid("node name too long")
    );
    let longest = "n".repeat(MAX_NODE_NAME);
    assert!(roundtrip(Body::Hello { node: longest }).is_ok());
}

#[test]
fn rejects_seq_out_of_range() {
    let out = invalid("sequence number out of range");
    assert_eq!(roundtrip(data(0, vec![Event::ClearAll])), out);
    assert_eq!(roundtrip(data(MAX_SEQ, vec![Event::ClearAll])), out);
    assert_eq!(roundtrip(data(u64::MAX, vec![Event::ClearAll])), out);
    // The last event's seq must stay below MAX_SEQ too.
    assert_eq!(roundtrip(data(MAX_SEQ - 1, vec![Event::ClearAll; 2])), out);
    assert!(roundtrip(data(MAX_SEQ - 1, vec![Event::ClearAll])).is_ok());
    assert_eq!(
        roundtrip(Body::Goodbye { next_seq: 0 }),
        invalid("bad goodbye position")
    );
    assert_eq!(
        roundtrip(Body::Goodbye { next_seq: MAX_SEQ }),
        invalid("bad goodbye position")
    );
    for (next_seq, oldest) in [(0, 0), (1, 0), (MAX_SEQ, 1), (MAX_SEQ, MAX_SEQ)] {
        assert_eq!(
            roundtrip(Body::Heartbeat {
                next_seq,
                oldest,
                node: String::new()
            }),
            invalid("bad heartbeat position"),
            "next_seq {next_seq} oldest {oldest}"
        );
    }
}

#[test]
fn rejects_heartbeat_oldest_after_next() {
    assert_eq!(
        roundtrip(Body::Heartbeat {
            next_seq: 5,
            oldest: 6,
            node: "a".into()
        }),
        invalid("bad heartbeat position")
    );
    assert!(roundtrip(Body::Heartbeat {
        next_seq: 5,
        oldest: 5,
        node: "a".into()
    })
    .is_ok());
}

#[test]
fn rejects_bad_ranges() {
    for range in [
        (5, 5),
        (6, 5),
        (0, 3),
        (1, MAX_SEQ + 1),
        (MAX_SEQ, MAX_SEQ + 1),
    ] {
        for body in [
            Body::Nak {
                stream: 1,
                ranges: vec![(1, 2), range],
            },
            Body::Unavailable {
                stream: 1,
                ranges: vec![range],
            },
        ] {
            assert_eq!(roundtrip(body), invalid("bad range"), "{range:?}");
        }
    }
    assert!(roundtrip(Body::Nak {
        stream: 1,
        ranges: vec![(MAX_SEQ - 1, MAX_SEQ)]
    })
    .is_ok());
}

#[test]
fn rejects_bad_range_counts() {
    let many = vec![(1, 2); MAX_RANGES + 1];
    assert_eq!(
        roundtrip(Body::Nak {
            stream: 1,
            ranges: many.clone()
        }),
        invalid("bad range count")
    );
    assert_eq!(
        roundtrip(Body::Unavailable {
            stream: 1,
            ranges: many
        }),
        invalid("bad range count")
    );
    assert_eq!(
        roundtrip(Body::Nak {
            stream: 1,
            ranges: vec![]
        }),
        invalid("bad range count")
    );
    assert!(roundtrip(Body::Nak {
        stream: 1,
        ranges: vec![(1, 2); MAX_RANGES]
    })
    .is_ok());
}

// ---------------------------------------------------------------------------
// Hostile input

#[test]
fn every_truncation_is_rejected() {
    for (_, _, golden) in goldens() {
        let bytes = hex::decode(golden).unwrap();
        for len in 0..bytes.len() {
            let result = decode(&bytes[..len], cluster());
            if len < 4 {
                assert_eq!(result, Err(DecodeError::BadMagic), "{golden} cut at {len}");
            } else if golden == GOLDEN_REPORT && hex::encode(&bytes[len..]) == "02fc7e0a1c5d01" {
                // Cut just before its key ids: a Report of the build before
                // them, which is read as holding no key.
                assert!(result.is_ok(), "{result:?}");
            } else {
                assert!(
                    matches!(result, Err(DecodeError::Malformed(_))),
                    "{golden} cut at {len}: {result:?}"
                );
            }
        }
    }
}

/// A datagram of header + `body` hex (spaces ignored), where `body` claims
/// lengths it does not back with bytes.
fn claim(body: &str) -> Vec<u8> {
    hex::decode(format!("434353540100fc44ad051707{}", body.replace(' ', ""))).unwrap()
}

/// Varint for u64::MAX, as a claimed length.
const HUGE: &str = "fdffffffffffffffff";

/// Decodes `bytes`, asserting it is rejected as `expect` while allocating at
/// most `bound` bytes.
fn assert_cheap_reject(bytes: &[u8], expect: impl Fn(&DecodeError) -> bool, bound: usize) {
    let (result, allocated) = allocated_by(|| decode(bytes, cluster()));
    let err = result.expect_err("hostile datagram decoded");
    assert!(expect(&err), "{}: {err:?}", hex::encode(bytes));
    assert!(
        allocated <= bound,
        "{}: allocated {allocated} bytes decoding it",
        hex::encode(bytes)
    );
}

/// Serde's own `Vec` visitor would preallocate up to 1 MiB here.
const SMALL: usize = 8 * 1024;

#[test]
fn huge_claimed_vec_lengths_are_rejected_cheaply() {
    let over = |reason: &'static str| move |e: &DecodeError| *e == DecodeError::Invalid(reason);
    let is_malformed = |e: &DecodeError| matches!(e, DecodeError::Malformed(_));
    let events = over("too many events");
    let keys = over("too many keys");
    let ranges = over("bad range count");
    let payload = over("payload too long");
    // Data / Repair, first_seq 1, claiming u64::MAX events.
    assert_cheap_reject(&claim(&format!("0001{HUGE}")), events, SMALL);
    assert_cheap_reject(&claim(&format!("0401{HUGE}")), events, SMALL);
    assert_cheap_reject(&claim("0001fb0104"), events, SMALL); // MAX_EVENTS + 1
                                                              // One Invalidate claiming u64::MAX keys.
    assert_cheap_reject(&claim(&format!("000101 00{HUGE}")), keys, SMALL);
    // Nak / Unavailable claiming u64::MAX ranges.
    assert_cheap_reject(&claim(&format!("0301{HUGE}")), ranges, SMALL);
    assert_cheap_reject(&claim(&format!("0501{HUGE}")), ranges, SMALL);
    // A Custom event with an empty topic claiming u64::MAX payload bytes.
    assert_cheap_reject(&claim(&format!("000101 0300{HUGE}")), payload, SMALL);
    // Lengths right at the limits, with no bytes behind them.
    assert_cheap_reject(&claim("0001fb0004"), is_malformed, SMALL); // MAX_EVENTS
    assert_cheap_reject(&claim("00010100fb0004"), is_malformed, SMALL); // MAX_KEYS
    assert_cheap_reject(&claim("030140"), is_malformed, SMALL); // MAX_RANGES
    assert_cheap_reject(&claim("0001010300fbe3ff"), is_malformed, SMALL); // MAX_DATAGRAM
}

#[test]
fn claimed_string_lengths_are_bounded_by_the_size_limit() {
    let is_malformed = |e: &DecodeError| matches!(e, DecodeError::Malformed(_));
    // Over the size limit: rejected before allocating.
    assert_cheap_reject(&claim(&format!("02{HUGE}")), is_malformed, SMALL);
    assert_cheap_reject(&claim(&format!("000101 01{HUGE}")), is_malformed, SMALL);
    assert_cheap_reject(&claim("02fbe4ff"), is_malformed, SMALL); // MAX_DATAGRAM + 1
                                                                  // Under it: bincode allocates the claimed length before reading, so the
                                                                  // bound is the size limit, once per datagram (claims add up).
    let bound = MAX_DATAGRAM + SMALL;
    assert_cheap_reject(&claim("02fbe8fd"), is_malformed, bound); // Hello, 65000
    assert_cheap_reject(&claim("010101fbe8fd"), is_malformed, bound); // Heartbeat
    assert_cheap_reject(&claim("000101 00 02 fb00fe fb00fe"), is_malformed, bound);
    // 2 keys
}

// ---------------------------------------------------------------------------
// check_event and DATA_OVERHEAD

#[test]
fn check_event_fits_or_is_too_large() {
    let small = Event::InvalidatePrefix {
        prefix: "user:".into(),
    };
    assert_eq!(check_event(&small, 1200), Ok(encoded_event_len(&small)));

    let custom = |n: usize| Event::Custom {
        topic: "t".into(),
        payload: vec![0; n],
    };
    // Find the largest payload that fits in 1200 bytes.
    let fits = (0..1200)
        .rev()
        .find(|&n| check_event(&custom(n), 1200).is_ok())
        .unwrap();
    let size = encoded_event_len(&custom(fits));
    assert_eq!(check_event(&custom(fits), 1200), Ok(size));
    assert!(size + DATA_OVERHEAD <= 1200);
    let too_big = custom(fits + 1);
    assert_eq!(
        check_event(&too_big, 1200),
        Err(EventError::TooLarge {
            size: encoded_event_len(&too_big),
            max_datagram: 1200
        })
    );
    // The accepted event really fits: alone, under the widest header and seq.
    let header = Header::new(u32::MAX, u64::MAX);
    let bytes = enc(&header, &data(MAX_SEQ - 1, vec![custom(fits)]));
    assert!(bytes.len() <= 1200, "{} bytes", bytes.len());
    assert!(decode(&bytes, u32::MAX).is_ok());
}

#[test]
fn check_event_checks_limits() {
    assert_eq!(check_event(&keys(0), 1200), Err(EventError::NoKeys));
    assert_eq!(
        check_event(&keys(MAX_KEYS + 1), usize::MAX),
        Err(EventError::TooManyKeys(MAX_KEYS + 1))
    );
    let long = Event::InvalidatePrefix {
        prefix: "x".repeat(MAX_KEY_LEN + 1),
    };
    assert_eq!(
        check_event(&long, usize::MAX),
        Err(EventError::KeyTooLong(MAX_KEY_LEN + 1))
    );
}

#[test]
fn data_overhead_is_an_upper_bound() {
    let header = Header::new(u32::MAX, u64::MAX);
    let first_seq = MAX_SEQ - MAX_EVENTS as u64;
    let batches = [
        vec![Event::ClearAll; MAX_EVENTS],
        (0..MAX_EVENTS).map(|i| keys(1 + i % 3)).collect(),
        vec![Event::ClearAll],
    ];
    for events in batches {
        let sum: usize = events.iter().map(encoded_event_len).sum();
        for body in [
            data(first_seq, events.clone()),
            Body::Repair {
                first_seq,
                events: Events::new_unchecked(&events),
            },
        ] {
            let bytes = enc(&header, &body);
            assert!(
                bytes.len() <= DATA_OVERHEAD + sum,
                "{} bytes > {DATA_OVERHEAD} + {sum}",
                bytes.len()
            );
            assert!(decode(&bytes, u32::MAX).is_ok());
        }
    }
}

/// Keys are packed by their exact encoded sizes: every event fits, in
/// order, and each but the last is full (its successor's first key would
/// not have fit in it).
#[test]
fn pack_keys_fills_each_datagram_and_keeps_the_order() {
    let keys: Vec<String> = (0..5000)
        .map(|i| "k".repeat(1 + (i * 37) % 300) + &i.to_string())
        .collect();
    let events = pack_keys(keys.clone(), 1200).unwrap();
    let mut back = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let size = check_event(e, 1200).unwrap();
        let Event::Invalidate { keys } = e else {
            panic!("{e:?}")
        };
        if let Some(Event::Invalidate { keys: next }) = events.get(i + 1) {
            let mut more = keys.clone();
            more.push(next[0].clone());
            let bigger = Event::Invalidate { keys: more };
            assert!(
                check_event(&bigger, 1200).is_err(),
                "event {i} of {size} bytes was not full"
            );
        }
        back.extend(keys.iter().cloned());
    }
    assert_eq!(back, keys);
    let too_big = vec!["x".repeat(1200)];
    assert!(pack_keys(too_big, 1200).is_err());
    assert!(pack_keys(vec!["y".repeat(MAX_KEY_LEN + 1)], 64 * 1024).is_err());
}

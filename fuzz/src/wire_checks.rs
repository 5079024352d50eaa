//! What the wire targets assert about one input: the header
//! ([`check_header`]), a body ([`check_body`]) and a whole datagram with a
//! single event ([`check_datagram`]). Each decodes the bytes the node's way
//! (the hand path) and the definition's way (the serde derives through
//! bincode), and checks that they agree, that what decodes re-encodes to
//! bytes that decode to the same value, and that decoding allocates at most
//! [`DECODE_ALLOC_BOUND`]. A failed check is a panic (libFuzzer's crash).

use cachecast::wire::{
    self, Body, Datagram, DecodeError, Event, Events, Header, FLAG_AUTH, FLAG_RECEIVE_ONLY, MAGIC,
    MAX_DATAGRAM, TRAILER_LEN, VERSION,
};

use crate::alloc::allocated_by;

/// The cluster every target's datagrams belong to (the seeds are of it).
pub fn cluster() -> u32 {
    wire::cluster_hash("fuzz")
}

/// Most bytes decoding one datagram (or one body, or one header) may
/// allocate, either path, whatever the input: four times the largest
/// datagram. The run of a `Data` is copied once (at most a datagram), a
/// control body's strings are bounded by bincode's limit (a datagram), and
/// every claimed count is checked before anything is allocated for it.
pub const DECODE_ALLOC_BOUND: usize = 4 * MAX_DATAGRAM;

/// Most bytes decoding a header may allocate (an error's message).
pub const HEADER_ALLOC_BOUND: usize = 1024;

/// The flags version 1 knows.
const KNOWN_FLAGS: u8 = FLAG_AUTH | FLAG_RECEIVE_ONLY;

/// bincode's config for the format (the definition): standard, with the
/// size limit.
fn definition() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_DATAGRAM>()
}

/// The header: the node's decoder against the definition, and the checks
/// it makes (magic, version, flags, cluster).
pub fn check_header(data: &[u8]) {
    let cluster = cluster();
    let (hand, bytes) = allocated_by(|| wire::decode_header(data, cluster));
    assert!(
        bytes <= HEADER_ALLOC_BOUND,
        "decode_header allocated {bytes} bytes"
    );
    let def = bincode::serde::decode_from_slice::<Header, _>(data, definition());
    match (&hand, &def) {
        (Ok((h, used)), _) => {
            assert!(*used <= data.len());
            assert_eq!(h.magic, MAGIC);
            assert_eq!(h.version, VERSION);
            assert_eq!(h.flags & !KNOWN_FLAGS, 0, "unknown flags accepted");
            assert_eq!(h.cluster, cluster);
            assert_ne!(h.stream, 0, "no node has stream 0");
            assert_eq!(
                def.as_ref().ok(),
                Some(&(*h, *used)),
                "the definition differs"
            );
            // The shortest encoding decodes to the same header.
            let canonical = h.to_bytes();
            assert!(canonical.len() <= *used);
            assert_eq!(
                wire::decode_header(&canonical, cluster),
                Ok((*h, canonical.len()))
            );
        }
        (Err(e), Ok((h, _))) => {
            // The definition reads a header; the node refuses it for one
            // of the checks the definition does not make, and rightly.
            let _ = e.to_string();
            match e {
                DecodeError::TooLarge(n) => assert!(*n > MAX_DATAGRAM),
                DecodeError::BadMagic => assert_ne!(h.magic, MAGIC),
                DecodeError::BadVersion(v) => assert!(*v == h.version && *v != VERSION),
                DecodeError::BadFlags(f) => {
                    assert!(*f == h.flags && f & !KNOWN_FLAGS != 0)
                }
                DecodeError::WrongCluster(c) => assert!(*c == h.cluster && *c != cluster),
                DecodeError::Invalid("stream id 0") => assert_eq!(h.stream, 0),
                other => panic!("the definition decoded {h:?}, the node refused: {other:?}"),
            }
        }
        (Err(e), Err(_)) => {
            let _ = (e.kind(), e.to_string());
        }
    }
}

/// A body (the bytes after a header): the node's decoder against the
/// definition; a decoded body re-encodes (by hand and by the definition,
/// the same bytes) and decodes back to itself; a decoded run reads back
/// alike every way.
pub fn check_body(data: &[u8]) {
    let (hand, bytes) = allocated_by(|| wire::decode_body(data));
    assert!(bytes <= DECODE_ALLOC_BOUND, "decode_body allocated {bytes}");
    let (def, bytes) =
        allocated_by(|| bincode::serde::decode_from_slice::<Body, _>(data, definition()));
    assert!(
        bytes <= DECODE_ALLOC_BOUND,
        "the definition allocated {bytes}"
    );
    match (&hand, &def) {
        (Ok(b), Ok((b2, used))) => {
            assert_eq!(b, b2);
            assert_eq!(*used, data.len());
        }
        (Ok(b), Err(e)) => {
            if !legacy_report(b, data) {
                panic!("the node decoded {b:?}, the definition refused: {e}")
            }
        }
        (Err(e), Ok((b2, used))) => refused_rightly(e, b2, *used, data.len()),
        (Err(e), Err(_)) => {
            let _ = (e.kind(), e.to_string());
        }
    }
    if let Ok(body) = hand {
        round_trip(&Header::new(cluster(), 2), &body);
    }
}

/// A whole datagram: the node's decoder (and its two steps, header then
/// body) against the definition (which knows no trailer: an authenticated
/// datagram's is cut off for it); and the same bytes as one event, the
/// checking walk against the definition of [`Event`].
pub fn check_datagram(data: &[u8]) {
    let cluster = cluster();
    let (hand, bytes) = allocated_by(|| wire::decode(data, cluster));
    assert!(bytes <= DECODE_ALLOC_BOUND, "decode allocated {bytes}");
    // The node's own steps (it checks the header's stream in between).
    let header = wire::decode_header(data, cluster);
    let authenticated = matches!(header, Ok((h, _)) if h.authenticated());
    if !authenticated {
        let stepwise = header.and_then(|(header, used)| {
            wire::decode_body(&data[used..]).map(|body| Datagram { header, body })
        });
        assert_eq!(hand, stepwise);
    }
    let signed = if authenticated && data.len() >= TRAILER_LEN {
        &data[..data.len() - TRAILER_LEN]
    } else {
        data
    };
    let (def, bytes) =
        allocated_by(|| bincode::serde::decode_from_slice::<Datagram, _>(signed, definition()));
    assert!(
        bytes <= DECODE_ALLOC_BOUND,
        "the definition allocated {bytes}"
    );
    match (&hand, &def) {
        (Ok(d), Ok((d2, used))) => {
            assert_eq!(d, d2);
            assert_eq!(*used, signed.len());
        }
        (Ok(d), Err(e)) => {
            let body = wire::decode_header(signed, cluster).map(|(_, used)| &signed[used..]);
            if !body.is_ok_and(|body| legacy_report(&d.body, body)) {
                panic!("the node decoded {d:?}, the definition refused: {e}")
            }
        }
        (Err(e), Ok((d2, used))) => {
            if !matches!(
                e,
                DecodeError::BadMagic
                    | DecodeError::BadVersion(_)
                    | DecodeError::BadFlags(_)
                    | DecodeError::WrongCluster(_)
            ) {
                refused_rightly(e, d2, *used, signed.len())
            }
        }
        (Err(e), Err(_)) => {
            let _ = (e.kind(), e.to_string());
        }
    }
    if let Ok(d) = hand {
        let mut header = d.header;
        header.flags &= !FLAG_AUTH;
        round_trip(&header, &d.body);
    }
    check_event(data);
}

/// One event: [`wire::decode_event`] (the walk every received event goes
/// through) against the definition.
pub fn check_event(data: &[u8]) {
    let (hand, bytes) = allocated_by(|| wire::decode_event(data));
    assert!(
        bytes <= DECODE_ALLOC_BOUND,
        "decode_event allocated {bytes}"
    );
    let def = bincode::serde::decode_from_slice::<Event, _>(data, definition());
    match (&hand, &def) {
        (Ok(e), Ok((e2, used))) => {
            assert_eq!(e, e2);
            assert_eq!(*used, data.len());
            let mut buf = Vec::new();
            wire::encode_event(e, &mut buf);
            assert_eq!(wire::decode_event(&buf).as_ref(), Ok(e));
        }
        (Ok(e), Err(err)) => panic!("the walk decoded {e:?}, the definition refused: {err}"),
        (Err(err), Ok((e2, used))) => refused_rightly(err, e2, *used, data.len()),
        (Err(_), Err(_)) => {}
    }
}

/// The node refused what the definition decoded (`used` of `len` bytes):
/// only for bytes left over, or a limit the definition does not check.
/// True if `body` is a `Report` in the form of builds before keys (no key
/// list at its end), which the node takes on purpose (as having no keys),
/// so that a cluster keeps its membership view while it is upgraded: the
/// definition, which has the key list, decodes the same bytes with an empty
/// list appended (the fuzzer's first finding, not a bug).
fn legacy_report(body: &Body, bytes: &[u8]) -> bool {
    let Body::Report { keys, .. } = body else {
        return false;
    };
    let mut with_keys = bytes.to_vec();
    with_keys.push(0);
    keys.is_empty()
        && bincode::serde::decode_from_slice::<Body, _>(&with_keys, definition())
            .is_ok_and(|(b, used)| &b == body && used == with_keys.len())
}

fn refused_rightly(e: &DecodeError, decoded: &impl std::fmt::Debug, used: usize, len: usize) {
    match e {
        DecodeError::TrailingBytes(n) => assert_eq!(used + n, len, "{decoded:?}"),
        DecodeError::Invalid(_) => {}
        other => panic!("the definition decoded {decoded:?}, the node refused: {other:?}"),
    }
}

/// A decoded body under `header`: it encodes to bytes that decode back to
/// it; built anew, both encoders write the same bytes for it, which are
/// what the definition writes for the decoded body; a run reads back alike
/// every way. (A received run keeps its bytes as they came, in whatever
/// varint form: the hand path sends them as they are, so only a body built
/// anew is held to the definition's shortest forms.)
fn round_trip(header: &Header, body: &Body) {
    let datagram = Datagram {
        header: *header,
        body: body.clone(),
    };
    let mut hand = Vec::new();
    wire::encode(header, body, &mut hand);
    assert_eq!(wire::decode(&hand, header.cluster).as_ref(), Ok(&datagram));
    let anew = match body {
        Body::Data { first_seq, events } => Body::Data {
            first_seq: *first_seq,
            events: Events::new(&events.to_vec()).expect("decoded events are valid"),
        },
        Body::Repair { first_seq, events } => Body::Repair {
            first_seq: *first_seq,
            events: Events::new(&events.to_vec()).expect("decoded events are valid"),
        },
        other => other.clone(),
    };
    wire::encode(header, &anew, &mut hand);
    let def = bincode::serde::encode_to_vec(&datagram, definition()).expect("encodes");
    assert_eq!(hand, def, "the two encoders differ for {body:?}");
    if let Body::Data { events, .. } | Body::Repair { events, .. } = body {
        run_reads_back(events);
    }
}

/// A decoded run read owned, in place, event by event (each through both
/// decoders), and taken apart at the front.
fn run_reads_back(run: &Events) {
    let owned = run.to_vec();
    assert_eq!(owned.len(), run.len());
    let views: Vec<Event> = run.views().map(|v| v.to_event()).collect();
    assert_eq!(views, owned, "read in place");
    for (e, o) in run.iter().zip(&owned) {
        assert_eq!(&e.to_event(), o);
        assert_eq!(wire::decode_event(e.as_bytes()).as_ref(), Ok(o));
        let (def, used): (Event, usize) =
            bincode::serde::decode_from_slice(e.as_bytes(), definition()).expect("an event");
        assert_eq!((&def, used), (o, e.as_bytes().len()));
    }
    let mut rest = run.clone();
    for (k, o) in owned.iter().enumerate() {
        assert_eq!(rest.len(), owned.len() - k);
        assert_eq!(rest.pop_front().map(|e| e.to_event()).as_ref(), Some(o));
    }
    assert!(rest.pop_front().is_none());
    let mut half = run.clone();
    half.skip(owned.len() / 2);
    assert_eq!(half.to_vec(), owned[owned.len() / 2..]);
}

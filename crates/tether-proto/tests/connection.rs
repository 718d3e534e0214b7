//! The connection state machine: framing, limits, closing handshake and timers, driven with
//! explicit time.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use tether_proto::bytes::BytesMut;
use tether_proto::frame::encode_frame;
use tether_proto::{
    close_code, CloseFrame, Config, Connection, Event, OpCode, ProtocolError, Role, State,
};

const KEY: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

fn server(now: Instant) -> Connection {
    Connection::new(Role::Server, Config::default(), now)
}

fn client(now: Instant) -> Connection {
    Connection::new(Role::Client, Config::default(), now)
}

/// A masked frame as a client sends it.
fn cframe(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    raw_frame(fin, 0, op, Some(KEY), payload)
}

fn raw_frame(fin: bool, rsv: u8, op: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let opcode = OpCode::from_u8(op).unwrap_or(OpCode::Binary);
    encode_frame(&mut v, fin, false, opcode, mask, payload);
    // Patch the first byte so that reserved opcodes and bits can be expressed.
    v[0] = (u8::from(fin) << 7) | (rsv << 4) | op;
    v
}

/// Feeds `bytes` with [`Connection::receive_shared`] or [`Connection::receive`].
fn feed(c: &mut Connection, bytes: &[u8], shared: bool, now: Instant) {
    if shared {
        c.receive_shared(BytesMut::from(bytes), now);
    } else {
        c.receive(bytes, now);
    }
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Decodes what `from` transmitted by feeding it to a connection of the other role.
fn decode_output(from: &mut Connection, now: Instant) -> Vec<Event> {
    let role = match from.role() {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    };
    let mut peer = Connection::new(role, Config::default(), now);
    let bytes = from.take_transmit();
    peer.receive(&bytes, now);
    events(&mut peer)
}

#[test]
fn text_and_binary_messages_arrive_whole() {
    let now = Instant::now();
    let mut s = server(now);
    let mut input = cframe(true, 1, "héllo".as_bytes());
    input.extend(cframe(true, 2, &[0, 1, 2, 255]));
    s.receive(&input, now);
    assert_eq!(
        events(&mut s),
        vec![
            Event::Text("héllo".into()),
            Event::Binary(vec![0, 1, 2, 255].into())
        ]
    );
}

#[test]
fn fragmented_message_with_interleaved_ping() {
    let now = Instant::now();
    let mut s = server(now);
    let mut input = cframe(false, 1, b"frag");
    input.extend(cframe(true, 9, b"p"));
    input.extend(cframe(false, 0, b"men"));
    input.extend(cframe(true, 0, b"ted"));
    s.receive(&input, now);
    assert_eq!(
        events(&mut s),
        vec![Event::Ping(b"p".to_vec()), Event::Text("fragmented".into())]
    );
    // The Pong was queued with the same payload.
    let out = decode_output(&mut s, now);
    assert_eq!(
        out,
        vec![Event::Pong {
            payload: b"p".to_vec(),
            rtt: None
        }]
    );
}

#[test]
fn server_output_is_unmasked_and_client_output_masked() {
    let now = Instant::now();
    let mut s = server(now);
    s.send_text("hi").unwrap();
    assert_eq!(s.transmit(), &[0x81, 0x02, b'h', b'i']);
    let mut c = client(now);
    c.send_binary(b"abc").unwrap();
    let t = c.transmit();
    assert_eq!(t[0], 0x82);
    assert_eq!(t[1], 0x80 | 3);
    assert_eq!(t.len(), 2 + 4 + 3);
    assert_eq!(
        decode_output(&mut c, now),
        vec![Event::Binary(b"abc".to_vec().into())]
    );
}

fn expect_failure(role: Role, input: &[u8], want: ProtocolError) {
    let now = Instant::now();
    let mut c = Connection::new(role, Config::default().max_message_size(1000), now);
    c.receive(input, now);
    let evs = events(&mut c);
    assert_eq!(evs.last(), Some(&Event::Error(want.clone())), "{evs:?}");
    assert_eq!(c.state(), State::Closed);
    assert!(c.wants_close_transport());
    let out = decode_output(&mut c, now);
    let code = want.close_code();
    assert!(
        matches!(out.as_slice(), [Event::Close(Some(CloseFrame { code: c, .. }))] if *c == code),
        "{want:?}: {out:?}"
    );
    // Nothing after a failure is processed.
    c.receive(&cframe(true, 1, b"late"), now);
    assert!(c.poll_event().is_none());
}

#[test]
fn every_malformed_frame_fails_with_its_close_code() {
    let s = Role::Server;
    expect_failure(
        s,
        &raw_frame(true, 4, 1, Some(KEY), b"x"),
        ProtocolError::ReservedBits,
    );
    expect_failure(
        s,
        &raw_frame(true, 1, 1, Some(KEY), b"x"),
        ProtocolError::ReservedBits,
    );
    expect_failure(
        s,
        &raw_frame(true, 0, 3, Some(KEY), b"x"),
        ProtocolError::UnknownOpcode(3),
    );
    expect_failure(
        s,
        &raw_frame(true, 0, 0xB, Some(KEY), b""),
        ProtocolError::UnknownOpcode(0xB),
    );
    expect_failure(s, &cframe(false, 9, b"x"), ProtocolError::FragmentedControl);
    expect_failure(
        s,
        &cframe(true, 9, &[0; 126]),
        ProtocolError::ControlTooLong,
    );
    expect_failure(
        s,
        &raw_frame(true, 0, 1, None, b"x"),
        ProtocolError::UnmaskedFrame,
    );
    expect_failure(
        Role::Client,
        &cframe(true, 1, b"x"),
        ProtocolError::MaskedFrame,
    );
    expect_failure(
        s,
        &[0x81, 0xFE, 0x00, 0x05, 1, 2, 3, 4],
        ProtocolError::NonMinimalLength,
    );
    expect_failure(
        s,
        &[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 1, 2, 3, 4],
        ProtocolError::NonMinimalLength,
    );
    expect_failure(
        s,
        &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
        ProtocolError::LengthOverflow,
    );
    expect_failure(
        s,
        &cframe(true, 0, b"x"),
        ProtocolError::UnexpectedContinuation,
    );
    let mut two_starts = cframe(false, 1, b"a");
    two_starts.extend(cframe(true, 1, b"b"));
    expect_failure(s, &two_starts, ProtocolError::ExpectedContinuation);
    expect_failure(
        s,
        &cframe(true, 8, &[0x03, 0xED]),
        ProtocolError::InvalidCloseCode(1005),
    );
    expect_failure(
        s,
        &cframe(true, 8, &[0x03]),
        ProtocolError::InvalidClosePayload,
    );
    expect_failure(
        s,
        &cframe(true, 8, &[0x03, 0xE8, 0xFF]),
        ProtocolError::InvalidUtf8,
    );
    expect_failure(
        s,
        &cframe(true, 1, &[0xCE, 0xBA, 0xE1, 0xBD]),
        ProtocolError::InvalidUtf8,
    );
    expect_failure(
        s,
        &cframe(true, 2, &[0; 1001]),
        ProtocolError::MessageTooLarge { max: 1000 },
    );
}

#[test]
fn frame_and_fragment_limits_close_with_1009() {
    let now = Instant::now();
    let config = Config::default().max_frame_size(10).max_fragments(3);
    let mut s = Connection::new(Role::Server, config.clone(), now);
    s.receive(&cframe(true, 2, &[0; 11]), now);
    assert_eq!(
        events(&mut s),
        vec![Event::Error(ProtocolError::FrameTooLarge { max: 10 })]
    );
    let mut s = Connection::new(Role::Server, config, now);
    let mut input = cframe(false, 2, b"a");
    for _ in 0..3 {
        input.extend(cframe(false, 0, b"a"));
    }
    s.receive(&input, now);
    assert_eq!(
        events(&mut s),
        vec![Event::Error(ProtocolError::TooManyFragments { max: 3 })]
    );
    assert_eq!(
        ProtocolError::TooManyFragments { max: 3 }.close_code(),
        1009
    );
}

#[test]
fn oversized_frame_is_refused_before_its_payload_arrives() {
    let now = Instant::now();
    let mut s = Connection::new(
        Role::Server,
        Config::default().max_message_size(1 << 20),
        now,
    );
    // A header announcing 2 GiB, and no payload: the error comes from the header alone.
    let mut head = vec![0x82, 0xFF];
    head.extend((2u64 << 30).to_be_bytes());
    head.extend(KEY);
    s.receive(&head, now);
    assert_eq!(
        events(&mut s),
        vec![Event::Error(ProtocolError::FrameTooLarge { max: 16 << 20 })]
    );
}

#[test]
fn invalid_utf8_fails_fast_inside_a_fragment() {
    let now = Instant::now();
    let mut s = server(now);
    // A 20-byte text frame whose first bytes are already invalid: fail before the rest arrives.
    let frame = cframe(
        true,
        1,
        b"\xCE\xBA\xE1\xBD\xB9\xCE\xBC\xCE\xB5\xED\xA0\x80edited",
    );
    s.receive(&frame[..frame.len() - 5], now);
    assert_eq!(
        events(&mut s),
        vec![Event::Error(ProtocolError::InvalidUtf8)]
    );

    // A split multi-byte sequence is not an error until the message ends.
    let mut s = server(now);
    let euro = "€".as_bytes();
    s.receive(&cframe(false, 1, &euro[..1]), now);
    assert!(s.poll_event().is_none());
    s.receive(&cframe(false, 0, &euro[1..]), now);
    assert!(s.poll_event().is_none());
    s.receive(&cframe(true, 0, b""), now);
    assert_eq!(events(&mut s), vec![Event::Text("€".into())]);

    // An incomplete sequence at the end of the message is invalid.
    let mut s = server(now);
    s.receive(&cframe(true, 1, &euro[..2]), now);
    assert_eq!(
        events(&mut s),
        vec![Event::Error(ProtocolError::InvalidUtf8)]
    );
}

#[test]
fn peer_initiated_close_is_echoed_and_server_closes_transport() {
    let now = Instant::now();
    let mut s = server(now);
    let mut payload = 1001u16.to_be_bytes().to_vec();
    payload.extend(b"bye");
    s.receive(&cframe(true, 8, &payload), now);
    let close = CloseFrame {
        code: 1001,
        reason: "bye".into(),
    };
    assert_eq!(events(&mut s), vec![Event::Close(Some(close.clone()))]);
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.close_code(), 1001);
    assert!(s.wants_close_transport());
    assert!(s.send_text("late").is_err());
    let echoed = decode_output(&mut s, now);
    assert_eq!(
        echoed,
        vec![Event::Close(Some(CloseFrame {
            code: 1001,
            reason: String::new()
        }))]
    );
}

#[test]
fn messages_before_a_close_can_still_be_answered() {
    // Regression: an echo server could not reply to messages that arrived in the same read
    // as the client's Close, because the Close reply went out (and sending stopped) first.
    let now = Instant::now();
    let mut s = server(now);
    let mut input = cframe(true, 1, b"one");
    input.extend(cframe(true, 1, b"two"));
    input.extend(cframe(true, 8, &1000u16.to_be_bytes()));
    s.receive(&input, now);
    assert_eq!(s.poll_event(), Some(Event::Text("one".into())));
    s.send_text("echo one").unwrap();
    assert_eq!(s.poll_event(), Some(Event::Text("two".into())));
    s.send_text("echo two").unwrap();
    assert_eq!(s.state(), State::Open);
    assert!(matches!(s.poll_event(), Some(Event::Close(Some(_)))));
    assert_eq!(s.state(), State::Closed);
    assert!(s.send_text("too late").is_err());
    assert_eq!(
        decode_output(&mut s, now),
        vec![
            Event::Text("echo one".into()),
            Event::Text("echo two".into()),
            Event::Close(Some(CloseFrame {
                code: 1000,
                reason: String::new()
            })),
        ]
    );
}

#[test]
fn empty_close_is_echoed_empty_and_reports_1005() {
    let now = Instant::now();
    let mut s = server(now);
    s.receive(&cframe(true, 8, b""), now);
    assert_eq!(events(&mut s), vec![Event::Close(None)]);
    assert_eq!(s.close_code(), close_code::NO_STATUS);
    assert_eq!(s.transmit(), &[0x88, 0x00]);
}

#[test]
fn client_waits_for_server_to_close_transport_then_gives_up() {
    let t0 = Instant::now();
    let mut c = client(t0);
    c.receive(&raw_frame(true, 0, 8, None, &1000u16.to_be_bytes()), t0);
    assert_eq!(events(&mut c).len(), 1);
    assert_eq!(c.state(), State::Closed);
    assert!(!c.wants_close_transport());
    let deadline = c.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(10));
    c.handle_timeout(deadline - Duration::from_millis(1));
    assert!(!c.wants_close_transport());
    c.handle_timeout(deadline);
    assert!(c.wants_close_transport());
}

#[test]
fn local_close_completes_on_peer_close_or_times_out() {
    let t0 = Instant::now();
    let mut s = server(t0);
    s.close(1000, "done", t0).unwrap();
    assert_eq!(s.state(), State::Closing);
    assert_eq!(
        s.close(1000, "again", t0),
        Err(tether_proto::SendError::Closed)
    );
    // Messages still arrive while closing.
    s.receive(&cframe(true, 1, b"in flight"), t0);
    assert_eq!(events(&mut s), vec![Event::Text("in flight".into())]);
    s.receive(&cframe(true, 8, &1000u16.to_be_bytes()), t0);
    assert_eq!(events(&mut s).len(), 1);
    assert_eq!(s.state(), State::Closed);
    assert!(s.wants_close_transport());
    // Only our one Close frame went out.
    assert_eq!(
        decode_output(&mut s, t0),
        vec![Event::Close(Some(CloseFrame {
            code: 1000,
            reason: "done".into()
        }))]
    );

    let mut s = server(t0);
    s.close(1000, "", t0).unwrap();
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, t0 + Duration::from_secs(10));
    s.handle_timeout(deadline);
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.close_code(), close_code::ABNORMAL);
    assert!(s.wants_close_transport());
}

#[test]
fn close_arguments_are_checked() {
    let now = Instant::now();
    let mut s = server(now);
    assert!(s.close(1005, "", now).is_err());
    assert!(s.close(1000, &"x".repeat(124), now).is_err());
    assert!(s.ping(&[0; 126], now).is_err());
    assert_eq!(s.buffered_amount(), 0);
}

#[test]
fn keepalive_pings_on_schedule_and_times_out_with_1011() {
    let t0 = Instant::now();
    let config = Config::default()
        .ping_interval(Some(Duration::from_secs(20)))
        .ping_timeout(Some(Duration::from_secs(5)));
    let mut c = Connection::new(Role::Client, config, t0);
    assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(20)));
    c.handle_timeout(t0 + Duration::from_secs(19));
    assert_eq!(c.buffered_amount(), 0);
    let t1 = t0 + Duration::from_secs(20);
    c.handle_timeout(t1);
    let sent = decode_output(&mut c, t1);
    assert!(
        matches!(sent.as_slice(), [Event::Ping(p)] if p.len() == 4),
        "{sent:?}"
    );
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(5)));

    // A pong clears the deadline; the next ping comes an interval after the last.
    c.receive(&raw_frame(true, 0, 0xA, None, b"any"), t1);
    assert!(matches!(
        events(&mut c).as_slice(),
        [Event::Pong { rtt: None, .. }]
    ));
    assert_eq!(c.poll_timeout(), Some(t1 + Duration::from_secs(20)));

    let t2 = t1 + Duration::from_secs(20);
    c.handle_timeout(t2);
    c.advance_transmit(c.buffered_amount());
    c.handle_timeout(t2 + Duration::from_secs(5));
    assert_eq!(
        events(&mut c),
        vec![Event::Error(ProtocolError::KeepaliveTimeout)]
    );
    assert!(c.wants_close_transport());
    assert_eq!(
        decode_output(&mut c, t2),
        vec![Event::Close(Some(CloseFrame {
            code: 1011,
            reason: "keepalive ping timeout".into()
        }))]
    );
}

#[test]
fn keepalive_disabled_sets_no_timer() {
    let t0 = Instant::now();
    let c = Connection::new(Role::Server, Config::default().ping_interval(None), t0);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn ping_reports_round_trip_time() {
    let t0 = Instant::now();
    let mut c = client(t0);
    c.ping(b"one", t0).unwrap();
    c.ping(b"two", t0 + Duration::from_millis(5)).unwrap();
    c.receive(
        &raw_frame(true, 0, 0xA, None, b"two"),
        t0 + Duration::from_millis(12),
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Pong {
            payload: b"two".to_vec(),
            rtt: Some(Duration::from_millis(7))
        }]
    );
    // The earlier ping was answered by implication and is forgotten.
    c.receive(
        &raw_frame(true, 0, 0xA, None, b"one"),
        t0 + Duration::from_millis(20),
    );
    assert_eq!(
        events(&mut c),
        vec![Event::Pong {
            payload: b"one".to_vec(),
            rtt: None
        }]
    );
}

#[test]
fn eof_without_close_is_abnormal() {
    let now = Instant::now();
    let mut s = server(now);
    s.receive_eof(now);
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.close_code(), 1006);
    assert!(s.wants_close_transport());
}

#[derive(Clone, Debug)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    prop_oneof![
        ".{0,300}".prop_map(Msg::Text),
        proptest::collection::vec(any::<u8>(), 0..70_000).prop_map(Msg::Binary),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(Msg::Ping),
    ]
}

/// Encodes `msgs` as a client would, fragmenting data messages into `frag` pieces.
fn encode_all(msgs: &[Msg], frag: usize) -> (Vec<u8>, Vec<Event>) {
    let mut out = Vec::new();
    let mut want = Vec::new();
    for m in msgs {
        match m {
            Msg::Ping(p) => {
                out.extend(cframe(true, 9, p));
                want.push(Event::Ping(p.clone()));
            }
            Msg::Text(_) | Msg::Binary(_) => {
                let (op, bytes, ev) = match m {
                    Msg::Text(t) => (1, t.as_bytes().to_vec(), Event::Text(t.clone().into())),
                    Msg::Binary(b) => (2, b.clone(), Event::Binary(b.clone().into())),
                    Msg::Ping(_) => unreachable!(),
                };
                let size = bytes.len().div_ceil(frag).max(1);
                let pieces: Vec<&[u8]> = if bytes.is_empty() {
                    vec![&[]]
                } else {
                    bytes.chunks(size).collect()
                };
                for (i, p) in pieces.iter().enumerate() {
                    let last = i + 1 == pieces.len();
                    out.extend(cframe(last, if i == 0 { op } else { 0 }, p));
                }
                want.push(ev);
            }
        }
    }
    (out, want)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_chunking_gives_the_same_events(
        msgs in proptest::collection::vec(msg_strategy(), 1..6),
        frag in 1usize..5,
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let now = Instant::now();
        let (bytes, want) = encode_all(&msgs, frag);
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut s = server(now);
        let mut prev = 0;
        for p in points.into_iter().chain(std::iter::once(bytes.len())) {
            s.receive(&bytes[prev..p], now);
            prev = p;
        }
        prop_assert_eq!(events(&mut s), want);
    }

    #[test]
    fn shared_receive_gives_the_same_events_as_receive(
        msgs in proptest::collection::vec(msg_strategy(), 1..6),
        frag in 1usize..5,
        cuts in proptest::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..20),
    ) {
        let now = Instant::now();
        let (bytes, want) = encode_all(&msgs, frag);
        let mut points: Vec<(usize, bool)> =
            cuts.iter().map(|(i, shared)| (i.index(bytes.len() + 1), *shared)).collect();
        points.sort_unstable();
        let mut s = server(now);
        let mut prev = 0;
        for (p, shared) in points.into_iter().chain(std::iter::once((bytes.len(), true))) {
            feed(&mut s, &bytes[prev..p], shared, now);
            prev = p;
        }
        prop_assert_eq!(events(&mut s), want);
    }

    #[test]
    fn shared_receive_agrees_with_receive_on_arbitrary_input(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        chunk in 1usize..400,
        role in prop_oneof![Just(Role::Client), Just(Role::Server)],
    ) {
        let now = Instant::now();
        let config = Config::default().max_message_size(512);
        let mut copying = Connection::new(role, config.clone(), now);
        let mut sharing = Connection::new(role, config, now);
        for piece in data.chunks(chunk) {
            copying.receive(piece, now);
            sharing.receive_shared(BytesMut::from(piece), now);
        }
        prop_assert_eq!(events(&mut sharing), events(&mut copying));
        let (ours, theirs) = (sharing.take_transmit(), copying.take_transmit());
        match role {
            Role::Server => prop_assert_eq!(ours, theirs),
            // A client masks with a fresh random key: the same frames, other bytes.
            Role::Client => prop_assert_eq!(ours.len(), theirs.len()),
        }
    }

    #[test]
    fn one_byte_at_a_time_equals_all_at_once(msgs in proptest::collection::vec(msg_strategy(), 1..4)) {
        let now = Instant::now();
        let (bytes, want) = encode_all(&msgs, 2);
        let mut s = server(now);
        for b in bytes.chunks(1) {
            s.receive(b, now);
        }
        prop_assert_eq!(events(&mut s), want);
    }

    #[test]
    fn server_to_client_round_trip(msgs in proptest::collection::vec(msg_strategy(), 1..6)) {
        let now = Instant::now();
        let mut s = server(now);
        let mut want = Vec::new();
        for m in &msgs {
            match m {
                Msg::Text(t) => { s.send_text(t).unwrap(); want.push(Event::Text(t.clone().into())); }
                Msg::Binary(b) => { s.send_binary(b).unwrap(); want.push(Event::Binary(b.clone().into())); }
                Msg::Ping(p) => { s.ping(p, now).unwrap(); want.push(Event::Ping(p.clone())); }
            }
        }
        prop_assert_eq!(decode_output(&mut s, now), want);
    }

    #[test]
    fn arbitrary_input_never_panics(
        data in proptest::collection::vec(any::<u8>(), 0..2000),
        role in prop_oneof![Just(Role::Client), Just(Role::Server)],
    ) {
        let now = Instant::now();
        let mut c = Connection::new(role, Config::default().max_message_size(512), now);
        for chunk in data.chunks(7) {
            c.receive(chunk, now);
        }
        while let Some(ev) = c.poll_event() {
            if let Event::Error(e) = ev {
                prop_assert!([1002, 1007, 1009].contains(&e.close_code()));
            }
        }
    }

    #[test]
    fn direct_reads_give_the_same_events_as_receive(
        msgs in proptest::collection::vec(big_msg_strategy(), 1..6),
        frag in 1usize..4,
        steps in proptest::collection::vec(1usize..40_000, 1..8),
    ) {
        let now = Instant::now();
        let (bytes, want) = encode_all(&msgs, frag);
        let mut s = server(now);
        feed_with_direct_reads(&mut s, &bytes, &steps, now);
        prop_assert_eq!(events(&mut s), want);
    }

    #[test]
    fn payloads_sent_by_value_arrive_whole_across_partial_vectored_writes(
        msgs in proptest::collection::vec(msg_strategy(), 1..6),
        role in prop_oneof![Just(Role::Client), Just(Role::Server)],
        writes in proptest::collection::vec((1usize..5, 1usize..50_000), 1..8),
    ) {
        let now = Instant::now();
        let mut tx = Connection::new(role, Config::default(), now);
        let mut want = Vec::new();
        for m in &msgs {
            match m {
                Msg::Text(t) => {
                    tx.send_message(OpCode::Text, t.clone().into_bytes().into(), true).unwrap();
                    want.push(Event::Text(t.clone().into()));
                }
                Msg::Binary(b) => {
                    tx.send_message(OpCode::Binary, b.clone().into(), true).unwrap();
                    want.push(Event::Binary(b.clone().into()));
                }
                Msg::Ping(p) => {
                    tx.ping(p, now).unwrap();
                    want.push(Event::Ping(p.clone()));
                }
            }
        }
        // A writer that takes a few parts at a time and writes only part of them.
        let mut wire = Vec::new();
        let mut i = 0;
        while tx.buffered_amount() > 0 {
            let (parts, limit) = writes[i % writes.len()];
            i += 1;
            let mut slots = vec![std::io::IoSlice::new(&[]); parts];
            let filled = tx.transmit_vectored(&mut slots);
            prop_assert!(filled > 0);
            let mut written = 0;
            for part in &slots[..filled] {
                let k = part.len().min(limit - written);
                wire.extend_from_slice(&part[..k]);
                written += k;
                if written == limit {
                    break;
                }
            }
            let before = tx.buffered_amount();
            tx.advance_transmit(written);
            prop_assert_eq!(tx.buffered_amount(), before - written);
        }
        let peer_role = match role {
            Role::Client => Role::Server,
            Role::Server => Role::Client,
        };
        let mut rx = Connection::new(peer_role, Config::default(), now);
        rx.receive(&wire, now);
        prop_assert_eq!(events(&mut rx), want);
    }
}

// ---------------------------------------------------------------------------------------------
// Zero-copy paths: payloads read straight into the message buffer, payloads sent by value
// ---------------------------------------------------------------------------------------------

/// Feeds `bytes` to `conn` the way the tokio driver does: whenever the core offers to take
/// the rest of a frame directly, append up to the next step's size through
/// `read_payload_with`, otherwise `receive` the next step's bytes.
fn feed_with_direct_reads(conn: &mut Connection, bytes: &[u8], steps: &[usize], now: Instant) {
    let mut pos = 0;
    let mut i = 0;
    while pos < bytes.len() {
        let step = steps[i % steps.len()].clamp(1, bytes.len() - pos);
        i += 1;
        let direct = conn.read_payload_with(now, |buf, max| {
            assert!(max > 0, "the core offers room");
            assert!(buf.capacity() - buf.len() >= max, "the room is reserved");
            let k = step.min(max);
            buf.extend_from_slice(&bytes[pos..pos + k]);
            k
        });
        match direct {
            Some(k) => pos += k,
            None => {
                conn.receive(&bytes[pos..pos + step], now);
                pos += step;
            }
        }
    }
}

/// [`msg_strategy`] plus long text (2,000 to 12,000 characters of any width), so that text
/// frames too are read in place.
fn big_msg_strategy() -> impl Strategy<Value = Msg> {
    prop_oneof![
        3 => msg_strategy(),
        1 => proptest::collection::vec(any::<char>(), 2_000..12_000)
            .prop_map(|c| Msg::Text(c.into_iter().collect())),
    ]
}

#[test]
fn large_payload_sent_by_value_is_not_copied_and_keeps_its_place() {
    let now = Instant::now();
    let mut s = server(now);
    s.send_binary(b"first").unwrap();
    let big = vec![7u8; 100_000];
    let addr = big.as_ptr();
    s.send_message(OpCode::Binary, big.into(), false).unwrap();
    s.pong(b"p").unwrap();
    {
        let mut parts = [std::io::IoSlice::new(&[]); 8];
        let n = s.transmit_vectored(&mut parts);
        // The first frame and the big frame's header, the big payload itself, then the Pong.
        assert_eq!(n, 3);
        assert_eq!(&parts[0][..7], &[0x82, 5, b'f', b'i', b'r', b's', b't']);
        assert_eq!(&parts[0][7..], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x86, 0xA0]);
        assert_eq!(
            parts[1].as_ptr(),
            addr,
            "the payload is written from its own allocation"
        );
        assert_eq!(&parts[2][..], &[0x8A, 1, b'p']);
    }
    assert_eq!(s.buffered_amount(), 17 + 100_000 + 3);
    // transmit() hands out one part at a time.
    assert_eq!(s.transmit().len(), 17);
    s.advance_transmit(17 + 50_000);
    assert_eq!(s.transmit().len(), 50_000);
    s.advance_transmit(50_000);
    assert_eq!(s.transmit(), &[0x8A, 1, b'p']);
    s.advance_transmit(3);
    assert_eq!(s.buffered_amount(), 0);
    assert!(s.transmit().is_empty());
    // Small payloads are copied into the transmit buffer as before.
    s.send_message(OpCode::Text, b"hi".to_vec().into(), false)
        .unwrap();
    assert_eq!(s.transmit_vectored(&mut [std::io::IoSlice::new(&[]); 8]), 1);
    assert_eq!(s.take_transmit(), [0x81, 2, b'h', b'i']);
}

#[test]
fn direct_reads_are_offered_only_inside_large_data_frames() {
    let now = Instant::now();
    let mut s = server(now);
    let offered = |s: &mut Connection| s.read_payload_with(now, |_, _| ()).is_some();
    assert!(!offered(&mut s), "no frame in progress");
    let small = cframe(true, 2, &[1; 4000]);
    s.receive(&small[..100], now);
    assert!(!offered(&mut s), "less than 8 KiB to come");
    s.receive(&small[100..], now);
    let big = cframe(true, 2, &[1; 20_000]);
    s.receive(&big[..8], now);
    assert!(offered(&mut s));
    // The payload still expected bounds what may be appended.
    let max = s.read_payload_with(now, |_, max| max).unwrap();
    assert!((1..=20_000).contains(&max), "{max}");
    let ping = cframe(true, 9, b"x");
    let mut c = server(now);
    c.receive(&ping[..3], now);
    assert!(!offered(&mut c), "control frames go through receive");
}

#[test]
fn direct_read_that_removes_bytes_fails_with_1011_instead_of_losing_them_silently() {
    let now = Instant::now();
    let mut s = server(now);
    let frame = cframe(true, 2, &[9; 30_000]);
    s.receive(&frame[..5_000], now);
    s.read_payload_with(now, |buf, _| buf.truncate(10)).unwrap();
    match events(&mut s).as_slice() {
        [Event::Error(e)] => {
            assert_eq!(e, &ProtocolError::Internal);
            assert_eq!(e.close_code(), close_code::INTERNAL_ERROR);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.state(), State::Closed);
}

#[test]
fn direct_read_of_invalid_utf8_fails_fast_with_1007() {
    let now = Instant::now();
    let mut s = server(now);
    let mut text = vec![b'a'; 30_000];
    text[20_000] = 0xFF;
    let frame = cframe(true, 1, &text);
    s.receive(&frame[..8], now);
    // Append up to the bad byte and a little past it, without finishing the frame.
    s.read_payload_with(now, |buf, max| {
        let k = max.min(20_100);
        buf.extend_from_slice(&frame[8..8 + k]);
    })
    .unwrap();
    assert_eq!(events(&mut s), [Event::Error(ProtocolError::InvalidUtf8)]);
    assert!(
        s.read_payload_with(now, |_, _| ()).is_none(),
        "nothing more is read after a failure"
    );
}

#[test]
fn whole_message_in_a_shared_read_is_a_slice_of_it() {
    let now = Instant::now();
    let mut s = server(now);
    let mut wire = cframe(true, 2, &[7u8; 3000]);
    wire.extend(cframe(true, 1, "héllo".as_bytes()));
    // A fragmented message and a Ping between whole ones take the copying path.
    wire.extend(cframe(false, 1, b"frag"));
    wire.extend(cframe(true, 9, b"p"));
    wire.extend(cframe(true, 0, b"ment"));
    wire.extend(cframe(true, 2, &[9u8; 100]));
    let read = BytesMut::from(&wire[..]);
    let range = read.as_ptr() as usize..read.as_ptr() as usize + read.len();
    s.receive_shared(read, now);
    let got = events(&mut s);
    assert_eq!(
        got,
        vec![
            Event::Binary(vec![7u8; 3000].into()),
            Event::Text("héllo".into()),
            Event::Ping(b"p".to_vec()),
            Event::Text("fragment".into()),
            Event::Binary(vec![9u8; 100].into()),
        ]
    );
    let inside = |p: *const u8| range.contains(&(p as usize));
    match (&got[0], &got[1], &got[3], &got[4]) {
        (Event::Binary(a), Event::Text(b), Event::Text(frag), Event::Binary(c)) => {
            assert!(inside(a.as_ptr()) && inside(b.as_ptr()) && inside(c.as_ptr()));
            assert!(
                !inside(frag.as_ptr()),
                "a reassembled message has its own buffer"
            );
        }
        other => panic!("unexpected events {other:?}"),
    }
    // The Pong for the Ping went out.
    assert_eq!(s.take_transmit(), [0x8A, 1, b'p']);
}

#[test]
fn shared_receive_keeps_limits_and_utf8_checks() {
    let now = Instant::now();
    let mut s = Connection::new(Role::Server, Config::default().max_message_size(100), now);
    s.receive_shared(BytesMut::from(&cframe(true, 2, &[0u8; 101])[..]), now);
    assert!(matches!(
        events(&mut s)[..],
        [Event::Error(ProtocolError::MessageTooLarge { max: 100 })]
    ));
    let mut s = server(now);
    s.receive_shared(BytesMut::from(&cframe(true, 1, b"ok\xFF")[..]), now);
    assert_eq!(
        events(&mut s),
        vec![Event::Error(ProtocolError::InvalidUtf8)]
    );
    assert_eq!(
        s.take_transmit()[..2],
        [0x88, 2 + "invalid UTF-8".len() as u8]
    );
}

/// Found by `shared_receive_agrees_with_receive_on_arbitrary_input`: invalid UTF-8 in a text
/// fragment followed, in the same read, by a frame with reserved bits was reported as 1002
/// when both arrived together and as 1007 when cut between them.
#[test]
fn first_error_in_the_stream_wins_however_the_input_is_cut() {
    let now = Instant::now();
    let mut wire = cframe(false, 1, b"ok\xFF");
    wire.extend(raw_frame(true, 0b100, 0, Some(KEY), b"x"));
    for cut in 0..=wire.len() {
        let mut s = server(now);
        s.receive(&wire[..cut], now);
        s.receive(&wire[cut..], now);
        assert_eq!(
            events(&mut s),
            vec![Event::Error(ProtocolError::InvalidUtf8)],
            "cut at {cut}"
        );
    }
}

/// A ping flood from a peer that never reads (measured before the fix: two million pings
/// grew a server by about 240 MB). Pings are answered one by one while the queue up to the
/// last Pong is short (16 KiB); past that, a new Ping replaces the one waiting for an answer
/// (RFC 6455 5.5.3), so the transmit queue stays bounded however many Pings arrive. The
/// latest Ping is answered once the waiting Pongs are out, and every Ping is still reported.
#[test]
fn ping_flood_from_a_peer_that_never_reads_keeps_the_queue_bounded() {
    let now = Instant::now();
    let mut s = server(now);
    let pings = 100_000u32;
    let mut flood = Vec::new();
    for i in 0..pings {
        flood.extend_from_slice(&cframe(true, 9, &i.to_be_bytes()));
    }
    let mut reported = 0;
    for chunk in flood.chunks(4096) {
        s.receive(chunk, now);
        // The driver takes the events (it does while reading) but cannot write.
        reported += events(&mut s).len();
    }
    assert_eq!(reported, pings as usize);
    // Pong frames of six bytes (two header bytes, four of payload), up to just past 16 KiB.
    let queued = s.buffered_amount();
    assert_eq!(queued % 6, 0);
    assert!(
        (16 * 1024..16 * 1024 + 6 * 2).contains(&queued),
        "{queued} bytes queued"
    );
    let answered = (queued / 6) as u32;
    // Written out: the first Pings in order, then the latest one.
    let mut want: Vec<Event> = (0..answered)
        .map(|i| Event::Pong {
            payload: i.to_be_bytes().to_vec(),
            rtt: None,
        })
        .collect();
    want.push(Event::Pong {
        payload: (pings - 1).to_be_bytes().to_vec(),
        rtt: None,
    });
    assert_eq!(decode_output(&mut s, now), want);
    assert_eq!(s.buffered_amount(), 0);
    // With the queue empty again, a Ping is answered at once, as before.
    s.receive(&cframe(true, 9, b"again"), now);
    assert_eq!(events(&mut s), vec![Event::Ping(b"again".to_vec())]);
    assert_eq!(
        decode_output(&mut s, now),
        vec![Event::Pong {
            payload: b"again".to_vec(),
            rtt: None
        }]
    );
}

/// Ten Pings in a row, nothing written in between (Autobahn 2.10): ten Pongs, in order.
#[test]
fn a_few_pings_in_a_row_get_a_pong_each() {
    let now = Instant::now();
    let mut s = server(now);
    let mut input = Vec::new();
    for i in 0..10u8 {
        input.extend_from_slice(&cframe(true, 9, &[i; 125]));
    }
    s.receive(&input, now);
    let _ = events(&mut s);
    let want: Vec<Event> = (0..10u8)
        .map(|i| Event::Pong {
            payload: vec![i; 125],
            rtt: None,
        })
        .collect();
    assert_eq!(decode_output(&mut s, now), want);
}

/// Pongs behind a large unwritten message: a Ping that arrives while the last Pong is more
/// than 16 KiB from being written waits, and only the latest such Ping is answered once
/// that Pong is out; data queued meanwhile keeps its order.
#[test]
fn a_ping_answered_late_keeps_the_order_of_what_was_queued() {
    let now = Instant::now();
    let mut s = server(now);
    s.send_binary(&[7; BIG]).unwrap();
    s.receive(&cframe(true, 9, b"a"), now);
    s.send_text("after a").unwrap();
    s.receive(&cframe(true, 9, b"b"), now);
    s.receive(&cframe(true, 9, b"c"), now);
    let _ = events(&mut s);
    // Part of the message is written: the Pong for "a" still waits, "c" is pending.
    s.advance_transmit(5_000);
    let rest = decode_output_from(&mut s, 5_000, now);
    assert_eq!(
        rest,
        vec![
            Event::Pong {
                payload: b"a".to_vec(),
                rtt: None
            },
            Event::Text("after a".into()),
            Event::Pong {
                payload: b"c".to_vec(),
                rtt: None
            },
        ]
    );
}

/// A Ping answered at once, while an older one still waits for its answer, supersedes the
/// older one: no Pong ever follows the answer to a newer Ping (RFC 6455 5.5.3 lets an
/// endpoint answer only the most recent Ping).
#[test]
fn a_pending_ping_is_dropped_when_a_newer_one_is_answered_first() {
    let now = Instant::now();
    let mut s = server(now);
    s.send_binary(&[7; BIG]).unwrap();
    s.receive(&cframe(true, 9, b"a"), now);
    s.send_text("after a").unwrap();
    s.receive(&cframe(true, 9, b"b"), now);
    s.receive(&cframe(true, 9, b"c"), now);
    let _ = events(&mut s);
    // Most of the message is written: the Pong for "a" is now within the backlog, so "d"
    // is answered at once and "c", still pending, must not be answered after it.
    s.advance_transmit(30_000);
    s.receive(&cframe(true, 9, b"d"), now);
    let _ = events(&mut s);
    let rest = decode_output_from(&mut s, 30_000, now);
    assert_eq!(
        rest,
        vec![
            Event::Pong {
                payload: b"a".to_vec(),
                rtt: None
            },
            Event::Text("after a".into()),
            Event::Pong {
                payload: b"d".to_vec(),
                rtt: None
            },
        ]
    );
}

/// The large message of [`a_ping_answered_late_keeps_the_order_of_what_was_queued`].
const BIG: usize = 40_000;

/// Decodes what `from` still has to transmit, given that the first `skip` bytes of a frame
/// of `BIG` `7`s were written already: prepends them so a peer can parse the whole.
fn decode_output_from(from: &mut Connection, skip: usize, now: Instant) -> Vec<Event> {
    let mut peer = Connection::new(Role::Client, Config::default(), now);
    let mut head = Vec::new();
    encode_frame(&mut head, true, false, OpCode::Binary, None, &[7; BIG]);
    peer.receive(&head[..skip], now);
    let mut got = Vec::new();
    while from.buffered_amount() > 0 {
        let part = from.transmit().to_vec();
        from.advance_transmit(part.len());
        peer.receive(&part, now);
        got.extend(events(&mut peer));
    }
    assert!(matches!(got.first(), Some(Event::Binary(_))), "{got:?}");
    got.remove(0);
    got
}

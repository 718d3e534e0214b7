//! The resume protocol's state machine, without a runtime: any interleaving of sends,
//! deliveries, acknowledgement timers, dropped connections and resumes gives each
//! application every message the other sent, exactly once and in order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use tether_proto::bytes::Bytes;
use tether_proto::session::{
    BufferFull, Control, Kind, Session, SessionConfig, SessionError, SessionId,
};
use tether_proto::OpCode;

/// What a test application sends: its own number, as text or binary by parity.
fn message(n: u64) -> (Kind, Bytes) {
    let kind = if n % 2 == 0 { Kind::Binary } else { Kind::Text };
    (kind, Bytes::from(n.to_string()))
}

fn number(kind: Kind, payload: &Bytes) -> u64 {
    let n: u64 = std::str::from_utf8(payload).unwrap().parse().unwrap();
    assert_eq!(message(n).0, kind, "message {n} arrived as the wrong kind");
    n
}

/// One end: its session and what its application sent and took.
struct End {
    session: Session,
    next: u64,
    taken: Vec<u64>,
}

impl End {
    fn new(id: SessionId, config: &SessionConfig) -> Self {
        Self {
            session: Session::new(id, config.clone()),
            next: 1,
            taken: Vec::new(),
        }
    }

    fn send(&mut self) {
        let (kind, payload) = message(self.next);
        // A full buffer refuses (backpressure): the application tries again later.
        if let Ok(seq) = self.session.send(kind, payload) {
            assert_eq!(seq, self.next);
            self.next += 1;
        }
    }

    fn take(&mut self, k: usize, now: Instant) {
        for _ in 0..k {
            let Some((kind, payload)) = self.session.poll_message(now) else {
                return;
            };
            let n = number(kind, &payload);
            assert_eq!(n, self.taken.len() as u64 + 1, "in order, exactly once");
            self.taken.push(n);
        }
    }
}

/// Client and server with the connection between them.
struct Pair {
    client: End,
    server: End,
    up: bool,
    to_server: VecDeque<(OpCode, Bytes)>,
    to_client: VecDeque<(OpCode, Bytes)>,
    now: Instant,
    resumes: u64,
}

impl Pair {
    fn new(config: &SessionConfig) -> Self {
        let id = SessionId::random();
        let mut pair = Self {
            client: End::new(id, config),
            server: End::new(id, config),
            up: false,
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            now: Instant::now(),
            resumes: 0,
        };
        pair.connect();
        pair
    }

    /// The opening of a connection: Hello, Welcome, both ends up.
    fn connect(&mut self) {
        if self.up {
            return;
        }
        let hello = Control::Hello {
            id: Some(self.client.session.id()),
            delivered: self.client.session.delivered(),
        };
        let Control::Hello { id, delivered } = Control::decode(&hello.encode()).unwrap() else {
            unreachable!()
        };
        assert_eq!(id, Some(self.server.session.id()));
        let welcome = Control::Welcome {
            id: self.server.session.id(),
            resumed: true,
            delivered: self.server.session.delivered(),
            reason: String::new(),
        };
        let Control::Welcome {
            delivered: server_delivered,
            ..
        } = Control::decode(&welcome.encode()).unwrap()
        else {
            unreachable!()
        };
        self.server.session.link_up(delivered).unwrap();
        self.client.session.link_up(server_delivered).unwrap();
        self.up = true;
        self.resumes += 1;
    }

    /// The connection breaks: whatever is in flight is lost.
    fn cut(&mut self) {
        self.up = false;
        self.to_server.clear();
        self.to_client.clear();
        self.client.session.link_down();
        self.server.session.link_down();
    }

    /// Moves up to `k` messages each way: out of the senders, and into the receivers.
    fn pump(&mut self, k: usize) {
        if !self.up {
            return;
        }
        for _ in 0..k {
            if let Some(m) = self.client.session.poll_transmit() {
                self.to_server.push_back(m);
            }
            if let Some(m) = self.server.session.poll_transmit() {
                self.to_client.push_back(m);
            }
        }
        for _ in 0..k {
            if let Some((op, payload)) = self.to_server.pop_front() {
                self.server.session.receive(op, payload).unwrap();
            }
            if let Some((op, payload)) = self.to_client.pop_front() {
                self.client.session.receive(op, payload).unwrap();
            }
        }
    }

    fn tick(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.client.session.handle_timeout(self.now);
        self.server.session.handle_timeout(self.now);
    }

    /// Reconnects if needed and runs until nothing moves; then every message sent must have
    /// been taken, and every message acknowledged.
    fn settle(&mut self) {
        self.connect();
        for _ in 0..100_000 {
            self.pump(64);
            self.client.take(64, self.now);
            self.server.take(64, self.now);
            self.tick(200);
            let quiet = self.to_server.is_empty()
                && self.to_client.is_empty()
                && !self.client.session.has_message()
                && !self.server.session.has_message()
                && self.client.session.buffered().0 == 0
                && self.server.session.buffered().0 == 0;
            if quiet {
                break;
            }
        }
        let all = |n: u64| (1..n).collect::<Vec<_>>();
        assert_eq!(self.server.taken, all(self.client.next));
        assert_eq!(self.client.taken, all(self.server.next));
        assert_eq!(self.client.session.peer_delivered(), self.client.next - 1);
        assert_eq!(self.server.session.peer_delivered(), self.server.next - 1);
    }
}

#[derive(Clone, Debug)]
enum Step {
    SendClient(u8),
    SendServer(u8),
    Pump(u8),
    TakeClient(u8),
    TakeServer(u8),
    Tick(u16),
    Cut,
    Connect,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1u8..20).prop_map(Step::SendClient),
        4 => (1u8..20).prop_map(Step::SendServer),
        4 => (1u8..30).prop_map(Step::Pump),
        3 => (1u8..30).prop_map(Step::TakeClient),
        3 => (1u8..30).prop_map(Step::TakeServer),
        2 => (1u16..300).prop_map(Step::Tick),
        1 => Just(Step::Cut),
        1 => Just(Step::Connect),
    ]
}

fn run(steps: &[Step], config: &SessionConfig) -> Pair {
    let mut pair = Pair::new(config);
    for s in steps {
        match *s {
            Step::SendClient(n) => (0..n).for_each(|_| pair.client.send()),
            Step::SendServer(n) => (0..n).for_each(|_| pair.server.send()),
            Step::Pump(k) => pair.pump(usize::from(k)),
            Step::TakeClient(k) => pair.client.take(usize::from(k), pair.now),
            Step::TakeServer(k) => pair.server.take(usize::from(k), pair.now),
            Step::Tick(ms) => pair.tick(u64::from(ms)),
            Step::Cut => pair.cut(),
            Step::Connect => pair.connect(),
        }
    }
    pair.settle();
    pair
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_interleaving_of_drops_and_deliveries_is_exactly_once_in_order(
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        run(&steps, &SessionConfig::default());
    }

    #[test]
    fn small_buffers_push_back_instead_of_dropping(
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let config = SessionConfig {
            max_buffered_messages: 5,
            max_buffered_bytes: 12,
            ack_every: 2,
            ..SessionConfig::default()
        };
        run(&steps, &config);
    }
}

#[test]
fn messages_sent_while_disconnected_are_delivered_after_the_resume() {
    let config = SessionConfig::default();
    let mut pair = Pair::new(&config);
    pair.cut();
    for _ in 0..10 {
        pair.client.send();
        pair.server.send();
    }
    assert!(
        pair.client.session.poll_transmit().is_none(),
        "nothing goes out while down"
    );
    pair.settle();
    assert_eq!(pair.resumes, 2);
}

#[test]
fn a_resume_replays_exactly_what_the_peer_did_not_take() {
    let mut pair = Pair::new(&SessionConfig::default());
    for _ in 0..5 {
        pair.client.send();
    }
    pair.pump(5);
    // The server took two; three were received and not taken when the connection broke.
    pair.server.take(2, pair.now);
    pair.cut();
    assert_eq!(pair.client.session.buffered().0, 5, "none acknowledged yet");
    let hello_delivered = pair.server.session.delivered();
    assert_eq!(hello_delivered, 2);
    assert_eq!(pair.client.session.link_up(hello_delivered), Ok(3));
    pair.server
        .session
        .link_up(pair.client.session.delivered())
        .unwrap();
    pair.up = true;
    assert_eq!(pair.client.session.buffered().0, 3);
    pair.settle();
    assert_eq!(pair.server.taken, [1, 2, 3, 4, 5]);
}

#[test]
fn acknowledgements_are_coalesced_by_count_and_by_timer() {
    let config = SessionConfig {
        ack_every: 4,
        ack_delay: Duration::from_millis(50),
        ..SessionConfig::default()
    };
    let mut pair = Pair::new(&config);
    for _ in 0..6 {
        pair.client.send();
    }
    pair.pump(6);
    pair.server.take(3, pair.now);
    let acks = |s: &mut Session| std::iter::from_fn(|| s.poll_transmit()).count();
    assert_eq!(
        acks(&mut pair.server.session),
        0,
        "three taken: below the count"
    );
    assert_eq!(
        pair.server.session.poll_timeout(),
        Some(pair.now + Duration::from_millis(50))
    );
    pair.server.take(1, pair.now);
    let ack = pair
        .server
        .session
        .poll_transmit()
        .expect("the fourth triggers an ack");
    assert_eq!(Control::decode(&ack.1), Ok(Control::Ack { delivered: 4 }));
    pair.server.take(2, pair.now);
    assert!(pair.server.session.poll_transmit().is_none());
    pair.tick(49);
    assert!(pair.server.session.poll_transmit().is_none(), "not due yet");
    pair.tick(1);
    let ack = pair
        .server
        .session
        .poll_transmit()
        .expect("the timer sends the rest");
    assert_eq!(Control::decode(&ack.1), Ok(Control::Ack { delivered: 6 }));
    pair.client.session.receive(ack.0, ack.1).unwrap();
    assert_eq!(pair.client.session.buffered(), (0, 0));
}

#[test]
fn a_full_buffer_refuses_until_acknowledged() {
    let config = SessionConfig {
        max_buffered_messages: 3,
        ..SessionConfig::default()
    };
    let mut s = Session::new(SessionId::random(), config);
    for i in 1..=3 {
        assert_eq!(s.send(Kind::Text, Bytes::from("x")), Ok(i));
    }
    assert_eq!(s.send(Kind::Text, Bytes::from("x")), Err(BufferFull));
    s.link_up(2).unwrap();
    assert_eq!(s.buffered(), (1, 1));
    assert_eq!(s.send(Kind::Text, Bytes::from("x")), Ok(4));
    let unacked: Vec<u64> = s.unacknowledged().map(|(n, _, _)| n).collect();
    assert_eq!(unacked, [3, 4]);
    // One message larger than the byte limit still goes into an empty buffer.
    let mut big = Session::new(
        SessionId::random(),
        SessionConfig {
            max_buffered_bytes: 4,
            ..SessionConfig::default()
        },
    );
    assert_eq!(big.send(Kind::Binary, Bytes::from(vec![0; 10])), Ok(1));
    assert_eq!(
        big.send(Kind::Binary, Bytes::from(vec![0; 1])),
        Err(BufferFull)
    );
}

#[test]
fn a_peer_that_breaks_the_protocol_gets_a_clear_error() {
    let mut s = Session::new(SessionId::random(), SessionConfig::default());
    s.send(Kind::Text, Bytes::from("a")).unwrap();
    assert_eq!(
        s.link_up(2),
        Err(SessionError::AckBeyondSent { acked: 2, sent: 1 })
    );
    s.link_up(1).unwrap();
    assert_eq!(
        s.link_up(0),
        Err(SessionError::AckWentBack { before: 1, now: 0 })
    );
    let hello = Control::Hello {
        id: None,
        delivered: 0,
    };
    assert_eq!(
        s.receive(OpCode::Binary, hello.encode()),
        Err(SessionError::UnexpectedHandshake)
    );
    for bad in [
        &b""[..],
        b"\x01\x00",
        b"\x07",
        b"\x02\x09",
        b"\x01\0\0\0\0\0\0\0\0\0",
    ] {
        assert!(
            s.receive(OpCode::Binary, Bytes::copy_from_slice(bad))
                .is_err(),
            "{bad:?}"
        );
    }
    assert_eq!(SessionError::UnexpectedHandshake.close_code(), 1002);
}

#[test]
fn control_messages_round_trip() {
    let id = SessionId::random();
    for control in [
        Control::Hello {
            id: None,
            delivered: 0,
        },
        Control::Hello {
            id: Some(id),
            delivered: u64::MAX,
        },
        Control::Welcome {
            id,
            resumed: false,
            delivered: 7,
            reason: "expired".into(),
        },
        Control::Welcome {
            id,
            resumed: true,
            delivered: 0,
            reason: String::new(),
        },
        Control::Ack { delivered: 42 },
    ] {
        assert_eq!(Control::decode(&control.encode()), Ok(control));
    }
    assert_eq!(SessionId::parse(&id.to_string()), Some(id));
    assert_eq!(SessionId::parse("xyz"), None);
    // A long reason is cut on a character boundary.
    let welcome = Control::Welcome {
        id,
        resumed: false,
        delivered: 0,
        reason: "é".repeat(200),
    };
    match Control::decode(&welcome.encode()).unwrap() {
        Control::Welcome { reason, .. } => assert_eq!(reason, "é".repeat(127)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_session_restored_from_its_snapshot_resumes_where_the_original_stopped() {
    let mut pair = Pair::new(&SessionConfig::default());
    for _ in 0..6 {
        pair.client.send();
        pair.server.send();
    }
    pair.pump(4);
    pair.server.take(3, pair.now);
    pair.client.take(2, pair.now);
    pair.cut();
    // The server process goes away; another one resumes from what a store kept.
    let snapshot = pair.server.session.snapshot();
    assert_eq!(snapshot.sent, 6);
    assert_eq!(snapshot.delivered, 3);
    assert_eq!(
        snapshot.peer_delivered + snapshot.unacknowledged.len() as u64,
        6
    );
    let id = pair.server.session.id();
    let config = pair.server.session.config().clone();
    pair.server.session = Session::restore(id, config.clone(), snapshot.clone()).unwrap();
    assert_eq!(pair.server.session.delivered(), 3);
    pair.settle();
    assert_eq!(pair.server.taken, [1, 2, 3, 4, 5, 6]);
    assert_eq!(pair.client.taken, [1, 2, 3, 4, 5, 6]);

    // A snapshot whose counts do not add up is refused, not trusted.
    let mut broken = snapshot;
    broken.sent += 1;
    assert!(matches!(
        Session::restore(id, config, broken),
        Err(SessionError::Malformed(_))
    ));
}

#[test]
fn a_client_names_its_session_when_the_server_does() {
    let mut client = Session::new(SessionId::from_bytes([0; 16]), SessionConfig::default());
    client
        .send(Kind::Text, Bytes::from_static(b"early"))
        .unwrap();
    let id = SessionId::random();
    client.set_id(id);
    assert_eq!(client.id(), id);
    assert_eq!(client.link_up(0), Ok(1), "the early message goes out first");
    assert_eq!(
        client.poll_transmit(),
        Some((OpCode::Text, Bytes::from_static(b"early")))
    );
}

#[test]
fn an_acknowledgement_rides_along_with_data_going_out_anyway() {
    let config = SessionConfig {
        ack_every: 100,
        ..SessionConfig::default()
    };
    let mut pair = Pair::new(&config);
    pair.client_delivers(1);
    assert!(
        pair.server.session.poll_timeout().is_some(),
        "the timer runs"
    );
    // Nothing to write: no ACK yet.
    pair.server.session.piggyback_ack();
    assert!(pair.server.session.poll_transmit().is_none());
    // A reply goes out: the ACK goes with it, and the timer is off.
    pair.server.send();
    pair.server.session.piggyback_ack();
    let first = pair.server.session.poll_transmit().unwrap();
    let second = pair.server.session.poll_transmit().unwrap();
    assert_eq!(
        Control::decode(&second.1).ok(),
        Some(Control::Ack { delivered: 1 })
    );
    assert_eq!(first.0, OpCode::Text, "the reply itself");
    assert!(pair.server.session.poll_timeout().is_none());
}

#[test]
fn held_acknowledgements_wait_for_the_store_to_confirm_deliveries() {
    let config = SessionConfig {
        ack_every: 2,
        ..SessionConfig::default()
    };
    let mut pair = Pair::new(&config);
    pair.server.session.hold_acks();
    pair.client_delivers(4);
    assert_eq!(pair.server.session.delivered(), 4);
    assert_eq!(pair.server.session.ackable(), 0);
    // Neither the count nor the timer acknowledges what is not confirmed.
    pair.tick(1_000);
    assert!(pair.server.session.poll_transmit().is_none(), "no ACK yet");
    assert!(pair.server.session.poll_timeout().is_none());
    // One confirmed: below the count, so the timer starts; it then acknowledges 1 only.
    pair.server.session.confirm_delivered(1, pair.now);
    assert!(pair.server.session.poll_transmit().is_none());
    assert!(pair.server.session.poll_timeout().is_some());
    pair.tick(100);
    let (_, ack) = pair.server.session.poll_transmit().unwrap();
    assert_eq!(
        Control::decode(&ack).ok(),
        Some(Control::Ack { delivered: 1 })
    );
    // A confirmation beyond what was delivered counts only what was.
    pair.server.session.confirm_delivered(9, pair.now);
    assert_eq!(pair.server.session.ackable(), 4);
    let (_, ack) = pair.server.session.poll_transmit().unwrap();
    assert_eq!(
        Control::decode(&ack).ok(),
        Some(Control::Ack { delivered: 4 })
    );
    pair.client.session.receive(OpCode::Binary, ack).unwrap();
    assert_eq!(pair.client.session.peer_delivered(), 4);
    assert_eq!(pair.client.session.buffered().0, 0);
    // And the rest of the exchange still settles exactly once, in order.
    pair.client.send();
    pair.server.send();
    pair.cut();
    pair.settle_confirming();
}

#[test]
fn messages_that_arrived_before_a_graceful_close_can_still_be_taken() {
    let config = SessionConfig::default();
    for graceful in [true, false] {
        let mut pair = Pair::new(&config);
        for _ in 0..3 {
            pair.server.send();
        }
        pair.pump(3);
        assert!(pair.client.session.has_message());
        if graceful {
            // The session ended with a closing handshake: nothing will bring these again.
            pair.client.session.link_closed();
            let mut taken = 0;
            while pair.client.session.poll_message(pair.now).is_some() {
                taken += 1;
            }
            assert_eq!(taken, 3, "what arrived is still taken");
        } else {
            // A connection lost mid-session: the peer replays what was not taken.
            pair.client.session.link_down();
            assert!(!pair.client.session.has_message());
        }
    }
}

#[test]
fn acknowledgements_held_for_a_batch_of_requests_go_once_it_is_answered() {
    let config = SessionConfig {
        ack_every: 2,
        ..SessionConfig::default()
    };
    let mut pair = Pair::new(&config);
    // Two requests taken and acknowledged as usual (the count of 2 is reached).
    pair.client_delivers(2);
    let (_, ack) = pair.server.session.poll_transmit().unwrap();
    assert_eq!(
        Control::decode(&ack).ok(),
        Some(Control::Ack { delivered: 2 })
    );
    // A batch of three taken under a hold: neither the count nor the timer acknowledges it.
    pair.server.session.hold_new_acks();
    assert!(pair.server.session.acks_held());
    pair.client_delivers(3);
    assert_eq!(pair.server.session.delivered(), 5);
    assert_eq!(pair.server.session.ackable(), 2);
    // Holding again (a second batch before the answer) keeps the first hold's count.
    pair.server.session.hold_new_acks();
    assert_eq!(pair.server.session.ackable(), 2);
    pair.tick(1_000);
    assert!(pair.server.session.poll_transmit().is_none(), "no ACK yet");
    // The answers go out, then the release acknowledges all five.
    pair.server.send();
    let now = pair.now;
    pair.server.session.release_acks(now);
    assert!(!pair.server.session.acks_held());
    let mut sent = Vec::new();
    while let Some((opcode, payload)) = pair.server.session.poll_transmit() {
        sent.push(Control::decode(&payload).ok().map(|c| (opcode, c)));
    }
    assert_eq!(sent.len(), 2, "the answer, then the ACK: {sent:?}");
    assert_eq!(
        sent[1],
        Some((OpCode::Binary, Control::Ack { delivered: 5 }))
    );
    // Releasing with no hold does nothing.
    let now = pair.now;
    pair.server.session.release_acks(now);
    assert!(pair.server.session.poll_transmit().is_none());
}

impl Pair {
    /// The client sends `n` messages, they cross, and the server's application takes them.
    fn client_delivers(&mut self, n: usize) {
        for _ in 0..n {
            self.client.send();
        }
        self.pump(n);
        self.server.take(n, self.now);
    }

    /// As [`settle`](Self::settle), with the server confirming every delivery as it goes.
    fn settle_confirming(&mut self) {
        self.connect();
        for _ in 0..1_000 {
            self.pump(64);
            self.client.take(64, self.now);
            self.server.take(64, self.now);
            let delivered = self.server.session.delivered();
            self.server.session.confirm_delivered(delivered, self.now);
            self.tick(200);
        }
        self.settle();
    }
}

//! Notices between instances, off the commit path.
//!
//! A push is announced in two ways once its transaction has committed: at
//! once to the instance's own hub (the store's event channel), and to every
//! other instance through a **relay**: Postgres `LISTEN/NOTIFY` by default
//! ([`pg`]), or NATS when `NATS_URL` is set ([`nats`]). Nothing of this runs
//! inside the push transaction, so commits never queue behind the lock that
//! Postgres takes for every notifying transaction; the relay's publisher
//! sends whatever notices piled up while its previous send was in flight in
//! one message, so under load many pushes share one notification.
//!
//! Notices are pokes: they carry no change data, and streams read by cursor.
//! A lost notice therefore delays a change but never loses it, and the relay
//! makes sure the delay is bounded. Every message carries its instance's id
//! and a sequence number, and an idle instance sends an empty message (a
//! heartbeat) every catch-up interval. A receiver that sees a gap in an
//! instance's numbers (a notification lost, a publisher that failed to send
//! or shed notices), that stops hearing an instance for three intervals (it
//! crashed between a commit and its notice), or that (re)connects to the bus
//! announces [`StoreEvent::Resync`]: every stream re-reads from its cursor.

pub(crate) mod nats;
pub(crate) mod pg;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::notice::{ChangeNotice, Payload, StoreEvent};

/// Most notices waiting for the publisher; beyond this they are shed and
/// the receivers resync (they see a gap in the sequence).
const OUTBOX_CAPACITY: usize = 16_384;

/// Most notices one send carries.
const MAX_BATCH: usize = 2_000;

/// Most bytes of one message (Postgres refuses notifications of 8000).
const MESSAGE_BUDGET: usize = 7_900;

/// An instance that sent nothing for this many catch-up intervals is taken
/// for dead: whatever it committed last may never be announced.
const SILENT_INTERVALS: u32 = 3;

/// A peer that stayed silent this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// How long opening a store waits for its relay to hear the other
/// instances before serving anyway (the relay announces a resync once it
/// does).
const LISTEN_AT_START: Duration = Duration::from_secs(10);

/// Waits until the relay hears the other instances, so that a server serves
/// its first streams only once it can tell them of every commit; bounded, so
/// a bus that is down delays the start but does not stop it.
async fn until_listening(listening: oneshot::Receiver<()>) {
    if tokio::time::timeout(LISTEN_AT_START, listening)
        .await
        .is_err()
    {
        tracing::warn!(
            wait = ?LISTEN_AT_START,
            "not yet hearing the other instances; serving anyway, streams re-read from their cursors once it does"
        );
    }
}

/// The default catch-up interval (heartbeats, silence checks).
pub const DEFAULT_CATCHUP_INTERVAL: Duration = Duration::from_millis(500);

/// Announces committed pushes: to this instance at once, to the others
/// through the relay. Cheap to clone; never waits.
#[derive(Clone)]
pub(crate) struct Announcer {
    events: broadcast::Sender<StoreEvent>,
    outbox: mpsc::Sender<Outgoing>,
    shed: Arc<AtomicBool>,
}

/// What the publisher is handed.
pub(crate) enum Outgoing {
    /// A committed push.
    Notice(Arc<ChangeNotice>),
    /// The instance stops: send what is pending and say goodbye (peers then
    /// do not take the silence for a crash), then acknowledge.
    Close(oneshot::Sender<()>),
}

impl Announcer {
    /// Set when notices had to be shed (the publisher falls behind).
    pub(crate) fn shed(&self) -> Arc<AtomicBool> {
        self.shed.clone()
    }

    /// A committed push.
    pub(crate) fn announce(&self, notice: ChangeNotice) {
        let notice = Arc::new(notice);
        // Nobody listening is fine: live delivery is optional for a push.
        let _ = self.events.send(StoreEvent::Changed(notice.clone()));
        if self.outbox.try_send(Outgoing::Notice(notice)).is_err() {
            self.shed.store(true, Ordering::SeqCst);
        }
    }

    /// Sends every pending notice and a goodbye; returns once sent (or
    /// after `deadline`).
    pub(crate) async fn close(&self, deadline: Duration) {
        let (done, sent) = oneshot::channel();
        let closed = async {
            if self.outbox.send(Outgoing::Close(done)).await.is_ok() {
                let _ = sent.await;
            }
        };
        let _ = tokio::time::timeout(deadline, closed).await;
    }
}

/// Sends messages to every instance.
pub(crate) trait Transport: Send + 'static {
    /// Sends `messages`, in order.
    fn send(&mut self, messages: &[String]) -> impl Future<Output = Result<(), String>> + Send;
}

/// A random id for this process's relay.
pub(crate) fn instance_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// An announcer, and the publisher task's end of its outbox.
pub(crate) fn announcer(
    events: broadcast::Sender<StoreEvent>,
) -> (Announcer, mpsc::Receiver<Outgoing>) {
    let (outbox, receiver) = mpsc::channel(OUTBOX_CAPACITY);
    (
        Announcer {
            events,
            outbox,
            shed: Arc::new(AtomicBool::new(false)),
        },
        receiver,
    )
}

/// Sends the outbox through `transport` until every announcer is gone:
/// whatever piled up in one message (or a few), a heartbeat when idle for
/// `interval`.
pub(crate) async fn publish<T: Transport>(
    mut transport: T,
    mut outbox: mpsc::Receiver<Outgoing>,
    shed: Arc<AtomicBool>,
    instance: String,
    interval: Duration,
) {
    let mut sequence = 0_u64;
    let mut batch = Vec::new();
    let mut closing = None;
    loop {
        match tokio::time::timeout(interval, outbox.recv()).await {
            Ok(Some(Outgoing::Notice(notice))) => batch.push(notice),
            Ok(Some(Outgoing::Close(done))) => closing = Some(done),
            Ok(None) => return,
            Err(_) => {} // idle: a heartbeat
        }
        while batch.len() < MAX_BATCH && closing.is_none() {
            match outbox.try_recv() {
                Ok(Outgoing::Notice(notice)) => batch.push(notice),
                Ok(Outgoing::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if shed.swap(false, Ordering::SeqCst) {
            // Skip a number: receivers see the gap and resync.
            sequence += 1;
        }
        let mut messages = pack(&instance, &mut sequence, &batch);
        batch.clear();
        if closing.is_some() {
            sequence += 1;
            messages.push(format!(
                r#"{{"i":"{instance}","s":{sequence},"n":[],"bye":true}}"#
            ));
        }
        if let Err(error) = transport.send(&messages).await {
            // The numbers are spent: receivers see a gap and resync.
            tracing::warn!(%error, "cannot send change notices to other instances");
        }
        if let Some(done) = closing.take() {
            let _ = done.send(());
            return;
        }
    }
}

/// `notices` as messages `{"i":instance,"s":sequence,"n":[…]}` of at most
/// [`MESSAGE_BUDGET`] bytes; one empty message (a heartbeat) for none.
pub(crate) fn pack(
    instance: &str,
    sequence: &mut u64,
    notices: &[Arc<ChangeNotice>],
) -> Vec<String> {
    let mut messages = Vec::new();
    let mut current = String::new();
    let mut flush = |current: &mut String, sequence: &mut u64| {
        *sequence += 1;
        messages.push(format!(
            r#"{{"i":"{instance}","s":{sequence},"n":[{current}]}}"#
        ));
        current.clear();
    };
    let overhead = instance.len() + 40;
    for notice in notices {
        let payload = notice.to_payload();
        if !current.is_empty() && current.len() + payload.len() + 1 + overhead > MESSAGE_BUDGET {
            flush(&mut current, sequence);
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(&payload);
    }
    if !current.is_empty() || notices.is_empty() {
        flush(&mut current, sequence);
    }
    messages
}

#[derive(Deserialize)]
struct Message {
    i: String,
    s: u64,
    #[serde(default)]
    n: Vec<Payload>,
    /// The instance stops on purpose: its silence is no crash.
    #[serde(default)]
    bye: bool,
}

struct Peer {
    sequence: u64,
    heard: Instant,
    silent: bool,
}

/// What a receiver knows of the other instances: their last sequence
/// numbers and when it last heard them.
pub(crate) struct Peers {
    own: String,
    peers: HashMap<String, Peer>,
    silent_after: Duration,
}

impl Peers {
    pub(crate) fn new(own: String, interval: Duration) -> Self {
        Self {
            own,
            peers: HashMap::new(),
            silent_after: interval * SILENT_INTERVALS,
        }
    }

    /// A message from the bus: the notices to announce, and whether
    /// something was missed (announce a resync).
    pub(crate) fn receive(&mut self, text: &str, now: Instant) -> (Vec<ChangeNotice>, bool) {
        let message: Message = match serde_json::from_str(text) {
            Ok(message) => message,
            // A notice of an older version (one notice, no numbers), sent
            // while instances are being upgraded.
            Err(_) => match ChangeNotice::from_payload(text) {
                Some(notice) => return (vec![notice], false),
                None => {
                    tracing::warn!(payload = text, "ignoring an unreadable change notice");
                    return (Vec::new(), false);
                }
            },
        };
        if message.i == self.own {
            // Our own: this instance announced it at commit.
            return (Vec::new(), false);
        }
        let missed = match self.peers.get_mut(&message.i) {
            Some(peer) => {
                let missed = message.s != peer.sequence + 1;
                if missed {
                    tracing::warn!(
                        instance = message.i,
                        expected = peer.sequence + 1,
                        got = message.s,
                        "change notices from another instance were lost; streams re-read from their cursors"
                    );
                }
                peer.sequence = message.s;
                peer.heard = now;
                peer.silent = false;
                missed
            }
            None => {
                self.peers.insert(
                    message.i.clone(),
                    Peer {
                        sequence: message.s,
                        heard: now,
                        silent: false,
                    },
                );
                false
            }
        };
        if message.bye {
            self.peers.remove(&message.i);
        }
        let notices = message
            .n
            .into_iter()
            .filter_map(ChangeNotice::from_wire)
            .collect();
        (notices, missed)
    }

    /// Whether an instance fell silent since the last check (resync).
    pub(crate) fn check_silence(&mut self, now: Instant) -> bool {
        let mut fell_silent = false;
        for (instance, peer) in &mut self.peers {
            if !peer.silent && now.duration_since(peer.heard) >= self.silent_after {
                tracing::warn!(
                    instance,
                    "another instance fell silent; streams re-read from their cursors"
                );
                peer.silent = true;
                fell_silent = true;
            }
        }
        self.peers
            .retain(|_, peer| now.duration_since(peer.heard) < FORGET_AFTER);
        fell_silent
    }

    /// The bus was (re)joined and a resync announced: numbers heard before
    /// say nothing about what comes next.
    pub(crate) fn forget(&mut self) {
        self.peers.clear();
    }
}

/// Announces what a receiver made of one message.
pub(crate) fn deliver(
    events: &broadcast::Sender<StoreEvent>,
    (notices, missed): (Vec<ChangeNotice>, bool),
) {
    if missed {
        let _ = events.send(StoreEvent::Resync);
    }
    for notice in notices {
        let _ = events.send(StoreEvent::Changed(Arc::new(notice)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(last: u64) -> Arc<ChangeNotice> {
        Arc::new(ChangeNotice {
            log: mana_sync_protocol::LogId::parse("alice").expect("valid"),
            app_id: "todo".into(),
            tables: Some(vec!["tasks".into()]),
            after: last - 1,
            last,
            client_id: "phone".into(),
            member: None,
            written: None,
        })
    }

    #[test]
    fn batches_split_under_the_budget_and_round_trip() {
        let notices: Vec<_> = (1..=500).map(notice).collect();
        let mut sequence = 0;
        let messages = pack("a", &mut sequence, &notices);
        assert!(messages.len() > 1);
        assert_eq!(sequence, messages.len() as u64);
        let mut peers = Peers::new("b".into(), Duration::from_secs(1));
        let now = Instant::now();
        let mut heard = Vec::new();
        for message in &messages {
            assert!(message.len() <= MESSAGE_BUDGET);
            let (notices, missed) = peers.receive(message, now);
            assert!(!missed);
            heard.extend(notices.into_iter().map(|n| n.last));
        }
        assert_eq!(heard, (1..=500).collect::<Vec<_>>());
        // Our own messages are skipped; a heartbeat is an empty message.
        assert_eq!(pack("a", &mut sequence, &[]).len(), 1);
        let mut own = Peers::new("a".into(), Duration::from_secs(1));
        assert!(own.receive(&messages[0], now).0.is_empty());
    }

    #[test]
    fn a_goodbye_is_no_crash() {
        let mut peers = Peers::new("b".into(), Duration::from_millis(100));
        let start = Instant::now();
        let mut sequence = 0;
        let first = pack("a", &mut sequence, &[notice(1)]);
        assert!(!peers.receive(&first[0], start).1);
        let bye = format!(r#"{{"i":"a","s":{},"n":[],"bye":true}}"#, sequence + 1);
        assert!(!peers.receive(&bye, start).1);
        assert!(!peers.check_silence(start + Duration::from_secs(10)));
    }

    #[test]
    fn gaps_and_silence_mean_resync() {
        let mut peers = Peers::new("b".into(), Duration::from_millis(100));
        let start = Instant::now();
        let mut sequence = 0;
        let first = pack("a", &mut sequence, &[notice(1)]);
        let _lost = pack("a", &mut sequence, &[notice(2)]);
        let third = pack("a", &mut sequence, &[notice(3)]);
        assert!(
            !peers.receive(&first[0], start).1,
            "the first message sets the baseline"
        );
        let (notices, missed) = peers.receive(&third[0], start);
        assert!(missed, "a gap in the numbers");
        assert_eq!(notices.len(), 1);
        assert!(!peers.check_silence(start + Duration::from_millis(250)));
        assert!(peers.check_silence(start + Duration::from_millis(300)));
        assert!(
            !peers.check_silence(start + Duration::from_millis(400)),
            "once"
        );
        // A silent instance that speaks again continues its numbering.
        let fourth = pack("a", &mut sequence, &[]);
        assert!(
            !peers
                .receive(&fourth[0], start + Duration::from_millis(500))
                .1
        );
        // Older instances' single notices are still understood.
        let (legacy, missed) = peers.receive(&notice(9).to_payload(), start);
        assert_eq!((legacy.len(), missed), (1, false));
    }
}

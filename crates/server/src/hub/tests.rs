use super::*;
use futures::FutureExt as _;
use mana_sync_store::MemberChange;

fn hub() -> Arc<Hub> {
    limited(LiveLimits {
        per_user: 100,
        total: 1000,
    })
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid")
}

/// A stream of `who`'s changes in the app `todo`.
fn todo_stream(hub: &Arc<Hub>, who: &UserId) -> Subscription {
    hub.subscribe(who, None, Some("todo"), SubscriberKind::Stream, None)
        .expect("below the limits")
}

/// The `last` position of each pending notice, in order.
fn lasts(pending: &Pending) -> Vec<u64> {
    pending.notices.iter().map(|p| p.notice.last).collect()
}

fn limited(limits: LiveLimits) -> Arc<Hub> {
    Arc::new(Hub::new(
        IntGauge::new("s", "s").expect("gauge"),
        IntGauge::new("w", "w").expect("gauge"),
        IntCounter::new("o", "o").expect("counter"),
        limits,
    ))
}

#[test]
fn subscriptions_are_capped_per_user_and_in_total() {
    let hub = limited(LiveLimits {
        per_user: 2,
        total: 3,
    });
    let a1 = hub.subscribe(&user("a"), None, None, SubscriberKind::Stream, None);
    let a2 = hub.subscribe(&user("a"), None, None, SubscriberKind::Socket, None);
    assert_eq!(
        hub.subscribe(&user("a"), None, None, SubscriberKind::Stream, None)
            .err(),
        Some(LiveRefusal::PerUser { max: 2 })
    );
    let b1 = hub.subscribe(&user("b"), None, None, SubscriberKind::Stream, None);
    assert_eq!(
        hub.subscribe(&user("c"), None, None, SubscriberKind::Stream, None)
            .err(),
        Some(LiveRefusal::Full { max: 3 })
    );
    drop(a1);
    assert!(
        hub.subscribe(&user("c"), None, None, SubscriberKind::Stream, None)
            .is_ok()
    );
    assert_eq!(hub.open.load(Ordering::Relaxed), 2, "dropped again");
    drop((a2, b1));
    assert_eq!(hub.open.load(Ordering::Relaxed), 0);
    assert_eq!(LiveLimits::for_connections(20, 5).total, 18);
}

fn notice(log: &str, app: &str, last: u64) -> Arc<ChangeNotice> {
    Arc::new(ChangeNotice {
        log: LogId::parse(log).expect("valid"),
        app_id: app.into(),
        tables: Some(vec!["tasks".into()]),
        after: last - 1,
        last,
        client_id: "d".into(),
        member: None,
        written: None,
    })
}

#[tokio::test]
async fn notices_reach_only_their_user_and_app() {
    let hub = hub();
    let alice = user("alice");
    let todo = todo_stream(&hub, &alice);
    let every_app = hub
        .subscribe(&alice, None, None, SubscriberKind::Socket, None)
        .expect("below the limits");
    let bob = hub
        .subscribe(&user("bob"), None, None, SubscriberKind::Socket, None)
        .expect("below the limits");
    hub.publish(notice("alice", "notes", 1));
    hub.publish(notice("alice", "todo", 2));
    let pending = todo.changed().await;
    assert_eq!(lasts(&pending), [2]);
    let pending = every_app.changed().await;
    assert_eq!(lasts(&pending), [1, 2]);
    assert!(lock(&bob.subscriber.pending).notices.is_empty());
    assert_eq!(hub.streams.get(), 1);
    assert_eq!(hub.sockets.get(), 2);
    drop((todo, every_app, bob));
    assert_eq!((hub.streams.get(), hub.sockets.get()), (0, 0));
    assert!(
        lock(&hub.subscribers).by_user.is_empty() && lock(&hub.subscribers).by_log.is_empty(),
        "unsubscribing frees the entries"
    );
}

#[tokio::test]
async fn members_follow_a_space_from_the_moment_they_join_until_they_leave() {
    let hub = hub();
    let bob = user("bob");
    let house = SpaceId::new("house").expect("valid");
    let follows = hub
        .subscribe(&bob, None, Some("todo"), SubscriberKind::Stream, Some(&[]))
        .expect("below the limits");
    let own_only = todo_stream(&hub, &bob);
    let member = |change: MemberChange| Arc::new(ChangeNotice::for_member(&house, &change));
    hub.publish(notice("~house", "todo", 1));
    hub.publish(member(MemberChange::Set {
        user: bob.clone(),
        role: Role::Editor,
    }));
    hub.publish(notice("~house", "todo", 2));
    let pending = follows.changed().await;
    assert_eq!(pending.memberships, [(house.clone(), Some(Role::Editor))]);
    assert_eq!(
        lasts(&pending),
        [2],
        "notices of the space from the moment bob joined"
    );
    hub.publish(member(MemberChange::Remove { user: bob.clone() }));
    hub.publish(notice("~house", "todo", 3));
    let pending = follows.changed().await;
    assert_eq!(pending.memberships, [(house.clone(), None)]);
    assert!(pending.notices.is_empty(), "nothing after bob left");
    assert!(
        lock(&own_only.subscriber.pending).is_empty(),
        "a client that does not follow spaces hears none of it"
    );
    drop((follows, own_only));
    assert!(
        lock(&hub.subscribers).by_log.is_empty(),
        "every log entry is freed"
    );
}

#[tokio::test]
async fn only_recent_batches_are_kept_alive() {
    let hub = hub();
    let alice = user("alice");
    let slow = todo_stream(&hub, &alice);
    for seq in 1..=(RECENT_BATCHES as u64 + 10) {
        hub.publish(notice("alice", "todo", seq));
    }
    let pending = slow.changed().await;
    assert!(pending.resync, "more than MAX_PENDING notices collapse");
    let fresh = todo_stream(&hub, &alice);
    hub.publish(notice("alice", "todo", 1000));
    let pending = fresh.changed().await;
    assert!(
        pending.notices[0].shared.upgrade().is_some(),
        "the newest batch is kept"
    );
    assert_eq!(lock(&hub.recent).len(), RECENT_BATCHES);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_to_resync_and_costs_bounded_memory() {
    let hub = hub();
    let alice = user("alice");
    let slow = todo_stream(&hub, &alice);
    for seq in 1..=(MAX_PENDING as u64 * 10) {
        hub.publish(notice("alice", "todo", seq));
        assert!(lock(&slow.subscriber.pending).notices.len() <= MAX_PENDING);
    }
    let pending = slow.changed().await;
    assert!(pending.resync);
    assert!(pending.notices.is_empty());
    assert_eq!(hub.overflows.get(), 1, "counted once per fall-behind");
}

/// A notice of `log` in the app `todo`, pushed by the device `device`.
fn notice_from(log: &str, device: &str, last: u64) -> Arc<ChangeNotice> {
    let mut notice = Arc::unwrap_or_clone(notice(log, "todo", last));
    notice.client_id = device.into();
    Arc::new(notice)
}

#[tokio::test]
async fn a_devices_own_push_waits_for_the_next_wake_up() {
    let hub = hub();
    let alice = user("alice");
    let phone = hub
        .subscribe(
            &alice,
            Some("phone"),
            Some("todo"),
            SubscriberKind::Stream,
            None,
        )
        .expect("below the limits");
    let laptop = hub
        .subscribe(
            &alice,
            Some("laptop"),
            Some("todo"),
            SubscriberKind::Socket,
            None,
        )
        .expect("below the limits");
    hub.publish(notice_from("alice", "phone", 1));
    hub.publish(notice_from("alice", "phone", 2));
    assert!(
        phone.changed().now_or_never().is_none(),
        "its own pushes do not wake the phone"
    );
    assert_eq!(
        lasts(&laptop.changed().await),
        [1, 2],
        "the laptop is woken"
    );
    hub.publish(notice_from("alice", "laptop", 3));
    assert_eq!(
        lasts(&phone.changed().await),
        [1, 2, 3],
        "woken by another device, it gets its own notices too, in order"
    );
}

#[tokio::test]
async fn own_pushes_alone_wake_a_device_before_its_queue_overflows() {
    let hub = hub();
    let phone = hub
        .subscribe(
            &user("alice"),
            Some("phone"),
            Some("todo"),
            SubscriberKind::Stream,
            None,
        )
        .expect("below the limits");
    let mut last = 0;
    let pending = loop {
        if let Some(pending) = phone.changed().now_or_never() {
            break pending;
        }
        last += 1;
        assert!(last <= MAX_PENDING as u64, "never woken by its own pushes");
        hub.publish(notice_from("alice", "phone", last));
    };
    assert!(!pending.resync, "woken before anything was dropped");
    assert_eq!(pending.notices.len() as u64, last, "every notice kept");
    assert_eq!(hub.overflows.get(), 0);
}

#[tokio::test]
async fn a_space_push_from_a_device_of_the_same_name_wakes_the_device() {
    let hub = hub();
    let house = SpaceId::new("house").expect("valid");
    let bobs_phone = hub
        .subscribe(
            &user("bob"),
            Some("phone"),
            Some("todo"),
            SubscriberKind::Stream,
            Some(std::slice::from_ref(&house)),
        )
        .expect("below the limits");
    hub.publish(notice_from("~house", "phone", 1));
    let pending = bobs_phone.changed().now_or_never();
    assert_eq!(
        pending.as_ref().map(lasts),
        Some(vec![1]),
        "another member's phone is not bob's phone"
    );
}

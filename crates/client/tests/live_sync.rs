//! The client's live loop against the real `mana-sync` server: it follows
//! the stream, pushes local writes and reconnects after a dropped
//! connection; a refused token, or one that expires while live, stops it
//! with an error that asks for a new token.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{
    DEADLINE, Device, Live, Proxy, app_id, quick_options, server, titles, wait_for_titles,
    wait_until_synced,
};
use mana_sync_client::{ClientError, Query, SyncStatus};
use mana_sync_testkit::server::{ServerOptions, TestServer};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sync_follows_the_stream_pushes_local_writes_and_reconnects() {
    let server = server().await;
    let token = server.token("jane");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let (phone, laptop) = (Device::new(&app), Device::new(&app));
    let phone_sync = phone.client(&server.url, &token);
    let laptop_live = laptop.client_with(&proxy.url, &token, quick_options());
    let mut statuses = laptop.store.watch_status();
    let mut todos = laptop
        .store
        .subscribe(Query::new("tasks").order_by("title"));
    let live = Live::start(&laptop_live);
    wait_for(&mut todos, &[]).await;
    wait_until_synced(&mut statuses, "connected").await;

    // A push from the phone arrives over the stream, without any sync call.
    phone
        .store
        .insert("tasks", json!({ "title": "from the phone" }))
        .unwrap();
    phone_sync.sync().await.unwrap();
    wait_for(&mut todos, &["from the phone"]).await;

    // A local write on the laptop is pushed by the live loop; the phone gets it.
    let pushes = proxy.pushes();
    laptop
        .store
        .insert("tasks", json!({ "title": "from the laptop" }))
        .unwrap();
    wait_for(&mut todos, &["from the laptop", "from the phone"]).await;
    let mut pushed = laptop.store.watch_status();
    tokio::time::timeout(DEADLINE, async {
        loop {
            pushed.borrow_and_update();
            if laptop.store.pending_count().unwrap() == 0 {
                return;
            }
            pushed.changed().await.unwrap();
        }
    })
    .await
    .expect("the laptop's write was pushed");
    assert!(proxy.pushes() > pushes);
    phone_sync.sync().await.unwrap();
    assert_eq!(titles(&phone), ["from the laptop", "from the phone"]);

    // The connection drops; the loop reconnects and resumes from its cursor.
    proxy.cut_streams();
    tokio::time::timeout(
        DEADLINE,
        statuses.wait_for(|s| matches!(s, SyncStatus::Offline { .. })),
    )
    .await
    .expect("the drop is noticed")
    .unwrap();
    wait_until_synced(&mut statuses, "reconnected").await;
    phone
        .store
        .insert("tasks", json!({ "title": "after the drop" }))
        .unwrap();
    phone_sync.sync().await.unwrap();
    wait_for(
        &mut todos,
        &["after the drop", "from the laptop", "from the phone"],
    )
    .await;

    live.stop().await;
    assert_eq!(laptop.store.dump().unwrap(), phone.store.dump().unwrap());
}

/// Waits until the subscription yields exactly these titles (in any order).
async fn wait_for(todos: &mut mana_sync_client::Subscription, want: &[&str]) {
    wait_for_titles(todos, want, "the laptop", |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_an_error_and_stops_the_live_loop() {
    let server = server().await;
    let device = Device::new(&app_id("todo"));
    // A well-formed token the server did not sign.
    let forged = {
        let token = server.token("kim");
        let mut parts: Vec<&str> = token.split('.').collect();
        parts[2] = "AAAA";
        parts.join(".")
    };
    let client = device.client_with(&server.url, &forged, quick_options());
    let error = client.sync().await.unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
    assert!(matches!(device.store.status(), SyncStatus::Error { .. }));
    let error = tokio::time::timeout(DEADLINE, client.run_live(std::future::pending()))
        .await
        .expect("gives up")
        .unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_expires_while_live_ends_the_stream_and_asks_for_a_new_one() {
    let server = TestServer::start(
        &mana_sync_testkit::server::workspace_binary("mana-sync"),
        ServerOptions {
            env: vec![
                ("JWT_LEEWAY_SECS".into(), "0".into()),
                ("SSE_HEARTBEAT_SECS".into(), "1".into()),
            ],
            ..ServerOptions::default()
        },
    )
    .await;
    let device = Device::new(&app_id("todo"));
    let token = server.token_with_ttl("kim", std::time::Duration::from_secs(3));
    let client = device.client_with(&server.url, &token, quick_options());
    let mut statuses = device.store.watch_status();
    let live = tokio::spawn({
        let client = client.clone();
        async move { client.run_live(std::future::pending()).await }
    });
    wait_until_synced(&mut statuses, "connected").await;
    // The server ends the stream when the token expires; the client
    // reconnects with the token it has, which the server refuses: the loop
    // stops and the status asks for a new token.
    let error = tokio::time::timeout(DEADLINE, live)
        .await
        .expect("the live loop stops once the token expired")
        .unwrap()
        .unwrap_err();
    assert!(matches!(error, ClientError::Unauthorized(_)), "{error}");
    assert!(
        matches!(device.store.status(), SyncStatus::Error { .. }),
        "{:?}",
        device.store.status()
    );
}

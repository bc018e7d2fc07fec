//! The client against the real `mana-sync` server, one sync at a time:
//! convergence, guest sign-in, actors, crash safety of the outbox and the
//! cursor, refused changes, offline behaviour and pagination. The live loop
//! is in `live_sync.rs`.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use common::{
    Device, Proxy, app_id, fields, metric, quick_options, server, server_changes, titles,
};
use mana_sync_client::{ClientError, StoreOptions, SyncOptions, SyncStatus};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_converge_field_by_field() {
    let server = server().await;
    let token = server.token("alice");
    let app = app_id("todo");
    let (phone, laptop) = (Device::new(&app), Device::new(&app));
    let (phone_sync, laptop_sync) = (
        phone.client(&server.url, &token),
        laptop.client(&server.url, &token),
    );

    let milk = phone
        .store
        .insert("tasks", json!({ "title": "Milk", "done": false }))
        .unwrap();
    let bread = phone
        .store
        .insert("tasks", json!({ "title": "Bread", "done": false }))
        .unwrap();
    let report = phone_sync.sync().await.unwrap();
    assert_eq!(report.pushed, 2);
    assert_eq!(phone.store.status(), SyncStatus::Synced);
    assert_eq!(phone.store.pending_count().unwrap(), 0);
    laptop_sync.sync().await.unwrap();
    assert_eq!(titles(&laptop), ["Bread", "Milk"]);

    // Concurrent edits: different fields both survive; on the same field the
    // later write wins on both devices; a delete wins everywhere.
    phone
        .store
        .update("tasks", &milk, fields(json!({ "title": "Oat milk" })))
        .unwrap();
    laptop
        .store
        .update("tasks", &milk, fields(json!({ "done": true })))
        .unwrap();
    phone
        .store
        .update("tasks", &bread, fields(json!({ "title": "Rye bread" })))
        .unwrap();
    laptop
        .store
        .update("tasks", &bread, fields(json!({ "title": "Sourdough" })))
        .unwrap();
    laptop
        .store
        .insert("tasks", json!({ "title": "Eggs" }))
        .unwrap();
    phone.store.delete("tasks", &bread).unwrap();
    for client in [&phone_sync, &laptop_sync, &phone_sync] {
        client.sync().await.unwrap();
    }
    assert_eq!(titles(&phone), ["Eggs", "Oat milk"]);
    assert_eq!(phone.store.dump().unwrap(), laptop.store.dump().unwrap());
    let record = laptop.store.get("tasks", &milk).unwrap().unwrap();
    assert_eq!(record.get("done"), Some(&json!(true)));
    assert_eq!(
        laptop
            .store
            .record_state("tasks", &bread)
            .unwrap()
            .unwrap()
            .fields["title"]
            .value
            .get(),
        r#""Sourdough""#
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_store_becomes_the_accounts_at_first_sign_in() {
    let server = server().await;
    let token = server.token("bob");
    let app = app_id("todo");
    let mut options = StoreOptions::new(app.as_str(), &["tasks"]);
    options.seed = vec![mana_sync_client::SeedRecord {
        collection: "tasks".into(),
        id: "welcome".into(),
        data: fields(json!({ "title": "Welcome" })),
    }];
    let guest = Device::with_options(options);
    guest
        .store
        .insert("tasks", json!({ "title": "Written as a guest" }))
        .unwrap();
    assert_eq!(guest.store.status(), SyncStatus::LocalOnly);
    assert!(guest.store.account().unwrap().is_none());

    let client = guest.client(&server.url, &token);
    assert_eq!(client.account().user, "bob");
    let report = client.sync().await.unwrap();
    assert_eq!(report.pushed, 2);
    assert_eq!(guest.store.status(), SyncStatus::Synced);

    let other = Device::new(&app);
    other.client(&server.url, &token).sync().await.unwrap();
    assert_eq!(titles(&other), ["Welcome", "Written as a guest"]);
    // Another user's token is refused for this store.
    let error =
        mana_sync_client::SyncClient::new(guest.store.clone(), &server.url, &server.token("eve"))
            .unwrap_err();
    assert!(
        matches!(error, ClientError::AccountMismatch { .. }),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_reach_the_other_devices() {
    let server = server().await;
    let token = server.token("carol");
    let app = app_id("todo");
    let mut options = StoreOptions::new(app.as_str(), &["tasks"]);
    options.actor = Some(json!({ "kind": "ai", "name": "helper" }));
    let assistant = Device::with_options(options);
    let person = Device::new(&app);
    let id = assistant
        .store
        .insert("tasks", json!({ "title": "Suggested" }))
        .unwrap();
    assistant.client(&server.url, &token).sync().await.unwrap();
    let person_sync = person.client(&server.url, &token);
    person_sync.sync().await.unwrap();
    let record = person.store.get("tasks", &id).unwrap().unwrap();
    assert_eq!(
        record.last_actor,
        Some(json!({ "kind": "ai", "name": "helper" }))
    );
    assert_eq!(
        record.field_actors["title"],
        json!({ "kind": "ai", "name": "helper" })
    );
    // The person's own edit carries no actor: the field is theirs again.
    person
        .store
        .update("tasks", &id, fields(json!({ "title": "Accepted" })))
        .unwrap();
    let record = person.store.get("tasks", &id).unwrap().unwrap();
    assert_eq!(record.last_actor, None);
    assert!(!record.field_actors.contains_key("title"));
    assert_eq!(
        record.to_json()["__fieldActors"]["id"],
        json!({ "kind": "ai", "name": "helper" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_push_reply_and_a_crash_resend_the_same_changeset_which_is_stored_once() {
    let server = server().await;
    let token = server.token("dave");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store =
        mana_sync_client::LocalStore::open(&path, StoreOptions::new(app.as_str(), &["tasks"]))
            .unwrap();
    for i in 0..3 {
        store
            .insert("tasks", json!({ "title": format!("todo {i}") }))
            .unwrap();
    }
    // The server stores the changeset, but the reply never arrives.
    proxy.set(|f| f.lose_push_replies = 1);
    let client = mana_sync_client::SyncClient::with_options(
        store.clone(),
        &proxy.url,
        &token,
        quick_options(),
    )
    .unwrap();
    let error = client.sync().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(matches!(store.status(), SyncStatus::Offline { .. }));
    assert_eq!(
        store.pending_count().unwrap(),
        3,
        "nothing is dropped without an acknowledgement"
    );
    assert_eq!(
        server_changes(&server, &token, &app, "tasks").await.len(),
        3
    );

    // The process dies; a new one opens the store and syncs again.
    drop(client);
    drop(store);
    let store =
        mana_sync_client::LocalStore::open(&path, StoreOptions::new(app.as_str(), &["tasks"]))
            .unwrap();
    let before = metric(&server, "mana_sync_duplicate_changesets_total").await;
    let report = mana_sync_client::SyncClient::new(store.clone(), &server.url, &token)
        .unwrap()
        .sync()
        .await
        .unwrap();
    assert_eq!(report.pushed, 3);
    assert_eq!(store.pending_count().unwrap(), 0);
    assert_eq!(
        metric(&server, "mana_sync_duplicate_changesets_total").await,
        before + 1.0
    );
    assert_eq!(
        server_changes(&server, &token, &app, "tasks").await.len(),
        3,
        "stored once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_keeps_the_old_cursor_and_resumes() {
    let server = server().await;
    let token = server.token("erin");
    let app = app_id("todo");
    let writer = Device::new(&app);
    for i in 0..120 {
        writer
            .store
            .insert("tasks", json!({ "title": format!("todo {i:03}") }))
            .unwrap();
    }
    writer.client(&server.url, &token).sync().await.unwrap();

    let proxy = Proxy::start(&server.url).await;
    let reader = Device::new(&app);
    let options = SyncOptions {
        page_size: 50,
        ..quick_options()
    };
    let client = reader.client_with(&proxy.url, &token, options.clone());
    proxy.set(|f| f.pulls_before_failure = Some(1));
    assert!(client.sync().await.is_err());
    assert_eq!(
        reader.store.list("tasks").unwrap().len(),
        50,
        "the first page was applied"
    );
    assert_eq!(
        reader.store.cursor("tasks").unwrap(),
        None,
        "but the cursor did not move"
    );

    proxy.set(|f| f.pulls_before_failure = None);
    let pulls = proxy.pulls();
    client.sync().await.unwrap();
    assert_eq!(
        proxy.pulls() - pulls,
        3,
        "all three pages again, from the old cursor"
    );
    assert_eq!(reader.store.list("tasks").unwrap().len(), 120);
    assert!(reader.store.cursor("tasks").unwrap().is_some());
    assert_eq!(reader.store.dump().unwrap(), writer.store.dump().unwrap());
    // Nothing new: one empty page.
    let pulls = proxy.pulls();
    assert_eq!(client.sync().await.unwrap().received, 0);
    assert_eq!(proxy.pulls() - pulls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_change_is_set_aside_and_never_wedges_the_outbox() {
    let server = server().await;
    let token = server.token("frank");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let device = Device::new(&app);
    for title in ["one", "two", "poison", "four", "five"] {
        device
            .store
            .insert("tasks", json!({ "title": title }))
            .unwrap();
    }
    proxy.set(|f| f.refuse_pushes_containing = Some(("poison".into(), "invalid_change".into())));
    let client = device.client_with(&proxy.url, &token, quick_options());
    let report = client.sync().await.unwrap();
    assert_eq!((report.pushed, report.rejected), (4, 1));
    assert_eq!(device.store.pending_count().unwrap(), 0);
    let rejected = device.store.rejected().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].change["data"]["title"], "poison");
    assert!(
        rejected[0].reason.contains("invalid_change"),
        "{}",
        rejected[0].reason
    );
    match device.store.status() {
        SyncStatus::Error { reason } => assert!(reason.contains("refused"), "{reason}"),
        other => panic!("expected an error status, got {other:?}"),
    }
    assert_eq!(titles(&device).len(), 5, "the local record is kept");
    assert_eq!(
        server_changes(&server, &token, &app, "tasks").await.len(),
        4
    );

    // Later writes still go through while the refused change waits aside.
    device
        .store
        .insert("tasks", json!({ "title": "six" }))
        .unwrap();
    assert_eq!(client.sync().await.unwrap().pushed, 1);

    // Once the server accepts it, retrying sends it.
    proxy.set(|f| f.refuse_pushes_containing = None);
    assert_eq!(device.store.retry_rejected().unwrap(), 1);
    client.sync().await.unwrap();
    assert_eq!(device.store.status(), SyncStatus::Synced);
    assert_eq!(
        server_changes(&server, &token, &app, "tasks").await.len(),
        6
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_server_refusing_the_schema_version_keeps_the_outbox_intact() {
    let server = server().await;
    let token = server.token("gina");
    let app = app_id("todo");
    let proxy = Proxy::start(&server.url).await;
    let device = Device::new(&app);
    device
        .store
        .insert("tasks", json!({ "title": "a" }))
        .unwrap();
    device
        .store
        .insert("tasks", json!({ "title": "b" }))
        .unwrap();
    proxy.set(|f| {
        f.refuse_pushes_containing = Some((String::new(), "schema_version_too_new".into()))
    });
    let client = device.client_with(&proxy.url, &token, quick_options());
    let error = client.sync().await.unwrap_err();
    assert!(
        error.to_string().contains("schema_version_too_new"),
        "{error}"
    );
    assert!(matches!(device.store.status(), SyncStatus::Error { .. }));
    assert_eq!(device.store.pending_count().unwrap(), 2);
    assert!(device.store.rejected().unwrap().is_empty());
    proxy.set(|f| f.refuse_pushes_containing = None);
    assert_eq!(client.sync().await.unwrap().pushed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_writes_are_kept_and_pushed_when_the_server_is_back() {
    let server = server().await;
    let token = server.token("hana");
    let app = app_id("todo");
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let device = Device::new(&app);
    device
        .store
        .insert("tasks", json!({ "title": "offline" }))
        .unwrap();
    let error = device.client(&url, &token).sync().await.unwrap_err();
    assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
    match device.store.status() {
        SyncStatus::Offline { reason } => assert!(reason.contains("cannot reach"), "{reason}"),
        other => panic!("expected offline, got {other:?}"),
    }
    assert_eq!(device.store.pending_count().unwrap(), 1);
    assert!(device.store.last_error().unwrap().is_some());

    // The same store, pointed at the real server (the cursors of the old URL
    // are forgotten), pushes everything.
    let client = device.client(&server.url, &token);
    assert_eq!(client.sync().await.unwrap().pushed, 1);
    assert_eq!(device.store.status(), SyncStatus::Synced);
    assert_eq!(device.store.last_error().unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_absence_is_pulled_page_by_page_to_the_end() {
    let server = server().await;
    let token = server.token("ivan");
    let app = app_id("todo");
    let writer = Device::new(&app);
    let reader = Device::new(&app);
    let reader_sync = reader.client(&server.url, &token);
    reader_sync.sync().await.unwrap();
    for i in 0..2500 {
        writer
            .store
            .insert("tasks", json!({ "title": format!("todo {i:04}") }))
            .unwrap();
    }
    assert_eq!(
        writer
            .client(&server.url, &token)
            .sync()
            .await
            .unwrap()
            .pushed,
        2500
    );
    // The reader also pushes one change: its push reply carries the first
    // 1000 of the others' changes (hasMore), the pulls bring the rest.
    reader
        .store
        .insert("tasks", json!({ "title": "reader" }))
        .unwrap();
    let report = reader_sync.sync().await.unwrap();
    assert!(report.received >= 2500, "{report:?}");
    assert_eq!(reader.store.list("tasks").unwrap().len(), 2501);
    writer.client(&server.url, &token).sync().await.unwrap();
    assert_eq!(reader.store.dump().unwrap(), writer.store.dump().unwrap());
}

//! A group of pushes whose connection breaks before Postgres answers may
//! still commit (the database had every statement, `COMMIT` included). Its
//! pushes must then be answered with an error, never stored again on their
//! own: a push without a changeset id would be stored twice.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{hold_counter_row, insert, until_count, until_waiting_on_locks, user};
use mana_sync_store::{NewChangeset, StoreOptions};
use mana_sync_testkit::pg::TestDatabase;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

/// A TCP proxy to Postgres that can cut every connection at once.
struct Proxy {
    port: u16,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let port = listener.local_addr().expect("address").port();
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let forward = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                held.lock().unwrap().push(forward);
            }
        });
        Self { port, connections }
    }

    /// Closes every connection made so far, both ways.
    fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_whose_connection_breaks_unanswered_is_not_stored_again() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // postgres://role@host:port/name: the proxy stands in for host:port.
    let url = db.url();
    let address = url
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(address, _)| address.to_owned())
        .expect("the database's host and port");
    let proxy = Proxy::start(address.clone()).await;
    let through_proxy = url.replace(&address, &format!("127.0.0.1:{}", proxy.port));
    let store = Arc::new(
        mana_sync_store::open(&through_proxy, &StoreOptions::default())
            .await
            .expect("opens"),
    );
    let alice = user("alice");
    let push = |record: &'static str| {
        let (store, alice) = (store.clone(), alice.clone());
        tokio::spawn(async move {
            let changes = [insert("tasks", record)];
            store
                .push(
                    &alice,
                    NewChangeset {
                        app_id: "todo",
                        client_id: "d1",
                        changeset_id: None,
                        changes: &changes,
                    },
                )
                .await
        })
    };
    push("first").await.expect("joins").expect("stored");

    // Another transaction holds alice's counter row: the group is sent in
    // full and waits on it.
    let admin = hold_counter_row(&db, "alice").await;
    let waiting = push("second");
    let other = db.admin().await;
    until_waiting_on_locks(&db, &other, 1).await;

    proxy.cut();
    // Answered while the lock is still held: a push stored again on its own
    // would wait for the lock, and then store the change a second time.
    let answer = tokio::time::timeout(DEADLINE, waiting)
        .await
        .expect("answered without being stored again")
        .expect("joins");
    assert!(answer.is_err(), "the push's fate is unknown: {answer:?}");

    // The database had the whole group: it commits it once the lock goes.
    admin.batch_execute("COMMIT").await.expect("unlocks");
    let copies = "SELECT count(*) FROM mana_changes WHERE record_id = 'second'";
    until_count(&other, copies, 1).await;
    // Nothing else of this store is still running in the database.
    let busy = format!(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = '{}' AND state <> 'idle' AND pid <> pg_backend_pid()",
        db.name()
    );
    until_count(&other, &busy, 0).await;
    until_count(&other, copies, 1).await;
}

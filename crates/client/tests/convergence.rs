//! Property test: several devices make random edits (inserts, field updates,
//! deletes of a few shared records) with skewed and stalled clocks, and sync
//! in random orders through a real `mana-sync` server. Afterwards every
//! device holds exactly the same state, and that state is the merge of
//! everything the server received (nothing lost, nothing invented).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use mana_sync_client::clock::PhysicalClock;
use mana_sync_client::{ClientError, LocalStore, StoreOptions, SyncClient};
use mana_sync_protocol::SyncChange;
use mana_sync_protocol::merge::RecordState;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};

const DEVICES: usize = 3;
const NOW: i64 = 1_795_600_800_000;

/// A wall clock that moves only when the test says so.
struct TestClock(AtomicI64);

impl PhysicalClock for TestClock {
    fn now_millis(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert {
        device: usize,
        key: u8,
        title: &'static str,
    },
    Update {
        device: usize,
        key: u8,
        field: &'static str,
        value: u8,
    },
    Delete {
        device: usize,
        key: u8,
    },
    Sync {
        device: usize,
    },
    /// Time passes on one device's wall clock.
    Tick {
        device: usize,
        millis: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let device = 0..DEVICES;
    let key = 0u8..4;
    prop_oneof![
        3 => (device.clone(), key.clone(), prop::sample::select(vec!["a", "b", "c"]))
            .prop_map(|(device, key, title)| Op::Insert { device, key, title }),
        5 => (device.clone(), key.clone(), prop::sample::select(vec!["title", "done", "n"]), 0u8..3)
            .prop_map(|(device, key, field, value)| Op::Update { device, key, field, value }),
        1 => (device.clone(), key).prop_map(|(device, key)| Op::Delete { device, key }),
        3 => device.clone().prop_map(|device| Op::Sync { device }),
        1 => (device, 0i64..3).prop_map(|(device, millis)| Op::Tick { device, millis }),
    ]
}

/// Clock offsets per device: equal (ties on the millisecond), a little
/// apart, a minute behind, and ten minutes ahead (beyond the drift bound).
fn offsets() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(
        prop::sample::select(vec![0i64, 0, 1, -60_000, 600_000]),
        DEVICES,
    )
}

fn value_of(field: &str, value: u8) -> Value {
    match field {
        "done" => json!(value % 2 == 1),
        "n" => json!(value),
        _ => json!(["x", "y", "z"][usize::from(value)]),
    }
}

struct Case {
    stores: Vec<LocalStore>,
    clients: Vec<SyncClient>,
    clocks: Vec<Arc<TestClock>>,
    _dirs: Vec<tempfile::TempDir>,
}

async fn run_case(
    server: &mana_sync_testkit::server::TestServer,
    case: usize,
    offsets: &[i64],
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let app = format!("prop-{case}");
    let user = format!("user-{case}");
    let token = server.token(&user);
    let mut setup = Case {
        stores: Vec::new(),
        clients: Vec::new(),
        clocks: Vec::new(),
        _dirs: Vec::new(),
    };
    for offset in offsets {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(TestClock(AtomicI64::new(NOW + offset)));
        let mut options = StoreOptions::new(app.as_str(), &["tasks"]);
        options.clock = clock.clone();
        let store = LocalStore::open(dir.path().join("store.db"), options).unwrap();
        setup
            .clients
            .push(SyncClient::new(store.clone(), &server.url, &token).unwrap());
        setup.stores.push(store);
        setup.clocks.push(clock);
        setup._dirs.push(dir);
    }
    for op in ops {
        match op {
            Op::Insert { device, key, title } => {
                let result = setup.stores[*device].insert(
                    "tasks",
                    json!({ "id": format!("r{key}"), "title": title, "done": false }),
                );
                match result {
                    Ok(_) | Err(ClientError::AlreadyExists { .. }) => {}
                    Err(error) => return Err(TestCaseError::fail(format!("insert: {error}"))),
                }
            }
            Op::Update {
                device,
                key,
                field,
                value,
            } => {
                let mut fields = serde_json::Map::new();
                fields.insert((*field).to_owned(), value_of(field, *value));
                match setup.stores[*device].update("tasks", &format!("r{key}"), fields) {
                    Ok(()) | Err(ClientError::NotFound { .. }) => {}
                    Err(error) => return Err(TestCaseError::fail(format!("update: {error}"))),
                }
            }
            Op::Delete { device, key } => {
                match setup.stores[*device].delete("tasks", &format!("r{key}")) {
                    Ok(()) | Err(ClientError::NotFound { .. }) => {}
                    Err(error) => return Err(TestCaseError::fail(format!("delete: {error}"))),
                }
            }
            Op::Sync { device } => {
                setup.clients[*device]
                    .sync()
                    .await
                    .map_err(|error| TestCaseError::fail(format!("sync: {error}")))?;
            }
            Op::Tick { device, millis } => {
                setup.clocks[*device].0.fetch_add(*millis, Ordering::SeqCst);
            }
        }
    }
    // Everyone pushes, then everyone pulls what the others pushed.
    for _round in 0..2 {
        for client in &setup.clients {
            client
                .sync()
                .await
                .map_err(|error| TestCaseError::fail(format!("final sync: {error}")))?;
        }
    }
    let states: Vec<BTreeMap<(String, String), RecordState>> = setup
        .stores
        .iter()
        .map(|store| store.dump().unwrap())
        .collect();
    for (i, state) in states.iter().enumerate().skip(1) {
        prop_assert_eq!(&states[0], state, "device 0 and device {} differ", i);
    }
    for store in &setup.stores {
        prop_assert_eq!(store.pending_count().unwrap(), 0);
    }

    // The state is the merge of the server's whole log, in its order.
    let log: Vec<SyncChange> = common::server_changes(server, &token, &app, "tasks")
        .await
        .into_iter()
        .map(|change| serde_json::from_value(change).unwrap())
        .collect();
    let mut expected: BTreeMap<(String, String), RecordState> = BTreeMap::new();
    for change in &log {
        expected
            .entry((change.table.clone(), change.id.clone()))
            .or_default()
            .apply(change.into())
            .unwrap();
    }
    prop_assert_eq!(
        &states[0],
        &expected,
        "devices differ from the merge of the log"
    );
    Ok(())
}

#[test]
fn devices_editing_and_syncing_in_random_orders_converge() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let server = runtime.block_on(common::server());
    let cases: u32 = std::env::var("CONVERGENCE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(40);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let result = runner.run(
        &(offsets(), prop::collection::vec(op(), 1..40)),
        |(offsets, ops)| {
            // Every case (shrinking runs included) gets its own app and user.
            let case = counter.fetch_add(1, Ordering::SeqCst);
            runtime.block_on(run_case(&server, case, &offsets, &ops))
        },
    );
    if let Err(error) = result {
        panic!("{error}");
    }
}

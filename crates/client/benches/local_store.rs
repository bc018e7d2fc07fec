//! Benchmark of the local store (`make bench-client`):
//!
//! 1. applying 100,000 incoming changes (50,000 inserts of new records, then
//!    50,000 field updates of them, in pages of 1,000 as a pull delivers
//!    them), in changes per second;
//! 2. the latency of one local write (`update` of one field, and `insert`),
//!    p50 and p99.
//!
//! Each is measured against raw rusqlite doing the equivalent work in the
//! same run, on the same disk, with the same durability settings (WAL,
//! `synchronous = FULL`): an upsert of each change's JSON into a
//! `(collection, id)`-keyed table, one transaction per page; and a one-row
//! upsert in its own transaction per write. The raw side does no merging, no
//! clock and no outbox, so the ratios are the price of those.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use mana_sync_client::{LocalStore, StoreOptions};
use mana_sync_protocol::SyncChange;
use rusqlite::{Connection, params};
use serde_json::json;

const CHANGES: usize = 100_000;
const PAGE: usize = 1_000;
const WRITES: usize = 2_000;

fn store_in(dir: &Path) -> LocalStore {
    LocalStore::open(dir.join("bench.db"), StoreOptions::new("bench", &["tasks"])).unwrap()
}

fn raw_in(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join("raw.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(
        "CREATE TABLE records (collection TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL,
                               PRIMARY KEY (collection, id)) WITHOUT ROWID;",
    )
    .unwrap();
    conn
}

fn timestamp(i: usize) -> String {
    // Distinct, increasing HLC-style timestamps.
    format!(
        "2026-11-25T10:{:02}:{:02}.{:09}Z",
        (i / 60_000) % 60,
        (i / 1000) % 60,
        (i % 1000) * 1_000_000 + 7
    )
}

/// The incoming changes, as JSON pages (what the server sends).
fn pages() -> Vec<String> {
    let records = CHANGES / 2;
    let mut changes = Vec::with_capacity(CHANGES);
    for i in 0..records {
        let at = timestamp(i);
        changes.push(json!({
            "table": "tasks", "id": format!("r{i:06}"), "op": "insert",
            "data": { "id": format!("r{i:06}"), "title": format!("todo number {i}"), "done": false,
                      "createdAt": "2026-11-25T10:00:00.000Z" },
            "fields": {
                "id": { "value": format!("r{i:06}"), "at": at, "updatedAt": at },
                "title": { "value": format!("todo number {i}"), "at": at, "updatedAt": at },
                "done": { "value": false, "at": at, "updatedAt": at },
                "createdAt": { "value": "2026-11-25T10:00:00.000Z", "at": at, "updatedAt": at }
            },
            "eventId": uuid::Uuid::now_v7(), "schemaVersion": 2
        }));
    }
    for i in 0..records {
        let at = timestamp(records + i);
        changes.push(json!({
            "table": "tasks", "id": format!("r{i:06}"), "op": "update",
            "fields": { "done": { "value": true, "at": at, "updatedAt": at } },
            "eventId": uuid::Uuid::now_v7(), "schemaVersion": 2
        }));
    }
    changes
        .chunks(PAGE)
        .map(|page| serde_json::to_string(page).unwrap())
        .collect()
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort_unstable();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

fn main() {
    let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let texts = pages();
    let parsed: Vec<Vec<SyncChange>> = texts
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect();

    // 1. Applying incoming changes.
    let store = store_in(dir.path());
    let started = Instant::now();
    for page in &parsed {
        store.apply_remote(page).unwrap();
    }
    let client_time = started.elapsed();
    assert_eq!(store.list("tasks").unwrap().len(), CHANGES / 2);

    let mut raw = raw_in(dir.path());
    let started = Instant::now();
    for page in &parsed {
        let tx = raw.transaction().unwrap();
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO records (collection, id, data) VALUES (?1, ?2, ?3)
                     ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data",
                )
                .unwrap();
            for change in page {
                let data = match (&change.data, &change.fields) {
                    (Some(data), _) => data.get().to_owned(),
                    (None, Some(fields)) => serde_json::to_string(fields).unwrap(),
                    (None, None) => String::new(),
                };
                upsert
                    .execute(params![change.table, change.id, data])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let raw_time = started.elapsed();
    let client_rate = CHANGES as f64 / client_time.as_secs_f64();
    let raw_rate = CHANGES as f64 / raw_time.as_secs_f64();

    // 2. Local write latency.
    let ids: Vec<String> = store
        .list("tasks")
        .unwrap()
        .into_iter()
        .take(WRITES)
        .map(|r| r.id)
        .collect();
    let mut updates = Vec::with_capacity(WRITES);
    for (i, id) in ids.iter().enumerate() {
        let fields = json!({ "title": format!("edited {i}") });
        let fields = fields.as_object().unwrap().clone();
        let started = Instant::now();
        store.update("tasks", id, fields).unwrap();
        updates.push(started.elapsed());
    }
    let mut inserts = Vec::with_capacity(WRITES);
    for i in 0..WRITES {
        let started = Instant::now();
        store
            .insert(
                "tasks",
                json!({ "title": format!("new {i}"), "done": false }),
            )
            .unwrap();
        inserts.push(started.elapsed());
    }
    let mut raw_writes = Vec::with_capacity(WRITES);
    for (i, id) in ids.iter().enumerate() {
        let started = Instant::now();
        let tx = raw.transaction().unwrap();
        tx.prepare_cached(
            "INSERT INTO records (collection, id, data) VALUES ('tasks', ?1, ?2)
             ON CONFLICT (collection, id) DO UPDATE SET data = excluded.data",
        )
        .unwrap()
        .execute(params![id, format!(r#"{{"title":"edited {i}"}}"#)])
        .unwrap();
        tx.commit().unwrap();
        raw_writes.push(started.elapsed());
    }
    let (u50, u99) = (
        percentile(&mut updates, 0.5),
        percentile(&mut updates, 0.99),
    );
    let (i50, i99) = (
        percentile(&mut inserts, 0.5),
        percentile(&mut inserts, 0.99),
    );
    let (r50, r99) = (
        percentile(&mut raw_writes, 0.5),
        percentile(&mut raw_writes, 0.99),
    );
    let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();

    println!(
        "Local store, {} (same disk and settings for both)\n",
        dir.path().display()
    );
    println!("| scenario | mana-sync-client | raw rusqlite | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| apply {CHANGES} incoming changes, pages of {PAGE} | {:.0} changes/s | {:.0} changes/s | {:.2} |",
        client_rate,
        raw_rate,
        client_rate / raw_rate
    );
    println!(
        "| local write (update 1 field), p50 | {} | {} | {:.2} |",
        micros(u50),
        micros(r50),
        ratio(u50, r50)
    );
    println!(
        "| local write (update 1 field), p99 | {} | {} | {:.2} |",
        micros(u99),
        micros(r99),
        ratio(u99, r99)
    );
    println!(
        "| local write (insert), p50 | {} | {} | {:.2} |",
        micros(i50),
        micros(r50),
        ratio(i50, r50)
    );
    println!(
        "| local write (insert), p99 | {} | {} | {:.2} |",
        micros(i99),
        micros(r99),
        ratio(i99, r99)
    );
    println!(
        "\nratio = mana-sync-client throughput / raw (or raw latency / client latency): 1.0 is parity."
    );
}

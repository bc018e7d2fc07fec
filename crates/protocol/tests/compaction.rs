//! Old cursors stay safe across compaction: for any history, any compaction
//! points and any cursor handed out before, during or after compaction, a
//! device that had everything up to its cursor and then follows the log ends
//! in exactly the state of a device that replayed the whole history.
//!
//! The log here is a model of the server's (positions, devices, "a device
//! never receives its own changes", pages that end at the newest position),
//! and its compaction folds each record's changes up to a horizon with the
//! real [`Fold`], at the position of the latest one, attributed as the fold
//! says. The store runs the same algorithm on SQLite and Postgres
//! (`store_suite::compaction_*`).

#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;

use mana_sync_protocol::merge::{Fold, RecordState};
use mana_sync_protocol::{Change, WireChange};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Row {
    position: u64,
    device: String,
    record: String,
    change: Change,
}

#[derive(Debug, Default)]
struct Log {
    rows: Vec<Row>,
    newest: u64,
}

impl Log {
    fn push(&mut self, device: &str, change: Change) {
        self.newest += 1 + self.newest % 3; // positions are not dense
        self.rows.push(Row {
            position: self.newest,
            device: device.to_owned(),
            record: change.id.clone(),
            change,
        });
    }

    /// Folds every record's changes at or before `horizon` that have been
    /// superseded, at the position of the latest one.
    fn compact(&mut self, horizon: u64) {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, row) in self.rows.iter().enumerate() {
            if row.position <= horizon {
                groups.entry(row.record.clone()).or_default().push(index);
            }
        }
        let mut replaced = vec![false; self.rows.len()];
        let mut folded_rows = Vec::new();
        for (record, indexes) in groups.into_iter().filter(|(_, i)| i.len() > 1) {
            let mut fold = Fold::new();
            for &index in &indexes {
                let row = &self.rows[index];
                fold.add((&row.change).into(), 1, &row.device)
                    .expect("merges");
                replaced[index] = true;
            }
            let last = indexes
                .iter()
                .map(|&i| self.rows[i].position)
                .max()
                .expect("rows");
            let folded = fold.finish("tasks".into(), record.clone());
            folded_rows.push(Row {
                position: last,
                device: folded.client_id,
                record,
                change: folded.change,
            });
        }
        let mut rows: Vec<Row> = self
            .rows
            .drain(..)
            .zip(replaced)
            .filter_map(|(row, gone)| (!gone).then_some(row))
            .collect();
        rows.extend(folded_rows);
        rows.sort_by_key(|row| row.position);
        self.rows = rows;
    }
}

#[derive(Debug, Default)]
struct Device {
    name: String,
    cursor: u64,
    records: BTreeMap<String, RecordState>,
}

impl Device {
    fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    fn write(&mut self, log: &mut Log, change: Change) {
        self.apply(&change);
        log.push(&self.name, change);
    }

    fn apply(&mut self, change: &Change) {
        self.records
            .entry(change.id.clone())
            .or_default()
            .apply(change.into())
            .expect("merges");
    }

    /// One page of at most `limit` changes after the cursor, as the server
    /// answers it: the device's own changes are left out, and the cursor ends
    /// at the last change of a full page or else at the newest position.
    fn read(&mut self, log: &Log, limit: usize) {
        let after: Vec<&Row> = log
            .rows
            .iter()
            .filter(|row| row.position > self.cursor)
            .collect();
        let has_more = after.len() > limit;
        let page = &after[..after.len().min(limit)];
        for row in page {
            if row.device != self.name {
                let change = row.change.clone();
                self.apply(&change);
            }
        }
        self.cursor = match page.last() {
            Some(last) if has_more => last.position,
            _ => log.newest,
        };
    }

    fn read_to_end(&mut self, log: &Log) {
        loop {
            self.read(log, 3);
            if self.cursor == log.newest {
                return;
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write { device: usize, change: String },
    Compact { horizon_percent: u64 },
    Read { device: usize, limit: usize },
}

const TIMES: [&str; 4] = [
    "2026-11-25T10:00:00.000000001Z",
    "2026-11-25T10:00:00.000000002Z",
    "2026-11-25T10:00:00.000000002Z",
    "2026-11-25T10:00:00.000000003Z",
];
const VALUES: [&str; 4] = ["1", "2", "\"a\"", "null"];
const ACTORS: [&str; 3] = ["", r#","actor":{"kind":"ai"}"#, r#","actor":"system""#];

fn change_json() -> impl Strategy<Value = String> {
    let record = prop::sample::select(vec!["r1", "r2", "r3"]);
    let time = prop::sample::select(TIMES.to_vec());
    let value = prop::sample::select(VALUES.to_vec());
    let actor = prop::sample::select(ACTORS.to_vec());
    let field = prop::sample::select(vec!["title", "done", "note"]);
    (0..10_u8, record, field, value, time, actor).prop_map(
        |(kind, record, field, value, time, actor)| match kind {
            0 | 1 => format!(
                r#"{{"table":"tasks","id":"{record}","op":"insert","data":{{"{field}":{value},"updatedAt":"{time}"}}{actor}}}"#
            ),
            2 => format!(
                r#"{{"table":"tasks","id":"{record}","op":"insert","data":{{"{field}":{value}}},"fields":{{"{field}":{{"value":{value},"at":"{time}"}}}}{actor}}}"#
            ),
            3 => format!(
                r#"{{"table":"tasks","id":"{record}","op":"delete","deletedAt":"{time}"{actor}}}"#
            ),
            _ => format!(
                r#"{{"table":"tasks","id":"{record}","op":"update","fields":{{"{field}":{{"value":{value},"updatedAt":"{time}"}}}}{actor}}}"#
            ),
        },
    )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3_usize, change_json()).prop_map(|(device, change)| Step::Write { device, change }),
        1 => (0..=100_u64).prop_map(|horizon_percent| Step::Compact { horizon_percent }),
        2 => (0..3_usize, 1..5_usize).prop_map(|(device, limit)| Step::Read { device, limit }),
    ]
}

fn parse(json: &str) -> Change {
    serde_json::from_str::<WireChange>(json)
        .expect("parses")
        .validate(1)
        .expect("valid")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn devices_following_any_cursor_across_compactions_reach_the_full_history(
        steps in prop::collection::vec(step(), 1..60),
    ) {
        let mut log = Log::default();
        let mut devices: Vec<Device> = ["phone", "laptop", "tablet"].into_iter().map(Device::named).collect();
        let mut full: BTreeMap<String, RecordState> = BTreeMap::new();
        for step in &steps {
            match step {
                Step::Write { device, change } => {
                    let change = parse(change);
                    full.entry(change.id.clone()).or_default().apply((&change).into()).expect("merges");
                    devices[*device].write(&mut log, change);
                }
                Step::Compact { horizon_percent } => log.compact(log.newest * horizon_percent / 100),
                Step::Read { device, limit } => devices[*device].read(&log, *limit),
            }
        }
        let mut fresh = Device::named("new-device");
        fresh.read_to_end(&log);
        prop_assert_eq!(&fresh.records, &full, "a new device after every compaction");
        for device in &mut devices {
            device.read_to_end(&log);
            prop_assert_eq!(&device.records, &full, "{} with its own cursor", device.name);
        }
        // Compacting everything leaves one change per record, and the same.
        log.compact(log.newest);
        prop_assert!(log.rows.len() <= full.len());
        let mut last = Device::named("last");
        last.read_to_end(&log);
        prop_assert_eq!(&last.records, &full);
    }
}

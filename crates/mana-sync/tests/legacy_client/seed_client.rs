//! The seed-era web client's sync rules, written as code. Cursors are the
//! strings the server sent, compared as strings (`<`), exactly as its
//! JavaScript compares them; its clock is `new Date().toISOString()`.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::common::{Device, EventStream, Harness, START, encode};

/// One hour, for device clocks that are off (milliseconds).
pub const HOUR_MS: i64 = 3_600_000;

/// One record of the device's local database.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub fields: Map<String, Value>,
    pub updated_at: String,
    pub deleted_at: Option<String>,
}

/// Where a `syncedUntil` came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Push,
    Pull,
    Stream,
}

/// One `syncedUntil` the client received, with the `since` it had asked from
/// (for a stream event: its table's cursor before the event).
#[derive(Debug, Clone)]
pub struct Seen {
    pub route: Route,
    pub table: Option<String>,
    pub since: String,
    pub synced_until: String,
    pub has_more: bool,
}

/// A device running the seed's client against the server under test.
pub struct SeedClient {
    pub name: String,
    device: Device,
    app: String,
    /// How far the device's clock is off (milliseconds; negative: behind).
    clock_skew_ms: i64,
    /// Collection → cursor, in the app's collection order.
    cursors: Vec<(String, String)>,
    pub records: BTreeMap<(String, String), Record>,
    pub seen: Vec<Seen>,
}

impl SeedClient {
    /// A device that never synced: every collection's cursor is the epoch.
    pub fn new(h: &Harness, user: &str, client_id: &str, app: &str, collections: &[&str]) -> Self {
        Self {
            name: client_id.to_owned(),
            device: h.device(user, client_id),
            app: app.to_owned(),
            clock_skew_ms: 0,
            cursors: collections
                .iter()
                .map(|c| ((*c).to_owned(), START.to_owned()))
                .collect(),
            records: BTreeMap::new(),
            seen: Vec::new(),
        }
    }

    /// The same device with its clock `skew_ms` milliseconds off.
    pub fn with_clock_skew(mut self, skew_ms: i64) -> Self {
        self.clock_skew_ms = skew_ms;
        self
    }

    /// `new Date().toISOString()` on this device.
    pub fn now(&self) -> String {
        iso(now_nanos() + i128::from(self.clock_skew_ms) * 1_000_000, 3)
    }

    pub fn cursor(&self, collection: &str) -> &str {
        self.cursors
            .iter()
            .find(|(name, _)| name == collection)
            .map(|(_, cursor)| cursor.as_str())
            .expect("a collection of the app")
    }

    /// The `since` of a push and of a stream: the string minimum of every
    /// collection's cursor and the device's clock.
    pub fn since(&self) -> String {
        self.cursors
            .iter()
            .map(|(_, cursor)| cursor)
            .fold(
                self.now(),
                |min, cursor| {
                    if *cursor < min { cursor.clone() } else { min }
                },
            )
    }

    /// Writes `changes` locally, pushes them, applies the reply and sets
    /// every collection's cursor to its `syncedUntil` (even when `hasMore`).
    pub async fn push(&mut self, changes: Vec<Value>) -> Value {
        for change in &changes {
            self.apply(change);
        }
        let since = self.since();
        let (status, reply) = self.device.push(&self.app, &since, json!(changes)).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}: push of {changes:?} answered {reply}",
            self.name
        );
        self.apply_all(&reply["serverChanges"]);
        let until = synced_until(&reply);
        for (_, cursor) in &mut self.cursors {
            cursor.clone_from(&until);
        }
        self.note(Route::Push, None, since, &reply);
        reply
    }

    /// Pulls one collection from its cursor, page by page while `hasMore`;
    /// returns the changes received.
    pub async fn pull(&mut self, collection: &str) -> Vec<Value> {
        let mut received = Vec::new();
        loop {
            let since = self.cursor(collection).to_owned();
            let query = format!("collection={collection}&since={}", encode(&since));
            let (status, page) = self.device.pull(&self.app, &query).await;
            assert_eq!(
                status,
                StatusCode::OK,
                "{}: pull answered {page}",
                self.name
            );
            self.apply_all(&page["serverChanges"]);
            received.extend(page["serverChanges"].as_array().expect("array").clone());
            self.set_cursor(collection, synced_until(&page));
            self.note(Route::Pull, Some(collection), since, &page);
            if page["hasMore"] == false {
                return received;
            }
        }
    }

    /// Pulls every collection of the app.
    pub async fn pull_all(&mut self) {
        let collections: Vec<String> = self.cursors.iter().map(|(c, _)| c.clone()).collect();
        for collection in collections {
            self.pull(&collection).await;
        }
    }

    /// Opens the change stream of every collection from `since()`.
    pub async fn open_stream(&self) -> EventStream {
        let collections: Vec<&str> = self.cursors.iter().map(|(c, _)| c.as_str()).collect();
        self.device
            .stream(&self.app, &collections.join(","), &self.since())
            .await
    }

    /// Applies one `changes` event and sets its table's cursor.
    pub fn apply_event(&mut self, event: &Value) {
        let table = event["table"].as_str().expect("table");
        self.apply_all(&event["changes"]);
        let since = self.cursor(table).to_owned();
        self.set_cursor(table, synced_until(event));
        self.note(Route::Stream, Some(table), since, event);
    }

    /// Reads and applies a freshly opened stream's backlog.
    pub async fn read_backlog(&mut self, stream: &mut EventStream) {
        for event in stream.backlog(self.cursors.len()).await {
            self.apply_event(&event);
        }
    }

    /// Applies live events until the device has every change of `expected`
    /// (waits for each event with a deadline).
    pub async fn read_until(&mut self, stream: &mut EventStream, expected: &[(&str, &str)]) {
        while !self.missing(expected).is_empty() {
            let event = stream.next_changes().await;
            self.apply_event(&event);
        }
    }

    /// The `(table, id)` of `expected` this device has no live record of.
    pub fn missing<'a>(&self, expected: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        expected
            .iter()
            .filter(|(table, id)| {
                self.record(table, id)
                    .is_none_or(|record| record.deleted_at.is_some())
            })
            .copied()
            .collect()
    }

    /// Asserts that no change of `expected` (other devices' inserts) was lost.
    pub fn assert_has(&self, expected: &[(&str, &str)], when: &str) {
        let missing = self.missing(expected);
        assert!(
            missing.is_empty(),
            "{} lost {} of {} changes of other devices ({when}): {:?}; its cursors: {:?}",
            self.name,
            missing.len(),
            expected.len(),
            &missing[..missing.len().min(5)],
            self.cursors
        );
    }

    pub fn record(&self, table: &str, id: &str) -> Option<&Record> {
        self.records.get(&(table.to_owned(), id.to_owned()))
    }

    fn set_cursor(&mut self, collection: &str, until: String) {
        if let Some((_, cursor)) = self.cursors.iter_mut().find(|(c, _)| c == collection) {
            *cursor = until;
        }
    }

    fn note(&mut self, route: Route, table: Option<&str>, since: String, reply: &Value) {
        self.seen.push(Seen {
            route,
            table: table.map(str::to_owned),
            since,
            synced_until: synced_until(reply),
            has_more: reply["hasMore"] == true,
        });
    }

    fn apply_all(&mut self, changes: &Value) {
        for change in changes.as_array().expect("an array of changes") {
            self.apply(change);
        }
    }

    /// The seed's merge: an insert puts the record; an update field wins when
    /// its `updatedAt` ≥ the record's, and a missing record is rebuilt from
    /// the update; a delete marks the record deleted.
    fn apply(&mut self, change: &Value) {
        let key = (
            change["table"].as_str().expect("table").to_owned(),
            change["id"].as_str().expect("id").to_owned(),
        );
        match change["op"].as_str().expect("op") {
            "insert" => {
                let fields = change["data"].as_object().expect("data").clone();
                let updated_at = fields.get("updatedAt").and_then(Value::as_str);
                let updated_at = updated_at.unwrap_or_default().to_owned();
                self.records.insert(
                    key,
                    Record {
                        fields,
                        updated_at,
                        deleted_at: None,
                    },
                );
            }
            "update" => {
                let record = self.records.entry(key).or_default();
                for (name, field) in change["fields"].as_object().expect("fields") {
                    let at = field["updatedAt"]
                        .as_str()
                        .or(field["at"].as_str())
                        .expect("a field timestamp");
                    if at >= record.updated_at.as_str() {
                        record.fields.insert(name.clone(), field["value"].clone());
                        record.updated_at = at.to_owned();
                    }
                }
            }
            "delete" => {
                let deleted_at = change["deletedAt"]
                    .as_str()
                    .map_or_else(|| self.now(), str::to_owned);
                self.records.entry(key).or_default().deleted_at = Some(deleted_at);
            }
            other => panic!("unknown op `{other}` in {change}"),
        }
    }
}

fn synced_until(reply: &Value) -> String {
    reply["syncedUntil"]
        .as_str()
        .unwrap_or_else(|| panic!("no syncedUntil in {reply}"))
        .to_owned()
}

/// The test machine's clock, in nanoseconds since the epoch.
pub fn now_nanos() -> i128 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i128::try_from(since_epoch.as_nanos()).expect("fits")
}

/// An instant as RFC 3339 UTC with `digits` fractional digits
/// (3 is JavaScript's `toISOString`).
pub fn iso(nanos: i128, digits: u32) -> String {
    let seconds = i64::try_from(nanos.div_euclid(1_000_000_000)).expect("fits");
    let fraction = nanos.rem_euclid(1_000_000_000) / 10_i128.pow(9 - digits);
    let (year, month, day) = civil_date(seconds.div_euclid(86_400));
    let time = seconds.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{fraction:0width$}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60,
        width = digits as usize
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Whether `text` has the shape of a cursor:
/// `^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$`.
pub fn is_cursor_shaped(text: &str) -> bool {
    const SHAPE: &str = "0000-00-00T00:00:00.000000000Z";
    text.len() == SHAPE.len()
        && text.bytes().zip(SHAPE.bytes()).all(|(c, s)| {
            if s == b'0' {
                c.is_ascii_digit()
            } else {
                c == s
            }
        })
}

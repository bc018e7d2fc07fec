//! Queries over one collection, and subscriptions that re-run them whenever
//! the collection changes (local writes, or changes applied by sync).

use std::cmp::Ordering;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use serde_json::Value;
use tokio::sync::watch;

use crate::error::Result;
use crate::store::{LocalStore, Record, Versions};

type Filter = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// Which live records of a collection to return, in which order.
#[derive(Clone)]
pub struct Query {
    collection: String,
    filter: Option<Filter>,
    order: Vec<(String, bool)>,
}

impl std::fmt::Debug for Query {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Query")
            .field("collection", &self.collection)
            .field("filtered", &self.filter.is_some())
            .field("order", &self.order)
            .finish()
    }
}

impl Query {
    /// Every live record of `collection`, ordered by id.
    pub fn new(collection: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            filter: None,
            order: Vec::new(),
        }
    }

    /// Keeps only the records for which `keep` is true.
    pub fn filter(mut self, keep: impl Fn(&Record) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(keep));
        self
    }

    /// Keeps only the records whose `field` equals `value`.
    pub fn where_eq(self, field: impl Into<String>, value: Value) -> Self {
        let field = field.into();
        self.filter(move |record| record.get(&field) == Some(&value))
    }

    /// Orders by `field`, ascending (then by the orders added before it is
    /// exhausted, then by id). Values of different JSON types order as
    /// null < booleans < numbers < strings < arrays < objects; a missing field
    /// sorts first.
    pub fn order_by(mut self, field: impl Into<String>) -> Self {
        self.order.push((field.into(), false));
        self
    }

    /// Orders by `field`, descending.
    pub fn order_by_desc(mut self, field: impl Into<String>) -> Self {
        self.order.push((field.into(), true));
        self
    }

    /// The collection queried.
    pub fn collection(&self) -> &str {
        &self.collection
    }

    pub(crate) fn matches(&self, record: &Record) -> bool {
        self.filter.as_ref().is_none_or(|keep| keep(record))
    }

    pub(crate) fn sort(&self, records: &mut [Record]) {
        if self.order.is_empty() {
            return; // already by id
        }
        records.sort_by(|a, b| {
            for (field, descending) in &self.order {
                let ordering = compare_values(a.get(field), b.get(field));
                let ordering = if *descending {
                    ordering.reverse()
                } else {
                    ordering
                };
                if ordering != Ordering::Equal {
                    return ordering;
                }
            }
            a.id.cmp(&b.id)
        });
    }
}

fn rank(value: Option<&Value>) -> u8 {
    match value {
        None => 0,
        Some(Value::Null) => 1,
        Some(Value::Bool(_)) => 2,
        Some(Value::Number(_)) => 3,
        Some(Value::String(_)) => 4,
        Some(Value::Array(_)) => 5,
        Some(Value::Object(_)) => 6,
    }
}

/// A total order on optional JSON values, for sorting.
pub fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        (Some(x @ (Value::Array(_) | Value::Object(_))), Some(y))
            if rank(Some(x)) == rank(Some(y)) =>
        {
            x.to_string().cmp(&y.to_string())
        }
        _ => rank(a).cmp(&rank(b)),
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<Vec<Record>>> + Send>>;

/// The results of a query over time: the current result first, then each new
/// result after a write changes it. A write that leaves the result unchanged
/// (another record, an identical value) yields nothing. It never ends on its
/// own: drop it to unsubscribe.
pub struct Subscription {
    inner: ResultStream,
}

struct State {
    store: LocalStore,
    query: Query,
    versions: watch::Receiver<Versions>,
    seen: Option<u64>,
    last: Option<Vec<Record>>,
    started: bool,
}

impl Subscription {
    pub(crate) fn new(
        store: LocalStore,
        query: Query,
        mut versions: watch::Receiver<Versions>,
    ) -> Self {
        // Take the version before the first read, so a write that lands in
        // between is seen as a change rather than missed.
        let seen = versions
            .borrow_and_update()
            .get(query.collection())
            .copied();
        let state = State {
            store,
            query,
            versions,
            seen,
            last: None,
            started: false,
        };
        let inner = futures::stream::unfold(state, |mut state| async move {
            loop {
                if state.started {
                    if state.versions.changed().await.is_err() {
                        return None;
                    }
                    let now = state
                        .versions
                        .borrow_and_update()
                        .get(state.query.collection())
                        .copied();
                    if now == state.seen {
                        continue;
                    }
                    state.seen = now;
                }
                state.started = true;
                match state.store.query(&state.query) {
                    Ok(records) => {
                        if state.last.as_ref() == Some(&records) {
                            continue;
                        }
                        state.last = Some(records.clone());
                        return Some((Ok(records), state));
                    }
                    Err(error) => return Some((Err(error), state)),
                }
            }
        });
        Self {
            inner: Box::pin(inner),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Vec<Record>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

//! Runs the shared merge test vectors (`spec/merge-vectors.json`), which every
//! client implementation (this crate, the TypeScript client) must pass.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use mana_sync_protocol::merge::{Fold, RecordState};
use mana_sync_protocol::{SyncChange, WireChange};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    local: Option<Value>,
    incoming: Vec<Value>,
    expected: Value,
    expected_view: Option<Value>,
}

fn load() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../spec/merge-vectors.json");
    let text = std::fs::read_to_string(path).expect("spec/merge-vectors.json is readable");
    serde_json::from_str(&text).expect("the vectors are well-formed")
}

fn state_from(value: &Value) -> RecordState {
    // Through text: values are kept as raw JSON text, which needs the
    // string deserializer.
    serde_json::from_str(&value.to_string()).expect("a valid record state")
}

fn changes(case: &Case) -> Vec<WireChange> {
    case.incoming
        .iter()
        .map(|change| serde_json::from_str(&change.to_string()).expect("a valid change"))
        .collect()
}

fn run(case: &Case, order: &[usize], changes: &[WireChange]) -> RecordState {
    let mut state = case.local.as_ref().map(state_from).unwrap_or_default();
    for &index in order {
        state
            .apply((&changes[index]).into())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
    }
    state
}

/// Every permutation of `0..n` (Heap's algorithm).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    fn heap(k: usize, items: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if k <= 1 {
            out.push(items.clone());
            return;
        }
        for i in 0..k {
            heap(k - 1, items, out);
            let swap = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(swap, k - 1);
        }
    }
    let mut out = Vec::new();
    heap(n, &mut (0..n).collect(), &mut out);
    out
}

#[test]
fn every_vector_gives_the_expected_record_in_every_order() {
    let cases = load();
    assert!(cases.len() >= 20, "the vectors are all there");
    for case in &cases {
        let changes = changes(case);
        for order in permutations(changes.len()) {
            let state = run(case, &order, &changes);
            let actual = serde_json::to_value(&state).expect("serialises");
            assert_eq!(
                actual, case.expected,
                "{} (order {order:?}): state differs",
                case.name
            );
            let view = state.view().map(Value::Object);
            assert_eq!(
                view, case.expected_view,
                "{} (order {order:?}): view differs",
                case.name
            );
        }
    }
}

#[test]
fn applying_every_change_again_changes_nothing() {
    for case in &load() {
        let changes = changes(case);
        let order: Vec<usize> = (0..changes.len()).collect();
        let mut state = run(case, &order, &changes);
        let once = state.clone();
        for change in &changes {
            let changed = state.apply(change.into()).expect("merges");
            assert!(!changed, "{}: a replay changed the state", case.name);
        }
        assert_eq!(state, once, "{}", case.name);
    }
}

/// What the server's compaction stores for the incoming changes (one folded
/// change), sent over the wire and applied, gives the same record.
#[test]
fn the_folded_incoming_changes_give_the_expected_record() {
    for case in &load() {
        let changes = changes(case);
        let mut fold = Fold::new();
        for change in &changes {
            let wire = change.clone().validate(1).expect("a valid change");
            fold.add((&wire).into(), 1, "device")
                .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        }
        let folded = fold.finish("tasks".into(), "t1".into()).change;
        let sent = SyncChange {
            table: folded.table,
            id: folded.id,
            op: folded.op,
            data: folded.data,
            fields: folded.fields,
            deleted_at: folded.deleted_at,
            actor: folded.actor,
            event_id: uuid::Uuid::nil(),
            schema_version: folded.schema_version,
            space_id: None,
        };
        let text = serde_json::to_string(&sent).expect("serialises");
        let received: WireChange = serde_json::from_str(&text).expect("reads back");
        let mut state = case.local.as_ref().map(state_from).unwrap_or_default();
        state
            .apply((&received).into())
            .unwrap_or_else(|error| panic!("{}: {error}", case.name));
        assert_eq!(
            serde_json::to_value(&state).expect("serialises"),
            case.expected,
            "{}: the folded change {text} gives another state",
            case.name
        );
        assert_eq!(
            state.view().map(Value::Object),
            case.expected_view,
            "{}: view differs",
            case.name
        );
    }
}

#[test]
fn permutations_are_complete() {
    assert_eq!(permutations(0).len(), 1);
    assert_eq!(permutations(3).len(), 6);
    let mut four = permutations(4);
    four.sort();
    four.dedup();
    assert_eq!(four.len(), 24);
}

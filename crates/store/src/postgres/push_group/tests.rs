//! Which waiting pushes make a group.

use std::collections::VecDeque;

use mana_sync_protocol::{Change, Op, UserId};
use tokio::sync::oneshot;

use super::{MAX_GROUP, MAX_GROUP_BYTES, MAX_GROUP_CHANGES, Queued, json_bytes, take_group};
use crate::pg_push::Job;

fn queued(user: &str, changes: usize, data_bytes: usize) -> Queued {
    let data = serde_json::value::RawValue::from_string(format!(
        "{{\"t\":\"{}\"}}",
        "x".repeat(data_bytes)
    ))
    .ok();
    let changes: Vec<Change> = (0..changes)
        .map(|i| Change {
            table: "tasks".into(),
            id: format!("r{i}"),
            op: Op::Insert,
            data: data.clone(),
            fields: None,
            deleted_at: None,
            actor: None,
            schema_version: 1,
            space_id: None,
        })
        .collect();
    let bytes = changes.iter().map(json_bytes).sum();
    let (done, _) = oneshot::channel();
    Queued {
        job: Job {
            user: UserId::new(user).expect("valid user"),
            app_id: "todo".into(),
            client_id: "d".into(),
            changeset_id: None,
            changes,
            reply: None,
        },
        bytes,
        done,
    }
}

fn users(group: &[Queued]) -> Vec<&str> {
    group.iter().map(|q| q.job.user.as_str()).collect()
}

#[test]
fn a_group_holds_one_push_per_user_sorted_and_the_rest_wait_in_order() {
    let mut waiting: VecDeque<Queued> = ["carol", "alice", "carol", "bob", "alice"]
        .into_iter()
        .map(|user| queued(user, 1, 10))
        .collect();
    let group = take_group(&mut waiting);
    assert_eq!(users(&group), ["alice", "bob", "carol"]);
    let rest: Vec<&str> = waiting.iter().map(|q| q.job.user.as_str()).collect();
    assert_eq!(rest, ["carol", "alice"]);
}

#[test]
fn a_group_stops_at_its_limits_but_always_takes_the_first_push() {
    let mut waiting: VecDeque<Queued> = (0..MAX_GROUP + 10)
        .map(|n| queued(&format!("u{n:04}"), 1, 10))
        .collect();
    assert_eq!(take_group(&mut waiting).len(), MAX_GROUP);
    assert_eq!(waiting.len(), 10);

    let half = MAX_GROUP_CHANGES / 2 + 1;
    let mut waiting: VecDeque<Queued> = ["a", "b", "c"]
        .into_iter()
        .map(|u| queued(u, half, 1))
        .collect();
    assert_eq!(users(&take_group(&mut waiting)), ["a"], "changes");

    let mut waiting: VecDeque<Queued> = ["a", "b"]
        .into_iter()
        .map(|u| queued(u, 1, MAX_GROUP_BYTES / 2 + 1))
        .collect();
    assert_eq!(users(&take_group(&mut waiting)), ["a"], "bytes");

    let mut waiting: VecDeque<Queued> = [queued("big", MAX_GROUP_CHANGES + 1, 1)].into();
    assert_eq!(users(&take_group(&mut waiting)), ["big"], "alone");
}

//! Tombstones past their retention on both databases: compaction drops a
//! deleted record's changes, cursors from before the drop expire (and are
//! still served to the seed's clients, who cannot be told), and a download
//! begun after the drop pages to the end without being told so.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use std::time::Duration;

use common::{Fixture, T, compact, delete, end_of, insert_at, query, rows, user};
use mana_sync_protocol::{Cursor, Since, UserId};
use mana_sync_store::{ChangeQuery, CompactOptions, ExpiredCursor, StoreError};

/// Compaction that drops every deleted record at once.
fn no_retention() -> CompactOptions {
    CompactOptions {
        tombstone_retention: Duration::ZERO,
        ..CompactOptions::default()
    }
}

/// Pushes the insert and then the delete of `tasks/id` from the user's
/// phone; returns the cursor just after the delete.
async fn insert_and_delete(f: &Fixture, who: &UserId, id: &str) -> Cursor {
    f.push_todo(who, "phone", &[insert_at(id, T[0])]).await;
    end_of(f.push_todo(who, "phone", &[delete(id, T[1])]).await)
}

async fn tombstones_past_their_retention_are_dropped_and_older_cursors_expire(f: Fixture) {
    let alice = user("alice");
    let kept = end_of(
        f.push_todo(&alice, "phone", &[insert_at("kept", T[0])])
            .await,
    );
    let deleted = insert_and_delete(&f, &alice, "gone").await;
    // Within the retention, a tombstone is folded, not dropped.
    let outcome = compact(&*f.store, &alice, &CompactOptions::default()).await;
    assert_eq!((outcome.records_folded, outcome.records_dropped), (1, 0));
    let outcome = compact(&*f.store, &alice, &no_retention()).await;
    assert_eq!((outcome.records_dropped, outcome.changes_dropped), (1, 1));
    let ids: Vec<String> = rows(&*f.store, &alice)
        .await
        .into_iter()
        .map(|c| c.record_id)
        .collect();
    assert_eq!(ids, ["kept"]);

    // A cursor before the dropped tombstone can no longer be served…
    let expired = ChangeQuery {
        since: Since::Cursor(kept),
        ..query("todo", None, Since::START)
    };
    match f.store.changes_after(&alice, &expired).await {
        Err(StoreError::CursorExpired { expired_through }) => assert_eq!(expired_through, deleted),
        other => panic!("expected an expired cursor, got {other:?}"),
    }
    // …to a client that asked to be told. The seed's clients cannot
    // understand that and are served from their cursor.
    let legacy = ChangeQuery {
        expired: ExpiredCursor::Serve,
        ..expired
    };
    let page = f
        .store
        .changes_after(&alice, &legacy)
        .await
        .expect("served");
    assert!(page.changes.is_empty());
    assert_eq!(page.expired_through, deleted.position());
    // From the start, or from the tombstone on, nothing was missed.
    for since in [Cursor::START, deleted] {
        let q = ChangeQuery {
            since: Since::Cursor(since),
            ..query("todo", None, Since::START)
        };
        assert!(f.store.changes_after(&alice, &q).await.is_ok(), "{since}");
    }
    // A cursor handed out after the drop accounts for it, whatever its
    // position: a download that begun after the drop pages on.
    let after_drop = ChangeQuery {
        expired: ExpiredCursor::Refuse {
            known: deleted.position(),
        },
        ..expired
    };
    assert!(f.store.changes_after(&alice, &after_drop).await.is_ok());
}

/// A new download after a drop, in pages that end before the dropped
/// position, is never told its cursor expired.
async fn a_download_begun_after_a_drop_pages_to_the_end(f: Fixture) {
    let alice = user("alice");
    for i in 0..10 {
        f.push_todo(&alice, "phone", &[insert_at(&format!("old{i}"), T[0])])
            .await;
    }
    insert_and_delete(&f, &alice, "gone").await;
    assert_eq!(
        compact(&*f.store, &alice, &no_retention())
            .await
            .records_dropped,
        1
    );
    let (mut since, mut known, mut seen) = (Cursor::START, 0, 0);
    loop {
        let mut q = query("todo", None, Since::Cursor(since));
        q.limit = 3;
        q.expired = ExpiredCursor::Refuse { known };
        let page = f.store.changes_after(&alice, &q).await.expect("pages on");
        seen += page.changes.len();
        since = page.next;
        known = page.expired_through;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, 10);
}

store_suite!(
    tombstones_past_their_retention_are_dropped_and_older_cursors_expire,
    a_download_begun_after_a_drop_pages_to_the_end,
);

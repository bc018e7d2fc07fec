//! Row-level security on Postgres, checked from outside the server: with the
//! server's own (non-superuser) role, a transaction sees and writes only the
//! rows of the user it declared, even with a query that forgets `user_id`.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

use mana_sync_protocol::{UserId, WireChange};
use mana_sync_store::{NewChangeset, StoreOptions};
use mana_sync_testkit::pg::TestDatabase;

async fn seeded_database() -> Option<TestDatabase> {
    let db = TestDatabase::create().await?;
    let store = mana_sync_store::open(&db.url(), &StoreOptions::default())
        .await
        .expect("opens");
    for name in ["alice", "bob"] {
        let change: WireChange = serde_json::from_str(&format!(
            r#"{{"table":"tasks","id":"{name}-1","op":"insert","data":{{}}}}"#
        ))
        .expect("parses");
        let changes = [change.validate(1).expect("valid")];
        store
            .push(
                &UserId::new(name).expect("valid"),
                NewChangeset {
                    app_id: "todo",
                    client_id: "d",
                    changeset_id: Some("cs"),
                    changes: &changes,
                },
            )
            .await
            .expect("push");
    }
    Some(db)
}

#[tokio::test]
async fn the_server_role_is_subject_to_row_level_security() {
    let Some(db) = seeded_database().await else {
        return;
    };
    let app = db.app().await;
    let bypasses: bool = app
        .query_one(
            "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .expect("role query")
        .get(0);
    assert!(
        !bypasses,
        "the test role must not bypass RLS, or this test proves nothing"
    );

    for table in ["mana_changes", "mana_user_seq", "mana_changesets"] {
        let count: i64 = app
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count")
            .get(0);
        assert_eq!(count, 0, "{table}: no user declared, no rows visible");
    }

    app.batch_execute("BEGIN; SELECT set_config('mana.user_id', 'alice', true);")
        .await
        .expect("declares user");
    let users: Vec<String> = app
        .query("SELECT DISTINCT user_id FROM mana_changes", &[])
        .await
        .expect("query")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(users, ["alice"]);
    let sneaky = app
        .execute(
            "INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id, op,
                 client_id, schema_version, created_at)
             VALUES ('bob', 99, gen_random_uuid(), 'todo', 't', 'x', 'insert', 'd', 1, now())",
            &[],
        )
        .await;
    assert!(sneaky.is_err(), "writing another user's row is refused");
    app.batch_execute("ROLLBACK").await.expect("rollback");

    let admin = db.admin().await;
    let all: i64 = admin
        .query_one("SELECT count(*) FROM mana_changes", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(all, 2, "both users' rows exist; only RLS hid them");
}

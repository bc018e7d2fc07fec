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
    for name in ["alice", "bob", "carol"] {
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
    assert_eq!(all, 3, "every user's rows exist; only RLS hid them");
}

/// A group of pushes declares its users as a list (`mana.user_ids`): the
/// transaction sees and writes those users' rows, and still no other's.
#[tokio::test]
async fn a_transaction_declaring_several_users_reaches_only_theirs() {
    let Some(db) = seeded_database().await else {
        return;
    };
    let app = db.app().await;
    app.batch_execute(
        "BEGIN; SELECT set_config('mana.user_ids', ARRAY['alice', 'bob']::text[]::text, true);",
    )
    .await
    .expect("declares users");
    for table in ["mana_changes", "mana_user_seq", "mana_changesets"] {
        let users: Vec<String> = app
            .query(
                &format!("SELECT DISTINCT user_id FROM {table} ORDER BY user_id"),
                &[],
            )
            .await
            .expect("query")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert_eq!(users, ["alice", "bob"], "{table}");
    }
    let written = app.query_one(&raw_insert("bob"), &[]).await;
    assert!(
        written.is_ok(),
        "a declared user's row is written: {written:?}"
    );
    app.batch_execute("ROLLBACK").await.expect("rollback");

    app.batch_execute(
        "BEGIN; SELECT set_config('mana.user_ids', ARRAY['alice', 'bob']::text[]::text, true);",
    )
    .await
    .expect("declares users");
    let sneaky = app.query_one(&raw_insert("carol"), &[]).await;
    assert!(sneaky.is_err(), "an undeclared user's row is refused");
    app.batch_execute("ROLLBACK").await.expect("rollback");

    let after: i64 = app
        .query_one("SELECT count(*) FROM mana_changes", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(after, 0, "the declaration ended with its transaction");
}

/// Runs `sql` in a transaction declared for `user` on `client`, then rolls
/// back, returning the first column of the first row (a count) or the error.
async fn as_user(
    client: &tokio_postgres::Client,
    user: &str,
    sql: &str,
) -> Result<i64, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SELECT set_config('mana.user_id', '{user}', true);"
        ))
        .await?;
    let result = client.query_one(sql, &[]).await.map(|row| row.get(0));
    client.batch_execute("ROLLBACK").await?;
    result
}

/// A change row of `log`, written directly, as a device of `user` would.
fn raw_insert(log: &str) -> String {
    format!(
        "WITH written AS (
             INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id, op,
                 client_id, schema_version, created_at)
             VALUES ('{log}', 99, gen_random_uuid(), 'todo', 'items', 'x', 'insert', 'd', 1, now())
             RETURNING 1)
         SELECT count(*) FROM written"
    )
}

#[tokio::test]
async fn row_level_security_lets_only_a_spaces_members_read_it_and_its_writers_write_it() {
    use mana_sync_store::{MemberChange, Role};
    use mana_sync_testkit::pg::ROWS_ROLE;

    // The server's role owns nothing here (migrations ran as the owner), so
    // every table's policies apply to it, forced or not.
    let Some(db) = TestDatabase::create_split().await else {
        return;
    };
    mana_sync_store::migrate(&db.owner_url(), Some(ROWS_ROLE))
        .await
        .expect("migrates as the owner");
    let store = mana_sync_store::open(&db.url(), &StoreOptions::default())
        .await
        .expect("opens as the rows role");
    let user = |name: &str| UserId::new(name).expect("valid");
    let space = store
        .create_space(&user("ann"), "Groceries")
        .await
        .expect("creates")
        .space_id;
    for (who, role) in [("bob", Role::Editor), ("vic", Role::Viewer)] {
        store
            .change_membership(
                &user("ann"),
                &space,
                &MemberChange::Set {
                    user: user(who),
                    role,
                },
            )
            .await
            .expect("the owner adds a member");
    }
    let change: WireChange = serde_json::from_str(&format!(
        r#"{{"table":"items","id":"milk","op":"insert","spaceId":"{}","data":{{}}}}"#,
        space.as_str()
    ))
    .expect("parses");
    store
        .push(
            &user("ann"),
            NewChangeset {
                app_id: "todo",
                client_id: "d",
                changeset_id: Some("cs"),
                changes: &[change.validate(1).expect("valid")],
            },
        )
        .await
        .expect("the owner pushes into the space");

    let app = db.app().await;
    let privileged: bool = app
        .query_one(
            "SELECT rolsuper OR rolbypassrls
                    OR pg_has_role(current_user, (SELECT tableowner FROM pg_tables
                                                  WHERE tablename = 'mana_space_members'), 'MEMBER')
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .expect("role query")
        .get(0);
    assert!(
        !privileged,
        "the test role must be subject to every policy, or this test proves nothing"
    );

    let log = format!("~{}", space.as_str());
    let space_rows = format!("SELECT count(*) FROM mana_changes WHERE user_id = '{log}'");
    let members = format!(
        "SELECT count(*) FROM mana_space_members WHERE space_id = '{}'",
        space.as_str()
    );
    let spaces = format!(
        "SELECT count(*) FROM mana_spaces WHERE space_id = '{}'",
        space.as_str()
    );
    for member in ["ann", "bob", "vic"] {
        assert_eq!(
            as_user(&app, member, &space_rows).await.expect("reads"),
            1,
            "{member}"
        );
        assert_eq!(
            as_user(&app, member, &members).await.expect("reads"),
            3,
            "{member}"
        );
        assert_eq!(
            as_user(&app, member, &spaces).await.expect("reads"),
            1,
            "{member}"
        );
    }
    for query in [&space_rows, &members, &spaces] {
        assert_eq!(
            as_user(&app, "eve", query).await.expect("reads"),
            0,
            "a stranger sees nothing of the space: {query}"
        );
    }

    // Owners and editors write the space's log; a viewer and a stranger
    // cannot, even with a statement that names the log directly.
    for writer in ["ann", "bob"] {
        assert_eq!(
            as_user(&app, writer, &raw_insert(&log))
                .await
                .expect("writes"),
            1
        );
    }
    for refused in ["vic", "eve"] {
        let error = as_user(&app, refused, &raw_insert(&log))
            .await
            .expect_err("refused by row-level security");
        let message = error.as_db_error().map(|db| db.message().to_owned());
        assert!(
            message
                .as_deref()
                .is_some_and(|m| m.contains("row-level security")),
            "{refused}: {error:?}"
        );
    }

    // Nobody but an owner changes the members: a stranger cannot add
    // themselves, a viewer cannot promote themselves.
    let join = format!(
        "WITH added AS (INSERT INTO mana_space_members (space_id, user_id, role)
                        VALUES ('{}', 'eve', 'owner') RETURNING 1) SELECT count(*) FROM added",
        space.as_str()
    );
    assert!(
        as_user(&app, "eve", &join).await.is_err(),
        "eve cannot join"
    );
    let promote = format!(
        "WITH changed AS (UPDATE mana_space_members SET role = 'owner'
                          WHERE space_id = '{}' AND user_id = 'vic' RETURNING 1)
         SELECT count(*) FROM changed",
        space.as_str()
    );
    assert_eq!(as_user(&app, "vic", &promote).await.expect("runs"), 0);

    // Removal takes effect in the database at once.
    store
        .change_membership(
            &user("ann"),
            &space,
            &MemberChange::Remove { user: user("bob") },
        )
        .await
        .expect("the owner removes bob");
    assert_eq!(as_user(&app, "bob", &space_rows).await.expect("reads"), 0);
    assert!(as_user(&app, "bob", &raw_insert(&log)).await.is_err());
}

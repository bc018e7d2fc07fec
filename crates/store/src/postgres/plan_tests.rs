//! The statements of a log read, and of a group of pushes, keep one plan
//! per connection ([`DECLARE_LOG_READER`]); whatever the statistics were
//! when that plan was made, it must find a page by a key range, never by
//! scanning and sorting a user's log.

use mana_sync_testkit::pg::{ROWS_ROLE, TestDatabase};

use super::push_group::{REPLIES, REPLIES_IN_COLLECTION, WRITE_GROUP};
use super::read::{LOG_STATE, select_changes_sql};
use super::{DECLARE_LOG_READER, migrate_as_owner};

/// The plan `sql` gets with `params` in a transaction declared like a log
/// read, as the server's role, prepared there (generic plan).
async fn plan(db: &TestDatabase, sql: &str, params: &str) -> String {
    let client = db.app().await;
    client.batch_execute("BEGIN").await.expect("begins");
    client
        .query_one(DECLARE_LOG_READER, &[&"reader"])
        .await
        .expect("declares");
    client
        .batch_execute(&format!("PREPARE page AS {sql}"))
        .await
        .expect("prepares");
    let rows = client
        .query(&format!("EXPLAIN EXECUTE page({params})"), &[])
        .await
        .expect("explains");
    client.batch_execute("ROLLBACK").await.expect("ends");
    rows.iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn assert_keyed_plans(db: &TestDatabase, when: &str) {
    for collection in [false, true] {
        for exclude in [false, true] {
            let mut params = vec!["'reader'", "'todo'", "0", "1001"];
            if collection {
                params.push("'tasks'");
            }
            if exclude {
                params.push("'phone'");
            }
            let sql = select_changes_sql(collection, exclude);
            let plan = plan(db, &sql, &params.join(", ")).await;
            for unwanted in ["Seq Scan", "Sort", "Bitmap"] {
                assert!(
                    !plan.contains(unwanted),
                    "{when}, collection {collection}, exclude {exclude}: {unwanted} in\n{plan}"
                );
            }
            assert!(plan.contains("Index Scan"), "{when}: {plan}");
        }
    }
    let state = plan(db, LOG_STATE, "'reader'").await;
    assert!(!state.contains("Seq Scan"), "{when}: {state}");
    // A group of pushes: its write, and its replies' reads.
    let replies = |collection| {
        format!(
            "ARRAY['reader'], ARRAY['todo'], ARRAY[0]::int8[], ARRAY[1001]::int8[],
             ARRAY['phone'], ARRAY[1]::int8[], ARRAY[{collection}]::text[]"
        )
    };
    for (sql, params) in [
        (REPLIES, replies("NULL")),
        (REPLIES_IN_COLLECTION, replies("'tasks'")),
    ] {
        let read = plan(db, sql, &params).await;
        for unwanted in ["Seq Scan", "Sort", "Bitmap"] {
            assert!(!read.contains(unwanted), "{when}: {unwanted} in\n{read}");
        }
        assert!(read.contains("Index Scan"), "{when}: {read}");
    }
    let write = "ARRAY['reader'], ARRAY['todo'], ARRAY['phone'], ARRAY[NULL]::text[],
         ARRAY[1]::int8[], ARRAY[0]::int8[], 1, ARRAY[1]::int8[], ARRAY[1]::int8[],
         ARRAY[gen_random_uuid()], ARRAY['tasks'], ARRAY['r1'], ARRAY['insert'], ARRAY['{}'],
         ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[1]";
    let written = plan(db, WRITE_GROUP, write).await;
    for unwanted in ["Seq Scan", "Sort"] {
        assert!(
            !written.contains(unwanted),
            "{when}: {unwanted} in\n{written}"
        );
    }
}

#[tokio::test]
async fn log_reads_use_a_key_range_whatever_the_statistics() {
    let Some(db) = TestDatabase::create_split().await else {
        return;
    };
    migrate_as_owner(&db.owner_url(), Some(ROWS_ROLE))
        .await
        .expect("migrates");
    let admin = db.admin().await;
    // An empty table with fresh statistics: the planner's worst case, where a
    // scan and a sort look cheapest.
    admin
        .batch_execute("ANALYZE mana_changes; ANALYZE mana_user_seq")
        .await
        .expect("analyzes");
    assert_keyed_plans(&db, "empty log").await;
    // A long log of one user beside many short ones.
    admin
        .batch_execute(
            "INSERT INTO mana_changes (user_id, seq, event_id, app_id, table_name, record_id, op,
                 fields, client_id, schema_version, created_at)
             SELECT CASE WHEN i % 2 = 0 THEN 'reader' ELSE 'user-' || (i % 500) END, i,
                 gen_random_uuid(), 'todo', CASE WHEN i % 3 = 0 THEN 'lists' ELSE 'tasks' END,
                 'r' || (i % 1000), 'update', '{}', 'device-' || (i % 4), 1, now()
             FROM generate_series(1, 50000) AS i;
             ANALYZE mana_changes;",
        )
        .await
        .expect("fills the log");
    assert_keyed_plans(&db, "long log").await;
}

//! Bad input gets a precise 4xx JSON error and loses nothing; no input makes
//! the server answer 5xx. On SQLite and Postgres, because each database has
//! its own ways to fail (Postgres refuses NUL in text, for one).

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Harness, START, assert_error, encode, insert};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn raw_post(h: &Harness, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let device = h.device("alice", "phone");
    let response = device
        .http
        .post(h.server.at(path))
        .bearer_auth(&device.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("sent");
    common::read(response).await
}

async fn malformed_bodies_are_400_with_the_path_of_the_problem(h: Harness) {
    let cases: Vec<(&[u8], &str, &str)> = vec![
        (b"{", "invalid_json", "EOF"),
        (b"", "invalid_json", "empty"),
        (b"[]", "invalid_json", "expected struct"),
        (b"{\"since\":1,\"changes\":[]}", "invalid_json", "since"),
        (b"{\"since\":\"c1.0\",\"changes\":{}}", "invalid_json", "changes"),
        (b"{\"since\":\"c1.0\"}", "invalid_json", "changes"),
        (b"{\"since\":\"c1.0\",\"changes\":[{\"table\":\"t\",\"id\":\"1\",\"op\":\"upsert\"}]}", "invalid_json", "changes[0].op"),
        (b"{\"since\":\"c1.0\",\"changes\":[{\"id\":\"1\",\"op\":\"insert\",\"data\":{}}]}", "invalid_json", "table"),
        (b"{\"since\":\"c1.0\",\"changes\":[{\"table\":\"t\",\"op\":\"insert\",\"data\":{}}]}", "invalid_json", "id"),
        (b"{\"since\":\"c1.0\",\"changes\":[{\"table\":\"t\",\"id\":7,\"op\":\"insert\",\"data\":{}}]}", "invalid_json", "changes[0].id"),
        (b"{\"since\":\"c1.0\",\"changes\":[{\"table\":\"t\",\"id\":\"1\",\"op\":\"update\",\"fields\":{\"a\":{\"value\":1,\"at\":\"noon\"}}}]}", "invalid_json", "changes[0].fields"),
        (b"{\"since\":\"c1.0\",\"changes\":[{\"table\":\"t\",\"id\":\"1\",\"op\":\"update\",\"fields\":{\"a\":{\"value\":1}}}]}", "invalid_json", "updatedAt"),
        (b"{\"since\":\"c1.0\",\"changes\":[],\"schemaVersion\":-1}", "invalid_json", "schemaVersion"),
        (b"{\"since\":\"c1.0\",\"changes\":[]} trailing", "invalid_json", "trailing"),
        (b"\xff\xfe", "invalid_json", ""),
    ];
    for (body, code, needle) in cases {
        let reply = raw_post(&h, "/sync/todo", body.to_vec()).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, code, needle);
    }
}

async fn invalid_values_are_400_and_store_nothing(h: Harness) {
    let phone = h.device("alice", "phone");
    let long = "x".repeat(600);
    let cases = vec![
        (
            json!([{"table":"","id":"1","op":"insert","data":{}}]),
            "`table` must not be empty",
        ),
        (
            json!([{"table":"t\u{0}","id":"1","op":"insert","data":{}}]),
            "control characters",
        ),
        (
            json!([{"table":"t","id":"a\u{0}b","op":"insert","data":{}}]),
            "control characters",
        ),
        (
            json!([{"table":"t","id":long,"op":"insert","data":{}}]),
            "at most",
        ),
        (
            json!([{"table":"t","id":"1","op":"insert","data":"text"}]),
            "`data` must be a JSON object",
        ),
        (
            json!([{"table":"t","id":"1","op":"insert"}]),
            "insert needs",
        ),
        (
            json!([{"table":"t","id":"1","op":"update","fields":{}}]),
            "update needs",
        ),
        (
            json!([{"table":"t","id":"1","op":"update","fields":{"":{"value":1,"at":START}}}]),
            "field name",
        ),
    ];
    for (changes, needle) in cases {
        let mut all = vec![insert("tasks", "innocent")];
        all.extend(changes.as_array().expect("array").iter().cloned());
        let reply = phone.push("todo", START, json!(all)).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_change", needle);
        assert_error(
            &reply,
            StatusCode::BAD_REQUEST,
            "invalid_change",
            "changes[1]",
        );
    }
    for (path_app, needle) in [("%00", "control"), (&*"a".repeat(200), "at most")] {
        let reply = phone.push(path_app, START, json!([])).await;
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_request", needle);
    }
    let reply = phone
        .post(
            "todo",
            &json!({"clientId":"phone","since":START,"changesetId":"","changes":[]}),
        )
        .await;
    assert_error(
        &reply,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "changesetId",
    );
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    assert!(changes.is_empty(), "nothing stored: {changes:?}");
}

async fn nul_inside_json_values_is_data_not_an_error(h: Harness) {
    let phone = h.device("alice", "phone");
    let change = json!({"table":"tasks","id":"1","op":"insert","data":{"title":"a\u{0}b"},"actor":{"who":"\u{0}"}});
    let (status, reply) = phone.push("todo", START, json!([change])).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "tasks", START)
        .await;
    assert_eq!(changes[0]["data"]["title"], "a\u{0}b");
    assert_eq!(changes[0]["actor"]["who"], "\u{0}");
}

async fn bodies_over_10_mib_are_413(h: Harness) {
    let filler = "x".repeat(11 * 1024 * 1024);
    let body = format!(
        r#"{{"clientId":"phone","since":"{START}","changes":[{{"table":"t","id":"1","op":"insert","data":{{"f":"{filler}"}}}}]}}"#
    );
    let reply = raw_post(&h, "/sync/todo", body.into_bytes()).await;
    assert_error(
        &reply,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        "bytes",
    );
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "t", START)
        .await;
    assert!(changes.is_empty());
    // Just under the limit is fine.
    let filler = "x".repeat(9 * 1024 * 1024);
    let body = format!(
        r#"{{"clientId":"phone","since":"{START}","changes":[{{"table":"t","id":"1","op":"insert","data":{{"f":"{filler}"}}}}]}}"#
    );
    let (status, _) = raw_post(&h, "/sync/todo", body.into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
}

async fn unknown_routes_methods_and_headers_get_json_errors(h: Harness) {
    let http = mana_sync_testkit::http_client();
    let reply = common::read(http.get(h.server.at("/nope")).send().await.expect("sent")).await;
    assert_error(&reply, StatusCode::NOT_FOUND, "not_found", "/nope");
    let reply = common::read(
        http.delete(h.server.at("/sync/todo"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_error(
        &reply,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method",
    );
    let device = h.device("alice", "phone");
    let response = http
        .post(h.server.at("/sync/todo"))
        .bearer_auth(&device.token)
        .header(
            "x-client-id",
            reqwest::header::HeaderValue::from_bytes(b"ph\xe9ne").expect("header"),
        )
        .json(&json!({"since":START,"changes":[]}))
        .send()
        .await
        .expect("sent");
    assert_error(
        &common::read(response).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "X-Client-Id",
    );
    let reply = device.pull("todo", "collection=tasks&since=%ZZ").await;
    assert_eq!(reply.0, StatusCode::BAD_REQUEST, "{}", reply.1);
}

/// `{"a":` … `1` … `}` nested `depth` levels deep (the outer object counts).
fn nested_object(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// `[[…[1]…]]`, `depth` arrays deep.
fn nested_array(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

async fn values_nested_deeper_than_64_levels_are_refused_with_their_path(h: Harness) {
    let push = |change: String| {
        format!(r#"{{"clientId":"phone","since":"{START}","changes":[{{"table":"t","id":"ok","op":"insert","data":{{}}}},{change}]}}"#)
            .into_bytes()
    };
    let at = r#""at":"2026-11-25T10:00:00.000Z""#;
    // 64 levels are fine: the data object and 63 below it, a field value of
    // 64 arrays, an actor of 64 objects.
    let fine = push(format!(
        r#"{{"table":"t","id":"1","op":"insert","data":{{"a":{}}},"fields":{{"a":{{"value":{},{at}}}}},"actor":{}}}"#,
        nested_object(63),
        nested_array(64),
        nested_object(64)
    ));
    let (status, reply) = raw_post(&h, "/sync/todo", fine).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let cases = [
        (
            format!(
                r#"{{"table":"t","id":"1","op":"insert","data":{}}}"#,
                nested_object(65)
            ),
            "`data`",
        ),
        (
            format!(
                r#"{{"table":"t","id":"1","op":"update","fields":{{"title":{{"value":{},{at}}}}}}}"#,
                nested_array(65)
            ),
            "`fields.title.value`",
        ),
        (
            format!(
                r#"{{"table":"t","id":"1","op":"delete","deletedAt":"2026-11-25T10:00:00Z","actor":{}}}"#,
                nested_array(65)
            ),
            "`actor`",
        ),
        // What a device could use to make every other device's JSON parser
        // give up on the user's pages.
        (
            format!(
                r#"{{"table":"t","id":"1","op":"insert","data":{{"a":{}}}}}"#,
                nested_array(1_000_000)
            ),
            "`data`",
        ),
    ];
    for (change, path) in cases {
        let reply = raw_post(&h, "/sync/todo", push(change)).await;
        assert_error(
            &reply,
            StatusCode::BAD_REQUEST,
            "invalid_change",
            "changes[1]",
        );
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_change", path);
        assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_change", "64");
    }
    // Backups: the line is named, nothing is imported.
    let line = |data: String| {
        format!(
            r#"{{"eventId":"{}","schemaVersion":1,"appId":"todo","table":"t","id":"x","op":"insert","data":{data},"clientId":"d","createdAt":"2026-11-25T10:00:00Z"}}"#,
            "0192f0c4-7a8e-7000-8000-000000000001"
        )
    };
    let backup = format!("{}\n", line(format!(r#"{{"a":{}}}"#, nested_array(100))));
    let device = h.device("alice", "phone");
    let response = device
        .http
        .post(h.server.at("/backup/import"))
        .bearer_auth(&device.token)
        .body(backup)
        .send()
        .await
        .expect("sent");
    let reply = common::read(response).await;
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_backup", "line 1");
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_backup", "`data`");
    assert_error(&reply, StatusCode::BAD_REQUEST, "invalid_backup", "64");
    // Only the first push stored anything.
    let (changes, _) = h
        .device("alice", "laptop")
        .pull_all("todo", "t", START)
        .await;
    assert_eq!(common::ids(&changes), ["ok", "1"]);
}

/// JSON values of every shape, biased towards the keys the API reads.
fn arbitrary_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("table".to_owned()),
        Just("id".to_owned()),
        Just("op".to_owned()),
        Just("data".to_owned()),
        Just("fields".to_owned()),
        Just("value".to_owned()),
        Just("at".to_owned()),
        Just("updatedAt".to_owned()),
        Just("deletedAt".to_owned()),
        Just("actor".to_owned()),
        Just("schemaVersion".to_owned()),
        Just("changesetId".to_owned()),
        any::<String>(),
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any::<String>().prop_map(Value::from),
        prop_oneof![
            Just("insert"),
            Just("update"),
            Just("delete"),
            Just(START),
            Just("c1.0"),
            Just("\u{0}")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        24 => "[a-z]{1,12}",
        2 => "\\PC{1,20}",
        1 => any::<String>(),
        1 => Just(String::new()),
        1 => Just("\u{0}".to_owned()),
        1 => Just("x".repeat(700)),
        1 => Just("🙂‍↔️ é\u{202e}".to_owned()),
    ]
}

fn timestamp_text() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => Just("2026-11-25T10:00:00.000Z".to_owned()),
        5 => Just("2026-11-25T10:00:00.123456789+02:00".to_owned()),
        2 => Just("9999-12-31T23:59:59Z".to_owned()),
        1 => hostile_string(),
    ]
}

/// A change with the right types in most places and hostile values inside.
fn typed_change() -> impl Strategy<Value = Value> {
    let field = (arbitrary_json(), timestamp_text(), any::<bool>()).prop_map(|(value, at, old)| {
        if old {
            json!({"value": value, "updatedAt": at})
        } else {
            json!({"value": value, "at": at})
        }
    });
    (
        hostile_string(),
        hostile_string(),
        prop_oneof![Just("insert"), Just("update"), Just("delete")],
        prop::collection::btree_map(hostile_string(), arbitrary_json(), 0..4),
        prop::collection::btree_map(hostile_string(), field, 0..4),
        timestamp_text(),
        prop::option::of(arbitrary_json()),
        prop::option::weighted(0.3, 0_u64..4),
    )
        .prop_map(
            |(table, id, op, data, fields, deleted_at, actor, version)| {
                let mut change = json!({"table": table, "id": id, "op": op});
                match op {
                    "insert" => change["data"] = Value::Object(data.into_iter().collect()),
                    "update" => change["fields"] = Value::Object(fields.into_iter().collect()),
                    _ => change["deletedAt"] = json!(deleted_at),
                }
                if let Some(actor) = actor {
                    change["actor"] = actor;
                }
                if let Some(version) = version {
                    change["schemaVersion"] = json!(version);
                }
                change
            },
        )
}

/// Push bodies that are mostly well-formed, with arbitrary values inside.
fn push_bodies() -> impl Strategy<Value = Value> {
    let loose_change = prop::collection::btree_map(
        prop_oneof![
            Just("table"),
            Just("id"),
            Just("op"),
            Just("data"),
            Just("fields"),
            Just("deletedAt"),
            Just("actor"),
            Just("schemaVersion")
        ]
        .prop_map(str::to_owned),
        arbitrary_json(),
        0..8,
    )
    .prop_map(|map| Value::Object(map.into_iter().collect()));
    let since = prop_oneof![
        4 => Just(json!(START)),
        1 => Just(json!("c1.0")),
        1 => arbitrary_json(),
    ];
    (
        since,
        prop::collection::vec(
            prop_oneof![12 => typed_change(), 1 => loose_change, 2 => Just(insert("tasks", "ok"))],
            0..4,
        ),
        prop::option::weighted(
            0.3,
            prop_oneof![6 => (1_u64..3).prop_map(Value::from), 1 => arbitrary_json()],
        ),
        prop::option::weighted(
            0.3,
            prop_oneof![6 => hostile_string().prop_map(Value::from), 1 => arbitrary_json()],
        ),
    )
        .prop_map(|(since, changes, version, changeset)| {
            let mut body = json!({"clientId": "fuzzer", "since": since, "changes": changes});
            if let Some(version) = version {
                body["schemaVersion"] = version;
            }
            if let Some(changeset) = changeset {
                body["changesetId"] = changeset;
            }
            body
        })
}

async fn no_input_makes_the_server_fail(h: Harness) {
    let device = h.device("alice", "fuzzer");
    let mut runner = TestRunner::new(Config {
        cases: 200,
        rng_seed: proptest::test_runner::RngSeed::Fixed(0x6d61_6e61),
        ..Config::default()
    });
    let mut accepted = 0;
    let bodies = prop_oneof![6 => push_bodies(), 1 => arbitrary_json()];
    for case in 0..200 {
        let body = bodies.new_tree(&mut runner).expect("generates").current();
        let (status, reply) = device.post("fuzz", &body).await;
        accepted += usize::from(status == StatusCode::OK);
        assert!(
            status == StatusCode::OK
                || (status.is_client_error() && reply["error"]["code"].is_string()),
            "case {case}: {status} {reply} for {body}"
        );
        let query = prop::collection::vec((any::<String>(), any::<String>()), 0..4)
            .new_tree(&mut runner)
            .expect("generates")
            .current()
            .into_iter()
            .map(|(k, v)| format!("{}={}", encode(&k), encode(&v)))
            .collect::<Vec<_>>()
            .join("&");
        let (status, reply) = device.pull("fuzz", &query).await;
        assert!(
            status.is_client_error() || status == StatusCode::OK,
            "case {case}: {status} {reply} for ?{query}"
        );
    }
    let health = common::read(
        mana_sync_testkit::http_client()
            .get(h.server.at("/health"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(health.0, StatusCode::OK, "still healthy: {}", health.1);
    assert!(
        accepted >= 20,
        "too few cases reached the store ({accepted}); the generator is too wild"
    );
}

on_both_databases!(
    malformed_bodies_are_400_with_the_path_of_the_problem,
    invalid_values_are_400_and_store_nothing,
    nul_inside_json_values_is_data_not_an_error,
    bodies_over_10_mib_are_413,
    unknown_routes_methods_and_headers_get_json_errors,
    no_input_makes_the_server_fail,
    values_nested_deeper_than_64_levels_are_refused_with_their_path,
);

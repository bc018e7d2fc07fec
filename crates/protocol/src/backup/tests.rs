use super::*;

const CURRENT: &str = r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","schemaVersion":2,"appId":"todo","table":"tasks","id":"t1","op":"update","fields":{"title":{"value":"Buy milk","updatedAt":"2026-11-25T10:00:00.000Z","at":"2026-11-25T10:00:00.000Z"}},"actor":{"kind":"ai"},"clientId":"phone","createdAt":"2026-11-25T10:00:01.123456Z"}"#;

#[test]
fn reads_what_export_writes() {
    let imported = parse_line(1, CURRENT).expect("valid");
    assert_eq!(
        imported.event_id.to_string(),
        "0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d"
    );
    assert_eq!(
        (imported.app_id.as_str(), imported.client_id.as_str()),
        ("todo", "phone")
    );
    assert_eq!(imported.change.schema_version, 2);
    assert_eq!(
        imported.change.actor.as_ref().map(|a| a.get()),
        Some(r#"{"kind":"ai"}"#)
    );
    let fields = imported.change.fields.expect("fields");
    assert_eq!(fields["title"].at.as_str(), "2026-11-25T10:00:00.000Z");
}

#[test]
fn a_line_without_a_version_is_version_1_and_is_carried_forward() {
    let legacy = r#"{"eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","appId":"todo","table":"tasks","id":"t1","op":"update","fields":{"done":{"value":true,"updatedAt":"2026-01-01T00:00:00Z"}},"clientId":"old-web","createdAt":"2026-01-01T00:00:01Z"}"#;
    let imported = parse_line(7, legacy).expect("valid");
    assert_eq!(imported.change.schema_version, 1);
    assert_eq!(
        imported.change.fields.expect("fields")["done"].at.as_str(),
        "2026-01-01T00:00:00Z"
    );
}

#[test]
fn refusals_name_the_line() {
    let too_new = CURRENT.replace(r#""schemaVersion":2"#, r#""schemaVersion":3"#);
    let error = parse_line(12, &too_new).expect_err("too new");
    assert!(error.is_too_new());
    let message = error.to_string();
    assert!(message.starts_with("line 12: schemaVersion 3"), "{message}");
    assert!(message.contains("maximum 2"), "{message}");

    for (broken, needle) in [
        ("not json".to_owned(), "not a JSON object"),
        ("[1,2]".to_owned(), "not a JSON object"),
        (
            CURRENT.replace(r#""eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","#, ""),
            "eventId",
        ),
        (CURRENT.replace(r#""clientId":"phone","#, ""), "clientId"),
        (
            CURRENT.replace(r#""op":"update""#, r#""op":"upsert""#),
            "op",
        ),
        (
            CURRENT.replace(r#""schemaVersion":2"#, r#""schemaVersion":"two""#),
            "schemaVersion",
        ),
        (
            CURRENT.replace(r#""appId":"todo""#, r#""appId":"""#),
            "appId",
        ),
        (
            CURRENT.replace(
                r#""createdAt":"2026-11-25T10:00:01.123456Z""#,
                r#""createdAt":"yesterday""#,
            ),
            "createdAt",
        ),
    ] {
        let error = parse_line(3, &broken).expect_err(needle);
        let message = error.to_string();
        assert!(message.starts_with("line 3: "), "{message}");
        assert!(
            message.contains(needle),
            "`{message}` should mention {needle}"
        );
    }
}

/// A line as the seed's Go server exports it; `rest` is the op and its keys.
fn seed_line(version: u32, rest: &str) -> String {
    format!(
        r#"{{"eventId":"0192a0f5-7d3c-7a1b-9c2d-3e4f5a6b7c8d","schemaVersion":{version},"appId":"todo","table":"tasks","id":"t1",{rest},"clientId":"web-1","createdAt":"2026-01-01T00:00:09.5Z"}}"#
    )
}

fn fields_of(change: &Change) -> Vec<(String, String, String)> {
    change
        .fields
        .as_ref()
        .expect("fields")
        .iter()
        .map(|(name, field)| {
            (
                name.clone(),
                field.value.get().to_owned(),
                field.at.as_str().to_owned(),
            )
        })
        .collect()
}

fn triple(name: &str, value: &str, at: &str) -> (String, String, String) {
    (name.to_owned(), value.to_owned(), at.to_owned())
}

#[test]
fn a_seed_insert_keeps_its_data_and_its_field_timestamps_become_fields() {
    let plain = parse_line(
        1,
        &seed_line(1, r#""op":"insert","data":{"title":"Buy milk","n":1.50}"#),
    )
    .expect("valid");
    assert_eq!(
        plain.change.data.as_ref().map(|d| d.get()),
        Some(r#"{"title":"Buy milk","n":1.50}"#)
    );
    assert!(plain.change.fields.is_none());

    let stamped = parse_line(
        2,
        &seed_line(
            1,
            r#""op":"insert","data":{"title":"Buy milk","n":1.50},"fieldTimestamps":{"title":"2026-01-01T00:00:01.000Z"}"#,
        ),
    )
    .expect("valid");
    assert_eq!(
        stamped.change.data.as_ref().map(|d| d.get()),
        Some(r#"{"title":"Buy milk","n":1.50}"#)
    );
    assert_eq!(
        fields_of(&stamped.change),
        [triple("title", r#""Buy milk""#, "2026-01-01T00:00:01.000Z")]
    );

    let stray = parse_line(
        3,
        &seed_line(
            1,
            r#""op":"insert","data":{"title":"x"},"fieldTimestamps":{"gone":"2026-01-01T00:00:01.000Z"}"#,
        ),
    )
    .expect("valid");
    assert!(stray.change.fields.is_none(), "no empty `fields`");
}

#[test]
fn a_seed_update_becomes_fields_with_each_fields_own_timestamp() {
    for version in [1, 2] {
        let imported = parse_line(
            4,
            &seed_line(
                version,
                r#""op":"update","data":{"title":"Oat milk","n":1.50,"tags":{"b":1, "a":2}},"fieldTimestamps":{"title":"2026-01-01T00:00:02.000Z","n":"2026-01-01T00:00:03+02:00","tags":"2026-01-01T00:00:04.123456789Z"},"actor":{"kind":"ai"}"#,
            ),
        )
        .expect("valid");
        let change = &imported.change;
        assert_eq!(change.op, Op::Update);
        assert_eq!(change.schema_version, version);
        assert!(change.data.is_none(), "the values moved into `fields`");
        assert_eq!(
            fields_of(change),
            [
                triple("n", "1.50", "2026-01-01T00:00:03+02:00"),
                triple(
                    "tags",
                    r#"{"b":1, "a":2}"#,
                    "2026-01-01T00:00:04.123456789Z"
                ),
                triple("title", r#""Oat milk""#, "2026-01-01T00:00:02.000Z"),
            ]
        );
        assert_eq!(
            change.actor.as_ref().map(|a| a.get()),
            Some(r#"{"kind":"ai"}"#)
        );
    }
}

#[test]
fn a_seed_update_field_without_a_timestamp_takes_the_lines_created_at() {
    let missing_one = parse_line(
        5,
        &seed_line(
            1,
            r#""op":"update","data":{"title":"x","done":true},"fieldTimestamps":{"title":"2026-01-01T00:00:02.000Z"}"#,
        ),
    )
    .expect("valid");
    assert_eq!(
        fields_of(&missing_one.change),
        [
            triple("done", "true", "2026-01-01T00:00:09.5Z"),
            triple("title", r#""x""#, "2026-01-01T00:00:02.000Z"),
        ]
    );
    let none =
        parse_line(6, &seed_line(1, r#""op":"update","data":{"done":false}"#)).expect("valid");
    assert_eq!(
        fields_of(&none.change),
        [triple("done", "false", "2026-01-01T00:00:09.5Z")]
    );
}

#[test]
fn a_seed_delete_takes_data_deleted_at_else_created_at() {
    let with_data = parse_line(
        7,
        &seed_line(
            1,
            r#""op":"delete","data":{"deletedAt":"2026-01-01T00:00:08.000Z"}"#,
        ),
    )
    .expect("valid");
    assert_eq!(
        with_data.change.deleted_at.as_ref().map(Timestamp::as_str),
        Some("2026-01-01T00:00:08.000Z")
    );
    assert!(with_data.change.data.is_none(), "data held only deletedAt");

    for rest in [r#""op":"delete""#, r#""op":"delete","data":null"#] {
        let bare = parse_line(8, &seed_line(1, rest)).expect("valid");
        assert_eq!(
            bare.change.deleted_at.as_ref().map(Timestamp::as_str),
            Some("2026-01-01T00:00:09.5Z"),
            "{rest}"
        );
        assert!(bare.change.data.is_none());
    }
}

#[test]
fn our_own_lines_are_not_reshaped() {
    for line in [
        CURRENT.to_owned(),
        seed_line(
            2,
            r#""op":"delete","deletedAt":"2026-01-01T00:00:01Z","data":{"deletedAt":"2026-01-01T00:00:05Z","why":"dup"}"#,
        ),
        seed_line(
            2,
            r#""op":"insert","data":{"a":1},"fields":{"a":{"value":2,"at":"2026-01-01T00:00:01Z"}}"#,
        ),
    ] {
        let mut raw: RawChange = serde_json::from_str(&line).expect("object");
        let before = serde_json::to_string(&raw).expect("serialises");
        assert!(!seed_line_to_ours(&mut raw).expect("fine"), "{line}");
        assert_eq!(serde_json::to_string(&raw).expect("serialises"), before);
    }
    let delete = parse_line(
        1,
        &seed_line(2, r#""op":"delete","deletedAt":"2026-01-01T00:00:01Z","data":{"deletedAt":"2026-01-01T00:00:05Z","why":"dup"}"#),
    )
    .expect("valid");
    assert_eq!(
        delete.change.deleted_at.as_ref().map(Timestamp::as_str),
        Some("2026-01-01T00:00:01Z")
    );
    assert!(delete.change.data.is_some());
}

#[test]
fn malformed_seed_lines_name_the_line_and_the_field() {
    for (rest, needles) in [
        (
            r#""op":"update","data":{"t":1},"fieldTimestamps":["2026-01-01T00:00:00Z"]"#,
            vec!["`fieldTimestamps`", "object"],
        ),
        (
            r#""op":"insert","data":{"t":1},"fieldTimestamps":"2026-01-01T00:00:00Z""#,
            vec!["`fieldTimestamps`", "object"],
        ),
        (
            r#""op":"update","data":{"t":1},"fieldTimestamps":{"t":"yesterday"}"#,
            vec!["`fieldTimestamps.t`", "RFC 3339", "yesterday"],
        ),
        (
            r#""op":"update","data":{"t":1},"fieldTimestamps":{"t":12}"#,
            vec!["`fieldTimestamps.t`", "RFC 3339"],
        ),
        (
            r#""op":"update","data":[1,2],"fieldTimestamps":{"t":"2026-01-01T00:00:00Z"}"#,
            vec!["`data`", "object"],
        ),
        (r#""op":"update","data":"x""#, vec!["`data`", "object"]),
        (r#""op":"delete","data":[1]"#, vec!["`data`", "object"]),
        (
            r#""op":"delete","data":{"deletedAt":"soon"}"#,
            vec!["`data.deletedAt`", "RFC 3339", "soon"],
        ),
        (
            r#""op":"update","data":{"t":1},"fields":{"t":{"value":1,"at":"2026-01-01T00:00:00Z"}},"fieldTimestamps":{"t":"2026-01-01T00:00:00Z"}"#,
            vec!["`fieldTimestamps`", "`fields`"],
        ),
    ] {
        let error = parse_line(9, &seed_line(1, rest)).expect_err(rest);
        let message = error.to_string();
        assert!(message.starts_with("line 9: "), "{message}");
        for needle in needles {
            assert!(
                message.contains(needle),
                "`{message}` should mention {needle}"
            );
        }
    }
    // An update needing `createdAt` for a field without its own timestamp.
    let no_created_at = seed_line(1, r#""op":"update","data":{"t":1}"#)
        .replace(r#","createdAt":"2026-01-01T00:00:09.5Z""#, "");
    let message = parse_line(10, &no_created_at)
        .expect_err("no createdAt")
        .to_string();
    assert!(
        message.starts_with("line 10: ") && message.contains("createdAt"),
        "{message}"
    );
}

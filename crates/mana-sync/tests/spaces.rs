//! Shared spaces against the real binary, on SQLite and Postgres: the
//! `/spaces` API (create, list, members and roles, leaving), who may do what.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

mod common;

use common::{Device, Harness, assert_error, read};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(device: &Device, name: &str) -> String {
    let (status, body) = device
        .call(Method::POST, "/spaces", Some(json!({"name": name})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (body["name"].as_str(), body["role"].as_str()),
        (Some(name), Some("owner"))
    );
    body["id"].as_str().expect("an id").to_owned()
}

async fn set(device: &Device, space: &str, member: &str, role: &str) -> (StatusCode, Value) {
    device
        .call(
            Method::PUT,
            &format!("/spaces/{space}/members/{member}"),
            Some(json!({"role": role})),
        )
        .await
}

async fn remove(device: &Device, space: &str, member: &str) -> (StatusCode, Value) {
    device
        .call(
            Method::DELETE,
            &format!("/spaces/{space}/members/{member}"),
            None,
        )
        .await
}

async fn owners_share_a_space_and_manage_its_members(h: Harness) {
    let (ann, bob, eve) = (
        h.device("ann", "a"),
        h.device("bob", "b"),
        h.device("eve", "e"),
    );
    let space = create(&ann, "Groceries").await;
    assert_eq!(set(&ann, &space, "bob", "editor").await.0, StatusCode::OK);
    let (status, list) = bob.call(Method::GET, "/spaces", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        list,
        json!({"spaces": [{"id": space, "name": "Groceries", "role": "editor"}]})
    );
    let (status, detail) = bob
        .call(Method::GET, &format!("/spaces/{space}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        detail["members"],
        json!([{"userId": "ann", "role": "owner"}, {"userId": "bob", "role": "editor"}])
    );
    // Strangers see nothing; editors cannot manage; the last owner stays.
    assert_eq!(
        eve.call(Method::GET, "/spaces", None).await.1,
        json!({"spaces": []})
    );
    assert_error(
        &eve.call(Method::GET, &format!("/spaces/{space}"), None)
            .await,
        StatusCode::NOT_FOUND,
        "space_not_found",
        &space,
    );
    assert_error(
        &set(&bob, &space, "eve", "viewer").await,
        StatusCode::FORBIDDEN,
        "forbidden",
        "only an owner",
    );
    assert_error(
        &remove(&ann, &space, "ann").await,
        StatusCode::CONFLICT,
        "last_owner",
        "needs an owner",
    );
    assert_error(
        &set(&ann, &space, "bob", "admin").await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "owner, editor or viewer",
    );
    // Roles change; members leave; owners remove.
    assert_eq!(set(&ann, &space, "eve", "viewer").await.0, StatusCode::OK);
    assert_eq!(set(&ann, &space, "eve", "editor").await.1["role"], "editor");
    assert_eq!(remove(&eve, &space, "eve").await.0, StatusCode::NO_CONTENT);
    assert_eq!(remove(&ann, &space, "bob").await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        bob.call(Method::GET, "/spaces", None).await.1,
        json!({"spaces": []})
    );
    assert_error(
        &remove(&ann, &space, "bob").await,
        StatusCode::NOT_FOUND,
        "member_not_found",
        "bob",
    );
}

async fn the_spaces_api_needs_a_token_and_valid_input(h: Harness) {
    let ann = h.device("ann", "a");
    let anonymous = h.server.url.clone();
    let (status, _) = read(
        mana_sync_testkit::http_client()
            .get(format!("{anonymous}/spaces"))
            .send()
            .await
            .expect("sent"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for body in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "a\u{0}b"}),
        json!({"name": "x", "extra": 1}),
    ] {
        let (status, reply) = ann.call(Method::POST, "/spaces", Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {reply}");
    }
    assert_error(
        &ann.call(Method::GET, "/spaces/a~b", None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "spaceId",
    );
}

on_both_databases!(
    owners_share_a_space_and_manage_its_members,
    the_spaces_api_needs_a_token_and_valid_input,
);

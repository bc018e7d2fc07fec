//! A device that follows shared spaces, under random membership changes and
//! edits, never loses a change of a space it belongs to and never receives
//! one twice while it holds the space: it ends with exactly the space's log
//! when it is a member and with nothing of it when it is not.
//!
//! The device is the one the clients implement: it keeps the opaque cursor,
//! pulls page by page (small pages, so downloads span several requests),
//! drops a space's records when a reply lists it in `removedSpaces`, and, when
//! a push is refused because it may no longer write a space, pushes its other
//! changes without that space's.

#![allow(clippy::expect_used, clippy::unwrap_used)] // tests stop loudly on broken setups

use std::collections::BTreeSet;
use std::sync::Arc;

use mana_sync_protocol::messages::{PushRequest, PushResponse};
use mana_sync_protocol::{Since, SpaceId, UserId, WireChange};
use mana_sync_server::follow::CursorDialect;
use mana_sync_server::metrics::Metrics;
use mana_sync_server::service::{PullParams, ServiceError, SyncService};
use mana_sync_store::{ChangeQuery, ExpiredCursor, MemberChange, Role, Store, StoreError};
use proptest::prelude::*;
use uuid::Uuid;

const APP: &str = "todo";
const COLLECTION: &str = "items";
const DIALECT: CursorDialect = CursorDialect {
    told_expiry: true,
    follows_spaces: true,
};

#[derive(Debug, Clone)]
enum Step {
    /// The owner edits a record of the space.
    OwnerEdits(u8),
    /// The member's device edits a record of the space and one of its own.
    MemberEdits(u8),
    /// The owner adds the member, or changes their role.
    OwnerSetsMember(Role),
    /// The owner removes the member.
    OwnerRemovesMember,
    /// The member leaves.
    MemberLeaves,
    /// The member's device pulls until nothing more is waiting.
    MemberSyncs,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0u8..4).prop_map(Step::OwnerEdits),
        3 => (0u8..4).prop_map(Step::MemberEdits),
        1 => prop_oneof![Just(Role::Editor), Just(Role::Viewer)].prop_map(Step::OwnerSetsMember),
        1 => Just(Step::OwnerRemovesMember),
        1 => Just(Step::MemberLeaves),
        3 => Just(Step::MemberSyncs),
    ]
}

/// What the member's device holds of the space.
#[derive(Default)]
struct Device {
    cursor: String,
    /// Changes of the space the device holds (its own and received ones),
    /// since it last dropped the space.
    held: BTreeSet<Uuid>,
    /// Changes of the space received from the server since it last dropped
    /// the space; a second arrival is a repeat.
    received: BTreeSet<Uuid>,
    /// Received or own changes of the user's own log.
    own_log: BTreeSet<Uuid>,
}

impl Device {
    fn apply(&mut self, reply: PushResponse, space: &SpaceId) {
        if reply.removed_spaces.iter().any(|s| s == space.as_str()) {
            self.held.clear();
            self.received.clear();
        }
        for change in reply.server_changes {
            match change.space_id.as_deref() {
                Some(id) => {
                    assert_eq!(id, space.as_str());
                    assert!(
                        self.received.insert(change.event_id),
                        "change {} received twice while the device held the space",
                        change.event_id
                    );
                    self.held.insert(change.event_id);
                }
                None => {
                    self.own_log.insert(change.event_id);
                }
            }
        }
        self.cursor = reply.synced_until;
    }
}

struct World {
    service: SyncService,
    store: Arc<dyn Store>,
    space: SpaceId,
    owner: UserId,
    member: UserId,
    device: Device,
    owner_cursor: String,
    edits: u32,
}

fn change(id: &str, space: Option<&SpaceId>, value: u32) -> WireChange {
    let space = space
        .map(|s| format!(r#","spaceId":"{}""#, s.as_str()))
        .unwrap_or_default();
    serde_json::from_str(&format!(
        r#"{{"table":"{COLLECTION}","id":"{id}","op":"update"{space},
            "fields":{{"title":{{"value":"v{value}","updatedAt":"2026-11-30T00:00:{:02}.{:03}Z"}}}}}}"#,
        value / 1000 % 60,
        value % 1000
    ))
    .expect("parses")
}

impl World {
    async fn new(store: Arc<dyn Store>) -> Self {
        let owner = UserId::new("ann").unwrap();
        let member = UserId::new("bob").unwrap();
        let space = store
            .create_space(&owner, "Groceries")
            .await
            .unwrap()
            .space_id;
        let service = SyncService::new(store.clone(), Arc::new(Metrics::new().unwrap()));
        Self {
            service,
            store,
            space,
            owner,
            member,
            device: Device {
                cursor: "1970-01-01T00:00:00.000Z".into(),
                ..Device::default()
            },
            owner_cursor: "1970-01-01T00:00:00.000Z".into(),
            edits: 0,
        }
    }

    fn next_value(&mut self) -> u32 {
        self.edits += 1;
        self.edits
    }

    async fn push(
        &self,
        user: &UserId,
        device: &str,
        since: &str,
        changes: Vec<WireChange>,
    ) -> Result<PushResponse, ServiceError> {
        self.service
            .push(
                user,
                APP,
                Some(device.into()),
                DIALECT,
                PushRequest {
                    client_id: None,
                    since: Some(since.into()),
                    changes,
                    schema_version: None,
                    changeset_id: Some(Uuid::new_v4().to_string()),
                },
            )
            .await
    }

    /// Every change in the space's log, read by its owner.
    async fn space_log(&self) -> BTreeSet<Uuid> {
        let page = self
            .store
            .changes_after(
                &self.owner,
                &ChangeQuery {
                    space: Some(&self.space),
                    app_id: APP,
                    collection: None,
                    since: Since::START,
                    exclude_client: None,
                    limit: 1000,
                    expired: ExpiredCursor::Serve,
                },
            )
            .await
            .unwrap();
        assert!(!page.has_more);
        page.changes.into_iter().map(|c| c.event_id).collect()
    }

    async fn is_member(&self) -> bool {
        self.store
            .spaces_of(&self.member)
            .await
            .unwrap()
            .iter()
            .any(|m| m.space_id == self.space)
    }

    async fn run(&mut self, step: Step) {
        match step {
            Step::OwnerEdits(record) => {
                let value = self.next_value();
                let edit = change(&format!("r{record}"), Some(&self.space), value);
                let since = self.owner_cursor.clone();
                let reply = self
                    .push(&self.owner, "anns-phone", &since, vec![edit])
                    .await;
                self.owner_cursor = reply.expect("the owner writes her space").synced_until;
            }
            Step::MemberEdits(record) => {
                let value = self.next_value();
                let shared = change(&format!("r{record}"), Some(&self.space), value);
                let own = change(&format!("mine{record}"), None, value);
                let before = self.space_log().await;
                let since = self.device.cursor.clone();
                let both = vec![shared, own.clone()];
                match self.push(&self.member, "bobs-phone", &since, both).await {
                    Ok(reply) => {
                        let stored: Vec<Uuid> = self
                            .space_log()
                            .await
                            .difference(&before)
                            .copied()
                            .collect();
                        assert_eq!(stored.len(), 1, "the space's change is stored once");
                        self.device.held.extend(stored);
                        self.device.apply(reply, &self.space);
                    }
                    Err(ServiceError::Store(StoreError::SpaceForbidden { space, write: true })) => {
                        assert_eq!(space, self.space);
                        assert_eq!(self.space_log().await, before, "nothing stored");
                        // The client sends its other changes without the
                        // space's (and drops the refused edit).
                        let reply = self
                            .push(&self.member, "bobs-phone", &since, vec![own])
                            .await;
                        self.device
                            .apply(reply.expect("own log is writable"), &self.space);
                    }
                    Err(other) => panic!("unexpected push error: {other:?}"),
                }
            }
            Step::OwnerSetsMember(role) => {
                let set = MemberChange::Set {
                    user: self.member.clone(),
                    role,
                };
                self.store
                    .change_membership(&self.owner, &self.space, &set)
                    .await
                    .unwrap();
            }
            Step::OwnerRemovesMember | Step::MemberLeaves => {
                let actor = match step {
                    Step::MemberLeaves => self.member.clone(),
                    _ => self.owner.clone(),
                };
                if self.is_member().await {
                    let remove = MemberChange::Remove {
                        user: self.member.clone(),
                    };
                    self.store
                        .change_membership(&actor, &self.space, &remove)
                        .await
                        .unwrap();
                }
            }
            Step::MemberSyncs => self.sync().await,
        }
    }

    async fn sync(&mut self) {
        for _ in 0..1000 {
            let reply = self
                .service
                .pull(
                    &self.member,
                    APP,
                    PullParams {
                        collection: Some(COLLECTION.into()),
                        since: Some(self.device.cursor.clone()),
                        limit: Some("2".into()),
                        client_id: Some("bobs-phone".into()),
                        dialect: DIALECT,
                    },
                )
                .await
                .expect("pulls");
            let more = reply.has_more;
            self.device.apply(reply, &self.space);
            if !more {
                return;
            }
        }
        panic!("the pull never finished");
    }

    /// After a full sync the device holds exactly the space's log when the
    /// user belongs to it, and nothing of it otherwise.
    async fn check(&mut self) {
        self.sync().await;
        if self.is_member().await {
            assert_eq!(self.device.held, self.space_log().await, "nothing lost");
        } else {
            assert!(self.device.held.is_empty(), "a left space is dropped");
        }
    }
}

async fn run_steps(store: Arc<dyn Store>, steps: Vec<Step>) {
    let mut world = World::new(store).await;
    for step in steps {
        world.run(step).await;
    }
    world.check().await;
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn on_sqlite_no_change_is_lost_or_repeated_across_joins_and_leaves(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("sync.db").display());
            let store = mana_sync_store::open(&url, &Default::default()).await.unwrap();
            run_steps(store, steps).await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn on_postgres_no_change_is_lost_or_repeated_across_joins_and_leaves(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        runtime().block_on(async {
            let Some(db) = mana_sync_testkit::pg::TestDatabase::create().await else {
                return;
            };
            let store = mana_sync_store::open(&db.url(), &Default::default()).await.unwrap();
            run_steps(store, steps).await;
        });
    }
}

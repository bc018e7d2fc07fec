-- The event-id index keyed by event id first. Event ids are UUIDv7, which
-- sort by the time they were made, so each push adds its entries at the
-- end of the index, on a page that every push of a commit group shares;
-- keyed by user first, each push dirtied a page of its own user's part of
-- the index, one of the handful of pages a small push writes to the log
-- (and the checkpointer copies again). It is still unique per user and
-- event: what makes `POST /backup/import` skip a change it already holds.
DROP INDEX mana_changes_event_id;
CREATE UNIQUE INDEX mana_changes_event_user ON mana_changes (event_id, user_id);

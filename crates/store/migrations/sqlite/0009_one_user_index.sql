-- One index keyed by user first: the position index (user_id, seq). Users'
-- small pushes arrive interleaved, so each index keyed by user first costs
-- a push a leaf page of its own in every commit group (and the checkpointer
-- copies it again); the collection and record indexes were two of the five
-- pages a small push wrote. A read of one collection now filters the
-- position range `seq > cursor` on table_name, as reads already did on
-- app_id and client_id, and compaction (sqlite/compact.rs) sweeps the
-- position index and finds a record's earlier changes by the positions it
-- remembers from the sweep, not by an index of records.
DROP INDEX mana_changes_collection;
DROP INDEX mana_changes_record;

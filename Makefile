# The commands the README documents; CI (.ci/run) runs `make lint` and `make test`.
.PHONY: serve test lint bench bench-live bench-client bench-backup

# The server on the embedded default: SQLite in ./mana-sync.db, dev-mode auth.
serve:
	cargo run --release --locked -p mana-sync -- serve

# Every test. Postgres tests use 127.0.0.1:5432 (user postgres); without it
# they are skipped with a message, unless CI=true, where that is a failure.
test:
	cargo test --workspace --locked

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings

# Throughput against the raw database; prints a Markdown table.
bench:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench

# Push→stream latency and one push fanned out to 10,000 idle streams.
bench-live:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench latency
	./target/release/mana-sync-bench fanout

# The client's local store: applying 100,000 incoming changes and local write
# latency, against raw rusqlite doing the same inserts in the same run.
bench-client:
	cargo bench --locked -p mana-sync-client --bench local_store

# Backup export and import of 200,000 changes: rate and the server's peak memory.
bench-backup:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench backup

# The commands the README documents; CI (.ci/run) runs `make lint` and `make test`.
.PHONY: serve test lint web web-test bench bench-live bench-client bench-backup bench-compaction bench-load bench-load-database-bound

# The server on the embedded default: SQLite in ./mana-sync.db, dev-mode auth,
# serving the Todo web app at http://localhost:3050/.
serve: web
	cargo run --release --locked -p mana-sync -- serve

# Every test. Postgres tests use 127.0.0.1:5432 (user postgres); without it
# they are skipped with a message, unless CI=true, where that is a failure.
# Then the web package's unit tests and the end-to-end tests in Chromium,
# which include the packed package installed and syncing in a project in a
# temporary directory (web/e2e/package.spec.ts; npm install --prefer-offline).
test: web
	cargo test --workspace --locked
	cd web && npm test && npm run test:e2e

lint: web/node_modules/.package-lock.json
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cd web && npm run check

# The web client (web/local-store) and the Todo app, built into web/todo/dist,
# which the server embeds when it is next compiled (or serves from the
# directory with WEB_DIR=web/todo/dist): the app at /, its compat mode (the
# seed package's API, @mana-sync/local-store/compat) at /compat/.
web: web/node_modules/.package-lock.json
	cd web && npm run build

# Node dependencies, exactly as locked; again only when the lockfile changes.
web/node_modules/.package-lock.json: web/package-lock.json web/package.json web/local-store/package.json web/todo/package.json web/e2e/package.json
	cd web && npm ci --no-audit --no-fund

# Vitest unit tests of the package, then the end-to-end tests: the real
# server (target/debug) serving the built app, driven in Debian's Chromium.
# (`make test` runs the same after `cargo test`, which built both binaries.)
web-test: web
	cargo build --locked -p mana-sync -p mana-todo
	cd web && npm test && npm run test:e2e

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

# Backup export and import of 200,000 changes: rate and the server's peak
# memory; another user's push latency during a 200 MiB import.
bench-backup:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench backup
	./target/release/mana-sync-bench contention

# A long-lived account (10,000 records × 100 updates): a new device's first
# sync before and after compaction, compaction rate, push latency meanwhile.
bench-compaction:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench compaction

# Many users making small pushes (one change each, unique changesetIds) with a
# live stream on every device and a socket per user, against the raw database
# doing the same durable single-row transactions at the same concurrency.
# Checks that every change reached every other device exactly once.
bench-load:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench load --users 200 --devices 2 --concurrency 64 --duration 20s

# The same on Postgres, with every postgres process held to half a core (a
# cgroup CPU quota; needs root) for both sides: the database bounds the rate,
# as in production where many server instances share one database.
bench-load-database-bound:
	cargo build --release --locked -p mana-sync -p mana-sync-bench
	./target/release/mana-sync-bench load --backend postgres --database-cpus 0.5 --users 200 --devices 2 --concurrency 64 --duration 20s

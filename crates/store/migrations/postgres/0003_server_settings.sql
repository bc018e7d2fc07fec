-- Server-wide values shared by every instance on this database (the dev-mode
-- signing secret). Not user data, so not under row-level security.
CREATE TABLE mana_server_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

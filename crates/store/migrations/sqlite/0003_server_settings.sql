-- Server-wide values (the dev-mode signing secret).
CREATE TABLE mana_server_settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

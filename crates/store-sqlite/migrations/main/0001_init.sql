-- Coffer embedded store, main database (PATH): what a commit makes durable.
-- Timestamps are microseconds since the Unix epoch (UTC); JSON columns hold objects of strings.
-- Volumes and moves live in the projections database (PATH-projections).

CREATE TABLE ledgers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    bucket TEXT NOT NULL,
    metadata TEXT NOT NULL,
    features TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    next_tx_id INTEGER NOT NULL,
    next_log_id INTEGER NOT NULL,
    last_hash BLOB
);

CREATE TABLE accounts (
    ledger_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    metadata TEXT NOT NULL,
    first_usage INTEGER NOT NULL,
    insertion_date INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (ledger_id, address)
) WITHOUT ROWID;

CREATE TABLE transactions (
    ledger_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    reference TEXT,
    postings TEXT NOT NULL,
    metadata TEXT NOT NULL,
    post_commit_volumes TEXT NOT NULL,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    reverted_at INTEGER,
    PRIMARY KEY (ledger_id, id)
) WITHOUT ROWID;

CREATE UNIQUE INDEX transactions_reference ON transactions (ledger_id, reference)
    WHERE reference IS NOT NULL;
CREATE INDEX transactions_timestamp ON transactions (ledger_id, timestamp, id);

CREATE TABLE logs (
    ledger_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    type TEXT NOT NULL,
    date INTEGER NOT NULL,
    data TEXT NOT NULL,
    idempotency_key TEXT,
    idempotency_hash BLOB,
    hash BLOB NOT NULL,
    PRIMARY KEY (ledger_id, id)
) WITHOUT ROWID;

CREATE UNIQUE INDEX logs_idempotency_key ON logs (ledger_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

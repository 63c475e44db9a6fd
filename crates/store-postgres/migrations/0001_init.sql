-- Coffer PostgreSQL store, schema version 1.
-- Timestamps are microseconds since the Unix epoch (UTC). Addresses and assets sort by bytes
-- (COLLATE "C") so that keyset pagination and prefix ranges agree with the embedded store.

CREATE TABLE ledgers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    bucket TEXT NOT NULL,
    metadata JSONB NOT NULL,
    features JSONB NOT NULL,
    added_at BIGINT NOT NULL,
    next_tx_id BIGINT NOT NULL,
    next_log_id BIGINT NOT NULL,
    last_hash BYTEA
);

CREATE TABLE accounts (
    ledger_id BIGINT NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    metadata JSONB NOT NULL,
    first_usage BIGINT NOT NULL,
    insertion_date BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (ledger_id, address)
);

CREATE TABLE volumes (
    ledger_id BIGINT NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    asset TEXT COLLATE "C" NOT NULL,
    input NUMERIC NOT NULL,
    output NUMERIC NOT NULL,
    PRIMARY KEY (ledger_id, address, asset)
);

CREATE TABLE transactions (
    ledger_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    timestamp BIGINT NOT NULL,
    reference TEXT,
    postings TEXT NOT NULL,
    metadata JSONB NOT NULL,
    post_commit_volumes TEXT NOT NULL,
    inserted_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    reverted_at BIGINT,
    PRIMARY KEY (ledger_id, id)
);

CREATE UNIQUE INDEX transactions_reference ON transactions (ledger_id, reference)
    WHERE reference IS NOT NULL;
CREATE INDEX transactions_timestamp ON transactions (ledger_id, timestamp, id);

CREATE TABLE moves (
    ledger_id BIGINT NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    asset TEXT COLLATE "C" NOT NULL,
    tx_id BIGINT NOT NULL,
    timestamp BIGINT NOT NULL,
    input_delta NUMERIC NOT NULL,
    output_delta NUMERIC NOT NULL,
    roles INTEGER NOT NULL,
    PRIMARY KEY (ledger_id, address, tx_id, asset)
);

CREATE TABLE logs (
    ledger_id BIGINT NOT NULL,
    id BIGINT NOT NULL,
    type TEXT NOT NULL,
    date BIGINT NOT NULL,
    data TEXT NOT NULL,
    idempotency_key TEXT,
    idempotency_hash BYTEA,
    hash BYTEA NOT NULL,
    PRIMARY KEY (ledger_id, id)
);

CREATE UNIQUE INDEX logs_idempotency_key ON logs (ledger_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Transactions move here from the main database: like volumes and moves, they are derived from
-- the log (which stays in the main database) and written behind the commits by the flusher.
-- The rows themselves are copied by the main database's migration 0002 (in code).

CREATE TABLE transactions (
    ledger_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    reference TEXT,
    postings NOT NULL,
    metadata TEXT NOT NULL,
    post_commit_volumes NOT NULL,
    inserted_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    reverted_at INTEGER,
    PRIMARY KEY (ledger_id, id)
) WITHOUT ROWID;

CREATE UNIQUE INDEX transactions_reference ON transactions (ledger_id, reference)
    WHERE reference IS NOT NULL;
CREATE INDEX transactions_timestamp ON transactions (ledger_id, timestamp, id);

-- Per ledger, the last log whose effects on transactions, volumes and moves are stored here:
-- after a crash, the logs that follow it are replayed.
ALTER TABLE projection_state ADD COLUMN applied_log_id INTEGER NOT NULL DEFAULT 0;

-- Volumes and moves are written lazily (they can be rebuilt from the transactions): this
-- records, per ledger, the last transaction whose projections are stored.
CREATE TABLE projection_state (
    ledger_id INTEGER PRIMARY KEY,
    applied_tx_id INTEGER NOT NULL
);

INSERT INTO projection_state (ledger_id, applied_tx_id)
    SELECT ledger_id, MAX(id) FROM transactions GROUP BY ledger_id;

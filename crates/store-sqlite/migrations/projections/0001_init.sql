-- Coffer embedded store, projections database (PATH-projections): volumes and moves, derived
-- from the transactions of the main database and written behind them by a flusher thread.
-- Amounts are INTEGER when they fit 64 bits and decimal TEXT otherwise.

CREATE TABLE volumes (
    ledger_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    asset TEXT NOT NULL,
    input NOT NULL,
    output NOT NULL,
    PRIMARY KEY (ledger_id, address, asset)
) WITHOUT ROWID;

-- One row per (transaction, account, asset): what the transaction moved for the account.
CREATE TABLE moves (
    ledger_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    asset TEXT NOT NULL,
    tx_id INTEGER NOT NULL,
    timestamp INTEGER NOT NULL,
    input_delta NOT NULL,
    output_delta NOT NULL,
    roles INTEGER NOT NULL,
    PRIMARY KEY (ledger_id, address, tx_id, asset)
) WITHOUT ROWID;

-- Per ledger, the last transaction whose volumes and moves are stored here.
CREATE TABLE projection_state (
    ledger_id INTEGER PRIMARY KEY,
    applied_tx_id INTEGER NOT NULL
);

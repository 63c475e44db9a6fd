-- Metadata history, for point-in-time reads: per account or transaction and per date of a
-- change, the metadata it had right before that change. Metadata at a date D is the `before`
-- of the first change dated after D, or the current metadata if there is none. Written by the
-- writer in the commit of the change (transactions' current metadata follows in the
-- projections database; a read at a date before the change needs only this row).
CREATE TABLE account_metadata_changes (
    ledger_id INTEGER NOT NULL,
    address TEXT NOT NULL,
    date INTEGER NOT NULL,
    before TEXT NOT NULL,
    PRIMARY KEY (ledger_id, address, date)
) WITHOUT ROWID;

CREATE TABLE transaction_metadata_changes (
    ledger_id INTEGER NOT NULL,
    tx_id INTEGER NOT NULL,
    date INTEGER NOT NULL,
    before TEXT NOT NULL,
    PRIMARY KEY (ledger_id, tx_id, date)
) WITHOUT ROWID;

-- Whether a ledger has any change after a date (one probe per point-in-time read).
CREATE INDEX account_metadata_changes_date ON account_metadata_changes (ledger_id, date);
CREATE INDEX transaction_metadata_changes_date ON transaction_metadata_changes (ledger_id, date);

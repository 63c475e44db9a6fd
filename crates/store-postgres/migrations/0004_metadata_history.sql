-- Metadata history, for point-in-time reads: per account or transaction and per date of a
-- change, the metadata it had right before that change. Metadata at a date D is the `before`
-- of the first change dated after D, or the current metadata if there is none. Written in the
-- batch's statement, with the change itself.
CREATE TABLE account_metadata_changes (
    ledger_id BIGINT NOT NULL,
    address TEXT COLLATE "C" NOT NULL,
    date BIGINT NOT NULL,
    before JSONB NOT NULL,
    PRIMARY KEY (ledger_id, address, date)
);

CREATE TABLE transaction_metadata_changes (
    ledger_id BIGINT NOT NULL,
    tx_id BIGINT NOT NULL,
    date BIGINT NOT NULL,
    before JSONB NOT NULL,
    PRIMARY KEY (ledger_id, tx_id, date)
);

-- Whether a ledger has any change after a date (one probe per point-in-time read).
CREATE INDEX account_metadata_changes_date ON account_metadata_changes (ledger_id, date);
CREATE INDEX transaction_metadata_changes_date ON transaction_metadata_changes (ledger_id, date);

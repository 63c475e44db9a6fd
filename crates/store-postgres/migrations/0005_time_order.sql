-- How each ledger's transaction timestamps run in id order (coffer_ledger::store::TimeOrder):
-- the latest timestamp so far, and the last transaction dated before an earlier one. Kept from
-- this version on; a ledger with transactions from before has neither (NULL: not kept), and
-- its point-in-time lists scan as they did. A ledger with no transaction yet starts now.
ALTER TABLE ledgers ADD COLUMN latest_timestamp BIGINT;
ALTER TABLE ledgers ADD COLUMN backdated_until BIGINT;
UPDATE ledgers SET backdated_until = 0 WHERE next_tx_id = 1;

-- From this version on, the engine's NEW_TRANSACTION log entries keep their data as a BLOB in
-- the compact binary form (coffer_ledger::codec::compact::encode_new_transaction); other entries,
-- and every entry written before, keep the JSON text. Nothing to change in the schema: this
-- entry marks stores whose logs an older binary could not read, so that it refuses to open them.
SELECT 1

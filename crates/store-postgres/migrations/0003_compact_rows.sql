-- The engine's NEW_TRANSACTION log data, and the postings and post-commit volumes of
-- transactions, are stored in the compact binary form the embedded store uses
-- (`coffer_ledger::codec::compact`): about a fifth of the log data's JSON and half of the rest,
-- so a quarter less WAL per transfer (BENCHMARKS.md). Rows already written keep their JSON text,
-- as bytes; readers tell the two apart by the first byte. Binaries from before this migration
-- cannot write to the tables it changed: upgrade every process sharing the database together.
-- (From this version on, a binary refuses at start a database holding a migration it does not
-- know.)
ALTER TABLE logs ALTER COLUMN data TYPE BYTEA USING convert_to(data, 'UTF8');
ALTER TABLE transactions
    ALTER COLUMN postings TYPE BYTEA USING convert_to(postings, 'UTF8'),
    ALTER COLUMN post_commit_volumes TYPE BYTEA USING convert_to(post_commit_volumes, 'UTF8');

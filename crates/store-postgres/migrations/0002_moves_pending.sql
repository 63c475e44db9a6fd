-- Moves are written behind the batch's commit, by the process's flush connection (whose
-- synchronous commit is also what makes the batch durable). Until then the batch's transaction
-- ranges are listed here, under the writing process's owner id, so that if the process dies
-- in between, another one rebuilds those moves from the transactions.
CREATE TABLE moves_pending (
    owner INTEGER NOT NULL,
    ledger_id BIGINT NOT NULL,
    first_tx BIGINT NOT NULL,
    last_tx BIGINT NOT NULL,
    PRIMARY KEY (owner, ledger_id, first_tx)
);

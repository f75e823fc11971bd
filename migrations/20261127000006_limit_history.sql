-- GET /limits/history: every setting of the limit, newest first. Written
-- in the statement that changes the gate (so under its lock, in order);
-- `reason` says by whom: `api` (PUT /limits), `config` (MAX_CONCURRENCY
-- seeding an empty database), later the adaptive limit's signals.
CREATE TABLE limit_history (
    id                    BIGSERIAL   PRIMARY KEY,
    at                    TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    max_concurrency       INTEGER     NOT NULL,
    effective_concurrency INTEGER     NOT NULL,
    reason                TEXT        NOT NULL
);
-- What the database already holds is where the history starts.
INSERT INTO limit_history (max_concurrency, effective_concurrency, reason)
SELECT max_concurrency, max_concurrency, 'config' FROM gate;

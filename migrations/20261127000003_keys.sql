-- Flow control (contract, "Flow control (version 2)"): every job has a key
-- (a tenant, a model, ...: `default` unless the client names one) and a
-- priority (seconds it is ordered ahead of its submission time, within its
-- key). Additive: a replica of the previous version ignores both.
ALTER TABLE jobs ADD COLUMN key TEXT NOT NULL DEFAULT 'default'
    CHECK (key ~ '^[!-~]{1,128}$');
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0
    CHECK (priority BETWEEN -3600 AND 3600);
-- Live jobs per key, counted under the gate lock by every reservation.
CREATE INDEX jobs_live_key ON jobs (key) WHERE status IN ('dispatching', 'running');
-- GET /jobs?key= (newest first) and the queued jobs of a key.
CREATE INDEX jobs_key_created ON jobs (key, created_at DESC, id DESC);

-- A key's own settings. A key without a row has no cap of its own (the
-- gate's key_max_concurrency, if set, applies) and weight 1.
CREATE TABLE keys (
    key             TEXT PRIMARY KEY CHECK (key ~ '^[!-~]{1,128}$'),
    max_concurrency INTEGER CHECK (max_concurrency >= 0),
    weight          DOUBLE PRECISION NOT NULL DEFAULT 1 CHECK (weight BETWEEN 0.01 AND 100),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The cap of every key without one of its own (NULL: none).
ALTER TABLE gate ADD COLUMN key_max_concurrency INTEGER CHECK (key_max_concurrency >= 0);

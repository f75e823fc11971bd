-- sluicegate schema.
--
-- `jobs` is the source of truth for every job; SQS only carries job ids.
-- The number of live jobs (status dispatching or running) is never stored:
-- it is counted from `jobs` while holding the lock on the single `gate` row,
-- so it cannot drift (see ARCHITECTURE.md, "The concurrency invariant").

CREATE TYPE job_status AS ENUM (
    'queued', 'dispatching', 'running', 'succeeded', 'failed', 'timed_out', 'cancelled'
);

CREATE TABLE jobs (
    id                UUID PRIMARY KEY,
    status            job_status  NOT NULL DEFAULT 'queued',
    -- payload and result are kept as the exact JSON text the client or the
    -- downstream sent (type json, not jsonb), so large numbers, key order and
    -- unicode escapes come back verbatim.
    payload           JSON        NOT NULL,
    result            JSON,
    error             TEXT,
    attempts          INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts      INTEGER     NOT NULL CHECK (max_attempts >= 1),
    timeout_secs      INTEGER     NOT NULL CHECK (timeout_secs >= 1),
    idempotency_key   TEXT,
    request_hash      BYTEA,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at        TIMESTAMPTZ,
    finished_at       TIMESTAMPTZ,
    -- earliest time the job may be dispatched again (retry back-off, Retry-After)
    available_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- while dispatching or running: when the slot is reclaimed without news
    lease_expires_at  TIMESTAMPTZ
);

CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- GET /jobs (newest first, keyset pagination), with and without a status filter
CREATE INDEX jobs_created ON jobs (created_at DESC, id DESC);
CREATE INDEX jobs_status_created ON jobs (status, created_at DESC, id DESC);
-- the live set: small (at most the limit), counted on every slot reservation
-- and scanned for expired leases
CREATE INDEX jobs_live ON jobs (lease_expires_at) WHERE status IN ('dispatching', 'running');

CREATE TABLE job_events (
    id        BIGSERIAL PRIMARY KEY,
    job_id    UUID        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at        TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    from_status job_status,
    to_status job_status  NOT NULL,
    attempt   INTEGER     NOT NULL,
    reason    TEXT        NOT NULL
);
CREATE INDEX job_events_job ON job_events (job_id, id);

-- One row. Its lock serialises slot reservations; it holds the limit.
CREATE TABLE gate (
    id              BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    max_concurrency INTEGER NOT NULL CHECK (max_concurrency >= 0),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Per-status counts for GET /stats without scanning millions of finished
-- jobs. Writers only append deltas (no hot row to contend on); readers sum
-- them; `compact_job_counts()` folds them back into one row per status.
CREATE TABLE job_count_deltas (
    id     BIGSERIAL PRIMARY KEY,
    status job_status NOT NULL,
    delta  BIGINT     NOT NULL
);

CREATE FUNCTION jobs_count_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_count_deltas (status, delta) VALUES (NEW.status, 1);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_count_deltas (status, delta) VALUES (OLD.status, -1);
    ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO job_count_deltas (status, delta) VALUES (OLD.status, -1), (NEW.status, 1);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_count AFTER INSERT OR DELETE OR UPDATE OF status ON jobs
    FOR EACH ROW EXECUTE FUNCTION jobs_count_trigger();

CREATE FUNCTION compact_job_counts() RETURNS void LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM job_count_deltas RETURNING status, delta)
    INSERT INTO job_count_deltas (status, delta)
    SELECT status, sum(delta) FROM gone GROUP BY status HAVING sum(delta) <> 0;
$$;

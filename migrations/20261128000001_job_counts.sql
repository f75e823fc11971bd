-- Per-status counts for GET /stats, kept in place instead of appended.
--
-- job_count_deltas took two new rows per status change (six of a job's nine
-- inserted rows), and GET /stats summed every delta since the last
-- compaction: its cost followed throughput. Now each statement that changes
-- jobs adds its net change per status, once (a statement-level trigger over
-- its transition tables), to the row of its status in one of 64 slots: the
-- slot of its Postgres backend (`pg_backend_pid() % 64`), so writers on
-- different connections rarely touch the same row, and never two rows in
-- different orders (one upsert per statement, in status order). GET /stats
-- sums at most 64 rows per status, whatever the throughput or table size,
-- and nothing needs compacting.
--
-- Migrations are additive so that a replica of the previous version keeps
-- working during a rolling upgrade: it reads `job_count_deltas`, which
-- becomes a view of the new counts, and calls `compact_job_counts()`, which
-- becomes a no-op.

-- No job changes while the counts move over (the migration's transaction
-- holds this until it commits).
LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE job_counts (
    slot   SMALLINT   NOT NULL,
    status job_status NOT NULL,
    n      BIGINT     NOT NULL,
    PRIMARY KEY (slot, status)
);

INSERT INTO job_counts (slot, status, n)
SELECT 0, status, sum(delta) FROM job_count_deltas GROUP BY status;

DROP TRIGGER jobs_count ON jobs;
DROP FUNCTION jobs_count_trigger();
DROP FUNCTION compact_job_counts();
DROP TABLE job_count_deltas;

CREATE VIEW job_count_deltas AS SELECT status, n AS delta FROM job_counts;

CREATE FUNCTION compact_job_counts() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
END;
$$;

-- One function for the three statement triggers below; each branch reads
-- only the transition tables its trigger defines.
CREATE FUNCTION jobs_count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_counts AS c (slot, status, n)
        SELECT pg_backend_pid() % 64, status, count(*) FROM inserted GROUP BY status ORDER BY status
        ON CONFLICT (slot, status) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO job_counts AS c (slot, status, n)
        SELECT pg_backend_pid() % 64, status, -count(*) FROM deleted GROUP BY status ORDER BY status
        ON CONFLICT (slot, status) DO UPDATE SET n = c.n + EXCLUDED.n;
    ELSE
        INSERT INTO job_counts AS c (slot, status, n)
        SELECT pg_backend_pid() % 64, d.status, sum(d.n)
        FROM (SELECT o.status, -1 AS n FROM before_update o JOIN after_update a ON a.id = o.id
              WHERE a.status <> o.status
              UNION ALL
              SELECT a.status, 1 FROM before_update o JOIN after_update a ON a.id = o.id
              WHERE a.status <> o.status) d
        GROUP BY d.status HAVING sum(d.n) <> 0 ORDER BY d.status
        ON CONFLICT (slot, status) DO UPDATE SET n = c.n + EXCLUDED.n;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS deleted
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement();
CREATE TRIGGER jobs_count_update AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS before_update NEW TABLE AS after_update
    FOR EACH STATEMENT EXECUTE FUNCTION jobs_count_statement();

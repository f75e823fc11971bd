-- The status sets the lifecycle defines (src/lifecycle.rs: LIVE, TERMINAL),
-- named once for SQL: queries say `status = ANY(live_statuses())` instead of
-- spelling the set out. A test checks that both sides agree. IMMUTABLE SQL
-- functions are inlined when a query is planned, so the partial index
-- `jobs_live` still serves them.
CREATE FUNCTION live_statuses() RETURNS job_status[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '{dispatching,running}'::job_status[];

CREATE FUNCTION terminal_statuses() RETURNS job_status[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN '{succeeded,failed,timed_out,cancelled}'::job_status[];

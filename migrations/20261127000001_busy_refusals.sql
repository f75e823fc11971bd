-- `attempts` numbers the job's submissions: it is the fencing token of the
-- current one (callback token, Idempotency-Key `<job id>:<attempt>`), so every
-- submission has its own. A submission the downstream refused with 429/503
-- uses no attempt: it is counted here, and the attempts a job has used are
-- `attempts - busy_refusals` (what the API shows and `max_attempts` bounds).
-- Additive only: a replica of the previous version keeps working beside this
-- one (it reuses the attempt number on a busy answer, as before).
ALTER TABLE jobs ADD COLUMN busy_refusals INTEGER NOT NULL DEFAULT 0 CHECK (busy_refusals >= 0);

-- "Are any queued jobs due?" (asked by a drain whose ReceiveMessage came back
-- empty, before it gives up on the queue).
CREATE INDEX jobs_queued_due ON jobs (available_at) WHERE status = 'queued';

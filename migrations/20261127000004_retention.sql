-- Finished jobs are pruned after JOB_RETENTION_SECS (oldest first, in small
-- batches): this index finds them without scanning live work.
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- When the job's SQS message was last sent. A queued job whose message is
-- older than the queue's retention would be lost with it: the requeue
-- sweeper sends a fresh message for queued jobs not sent for a long time.
ALTER TABLE jobs ADD COLUMN enqueued_at TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX jobs_queued_enqueued ON jobs (enqueued_at) WHERE status = 'queued';

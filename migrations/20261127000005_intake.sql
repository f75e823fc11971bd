-- The intake window (ARCHITECTURE.md, "Choosing fairly: the intake window").
-- A drain takes received SQS messages of queued jobs into this table and
-- keeps the messages hidden; slots are then given out from the whole window
-- by fairness, not in the order SQS happened to deliver. A row means: this
-- job's message is in hand, and `receipt` can delete or release it until
-- `expires_at` (its visibility timeout). The job itself stays in `jobs`; a
-- row whose job is no longer queued is ignored, and removed when the drain
-- acts on the message or when it expires.
CREATE TABLE intake (
    job_id     UUID        PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    key        TEXT        NOT NULL,
    -- created_at - priority: the job's place in line within its key
    turn_at    TIMESTAMPTZ NOT NULL,
    receipt    TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    -- its job was reserved (dispatching): the row stays until the dispatch
    -- has acted on the message, and serves again if the lease sends the job
    -- back to the queue
    reserved   BOOLEAN     NOT NULL DEFAULT false
);
-- A key's next jobs, in turn (and the distinct keys, by a loose index scan);
-- reserved rows are not in it, so a reservation never walks past them.
CREATE INDEX intake_key_turn ON intake (key, turn_at, job_id) WHERE NOT reserved;
CREATE INDEX intake_expires ON intake (expires_at);

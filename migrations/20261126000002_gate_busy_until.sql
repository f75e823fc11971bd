-- When the downstream answers 429/503 with Retry-After, no replica submits
-- anything to it before this time.
ALTER TABLE gate ADD COLUMN busy_until TIMESTAMPTZ;

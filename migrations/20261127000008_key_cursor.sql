-- Where the next reservation starts looking at keys (ARCHITECTURE.md,
-- invariant 9). A reservation looks at most at `WINDOW_KEYS` keys of the
-- intake window, in key order from just after this cursor, wrapping
-- around; when there were more, the cursor moves to the last key it looked
-- at, so that every key's turn comes. '' (before every key) while all of
-- them fit.
ALTER TABLE gate ADD COLUMN key_cursor TEXT NOT NULL DEFAULT '';

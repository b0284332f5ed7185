-- Placeholder in the privacy branch only: migration numbers must have no gap, and 0008
-- belongs to another branch. Drop this file when merging (the real 0008 replaces it).
SELECT 1;

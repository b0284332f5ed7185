-- Placeholder in the privacy branch only: migration numbers must have no gap, and 0007
-- belongs to another branch. Drop this file when merging (the real 0007 replaces it).
SELECT 1;

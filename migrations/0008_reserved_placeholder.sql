-- Placeholder so 0010 loads in the console branch (the loader refuses gaps).
-- DROP THIS FILE AT MERGE: the real 0008 comes from another branch.
SELECT 1;

-- Placeholder that keeps the numbering contiguous in the hardening branch until the
-- migration given this number lands from another branch; drop this file at that merge.
SELECT 1;

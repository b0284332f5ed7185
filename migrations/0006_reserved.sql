-- Reserved for another branch's migration 0006 (this branch was given 0007). It only keeps the
-- numbering without a gap so this branch migrates on its own; drop this file at merge when the
-- real 0006 arrives.
SELECT 1;

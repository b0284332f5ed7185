-- Session updates that stay HOT again.
--
-- Ingest updates a session on every event, and `last_activity_at` moves each time. The
-- retention index of 0007 had `last_activity_at` as its key, so no session update could be
-- HOT: every event wrote a new entry into each of the sessions' five indexes (and the WAL
-- and vacuum work that goes with it). A session's `created_at` never changes and is never
-- later than its last activity, so an index on it finds the same old sessions: the
-- retention query bounds `created_at` by the cutoff as well and filters the last activity
-- on the rows it reads.
DROP INDEX sessions_retention_idx;
CREATE INDEX sessions_retention_idx ON sessions (created_at)
    WHERE anonymized_at IS NULL AND NOT ('analytics' = ANY (consent_scopes));

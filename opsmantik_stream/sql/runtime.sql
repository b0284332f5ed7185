-- Runtime state kept across restarts (routing table, pool sizes).

-- name: get_state
SELECT value FROM runtime_state WHERE key = $1;

-- name: put_state
INSERT INTO runtime_state (key, value) VALUES ($1, $2)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now();

-- name: ensure_month_partitions
SELECT ensure_month_partitions($1::date);

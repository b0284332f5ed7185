-- Tenancy queries: sites, origins, plans, secrets, users, tokens, members, audit.

-- name: insert_site
INSERT INTO sites (public_id, name, domain, currency, timezone)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, public_id, name, domain, currency, timezone, created_at;

-- name: insert_plan
INSERT INTO site_plans (site_id, monthly_limit, soft_limit_enabled)
VALUES ($1, $2, $3)
ON CONFLICT (site_id) DO NOTHING;

-- name: insert_origin
INSERT INTO site_origins (site_id, origin) VALUES ($1, $2)
ON CONFLICT (site_id, origin) DO NOTHING;

-- name: insert_secret
INSERT INTO private.site_secrets (site_id, current_secret, next_secret) VALUES ($1, $2, $3);

-- name: site_by_public_id
SELECT s.id, s.public_id, s.name, s.domain, s.currency, s.timezone, s.created_at,
       s.default_destination,
       coalesce(array_agg(o.origin ORDER BY o.origin) FILTER (WHERE o.origin IS NOT NULL), '{}') AS origins
FROM sites s
LEFT JOIN site_origins o ON o.site_id = s.id
WHERE s.public_id = $1
GROUP BY s.id;

-- name: list_sites
SELECT s.id, s.public_id, s.name, s.domain, s.currency, s.timezone, s.created_at,
       s.default_destination,
       coalesce(array_agg(o.origin ORDER BY o.origin) FILTER (WHERE o.origin IS NOT NULL), '{}') AS origins
FROM sites s
LEFT JOIN site_origins o ON o.site_id = s.id
GROUP BY s.id
ORDER BY s.created_at, s.public_id;

-- name: secrets_for_site
SELECT current_secret, next_secret, rotated_at FROM private.site_secrets WHERE site_id = $1;

-- name: rotate_secret
-- Rotation: a fresh secret becomes current and the old current moves to next, so calls
-- signed with either pass while clients switch. The secret from before that is dropped.
UPDATE private.site_secrets
SET next_secret = current_secret, current_secret = $2, rotated_at = now()
WHERE site_id = $1
RETURNING current_secret, next_secret, rotated_at;

-- name: upsert_user
INSERT INTO users (email) VALUES ($1)
ON CONFLICT (email) DO UPDATE SET email = EXCLUDED.email
RETURNING id, email, platform_role;

-- name: set_platform_role
UPDATE users SET platform_role = $2 WHERE id = $1;

-- name: upsert_member
INSERT INTO site_members (site_id, user_id, role) VALUES ($1, $2, $3)
ON CONFLICT (site_id, user_id) DO UPDATE SET role = EXCLUDED.role;

-- name: insert_token
INSERT INTO private.api_tokens (user_id, token_sha256, label, expires_at) VALUES ($1, $2, $3, $4)
RETURNING id, created_at, expires_at;

-- name: list_tokens
-- Labels and dates, never hashes. $1: a user's email or NULL for everyone.
SELECT t.id, u.email, t.label, t.created_at, t.last_used_at, t.expires_at, t.revoked_at,
       CASE WHEN t.revoked_at IS NOT NULL THEN 'revoked'
            WHEN t.expires_at IS NOT NULL AND t.expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM private.api_tokens t
JOIN users u ON u.id = t.user_id
WHERE $1::text IS NULL OR u.email = $1
ORDER BY u.email, t.created_at, t.id;

-- name: revoke_tokens
-- By id, or every live token of a user (email), or every live token with a label.
-- Revoking is idempotent: an already revoked token keeps its first revocation time.
UPDATE private.api_tokens t
SET revoked_at = now()
FROM users u
WHERE u.id = t.user_id AND t.revoked_at IS NULL
  AND ($1::uuid IS NULL OR t.id = $1)
  AND ($2::text IS NULL OR u.email = $2)
  AND ($3::text IS NULL OR t.label = $3)
RETURNING t.id, u.email, t.label, t.user_id;

-- name: principal_by_token
-- Resolves a bearer token (by its SHA-256) to the user and the user's roles per site.
SELECT u.id AS user_id, u.email, u.platform_role, t.id AS token_id,
       coalesce(
           jsonb_object_agg(s.public_id, jsonb_build_object('site_id', s.id, 'role', m.role))
               FILTER (WHERE s.id IS NOT NULL),
           '{}'::jsonb
       ) AS sites
FROM private.api_tokens t
JOIN users u ON u.id = t.user_id
LEFT JOIN site_members m ON m.user_id = u.id
LEFT JOIN sites s ON s.id = m.site_id
WHERE t.token_sha256 = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())
GROUP BY u.id, t.id;

-- name: touch_token
UPDATE private.api_tokens SET last_used_at = now()
WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute');

-- name: role_capabilities
SELECT role, capability FROM role_capabilities ORDER BY role, capability;

-- name: insert_audit
INSERT INTO audit_log (actor_type, actor_id, action, resource_type, resource_id, site_id, payload)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING id;

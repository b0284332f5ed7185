-- Database roles: the bootstrap a superuser (or a role with CREATEROLE) runs once per server
-- and database before any migration. The embedded server runs these at every start
-- (opsmantik_stream.db.bootstrap_roles); for an external server docs/security.md gives the
-- same statements for a DBA. Each block is idempotent.
--
--   opsmantik_owner    owns the schema; runs migrations, partitions, uploaders, maintenance
--                      and the CLI. Not a superuser, cannot create roles or databases.
--   opsmantik_gateway  the gateway's service queries: token resolution, call-event secrets,
--                      credential writes, /metrics and /ops (grants in migration 0010).
--   opsmantik_api      operator requests under row-level security (grants in 0005, 0010).

-- name: create_roles
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['opsmantik_owner', 'opsmantik_gateway', 'opsmantik_api'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS NOINHERIT', r);
        END IF;
    END LOOP;
END
$$;

-- name: own_database
-- The owner role owns the current database (and so, from PostgreSQL 15 on, its public
-- schema), which lets it create schemas and tables without being a superuser.
DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO opsmantik_owner', current_database());
    EXECUTE 'ALTER SCHEMA public OWNER TO opsmantik_owner';
END
$$;

-- name: take_ownership
-- Hands every object of the application's schemas to the owner role: a database migrated
-- by a superuser before the roles existed (an upgrade) keeps working when the owner role
-- runs it from then on. Objects the owner role already owns are left alone, so this is
-- cheap after the first time. Indexes, table-owned sequences and row types follow their
-- table.
DO $$
DECLARE
    obj record;
BEGIN
    FOR obj IN
        SELECT n.nspname, c.relname, c.relkind
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('public', 'private')
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
          AND pg_get_userbyid(c.relowner) <> 'opsmantik_owner'
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT 1 FROM pg_depend d
              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('ALTER %s %I.%I OWNER TO opsmantik_owner',
                       CASE obj.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                        WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                        ELSE 'TABLE' END,
                       obj.nspname, obj.relname);
    END LOOP;
    FOR obj IN
        SELECT p.oid::regprocedure AS sig, p.prokind
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ('public', 'private')
          AND pg_get_userbyid(p.proowner) <> 'opsmantik_owner'
    LOOP
        EXECUTE format('ALTER %s %s OWNER TO opsmantik_owner',
                       CASE obj.prokind WHEN 'p' THEN 'PROCEDURE' WHEN 'a' THEN 'AGGREGATE' ELSE 'FUNCTION' END,
                       obj.sig);
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'private'
               AND pg_get_userbyid(nspowner) <> 'opsmantik_owner') THEN
        ALTER SCHEMA private OWNER TO opsmantik_owner;
    END IF;
END
$$;

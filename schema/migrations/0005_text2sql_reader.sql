-- pgfleet 0005: the role that text-to-SQL queries run as. A query checked as read-only still
-- runs as this role (SET LOCAL ROLE) inside a read-only transaction, so SQL that fooled the
-- checker can read only what this role was granted and write nothing.
-- It is granted SELECT on docs only. To let it answer questions about your own tables:
--   GRANT USAGE ON SCHEMA s TO pgfleet_reader;
--   GRANT SELECT ON ALL TABLES IN SCHEMA s TO pgfleet_reader;
-- Roles are cluster-wide, so it is created only if missing. The user that runs this migration
-- is granted it, so that it can SET ROLE to it (a superuser can anyway); another user that
-- pgfleet connects as needs the same: GRANT pgfleet_reader TO that_user;
DO $$
DECLARE
    can_set boolean;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pgfleet_reader') THEN
        CREATE ROLE pgfleet_reader NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
            NOREPLICATION NOBYPASSRLS;
    END IF;
    -- from PostgreSQL 16 a member may lack the SET option (a CREATEROLE creator gets ADMIN only)
    IF current_setting('server_version_num')::int >= 160000 THEN
        can_set := pg_has_role(current_user, 'pgfleet_reader', 'SET');
    ELSE
        can_set := pg_has_role(current_user, 'pgfleet_reader', 'MEMBER');
    END IF;
    IF NOT can_set THEN
        GRANT pgfleet_reader TO CURRENT_USER;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO pgfleet_reader;
GRANT SELECT ON docs TO pgfleet_reader;

-- pgfleet 0008: bounds on what a session of the reader login may use. Guarded SQL runs as the
-- login pgfleet_reader, and these role settings apply to every session it opens:
--   temp_file_limit  the temporary files a session may hold (sorts and hashes spilled to disk);
--                    only a superuser (or a role granted SET on it) may set it, so the reader
--                    cannot lift it;
--   work_mem         the memory of each sort or hash before it spills (the guard also sets it
--                    in each of its transactions).
-- Roles are cluster-wide: a setting the role already has (an administrator's choice, or this
-- migration run for another database) is kept. A migrating user that may not set one is
-- warned and the migration goes on; a superuser can set it later:
--   ALTER ROLE pgfleet_reader SET temp_file_limit = '256MB';
-- A login that is only a member of pgfleet_reader needs the same settings of its own.
DO $$
DECLARE
    current_config text[] := (SELECT rolconfig FROM pg_roles WHERE rolname = 'pgfleet_reader');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM unnest(current_config) s WHERE s LIKE 'temp\_file\_limit=%') THEN
        BEGIN
            ALTER ROLE pgfleet_reader SET temp_file_limit = '256MB';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pgfleet: could not set temp_file_limit for pgfleet_reader (%): as a '
                'superuser, run ALTER ROLE pgfleet_reader SET temp_file_limit = ''256MB''',
                SQLERRM;
        END;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM unnest(current_config) s WHERE s LIKE 'work\_mem=%') THEN
        BEGIN
            ALTER ROLE pgfleet_reader SET work_mem = '8MB';
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pgfleet: could not set work_mem for pgfleet_reader (%): run ALTER '
                'ROLE pgfleet_reader SET work_mem = ''8MB''', SQLERRM;
        END;
    END IF;
END
$$;

-- The embedded fleet's logins: the reader and the restricted fleet login on the embedded
-- PostgreSQL, and the superuser's password set in single-user mode.
-- CREATE ROLE and ALTER ROLE take no bound parameters: they are templates, whose role names
-- ({role}, {member_of}) are composed identifiers and whose passwords are composed literals of
-- SCRAM verifiers (never the password itself). The one other value is a bound parameter.

-- name: role_exists
-- A row when the role (%s: its name) exists.
SELECT 1 FROM pg_roles WHERE rolname = %s;

-- name: create_member_role
-- A role that is a member of another and has nothing else (it logs in once
-- enable_role_login has run).
CREATE ROLE {role} IN ROLE {member_of};

-- name: enable_role_login
-- Let the role log in with a password ({secret}: its SCRAM-SHA-256 verifier, made by the
-- client so that the password is never sent) and nothing more.
ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
PASSWORD {secret};

-- name: set_superuser_password
-- Run by the embedded PostgreSQL in single-user mode, before the server listens: the
-- superuser ({role}) takes this password ({verifier}: its SCRAM-SHA-256 verifier, a composed
-- literal; single-user mode takes no parameters).
ALTER ROLE {role} WITH PASSWORD {verifier};

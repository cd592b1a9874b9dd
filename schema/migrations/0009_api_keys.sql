-- pgfleet 0009: the HTTP API's keys. A key is shown once, when it is created; only its
-- SHA-256 is stored (a key is 256 random bits, so a fast hash is enough: there is nothing
-- to guess from it). `prefix` (the key's first characters) tells a person which key is
-- which in `pgfleet api-key list`. A revoked key is kept, with when it was revoked, so that
-- its name is not silently reused for another holder.
CREATE TABLE api_keys (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$'),
    key_hash      bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix        text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    revoked_at    timestamptz
);

-- the API runs as a member of pgfleet_worker: it checks keys and notes when one was used
GRANT SELECT ON api_keys TO pgfleet_worker;
GRANT UPDATE (last_used_at) ON api_keys TO pgfleet_worker;

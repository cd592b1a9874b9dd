-- pgfleet 0006: text-to-SQL examples, (question, sql) pairs to train and evaluate on.
-- Loaded from a file (every SQL checked against the live schema first) or generated from the
-- schema by templates (`pgfleet text2sql synth`).
CREATE TABLE text2sql_examples (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    question    text NOT NULL CHECK (length(btrim(question)) > 0),
    sql         text NOT NULL CHECK (length(btrim(sql)) > 0),
    db_name     text,                    -- the database or schema it targets; NULL: this one
    source      text NOT NULL,           -- file:NAME, or synth:TEMPLATE
    template    text,                    -- the template of a generated example
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- the same example loaded or generated twice is kept once
CREATE UNIQUE INDEX text2sql_examples_unique_idx
    ON text2sql_examples (md5(question), md5(sql), coalesce(db_name, ''));

-- training jobs read the examples; the reader role (generated SQL) never sees them
GRANT SELECT ON text2sql_examples TO pgfleet_worker;

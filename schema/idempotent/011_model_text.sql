-- What the model is given of a doc: one definition of "blank", and the cut that keeps a huge
-- doc from reaching the worker whole. Re-applied on every migrate.

-- The blank characters: exactly those Python's str.isspace() accepts (Unicode White_Space,
-- plus the ASCII separators U+001C-U+001F). The worker and `verify` both decide "blank" with
-- these; tests/integration/test_consistency.py checks every code point against Python.
CREATE OR REPLACE FUNCTION pgfleet_blank_chars_v1() RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN E'\u0009\u000A\u000B\u000C\u000D\u001C\u001D\u001E\u001F\u0020\u0085\u00A0\u1680'
           || E'\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200A\u2028'
           || E'\u2029\u202F\u205F\u3000';

-- Nothing but blank characters (or nothing at all): there is nothing to embed.
CREATE OR REPLACE FUNCTION pgfleet_is_blank_v1(content text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ltrim(content, pgfleet_blank_chars_v1()) = '';

-- The text a worker encodes: the content from its first non-blank character, cut to
-- max_chars characters ('' for a blank doc). Leading blanks produce no tokens, so dropping
-- them changes nothing the model reads; the cut is sized by the worker from the model's
-- window (pgfleet.embedding.batching.max_chars). At most the first 2 × max_chars characters are read,
-- unless those are all blank.
CREATE OR REPLACE FUNCTION pgfleet_model_text_v1(content text, max_chars integer) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE
        WHEN ltrim(left(content, max_chars), pgfleet_blank_chars_v1()) = ''
            THEN left(ltrim(content, pgfleet_blank_chars_v1()), max_chars)
        ELSE ltrim(left(content, max_chars), pgfleet_blank_chars_v1())
             || substr(content, max_chars + 1,
                       max_chars - length(ltrim(left(content, max_chars),
                                                pgfleet_blank_chars_v1())))
    END;

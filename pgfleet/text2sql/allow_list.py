"""The allow-list of the SQL guard: the functions a question's SQL may call, the keyword
constructs written with a parenthesis, and the types a value may be cast to.

Data only; :mod:`~pgfleet.text2sql.policy` applies it. Adding a function here is a security
decision: it must be a PostgreSQL built-in (``pg_catalog``) that only computes a value from
its arguments (the integration tests check that each one is a built-in, and which are
volatile).
"""

from __future__ import annotations

from sqlglot import exp

#: the functions a question's SQL may call: PostgreSQL built-ins (pg_catalog) that only
#: compute a value from their arguments. Nothing that reads settings, files, sequences,
#: locks, other sessions or the server, and nothing that runs SQL given as text.
ALLOWED_FUNCTIONS = frozenset({
    # aggregates
    "count", "sum", "avg", "min", "max", "string_agg", "array_agg", "bool_and", "bool_or",
    "every", "bit_and", "bit_or", "stddev", "stddev_pop", "stddev_samp", "variance",
    "var_pop", "var_samp", "corr", "covar_pop", "covar_samp", "regr_slope",
    "regr_intercept", "regr_r2", "regr_count", "percentile_cont", "percentile_disc", "mode",
    "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    # window functions
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag", "lead",
    "first_value", "last_value", "nth_value",
    # math
    "abs", "ceil", "ceiling", "floor", "round", "trunc", "sign", "sqrt", "cbrt", "power",
    "pow", "exp", "ln", "log", "log10", "mod", "div", "pi", "degrees", "radians",
    "width_bucket", "gcd", "lcm", "scale", "random", "sin", "cos", "tan", "asin", "acos",
    "atan", "atan2",
    # text
    "lower", "upper", "initcap", "length", "char_length", "character_length",
    "octet_length", "bit_length", "substring", "substr", "position", "strpos", "btrim",
    "ltrim", "rtrim", "lpad", "rpad", "left", "right", "replace", "reverse", "repeat",
    "concat", "concat_ws", "format", "split_part", "translate", "starts_with", "ascii", "chr",
    "md5", "to_hex", "overlay", "regexp_replace", "regexp_match", "regexp_matches",
    "regexp_like", "regexp_count", "regexp_substr", "regexp_instr", "regexp_split_to_array",
    "regexp_split_to_table", "string_to_array", "string_to_table", "array_to_string",
    "to_tsvector", "to_tsquery", "plainto_tsquery", "phraseto_tsquery",
    "websearch_to_tsquery", "ts_rank", "ts_rank_cd",
    # date and time
    "now", "date_trunc", "date_part", "date_bin", "extract", "age", "make_date", "make_time",
    "make_timestamp", "make_timestamptz", "make_interval", "to_char", "to_date",
    "to_timestamp", "to_number", "justify_days", "justify_hours", "justify_interval",
    "isfinite", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
    "timezone", "date_add", "date_subtract",
    # conditional
    "num_nulls", "num_nonnulls",
    # arrays and sets of rows
    "array_length", "cardinality", "array_position", "array_positions", "array_remove",
    "array_replace", "array_append", "array_prepend", "array_cat", "array_lower",
    "array_upper", "array_ndims", "array_dims", "trim_array", "unnest", "generate_series",
    "generate_subscripts",
    # JSON
    "json_extract_path", "json_extract_path_text", "jsonb_extract_path",
    "jsonb_extract_path_text", "json_array_length", "jsonb_array_length",
    "json_array_elements", "jsonb_array_elements", "json_array_elements_text",
    "jsonb_array_elements_text", "json_each", "jsonb_each", "json_each_text",
    "jsonb_each_text", "json_object_keys", "jsonb_object_keys", "json_typeof",
    "jsonb_typeof", "to_json", "to_jsonb", "json_build_object", "jsonb_build_object",
    "json_build_array", "jsonb_build_array", "row_to_json", "json_strip_nulls",
    "jsonb_strip_nulls", "jsonb_pretty", "jsonb_path_query", "jsonb_path_query_array",
    "jsonb_path_query_first", "jsonb_path_exists", "jsonb_path_match",
    # casts written as calls
    "date", "text", "numeric", "timestamp", "time", "float8", "int4", "int8", "varchar",
})

#: keyword constructs written with a parenthesis: never a call of a function by that name
#: (PostgreSQL reserves these words, or lets them name columns but never functions)
SYNTAX = frozenset({
    "select", "from", "where", "and", "or", "not", "in", "exists", "any", "all", "some",
    "values", "lateral", "using", "on", "as", "having", "union", "intersect", "except",
    "distinct", "when", "then", "else", "case", "between", "limit", "offset", "array", "row",
    "cast", "trim", "coalesce", "nullif", "greatest", "least", "to", "grouping",
})
#: keyword constructs that are one only after a given word: (word, the words before it)
CONTEXT_SYNTAX = {
    "over": {")"}, "filter": {")"}, "group": {"within"}, "materialized": {"as", "not"},
}
#: words that may also name a function, and are a keyword construct only after an operand
#: (``a JOIN (...)``, ``x LIKE (...)``, ``x IS (...)``), never where an expression begins
INFIX_SYNTAX = frozenset({"join", "like", "ilike", "is"})
#: the keywords after which an infix word is still one (``NOT LIKE``, ``LEFT JOIN``)
INFIX_AFTER = frozenset({"not", "left", "right", "inner", "outer", "full", "cross", "natural"})

#: the types a value may be cast to: plain value types, whose input functions only parse.
#: Not the reg* types (their input looks names up in the catalog), not user-defined types.
ALLOWED_TYPES = frozenset(
    getattr(exp.DataType.Type, name) for name in (
        "SMALLINT", "INT", "BIGINT", "DECIMAL", "DOUBLE", "FLOAT", "MONEY", "TEXT", "VARCHAR",
        "CHAR", "NAME", "BOOLEAN", "DATE", "TIME", "TIMETZ", "TIMESTAMP", "TIMESTAMPTZ",
        "INTERVAL", "JSON", "JSONB", "UUID", "INET", "BIT", "VARBINARY", "ARRAY", "VECTOR",
        "INT4RANGE", "INT8RANGE", "NUMRANGE", "DATERANGE", "TSRANGE", "TSTZRANGE")
    if hasattr(exp.DataType.Type, name))
#: user-defined in sqlglot's eyes, built-in value types in PostgreSQL's
ALLOWED_TYPE_NAMES = frozenset({"tsvector", "tsquery", "cidr", "macaddr"})

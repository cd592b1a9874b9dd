"""Operations: embedded servers, the supervisor, ``up``, status, metrics and benchmarks."""

"""Typed settings, read once from ``PGFLEET_*`` environment variables.

Names carry their units. URLs: ``PGFLEET_DATABASE_URL`` and ``PGFLEET_REDIS_URL`` point at
your own servers; when they are unset, the commands use the embedded servers that
``pgfleet up`` started under ``PGFLEET_HOME``. ``PGFLEET_READER_URL`` is the login that
guarded (text-to-SQL) queries run as: a role with nothing but ``pgfleet_reader``'s rights
(the embedded default creates one).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from pgfleet.errors import ConfigurationError
from pgfleet.state import read_state

PREFIX = "PGFLEET_"


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    redis_url: str | None = None
    # the session that guarded SQL runs in: a login role with only pgfleet_reader's rights
    reader_url: str | None = None
    home: Path = Path(".pgfleet")
    # where produced models are written (shared storage when workers run on many machines)
    models_dir: Path | None = None

    # batching, per worker process
    batch_max_docs: int = 64
    batch_max_wait_ms: int = 50
    # producer: ids per Celery message when there is a backlog, rows claimed per round
    ids_per_message: int = 16
    claim_limit: int = 2048
    poll_interval_s: float = 1.0
    requeue_after_s: float = 60.0
    reconcile_interval_s: float = 300.0
    # vectors of a retired version are dropped this long after it was retired
    retire_grace_s: float = 7 * 86400.0

    # training runs: heartbeat period, and how old a heartbeat may get before the run is
    # marked failed (its worker died)
    training_heartbeat_s: float = 10.0
    training_stale_s: float = 120.0
    # a run still going after training_time_limit_s is stopped and failed (0 = no limit);
    # a job that does not stop within training_stop_grace_s of a cancel or of its time
    # limit (stuck in native code) fails its run and its worker process is replaced
    training_time_limit_s: float = 86400.0
    training_stop_grace_s: float = 60.0
    # A/B changes: how long `pgfleet ab set/promote/rollback/retire` waits for a lock, for the
    # transactions writing docs when a version became active, and for its index build,
    # before going on and saying who held it up
    ab_lock_wait_s: float = 10.0

    # failures
    max_attempts: int = 5
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0

    # engines
    device: str = "auto"
    torch_threads: int = 0
    # padded tokens per forward pass (0 = auto: 1024 on CPU, 262144 on CUDA); texts are
    # sorted by length and grouped so that little compute goes to padding
    token_budget: int = 0
    worker_prefetch: int = 16

    # inference cache maintenance (Celery beat, every cache_prune_interval_s): entries
    # unused for cache_max_age_s with fewer than cache_min_hits hits are pruned, then the
    # least useful ones are evicted down to cache_max_entries (0 = no bound)
    cache_prune_interval_s: float = 3600.0
    cache_max_age_s: float = 30 * 86400.0
    cache_min_hits: int = 5
    cache_max_entries: int = 1_000_000

    # ports of the embedded default, Flower and the Prometheus endpoint (0 = pick a free
    # one); 5556 sits next to Flower's 5555, outside the exporters' 9100-9999 range, which
    # is fully allocated
    pg_port: int = 0
    redis_port: int = 0
    flower_port: int = 5555
    metrics_port: int = 5556
    shutdown_timeout_s: float = 30.0

    # the HTTP API (``pgfleet serve``): its port, the address it binds (127.0.0.1: this
    # machine only; 0.0.0.0 behind a proxy or in a container), and the batching of
    # concurrent callers' texts: one forward pass takes up to api_max_batch texts, and a
    # text waits at most api_max_wait_ms for others to join it
    api_port: int = 8000
    api_address: str = "127.0.0.1"
    api_max_batch: int = 64
    api_max_wait_ms: float = 2.0
    # bounds on what one request may ask: its body, the texts of one /v1/embeddings
    # request and the characters of each text
    api_max_body_bytes: int = 1_048_576
    api_max_inputs: int = 256
    api_max_input_chars: int = 32_768
    # the cores the API's engines may use (0: a torch engine runs on PGFLEET_TORCH_THREADS,
    # else half the cores; an ONNX Runtime engine runs one pass per core, on as many cores
    # as the rest of the machine leaves free), and how a torch version is served on a CPU
    # (auto = by its ONNX Runtime copy once made and checked, torch = by torch)
    api_threads: int = 0
    api_engine: str = "auto"
    # the API process's niceness (0-19): a backlog being embedded on the same machine keeps
    # more of the cores while requests wait a little longer for theirs; the kernel still
    # gives the API all the CPU nothing else wants, so an idle fleet answers as fast (on 2
    # cores, one search client during a backlog: the backlog kept 0.55 of its speed at 0,
    # 0.63 at 5, 0.73 at 10, search p95 20, 31, 54 ms; docs/benchmarks.md)
    api_nice: int = 10

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}  # each parsed to its field's type by _parse
        for f in fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f.name, f.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = ("batch_max_docs", "ids_per_message", "claim_limit", "max_attempts",
                    "worker_prefetch")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be at least 1")
        if not 0 < self.training_heartbeat_s < self.training_stale_s:
            raise ConfigurationError(f"{PREFIX}TRAINING_HEARTBEAT_S must be positive and less "
                                     f"than {PREFIX}TRAINING_STALE_S")
        self._validate_runs_and_ab()
        self._validate_cache_and_ports()
        if self.batch_max_wait_ms < 0:
            raise ConfigurationError(f"{PREFIX}BATCH_MAX_WAIT_MS must not be negative")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ConfigurationError(
                f"{PREFIX}DEVICE must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        for name in ("database_url", "redis_url", "reader_url"):
            url = getattr(self, name)
            if url is not None:
                check_url(name, url)

    def _validate_runs_and_ab(self) -> None:
        if not (math.isfinite(self.training_time_limit_s) and self.training_time_limit_s >= 0):
            raise ConfigurationError(f"{PREFIX}TRAINING_TIME_LIMIT_S must be a number of "
                                     "seconds (0 for no limit)")
        for name in ("training_stop_grace_s", "ab_lock_wait_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be a positive number "
                                         "of seconds")

    def _validate_cache_and_ports(self) -> None:
        for name in ("cache_min_hits", "cache_max_entries"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must not be negative")
        for name in ("cache_prune_interval_s", "cache_max_age_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be a positive number "
                                         "of seconds")
        for name in ("api_max_batch", "api_max_body_bytes", "api_max_inputs",
                     "api_max_input_chars"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be at least 1")
        if not 0 <= self.api_nice <= 19:
            raise ConfigurationError(f"{PREFIX}API_NICE must be a niceness from 0 to 19")
        if self.api_engine not in ("auto", "torch"):
            raise ConfigurationError(f"{PREFIX}API_ENGINE must be auto or torch, not "
                                     f"{self.api_engine!r}")
        if not (math.isfinite(self.api_max_wait_ms) and self.api_max_wait_ms >= 0):
            raise ConfigurationError(f"{PREFIX}API_MAX_WAIT_MS must be a number of "
                                     "milliseconds, 0 or more")
        for name in ("pg_port", "redis_port", "flower_port", "metrics_port", "api_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigurationError(f"{PREFIX}{name.upper()} must be a port number "
                                         "between 0 (any free port) and 65535")


_SCHEMES = {
    "database_url": ("postgresql", "postgres"),
    "redis_url": ("redis", "rediss", "redis+socket", "unix"),
    "reader_url": ("postgresql", "postgres"),
}


def check_url(name: str, url: str) -> None:
    """Raise a one-line ConfigurationError for a URL that cannot be right."""
    scheme = urlsplit(url).scheme
    if scheme not in _SCHEMES[name]:
        raise ConfigurationError(
            f"{PREFIX}{name.upper()} must start with {' or '.join(s + '://' for s in _SCHEMES[name])}"
            f", got {redact(url)!r}")


def _parse(name: str, kind: object, raw: str) -> Path | int | float | str:
    text = str(kind)
    try:
        if "Path" in text:  # Path and Path | None
            return Path(raw)
        if text.startswith("int"):
            return int(raw)
        if text.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigurationError(
            f"{PREFIX}{name.upper()}={raw!r} is not a valid {text.split()[0]}") from None
    return raw


#: query parameters and keywords whose value is a secret
SECRET_KEYS = frozenset({"password", "sslpassword", "pass", "passwd", "pwd", "secret", "token"})
_KEYWORD_SECRET = re.compile(
    r"\b(" + "|".join(sorted(SECRET_KEYS)) + r")(\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with every password replaced by ``***``, for logs and messages.

    Passwords are often not percent-encoded, so the userinfo is everything up to the last
    ``@`` of the URL (a ``/``, ``?`` or ``#`` in a password does not end it), and the value of
    a ``password=`` (or similar) query parameter is hidden too; a keyword DSN
    (``host=h password=p``) has its password keyword hidden. When in doubt, more is hidden."""
    if not isinstance(url, str):
        return "<not a url>"
    scheme, sep, rest = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return _KEYWORD_SECRET.sub(r"\1\2***", url)
    at = rest.rfind("@")
    if at >= 0:
        user, colon, _password = rest[:at].partition(":")
        rest = f"{user}:***@{rest[at + 1:]}" if colon else rest
    base, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        params = []
        for param in query.split("&"):
            key, eq, _value = param.partition("=")
            secret = unquote_plus(key).strip().lower() in SECRET_KEYS
            params.append(f"{key}=***" if eq and secret else param)
        rest = f"{base}?{'&'.join(params)}{hash_}{fragment}"
    return f"{scheme}://{rest}"


@dataclass(frozen=True)
class Urls:
    database_url: str
    redis_url: str
    embedded: bool
    #: the login for guarded SQL (None: not configured; guarded SQL then refuses to run)
    reader_url: str | None = None


def resolve_urls(settings: Settings) -> Urls:
    """The servers to use: the configured URLs, else those of the fleet ``pgfleet up``
    started under ``PGFLEET_HOME``."""
    if settings.database_url and settings.redis_url:
        return Urls(settings.database_url, settings.redis_url, embedded=False,
                    reader_url=settings.reader_url)
    state = read_state(settings.home)
    if state is None:
        missing = [n for n in ("DATABASE_URL", "REDIS_URL")
                   if not getattr(settings, n.lower())]
        raise ConfigurationError(
            f"no {' and no '.join(PREFIX + m for m in missing)} set, and no embedded fleet is "
            f"running under {settings.home.resolve()}: set the URL(s), or start one with "
            "`pgfleet up`")
    return Urls(settings.database_url or state["database_url"],
                settings.redis_url or state["redis_url"], embedded=True,
                reader_url=settings.reader_url or state.get("reader_url"))

"""Every setting of the service, read from `TICKPROP_*` environment variables.

Build `Settings` once in `main()` (or with `load_settings()`), never at import
time, and pass the pieces down; tests construct `Settings(...)` directly.
The learning defaults are not repeated here: they are read from
`model.learner.LearnerConfig`, the one place they live, so the worker and
`tickprop backtest` cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, FilePath, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

if TYPE_CHECKING:
    from model.learner import LearnerConfig

ENV_PREFIX = "TICKPROP_"
MASK = "**********"


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the environment variable."""


def _learner_default(name: str) -> Any:
    """The default of `LearnerConfig.<name>`, read lazily (model/ owns the numbers)."""
    from model.learner import LearnerConfig

    for field in dataclasses.fields(LearnerConfig):
        if field.name == name:
            if field.default is not dataclasses.MISSING:
                return field.default
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
    raise AttributeError(f"LearnerConfig has no default for {name!r}")


class LearningSettings(BaseSettings):
    """The learning settings alone: what `tickprop backtest` reads, and the worker too."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )

    # --- Learning (defaults from model.learner.LearnerConfig) -------------------
    window: int = Field(
        default_factory=lambda: _learner_default("window"),
        ge=2,
        le=10_000,
        description="Non-zero price moves the features look back over.",
    )
    horizons: Annotated[tuple[int, ...], NoDecode] = Field(
        default_factory=lambda: _learner_default("horizons"),
        description=(
            'Ticks ahead the predictions are about, comma-separated, e.g. "1,5,20": one '
            "network each, at most 8 distinct horizons of 1 to 1000 ticks."
        ),
    )
    horizon: str | int | None = Field(
        None,
        description="No longer read: replaced by TICKPROP_HORIZONS; start-up stops if it is set.",
    )
    hidden: Annotated[tuple[int, ...], NoDecode] = Field(
        default_factory=lambda: _learner_default("hidden"),
        description='Hidden layer sizes, comma-separated, e.g. "32" or "32,16".',
    )
    learning_rate: float = Field(
        default_factory=lambda: _learner_default("learning_rate"),
        gt=0,
        le=10,
        allow_inf_nan=False,
        description="SGD step of the 1-tick horizon; horizon h steps at this / sqrt(h).",
    )
    seed: int = Field(
        default_factory=lambda: _learner_default("seed"),
        ge=0,
        le=2**63 - 1,
        description="Seed of every symbol's initial weights (with the symbol's stable hash).",
    )
    fading_factor: float = Field(
        default_factory=lambda: _learner_default("fading_factor"),
        gt=0,
        le=1,
        allow_inf_nan=False,
        description=(
            "Fading factor alpha of the scorecards' faded figures: a score k scores ago "
            "weighs alpha^k (0.999: roughly the last 1,000 scores)."
        ),
    )
    drift_response: Literal["none", "reset", "boost"] = Field(
        default_factory=lambda: _learner_default("drift_response"),
        description=(
            "What a drift alarm on a horizon's loss does: none; reset (that horizon's network "
            "back to its initial weights); boost (4x its learning rate for 500 steps)."
        ),
    )

    @field_validator("horizons", mode="before")
    @classmethod
    def _parse_horizons(cls, value: Any) -> Any:
        from model.learner import check_horizons

        if isinstance(value, int) and not isinstance(value, bool):
            value = (value,)
        return check_horizons(value)

    @field_validator("horizon")
    @classmethod
    def _refuse_horizon(cls, value: str | int | None) -> None:
        if value is not None:
            raise ValueError(
                f"TICKPROP_HORIZON={value} is no longer read: set TICKPROP_HORIZONS to a comma "
                f'list of tick counts instead, e.g. TICKPROP_HORIZONS="{str(value).strip() or 1}"'
                ' for that one horizon or "1,5,20" (the default)'
            )
        return None

    @field_validator("hidden", mode="before")
    @classmethod
    def _parse_hidden(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            if not all(p.isdigit() for p in parts):
                raise ValueError(f'expected positive integers like "32,16", got {value!r}')
            return tuple(int(p) for p in parts)
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        return value

    @field_validator("hidden")
    @classmethod
    def _check_hidden(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not 1 <= len(value) <= 8:
            raise ValueError(f"expected 1 to 8 hidden layers, got {len(value)}")
        if not all(1 <= n <= 4096 for n in value):
            raise ValueError(f"every hidden layer needs 1 to 4096 units, got {value}")
        return value

    # --- what other modules use --------------------------------------------------
    def learner_config(self) -> LearnerConfig:
        """The online learner's configuration, these settings over LearnerConfig's defaults."""
        from model.learner import LearnerConfig

        return LearnerConfig(
            window=self.window,
            horizons=self.horizons,
            hidden=self.hidden,
            learning_rate=self.learning_rate,
            seed=self.seed,
            fading_factor=self.fading_factor,
            drift_response=self.drift_response,
        )


class Settings(LearningSettings):
    """The service's configuration; every field maps to `TICKPROP_<FIELD NAME>`."""

    # --- Kafka -----------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        min_length=1,
        max_length=4096,
        description="Comma-separated host:port list of Kafka brokers.",
    )
    ticks_topic: str = Field("ticks", description="Topic the worker reads ticks from.")
    predictions_topic: str = Field("predictions", description="Topic predictions are written to.")
    dlq_topic: str = Field("ticks.dlq", description="Dead-letter topic for invalid or late ticks.")
    group_id: str = Field(
        "tickprop",
        min_length=1,
        max_length=200,
        description="Kafka consumer group; also names the Redis state keys.",
    )
    topic_partitions: int = Field(
        6, ge=1, le=10_000, description="Partitions of topics the worker creates when missing."
    )
    replication_factor: int = Field(
        1, ge=1, le=100, description="Replication factor of topics the worker creates."
    )
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        le=3_600_000,
        description="Consumer-group session timeout: a silent worker loses its partitions.",
    )
    heartbeat_interval_ms: int = Field(
        1000,
        ge=100,
        le=1_200_000,
        description="Consumer heartbeat interval; must be below a third of the session timeout.",
    )
    poll_max_records: int = Field(
        500, ge=1, le=100_000, description="Most records one consumer poll returns."
    )
    shutdown_grace_seconds: float = Field(
        45.0,
        ge=1.0,
        le=3600.0,
        description="After SIGTERM/SIGINT the worker exits within this many seconds, "
        "whatever it is doing: exit 3 (state as of the last checkpoint) if its orderly "
        "stop has not finished by then. Keep it below the orchestrator's own grace time.",
    )
    skip_unreadable_batches: bool = Field(
        False,
        description="Skip a record batch the consumer cannot read (missing codec, corrupt "
        "record) and dead-letter a marker naming its offsets (unreadable_batch); "
        "when false its partition stops and waits for an operator.",
    )
    max_message_bytes: int = Field(
        65536,
        ge=256,
        le=16 * 1024 * 1024,
        description="Largest tick record accepted; larger ones are dead-lettered (too_large).",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required with SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_username: str | None = Field(None, max_length=1024, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: FilePath | None = Field(None, description="CA bundle to verify the brokers (PEM).")
    ssl_certfile: FilePath | None = Field(None, description="Client certificate for mTLS (PEM).")
    ssl_keyfile: FilePath | None = Field(None, description="Client private key for mTLS (PEM).")

    # --- Redis -----------------------------------------------------------------
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL (redis://, rediss:// for TLS, or unix://) holding model state.",
    )
    redis_username: str | None = Field(None, max_length=1024, description="Redis ACL user name.")
    redis_password: SecretStr | None = Field(
        None, description="Redis password (never logged); a password inside the URL wins."
    )
    redis_ssl: bool = Field(False, description="Connect to Redis over TLS.")
    redis_ssl_cafile: FilePath | None = Field(
        None, description="CA bundle to verify the Redis server's certificate (PEM)."
    )
    redis_socket_timeout_seconds: float = Field(
        5.0, gt=0, le=300, description="Timeout of one Redis command or connect."
    )
    redis_cluster: bool = Field(
        False,
        description="TICKPROP_REDIS_URL names any node of a Redis Cluster: use redis-py's "
        "cluster client (database 0 only; not with unix://).",
    )

    # --- Metrics and logs ------------------------------------------------------
    metrics_host: str = Field(
        "0.0.0.0",
        min_length=1,
        max_length=255,
        description="Address the /metrics, /healthz and /readyz server binds to.",
    )
    metrics_port: int = Field(
        9108, ge=0, le=65535, description="Port of the metrics server (0 picks a free one)."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Lowest level of log lines written (JSON, to stderr)."
    )

    # --- Checkpoints and limits -------------------------------------------------
    checkpoint_every_ticks: int = Field(
        1000, ge=1, le=10_000_000, description="Checkpoint a partition after this many ticks."
    )
    checkpoint_every_seconds: float = Field(
        5.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="Checkpoint a partition with new ticks at least this often.",
    )
    max_symbols: int = Field(
        10_000,
        ge=1,
        le=10_000_000,
        description="Most symbols a worker holds; ticks of further symbols are dead-lettered.",
    )
    liveness_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        description="/healthz fails once the worker loop has not completed an iteration for "
        "this long (blocked in a poll, a flush or a Redis call).",
    )

    # --- validators -------------------------------------------------------------
    @field_validator("log_level", "security_protocol", "sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected host:port[,host:port...], got {server.strip()!r}")
        return value

    @field_validator("ticks_topic", "predictions_topic", "dlq_topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        # Kafka's own rule: 1-249 characters of [a-zA-Z0-9._-], not "." or "..".
        ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not 1 <= len(value) <= 249 or not set(value) <= ok or value in (".", ".."):
            raise ValueError(f"not a legal Kafka topic name: {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, not {scheme!r}")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        # Messages name the variables: these rules span fields, so pydantic cannot.
        if len({self.ticks_topic, self.predictions_topic, self.dlq_topic}) != 3:
            raise ValueError(
                "TICKPROP_TICKS_TOPIC, TICKPROP_PREDICTIONS_TOPIC, TICKPROP_DLQ_TOPIC must differ"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                f"TICKPROP_HEARTBEAT_INTERVAL_MS ({self.heartbeat_interval_ms}) must be at most "
                f"a third of TICKPROP_SESSION_TIMEOUT_MS ({self.session_timeout_ms})"
            )
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism is None:
                raise ValueError(
                    f"TICKPROP_SASL_MECHANISM is required with "
                    f"TICKPROP_SECURITY_PROTOCOL={self.security_protocol}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ValueError(
                    f"TICKPROP_SASL_USERNAME and TICKPROP_SASL_PASSWORD are required with "
                    f"TICKPROP_SECURITY_PROTOCOL={self.security_protocol}"
                )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError("TICKPROP_SSL_CERTFILE and TICKPROP_SSL_KEYFILE go together")
        if self.redis_cluster:
            url = urlsplit(self.redis_url)
            if url.scheme == "unix" or url.path.strip("/") not in ("", "0"):
                raise ValueError(
                    "TICKPROP_REDIS_CLUSTER=true needs a redis:// or rediss:// TICKPROP_REDIS_URL "
                    f"of database 0 (a Cluster has no other), not {redact_url(self.redis_url)!r}"
                )
        return self

    def __repr_args__(self) -> Any:
        # repr() and str() show the URL without its password, like SecretStr fields.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "redis_url" else value

    # --- what other modules use --------------------------------------------------
    def bootstrap_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap_servers.split(",")]

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """bootstrap_servers and security options for any kafka-python client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers(),
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            if self.sasl_password is not None:  # always, by _check_combinations
                kwargs["sasl_plain_password"] = self.sasl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
                path = getattr(self, name)
                if path is not None:
                    kwargs[name] = str(path)
        return kwargs

    def kafka_consumer_kwargs(self) -> dict[str, Any]:
        """kafka_client_kwargs() plus the worker's consumer options (manual offsets)."""
        return {
            **self.kafka_client_kwargs(),
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": self.session_timeout_ms,
            "heartbeat_interval_ms": self.heartbeat_interval_ms,
            "max_poll_records": self.poll_max_records,
            # Records of aborted producer transactions are never learned from (Apache Kafka
            # filters them; the embedded Tansu broker does not, see docs/reliability.md).
            "isolation_level": "read_committed",
        }

    def redis_client(self) -> Any:
        """A Redis client for the state (`service.store.connect`); the caller closes it."""
        from service.store import connect

        return connect(self.redis_url, self.redis_cluster, **self.redis_client_kwargs())

    def redis_client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `redis.Redis.from_url(settings.redis_url, **kwargs)`."""
        kwargs: dict[str, Any] = {
            "socket_timeout": self.redis_socket_timeout_seconds,
            "socket_connect_timeout": self.redis_socket_timeout_seconds,
        }
        if self.redis_username:
            kwargs["username"] = self.redis_username
        if self.redis_password is not None:
            kwargs["password"] = self.redis_password.get_secret_value()
        if self.redis_ssl and urlsplit(self.redis_url).scheme == "redis":
            if self.redis_cluster:
                kwargs["ssl"] = True  # the cluster client builds its own connection classes
            else:
                import redis

                kwargs["connection_class"] = redis.SSLConnection
        if self.redis_ssl or urlsplit(self.redis_url).scheme == "rediss":
            kwargs["ssl_cert_reqs"] = "required"
            if self.redis_ssl_cafile is not None:
                kwargs["ssl_ca_certs"] = str(self.redis_ssl_cafile)
        return kwargs

    def redacted_dump(self) -> dict[str, Any]:
        """All settings as JSON-ready values, secrets (and URL passwords) masked; safe to log."""
        data = self.model_dump(mode="json")
        for name in list(data):
            if isinstance(getattr(self, name), SecretStr):
                data[name] = MASK
        data["redis_url"] = redact_url(self.redis_url)
        return data


def redact_url(url: str) -> str:
    """`url` with the password of its user-info part replaced by a mask."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:{MASK}"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{userinfo}@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def settings_table() -> str:
    """docs/settings.md's table: every variable, its default and meaning, from the class."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        if info.default_factory is not None:
            value = _learner_default(name)
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            default = f"`{shown}` (LearnerConfig)"
        elif info.default is None:
            default = "unset"
        else:
            default = f"`{info.default}`"
        rows.append(f"| `{env_name(name)}` | {default} | {info.description} |")
    return "\n".join(rows) + "\n"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


S = TypeVar("S", bound=LearningSettings)


def load_settings(flags: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """The worker's settings from the environment, `overrides` winning over it.

    Raises ConfigError naming the bad environment variable, or the command-line flag that
    `flags` (field -> flag) says an override came from. The `tickprop` command line
    (`service.cli`) turns it into a one-line message and exit code 2.
    """
    return _load(Settings, flags, overrides)


def load_learning_settings(
    flags: Mapping[str, str] | None = None, **overrides: Any
) -> LearningSettings:
    """The learning settings alone (for `tickprop backtest`), as `load_settings` reads them."""
    return _load(LearningSettings, flags, overrides)


def _load(cls: type[S], flags: Mapping[str, str] | None, overrides: dict[str, Any]) -> S:
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, cls, flags or {})) from None
    except SettingsError as exc:  # a value the environment source itself could not parse
        raise ConfigError(f"invalid {ENV_PREFIX}* setting: {exc}") from None


def _describe(exc: ValidationError, cls: type[BaseSettings], flags: Mapping[str, str]) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        loc = error.get("loc") or ()
        field = str(loc[0]) if loc else ""
        message = error.get("msg", "invalid")
        if field in cls.model_fields:
            value = "" if "password" in field else f" (got {_short(error.get('input'))})"
            lines.append(f"{flags.get(field, env_name(field))}: {message}{value}")
        else:  # a rule spanning several fields
            lines.append(f"{ENV_PREFIX}* settings: {message}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, Mapping) else "..."
    return text if len(text) <= 80 else text[:77] + "..."


__all__ = [
    "ConfigError",
    "LearningSettings",
    "Settings",
    "env_name",
    "load_learning_settings",
    "load_settings",
    "redact_url",
]

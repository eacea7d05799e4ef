"""One settings object for every part of Tributary.

Values come from ``TRIBUTARY_*`` environment variables, then ``tributary.toml``
(or the file named by ``TRIBUTARY_CONFIG``), then the defaults below. Nothing
is read until :func:`load_settings` or ``Settings()`` is called.

>>> s = Settings(profile="prod", state_dir=Path("/srv/trib"))
>>> s.topic("shop.events")
'prod.shop.events'
>>> s.table_uri("bronze/events")
'/srv/trib/lake/prod/bronze/events'
>>> s.registered_model_name
'prod.plant-recommender'
>>> Settings().topic("shop.events")
'shop.events'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "TRIBUTARY_CONFIG"
DEFAULT_CONFIG_FILE = "tributary.toml"
DEV_PROFILE = "dev"


class TopicNames(BaseModel):
    """Base topic names; :meth:`Settings.topic` adds the profile prefix."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: str = "shop.events"
    orders: str = "shop.orders"
    dlq: str = "shop.dlq"
    predictions: str = "ml.predictions"
    monitor: str = "ml.monitor"
    retrain: str = "ml.retrain"
    score_requests: str = "ml.score-requests"
    scores: str = "ml.scores"


class TrainingSettings(BaseModel):
    """The learner, the retrain worker and the gates (``TRIBUTARY_TRAINING__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_days: float = Field(7.0, gt=0, le=30)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    learner_checkpoint_events: int = Field(50_000, ge=1)
    learner_checkpoint_minutes: float = Field(5.0, gt=0)
    learner_allowed_lateness_s: float = Field(3600.0, ge=0)
    learner_max_pending_per_user: int = Field(64, ge=1)
    retrain_cooldown_s: float = Field(600.0, ge=0)
    retrain_attempts: int = Field(3, ge=1, le=10)
    retrain_backoff_s: float = Field(5.0, ge=0)
    webhook_port: int = Field(15080, ge=0, le=65535)
    webhook_secret: SecretStr | None = None


class ServingSettings(BaseModel):
    """The prediction API (``TRIBUTARY_SERVING__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    canary_fraction: float = Field(0.0, ge=0, le=1)
    shadow: bool = False
    model_poll_s: float = Field(10.0, gt=0)
    default_k: int = Field(10, ge=1, le=500)
    max_candidates: int = Field(500, ge=1, le=5_000)
    prediction_queue: int = Field(10_000, ge=1)
    # where MLflow can reach this API's /v1/hooks/registry; unset: poll only
    webhook_url: str | None = None


class MonitoringSettings(BaseModel):
    """The monitor flow, its windows and its checks (``TRIBUTARY_MONITORING__*``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # event-time tumbling windows of the logged predictions; the demo uses 60 s
    window_s: float = Field(300.0, gt=0, le=86_400)
    # how far behind the newest logged prediction a window is still open
    allowed_lateness_s: float = Field(10.0, ge=0)
    # a window also closes this long (wall clock) after the last input, so a quiet
    # stream never holds statistics back
    idle_close_s: float = Field(30.0, gt=0)
    # outcome join: events this far behind their partition's newest event still count
    outcome_lateness_s: float = Field(3600.0, ge=0)
    # how long after an impression its click or purchase counts (the contract's label
    # window); the demo's simulated sessions happen in an instant and use a minute
    label_window_s: float = Field(1800.0, gt=0, le=86_400)
    # how long after a request an impression of one of its items may still arrive
    show_window_s: float = Field(300.0, gt=0, le=86_400)
    max_pending_requests: int = Field(200_000, ge=1)
    bins: int = Field(10, ge=2, le=100)
    reference_poll_s: float = Field(30.0, gt=0)
    parity_every_s: float = Field(600.0, ge=0)  # 0: the monitor never runs parity
    parity_sample: int = Field(200, ge=1)
    # differences that feature lag of up to this long explains are not mismatches
    parity_lag_allowance_s: float = Field(10.0, ge=0, le=300)


class HostPort(BaseModel):
    """Where a service listens, parsed from a URL or a bootstrap string."""

    model_config = ConfigDict(frozen=True)

    host: str
    port: int

    @property
    def is_loopback(self) -> bool:
        return self.host in {"localhost", "::1"} or self.host.startswith("127.")

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


class Settings(BaseSettings):
    """Everything configurable, validated once at start-up."""

    model_config = SettingsConfigDict(
        env_prefix="TRIBUTARY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    profile: str = Field(DEV_PROFILE, pattern=r"^[a-z][a-z0-9-]{0,31}$")
    state_dir: Path = Path(".tributary")
    lake_root: str | None = None
    lake_storage_options: dict[str, str] = Field(default_factory=dict)
    kafka_bootstrap: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    mlflow_uri: str = "http://127.0.0.1:15000"
    api_port: int = Field(8000, ge=1, le=65535)
    prometheus_port: int = Field(19090, ge=1, le=65535)
    alertmanager_port: int = Field(19093, ge=1, le=65535)
    metrics_port: int = Field(19100, ge=0, le=65535)
    api_keys: SecretStr | None = None
    topic_partitions: int = Field(4, ge=1, le=256)
    topics: TopicNames = Field(default_factory=TopicNames)
    registered_model: str = "plant-recommender"
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE)
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_file)
        return (init_settings, env_settings, toml)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(","):
            _split_host_port(server.strip())
        return value

    @field_validator("redis_url", "mlflow_uri")
    @classmethod
    def _url_has_port(cls, value: str) -> str:
        _url_host_port(value)
        return value

    # -- derived names: the profile namespaces everything that is written ---

    @property
    def is_dev(self) -> bool:
        return self.profile == DEV_PROFILE

    def topic(self, base: str) -> str:
        """The topic name for this profile: dev keeps the name, others prefix it."""
        return base if self.is_dev else f"{self.profile}.{base}"

    def all_topics(self) -> list[str]:
        return [self.topic(name) for name in self.topics.model_dump().values()]

    @property
    def lake_base(self) -> str:
        root = self.lake_root or str(self.state_dir / "lake")
        return f"{root.rstrip('/')}/{self.profile}"

    def table_uri(self, table: str) -> str:
        """Where a Delta table such as ``bronze/events`` lives for this profile."""
        return f"{self.lake_base}/{table}"

    @property
    def registered_model_name(self) -> str:
        return self.topic(self.registered_model)

    @property
    def redis_key_prefix(self) -> str:
        """Prefix of every Redis key, so two profiles can share one server."""
        return f"{self.profile}:"

    # -- addresses ----------------------------------------------------------

    @property
    def kafka_address(self) -> HostPort:
        return _split_host_port(self.kafka_bootstrap.split(",")[0].strip())

    @property
    def redis_address(self) -> HostPort:
        return _url_host_port(self.redis_url)

    @property
    def mlflow_address(self) -> HostPort:
        return _url_host_port(self.mlflow_uri)

    @property
    def prometheus_address(self) -> HostPort:
        return HostPort(host="127.0.0.1", port=self.prometheus_port)

    @property
    def alertmanager_address(self) -> HostPort:
        return HostPort(host="127.0.0.1", port=self.alertmanager_port)

    def api_key_roles(self) -> dict[str, Literal["predict", "admin"]]:
        """Parse ``key:role,key:role``; an unknown role is a configuration error."""
        if self.api_keys is None:
            return {}
        roles: dict[str, Literal["predict", "admin"]] = {}
        for item in self.api_keys.get_secret_value().split(","):
            key, sep, role = item.strip().rpartition(":")
            if not sep or not key or role not in ("predict", "admin"):
                raise ValueError("TRIBUTARY_API_KEYS must look like 'key:predict,key:admin'")
            roles[key] = "admin" if role == "admin" else "predict"
        return roles


def _split_host_port(server: str) -> HostPort:
    host, sep, port = server.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected host:port, got {server!r}")
    return HostPort(host=host.strip("[]"), port=int(port))


def _url_host_port(url: str) -> HostPort:
    parts = urlsplit(url)
    if not parts.hostname or parts.port is None:
        raise ValueError(f"expected a URL with host and port, got {url!r}")
    return HostPort(host=parts.hostname, port=parts.port)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment and config file, plus explicit overrides."""
    return Settings(**overrides)  # type: ignore[arg-type]

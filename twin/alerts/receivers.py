"""Where notifications go: webhook (Alertmanager v4 payload), Alertmanager v2 API, Kafka.

Receivers come from the `receivers:` list of the rules file or of a separate receivers
file (DCTWIN_ALERT_RECEIVERS_FILE), which is where secrets belong. A secret is given
inline (`secret`) or by environment variable name (`secret_env`); it is never returned
by the API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from twin.alerts.yaml_files import (
    LABEL_NAME,
    ConfigError,
    Duration,
    MatcherList,
    matches_all,
    parse_yaml,
    validation_error,
)

DEFAULT_GROUP_BY = ["alertname", "cdu"]


def _http_url(v: str) -> str:
    parts = urlsplit(v)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"url must be an http(s) URL, got {v!r}")
    return v.rstrip("/") if parts.path in ("", "/") else v


HttpUrlStr = Annotated[str, AfterValidator(_http_url)]


class _Receiver(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    match: MatcherList = Field(default_factory=list, description="only alerts matching all")
    send_resolved: bool = True
    retry_initial: Duration = Field(1.0, gt=0, description="first retry delay")
    retry_max: Duration = Field(60.0, gt=0, description="cap of the exponential backoff")
    give_up_after: Duration = Field(86400.0, gt=0, description="then the entry is failed")
    timeout: Duration = Field(5.0, gt=0)

    def routes(self, labels: dict[str, str]) -> bool:
        return matches_all(self.match, labels)

    def public(self) -> dict[str, Any]:
        """Configuration as the API shows it: no secrets, URLs without credentials."""
        out = self.model_dump(mode="json", exclude={"secret", "secret_env", "match"})
        out["match"] = [str(m) for m in self.match]
        if "url" in out:
            out["url"] = redact_url(out["url"])
        if hasattr(self, "secret"):
            out["has_secret"] = self.secret is not None
        return out


class WebhookReceiver(_Receiver):
    type: Literal["webhook"]
    url: HttpUrlStr
    secret: SecretStr | None = None
    secret_env: str | None = None
    group_by: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUP_BY))
    max_alerts: int = Field(0, ge=0, description="0: no limit; else truncatedAlerts counts")

    @field_validator("group_by")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for k in v:
            if not LABEL_NAME.match(k):
                raise ValueError(f"invalid label name {k!r} in group_by")
        return v

    @model_validator(mode="after")
    def _secret_from_env(self) -> WebhookReceiver:
        if self.secret_env:
            value = os.environ.get(self.secret_env)
            if not value:
                raise ValueError(
                    f"secret_env: environment variable {self.secret_env} is not set or empty"
                )
            self.secret = SecretStr(value)
        return self


class AlertmanagerReceiver(_Receiver):
    """Pushes to a real Alertmanager's POST /api/v2/alerts. Firing alerts are re-sent every
    `resend_interval` with endsAt = now + 4 x resend_interval, like Prometheus does."""

    type: Literal["alertmanager"]
    url: HttpUrlStr = Field(description="base URL, e.g. http://alertmanager:9093")
    resend_interval: Duration = Field(60.0, gt=0)

    @property
    def group_by(self) -> list[str]:
        return []  # Alertmanager groups by itself


class KafkaReceiver(_Receiver):
    """Publishes each notification (the webhook v4 document) to a Kafka topic."""

    type: Literal["kafka"]
    topic: str = Field("alerts", min_length=1)
    bootstrap: str | None = Field(None, description="default: the platform's Kafka")
    group_by: list[str] = Field(default_factory=lambda: list(DEFAULT_GROUP_BY))
    max_alerts: int = 0


Receiver = Annotated[
    WebhookReceiver | AlertmanagerReceiver | KafkaReceiver, Field(discriminator="type")
]
_RECEIVERS = TypeAdapter(list[Receiver])


def redact_url(url: str) -> str:
    """Keep scheme, host and port; paths and queries of webhook URLs often carry tokens."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    tail = "/***" if (p.path.strip("/") or p.query) else ""
    return f"{p.scheme}://{host}{tail}"


def parse_receivers(
    raw: list[dict], source: str, lines: dict, prefix: tuple = ("receivers",)
) -> list[Receiver]:
    try:
        receivers = _RECEIVERS.validate_python(raw)
    except ValidationError as exc:
        shifted = {k[len(prefix) :]: v for k, v in lines.items() if k[: len(prefix)] == prefix}
        err = validation_error(exc, source, shifted)
        raise ConfigError(
            source,
            err.line,
            f"receivers{err.message}" if err.message.startswith("[") else err.message,
        ) from exc
    names: set[str] = set()
    for i, r in enumerate(receivers):
        if r.name in names:
            raise ConfigError(
                source,
                lines.get((*prefix, i, "name")),
                f"receivers[{i}].name: duplicate receiver {r.name!r}",
            )
        names.add(r.name)
    return receivers


def load_receivers(path: str | Path) -> list[Receiver]:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(str(p), None, f"cannot read receivers file: {exc.strerror}") from exc
    data, lines = parse_yaml(text, str(p))
    if not isinstance(data, dict) or set(data) - {"receivers"}:
        raise ConfigError(str(p), 1, "a receivers file is a mapping with only receivers: [...]")
    return parse_receivers(data.get("receivers") or [], str(p), lines)

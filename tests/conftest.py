"""Shared fixtures: a real Kafka-protocol broker for the whole session.

With KAFKA_BOOTSTRAP set the tests use that cluster instead; otherwise a tansu broker is
started on a free loopback port. A missing broker binary fails loudly, never skips.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dctwin.broker import DevBroker
from dctwin.settings import Settings
from domain.site import EXAMPLE_SITE, Site, load_site
from domain.topics import ensure_topics

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        ensure_topics(external, 4)
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    broker = DevBroker(log_path=log).start()
    try:
        ensure_topics(broker.bootstrap, 4)
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def site() -> Site:
    return load_site(EXAMPLE_SITE)


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def settings(tmp_path, kafka_bootstrap, unique) -> Settings:
    s = Settings()
    s.kafka_bootstrap = kafka_bootstrap
    s.db_path = tmp_path / "twin.duckdb"
    s.consumer_group = f"test-{unique}"
    return s

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import ConfigError
from publish.consumers import BaseConsumer, ConsumerManager
from publish.consumers.console import ConsoleConsumer
from tests.publish.helpers import ws_settings


class Recorder(BaseConsumer):
    """Written exactly as for the original service."""

    def __init__(self, name: str = "recorder") -> None:
        super().__init__(name)
        self.got: list[dict[str, Any]] = []

    def validate(self) -> None:
        pass

    async def setup(self) -> None:
        pass

    async def start(self) -> None:
        self._is_running = True

    async def consume(self, data: list[dict[str, Any]]) -> None:
        if self._is_running:
            self.got.extend(data)

    async def stop(self) -> None:
        self._is_running = False


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    yield
    for name in ("recorder", "plugged", "failing"):
        ConsumerManager.unregister_consumer(name)


def test_register_and_create_by_name() -> None:
    ConsumerManager.register_consumer("recorder", Recorder)
    assert "recorder" in ConsumerManager.known_names()
    consumers = ConsumerManager.create(["console", "recorder"], ws_settings(1))
    assert [type(c) for c in consumers] == [ConsoleConsumer, Recorder]
    assert consumers[1].name == "recorder" and consumers[1].settings is not None


def test_not_a_consumer_class_is_refused() -> None:
    with pytest.raises(TypeError, match="is not a BaseConsumer subclass"):
        ConsumerManager.register_consumer("recorder", dict)  # type: ignore[arg-type]  # on purpose


def test_unknown_names_and_failed_validation_are_one_line_each() -> None:
    class Failing(Recorder):
        def validate(self) -> None:
            raise ValueError("MY_SETTING is missing")

    ConsumerManager.register_consumer("failing", Failing)
    with pytest.raises(ConfigError) as err:
        ConsumerManager.create(["nope", "failing", "console"], ws_settings(1))
    lines = str(err.value).splitlines()
    assert lines[0].startswith("unknown consumer 'nope'; known: console, failing, ")
    assert "redis" in lines[0] and "websocket" in lines[0]
    assert lines[1] == "consumer 'failing': MY_SETTING is missing"


def test_entry_point_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "myplugin.py"
    package.write_text(
        "from publish.consumers.base import BaseConsumer\n"
        "class Plugged(BaseConsumer):\n"
        "    async def consume(self, data):\n"
        "        pass\n"
    )
    dist = tmp_path / "myplugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[streamer.consumers]\nplugged = myplugin:Plugged\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugged" in ConsumerManager.known_names()
    (consumer,) = ConsumerManager.create(["plugged"], ws_settings(1))
    assert type(consumer).__name__ == "Plugged"
    sys.modules.pop("myplugin", None)


def test_consumer_modules_import_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="STREAMER_CONSUMER_MODULES: cannot import 'no_such_mod'"):
        ConsumerManager.import_modules(["no_such_mod"])
    ConsumerManager.import_modules(["examples.custom_consumer_example"])
    assert "file" in ConsumerManager.known_names()
    ConsumerManager.unregister_consumer("file")


def test_redis_consumer_needs_a_channel() -> None:
    with pytest.raises(ConfigError) as err:
        ConsumerManager.create(["redis"], ws_settings(1, redis_channel=" "))
    assert str(err.value) == (
        "consumer 'redis': STREAMER_REDIS_CHANNEL is empty; name the pub/sub channel"
    )

"""Which consumers exist: built-ins, registered classes, entry points, and modules to import.

A consumer class is found by name, in this order: `ConsumerManager.register_consumer(name, cls)`
(from user code, or from a module named in STREAMER_CONSUMER_MODULES), an entry point of the
`streamer.consumers` group (`name = "package.module:Class"`), then the built-ins.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar

from common.errors import ConfigError
from publish.consumers.base import BaseConsumer

if TYPE_CHECKING:
    from common.settings import PublishSettings

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "streamer.consumers"

_BUILTINS = {
    "console": "publish.consumers.console:ConsoleConsumer",
    "postgres": "publish.consumers.postgres:PostgresConsumer",
    "redis": "publish.consumers.redis_pubsub:RedisConsumer",
    "websocket": "publish.consumers.websocket:WebSocketConsumer",
}


class ConsumerManager:
    """The registry of consumer classes, and the factory of the enabled ones."""

    _registry: ClassVar[dict[str, type[BaseConsumer]]] = {}

    @classmethod
    def register_consumer(cls, name: str, consumer_class: type[BaseConsumer]) -> None:
        if not (isinstance(consumer_class, type) and issubclass(consumer_class, BaseConsumer)):
            raise TypeError(f"consumer {name!r}: {consumer_class!r} is not a BaseConsumer subclass")
        cls._registry[name] = consumer_class

    @classmethod
    def unregister_consumer(cls, name: str) -> None:
        cls._registry.pop(name, None)

    @classmethod
    def import_modules(cls, modules: list[str]) -> None:
        """Import the user's modules so that they register their consumers."""
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ConfigError(
                    f"STREAMER_CONSUMER_MODULES: cannot import {module!r}: {exc}"
                ) from None

    @classmethod
    def known_names(cls) -> list[str]:
        names = set(_BUILTINS) | set(cls._registry)
        names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        return sorted(names)

    @classmethod
    def consumer_class(cls, name: str) -> type[BaseConsumer]:
        if name in cls._registry:
            return cls._registry[name]
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name == name:
                loaded = ep.load()
                cls.register_consumer(name, loaded)
                return cls._registry[name]
        if name in _BUILTINS:
            module_name, _, class_name = _BUILTINS[name].partition(":")
            loaded = getattr(importlib.import_module(module_name), class_name)
            cls.register_consumer(name, loaded)
            return cls._registry[name]
        raise ConfigError(
            f"unknown consumer {name!r}; known: {', '.join(cls.known_names())} "
            "(register your own with ConsumerManager.register_consumer or an entry point "
            f"in the {ENTRY_POINT_GROUP!r} group)"
        )

    @classmethod
    def create(cls, names: list[str], settings: PublishSettings) -> list[BaseConsumer]:
        """Instances of the named consumers, settings attached and validated.

        Every unknown name and every failed validation is reported, one line each.
        """
        consumers: list[BaseConsumer] = []
        problems: list[str] = []
        for name in dict.fromkeys(names):
            try:
                consumer = cls.consumer_class(name)(name)
            except ConfigError as exc:
                problems.append(str(exc))
                continue
            consumer.settings = settings
            try:
                consumer.validate()
            except (ValueError, ConfigError) as exc:
                problems.append(f"consumer {name!r}: {exc}")
                continue
            consumers.append(consumer)
        if not names:
            problems.append(
                "STREAMER_ENABLED_CONSUMERS: no consumer enabled; known: "
                + ", ".join(cls.known_names())
            )
        if problems:
            raise ConfigError("\n".join(problems))
        return consumers

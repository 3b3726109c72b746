"""The sinks the gateway ships, by configuration type, and :func:`build_sink` to make one from its config.

=========  ============================  ====================================================
type       class                         sends to
=========  ============================  ====================================================
``http``   :class:`.http.HTTPSink`       an HTTP(S) endpoint, one POST per delivery (aiohttp)
``mllp``   :class:`.mllp.MLLPSink`       an HL7 v2 receiver over MLLP(S), judged by its ACK
``file``   :class:`.file.FileSink`       one file per delivery in a folder, written atomically
``memory`` :class:`.memory.MemorySink`   a list in memory, for tests only
=========  ============================  ====================================================

Every class implements :class:`gateway.sink.Sink` and is built as
``XSink(name, config)`` with its own config model from :mod:`gateway.config`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.config import SinkConfig
from gateway.errors import ConfigError
from gateway.sink import Sink
from gateway.sinks.file import FileSink
from gateway.sinks.http import HTTPSink
from gateway.sinks.memory import MemorySink
from gateway.sinks.mllp import MLLPSink

__all__ = ["SINK_TYPES", "FileSink", "HTTPSink", "MLLPSink", "MemorySink", "build_sink"]

SINK_TYPES: dict[str, Callable[[str, Any], Sink]] = {
    "http": HTTPSink,
    "mllp": MLLPSink,
    "file": FileSink,
    "memory": MemorySink,
}


def build_sink(name: str, config: SinkConfig) -> Sink:
    """The sink named ``name`` for ``config`` (not yet opened); an unknown type is a ConfigError."""
    factory = SINK_TYPES.get(config.type)
    if factory is None:
        from adapters import BUILTIN_SINKS  # the platforms' sinks: the core knows adapters by registry only

        factory = BUILTIN_SINKS.get(config.type)
    if factory is None:
        raise ConfigError(
            f"sinks.{name}.type: {config.type!r} is not a sink type; expected one of "
            f"{', '.join(sorted(SINK_TYPES))}"
        )
    return factory(name, config)

"""Structured JSON logs. Log ids, types, offsets and counts only: never names, dates of birth or note text."""

from __future__ import annotations

import faulthandler
import logging
import sys
import time
from typing import Any, TextIO

from pythonjsonlogger.orjson import OrjsonFormatter

LINEAGE_LOGGER = "carebus.lineage"
"""The mapper's audit lineage: one JSON line per inbound event (inbound position -> resource ids and output
positions). Its lines are written a settled batch at a time: see :class:`BatchedLineHandler`."""


class BatchedLineHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that formats each record when it is logged but writes the waiting lines only on
    ``flush()`` (or once ``capacity`` lines wait), in one write.

    The mapper logs a settled batch's lineage, one line per event, and then flushes: a write (and a release of
    the GIL to the Kafka client's threads) per batch instead of one per event. logging.shutdown() flushes
    what is left at exit."""

    def __init__(self, stream: TextIO, capacity: int = 10_000) -> None:
        super().__init__(stream)
        self.capacity = capacity
        self._lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        if len(self._lines) >= self.capacity:
            self.flush()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # an RLock, created by Handler.__init__
            if self._lines:
                text = "\n".join(self._lines) + "\n"
                self._lines.clear()
                self.stream.write(text)
            super().flush()


_JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
_RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def json_formatter(service: str) -> logging.Formatter:
    """One JSON object per line: time, level, logger, message, service and the record's extra fields."""
    return OrjsonFormatter(_JSON_FORMAT, rename_fields=_RENAMED, static_fields={"service": service})


class LineageFormatter(OrjsonFormatter):
    """The same JSON line for lineage records, which are logged as a dict message holding every field: the
    record's own attributes are not searched for extra fields (python-json-logger's add_fields hook), so
    ``extra=`` is not written: log a dict to the lineage logger."""

    _second: int = -1
    _second_text: str = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """logging's own format (``2026-11-26 01:02:03,456``); the text of the second is kept, since a settled
        batch's lines are written within a few milliseconds of each other."""
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._second_text, record.msecs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:
        for name in self._required_fields:
            log_data[self._get_rename(name)] = record.__dict__.get(name)
        log_data.update(self.static_fields)
        log_data.update(message_dict)


def lineage_formatter(service: str) -> logging.Formatter:
    return LineageFormatter(_JSON_FORMAT, rename_fields=_RENAMED, static_fields={"service": service})


def configure_logging(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    faulthandler.enable()  # a crash in native code prints the Python stacks (no values) instead of nothing
    stream = stream or sys.stderr
    formatter = json_formatter(service)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    lineage_handler = BatchedLineHandler(stream)
    lineage_handler.setFormatter(lineage_formatter(service))
    lineage = logging.getLogger(LINEAGE_LOGGER)
    lineage.handlers[:] = [lineage_handler]
    lineage.propagate = False
    # The logging HOWTO's "Optimization": no log line shows the caller's file and line, a thread or a process,
    # so do not compute them for every record (the mapper writes a lineage line per event).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kafka-python logs connection chatter (with broker addresses only) at INFO; keep it at WARNING.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)

"""Structured JSON logs. Log ids, types, offsets and counts only: never names, dates of birth or note text."""

from __future__ import annotations

import faulthandler
import logging
import sys
from typing import TextIO

from pythonjsonlogger.orjson import OrjsonFormatter


def configure_logging(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    faulthandler.enable()  # a crash in native code prints the Python stacks (no values) instead of nothing
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        OrjsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )
    )
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

"""Kafka readiness: a background probe that reports whether the broker answers and our topics exist.

Readiness goes false when the broker goes away and recovers by itself when it comes back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from services.common.kafka import client_config
from services.common.metrics import Metrics
from services.common.settings import Settings

log = logging.getLogger(__name__)


class KafkaReadiness:
    """Polls the broker every ``interval_s`` in a daemon thread; ``ready`` is the last answer."""

    def __init__(self, settings: Settings, required_topics: Iterable[str], metrics: Metrics,
                 interval_s: float = 3.0) -> None:
        self._settings = settings
        self._required = frozenset(required_topics)
        self._metrics = metrics
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._admin: KafkaAdminClient | None = None
        self.ready = False
        self.reason = "not checked yet"

    def check_once(self) -> bool:
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(**client_config(self._settings, "carebus-readiness"))
            topics = set(self._admin.list_topics())
            missing = self._required - topics
            self.ready, self.reason = (not missing), (f"missing topics: {sorted(missing)}" if missing else "ok")
        except (KafkaError, OSError) as exc:
            self.ready, self.reason = False, f"kafka unreachable: {type(exc).__name__}"
            self._close_admin()
        self._metrics.kafka_ready.set(1 if self.ready else 0)
        return self.ready

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            try:
                admin.close()
            except (KafkaError, OSError):
                log.debug("admin close failed")

    def _run(self) -> None:
        while not self._stop.is_set():
            was_ready = self.ready
            self.check_once()
            if was_ready != self.ready:
                log.warning("kafka readiness changed", extra={"ready": self.ready, "reason": self.reason})
            self._stop.wait(self._interval_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kafka-readiness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._close_admin()

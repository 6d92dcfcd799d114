"""The JSON log set-up: the lineage logger's lines are written a batch at a time, in one write."""

from __future__ import annotations

import io
import logging

import orjson

from services.common.log import LINEAGE_LOGGER, BatchedLineHandler, json_formatter, lineage_formatter


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def handler_on(stream: io.StringIO, capacity: int = 10_000) -> tuple[logging.Logger, BatchedLineHandler]:
    logger = logging.getLogger(f"{LINEAGE_LOGGER}.test-{id(stream)}")
    handler = BatchedLineHandler(stream, capacity=capacity)
    handler.setFormatter(json_formatter("mapper"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler


def test_lines_wait_for_flush_and_go_out_in_one_write() -> None:
    stream = CountingStream()
    logger, handler = handler_on(stream)
    for offset in range(5):
        logger.info("event mapped", extra={"event_id": f"e{offset}", "inbound": f"t/0/{offset}"})
    assert stream.getvalue() == ""
    handler.flush()
    assert stream.writes == 1
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event_id"] for line in lines] == ["e0", "e1", "e2", "e3", "e4"]
    assert lines[0]["service"] == "mapper" and lines[0]["message"] == "event mapped"
    handler.flush()  # nothing waiting: nothing written
    assert stream.writes == 1


def test_a_full_buffer_is_written_without_waiting_for_flush() -> None:
    stream = CountingStream()
    logger, _ = handler_on(stream, capacity=3)
    for offset in range(7):
        logger.info("event mapped", extra={"event_id": f"e{offset}"})
    assert [orjson.loads(line)["event_id"] for line in stream.getvalue().splitlines()] == [
        "e0", "e1", "e2", "e3", "e4", "e5"]
    assert stream.writes == 2


def test_what_is_left_is_written_when_the_handler_closes() -> None:
    stream = CountingStream()
    logger, handler = handler_on(stream)
    logger.info("event mapped", extra={"event_id": "last"})
    logging.shutdown([lambda: handler])  # what logging does at interpreter exit, for this handler
    assert orjson.loads(stream.getvalue())["event_id"] == "last"


def test_the_lineage_formatter_writes_the_line_the_general_one_does_for_a_dict_message() -> None:
    fields = {"message": "event mapped", "event_id": "e1", "inbound": "t/0/7", "outputs": ["b/0/9"],
              "resources": ("Patient/p1", "Provenance/v1"), "dead_letter_reason": None}
    record = logging.LogRecord(LINEAGE_LOGGER, logging.INFO, "", 0, fields, None, None)
    general, lineage = json_formatter("mapper"), lineage_formatter("mapper")
    assert orjson.loads(lineage.format(record)) == orjson.loads(general.format(record))
    line = orjson.loads(lineage.format(record))
    assert line["logger"] == LINEAGE_LOGGER and line["level"] == "INFO" and line["service"] == "mapper"
    assert line["resources"] == ["Patient/p1", "Provenance/v1"] and "time" in line


def test_the_lineage_formatter_writes_logging_s_own_time() -> None:
    general, lineage = json_formatter("mapper"), lineage_formatter("mapper")
    for created in (1_767_600_000.0, 1_767_600_000.25, 1_767_600_000.999, 1_767_600_001.5, 1_767_600_000.5):
        record = logging.LogRecord(LINEAGE_LOGGER, logging.INFO, "", 0, {"message": "m"}, None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert orjson.loads(lineage.format(record))["time"] == orjson.loads(general.format(record))["time"]

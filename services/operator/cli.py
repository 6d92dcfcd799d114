"""The `carebus` operator command line.

    carebus run intake|mapper|record|notify|outcomes|general   run one service in the foreground
    carebus stack                        the main job: local broker + every service + sample journey
    carebus topics create|check          create the catalogue's topics / compare the cluster with it
    carebus status                       services, topic throughput, consumer lag, dead letters, alerts waiting
    carebus deadletters list             what is on the dead-letter topic (ids, reasons; no PHI)
    carebus deadletters replay           re-publish dead letters after a fix (--dry-run; never twice)
    carebus send-sample                  POST the sample care journey to a running intake
    carebus broker [--port] [--workdir]  the local Kafka broker in the foreground (keeps its data)
    carebus kafka TOOL ARGS...           Kafka's own tools: console-consumer, console-producer, consumer-groups,
                                         topics (--bootstrap-server added: carebus's Kafka)
    carebus subscriptions list|status ID|replay ID   notify's subscriptions; replay re-sends dead letters
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import runpy
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Annotated, Literal, ParamSpec, TypeVar

import httpx
import orjson
import typer
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from rich.console import Console
from rich.table import Table

from services.common.errors import BrokerUnavailable
from services.common.kafka import client_config, ensure_topics
from services.common.settings import REPO_ROOT, Settings
from services.common.topics import CATALOGUE
from services.operator import deadletters, kafka_tools, status, subscriptions

app = typer.Typer(help="carebus operator tools: services, local stack, topics, status, dead letters.",
                  no_args_is_help=True)
topics_app = typer.Typer(help="Topics of the catalogue (services/common/topics.py).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: inspect and replay.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(dlq_app, name="deadletters")
subs_app = typer.Typer(help="Subscriptions (notify): list, status, replay dead letters.", no_args_is_help=True)
app.add_typer(subs_app, name="subscriptions")
console = Console(soft_wrap=True)  # one answer, one line: never wrapped at 80 columns

ServiceName = Literal["intake", "mapper", "record", "notify", "outcomes", "general"]


@dataclass
class GlobalOptions:
    kafka_timeout_s: float | None = None


OPTIONS = GlobalOptions()


@app.callback()
def global_options(
    kafka_timeout: Annotated[float | None, typer.Option(
        "--kafka-timeout", min=0.5, help="seconds to wait for Kafka before giving up (default "
        "CAREBUS_KAFKA_REQUEST_TIMEOUT_S, 10)")] = None,
) -> None:
    """carebus operator tools. Kafka is CAREBUS_KAFKA_BOOTSTRAP, else the local broker on 127.0.0.1 at
    CAREBUS_LOCAL_KAFKA_PORT (the one `make demo` and `carebus broker` start)."""
    OPTIONS.kafka_timeout_s = kafka_timeout


def _settings() -> Settings:
    """The settings, with the CLI's rules: without CAREBUS_KAFKA_BOOTSTRAP the local broker (127.0.0.1 at
    CAREBUS_LOCAL_KAFKA_PORT) is the cluster; --kafka-timeout bounds every wait on Kafka."""
    settings = Settings()
    updates: dict[str, object] = {}
    if "kafka_bootstrap" not in settings.model_fields_set:
        updates["kafka_bootstrap"] = f"127.0.0.1:{settings.local_kafka_port}"
    if OPTIONS.kafka_timeout_s is not None:
        updates["kafka_request_timeout_s"] = OPTIONS.kafka_timeout_s
    return settings.model_copy(update=updates)


@contextlib.contextmanager
def waiting_for_kafka(settings: Settings) -> Iterator[None]:
    """While the block waits on Kafka, say so on stderr every two seconds, with the time left."""
    done = threading.Event()
    started = time.monotonic()

    def report() -> None:
        while not done.wait(2.0):
            elapsed = time.monotonic() - started
            print(f"waiting for Kafka at {settings.kafka_bootstrap}: {elapsed:.0f}s (gives up after about "
                  f"{settings.kafka_request_timeout_s:.0f}s; --kafka-timeout)", file=sys.stderr, flush=True)

    reporter = threading.Thread(target=report, name="kafka-wait", daemon=True)
    reporter.start()
    try:
        yield
    finally:
        done.set()
        reporter.join()


def _kafka_failed(settings: Settings, exc: BaseException) -> None:
    source = "CAREBUS_KAFKA_BOOTSTRAP" if "kafka_bootstrap" in Settings().model_fields_set else \
        "the local broker: CAREBUS_LOCAL_KAFKA_PORT, or set CAREBUS_KAFKA_BOOTSTRAP"
    console.print(f"[red]Kafka unreachable or failing at {settings.kafka_bootstrap} ({source}): "
                  f"{type(exc).__name__}[/red]")


P = ParamSpec("P")
R = TypeVar("R")


def kafka_errors(command: Callable[P, R]) -> Callable[P, R]:
    """An unreachable or failing Kafka is a one-line answer and exit code 2, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        settings = _settings()
        try:
            with waiting_for_kafka(settings):
                return command(*args, **kwargs)
        except (BrokerUnavailable, KafkaError, OSError) as exc:
            _kafka_failed(settings, exc)
            raise typer.Exit(2) from exc

    return wrapper


def _dev_tool(module: str, command: str) -> ModuleType:
    """A module of devstack/, the demo and development tooling that lives beside the source and is neither in the
    product package nor in the image: imported only when a development command runs."""
    if importlib.util.find_spec("devstack") is None and (REPO_ROOT / "devstack" / "__init__.py").is_file():
        sys.path.append(str(REPO_ROOT))  # an editable install's script runs from .venv/bin, beside the checkout
    try:
        return importlib.import_module(f"devstack.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != "devstack":
            raise
        console.print(f"[red]`carebus {command}` is a development tool: it runs from a source checkout "
                      "(make demo), not from the image[/red]")
        raise typer.Exit(2) from exc


@app.command()
def run(service: Annotated[str, typer.Argument(help="intake, mapper, record, notify, outcomes or general")]) -> None:
    """Run one service in the foreground (SIGTERM stops it gracefully)."""
    if service not in ("intake", "mapper", "record", "notify", "outcomes", "general"):
        raise typer.BadParameter("choose intake, mapper, record, notify, outcomes or general")
    runpy.run_module(f"services.{service}", run_name="__main__")


@app.command()
def stack(no_wait: Annotated[bool, typer.Option(help="stop after the journey")] = False) -> None:
    """Start a local broker and every service, replay the sample care journey."""
    _dev_tool("__main__", "stack").main(["--no-wait"] if no_wait else [])


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def kafka(
    ctx: typer.Context,
    tool: Annotated[str, typer.Argument(help=", ".join(kafka_tools.TOOLS))],
) -> None:
    """Run one of Apache Kafka's own tools (kafka-console-consumer, kafka-consumer-groups, ...) against carebus's
    Kafka; arguments after the tool's name are the tool's own (e.g. --topic T --from-beginning). The tools are
    resolved from Maven Central on first use."""
    settings = _settings()
    try:
        argv = kafka_tools.command(tool, ctx.args, settings.kafka_bootstrap, settings.cache_dir)
    except kafka_tools.KafkaToolsError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    try:
        code = subprocess.run(argv, check=False).returncode  # noqa: S603 - java and the tool's own arguments
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command()
def broker(
    port: Annotated[int | None, typer.Option(help="port (default CAREBUS_LOCAL_KAFKA_PORT, 9092)")] = None,
    workdir: Annotated[str | None, typer.Option(
        help="where it keeps its data (default .cache/kafka/run-<port>); kept across restarts")] = None,
) -> None:
    """Run the local Kafka broker (KRaft) in the foreground until Ctrl-C or SIGTERM, as `make demo` does."""
    local_broker = _dev_tool("local_broker", "broker")
    argv = ["start", "--port", str(port or _settings().local_kafka_port)]
    if workdir is not None:
        argv += ["--workdir", workdir]
    try:
        local_broker.main(argv)
    except local_broker.BrokerStartError as exc:
        console.print(f"[red]the local broker did not start: {exc}[/red]")
        raise typer.Exit(2) from exc


@topics_app.command("create")
@kafka_errors
def topics_create() -> None:
    """Create the catalogue's topics that are missing."""
    settings = _settings()
    try:
        created = ensure_topics(settings, CATALOGUE)
    except BrokerUnavailable as exc:
        console.print(f"[red]Kafka unreachable at {settings.kafka_bootstrap}: {exc}[/red]")
        raise typer.Exit(2) from exc
    console.print(f"created {len(created)} topic(s): {', '.join(created) or '-'}")


@topics_app.command("check")
@kafka_errors
def topics_check() -> None:
    """Compare the cluster's topics with the catalogue; exit 1 when one is missing."""
    settings = _settings()
    admin = KafkaAdminClient(**client_config(settings, "carebus-operator"))
    try:
        described = {t["name"]: t for t in admin.describe_topics([s.name(settings.topic_prefix)
                                                                    for s in CATALOGUE])}
    finally:
        admin.close()
    table = Table("topic", "exists", "partitions", "cleanup policy (catalogue)")
    missing = 0
    for spec in CATALOGUE:
        name = spec.name(settings.topic_prefix)
        info = described.get(name)
        exists = info is not None and not info.get("error_code")
        missing += not exists
        table.add_row(name, "yes" if exists else "MISSING",
                      str(len(info.get("partitions", []))) if exists and info else "-", spec.cleanup_policy)
    console.print(table)
    if missing:
        raise typer.Exit(1)


@app.command("status")
def show_status(window: Annotated[float, typer.Option(help="seconds to sample throughput")] = 2.0) -> None:
    """Services up, per-topic throughput, consumer lag, dead-letter depth, alerts waiting."""
    settings = _settings()
    services = Table("service", "ready", "detail", title="services")
    for s in status.service_status(settings):
        services.add_row(s.name, "yes" if s.ready else "NO", s.detail)
    console.print(services)
    try:
        with waiting_for_kafka(settings):
            topics = status.topic_status(settings, window)
            lags = status.group_lags(settings, status.default_groups(settings))
            replayed = len(deadletters.read_replayed(settings))
            depth = status.dead_letter_depth(settings, replayed)
    except (BrokerUnavailable, KafkaError, OSError) as exc:
        _kafka_failed(settings, exc)
        raise typer.Exit(2) from exc
    topic_table = Table("topic", "records", "records/s", title="topics")
    for t in topics:
        topic_table.add_row(t.topic, str(t.records), f"{t.per_second:.1f}")
    console.print(topic_table)
    lag_table = Table("consumer group", "topic", "lag", title="consumer lag")
    for lag in lags:
        lag_table.add_row(lag.group, lag.topic, str(lag.lag))
    console.print(lag_table)
    alerts_waiting = next((g.lag for g in lags if g.group == settings.alerts_group_id), 0)
    console.print(f"dead letters waiting: {depth}   safety alerts waiting: {alerts_waiting}")


@dlq_app.command("list")
@kafka_errors
def dlq_list(reason: Annotated[str | None, typer.Option(help="only this reason")] = None,
             limit: Annotated[int, typer.Option(help="rows at most")] = 50) -> None:
    """List dead letters: position, reason, event type and id, and the problem (no PHI)."""
    settings = _settings()
    letters = [d for d in deadletters.read_dead_letters(settings) if reason is None or d.reason == reason]
    replayed = deadletters.read_replayed(settings)
    table = Table("partition:offset", "reason", "event type", "event id", "replayed", "message",
                  title=f"{len(letters)} dead letter(s)")
    for d in letters[:limit]:
        table.add_row(d.ledger_key, d.reason, d.event_type, d.event_id,
                      "yes" if d.ledger_key in replayed else "no", d.message[:80])
    console.print(table)


@dlq_app.command("replay")
@kafka_errors
def dlq_replay(reason: Annotated[str | None, typer.Option(help="only this reason")] = None,
               event_type: Annotated[str | None, typer.Option(help="only this event type")] = None,
               dry_run: Annotated[bool, typer.Option("--dry-run", help="show, write nothing")] = False) -> None:
    """Re-publish dead letters to the topic they came from; each one at most once."""
    chosen = deadletters.replay(_settings(), reason=reason, event_type=event_type, dry_run=dry_run)
    verb = "would replay" if dry_run else "replayed"
    console.print(f"{verb} {len(chosen)} dead letter(s)")
    for d in chosen:
        console.print(f"  {d.ledger_key}  {d.reason:<20} {d.event_type}  {d.event_id}")


@app.command("send-sample")
def send_sample(url: Annotated[str | None, typer.Option(help="intake base URL")] = None) -> None:
    """POST the sample care journey to a running intake, one event at a time."""
    sample_care_journey = _dev_tool("journey", "send-sample").sample_care_journey
    settings = _settings()
    base = url or f"http://{settings.http_host}:{settings.intake_port}"
    journey = sample_care_journey(datetime.now(UTC).replace(microsecond=0) - timedelta(days=120))
    headers = {"content-type": "application/cloudevents+json"}
    if settings.intake_token is not None:  # CAREBUS_INTAKE_TOKEN: a sender token of intake
        headers["authorization"] = f"Bearer {settings.intake_token.get_secret_value()}"
    with httpx.Client(timeout=30) as client:
        for index, event in enumerate(journey, start=1):
            try:
                response = client.post(f"{base}/events", content=orjson.dumps(event), headers=headers)
            except httpx.HTTPError as exc:
                console.print(f"[red]intake unreachable at {base}: {type(exc).__name__}[/red] (is it running? "
                              "`make demo` or `carebus run intake`; or pass --url)")
                raise typer.Exit(2) from exc
            console.print(f"{index:>3}/{len(journey)} {event['type']:<48} {response.status_code}")
            if response.status_code == 401 and settings.intake_token is None:
                console.print("[red]intake wants a sender token: set CAREBUS_INTAKE_TOKEN[/red]")
                raise typer.Exit(2)


def _age(oldest_ms: int | None) -> str:
    if oldest_ms is None:
        return "-"
    return f"{max(datetime.now(UTC).timestamp() - oldest_ms / 1000, 0):.0f}s"


@subs_app.command("list")
def subscriptions_list() -> None:
    """Every subscription: id, client, topic, status, events, pending, dead letters, oldest undelivered."""
    store = subscriptions.open_store(_settings())
    try:
        rows = subscriptions.summaries(store)
    finally:
        store.close()
    table = Table("id", "client", "topic", "status", "events", "pending", "dead", "oldest undelivered",
                  title=f"{len(rows)} subscription(s)")
    for r in rows:
        table.add_row(r.sub.id, r.sub.client, r.sub.topic.rsplit("/", 1)[1], r.sub.status,
                      str(r.sub.events_since_start), str(r.pending), str(r.dead), _age(r.oldest_pending_ms))
    console.print(table)


@subs_app.command("status")
def subscriptions_status(subscription_id: Annotated[str, typer.Argument(help="Subscription id")]) -> None:
    """One subscription: status and its reason, counters, filters, the dead letters' reasons."""
    store = subscriptions.open_store(_settings())
    try:
        found = next((r for r in subscriptions.summaries(store) if r.sub.id == subscription_id), None)
        dead = [e for e in store.events(subscription_id, limit=100_000) if e.state == "dead"]
    finally:
        store.close()
    if found is None:
        console.print(f"[red]no subscription {subscription_id}[/red]")
        raise typer.Exit(1)
    sub = found.sub
    console.print(f"subscription {sub.id}  client {sub.client}  status [bold]{sub.status}[/bold]"
                  + (f"  ({sub.error})" if sub.error else ""))
    filters = ", ".join(f.text(sub.topic_def.resource_type) for f in sub.filters) or "-"
    console.print(f"topic {sub.topic}  filters {filters}  content {sub.content}")
    console.print(f"events since start {sub.events_since_start}  pending {found.pending}  dead letters "
                  f"{found.dead}  oldest undelivered {_age(found.oldest_pending_ms)}")
    reasons: dict[str, list[int]] = {}
    for e in dead:
        reasons.setdefault(e.dead_reason or "-", []).append(e.number)
    for reason, numbers in reasons.items():
        console.print(f"  dead: events {numbers[0]}..{numbers[-1]} ({len(numbers)}): {reason}")


@subs_app.command("replay")
def subscriptions_replay(subscription_id: Annotated[str, typer.Argument(help="Subscription id")]) -> None:
    """Re-send a subscription's dead letters (same event numbers, in order) and make it active again."""
    store = subscriptions.open_store(_settings())
    try:
        if store.get(subscription_id) is None:
            console.print(f"[red]no subscription {subscription_id}[/red]")
            raise typer.Exit(1)
        count = store.replay(subscription_id)
    finally:
        store.close()
    console.print(f"{count} dead letter(s) of {subscription_id} pending again; the subscription is active")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""``predict`` and ``jobs ...``: the client's command line.

Two programs run these commands: the ``ferry-client`` script of this distribution (``main``), and the
service's ``ferry`` command, which registers them with ``add_commands`` next to ``serve`` and
``train``. The CSV / JSON Lines helpers (``ferry_client.io``) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry_client.sync import Client

PROG = "ferry-client"
DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "FERRY_TOKEN"
EXIT_FAILED = 1  # the server refused, the job failed, a timeout
EXIT_INPUT = 2  # the input file cannot be used (argparse also exits 2 on bad usage)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("FERRY_URL", DEFAULT_URL),
        help="service base URL (default: $FERRY_URL or %(default)s)",
    )
    parser.add_argument(
        "--http-timeout", type=float, default=30.0, help="seconds per HTTP request (default: %(default)s)"
    )
    parser.add_argument("--retries", type=int, default=5, help="retries on 429/503 and failed connections (default: 5)")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"API key or OIDC access token, sent as a bearer credential (default: ${TOKEN_ENV}; prefer the "
        "variable: an option is visible to other users in the process list)",
    )


def _records_input(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", required=True, help="records: .csv (header = feature names) or .jsonl; - = stdin")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="input format (default: from the extension)")
    parser.add_argument("--model", help="model name (default: the served model)")


def main(argv: list[str] | None = None) -> int:
    """The ``ferry-client`` program."""
    from ferry_client._version import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="Predict and run jobs through a ferry service.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    add_commands(parser.add_subparsers(dest="command", required=True), PROG)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser], prog: str = "ferry") -> None:
    """Add ``predict`` and ``jobs`` to a program's subcommands; ``prog`` starts their error messages."""
    predict = commands.add_parser(
        "predict",
        help="predict a CSV or JSON Lines file through a running service",
        description="Send every record of a file to the service (batches, concurrent, retried) and write one "
        "output row per input row, in input order: prediction, proba_<class>...",
    )
    _connection(predict)
    _records_input(predict)
    predict.add_argument("--out", default="-", help="output .csv or .jsonl (default: JSON Lines on stdout)")
    predict.add_argument("--out-format", choices=("csv", "jsonl"), help="output format (default: from --out)")
    predict.add_argument("--batch-size", type=int, default=500, help="records per request (default: 500)")
    predict.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line on stderr (default: only when stderr is a terminal)",
    )
    predict.set_defaults(func=_predict, prog=prog)

    jobs = commands.add_parser("jobs", help="asynchronous prediction jobs (each command prints the job JSON)")
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = actions.add_parser("submit", help="queue a job for the records of a file")
    _connection(submit)
    _records_input(submit)
    submit.add_argument("--callback-url", help="POST the finished job here (signed, Standard Webhooks)")
    submit.add_argument("--metadata", type=json.loads, help="JSON object stored with the job")
    submit.add_argument("--idempotency-key", help="Idempotency-Key header (default: a fresh UUID)")
    submit.add_argument("--wait", action="store_true", help="wait for the job to end; exit 1 unless it succeeded")
    _waiting(submit)
    submit.set_defaults(func=_jobs_submit, prog=prog)
    for name, text, func in (
        ("status", "print a job", _jobs_status),
        ("wait", "wait for a job to end; exit 1 unless it succeeded", _jobs_wait),
        ("cancel", "cancel a queued or running job", _jobs_cancel),
        ("redeliver", "send a finished job's callback again", _jobs_redeliver),
    ):
        action = actions.add_parser(name, help=text)
        _connection(action)
        action.add_argument("id", help="job id")
        if name == "wait":
            _waiting(action)
        action.set_defaults(func=func, prog=prog)


def _waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", dest="wait_timeout", type=float, metavar="S", help="give up after S seconds")
    parser.add_argument("--events", action="store_true", help="follow the job's SSE events instead of polling")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between polls (default: 0.5)")


def _fail(args: argparse.Namespace, command: str, message: str, code: int = EXIT_FAILED) -> int:
    print(f"{args.prog} {command}: error: {message}", file=sys.stderr)
    return code


def _describe(exc: Exception) -> str:
    text = str(exc)
    details = getattr(exc, "details", None)
    if isinstance(details, list):
        for detail in details[:5]:
            if isinstance(detail, dict):
                where = ".".join(str(part) for part in detail.get("loc", []))
                text += f"\n  {where}: {detail.get('msg', detail)}"
            else:
                text += f"\n  {detail}"
    return text


def _client(args: argparse.Namespace) -> Client:
    from ferry_client import Client

    return Client(args.url, timeout=args.http_timeout, max_retries=args.retries, token=args.token)


def _predict(args: argparse.Namespace) -> int:
    from ferry_client import FerryClientError
    from ferry_client.io import InputError, Progress, classes_of, read_records, write_predictions

    if args.batch_size < 1 or args.concurrency < 1:
        return _fail(args, "predict", "--batch-size and --concurrency must be at least 1", EXIT_INPUT)
    try:
        with _client(args) as client:
            card = client.model_card(args.model)
            records = read_records(args.file, card, args.format)
            progress = Progress(args.progress if args.progress is not None else sys.stderr.isatty())
            started = time.monotonic()
            try:
                predictions = client.predict_many(
                    records, batch_size=args.batch_size, concurrency=args.concurrency, on_progress=progress
                )
            finally:
                progress.close()
            write_predictions(args.out, predictions, classes_of(card, predictions), args.out_format)
    except InputError as exc:
        return _fail(args, "predict", str(exc), EXIT_INPUT)
    except FerryClientError as exc:
        return _fail(args, "predict", _describe(exc))
    except OSError as exc:
        return _fail(args, "predict", f"{args.out}: {exc.strerror or exc}")
    elapsed = time.monotonic() - started
    rate = len(predictions) / max(elapsed, 1e-9)
    print(
        f"{args.prog} predict: {len(predictions):,} rows in {elapsed:.1f} s ({rate:,.0f} rows/s) "
        f"-> {'stdout' if args.out == '-' else args.out}",
        file=sys.stderr,
    )
    return 0


def _print_job(job: dict[str, Any]) -> int:
    print(json.dumps(job, indent=2))
    return 0


def _finished(job: dict[str, Any]) -> int:
    _print_job(job)
    return 0 if job.get("status") == "succeeded" else EXIT_FAILED


def _wait(client: Client, job_id: str, args: argparse.Namespace) -> int:
    try:
        job = client.wait_job(
            job_id, timeout=args.wait_timeout, poll_interval=args.poll_interval, use_events=args.events
        )
    except TimeoutError as exc:
        return _fail(args, "jobs wait", str(exc))
    return _finished(job)


def _run_job_command(name: str, args: argparse.Namespace, body: Callable[[Client], int]) -> int:
    from ferry_client import FerryClientError
    from ferry_client.io import InputError

    try:
        with _client(args) as client:
            return body(client)
    except InputError as exc:
        return _fail(args, f"jobs {name}", str(exc), EXIT_INPUT)
    except FerryClientError as exc:
        return _fail(args, f"jobs {name}", _describe(exc))


def _jobs_submit(args: argparse.Namespace) -> int:
    from ferry_client.io import file_format, read_records

    if args.metadata is not None and not isinstance(args.metadata, dict):
        return _fail(args, "jobs submit", "--metadata must be a JSON object", EXIT_INPUT)

    def body(client: Client) -> int:
        kind = file_format(args.file, args.format) if args.file != "-" else (args.format or "jsonl")
        card = client.model_card(args.model) if kind == "csv" else {}
        records = read_records(args.file, card, kind)
        job = client.submit_job(
            records, callback_url=args.callback_url, metadata=args.metadata, idempotency_key=args.idempotency_key
        )
        if args.wait:
            return _wait(client, job["id"], args)
        return _print_job(job)

    return _run_job_command("submit", args, body)


def _jobs_status(args: argparse.Namespace) -> int:
    return _run_job_command("status", args, lambda client: _print_job(client.get_job(args.id)))


def _jobs_wait(args: argparse.Namespace) -> int:
    return _run_job_command("wait", args, lambda client: _wait(client, args.id, args))


def _jobs_cancel(args: argparse.Namespace) -> int:
    return _run_job_command("cancel", args, lambda client: _print_job(client.cancel_job(args.id)))


def _jobs_redeliver(args: argparse.Namespace) -> int:
    return _run_job_command("redeliver", args, lambda client: _print_job(client.redeliver_callback(args.id)))

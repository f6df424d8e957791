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
import textwrap
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ferry_client.errors import FerryClientError

if TYPE_CHECKING:
    from ferry_client.io import Input
    from ferry_client.job_batches import Submitted
    from ferry_client.sync import Client

PROG = "ferry-client"
DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_ENV = "FERRY_TOKEN"
# Exit codes: stable, documented in EXIT_CODES (the commands' --help) and the README.
EXIT_FAILED = 1  # the server refused or failed, a job failed or was canceled, the service unreachable
EXIT_INPUT = 2  # the input cannot be used: bad flags, an unreadable file, records refused (line numbers given)
EXIT_TIMEOUT = 3  # --timeout passed while waiting; the jobs keep running on the server
EXIT_INTERRUPTED = 130  # Ctrl-C; submitted jobs keep running on the server

EXIT_CODES = """\
exit codes:
  0    done: every prediction written (jobs: every job succeeded)
  1    the server refused or failed (an HTTP error, a job failed or was canceled, unreachable)
  2    the input cannot be used: bad flags, an unreadable file or a record refused by the client or
       the server; the message names the file's line (1-based, a CSV's header is line 1)
  3    --timeout passed while waiting (the jobs keep running on the server)
  130  interrupted (Ctrl-C); submitted jobs keep running on the server
"""

OUTPUT = """\
output rows, one per input record, in input order (CSV with a header, or JSON Lines):
  line              the line the record starts on in the input file (1-based; a CSV's header is line 1)
  <id column>...    the values of each --id-column (not sent to the server)
  prediction        the predicted class (or value)
  proba_<class>...  one probability per class of the model card (absent for a regressor)
"""


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
    parser.add_argument(
        "--file", required=True, help="records: .csv (header = feature names) or .jsonl; - = stdin (JSON Lines)"
    )
    parser.add_argument("--format", choices=("csv", "jsonl"), help="input format (default: from the extension)")
    parser.add_argument(
        "--model",
        help="the model whose card types the CSV values and names the output's classes (default: the first "
        "served model); the records go to the model the service serves",
    )
    parser.add_argument(
        "--id-column",
        action="append",
        default=[],
        metavar="NAME",
        help="a column (JSON Lines: a key) copied from each input record to its output row instead of being "
        "sent, e.g. a customer id to join on; repeatable",
    )


def _records_output(parser: argparse.ArgumentParser, default: str | None) -> None:
    shown = "JSON Lines on stdout" if default == "-" else "with --wait, JSON Lines on stdout"
    parser.add_argument(
        "--out",
        default=default,
        help=f"output .csv or .jsonl; - = stdout (default: {shown})",
    )
    parser.add_argument(
        "--out-format", choices=("csv", "jsonl"), help="output format (default: from --out; stdout: jsonl)"
    )


def _paragraph(text: str) -> str:
    """A description wrapped by hand: the raw formatter that keeps the epilog's layout does not wrap."""
    return textwrap.fill(text, width=100)


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
    raw = argparse.RawDescriptionHelpFormatter
    predict = commands.add_parser(
        "predict",
        help="predict a CSV or JSON Lines file through a running service",
        description=_paragraph(
            "Send every record of a file to the service (batches, concurrent, retried) and write one output row "
            "per input row, in input order. A one-line summary goes to stderr."
        ),
        epilog=OUTPUT + "\n" + EXIT_CODES,
        formatter_class=raw,
    )
    _connection(predict)
    _records_input(predict)
    _records_output(predict, "-")
    predict.add_argument("--batch-size", type=int, default=500, help="records per request (default: 500)")
    predict.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line on stderr (default: only when stderr is a terminal)",
    )
    predict.set_defaults(func=_predict, prog=prog)

    jobs = commands.add_parser(
        "jobs",
        help="asynchronous prediction jobs: submit a file (and wait for its results), status, wait, cancel",
    )
    actions = jobs.add_subparsers(dest="jobs_command", required=True)
    submit = actions.add_parser(
        "submit",
        help="queue the records of a file as jobs; with --wait, write their predictions",
        description=_paragraph(
            "Queue the records of a file as one job, or as several in order when the file is over the server's "
            "limits (--job-size records, 4 MiB of JSON per job; smaller when the server says so). Without --wait: "
            "prints each job as one JSON line. With --wait: progress on stderr while the jobs run (one line "
            "redrawn on a terminal, a line per change otherwise; none with --quiet), then the predictions in "
            "--out and a one-line summary on stderr. Ctrl-C stops waiting, not the jobs: the message gives their "
            "ids, how to resume (the same command with the --idempotency-key it prints: nothing is queued twice) "
            "and how to cancel them."
        ),
        epilog=OUTPUT + "\n" + EXIT_CODES,
        formatter_class=raw,
    )
    _connection(submit)
    _records_input(submit)
    submit.add_argument("--callback-url", help="POST each finished job here (signed, Standard Webhooks)")
    submit.add_argument("--metadata", type=json.loads, help="JSON object stored with each job")
    submit.add_argument(
        "--idempotency-key",
        help="Idempotency-Key of the submission (default: a fresh UUID); jobs of a split file get KEY.START-END",
    )
    submit.add_argument(
        "--job-size",
        type=int,
        default=10_000,
        metavar="N",
        help="most records per job (default: %(default)s, the server's FERRY_JOBS__MAX_RECORDS default)",
    )
    submit.add_argument(
        "--wait", action="store_true", help="wait for the jobs to end and write their predictions to --out"
    )
    _records_output(submit, None)
    submit.add_argument("--quiet", "-q", action="store_true", help="no progress and no summary (errors only)")
    _waiting(submit)
    submit.set_defaults(func=_jobs_submit, prog=prog)
    for name, text, func in (
        ("status", "print a job", _jobs_status),
        ("wait", "wait for a job to end and print it; exit 1 unless it succeeded (3 on --timeout)", _jobs_wait),
        (
            "cancel",
            "cancel queued jobs; a running or finished job cannot be canceled (409 job_conflict, exit 1)",
            _jobs_cancel,
        ),
        (
            "redeliver",
            "send a finished job's callback again, same webhook-id (409 while a delivery is under way or "
            "without a callback_url)",
            _jobs_redeliver,
        ),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        _connection(action)
        if name == "cancel":
            action.add_argument("ids", nargs="+", metavar="id", help="job id (several: each is canceled)")
        else:
            action.add_argument("id", help="job id")
        if name == "wait":
            _waiting(action)
        action.set_defaults(func=func, prog=prog)


def _waiting(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout", dest="wait_timeout", type=float, metavar="S", help="stop waiting after S seconds (exit 3)"
    )
    parser.add_argument("--events", action="store_true", help="follow the jobs' SSE events instead of polling")
    parser.add_argument("--poll-interval", type=float, default=0.5, help="seconds between polls (default: 0.5)")


def _fail(args: argparse.Namespace, command: str, message: str, code: int = EXIT_FAILED) -> int:
    print(f"{args.prog} {command}: error: {message}", file=sys.stderr)
    return code


def _client(args: argparse.Namespace) -> Client:
    from ferry_client import Client

    return Client(args.url, timeout=args.http_timeout, max_retries=args.retries, token=args.token)


def _server_error(args: argparse.Namespace, command: str, exc: FerryClientError, source: Input | None) -> int:
    """A server error; refused records are told by their line in the input file (exit 2)."""
    from ferry_client.lines import describe

    message, about_input = describe(exc, source)
    return _fail(args, command, message, EXIT_INPUT if about_input else EXIT_FAILED)


def _destination(out: str) -> str:
    return "stdout" if out == "-" else out


def _predict(args: argparse.Namespace) -> int:
    from ferry_client.io import InputError, Progress, classes_of, read_input, write_predictions

    if args.batch_size < 1 or args.concurrency < 1:
        return _fail(args, "predict", "--batch-size and --concurrency must be at least 1", EXIT_INPUT)
    source = None
    try:
        with _client(args) as client:
            card = client.model_card(args.model)
            source = read_input(args.file, card, args.format, args.id_column)
            progress = Progress(args.progress if args.progress is not None else sys.stderr.isatty())
            started = time.monotonic()
            try:
                predictions = client.predict_many(
                    source.records, batch_size=args.batch_size, concurrency=args.concurrency, on_progress=progress
                )
            finally:
                progress.close()
            write_predictions(args.out, predictions, classes_of(card, predictions), args.out_format, source)
    except InputError as exc:
        return _fail(args, "predict", str(exc), EXIT_INPUT)
    except FerryClientError as exc:
        return _server_error(args, "predict", exc, source)
    except OSError as exc:
        return _fail(args, "predict", f"{args.out}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        return _fail(args, "predict", "interrupted; nothing was written", EXIT_INTERRUPTED)
    elapsed = time.monotonic() - started
    rate = len(predictions) / max(elapsed, 1e-9)
    print(
        f"{args.prog} predict: {len(predictions):,} rows in {elapsed:.1f} s ({rate:,.0f} rows/s) "
        f"-> {_destination(args.out)}",
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
        return _fail(args, "jobs wait", str(exc), EXIT_TIMEOUT)
    return _finished(job)


def _run_job_command(name: str, args: argparse.Namespace, body: Callable[[Client], int]) -> int:
    from ferry_client.io import InputError

    try:
        with _client(args) as client:
            return body(client)
    except InputError as exc:
        return _fail(args, f"jobs {name}", str(exc), EXIT_INPUT)
    except FerryClientError as exc:
        return _fail(args, f"jobs {name}", _describe(exc))


def _describe(exc: FerryClientError) -> str:
    from ferry_client.lines import describe

    return describe(exc, None)[0]


def _jobs_submit(args: argparse.Namespace) -> int:
    from ferry_client.io import InputError, read_input

    command = "jobs submit"
    if args.metadata is not None and not isinstance(args.metadata, dict):
        return _fail(args, command, "--metadata must be a JSON object", EXIT_INPUT)
    if args.job_size < 1:
        return _fail(args, command, "--job-size must be at least 1", EXIT_INPUT)
    if args.out is not None and not args.wait:
        return _fail(args, command, "--out needs --wait (the predictions exist once the jobs have run)", EXIT_INPUT)
    if args.wait and args.out is None:
        args.out = "-"
    try:
        with _client(args) as client:
            card = client.model_card(args.model)
            source = read_input(args.file, card, args.format, args.id_column)
            return _submit_and_wait(client, card, source, args)
    except InputError as exc:
        return _fail(args, command, str(exc), EXIT_INPUT)
    except FerryClientError as exc:
        return _fail(args, command, _describe(exc))


def _submit_and_wait(client: Client, card: dict[str, Any], source: Input, args: argparse.Namespace) -> int:
    from ferry_client._common import new_idempotency_key
    from ferry_client.io import classes_of, write_predictions
    from ferry_client.job_batches import (
        DEFAULT_MAX_BYTES,
        WaitProgress,
        cut,
        predictions_of,
        submit_all,
        wait_all,
    )

    command = "jobs submit"
    key = args.idempotency_key or new_idempotency_key()
    started = time.monotonic()
    jobs: list[Submitted] = []
    progress = WaitProgress(len(source.records), tty=sys.stderr.isatty(), enabled=args.wait and not args.quiet)
    try:
        submit_all(
            client,
            source.records,
            cut(source.records, args.job_size, DEFAULT_MAX_BYTES),
            key=key,
            callback_url=args.callback_url,
            metadata=args.metadata,
            submitted=jobs,
        )
        if not args.wait:
            for item in jobs:
                print(json.dumps(item.job, separators=(",", ":")))
            return 0
        progress(jobs)
        try:
            wait_all(
                client,
                jobs,
                timeout=args.wait_timeout,
                poll_interval=args.poll_interval,
                use_events=args.events,
                on_update=progress,
            )
        finally:
            progress.close()
    except KeyboardInterrupt:
        progress.close()
        message = "interrupted; the jobs were not canceled" + _jobs_left(args, jobs, key)
        return _fail(args, command, message, EXIT_INTERRUPTED)
    except TimeoutError as exc:
        return _fail(args, command, str(exc) + _jobs_left(args, jobs, key), EXIT_TIMEOUT)
    except FerryClientError as exc:
        code = _server_error(args, command, exc, source)
        if jobs:
            left = _jobs_left(args, jobs, key, "submitted before the error", resume=False)
            print(left.lstrip("; "), file=sys.stderr)
        return code
    failed = next((item for item in jobs if item.status != "succeeded"), None)
    if failed is not None:
        error = failed.job.get("error") or {}
        reason = f"{error.get('code')}: {error.get('message')}" if error else failed.status
        lines = f"lines {source.lines[failed.start]}-{source.lines[failed.end - 1]}"
        message = f"job {failed.id} ({lines}) {failed.status}: {reason}; nothing was written"
        others = [item for item in jobs if item is not failed]
        return _fail(args, command, message + _jobs_left(args, others, key, "submitted with it", resume=False))
    try:
        predictions = predictions_of(jobs)
    except ValueError as exc:  # a result that does not match its records: nothing is written
        return _fail(args, command, f"unexpected answer: {exc}")
    try:
        write_predictions(args.out, predictions, classes_of(card, predictions), args.out_format, source)
    except OSError as exc:
        return _fail(args, command, f"{args.out}: {exc.strerror or exc}")
    if not args.quiet:
        elapsed = time.monotonic() - started
        noun = "job" if len(jobs) == 1 else "jobs"
        print(
            f"{args.prog} {command}: {len(predictions):,} rows, {len(jobs)} {noun}, {elapsed:.1f} s "
            f"-> {_destination(args.out)}",
            file=sys.stderr,
        )
    return 0


def _jobs_left(
    args: argparse.Namespace,
    jobs: list[Submitted],
    key: str,
    what: str = "keep running on the server",
    *,
    resume: bool = True,
) -> str:
    """Where the jobs of an unfinished submission are, and how to resume (an interrupted or timed-out
    wait: the same command with the same key) or cancel them."""
    from ferry_client.protocol import TERMINAL_JOB_STATUSES

    if not jobs:
        return ""
    ids = " ".join(item.id for item in jobs)
    open_ids = " ".join(item.id for item in jobs if item.status not in TERMINAL_JOB_STATUSES)
    text = f"; {len(jobs)} job(s) {what}: {ids}"
    if resume and args.wait:
        text += f"\n  resume: the same command with --idempotency-key {key} (nothing is queued twice)"
    if open_ids:
        text += f"\n  cancel: {args.prog} jobs cancel {open_ids} (queued jobs only; a running job finishes)"
    return text


def _jobs_status(args: argparse.Namespace) -> int:
    return _run_job_command("status", args, lambda client: _print_job(client.get_job(args.id)))


def _jobs_wait(args: argparse.Namespace) -> int:
    return _run_job_command("wait", args, lambda client: _wait(client, args.id, args))


def _jobs_cancel(args: argparse.Namespace) -> int:
    def body(client: Client) -> int:
        failed = 0
        for job_id in args.ids:
            try:
                job = client.cancel_job(job_id)
            except FerryClientError as exc:
                failed += 1
                _fail(args, "jobs cancel", f"{job_id}: {_describe(exc)}")
                continue
            print(json.dumps(job, indent=2) if len(args.ids) == 1 else json.dumps(job, separators=(",", ":")))
        return EXIT_FAILED if failed else 0

    return _run_job_command("cancel", args, body)


def _jobs_redeliver(args: argparse.Namespace) -> int:
    return _run_job_command("redeliver", args, lambda client: _print_job(client.redeliver_callback(args.id)))

"""``ferry`` command line: serve, worker, train, healthcheck, model fetch; predict and jobs (from ferry_client.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from ferry import __version__
from ferry_client.cli import add_commands as add_client_commands


def _worker(args: argparse.Namespace) -> int:
    from ferry.launcher import WORKER_APP, serve

    serve(WORKER_APP)  # execs gunicorn; returns only on failure
    return 1


def _train(args: argparse.Namespace) -> int:
    from ferry.train import train

    card = train(Path(args.out))
    print(
        json.dumps(
            {
                "model": str(Path(args.out) / "model.joblib"),
                "sha256": card["sha256"],
                "performance": card["performance"],
            }
        )
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from ferry.launcher import serve

    serve(args.app)  # execs gunicorn; returns only on failure
    return 1


def _healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when this host's service answers /readyz with 200 (container HEALTHCHECK)."""
    import httpx

    from ferry.settings import Settings

    port = Settings().port
    try:
        status = httpx.get(f"http://127.0.0.1:{port}{args.path}", timeout=args.timeout).status_code
    except httpx.HTTPError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


def _model_fetch(args: argparse.Namespace) -> int:
    from ferry.model_fetch import FetchOptions, RetryPolicy, run

    return run(
        FetchOptions(
            url=args.url,
            sha256=args.sha256,
            out=Path(args.out),
            name=args.name,
            card_url=args.card_url,
            card=not args.no_card,
            allow_http=args.allow_http,
            max_bytes=args.max_bytes,
            timeout_s=args.timeout,
            retry=RetryPolicy(retries=args.retries, base_s=args.backoff_base, max_s=args.backoff_max),
        )
    )


def _at_least(minimum: float, kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


MODEL_FETCH_EPILOG = """\
files written (nothing else is written anywhere):
  OUT/NAME                 the model, read-only, once its sha256 equals --sha256
                           (NAME defaults to model.joblib: set FERRY_MODEL__PATH=OUT/model.joblib)
  OUT/STEM.card.json       its card (STEM = NAME without its extension), where the service looks for
                           it; the card's own sha256 must equal --sha256 too
  Both are written under hidden temporary names in OUT and renamed into place only after every check
  passed: on failure OUT holds no new file.

sources:
  https://...              httpx; redirects followed (never to http:// without --allow-http);
                           trusts the CA bundle in SSL_CERT_FILE when set
  s3://BUCKET/KEY          obstore; credentials from the standard AWS chain: AWS_ACCESS_KEY_ID,
                           AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN (e.g. from a Secret), AWS_ROLE_ARN
                           with AWS_WEB_IDENTITY_TOKEN_FILE (IRSA), the container or instance role;
                           AWS_REGION; AWS_ENDPOINT_URL for an S3-compatible store
  http://...               only with --allow-http (also for an http:// AWS_ENDPOINT_URL)

retries: connection errors, stalls, 404, 408, 425, 429 and 5xx are retried with exponential backoff
  and full jitter (Retry-After honoured, up to 60 s); 401, 403 and other 4xx fail at once.

output: JSON lines on stdout (model_fetch_started, model_fetch_retry, model_fetched); on failure
  one JSON line on stderr (model_fetch_failed) whose "error" names the URL (secrets redacted).

exit codes:
  0  the model (and card) are in OUT, verified
  1  verification failed: sha256 mismatch, a card for another file or unusable, over --max-bytes
  2  usage: bad flags, http:// without --allow-http, a query string without --card-url
  3  unavailable: unreachable, not found or failing after every retry
  4  refused: 401, 403 or another 4xx, an untrusted TLS certificate (not retried)
  5  OUT cannot be written
  70 internal error (a bug); 130/143 interrupted by SIGINT/SIGTERM
"""


def _add_model_commands(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    model = commands.add_parser("model", help="model delivery: fetch a pinned model and its card")
    actions = model.add_subparsers(dest="model_command", required=True)
    fetch = actions.add_parser(
        "fetch",
        help="download a model and its card into a directory, verified against a pinned sha256",
        description="Download a model (https://, s3://, or http:// with --allow-http) and its card into OUT, "
        "verified against the pinned --sha256 before anything appears under its final name. Made to run as "
        "an init container of the service image: read-only root filesystem, OUT an emptyDir.",
        epilog=MODEL_FETCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fetch.add_argument("--url", required=True, help="the model file: https://..., s3://bucket/key or http://...")
    fetch.add_argument("--sha256", required=True, metavar="HEX", help="the model file's sha256 (64 hex digits)")
    fetch.add_argument("--out", required=True, metavar="OUT", help="output directory (created if missing)")
    fetch.add_argument("--name", default="model.joblib", help="file name of the model in OUT (default: %(default)s)")
    card = fetch.add_mutually_exclusive_group()
    card.add_argument(
        "--card-url",
        help="the card (default: beside the model, named STEM.card.json like the model's STEM.joblib)",
    )
    card.add_argument(
        "--no-card",
        action="store_true",
        help="fetch no card (the service then needs FERRY_MODEL__REQUIRE_CARD=false)",
    )
    fetch.add_argument("--allow-http", action="store_true", help="accept plain http:// sources and endpoints")
    fetch.add_argument(
        "--max-bytes",
        type=_at_least(1, int),
        metavar="N",
        help="refuse a model larger than N bytes (default: no limit)",
    )
    fetch.add_argument(
        "--timeout",
        type=_at_least(0.001, float),
        default=20.0,
        metavar="S",
        help="seconds to connect, and longest silence while reading (default: %(default)s)",
    )
    fetch.add_argument(
        "--retries",
        type=_at_least(0, int),
        default=6,
        metavar="N",
        help="retries after the first attempt (default: %(default)s)",
    )
    fetch.add_argument(
        "--backoff-base",
        type=_at_least(0, float),
        default=1.0,
        metavar="S",
        help="first backoff ceiling, doubled per retry (default: %(default)s)",
    )
    fetch.add_argument(
        "--backoff-max",
        type=_at_least(0, float),
        default=30.0,
        metavar="S",
        help="largest backoff ceiling (default: %(default)s; with the defaults at most ~61 s of waiting in all)",
    )
    fetch.set_defaults(func=_model_fetch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ferry", description="Serve a scikit-learn model in production.")
    parser.add_argument("--version", action="version", version=f"ferry {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="start gunicorn with the ferry app (reads FERRY_* settings)")
    serve.add_argument(
        "--app",
        default="ferry.main:create_app()",
        help="ASGI app factory (default: %(default)s; benchmarks use another)",
    )
    serve.set_defaults(func=_serve)
    worker = commands.add_parser(
        "worker",
        help="run job runners only (gunicorn, same FERRY_* settings; serves /livez, /readyz, /metrics)",
    )
    worker.set_defaults(func=_worker)
    train = commands.add_parser("train", help="build the default churn model and its card")
    train.add_argument("--out", default="models/churn", help="output directory (default: models/churn)")
    train.set_defaults(func=_train)
    health = commands.add_parser("healthcheck", help="exit 0 if the local service is ready (for HEALTHCHECK)")
    health.add_argument("--path", default="/readyz")
    health.add_argument("--timeout", type=float, default=2.0)
    health.set_defaults(func=_healthcheck)
    _add_model_commands(commands)  # model fetch
    add_client_commands(commands)  # predict, jobs
    args = parser.parse_args(argv)
    command: Callable[[argparse.Namespace], int] = args.func
    return command(args)


if __name__ == "__main__":
    sys.exit(main())

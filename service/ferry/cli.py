"""``ferry`` command line: serve, train, healthcheck; predict and jobs (the client's, from ferry_client.cli)."""

from __future__ import annotations

import argparse
import json
import sys
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
    add_client_commands(commands)  # predict, jobs
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

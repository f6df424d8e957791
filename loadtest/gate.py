"""Run the SLO gate: ``make slo-gate HOST=… USERS=… DURATION=…`` (and ``make capacity``).

With ``--host`` it load-tests that URL. Without, it starts the real service locally first — ``python
-m ferry serve`` (gunicorn, 2 workers) on a free 127.0.0.1 port with the caller's ``FERRY_*``
environment, plus a callback signing secret and a loopback allowance so the jobs scenario can
receive its callbacks — runs the gate, and stops the service. The exit status is Locust's, which
the locustfile's quitting hook sets from the verdict: 0 within SLO, 1 on any broken objective.
Arguments after ``--`` go to Locust unchanged.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url}/readyz never answered 200 within {timeout:.0f} s")


def start_service(workdir: Path, callback_port: int) -> tuple[subprocess.Popen[bytes], str, str]:
    sys.path.insert(0, str(ROOT / "service"))
    from ferry.webhooks import generate_secret

    port = free_port()
    secret = os.environ.get("FERRY_CALLBACKS__SIGNING_SECRET") or generate_secret()
    env = {
        **os.environ,  # the caller's FERRY_* settings pass through
        "FERRY_HOST": "127.0.0.1",
        "FERRY_PORT": str(port),
        "FERRY_WORKERS": "2",
        "FERRY_CALLBACKS__SIGNING_SECRET": secret,
    }
    env.setdefault("FERRY_CALLBACKS__ALLOW_HTTP", "true")
    # The gate's receiver, and no other port of this host (allowlists name host:port).
    env.setdefault("FERRY_CALLBACKS__ALLOW_HOSTS", f'["127.0.0.1:{callback_port}"]')
    env.setdefault("FERRY_METRICS__DIR", str(workdir / "metrics"))
    env.setdefault("FERRY_JOBS__SQLITE_PATH", str(workdir / "jobs.sqlite3"))
    log = (workdir / "service.log").open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "ferry", "serve"], env=env, cwd=ROOT, stdout=log, stderr=log, start_new_session=True
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        print((workdir / "service.log").read_text()[-3000:], file=sys.stderr)
        raise
    return process, url, secret


def stop_service(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="", help="URL of the service; empty: start it locally")
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--spawn-rate", type=float, default=0, help="users started per second (default: all in ~2 s)")
    p.add_argument("--duration", default="60s", help="Locust --run-time (steady, spike)")
    p.add_argument("--shape", default="steady", choices=["steady", "step", "spike"])
    p.add_argument("--reports-dir", default=str(ROOT / "reports" / "slo-gate"))
    p.add_argument("--slo-file", default="", help="default: deploy/slo.yaml")
    args = p.parse_args(argv)
    if args.host and not args.host.startswith(("http://", "https://")):
        p.error(f"--host / HOST must be a URL such as http://ferry.example:8000, not {args.host!r}")
    reports = Path(args.reports_dir).resolve()
    reports.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    process = None
    with tempfile.TemporaryDirectory(prefix="ferry-gate-") as tmp:
        host = args.host
        if not host:
            callback_port = free_port()
            process, host, secret = start_service(Path(tmp), callback_port)
            env["LOCUST_CALLBACK_SECRET"] = secret
            env["LOCUST_CALLBACK_PORT"] = str(callback_port)
            print(f"started the service at {host} (gunicorn, 2 workers)", flush=True)
        if args.slo_file:
            env["LOCUST_SLO_FILE"] = str(Path(args.slo_file).resolve())
        command = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless", "--only-summary"]
        command += ["--host", host, "--users", str(args.users)]
        command += ["--spawn-rate", str(args.spawn_rate or max(1, args.users / 2))]
        if args.shape != "step":  # the capacity search ends itself
            command += ["--run-time", args.duration]
        command += ["--load-shape", args.shape, "--reports-dir", str(reports)]
        command += ["--html", str(reports / "report.html"), "--csv", str(reports / "locust"), *extra]
        print("$ " + " ".join(command), flush=True)
        try:
            code = subprocess.run(command, env=env, cwd=ROOT, check=False).returncode
        finally:
            if process is not None:
                stop_service(process)
    print(f"slo-gate: {'PASS' if code == 0 else 'FAIL'} (exit {code}); reports in {reports}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())

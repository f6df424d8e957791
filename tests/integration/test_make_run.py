"""`make run` from a fresh copy of the repository answers /readyz and a curl prediction.

The copy holds exactly the files git would commit (tracked + untracked-but-not-ignored), so no
virtualenv, model or cache comes along: make creates the environment and builds the model itself.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx

from support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def fresh_copy(dest: Path) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / name.decode()
        if source.is_file():
            target = dest / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def test_make_run_from_a_fresh_clone(tmp_path: Path) -> None:
    repo = fresh_copy(tmp_path / "ferry")
    assert not (repo / ".venv").exists() and not (repo / "models").exists()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(FERRY_PORT=str(port), FERRY_METRICS__DIR=str(tmp_path / "metrics"))
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(
        ["make", "run"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240  # venv + locked install + model build + start
        while True:
            assert proc.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        card = json.loads((repo / "models/churn/model.card.json").read_text())
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "-X",
                "POST",
                f"http://127.0.0.1:{port}/api/v1/predict",
                "-H",
                "Content-Type: application/json",
                "-d",
                json.dumps({"record": card["example"]}),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
        answer = json.loads(curl.stdout)
        assert answer["prediction"] in card["classes"], curl.stdout
        version = subprocess.run([repo / ".venv/bin/ferry", "--version"], capture_output=True, text=True, check=True)
        assert version.stdout.startswith("ferry ")
        # make's recipe execs the launcher, which execs gunicorn: make's child is the master.
        master = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
        assert b"gunicorn" in Path(f"/proc/{master}/cmdline").read_bytes()
        os.kill(master, signal.SIGTERM)
        assert proc.wait(timeout=30) == 0  # make exits with the master's status
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()

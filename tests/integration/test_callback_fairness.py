"""One slow callback receiver must not delay another's callbacks: real gunicorn with 2 workers, two real
receivers on 127.0.0.1 (distinct ports are distinct receivers)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ferry import webhooks
from support.receiver import Receiver
from support.server import Server

SECRET = webhooks.generate_secret()
ATTEMPT_TIMEOUT_S = 2.0
SLOW_S = 15.0
SLOW_JOBS = 16


def _slow(n: int) -> tuple[int, dict[str, str]]:
    time.sleep(SLOW_S)
    return 200, {}


def test_a_slow_receiver_does_not_delay_another_receivers_callback(
    churn_model: Path, tmp_path: Path, record: dict
) -> None:
    env = {
        "FERRY_CALLBACKS__SIGNING_SECRET": SECRET,
        "FERRY_CALLBACKS__ALLOW_HTTP": "true",
        "FERRY_CALLBACKS__TIMEOUT_S": str(ATTEMPT_TIMEOUT_S),
        "FERRY_JOBS__POLL_INTERVAL_S": "0.05",
    }
    with Receiver(answer=_slow) as slow, Receiver() as fast:
        # The allowlist names host:port, so each receiver is listed by its port.
        env["FERRY_CALLBACKS__ALLOW_HOSTS"] = json.dumps([urlsplit(r.url).netloc for r in (slow, fast)])
        slow.httpd.block_on_close = False  # its handlers still sleep when the test ends
        with Server(tmp_path, churn_model, env=env) as srv, httpx.Client(base_url=srv.url, timeout=10) as client:

            def submit(url: str) -> str:
                response = client.post("/api/v1/jobs", json={"records": [record], "callback_url": url})
                assert response.status_code == 202, response.text
                return response.json()["id"]

            for _ in range(SLOW_JOBS):
                submit(slow.url)
            slow.wait_for(4, timeout=10)  # the slow receiver is busy with the first attempts
            fast_job = submit(fast.url)
            received = fast.wait_for(1, timeout=SLOW_S)[0]
            finished = client.get(f"/api/v1/jobs/{fast_job}").json()["finished_at"]
    delay = received.at - datetime.fromisoformat(finished).timestamp()
    print(
        f"fast receiver's callback arrived {delay * 1000:.0f} ms after its job finished, "
        f"behind {SLOW_JOBS} jobs for a receiver that takes {SLOW_S:g} s"
    )
    assert delay < ATTEMPT_TIMEOUT_S

# `helm test`: each track (FERRY_CHECKS, from the release's values) answers /readyz, serves the model
# its values name (name; version and sha256 when set) and answers one real prediction. A track that
# serves another model fails the test. Run with `python -c`.
import json
import os
import sys

import httpx

# With ferry.auth.mode api_key or jwt the chart passes ferry.auth.clientToken as FERRY_TOKEN (probes stay open).
token = os.environ.get("FERRY_TOKEN")
headers = {"Authorization": f"Bearer {token}"} if token else {}
failed = []
for check in json.loads(os.environ["FERRY_CHECKS"]):
    track = check["track"]
    with httpx.Client(base_url=check["url"], timeout=10, headers=headers) as http:
        ready = http.get("/readyz")
        print(f"[{track}] GET /readyz", ready.status_code, ready.text[:200])
        if ready.status_code != 200:
            failed.append(f"{track}: not ready")
            continue
        served = http.get("/api/v1/models").json()["models"][0]
        expected = {key: check[key] for key in ("name", "version", "sha256") if check.get(key)}
        print(f"[{track}] serves {json.dumps(served)}; the values expect {json.dumps(expected)}")
        wrong = {key: served.get(key) for key in expected if served.get(key) != expected[key]}
        if wrong:
            failed.append(f"{track}: serves {json.dumps(wrong)}, expected {json.dumps(expected)}")
            continue
        card = http.get(f"/api/v1/models/{served['name']}").json()
        record = card.get("example") or [0.0] * len(card["features"])  # a model without a card: numbers
        answer = http.post("/api/v1/predict", json={"record": record})
        print(f"[{track}] POST /api/v1/predict", answer.status_code, answer.text[:300])
        if answer.status_code != 200:
            failed.append(f"{track}: prediction answered {answer.status_code}")
print("FAILED: " + "; ".join(failed) if failed else "ok: every track serves the expected model")
sys.exit(1 if failed else 0)

# `helm test`: the release answers /readyz and one real prediction (run with `python -c`).
import os
import sys

import httpx

base = os.environ["FERRY_URL"].rstrip("/")
with httpx.Client(base_url=base, timeout=10) as http:
    ready = http.get("/readyz")
    print("GET /readyz", ready.status_code, ready.text[:200])
    if ready.status_code != 200:
        sys.exit(1)
    name = http.get("/api/v1/models").json()["models"][0]["name"]
    example = http.get(f"/api/v1/models/{name}", params={"section": "example"}).json()["example"]
    answer = http.post("/api/v1/predict", json={"record": example})
    print("POST /api/v1/predict", answer.status_code, answer.text[:300])
    sys.exit(0 if answer.status_code == 200 else 1)

#!/usr/bin/env bash
# What an S3 client adds to the service's Python environment (the image's), and how long it takes
# to import: one scratch virtualenv with requirements/service.lock, then obstore (the lock's pin) and
# boto3 (the newest) in turn. Needs PyPI; changes nothing in the repo. Used for the choice of obstore
# in docs/operations.md ("Fetching a model at start").
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
pip() { "$py" -m pip -q --disable-pip-version-check "$@" 2>&1 | grep -v '^WARNING' || true; }
site=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
kib() { du -sk "$site" | cut -f1; }
import_s() {  # best of three, in a fresh interpreter each time
  for _ in 1 2 3; do
    /usr/bin/env time -f %e "$py" -c "$1" 2>&1 >/dev/null | tail -1
  done | sort -n | head -1
}
pip install --require-hashes --no-deps -r requirements/service.lock
pip uninstall -y obstore
base=$(kib)
packages() { "$py" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null | sort; }
before=$(packages)

# the lock's obstore entry: its line and the --hash continuation lines after it
awk '/^obstore==/ {on = 1} on {print} on && !/\\$/ {exit}' requirements/service.lock > "$work/obstore.txt"
pip install --require-hashes --no-deps -r "$work/obstore.txt"
obstore_kib=$(($(kib) - base))
obstore_pkgs=$(comm -13 <(echo "$before") <(packages) | tr '\n' ' ')
obstore_s=$(import_s 'import obstore.store; obstore.store.S3Store("b", region="us-east-1", skip_signature=True)')
pip uninstall -y obstore

pip install boto3
boto3_kib=$(($(kib) - base))
boto3_pkgs=$(comm -13 <(echo "$before") <(packages) | tr '\n' ' ')
boto3_s=$(import_s 'import boto3; boto3.client("s3", region_name="us-east-1")')

printf '%-8s adds %6d KiB in: %s\n         import and S3 client: %s s\n' \
  obstore "$obstore_kib" "$obstore_pkgs" "$obstore_s" boto3 "$boto3_kib" "$boto3_pkgs" "$boto3_s"

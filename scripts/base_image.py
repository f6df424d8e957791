"""Make sure the Dockerfile's base image (``FROM ${PYTHON_IMAGE}``) is in podman's local storage.

``make image`` runs this before ``podman build``:

1. the real image is present: nothing to do;
2. its registry answers (``podman search --list-tags``, with a short timeout so that a dead registry
   does not stall the build): the real image is pulled, replacing a stand-in made earlier;
3. otherwise a **stand-in** is used (made when missing, reused when present), and a banner on
   stderr says so: Debian's ``debootstrap --variant=minbase`` of the release the tag names
   (``python:3.11-slim-bookworm``: bookworm), upgraded with that release's updates and security
   fixes, with ``python3`` (its minor must be the tag's, or this fails), ``python3-venv``,
   ``python-is-python3`` and ``ca-certificates``; imported with ``podman import`` and tagged with
   the FROM name as podman resolves it (``docker.io/library/python:3.11-slim-bookworm``).

Why a stand-in: machines without a reachable container registry (the project's CI sandboxes) can
still build and run the unmodified Dockerfile. It is not the official image (that one builds
Python from source into /usr/local; this is Debian's package in /usr/bin), so release images are
built where the real base can be pulled.

The host's own additions to its CA bundle (certificates that neither the stand-in's bundle nor the
host's ca-certificates package holds: a TLS-intercepting proxy's CA, say) are added to the
stand-in's system store, or ``pip install`` in the build could not reach PyPI through such a proxy.
``/etc/pip.conf`` points pip at that store: Debian's pip and pip >= 24.2 use it anyway, but a pip
in between would trust only its own certifi bundle. Images built on a stand-in therefore trust
those CAs too; one more reason not to publish them.

Usage: python3 scripts/base_image.py [--image NAME] [--probe-timeout S] [--cache-dir DIR] [--tls-verify false]
Needs: podman; for a stand-in also root, debootstrap and a Debian mirror. Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "service" / "Dockerfile"
STAND_IN_LABEL = "io.ferry.stand-in"
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PEM = re.compile(r"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.S)
# What python:*-slim-* sets that the image's users may rely on (the Dockerfile's `$PATH` among them).
IMAGE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
PACKAGES = ["python3", "python3-venv", "python-is-python3", "ca-certificates"]


def default_image() -> str:
    """The default of ``ARG PYTHON_IMAGE`` in service/Dockerfile: one place names the base."""
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M)
    if not match:
        raise SystemExit(f"{DOCKERFILE}: no `ARG PYTHON_IMAGE=` default")
    return match.group(1)


def qualify(name: str) -> str:
    """The fully qualified name podman resolves a Docker Hub short name to (python -> docker.io/library/python)."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if rest else f"docker.io/library/{name}"


def release_of(name: str) -> tuple[str, str]:
    """(Python minor, Debian release) named by a python image tag: ``python:3.11-slim-bookworm`` -> (3.11, bookworm)."""
    match = re.fullmatch(r".*/python:(\d+\.\d+)(?:\.\d+)?-(?:slim-)?([a-z]+)", name)
    if not match:
        raise SystemExit(
            f"{name}: cannot tell the Python minor and Debian release from the tag (python:X.Y-slim-RELEASE)"
        )
    return match.group(1), match.group(2)


def certificates(bundle: str) -> dict[bytes, str]:
    """The certificates of a PEM bundle, keyed by their DER bytes (so formatting differences do not matter)."""
    return {
        base64.b64decode("".join(body.split())): block.group(0)
        for block in PEM.finditer(bundle)
        if (body := block.group(1))
    }


def extra_certificates(host_bundle: str, *known_bundles: str) -> list[str]:
    """PEM blocks of the host's bundle that none of ``known_bundles`` holds, in the host's order."""
    known = {der for bundle in known_bundles for der in certificates(bundle)}
    return [pem for der, pem in certificates(host_bundle).items() if der not in known]


def host_distribution_certificates() -> str:
    """The CA certificates the host's ca-certificates package ships (Debian: /usr/share/ca-certificates).

    They are not "extra": a host whose package is older than the stand-in's still trusts CAs that
    Mozilla has since removed, and those must not come back through the host's bundle.
    """
    return "".join(
        path.read_text(errors="replace") for path in sorted(Path("/usr/share/ca-certificates").glob("*/*.crt"))
    )


def podman(*args: str, check: bool = True, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def label(image: str) -> str | None:
    """The stand-in label of a local image ("" when it has none, or an empty one: the real image), or None
    when the image is absent."""
    if podman("image", "exists", image, check=False).returncode != 0:
        return None
    return podman("image", "inspect", "--format", f'{{{{index .Labels "{STAND_IN_LABEL}"}}}}', image).stdout.strip()


def registry_answers(image: str, timeout: float, tls_verify: str) -> bool:
    """Whether the image's registry lists the repository's tags within ``timeout`` seconds."""
    repository = image.rsplit(":", 1)[0] if image.rfind(":") > image.rfind("/") else image
    search = ["search", "--list-tags", "--limit=1", f"--tls-verify={tls_verify}", repository]
    try:
        result = podman(*search, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"base image: no answer for {image} within {timeout:.0f} s", file=sys.stderr)
        return False
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["?"])[-1]
        print(f"base image: {image} cannot be pulled: {reason}", file=sys.stderr)
    return result.returncode == 0


def banner(image: str, made: bool, seconds: float | None = None) -> None:
    took = f" in {seconds:.0f} s" if seconds is not None else ""
    lines = [
        f"{image} is a LOCAL STAND-IN ({'built now' + took if made else 'built earlier'}), NOT the official image.",
        "It is Debian's python3 and python3-venv packages on a debootstrap minbase of the same release and",
        "Python minor, and it trusts the extra CA certificates of this host. No registry was reachable; the",
        "real base is pulled and used wherever one is. Do not publish images built on it.",
    ]
    width = max(map(len, lines))
    rule = "!" * (width + 4)
    print("\n".join([rule, *(f"! {line.ljust(width)} !" for line in lines), rule]), file=sys.stderr, flush=True)


def quietly(*command: str, env: dict[str, str] | None = None) -> str:
    """Run ``command``; its output is shown only when it fails (package scripts are chatty)."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"base image: `{' '.join(command)}` failed with exit status {result.returncode}")
    return result.stdout


def chroot(rootfs: Path, *command: str) -> str:
    env = {"PATH": IMAGE_ENV["PATH"], "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}
    return quietly("chroot", str(rootfs), *command, env=env)


def debootstrap(rootfs: Path, release: str, mirror: str, security_mirror: str, cache_dir: Path) -> str:
    """A minbase root of ``release`` with PACKAGES and the release's updates; its Python minor."""
    print(f"base image: debootstrap {release} (minbase) with {' '.join(PACKAGES)} from {mirror}", file=sys.stderr)
    quietly("debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
            f"--cache-dir={cache_dir.resolve()}", release, str(rootfs), mirror)  # fmt: skip
    # The release's point updates and security fixes, as the official images are rebuilt with them.
    (rootfs / "etc/apt/sources.list").write_text(
        f"deb {mirror} {release} main\ndeb {mirror} {release}-updates main\n"
        f"deb {security_mirror} {release}-security main\n"
    )
    shutil.copy("/etc/resolv.conf", rootfs / "etc/resolv.conf")
    chroot(rootfs, "apt-get", "update", "-qq")
    chroot(rootfs, "apt-get", "upgrade", "-y", "-qq")
    (rootfs / "etc/resolv.conf").unlink()  # podman writes the container's own
    return chroot(rootfs, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])").strip()


def trust_host_cas(rootfs: Path) -> int:
    """Add the host's own CA certificates to the root's system store; point pip at it. How many were added."""
    own = (rootfs / HOST_BUNDLE.relative_to("/")).read_text()
    extra = extra_certificates(HOST_BUNDLE.read_text(), own, host_distribution_certificates())
    for index, pem in enumerate(extra):
        (rootfs / f"usr/local/share/ca-certificates/host-extra-{index}.crt").write_text(pem + "\n")
    if extra:
        chroot(rootfs, "update-ca-certificates")
    (rootfs / "etc/pip.conf").write_text(f"[global]\ncert = {HOST_BUNDLE}\n")
    return len(extra)


def slim_down(rootfs: Path) -> None:
    """What a slim image leaves out: package lists and caches, logs, documentation but licences, translations."""
    patterns = ["var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb", "var/log/*.log",
                "usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "usr/share/doc/*/*"]  # fmt: skip
    for pattern in patterns:
        for path in rootfs.glob(pattern):
            if path.name == "copyright":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def import_root(rootfs: Path, image: str, description: str) -> None:
    changes = [f"ENV {key}={value}" for key, value in IMAGE_ENV.items()]
    changes += [f"LABEL {STAND_IN_LABEL}={description}", 'CMD ["python3"]']
    tar = subprocess.Popen(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", "-", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        ["podman", "import", "--quiet", *(a for c in changes for a in ("--change", c)), "-", image],
        stdin=tar.stdout, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if tar.wait() != 0 or imported.returncode != 0:
        raise SystemExit(f"base image: importing the stand-in failed: {imported.stderr.strip()}")


def build_stand_in(image: str, mirror: str, security_mirror: str, cache_dir: Path) -> None:
    minor, release = release_of(image)
    if shutil.which("debootstrap") is None or os.geteuid() != 0:
        raise SystemExit("base image: a stand-in needs root and debootstrap (`make image-tools` installs it)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ferry-base-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp, "rootfs")
        version = debootstrap(rootfs, release, mirror, security_mirror, cache_dir)
        if version != minor:
            raise SystemExit(f"base image: Debian {release} has Python {version}, but {image} names {minor}")
        trusted = trust_host_cas(rootfs)
        print(f"base image: Python {version}; {trusted} extra CA certificate(s) of this host trusted", file=sys.stderr)
        slim_down(rootfs)
        import_root(rootfs, image, f"debootstrap-{release}-minbase-python{version}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default=default_image(), help="the FROM image (default: service/Dockerfile's)")
    parser.add_argument("--probe-timeout", type=float, default=15.0, help="seconds the registry gets to answer")
    parser.add_argument("--pull-timeout", type=float, default=600.0, help="seconds a pull may take")
    parser.add_argument("--tls-verify", default="true", choices=["true", "false"], help="false: a plain-HTTP registry")
    parser.add_argument("--mirror", default="http://deb.debian.org/debian")
    parser.add_argument("--security-mirror", default="http://deb.debian.org/debian-security")
    parser.add_argument("--cache-dir", type=Path, default=ROOT / ".tools/debootstrap", help="downloaded .debs, kept")
    args = parser.parse_args()
    image = qualify(args.image)

    present = label(image)
    if present == "":
        print(f"base image: {image} (the real image, present)", file=sys.stderr)
        return 0
    if registry_answers(image, args.probe_timeout, args.tls_verify):
        tls = f"--tls-verify={args.tls_verify}"
        pulled = podman("pull", "--quiet", tls, image, check=False, timeout=args.pull_timeout)
        if pulled.returncode != 0:
            raise SystemExit(f"base image: the registry answers, but pulling {image} failed: {pulled.stderr.strip()}")
        if label(image):  # what the registry holds is itself a stand-in
            banner(image, made=False)
        else:
            print(f"base image: {image} pulled (the real image)", file=sys.stderr)
        return 0
    if present is not None:
        banner(image, made=False)
        return 0
    started = time.monotonic()
    build_stand_in(image, args.mirror, args.security_mirror, args.cache_dir)
    banner(image, made=True, seconds=time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())

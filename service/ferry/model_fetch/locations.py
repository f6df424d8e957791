"""Where a model comes from: parsed ``https://``, ``http://`` and ``s3://`` URLs, and their printable form.

A URL may carry secrets (``user:password@``, a presigned query string): only ``Location.redacted`` and
``redact_text`` are ever logged or printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ferry.card import CARD_SUFFIX
from ferry.model_fetch.failures import UsageError

Scheme = Literal["https", "http", "s3"]
REDACTED = "REDACTED"
_URL_IN_TEXT = re.compile(r"\b(?:https?|s3)://[^\s\"'<>]+")


@dataclass(frozen=True)
class Location:
    url: str  # as given, secrets included: for the transport only
    scheme: Scheme
    host: str  # the bucket for s3://
    path: str  # the object key for s3:// (no leading slash), the URL path otherwise

    @property
    def redacted(self) -> str:
        return redact_url(self.url)

    @property
    def file_name(self) -> str:
        return PurePosixPath(self.path).name

    def sibling(self, name: str) -> Location:
        """The object named ``name`` in the same folder (same host, scheme and credentials)."""
        parts = urlsplit(self.url)
        if parts.query:
            raise UsageError(
                f"{self.redacted} has a query string (a signature?) that cannot be reused for {name}: "
                "pass --card-url, or --no-card"
            )
        head = self.path.rpartition("/")[0]
        path = f"{head}/{name}" if head or self.path.startswith("/") else name
        if self.scheme == "s3":  # keys are used as written, like the AWS CLI does
            return Location(url=f"s3://{self.host}/{path}", scheme="s3", host=self.host, path=path)
        url = urlunsplit((parts.scheme, parts.netloc, path, "", ""))  # both parts are already in URL form
        return Location(url=url, scheme=self.scheme, host=self.host, path=path)


def parse_location(url: str, *, allow_http: bool, what: str = "--url") -> Location:
    """A Location, or a UsageError naming ``what`` (the flag) and the redacted URL."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError on a port that is not a number
    except ValueError as exc:
        raise UsageError(f"{what} {redact_url(url)} is not a URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme == "s3":
        key = parts.path.lstrip("/")
        if not parts.netloc or not key or key.endswith("/"):
            raise UsageError(f"{what} {redact_url(url)}: expected s3://bucket/key/of/the/file")
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise UsageError(
                f"{what} {redact_url(url)}: an s3:// URL has no query, fragment or credentials "
                "(credentials come from the AWS_* environment, the web identity token or the instance role)"
            )
        return Location(url=url.strip(), scheme="s3", host=parts.netloc, path=key)
    if scheme in ("https", "http"):
        if not parts.hostname:
            raise UsageError(f"{what} {redact_url(url)} has no host")
        if scheme == "http" and not allow_http:
            raise UsageError(
                f"{what} {redact_url(url)} is plain http (readable and changeable on the way); "
                "pass --allow-http to accept it (the pinned sha256 still decides what is kept)"
            )
        if not parts.path or parts.path.endswith("/"):
            raise UsageError(f"{what} {redact_url(url)} names a folder, not a file")
        web: Scheme = "https" if scheme == "https" else "http"
        return Location(url=url.strip(), scheme=web, host=parts.hostname, path=parts.path)
    raise UsageError(f"{what} {redact_url(url)}: unsupported scheme {parts.scheme!r} (use https://, s3:// or http://)")


def card_location(model: Location) -> Location:
    """The card beside the model, named as the service looks for it: ``<stem>.card.json``."""
    return model.sibling(PurePosixPath(model.file_name).stem + CARD_SUFFIX)


def redact_url(url: str) -> str:
    """``url`` without secrets: the password of ``user:password@`` (or a lone user, often a token) and
    every query value (a presigned URL's signature) are replaced; a fragment is dropped."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        user = f"{parts.username}:{REDACTED}" if parts.password is not None else REDACTED
        netloc = f"{user}@" + (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    query = "&".join(
        f"{item.split('=', 1)[0]}={REDACTED}" if "=" in item else REDACTED for item in parts.query.split("&") if item
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted (error messages of the transports quote the URL)."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group(0)), text)

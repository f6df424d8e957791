"""``ferry model fetch``: a model and its card into a directory, verified against a pinned sha256.

Runs as the init container of the service image (read-only root filesystem, uid 10001, an emptyDir
as the output directory) and from a shell. Knows nothing of the HTTP API.
"""

from ferry.model_fetch.command import DEFAULT_NAME, Fetched, FetchOptions, fetch_model, run
from ferry.model_fetch.failures import ExitCode, FetchError
from ferry.model_fetch.retry import RetryPolicy

__all__ = ["DEFAULT_NAME", "ExitCode", "FetchError", "FetchOptions", "Fetched", "RetryPolicy", "fetch_model", "run"]

from __future__ import annotations

from pathlib import Path

import pytest

from support.server import Server


@pytest.fixture(scope="module")
def server(churn_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real service, default model, 2 workers; shared by a module's tests."""
    srv = Server(tmp_path_factory.mktemp("srv"), churn_model).start()
    yield srv
    assert srv.stop() == 0, srv.output()[-2000:]

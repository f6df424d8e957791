"""The README's curl examples work, unchanged but for the port, against the real service."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from support.server import Server

README = Path(__file__).resolve().parents[2] / "README.md"


def curl_commands() -> list[str]:
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        current = ""
        for line in block.splitlines():
            if line.startswith("curl") or current:
                current += line[:-1] + " " if line.endswith("\\") else line + "\n"
                if current.count("'") % 2 == 0 and not line.endswith("\\"):
                    commands.append(current.strip())
                    current = ""
    return commands


def test_readme_curl_examples(server: Server) -> None:
    commands = curl_commands()
    assert len(commands) >= 6
    for command in commands:
        command = command.replace("localhost:8000", f"127.0.0.1:{server.port}").replace("curl -s", "curl -sf", 1)
        out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=10, check=False)
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        if "| grep" not in command:
            assert "code" not in json.loads(out.stdout), (command, out.stdout)

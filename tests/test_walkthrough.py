"""The README's walkthrough, pasted as written, answers as the README shows, every time.

The blocks are read from README.md itself. Each run starts ``scripts/serve`` on a fresh store
and a free port, runs the shell lines one by one from the repository's root (as a newcomer
would), fills ``ACCESSKEY``/``ACCESSSECRET``/``SWITCHKEY``/``SWITCHSECRET`` from what the two
``pns account create`` printed, runs the Python and the curl blocks, and matches every output
against the comment shown under it (``…`` stands for a value that differs per run). The only
changes to the text are the port and the store: ``PNS_STORE`` points at the run's own store, so
the repository's ``./pns.db`` is never touched and parallel runs never meet.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, free_port

RUNS = 5


def walkthrough_blocks() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Five-minute walkthrough", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", section, re.S)


def shown_outputs(block: str) -> list[re.Pattern[str]]:
    """The answers a block shows: runs of comment lines starting with ``# {``; ``…`` is a
    value that changes per run (no quote, comma or brace inside)."""
    shown: list[str] = []
    current: list[str] | None = None
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith("# {"):
            current = [stripped[2:]]
            shown.append("")
        elif current is not None and stripped.startswith("#   "):
            current.append(stripped[1:].strip())
        else:
            current = None
        if current is not None:
            shown[-1] = " ".join(current)
    return [re.compile("[^'\",}]*".join(re.escape(part) for part in text.split("…")))
            for text in shown]


def _logical_lines(block: str) -> list[str]:
    lines, pending = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        if line.strip() and not line.strip().startswith("#"):
            lines.append(line)
    return lines


def _fill(text: str, values: dict[str, str], port: int) -> str:
    text = text.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    for name, value in values.items():
        text = text.replace(name, value)
    return text


def _bash(script: str, env: dict[str, str]) -> str:
    result = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{script}\n{result.stdout}{result.stderr}"
    return result.stdout


def test_the_readme_has_the_walkthrough_blocks() -> None:
    kinds = [kind for kind, _ in walkthrough_blocks()]
    assert kinds == ["sh", "python", "sh"]
    python = walkthrough_blocks()[1][1]
    assert 'did = bound["data"]["did"]' in python and "switch.query(\"85222222222\", did)" in python
    assert len(shown_outputs(python)) == 2 and len(shown_outputs(walkthrough_blocks()[2][1])) == 1


@pytest.mark.parametrize("run", range(RUNS))
def test_walkthrough_as_written(tmp_path: Path, run: int) -> None:
    (_, setup), (_, python), (_, curl) = walkthrough_blocks()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PNS_CONFIG",)}
    env["PNS_STORE"] = f"sqlite:///{tmp_path}/pns.db"
    values: dict[str, str] = {}
    prelude: list[str] = []
    server: subprocess.Popen[bytes] | None = None
    log = tmp_path / "serve.log"
    try:
        for line in _logical_lines(setup):
            command = line.split("#", 1)[0].strip()
            if command == "scripts/serve &":
                with log.open("wb") as out:
                    server = subprocess.Popen([str(REPO / "scripts" / "serve"), "--port",
                                               str(port)], cwd=REPO, env=env, stdout=out,
                                              stderr=subprocess.STDOUT)
                continue
            if command.startswith("export "):
                prelude.append(command)
                continue
            out = _bash("\n".join([*prelude, _fill(command, values, port)]), env)
            if "account create" in command:
                created = json.loads(out)
                prefix = ("SWITCH" if "--role switch" in command else "ACCESS")
                values[f"{prefix}KEY"] = created["accessKey"]
                values[f"{prefix}SECRET"] = created["accessSecret"]
        assert set(values) == {"ACCESSKEY", "ACCESSSECRET", "SWITCHKEY", "SWITCHSECRET"}
        assert "pns listening on http://127.0.0.1:" in log.read_text()

        result = subprocess.run([sys.executable, "-c", _fill(python, values, port)],
                                cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stderr
        printed = result.stdout.splitlines()
        shown = shown_outputs(python)
        assert len(printed) == len(shown)
        for answer, pattern in zip(printed, shown, strict=True):
            assert pattern.fullmatch(answer), f"shown {pattern.pattern}\ngot   {answer}"
        answer = _bash(_fill(curl, values, port), env).strip()
        (pattern,) = shown_outputs(curl)
        assert pattern.fullmatch(answer), f"shown {pattern.pattern}\ngot   {answer}"
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(15)

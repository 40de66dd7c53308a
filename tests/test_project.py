"""The project as a new user meets it: README commands, CI script, the console script."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sh\n(.+?)\n```", text)


def test_readme_gives_a_demo_command_and_a_test_command() -> None:
    commands = readme_commands()
    assert any(c.endswith("aioamztoken demo") for c in commands)
    assert any("pytest" in c for c in commands)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_demo_runs_and_reports_in_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aioamztoken", "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "token requests made" in done.stdout
    assert "callers served" in done.stdout
    assert "result                   ok" in done.stdout
    assert "Atza|" not in done.stdout
    assert "Atzr|" not in done.stdout
    assert done.stderr == ""


def test_help_lists_the_demo_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aioamztoken", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    assert "demo" in done.stdout


async def test_demo_report_counts_one_request_per_account_that_needed_one() -> None:
    from aioamztoken._demo import run_demo

    report = await run_demo(accounts=5, callers_per_account=7)
    assert report.ok
    assert report.callers == 6 * 7
    assert report.callers_served == report.callers
    assert report.token_requests == 5 + 3
    assert "result                   ok" in report.render()

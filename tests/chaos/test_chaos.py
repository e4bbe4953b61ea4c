"""The chaos script end to end: a run SIGKILLed once at every failpoint, then reruns, an unchanged
rerun and two concurrent runs, against a hostile emulator workspace and a real Prefect server.

Slow (about ten minutes here): every run is a fresh `enrich run` process."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.chaos import main
from tasks.failpoints import POINTS


def figures(printed: str) -> dict[str, int]:
    """The check table's rows: ``<label>  <figure>  [ok|VIOLATION]``."""
    table = printed.split("\ncheck ", 1)[1]
    return {
        m["label"]: int(m["figure"])
        for m in re.finditer(r"^(?P<label>[a-z][^\n]*?)\s{2,}(?P<figure>\d+)\b", table, re.M)
    }


@pytest.mark.timeout(900)
def test_every_failpoint_is_survived_without_loss_or_double_payment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["--rows", "100", "--shard-size", "25", "--run-timeout", "240"]
    code = main(["--kills", str(len(POINTS)), "--seed", "1", *small, "--workdir", str(tmp_path)])
    printed = capsys.readouterr().out
    found = figures(printed)
    assert found["kills scheduled"] == len(POINTS), printed
    assert found["kills survived (rerun exited 0)"] == found["kills fired (died by SIGKILL)"], (
        printed
    )
    assert found["kills fired (died by SIGKILL)"] == len(POINTS), printed
    assert found["rows lost"] == 0, printed
    assert found["rows duplicated"] == 0, printed
    assert found["duplicate paid jobs"] == 0, printed
    assert found["partial objects"] == 0, printed
    assert found["foreign jobs touched"] == 0, printed
    assert found["jobs created by the unchanged rerun"] == 0, printed
    assert found["concurrent runs exited 0"] == 2, printed
    assert code == 0, printed

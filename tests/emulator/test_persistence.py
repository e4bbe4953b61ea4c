"""State under --data-dir survives a restart, a crash (SIGKILL) included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import StartEmulator, read_lines, sdk, submit, wait_for


@pytest.mark.parametrize("kill", [True, False], ids=["crash", "graceful"])
def test_unfinished_job_continues_after_restart(
    start_emulator: StartEmulator, tmp_path: Path, kill: bool
) -> None:
    data = tmp_path / "state"
    first = start_emulator(None, "--requests-per-second", "40", data_dir=data)
    client = sdk(first)
    texts = [{"input": [f"row {i}", f"other {i}"]} for i in range(120)]
    job = submit(
        client, "/v1/embeddings", texts, model="mistral-embed", metadata={"dataset": "restart"}
    )
    wait_for(client, job.id, lambda j: j.status == "RUNNING" and j.completed_requests >= 20)
    first.stop(kill=kill)

    second = start_emulator(None, data_dir=data)
    client = sdk(second)
    assert client.files.retrieve(file_id=job.input_files[0]).num_lines == 120
    assert [j.id for j in client.batch.jobs.list(metadata={"dataset": "restart"}).data] == [job.id]
    done = wait_for(client, job.id)
    assert done.status == "SUCCESS"
    assert (done.total_requests, done.succeeded_requests, done.failed_requests) == (120, 120, 0)

    lines = read_lines(client, done.output_file)
    assert sorted(int(line["custom_id"]) for line in lines) == list(range(120))  # each exactly once
    # Outputs are deterministic: the lines answered before the restart equal a fresh answer.
    fresh = client.embeddings.create(model="mistral-embed", inputs=["row 7", "other 7"])
    line = next(line for line in lines if line["custom_id"] == "7")
    assert [d["embedding"] for d in line["response"]["body"]["data"]] == [
        d.embedding for d in fresh.data
    ]


def test_finished_jobs_and_files_are_kept(start_emulator: StartEmulator, tmp_path: Path) -> None:
    data = tmp_path / "state"
    first = start_emulator(None, data_dir=data)
    client = sdk(first)
    job = wait_for(
        client,
        submit(
            client, "/v1/moderations", [{"input": "kill"}] * 3, model="mistral-moderation-latest"
        ).id,
    )
    before = read_lines(client, job.output_file)
    first.stop()
    client = sdk(start_emulator(None, data_dir=data))
    assert client.batch.jobs.get(job_id=job.id).status == "SUCCESS"
    after = read_lines(client, job.output_file)
    assert after == before

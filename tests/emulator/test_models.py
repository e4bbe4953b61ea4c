"""Model aliases: the version behind an alias answers, and the emulator names the alias or the
version in responses and jobs, as the real service might (the contract does not say which)."""

from __future__ import annotations

from mistralai.client import Mistral

from emulator.catalog import Catalog
from emulator.endpoints import Engine
from tests.support import API_KEY, StartEmulator, read_lines, submit, wait_for

LATEST = "mistral-moderation-latest"
OLD = "mistral-moderation-2411"


def moderate(catalog: Catalog) -> dict[str, object]:
    status, body = Engine(catalog).call("/v1/moderations", {"model": LATEST, "input": ["hi"]})
    assert status == 200
    return body


def test_the_version_behind_an_alias_answers_and_is_named_as_configured() -> None:
    plain = Catalog.load(None)
    assert moderate(plain)["model"] == LATEST
    assert len(moderate(plain)["results"][0]["categories"]) == 11  # type: ignore[index]

    moved = plain.with_models({LATEST: OLD})  # the alias points at 2411: 9 categories
    assert moderate(moved)["model"] == LATEST  # named as asked: nothing says it moved
    assert len(moderate(moved)["results"][0]["categories"]) == 9  # type: ignore[index]
    assert moderate(moved.with_models({LATEST: OLD}, answer_model="version"))["model"] == OLD


def test_a_job_can_name_the_version_and_a_model_filter_then_misses_it(
    start_emulator: StartEmulator,
) -> None:
    """With ``--job-model version`` a job created for the alias reports the version, so a
    listing filtered by the alias misses it: why the client matches jobs by key, not model."""
    emu = start_emulator(
        None, "--alias", f"{LATEST}={OLD}", "--answer-model", "version", "--job-model", "version"
    )
    client = Mistral(api_key=API_KEY, server_url=emu.url)
    job = submit(client, "/v1/moderations", [{"input": ["hello"]}], model=LATEST)
    assert job.model == OLD
    done = wait_for(client, job.id)
    assert isinstance(done.output_file, str)
    assert read_lines(client, done.output_file)[0]["response"]["body"]["model"] == OLD
    assert client.batch.jobs.list(model=LATEST).total == 0
    assert [j.id for j in client.batch.jobs.list(model=OLD).data or []] == [job.id]

"""Credentials as Prefect blocks, under the session's Prefect server: the MistralCredentials block
(Prefect's standard block suite, the entry point, a round trip with its key obfuscated), the order
in which the key is looked for, and prefect-aws' AwsCredentials for s3:// — a storage round trip
and whole runs (thread pool and Dask) with no AWS_* or MISTRAL_* variable at all."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from prefect.blocks.core import Block
from prefect.blocks.system import Secret
from prefect.settings import PREFECT_API_URL
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from prefect_aws.credentials import AwsCredentials
from pydantic import SecretStr

from emulator.server import EmulatorProcess
from flows.enrich import enrich
from tasks.edges import storage
from tasks.edges.credentials import MistralCredentials
from tasks.edges.settings import (
    StorageCredentialsError,
    StorageSettings,
    mistral_settings,
    storage_settings,
)
from tests.flows.conftest import flow_params
from tests.seaweed import ACCESS_KEY, BUCKET, SECRET_KEY, SeaweedS3
from tests.support import API_KEY

OBFUSCATED = "********"


class TestMistralCredentialsBlock(BlockStandardTestSuite):
    @pytest.fixture
    def block(self) -> type[Block]:
        return MistralCredentials

    def test_has_a_valid_image(self, block: type[Block]) -> None:
        """Replaces the suite's check, which downloads the logo (a catalogue requirement for
        published collections). This block is the project's own and deliberately has no logo:
        no Mistral logo URL can be verified offline, and the UI shows its default block icon.
        A logo added later must be checked by hand."""
        assert block._logo_url is None
        assert block.get_block_type_slug() == "mistral-credentials"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def api_document(block_type: str, name: str) -> dict[str, Any]:
    """The block document as the UI reads it: the server's own defaults, no client options."""
    url = f"{PREFECT_API_URL.value()}/block_types/slug/{block_type}/block_documents/name/{name}"
    answer = httpx.get(url, timeout=30)
    answer.raise_for_status()
    document: dict[str, Any] = answer.json()
    return document


@pytest.fixture
def no_variables(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No credential reaches a client but from a block: the MISTRAL_* and AWS_* variables are
    removed, the AWS configuration files point nowhere, and the instance metadata is off."""
    for name in [n for n in os.environ if n.startswith(("MISTRAL_", "AWS_"))]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
    storage.use_credentials("")  # the next test's storage comes from its own environment


def s3_block(s3_server: SeaweedS3, secret: str = SECRET_KEY) -> str:
    name = unique("s3")
    AwsCredentials(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SecretStr(secret),
        region_name="us-east-1",
        aws_client_parameters={"endpoint_url": s3_server.endpoint},
    ).save(name)
    return name


def test_the_entry_point_registers_the_block_type() -> None:
    """``prefect.collections`` names the module; Prefect (a server from this environment,
    ``prefect block register``, a block lookup) imports it and knows the type by its slug."""
    from prefect.plugins import load_prefect_collections
    from prefect.utilities.dispatch import lookup_type

    (point,) = [p for p in entry_points(group="prefect.collections") if p.value.startswith("tasks")]
    assert point.value == "tasks.edges.credentials"
    load_prefect_collections()
    assert lookup_type(Block, "mistral-credentials") is MistralCredentials
    command = [sys.executable, "-m", "prefect", "block", "register", "-m", point.value]
    done = subprocess.run(
        command,
        env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Successfully registered 1 block" in done.stdout
    assert "Mistral Credentials" in done.stdout


def test_the_mistral_block_round_trips_with_its_key_obfuscated() -> None:
    name = unique("mistral")
    MistralCredentials(api_key=API_KEY, server_url="http://127.0.0.1:9").save(name)
    loaded = MistralCredentials.load(name)
    assert loaded.api_key.get_secret_value() == API_KEY
    assert loaded.server_url == "http://127.0.0.1:9"
    assert API_KEY not in repr(loaded)
    document = api_document("mistral-credentials", name)
    assert document["data"] == {"api_key": OBFUSCATED, "server_url": "http://127.0.0.1:9"}
    assert API_KEY not in str(document)
    gateway = loaded.get_client()
    assert gateway.settings.server_url == "http://127.0.0.1:9"


def test_the_aws_block_round_trips_with_its_secret_obfuscated(s3_server: SeaweedS3) -> None:
    name = s3_block(s3_server)
    loaded = AwsCredentials.load(name)
    assert loaded.aws_access_key_id == ACCESS_KEY
    assert loaded.aws_secret_access_key is not None
    assert loaded.aws_secret_access_key.get_secret_value() == SECRET_KEY
    assert loaded.aws_client_parameters.endpoint_url == s3_server.endpoint
    document = api_document("aws-credentials", name)
    assert document["data"]["aws_secret_access_key"] == OBFUSCATED
    assert document["data"]["aws_client_parameters"]["endpoint_url"] == s3_server.endpoint
    assert SECRET_KEY not in str(document)


def test_the_key_is_looked_for_in_the_blocks_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """MistralCredentials block, then Secret block, then MISTRAL_API_KEY; the block's URL is
    used where MISTRAL_SERVER_URL is not set (an explicit emulator URL is never overridden)."""
    credentials, secret = unique("mistral"), unique("key")
    monkeypatch.setenv("MISTRAL_CREDENTIALS_BLOCK", credentials)
    monkeypatch.setenv("MISTRAL_API_KEY_BLOCK", secret)
    monkeypatch.setenv("MISTRAL_API_KEY", "from-the-environment")
    monkeypatch.setenv("MISTRAL_SERVER_URL", "http://127.0.0.1:1")

    def key_and_url() -> tuple[str | None, str | None]:
        settings = mistral_settings()
        key = settings.api_key.get_secret_value() if settings.api_key else None
        return key, settings.server_url

    assert key_and_url() == ("from-the-environment", "http://127.0.0.1:1")
    Secret(value="from-the-secret-block").save(secret)
    assert key_and_url() == ("from-the-secret-block", "http://127.0.0.1:1")
    MistralCredentials(api_key="from-the-credentials-block").save(credentials)
    assert key_and_url() == ("from-the-credentials-block", "http://127.0.0.1:1")
    MistralCredentials(api_key="with-a-url", server_url="http://127.0.0.1:2").save(
        credentials, overwrite=True
    )
    assert key_and_url() == ("with-a-url", "http://127.0.0.1:1")  # the environment's URL wins
    monkeypatch.delenv("MISTRAL_SERVER_URL")
    assert key_and_url() == ("with-a-url", "http://127.0.0.1:2")
    assert "with-a-url" not in repr(mistral_settings())


def test_s3_with_credentials_only_from_the_block(s3_server: SeaweedS3, no_variables: None) -> None:
    base = f"s3://{BUCKET}/block-{uuid.uuid4().hex[:8]}"
    storage.use_credentials(s3_block(s3_server))
    storage.write_json(f"{base}/a/one.json", {"v": 1})
    storage.write_bytes(f"{base}/a/two.bin", b"two", exclusive=True)
    assert storage.read_json(f"{base}/a/one.json") == {"v": 1}
    assert storage.list_files(base) == [f"{base}/a/one.json", f"{base}/a/two.bin"]
    storage.remove(f"{base}/a")
    assert not storage.exists(f"{base}/a/one.json")

    storage.use_credentials(s3_block(s3_server, secret="not-the-secret"))
    with pytest.raises(PermissionError):  # the block's key is the one used: a wrong one fails
        storage.exists(f"{base}/a/one.json")


def test_two_runs_in_one_process_keep_their_own_storage_credentials(
    s3_server: SeaweedS3, no_variables: None
) -> None:
    """A worker's hooks, concurrent flow calls or a Dask worker's threads: each run's block is
    its own. Both threads choose their block before either touches S3; a process-wide setting
    would give both the last one chosen."""
    base = f"s3://{BUCKET}/two-runs-{uuid.uuid4().hex[:8]}"
    blocks = {"good": s3_block(s3_server), "bad": s3_block(s3_server, secret="not-the-secret")}
    both_chose = threading.Barrier(2, timeout=60)
    outcome: dict[str, str] = {}

    def run(name: str) -> None:
        storage.use_credentials(blocks[name])
        both_chose.wait()
        try:
            storage.write_bytes(f"{base}/{name}.bin", name.encode())
            outcome[name] = "written"
        except PermissionError:
            outcome[name] = "denied"

    threads = [threading.Thread(target=run, args=(name,)) for name in blocks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert outcome == {"good": "written", "bad": "denied"}


def test_a_missing_or_unusable_block_is_refused_with_the_next_step() -> None:
    missing = unique("nowhere")
    with pytest.raises(StorageCredentialsError, match=f"no AwsCredentials block named '{missing}'"):
        storage.use_credentials(missing)
    profiled = unique("profiled")
    AwsCredentials(profile_name="prod").save(profiled)
    with pytest.raises(StorageCredentialsError, match="names a profile or a role to assume"):
        storage.use_credentials(profiled)


def test_a_run_naming_a_missing_block_fails_at_once_and_says_so(
    tmp_path: Path, mistral: EmulatorProcess
) -> None:
    """Before anything is read or spent; the failure hook still tells automations."""
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    since = datetime.now(UTC) - timedelta(seconds=1)
    missing = unique("nowhere")
    source = tmp_path / "in.parquet"
    pl.DataFrame({"id": [1], "text": ["one"]}).write_parquet(source)
    params = flow_params(source, tmp_path / "out", storage_credentials=missing)
    state = enrich(params, return_state=True)
    assert state.is_failed()
    with pytest.raises(StorageCredentialsError, match=f"no AwsCredentials block named '{missing}'"):
        state.result()
    assert not (tmp_path / "out").exists() and not (tmp_path / "_enrich").exists()
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                EventFilter(
                    event=EventNameFilter(name=["enrich.run.failed"]),
                    occurred=EventOccurredFilter(since=since),
                ),
                limit=50,
            )
        runs = [e.payload.get("flow_run_id") for e in page.events]
        if str(state.state_details.flow_run_id) in runs:
            break
        assert time.monotonic() < deadline, "no enrich.run.failed event"
        time.sleep(0.2)


def test_block_fields_left_empty_fall_back_to_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:3")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    name = unique("keys-only")
    AwsCredentials(aws_access_key_id="id", aws_secret_access_key=SecretStr("secret")).save(name)
    settings = storage_settings(name)
    assert settings.endpoint_url == "http://127.0.0.1:3" and settings.region == "eu-west-3"
    assert settings.secret_access_key == SecretStr("secret")
    assert storage_settings("") == StorageSettings()


@pytest.mark.parametrize("task_runner", ["threads", "dask:1"])
def test_a_run_on_s3_with_every_credential_from_blocks(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    emulator: EmulatorProcess,
    s3_server: SeaweedS3,
    no_variables: None,
    task_runner: str,
) -> None:
    """The flow's process and, on Dask, each worker process load both blocks themselves: no
    worker has a key in its environment."""
    mistral = unique("mistral")
    MistralCredentials(api_key=API_KEY, server_url=emulator.url).save(mistral)
    monkeypatch.setenv("MISTRAL_CREDENTIALS_BLOCK", mistral)
    block = s3_block(s3_server)
    base = f"s3://{BUCKET}/{tmp_path.name}"
    storage.use_credentials(block)
    frame = pl.DataFrame({"id": list(range(60)), "text": [f"text {i % 25}" for i in range(60)]})
    with storage.open_write(f"{base}/in.parquet") as sink:
        frame.write_parquet(sink)
    storage.use_credentials("")  # the run must take the block itself

    params = flow_params(
        f"{base}/in.parquet",
        f"{base}/out",
        shard_size=20,
        task_runner=task_runner,
        storage_credentials=block,
    )
    summary = enrich(params)
    assert summary.enriched_rows == 60
    if task_runner != "threads":
        assert f"{socket.gethostname()}:{os.getpid()}" not in summary.processes
    written = storage.list_files(f"{base}/out/partition=2026-11-22", ".parquet")
    assert pl.concat([storage.read_parquet(uri) for uri in written]).height == 60

"""Files API: upload, retrieve, download (streamed, octet-stream), list, delete."""

from __future__ import annotations

import socket

import httpx2
import pytest
from mistralai.client import Mistral, errors

from emulator.server import EmulatorProcess
from tests.support import API_KEY, jsonl


def test_upload_retrieve_download_delete(client: Mistral) -> None:
    content = jsonl([{"custom_id": str(i), "body": {"input": f"text {i}"}} for i in range(25)])
    uploaded = client.files.upload(
        file={"file_name": "in.jsonl", "content": content}, purpose="batch"
    )
    assert uploaded.size_bytes == len(content)
    assert (uploaded.purpose, uploaded.sample_type, uploaded.source) == (
        "batch",
        "batch_request",
        "upload",
    )
    assert uploaded.num_lines == 25  # the last line has no newline, as the SDK writes it

    fetched = client.files.retrieve(file_id=uploaded.id)
    assert fetched.id == uploaded.id and fetched.deleted is False

    response = client.files.download(file_id=uploaded.id)
    assert response.headers["content-type"] == "application/octet-stream"
    assert b"".join(response.iter_bytes()) == content

    listed = client.files.list(purpose="batch", page_size=1000)
    assert uploaded.id in {f.id for f in listed.data}
    assert listed.total is not None and listed.total >= 1

    deleted = client.files.delete(file_id=uploaded.id)
    assert deleted.deleted is True and deleted.id == uploaded.id
    with pytest.raises(errors.SDKError) as missing:
        client.files.retrieve(file_id=uploaded.id)
    assert missing.value.status_code == 404
    assert uploaded.id in missing.value.body


def test_upload_needs_a_file_part(emulator: EmulatorProcess) -> None:
    response = httpx2.post(
        f"{emulator.url}/v1/files",
        headers={"Authorization": f"Bearer {API_KEY}"},
        data={"purpose": "batch"},
        files={"other": ("x.txt", b"x")},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_upload_over_512_mb_is_refused_before_reading(emulator: EmulatorProcess) -> None:
    # Only the headers are sent: the emulator must answer from Content-Length alone.
    host, port = emulator.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            (
                "POST /v1/files HTTP/1.1\r\n"
                f"Host: {host}\r\n"
                f"Authorization: Bearer {API_KEY}\r\n"
                "Content-Type: multipart/form-data; boundary=x\r\n"
                f"Content-Length: {513 * 1024 * 1024}\r\n\r\n"
            ).encode()
        )
        reply = ""
        while "512 MB" not in reply and (chunk := conn.recv(65536)):
            reply += chunk.decode()
    assert reply.startswith("HTTP/1.1 413")
    assert "512 MB" in reply


def test_job_input_must_be_a_batch_file(client: Mistral) -> None:
    uploaded = client.files.upload(
        file={"file_name": "ft.jsonl", "content": b'{"messages": []}'}, purpose="fine-tune"
    )
    with pytest.raises(errors.SDKError) as refused:
        client.batch.jobs.create(endpoint="/v1/embeddings", input_files=[uploaded.id])
    assert refused.value.status_code == 400
    assert "purpose 'batch'" in refused.value.body

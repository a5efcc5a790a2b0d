"""A real GCS JSON API emulator (package ``gcp-storage-emulator``) in its own
process on a loopback port, for tests: start, kill -9, start again on the
same port and data folder (objects and resumable sessions persist on disk).

What this emulator does (found by trying, version 2026.7.19): simple,
multipart and chunked resumable uploads; md5Hash and crc32c computed for
each object, and checked (400) when the upload's metadata carries them;
generations; custom metadata; persistence across restarts. What it does not:
request preconditions: ``ifGenerationMatch`` is ignored, so a second upload
of a name overwrites it (``test_gcs.test_emulator_ignores_generation_preconditions``
pins this down).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import AuthorizedSession
from google.cloud import storage

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Emulator:
    """One emulator process; ``data_dir`` holds its objects across restarts."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "emulator.log"

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start on ``port`` and wait until it answers."""
        assert self.proc is None, "already running"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gcp_storage_emulator", "-d", str(self.data_dir), "start",
                 "--host", HOST, "--port", str(self.port), "-q"],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.proc = None
                raise RuntimeError(f"the emulator exited at start: {self.log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the emulator did not answer within {timeout} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def client(self, on_response: Callable[..., Any] | None = None) -> storage.Client:
        """A real ``storage.Client`` pointed at the emulator. ``on_response(response)``
        runs after each HTTP response the client receives (to kill the emulator
        at a chosen moment, or to lose a response)."""
        session = AuthorizedSession(AnonymousCredentials())
        if on_response is not None:
            def hook(response: Any, **_: Any) -> None:
                on_response(response)  # returning None keeps the response as it is

            session.hooks["response"].append(hook)
        return storage.Client(project="test", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.endpoint}, _http=session)

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"b-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(name)
        return name

    def objects(self, bucket: str) -> dict[str, storage.Blob]:
        return {blob.name: blob for blob in self.client().list_blobs(bucket)}

    def read(self, bucket: str, name: str) -> bytes:
        return bytes(self.client().bucket(bucket).blob(name).download_as_bytes())


def resumable_sessions(data_dir: Path) -> list[str]:
    """The partial uploads the emulator holds on disk."""
    folder = Path(data_dir, ".cloudstorage", "_resumable")
    return sorted(os.listdir(folder)) if folder.is_dir() else []

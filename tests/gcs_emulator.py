"""A GCS server on localhost for the gs:// tests: `gcp-storage-emulator`, started here.

The clients are the real ones (gcsfs through etils.epath and fsspec, tensorstore for Orbax),
pointed at the server by the environment variables `ENV` sets in this process and in every
subprocess a test starts with it. gcsfs would first spend a minute probing for hierarchical
namespaces over gRPC (which the emulator lacks): GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

BUCKET = "matpac-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(port: int) -> dict:
    url = f"http://127.0.0.1:{port}"
    return {
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_CLOUD_PROJECT": "matpac-test",
    }


class Emulator:
    """The running server: `url(path)` names gs://BUCKET/path, `env` its client settings."""

    def __init__(self):
        self.port = free_port()
        exe = shutil.which("gcp-storage-emulator", path=os.path.dirname(sys.executable))
        self._proc = subprocess.Popen(
            [exe or "gcp-storage-emulator", "start", "--host=127.0.0.1",
             f"--port={self.port}", "--in-memory", "--default-bucket", BUCKET],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/storage/v1/b", timeout=1)
                break
            except OSError:
                if time.time() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.1)
        self.env = client_env(self.port)

    def url(self, path: str = "") -> str:
        return f"gs://{BUCKET}/{path}".rstrip("/")

    def upload(self, local_dir: str, path: str) -> str:
        """Copies a local folder to gs://BUCKET/path; returns the URL."""
        import gcsfs  # pylint: disable=g-import-not-at-top

        fs = gcsfs.GCSFileSystem()
        for root, _, files in os.walk(local_dir):
            for name in files:
                local = os.path.join(root, name)
                rel = os.path.relpath(local, local_dir)
                fs.put_file(local, f"{BUCKET}/{path}/{rel}")
        return self.url(path)

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait(timeout=30)

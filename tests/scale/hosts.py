"""Several hosts on one machine: Linux network namespaces (iproute2), one veth pair per host into a
bridge. Postgres and Redis listen on loopback here, so a relay in this namespace forwards the
bridge address's ports to them; the S3 server binds the bridge address itself. Everything made is
removed again, also when a test fails."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import requests


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str  # the namespace ("" for this machine's own)
    address: str
    processes: list[subprocess.Popen] = field(default_factory=list)

    def start(self, command: list[str], *, env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
        """A process of this host (its own process group, so that kill_all / kill -9 take its children too)."""
        fh = log.open("w")
        prefix = ["ip", "netns", "exec", self.name] if self.name else []
        proc = subprocess.Popen([*prefix, *command], env=env, cwd=cwd, stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(proc)
        return proc

    def kill9(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:
                    pass


class Network:
    """A bridge with `bridge_address` and one namespace per host name."""

    def __init__(self, hosts: list[str]):
        tag = f"{random.getrandbits(20):05x}"
        self.tag = tag
        self.subnet = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        self.bridge = f"nx{tag}b"
        self.bridge_address = f"{self.subnet}.1"
        self.hosts: dict[str, Host] = {}
        self._relays: list[_Relay] = []
        self._made: list[tuple[str, str]] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, name in enumerate(hosts):
                self._add_host(name, i)
        except BaseException:
            self.close()
            raise

    def _add_host(self, name: str, i: int) -> None:
        ns, veth, peer = f"nx{self.tag}-{name}", f"nx{self.tag}v{i}", f"nx{self.tag}p{i}"
        address = f"{self.subnet}.{11 + i}"
        _ip("netns", "add", ns)
        self._made.append(("netns", ns))
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        self._made.append(("link", veth))
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("link", "set", peer, "netns", ns)
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", peer)
        _ip("-n", ns, "link", "set", peer, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.bridge_address)
        self.hosts[name] = Host(name=ns, address=address)

    def relay(self, port: int, target: tuple[str, int]) -> None:
        """Forward bridge_address:port to `target` (a service that listens on loopback only)."""
        self._relays.append(_Relay((self.bridge_address, port), target))

    def close(self) -> None:
        for host in self.hosts.values():
            host.stop_all()
        for relay in self._relays:
            relay.close()
        for kind, name in reversed(self._made):
            subprocess.run(["ip", kind, "del", name], capture_output=True)


class _Relay:
    """A TCP relay: each accepted connection is copied both ways on two threads."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def close(self) -> None:
        self.closed = True
        self.server.close()


class HttpApi:
    """The REST API over HTTP, as a script on another machine calls it."""

    def __init__(self, base: str, token: str):
        self.base, self.headers = base, {"Authorization": f"Token {token}"}

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.base}{path}", headers=self.headers, timeout=60)

    def post(self, path: str, data: dict | None = None, files: dict | None = None) -> requests.Response:
        if files:
            return requests.post(f"{self.base}{path}", headers=self.headers, data=data, files=files, timeout=60)
        return requests.post(f"{self.base}{path}", headers=self.headers, json=data or {}, timeout=300)


def start_worker(host: Host, env: dict[str, str], name: str, queues: str, *, concurrency: int = 1, beat: bool = False,
                 wait: bool = True) -> tuple[subprocess.Popen, Path]:
    """A Celery worker on `host` named `name@host-<name>`; returns it and its log."""
    from tests.conftest import LOG_DIR, ROOT
    from tests.e2e.test_finetune_e2e import wait_for

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"scale-{name}.log"
    if env.get("NEXUS_DATA_DIR"):  # a host of its own: its data folder
        Path(env["NEXUS_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    extra = ["-B", "-s", str(LOG_DIR / f"beat-{name}-{os.getpid()}")] if beat else []
    proc = host.start([sys.executable, "-m", "celery", "-A", "nexus", "worker", "-Q", queues, "--concurrency",
                       str(concurrency), "-l", "info", "-n", f"{name}@host-{name}", *extra], env=env, log=log, cwd=ROOT)
    if wait:
        wait_for(lambda: "ready." in log.read_text() or proc.poll() is not None, lambda ok: ok, 120, f"the worker {name}")
        assert proc.poll() is None, log.read_text()[-3000:]
    return proc, log


def start_web(host: Host, env: dict[str, str], port: int) -> str:
    """The ASGI server on `host`; returns its base URL once it answers."""
    from tests.conftest import LOG_DIR, ROOT
    from tests.e2e.test_finetune_e2e import wait_for

    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"scale-web-{port}.log"
    proc = host.start([sys.executable, "-m", "uvicorn", "nexus.asgi:application", "--host", host.address,
                       "--port", str(port), "--workers", "1"], env=env, log=log, cwd=ROOT)

    def up() -> bool:
        try:
            return requests.get(f"http://{host.address}:{port}/healthz", timeout=2).status_code in (200, 503)
        except requests.RequestException:
            return proc.poll() is not None

    wait_for(up, lambda ok: ok, 90, "the web server")
    assert proc.poll() is None, log.read_text()[-3000:]
    return f"http://{host.address}:{port}"

"""A real redis-server (the Debian package) on a free loopback port, in a folder of the test's own."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis


class RedisServer:
    """Append-only persistence on, so a restart of the server keeps what it acknowledged."""

    def __init__(self, workdir: Path, port: int, password: str | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make install` (deploy/install.sh) "
                               "installs it from the Debian packages")
        self.binary, self.workdir, self.port = binary, workdir, port
        self.password = password
        self.url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=(self.workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: "
                                       f"{(self.workdir / 'redis.log').read_text()[-2000:]}") from None
                time.sleep(0.05)
            finally:
                client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes the append-only file and exits
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def url_of(self, db: int) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{db}"

    def flush(self) -> None:
        """Empty database 0, the unit tests'; the session's servers keep theirs (database 1)."""
        with redis.Redis.from_url(self.url) as client:
            client.flushdb()

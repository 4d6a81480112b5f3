"""LocalServer's child server does not outlive the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_sigterm_to_the_owner_stops_its_server_child(tmp_path):
    # the owner holds the server in try/finally, as bench/quality.py does; a plain SIGTERM would kill
    # it at once and leave `glider serve` (and, once started, its engine processes) running
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from pathlib import Path
        from glider.clients.local_server import LocalServer

        server = LocalServer(Path({str(tmp_path)!r}), GLIDER_MODEL={str(tmp_path / "no-model")!r})
        try:
            print(server.proc.pid, flush=True)
            time.sleep(600)
        finally:
            server.close()
    """)], stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline())
    try:
        assert alive(child)  # still importing the server: it lives for seconds on its own
        owner.send_signal(signal.SIGTERM)
        assert owner.wait(60) == 128 + signal.SIGTERM
        assert not alive(child)
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)

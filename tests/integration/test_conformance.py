"""HTTP conformance of a served API: schemathesis' command line with every check (``--checks all``)
against a live ``glider serve``'s own /openapi.json, as an outside client would test it.

Every check includes RFC 9110's (405 with ``Allow``; 401 with ``WWW-Authenticate`` when credentials
are missing), schema-valid requests accepted and schema-violating ones refused, responses matching
their declared schema, status, content type and headers, and no 5xx. Two runs, as in the in-process
fuzzing (tests/server/test_fuzz_rest.py): creating and deleting agent profiles is fuzzed on its own,
because a profile the fuzzer creates has no adapters and its episodes answer a documented 503. A
third run checks the admin API of a server that has it disabled (no ``GLIDER_ADMIN_TOKEN``).
``GLIDER_CONFORMANCE_EXAMPLES`` (default 10) bounds the examples per operation.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerProcess

pytestmark = pytest.mark.integration

EXAMPLES = os.environ.get("GLIDER_CONFORMANCE_EXAMPLES", "10")
TOKEN = "conformance-admin-token"
PROFILE_WRITES = ["PUT /admin/profiles/{profile}", "DELETE /admin/profiles/{profile}"]


@pytest.fixture(scope="module")
def servers(backbone_dir, adapters_dir, tmp_path_factory):
    """Two HF servers (the cheapest real ones): admin API enabled, and disabled."""
    root = tmp_path_factory.mktemp("conformance")
    registry = root / "adapters"  # the admin calls the fuzzer makes (load, rollback) change its own copy
    shutil.copytree(adapters_dir, registry, symlinks=True)
    procs = {"admin": ServerProcess("hf", backbone_dir, registry, root / "admin.log", GLIDER_ADMIN_TOKEN=TOKEN),
             "no-admin": ServerProcess("hf", backbone_dir, adapters_dir, root / "no-admin.log")}
    try:
        for server in procs.values():
            server.wait_ready()
        yield procs
    finally:
        for server in procs.values():
            server.stop()


# part -> (server, admin credentials sent, operations selected, how many operations that is)
PARTS = {
    "api": ("admin", True, [a for name in PROFILE_WRITES for a in ("--exclude-name", name)], 17),
    "profile-writes": ("admin", True, [a for name in PROFILE_WRITES for a in ("--include-name", name)], 2),
    "admin-disabled": ("no-admin", False, ["--include-path-regex", "^/admin/"], 12),
}


@pytest.mark.parametrize("part", list(PARTS))
def test_the_served_api_passes_every_schemathesis_check(servers, part):
    name, credentials, selection, operations = PARTS[part]
    server = servers[name]
    auth = ["--header", f"Authorization: Bearer {TOKEN}"] if credentials else []
    run = subprocess.run(
        [str(Path(sys.executable).with_name("st")), "run", f"{server.url}/openapi.json", "--checks", "all",
         "--max-examples", EXAMPLES, "--generation-deterministic", "--request-timeout", "60",
         "--max-response-time", "60", "--no-color", *auth, *selection],
        capture_output=True, text=True, timeout=1200, cwd=server.log.parent)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report[-8000:]
    # the run tested what it was given (a filter that matched nothing would pass vacuously)
    assert f"Tested: {operations}" in report, report[-3000:]
    cases = re.search(r"(\d+) generated, (\d+) passed", report)
    assert cases and cases[1] == cases[2] and int(cases[1]) >= 10 * operations, report[-3000:]
    # a disabled admin API refuses every call, and only with the statuses its schema declares
    assert ("operations returned only 401/403" in report) == (name == "no-admin"), report[-3000:]

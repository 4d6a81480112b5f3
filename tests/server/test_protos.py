"""The committed gRPC stubs are what protos/generate.sh makes from the .proto today."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_are_up_to_date(tmp_path):
    src = ROOT / "protos"
    shutil.copytree(src, tmp_path / "protos", ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", "glider/v1/agent.proto"], cwd=tmp_path / "protos", check=True)
    for name in ("agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"):
        fresh = (tmp_path / "protos" / "glider" / "v1" / name).read_text()
        committed = (src / "glider" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run protos/generate.sh"

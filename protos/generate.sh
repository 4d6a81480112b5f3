#!/usr/bin/env bash
# Regenerate the committed Python stubs (glider.v1.agent_pb2, agent_pb2_grpc) from the .proto
# files with grpcio-tools (a dev dependency).  tests/server/test_protos.py fails when they are stale.
set -euo pipefail
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. glider/v1/agent.proto

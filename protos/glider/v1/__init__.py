"""GLIDER's wire contract, version 1: what crosses a process boundary, defined once.

``glider.v1.rest`` holds the REST models and input patterns, ``agent.proto`` (stubs in
``agent_pb2`` / ``agent_pb2_grpc``) the gRPC service. Both need only pydantic and protobuf (+ grpcio),
and import nothing else of GLIDER, so the SDK installs without the server.
"""

VERSION = "v1"

"""Transports over the Agent service: REST (FastAPI, rest.py), gRPC (grpc.py) and the admin API
(admin.py) both share; the wire types are the contract, ``glider.v1``."""

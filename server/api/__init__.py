"""Transports over the Agent service: REST (FastAPI) now, gRPC next."""

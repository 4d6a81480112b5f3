"""gRPC over TLS (GLIDER_GRPC_TLS_*): with a certificate the server speaks only TLS; with a client
CA it also demands a client certificate (mutual TLS). Certificates are made here with openssl."""

from __future__ import annotations

import shutil
import subprocess

import grpc
import pytest
from glider.clients.sdk import TLS, AsyncGliderGrpcClient, GliderAPIError
from glider.server.api.grpc import GrpcServer
from glider.server.settings import Settings
from glider.server.store import MemoryEpisodeStore

from tests.conftest import free_port
from tests.server.test_api import make_agent


def openssl(*args, cwd):
    binary = shutil.which("openssl")
    assert binary, "openssl is needed to make test certificates"
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key",
                "-out", f"{who}.csr", cwd=d)
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "san.ext", "-out", f"{who}.pem", cwd=d)
    return d


async def serve(tmp_path, settings: Settings):
    agent, _ = make_agent(tmp_path, MemoryEpisodeStore())
    await agent.start()
    server = GrpcServer(agent, "127.0.0.1", free_port(), 1 << 20, tls=settings.grpc_tls())
    await server.start()
    return agent, server


async def test_tls_serves_tls_clients_only(tmp_path, pki):
    settings = Settings(grpc_tls_cert=pki / "server.pem", grpc_tls_key=pki / "server.key")
    agent, server = await serve(tmp_path, settings)
    try:
        async with AsyncGliderGrpcClient(server.address, tls=TLS.from_files(ca=pki / "ca.pem")) as client:
            assert (await client.act("hallway", task="boil water")).step == 0
        async with AsyncGliderGrpcClient(server.address, timeout=3) as plain:  # no TLS: no service
            with pytest.raises(GliderAPIError) as err:
                await plain.act("hallway", task="boil water")
            assert err.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
        await agent.close()


async def test_mutual_tls_demands_a_client_certificate(tmp_path, pki):
    settings = Settings(grpc_tls_cert=pki / "server.pem", grpc_tls_key=pki / "server.key",
                        grpc_tls_client_ca=pki / "ca.pem")
    agent, server = await serve(tmp_path, settings)
    try:
        mutual = TLS.from_files(ca=pki / "ca.pem", cert=pki / "client.pem", key=pki / "client.key")
        async with AsyncGliderGrpcClient(server.address, tls=mutual) as client:
            assert (await client.act("hallway", task="boil water")).step == 0
        async with AsyncGliderGrpcClient(server.address, timeout=3,
                                         tls=TLS.from_files(ca=pki / "ca.pem")) as anonymous:
            with pytest.raises(GliderAPIError) as err:
                await anonymous.act("hallway", task="boil water")
            assert err.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)
        await agent.close()


def test_tls_settings_come_in_pairs(pki):
    with pytest.raises(ValueError, match="go together"):
        Settings(grpc_tls_cert=pki / "server.pem")
    with pytest.raises(ValueError, match="mutual TLS"):
        Settings(grpc_tls_client_ca=pki / "ca.pem")

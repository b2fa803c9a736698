"""Simulated device for drivers/opcua: a real asyncua OPC UA server on a free loopback port.

A boiler controller's address space (namespace ``urn:sensegate:sim``): ``Objects/2:Boiler`` with
``2:Temperature`` (Double, Cel), ``2:Pressure`` (Float), ``2:Running`` (Boolean), ``2:Starts``
(UInt32), ``2:Name`` (String) and a writable ``2:Setpoint`` (Double). Endpoints: None, and
Basic256Sha256 Sign and SignAndEncrypt with a server certificate made by ``make_certificate``
(the test makes the client's too). ``set()`` changes a value (subscribers get a data change).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography.x509.oid import ExtendedKeyUsageOID

NAMESPACE = "urn:sensegate:sim"
VARIABLES: dict[str, tuple[Any, ua.VariantType]] = {
    "Temperature": (71.5, ua.VariantType.Double),
    "Pressure": (1.5, ua.VariantType.Float),
    "Running": (True, ua.VariantType.Boolean),
    "Starts": (42, ua.VariantType.UInt32),
    "Name": ("boiler-1", ua.VariantType.String),
    "Setpoint": (70.0, ua.VariantType.Double),
}


async def make_certificate(directory: Path, name: str, app_uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed certificate and key (PEM) for an OPC UA application; returns (cert, key)."""
    cert, key = directory / f"{name}.der", directory / f"{name}.pem"
    use = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    await setup_self_signed_certificate(key, cert, app_uri, "localhost", use, {"commonName": name})
    return cert, key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OpcUaServer:
    """The boiler controller: start(), set(name, value), get(name), stop()."""

    def __init__(self, cert_dir: Path | None = None) -> None:
        self.cert_dir = cert_dir
        self.port = 0
        self.ns = 0
        self.nodes: dict[str, Any] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://127.0.0.1:{self.port}/sensegate/"

    async def start(self, port: int = 0) -> str:
        self.port = port or self.port or free_port()
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("sensegate simulated boiler")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.cert_dir is not None:
            cert, key = await make_certificate(self.cert_dir, "server", "urn:sensegate:sim:server", server=True)
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            await server.set_application_uri("urn:sensegate:sim:server")
            policies += [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        server.set_security_policy(policies)
        self.ns = await server.register_namespace(NAMESPACE)
        boiler = await server.nodes.objects.add_object(self.ns, "Boiler")
        self.nodes = {}
        for name, (value, vtype) in VARIABLES.items():
            node = await boiler.add_variable(self.ns, name, ua.Variant(value, vtype))
            if name == "Setpoint":
                await node.set_writable()
            self.nodes[name] = node
        await server.start()
        self._server = server
        return self.url

    def node_id(self, name: str) -> str:
        return self.nodes[name].nodeid.to_string()

    async def set(self, name: str, value: Any) -> None:
        await self.nodes[name].write_value(ua.Variant(value, VARIABLES[name][1]))

    async def get(self, name: str) -> Any:
        return await self.nodes[name].read_value()

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            async with asyncio.timeout(10):
                # asyncua's stop leaves the sessions of clients still connected (a daemon in another
                # process) running their timeout and subscription tasks: close them first, as a
                # server going away does (asyncua 2.x keeps them in this private table)
                for session in list(getattr(server.iserver, "_external_sessions", {}).values()):
                    await session.close_session(True)
                await server.stop()

"""Simulated device for drivers/example: a TCP thermometer speaking READ / SET lines."""

from __future__ import annotations

import asyncio


class ExampleDevice:
    """Serve ``READ`` -> ``T=<temp>`` and ``SET x`` -> ``OK`` on a loopback port.

    Faults for tests: ``garbage`` answers nonsense, ``silent`` never answers.
    """

    def __init__(self, temperature: float = 21.5) -> None:
        self.temperature = temperature
        self.setpoint: float | None = None
        self.garbage = False
        self.silent = False
        self.port = 0
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._clients):
                w.close()
            for t in self._handlers:
                t.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while line := await reader.readline():
                if self.silent:
                    continue
                cmd = line.strip().decode("ascii", "replace")
                if self.garbage:
                    writer.write(b"\xff\xfeT=banana\n")
                elif cmd == "READ":
                    writer.write(f"T={self.temperature:.2f}\n".encode())
                elif cmd.startswith("SET "):
                    self.setpoint = float(cmd[4:])
                    writer.write(b"OK\n")
                else:
                    writer.write(b"ERR unknown command\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            self._clients.discard(writer)
            self._handlers.discard(task)
            writer.close()

"""A TCP proxy on loopback that delays every byte by a fixed one-way latency, in each direction.

Loopback has a round trip of microseconds, so per-request costs there are pure CPU; a real
repository is tens of milliseconds away. Putting this in front of nginx (instead of
``tc netem``, which would slow down everyone else's loopback traffic on a shared machine) shows
how the tools behave when round trips dominate. Bandwidth is not limited, and data is
forwarded in arrival order, each chunk ``delay`` seconds after it arrived.
"""

from __future__ import annotations

import asyncio
import threading


class LatencyProxy:
    def __init__(self, upstream_host: str, upstream_port: int, one_way_delay: float, host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.delay = one_way_delay
        self.host = host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    try:
                        writer.write_eof()
                    except (OSError, RuntimeError):
                        pass
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(send())
        try:
            while True:
                data = await reader.read(256 * 1024)
                queue.put_nowait((loop.time() + self.delay, data or None))
                if not data:
                    break
            await sender
        except (OSError, asyncio.IncompleteReadError):
            sender.cancel()
        finally:
            if not sender.done():
                sender.cancel()

    async def _handle(self, client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(self._pump(client_reader, up_writer), self._pump(up_reader, client_writer),
                                 return_exceptions=True)
        finally:
            for w in (up_writer, client_writer):
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def start():
            self._server = await asyncio.start_server(self._handle, self.host, 0, backlog=1024)
            self.port = self._server.sockets[0].getsockname()[1]

        loop.run_until_complete(start())
        self._ready.set()
        loop.run_forever()
        self._server.close()
        tasks = asyncio.all_tasks(loop)  # connections still open: ended quietly, their results collected
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(self._server.wait_closed())
        loop.close()

    def __enter__(self) -> LatencyProxy:
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("latency proxy did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

#!/usr/bin/env python3
"""Sidecar memory under a 1 GiB streamed response and under 1000 idle client connections.

Starts a generator upstream (chunked, 64 KiB chunks, `SIZE_MIB` MiB in all) and `modeltap sidecar`
in front of it as subprocesses on 127.0.0.1, then
1. streams the whole body through the sidecar (reading as fast as it comes), sampling the
   sidecar's RSS every 50 ms: prints baseline, peak and the growth;
2. opens `IDLE` client connections to the sidecar that send nothing (keep-alive idle) and
   prints the RSS growth per connection.

usage: python bench/proxy_memory.py        env: SIZE_MIB (1024), IDLE (1000)
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time

from process_probes import free_port, rss_mib

SIZE_MIB = int(os.environ.get("SIZE_MIB", "1024"))
IDLE = int(os.environ.get("IDLE", "1000"))
CHUNK = b"x" * 65536


async def generator_upstream(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return  # readiness probes connect and close
            try:
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                )
                frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
                for _ in range(SIZE_MIB * 16):
                    writer.write(frame)
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            except ConnectionError:
                return  # the reader went away (the idle test reads only the status line)

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    up_port, port, admin = free_port(), free_port(), free_port()
    upstream = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import asyncio, proxy_memory; asyncio.run(proxy_memory.generator_upstream({up_port}))",
        ],
        cwd=os.path.dirname(os.path.abspath(__file__)),
    )
    modeltap = os.path.join(os.path.dirname(sys.executable), "modeltap")
    sidecar = subprocess.Popen(
        [
            modeltap,
            "sidecar",
            "--upstream",
            f"http://127.0.0.1:{up_port}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-port",
            str(admin),
            "--log-level",
            "warning",
            "--keepalive-timeout-s",
            "600",
            "--header-timeout-s",
            "600",
        ],
    )
    try:
        time.sleep(2.0)
        stream(sidecar.pid, port)
        idle(sidecar.pid, port)
    finally:
        sidecar.terminate()
        upstream.terminate()
        sidecar.wait(30)
        upstream.wait(10)


def stream(pid: int, port: int) -> None:
    base = rss_mib(pid)
    peak = base
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
    sock.settimeout(30)
    received = 0
    digest = hashlib.sha256()
    started = last = time.monotonic()
    while True:
        data = sock.recv(1 << 20)
        if not data:
            break
        received += len(data)
        digest.update(data)
        if data.endswith(b"0\r\n\r\n") and received > SIZE_MIB * 2**20:
            break
        now = time.monotonic()
        if now - last > 0.05:
            peak = max(peak, rss_mib(pid))
            last = now
    elapsed = time.monotonic() - started
    sock.close()
    print(
        f"streamed {received / 2**20:.0f} MiB (with chunk framing) in {elapsed:.1f} s "
        f"({received / 2**20 / elapsed:.0f} MiB/s): sidecar RSS {base:.1f} MiB before, "
        f"peak {peak:.1f} MiB (+{peak - base:.1f} MiB)"
    )


def idle(pid: int, port: int) -> None:
    time.sleep(0.5)
    base = rss_mib(pid)
    sockets = []
    for _ in range(IDLE):
        sockets.append(socket.create_connection(("127.0.0.1", port)))
    time.sleep(1.0)
    after = rss_mib(pid)
    ok = socket.create_connection(("127.0.0.1", port))
    ok.sendall(b"GET /stream HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    first = ok.recv(100)
    ok.close()
    for sock in sockets:
        sock.close()
    status_line = first.split(b"\r\n", 1)[0].decode()
    print(
        f"{IDLE} idle connections: sidecar RSS {base:.1f} -> {after:.1f} MiB "
        f"(+{(after - base) * 1024 / IDLE:.1f} KiB per connection); a request meanwhile got "
        f"{status_line!r}"
    )


if __name__ == "__main__":
    main()

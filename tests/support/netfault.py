"""A real TCP proxy in front of a real server (the session's Ray job server), which a test can make
fail the way a cluster's head fails on a real network: connections dropped (`cut`), a head that
accepts and never answers (`hang`), one kind of request dropped before it arrives
(`drop_requests`), or forwarded with its answer lost on the way back (`lose_answers`)."""

from __future__ import annotations

import socket
import struct
import threading
from urllib.parse import urlsplit


def _reset(sock: socket.socket) -> None:
    """Close with an RST, as a crashed head or a dropped route looks to the client. shutdown()
    first: a bare close() leaves the connection up while a pump thread is blocked reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultyProxy:
    def __init__(self, target_url: str):
        parts = urlsplit(target_url)
        self.target = (parts.hostname, parts.port)
        self.mode = "pass"  # pass | refuse | hang
        self.drop_requests: bytes | None = None  # connections whose request starts so are reset unsent
        self.lose_answers: bytes | None = None  # such requests reach the server; the answer is reset
        self.requests: list[bytes] = []  # the first line of every request seen
        self._live: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def cut(self) -> None:
        """Drop every open connection and reset new ones until `restore`."""
        self.mode = "refuse"
        self._drop_all()

    def hang(self) -> None:
        """Accept connections and never answer, until `restore` or `close`."""
        self.mode = "hang"

    def restore(self) -> None:
        self.mode = "pass"
        self._drop_all()  # hung connections end too; new ones pass

    def close(self) -> None:
        self._server.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            live, self._live = list(self._live), set()
        for sock in live:
            _reset(sock)

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._live.update(socks)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        if self.mode == "refuse":
            _reset(client)
            return
        self._track(client)
        if self.mode == "hang":
            return  # held open, never read or answered, until restore/close resets it
        try:
            first = client.recv(65536)
        except OSError:
            return
        self.requests.append(first.split(b"\r\n", 1)[0])
        if not first or self.drop_requests and first.startswith(self.drop_requests):
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        self._track(upstream)
        upstream.sendall(first)
        lose = bool(self.lose_answers and first.startswith(self.lose_answers))
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, lose)

    def _pump(self, src: socket.socket, dst: socket.socket, lose: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or lose:
                    break
                dst.sendall(data)
        except OSError:
            pass
        _reset(dst) if lose else _shutdown(dst)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass

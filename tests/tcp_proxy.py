"""A TCP proxy of the tests' own between the service and a dependency (PostgreSQL, Redis), to cut
or freeze it without touching the real server.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql+psycopg://postgres@127.0.0.1:{proxy.port}/test"
        proxy.cut()      # every connection dropped, new ones refused (the server is gone)
        proxy.freeze()   # connections accepted, nothing forwarded either way (the server hangs)
        proxy.restore()  # back to normal (frozen connections are closed: clients reconnect)
"""

import contextlib
import socket
import threading

CHUNK = 64 * 1024


class TcpProxy:
    """Forwards 127.0.0.1:`port` to (`host`, `upstream_port`); see the module docstring."""

    def __init__(self, host: str, upstream_port: int, port: int = 0):
        self.upstream = (host, upstream_port)
        self.port = port
        self.mode = "open"  # open, cut or frozen
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    # --- life cycle ------------------------------------------------------------------------------

    def __enter__(self) -> "TcpProxy":
        self._listen()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._stop_listening()
        self._drop_all()

    # --- faults ----------------------------------------------------------------------------------

    def cut(self) -> None:
        """Drop every connection and refuse new ones (nothing listens on the port)."""
        self.mode = "cut"
        self._stop_listening()
        self._drop_all()

    def freeze(self) -> None:
        """Accept connections, forward nothing: the dependency seems to hang."""
        self.mode = "frozen"
        if self._listener is None:
            self._listen()

    def restore(self) -> None:
        """Forward again; connections made or held while frozen are closed."""
        was = self.mode
        self.mode = "open"
        if was == "frozen":
            self._drop_all()
        if self._listener is None:
            self._listen()

    # --- the work --------------------------------------------------------------------------------

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _stop_listening(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a pump reading it: the peer sees the end
            try:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                sock.close()  # linger 0: a reset, as when a server dies
            except OSError:
                pass

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            self._track(client)
            if self.mode == "frozen":
                continue  # held open, never answered
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._track(server)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                while self.mode == "frozen":  # hold the bytes until restored or dropped
                    if source.fileno() == -1:
                        return
                    threading.Event().wait(0.05)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

"""The listening socket, opened before the model loads so that a port in use is a one-line error at once."""

from __future__ import annotations

import socket

from titlegen import TitlegenError


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host` and `port` (0: a free port the system chooses), for uvicorn to serve on.

    Raises:
        TitlegenError: when the address cannot be used (unknown host, port in use, no permission).
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise TitlegenError(f"--host {host}: {err.strerror}") from None
    sock = socket.socket(family, kind, proto)
    # A restarted server can listen again at once, while connections of the previous one are in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise TitlegenError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    return sock

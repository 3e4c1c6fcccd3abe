"""Engine ports: the spec's own, or a free one from the configured range; never one in use."""

from __future__ import annotations

import socket


class PortUnavailableError(Exception):
    pass


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port with connections in TIME_WAIT is still usable by a new listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


class PortAllocator:
    def __init__(self, host: str, start: int, end: int) -> None:
        self.host = host
        self.start = start
        self.end = end
        self._held: dict[str, int] = {}
        self._next = start

    def hold(self, model_id: str, port: int) -> None:
        """Record a port already in use by one of our engines (re-adoption)."""
        self._held[model_id] = port

    def release(self, model_id: str) -> None:
        self._held.pop(model_id, None)

    def acquire(self, model_id: str, wanted: int | None) -> int:
        self._held.pop(model_id, None)
        taken = set(self._held.values())
        if wanted is not None:
            if wanted in taken or not port_is_free(self.host, wanted):
                raise PortUnavailableError(f"port {wanted} is already in use on {self.host}")
            self._held[model_id] = wanted
            return wanted
        span = self.end - self.start + 1
        # Round-robin through the range so a just-released port is not reused at once.
        for step in range(span):
            port = self.start + (self._next - self.start + step) % span
            if port not in taken and port_is_free(self.host, port):
                self._next = port + 1
                self._held[model_id] = port
                return port
        raise PortUnavailableError(f"no free port in {self.start}-{self.end} on {self.host}")

"""What the cluster tells the API: the model is another node's to act on."""

from __future__ import annotations


class OwnedElsewhereError(Exception):
    """Another node owns the model (or a start is placed there): send the request there."""

    def __init__(
        self, model_id: str, node: str, url: str | None, *, why: str, placed: bool = False
    ) -> None:
        verb = "is placed on" if placed else "is on"
        super().__init__(f"model {model_id} {verb} node {node}: {why}")
        self.model_id = model_id
        self.node = node
        self.url = url
        self.why = why
        # True: this node chose `node` for a start, which `node` must then not place again.
        self.placed = placed

"""Build a ModelStore tree in a temporary directory, laid out as the training side publishes it.

    store = ModelStoreFactory(tmp_path / "model_store")
    store.add_hf_snapshot("base_models", "v1", "mistralai/Mistral-7B-Instruct-v0.3", current=True)
    store.add_adapter("synthesizer/adapters/mistral_synth_v1")

Versions hold a manifest.json ({version, checksum, metadata}); `current` is a relative symlink
flipped atomically (as a publisher would, so a reader never sees it missing); Hugging Face cache
snapshots hold relative symlinks into `blobs/`, as `huggingface_hub` writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MODEL_CONFIG = {"architectures": ["MistralForCausalLM"], "model_type": "mistral"}


def adapter_config(rank: int = 8) -> dict[str, Any]:
    return {"r": rank, "target_modules": DEFAULT_TARGET_MODULES, "peft_type": "LORA"}


class ModelStoreFactory:
    """Writes versions, `current` links, HF snapshots and adapters under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def version_dir(self, agent: str, version: str) -> Path:
        return self.root / agent / "versions" / version

    def add_version(
        self,
        agent: str,
        version: str,
        *,
        metadata: dict[str, Any] | None = None,
        current: bool = False,
    ) -> Path:
        """An empty version with its manifest.json; returns the version directory."""
        directory = self.version_dir(agent, version)
        directory.mkdir(parents=True, exist_ok=True)
        manifest = {
            "version": version,
            "checksum": hashlib.sha256(f"{agent}/{version}".encode()).hexdigest(),
            "metadata": metadata or {},
        }
        (directory / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        if current:
            self.set_current(agent, version)
        return directory

    def add_flat_model(self, agent: str, version: str, *, current: bool = False) -> Path:
        """A version whose directory is itself the model (config.json at its top)."""
        directory = self.add_version(agent, version, current=current)
        (directory / "config.json").write_text(json.dumps(MODEL_CONFIG), encoding="utf-8")
        return directory

    def add_hf_snapshot(
        self,
        agent: str,
        version: str,
        hf_id: str,
        revision: str = "0123456789abcdef",
        *,
        ref_main: bool = True,
        current: bool = False,
    ) -> Path:
        """A Hugging Face cache of `hf_id` inside the version; returns the snapshot directory."""
        directory = self.version_dir(agent, version)
        if not (directory / "manifest.json").exists():
            self.add_version(agent, version)
        cache = directory / ("models--" + hf_id.replace("/", "--"))
        snapshot = cache / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        content = json.dumps({**MODEL_CONFIG, "_revision": revision}).encode()
        blob = cache / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = snapshot / "config.json"
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(blob, snapshot))
        if ref_main:
            (cache / "refs").mkdir(exist_ok=True)
            (cache / "refs" / "main").write_text(revision, encoding="utf-8")
        if current:
            self.set_current(agent, version)
        return snapshot

    def set_current(self, agent: str, version: str) -> Path:
        """Point `<agent>/current` at `versions/<version>` (relative), replacing it atomically."""
        link = self.root / agent / "current"
        staging = self.root / agent / f".current.{version}.tmp"
        if staging.is_symlink():
            staging.unlink()
        staging.symlink_to(Path("versions") / version)
        staging.replace(link)
        return link

    def add_adapter(self, relative_path: str, *, rank: int = 8, with_config: bool = True) -> Path:
        """A LoRA adapter directory; without `with_config` it lacks adapter_config.json."""
        directory = self.root / relative_path
        directory.mkdir(parents=True, exist_ok=True)
        if with_config:
            config = json.dumps(adapter_config(rank))
            (directory / "adapter_config.json").write_text(config, encoding="utf-8")
        (directory / "adapter_model.safetensors").write_bytes(b"\x00" * 16)
        return directory

    def add_symlink(self, relative_path: str, target: Path) -> Path:
        """A symlink inside the store pointing at `target` (possibly outside the root)."""
        link = self.root / relative_path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)
        return link

    def populate_from_agent_map(
        self, map_path: Path, *, sections: Iterable[str] = ("agents", "vllm_agents")
    ) -> None:
        """Publish every base model (as an HF snapshot, made current) and every adapter that
        `map_path` lists, so that loading that map against this store finds everything."""
        data = json.loads(map_path.read_text(encoding="utf-8"))
        for entry in data.get("base_models", {}).values():
            agent = entry.get("model_store_agent", "base_models")
            version = entry.get("model_store_version", "v1")
            self.add_hf_snapshot(agent, version, entry["hf_id"], current=True)
        for section in sections:
            for entries in data.get(section, {}).values():
                for entry in entries:
                    self.add_adapter(entry["adapter_model_store_path"])

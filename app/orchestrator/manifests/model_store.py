"""ModelStore: versioned model and adapter directories under MODEL_STORE_ROOT.

Layout (shared with the training side that publishes into it):

    <root>/<agent>/versions/<version>/manifest.json    {version, checksum, metadata}
    <root>/<agent>/current -> versions/<version>        relative symlink to the live version
    <root>/<agent>/versions/<version>/models--org--name/snapshots/<rev>/   optional HF cache layout
    <root>/<agent>/adapters/<name>/adapter_config.json  a PEFT adapter

Every path handed out is real (symlinks resolved): an engine started on `current` keeps the version
it loaded when `current` is flipped to a newer one. Every path handed out also lies inside the real
root, so a `..` or a symlink in a published tree cannot point an engine at arbitrary files.
"""

from __future__ import annotations

from pathlib import Path

ADAPTER_CONFIG_FILE = "adapter_config.json"
CURRENT_LINK = "current"
VERSIONS_DIR = "versions"


class ModelStoreError(Exception):
    """A path could not be resolved; the message names every path that was tried."""

    def __init__(self, message: str, paths_tried: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.paths_tried = paths_tried


def hf_cache_dir_name(model_id: str) -> str:
    """`mistralai/Mistral-7B-Instruct-v0.3` -> `models--mistralai--Mistral-7B-Instruct-v0.3`."""
    return "models--" + model_id.replace("/", "--")


class ModelStore:
    """Resolves model and adapter directories; reads the file system, writes nothing."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def real_root(self) -> Path:
        # Resolved on every call: the root may itself be a symlink that an operator repoints.
        return self.root.resolve()

    def resolve_model_store_path(
        self, agent: str, model_id: str | None = None, version: str | None = None
    ) -> Path:
        """The real directory of `agent`'s `version` (default: what `current` points to).

        With `model_id`, the model inside that version: the subdirectory `model_id`, else the
        Hugging Face cache snapshot of `model_id` (the revision `refs/main` names, else the only or
        newest snapshot). Raises ModelStoreError naming every path tried.
        """
        if not agent:
            raise ModelStoreError("agent name is empty")
        agent_dir = self.root / agent
        base = agent_dir / VERSIONS_DIR / version if version else agent_dir / CURRENT_LINK
        version_dir = self._existing_dir_inside(base, "version directory")
        if model_id is None:
            return version_dir
        return self._model_in_version(version_dir, model_id)

    def resolve_adapter(self, relative_path: str) -> Path:
        """The real directory of an adapter given relative to the root.

        Raises ModelStoreError when the path is absolute, missing, escapes the root, is not a
        directory, or holds no adapter_config.json (vLLM refuses such a directory at load time).
        """
        if not relative_path or Path(relative_path).is_absolute():
            raise ModelStoreError(
                f"adapter path {relative_path!r} must be relative to the ModelStore root "
                f"{self.root}"
            )
        adapter_dir = self._existing_dir_inside(self.root / relative_path, "adapter directory")
        config = adapter_dir / ADAPTER_CONFIG_FILE
        if not config.is_file():
            raise ModelStoreError(
                f"adapter directory {adapter_dir} has no {ADAPTER_CONFIG_FILE}", (str(config),)
            )
        return adapter_dir

    def _existing_dir_inside(self, path: Path, what: str) -> Path:
        try:
            real = path.resolve(strict=True)
        except (FileNotFoundError, NotADirectoryError):
            raise ModelStoreError(f"{what} {path} does not exist", (str(path),)) from None
        except (OSError, RuntimeError) as error:  # symlink loops, permissions
            message = f"{what} {path} cannot be resolved: {error}"
            raise ModelStoreError(message, (str(path),)) from None
        root = self.real_root
        if not real.is_relative_to(root):
            raise ModelStoreError(
                f"{what} {path} resolves to {real}, which escapes the ModelStore root {root}",
                (str(path),),
            )
        if not real.is_dir():
            raise ModelStoreError(f"{what} {path} is not a directory", (str(path),))
        return real

    def _model_in_version(self, version_dir: Path, model_id: str) -> Path:
        plain = version_dir / model_id
        cache = version_dir / hf_cache_dir_name(model_id)
        snapshots = cache / "snapshots"
        tried: list[str] = [str(plain)]
        if plain.is_dir():
            return self._existing_dir_inside(plain, "model directory")
        ref_main = cache / "refs" / "main"
        revision = _read_revision(ref_main)
        if revision is not None:
            tried.append(str(snapshots / revision))
            if (snapshots / revision).is_dir():
                return self._existing_dir_inside(snapshots / revision, "model snapshot")
        tried.append(str(snapshots / "*"))
        candidates = _snapshot_dirs(snapshots)
        if not candidates:
            raise ModelStoreError(
                f"model {model_id!r} not found in {version_dir}: tried {', '.join(tried)}",
                tuple(tried),
            )
        # No usable refs/main: the most recently written snapshot is the one a download left last;
        # the name breaks ties so two loads of the same tree always agree.
        newest = max(candidates, key=lambda item: (item.stat().st_mtime_ns, item.name))
        return self._existing_dir_inside(newest, "model snapshot")


def _read_revision(ref_file: Path) -> str | None:
    try:
        revision = ref_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    # A revision is a commit hash or a tag; anything path-like is not one.
    if not revision or "/" in revision or revision in {".", ".."}:
        return None
    return revision


def _snapshot_dirs(snapshots: Path) -> list[Path]:
    try:
        return [entry for entry in snapshots.iterdir() if entry.is_dir()]
    except OSError:
        return []

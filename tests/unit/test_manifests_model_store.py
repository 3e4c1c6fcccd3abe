from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.orchestrator.manifests.model_store import ModelStore, ModelStoreError
from tests.unit.modelstore_factory import ModelStoreFactory

HF_ID = "mistralai/Mistral-7B-Instruct-v0.3"


@pytest.fixture
def factory(tmp_path: Path) -> ModelStoreFactory:
    return ModelStoreFactory(tmp_path / "store")


def test_model_store_current_resolves_to_real_version_dir(factory: ModelStoreFactory) -> None:
    version_dir = factory.add_version("base_models", "v1", current=True)

    resolved = ModelStore(factory.root).resolve_model_store_path("base_models")

    assert resolved == version_dir.resolve()
    assert "current" not in resolved.parts
    assert resolved.is_absolute()


def test_model_store_explicit_version_wins_over_current(factory: ModelStoreFactory) -> None:
    factory.add_version("base_models", "v1", current=True)
    older = factory.add_version("base_models", "v0")

    resolved = ModelStore(factory.root).resolve_model_store_path("base_models", version="v0")

    assert resolved == older.resolve()


def test_model_store_hf_snapshot_follows_refs_main(factory: ModelStoreFactory) -> None:
    named = factory.add_hf_snapshot("base_models", "v1", HF_ID, revision="aaa111")
    newer = factory.add_hf_snapshot("base_models", "v1", HF_ID, revision="bbb222", ref_main=False)
    os.utime(newer, (named.stat().st_mtime + 100, named.stat().st_mtime + 100))

    resolved = ModelStore(factory.root).resolve_model_store_path("base_models", HF_ID, "v1")

    assert resolved == named.resolve()
    assert (resolved / "config.json").is_file()


def test_model_store_hf_snapshot_without_refs_picks_newest(factory: ModelStoreFactory) -> None:
    older = factory.add_hf_snapshot("base_models", "v1", HF_ID, revision="zzz999", ref_main=False)
    newer = factory.add_hf_snapshot("base_models", "v1", HF_ID, revision="aaa111", ref_main=False)
    base_s = older.stat().st_mtime
    os.utime(older, (base_s, base_s))
    os.utime(newer, (base_s + 60, base_s + 60))

    resolved = ModelStore(factory.root).resolve_model_store_path("base_models", HF_ID, "v1")

    assert resolved == newer.resolve()


def test_model_store_plain_subdir_for_model_id(factory: ModelStoreFactory) -> None:
    version_dir = factory.add_version("base_models", "v1")
    plain = version_dir / "mistralai" / "Mistral-7B-Instruct-v0.3"
    plain.mkdir(parents=True)

    resolved = ModelStore(factory.root).resolve_model_store_path("base_models", HF_ID, "v1")

    assert resolved == plain.resolve()


def test_model_store_missing_model_names_every_path_tried(factory: ModelStoreFactory) -> None:
    version_dir = factory.add_version("base_models", "v1")

    with pytest.raises(ModelStoreError) as caught:
        ModelStore(factory.root).resolve_model_store_path("base_models", HF_ID, "v1")

    message = str(caught.value)
    assert str(version_dir / HF_ID) in message
    assert str(version_dir / "models--mistralai--Mistral-7B-Instruct-v0.3" / "snapshots") in message
    assert len(caught.value.paths_tried) == 2


def test_model_store_missing_version_names_path(factory: ModelStoreFactory) -> None:
    with pytest.raises(ModelStoreError, match=r"base_models/versions/v9 does not exist"):
        ModelStore(factory.root).resolve_model_store_path("base_models", version="v9")


def test_model_store_current_flip_keeps_resolved_path(factory: ModelStoreFactory) -> None:
    old = factory.add_hf_snapshot("base_models", "v1", HF_ID, current=True)
    new = factory.add_hf_snapshot("base_models", "v2", HF_ID)
    store = ModelStore(factory.root)
    resolved_before = store.resolve_model_store_path("base_models", HF_ID)

    factory.set_current("base_models", "v2")

    assert resolved_before == old.resolve()
    assert resolved_before.is_dir()
    assert store.resolve_model_store_path("base_models", HF_ID) == new.resolve()


def test_model_store_rejects_dotdot_escape(factory: ModelStoreFactory, tmp_path: Path) -> None:
    outside = tmp_path / "outside" / "adapter"
    outside.mkdir(parents=True)
    (outside / "adapter_config.json").write_text("{}", encoding="utf-8")

    with pytest.raises(ModelStoreError, match="escapes the ModelStore root"):
        ModelStore(factory.root).resolve_adapter("../outside/adapter")


def test_model_store_rejects_symlink_escape(factory: ModelStoreFactory, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "versions" / "v1").mkdir(parents=True)
    factory.add_symlink("synthesizer/adapters/evil", outside)
    factory.add_symlink("base_models/current", outside / "versions" / "v1")
    store = ModelStore(factory.root)

    with pytest.raises(ModelStoreError, match="escapes the ModelStore root"):
        store.resolve_adapter("synthesizer/adapters/evil")
    with pytest.raises(ModelStoreError, match="escapes the ModelStore root"):
        store.resolve_model_store_path("base_models")


def test_model_store_adapter_resolves_real_absolute_dir(factory: ModelStoreFactory) -> None:
    adapter = factory.add_adapter("synthesizer/adapters/mistral_synth_v1")
    factory.add_symlink("synthesizer/adapters/latest", Path("mistral_synth_v1"))

    resolved = ModelStore(factory.root).resolve_adapter("synthesizer/adapters/latest")

    assert resolved == adapter.resolve()
    assert resolved.is_absolute()


def test_model_store_adapter_requires_adapter_config(factory: ModelStoreFactory) -> None:
    factory.add_adapter("critic/adapters/bare", with_config=False)

    with pytest.raises(ModelStoreError, match=r"critic/adapters/bare has no adapter_config\.json"):
        ModelStore(factory.root).resolve_adapter("critic/adapters/bare")


def test_model_store_missing_adapter_names_path(factory: ModelStoreFactory) -> None:
    with pytest.raises(ModelStoreError) as caught:
        ModelStore(factory.root).resolve_adapter("critic/adapters/gone")

    assert str(factory.root / "critic/adapters/gone") in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_model_store_adapter_rejects_absolute_path(factory: ModelStoreFactory) -> None:
    adapter = factory.add_adapter("critic/adapters/a")

    with pytest.raises(ModelStoreError, match="must be relative"):
        ModelStore(factory.root).resolve_adapter(str(adapter))

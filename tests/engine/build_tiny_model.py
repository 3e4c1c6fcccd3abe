# mypy: ignore-errors
"""Build the tiny Llama model and two LoRA adapters that the real-engine tests serve.

Run with the engine venv's python (it has torch, transformers, tokenizers and peft; the service's
venv has none of them, hence the mypy opt-out above):

    <engine-venv>/bin/python tests/engine/build_tiny_model.py OUTDIR

Writes ``OUTDIR/model`` (a safetensors Llama checkpoint with a byte-level BPE tokenizer and a chat
template) and ``OUTDIR/adapters/<name>`` for each adapter in ``ADAPTERS``. Every random choice is
seeded, so two builds give the same weights. No model hub is contacted.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

BASE_SEED = 1234
VOCAB_SIZE = 1024
# head_dim = hidden / heads = 32: vLLM's CPU attention only supports head sizes
# 32, 64, 80, 96, 112 and 128 (16 starts, then crashes on the first request).
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_LAYERS = 2
NUM_HEADS = 4
MAX_POSITIONS = 2048

# name -> (rank, seed). Ranks must stay within the --max-lora-rank the tests pass (16).
ADAPTERS: dict[str, tuple[int, int]] = {
    "tiny_synth_v1": (8, 101),
    "tiny_rerank_v1": (16, 202),
}

BASE_MODEL_NAME = "tiny-llama"
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<s>{{ message['role'] }}\n{{ message['content'] }}</s>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)

# The corpus only has to be varied enough for the trainer to reach VOCAB_SIZE merges.
CORPUS_TEXT = (
    "the orchestrator keeps model servers running on a gpu node and answers completions chat "
    "requests over http with health checks restarts backoff adapters memory headroom quick brown "
    "fox jumps lazy dog hello world how are you today fine thank user assistant system tool role "
    "content function return value error warning info debug start stop ready failed degraded "
    "launch engine cache kernel tensor layer weight token prompt sample temperature maximum "
    "minimum length batch queue worker process signal group session timeout budget policy metric "
    "counter gauge alert sample monitor placement device free reserved required margin network "
    "python rust java script compile build test deploy release version config setting option "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday January February March April May "
    "June July August September October November December zero one two three four five six seven "
    "eight nine ten hundred thousand million red green blue yellow black white orange purple"
)
CORPUS_PUNCTUATION = [" ", " ", " ", ", ", ". ", "! ", "? ", ": ", "; ", "\n", " (", ") ", " - "]
CORPUS_LINE_COUNT = 4000


def corpus_lines() -> list[str]:
    """A deterministic pseudo-text of words, numbers and punctuation."""
    rng = random.Random(BASE_SEED)
    words = CORPUS_TEXT.split()
    lines = []
    for _ in range(CORPUS_LINE_COUNT):
        parts = []
        for _ in range(rng.randint(4, 16)):
            word = rng.choice(words)
            if rng.random() < 0.15:
                word = word.capitalize()
            if rng.random() < 0.1:
                word = str(rng.randint(0, 9999))
            parts.append(word + rng.choice(CORPUS_PUNCTUATION))
        lines.append("".join(parts))
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on a small fixed corpus (deterministic)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised two-layer Llama sized to the tokenizer."""
    torch.manual_seed(BASE_SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=NUM_HEADS,
        num_key_value_heads=NUM_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    return LlamaForCausalLM(config).eval()


def save_adapter(model_dir: Path, out_dir: Path, rank: int, seed: int) -> None:
    """Save a LoRA on q_proj/v_proj with random (non-zero) B, so its outputs differ from base."""
    torch.manual_seed(seed)
    base = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        # peft's default zeroes B, which would make the adapter a no-op.
        init_lora_weights=False,
    )
    peft_model = get_peft_model(base, lora)
    # peft records the base model's absolute path; a fixed name keeps the build reproducible
    # wherever it is written (vLLM serves the adapter on whatever base it was started with).
    peft_model.peft_config["default"].base_model_name_or_path = BASE_MODEL_NAME
    peft_model.save_pretrained(out_dir, safe_serialization=True)
    normalise_adapter_config(out_dir / "adapter_config.json")
    # The generated model card names the base model's absolute path and is read by nothing.
    (out_dir / "README.md").unlink(missing_ok=True)


def normalise_adapter_config(path: Path) -> None:
    """Sort target_modules (peft saves a set, whose order varies with PYTHONHASHSEED)."""
    config = json.loads(path.read_text())
    config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build(out_dir: Path) -> None:
    """Write ``out_dir/model`` and ``out_dir/adapters/<name>`` for every adapter."""
    model_dir = out_dir / "model"
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    for name, (rank, seed) in ADAPTERS.items():
        save_adapter(model_dir, out_dir / "adapters" / name, rank, seed)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUTDIR", file=sys.stderr)
        return 2
    build(Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

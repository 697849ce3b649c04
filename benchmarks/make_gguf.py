"""A GGUF file in a real model's shape with random weights, made by llama.cpp's own tools, cached.

    .venv/bin/python benchmarks/make_gguf.py [--shape smollm2-1.7b] [--type Q4_1]

Prints the file's path, making it first when it is missing: a random-weight model of `--shape`
(`tests/generation/random_model.py`: SmolLM2's vocabulary, the default model's tokenizer and
chat template) saved as a Hugging Face folder in bf16, converted by llama.cpp's
`convert_hf_to_gguf.py` to an F16 GGUF and quantised by `llama-quantize` to `--type`, both from
the llama.cpp that `benchmarks/llama_build.py` builds the peer from. Only the final file is
kept, under `.venv/muse-gguf/` by a temporary name and a rename (a killed run leaves nothing that
looks finished). The 1.7B shape takes a few minutes and ~7 GB of disk on the way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.llama_build import ROOT, convert_script, llama_quantize_binary  # noqa: E402

CACHE = ROOT / ".venv" / "muse-gguf"
# What the converter imports that Muse does not install (it tries a SentencePiece vocabulary
# first and only falls back to the tokenizer.json one when that says the file is missing).
CONVERTER_DEPS = CACHE / "deps"


def made_gguf(shape: str = "smollm2-1.7b", kind: str = "Q4_1", log=print) -> Path:
    """The cached GGUF of `shape` quantised to `kind`, made first when it is missing."""
    final = CACHE / f"{shape}-random-{kind}.gguf"
    if final.exists():
        return final
    CACHE.mkdir(parents=True, exist_ok=True)
    converter, quantize = convert_script(log), llama_quantize_binary(log)
    with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
        work = Path(scratch)
        log(f"making {final.name}: a random {shape} model...")
        _save_random(shape, work / "hf")
        log("converting it with llama.cpp's convert_hf_to_gguf.py...")
        f16 = work / "f16.gguf"
        # The script's own gguf-py (it puts it first), and the converter's own deps.
        env = {**os.environ, "PYTHONPATH": str(_converter_deps())}
        _run([sys.executable, str(converter), str(work / "hf"), "--outfile", str(f16),
              "--outtype", "f16"], env)  # fmt: skip
        log(f"quantising it to {kind} with llama-quantize...")
        partial = work / "quantised.gguf"
        _run([str(quantize), str(f16), str(partial), kind], env)
        partial.replace(final)
    return final


def _converter_deps() -> Path:
    """A folder with `sentencepiece`, installed there once with pip."""
    if not (CONVERTER_DEPS / "sentencepiece").is_dir():
        _run([sys.executable, "-m", "pip", "install", "-q", "--target", str(CONVERTER_DEPS),
              "sentencepiece"], dict(os.environ))  # fmt: skip
    return CONVERTER_DEPS


def _save_random(shape: str, folder: Path) -> None:
    """The random model of `shape` with the default model's tokenizer, as a bf16 folder."""
    from transformers import AutoTokenizer

    from generation.model.loading import default_model_path
    from generation.model.random_model import random_model

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = random_model(shape, tokenizer, "cpu", torch.bfloat16)
    loaded.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _run(command: list[str], env: dict[str, str]) -> None:
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="smollm2-1.7b")
    parser.add_argument("--type", default="Q4_1", help="llama-quantize's type (Q4_1, Q4_0, Q8_0)")
    args = parser.parse_args()
    print(made_gguf(args.shape, args.type, log=lambda line: print(line, file=sys.stderr)))

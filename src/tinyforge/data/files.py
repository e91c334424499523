"""Find, verify and (when allowed) download the benchmark files.

Where files are looked for, in order:

1. an explicit ``data_dir`` argument (the CLI's ``--data-dir``);
2. the ``TINYFORGE_DATA_DIR`` environment variable;
3. a ``shared/data/benchmarks`` folder in any ancestor of the working directory or of this package;
4. the user cache (``TINYFORGE_CACHE_DIR`` or ``~/.cache/tinyforge/benchmarks``), where missing files are
   downloaded unless ``TINYFORGE_OFFLINE=1`` or ``allow_download=False``.

Every file is checked against its sha256 before use; a file that fails is an error, never silently replaced.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FILES",
    "DataError",
    "DataFile",
    "Source",
    "benchmark_file",
    "cache_dir",
    "data_dir",
    "offline",
    "sha256_file",
]

SHARED_SUBDIR = Path("shared") / "data" / "benchmarks"
DOWNLOAD_TIMEOUT_S = 60


class DataError(Exception):
    """A benchmark file is missing, corrupt or unreadable; the message is one line saying what to do."""


@dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from; ``gunzip`` means the download is gzipped but we store it plain."""

    url: str
    gunzip: bool = False


@dataclass(frozen=True)
class DataFile:
    """A benchmark file we know: its name, the sha256 of the bytes we store, and where to download it."""

    name: str
    sha256: str
    sources: tuple[Source, ...] = ()


_GH = "https://raw.githubusercontent.com"
_QWEN = f"{_GH}/QwenLM/Qwen2.5-Coder/main/qwencoder-eval/instruct"
_GSM8K = f"{_GH}/openai/grade-school-math/master/grade_school_math/data"

FILES: dict[str, DataFile] = {
    f.name: f
    for f in [
        DataFile(
            "HumanEval.jsonl.gz",
            "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
            (Source(f"{_GH}/openai/human-eval/master/data/HumanEval.jsonl.gz"),),
        ),
        DataFile(
            "HumanEvalPlus-v0.1.0.jsonl.gz",
            "0057bd81f173899088991a3b116b3a40803ecbeba73a1b127ebe9d4d8a431c64",
            (
                Source(
                    f"{_GH}/ganler/release/6c856336b2804b993487dabc10416fc48890c7ed"
                    "/dataset/HumanEvalPlus/HumanEvalPlus-v0.1.0.jsonl.gz"
                ),
            ),
        ),
        DataFile(
            "MbppPlus-v0.1.0.jsonl",
            "a855b9de667baea8e2f8aa61f898767a7336872208a85222b35622545e819fe9",
            (
                Source(f"{_QWEN}/eval_plus/data/MbppPlus-v0.1.0.jsonl"),
                Source(
                    "https://github.com/evalplus/mbppplus_release/releases/download/v0.1.0/MbppPlus.jsonl.gz",
                    gunzip=True,
                ),
            ),
        ),
        DataFile(
            "mbpp.jsonl",
            "ccf64ceae9c5403bf50a044cb6d505bfd2a2963ee58338ba268fd65beab92a9f",
            (
                Source(f"{_GH}/google-research/google-research/master/mbpp/mbpp.jsonl"),
                Source(f"{_GH}/deepseek-ai/DeepSeek-Coder/main/Evaluation/MBPP/data/mbpp.jsonl"),
            ),
        ),
        DataFile(
            "sanitized-mbpp.json",
            "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9",
            (Source(f"{_GH}/google-research/google-research/master/mbpp/sanitized-mbpp.json"),),
        ),
        DataFile(
            "bigcodebench_hard.json",
            "5e7a87ff1085eafb13b2d570277bcb53dba68201717b4fc987a3f2b86a23869c",
            (Source(f"{_QWEN}/BigCodeBench/data/bigcodebench_hard.json"),),
        ),
        DataFile(
            "gsm8k_test.jsonl",
            "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
            (Source(f"{_GSM8K}/test.jsonl"),),
        ),
        DataFile(
            "gsm8k_train.jsonl",
            "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
            (Source(f"{_GSM8K}/train.jsonl"),),
        ),
        DataFile(
            "math500_test.jsonl",
            "35dc41080a3680858b27fa7e0533d2d547825316fc5dafe5d316f4ccc5a06132",
            (
                Source(f"{_GH}/openai/prm800k/main/prm800k/math_splits/test.jsonl"),
                Source(f"{_GH}/noforit/SeerSC/main/evaluation/data/math/test.jsonl"),
            ),
        ),
        # Assembled by hand from several sources (see MANIFEST.md): there is nothing to download it from.
        DataFile(
            "aime_2022_2024.jsonl",
            "0057a73d9e12e3e24706f8d4ab66643da2e90b45c85e0e211771d03d77a60b83",
        ),
    ]
}

# (resolved path, mtime_ns, size) of files whose checksum already matched in this process.
_VERIFIED: set[tuple[str, int, int]] = set()


def offline() -> bool:
    """True when ``TINYFORGE_OFFLINE`` is set to a true value (1, true, yes, on)."""
    return os.environ.get("TINYFORGE_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def cache_dir() -> Path:
    """The download cache: ``TINYFORGE_CACHE_DIR`` or ``~/.cache/tinyforge/benchmarks``."""
    env = os.environ.get("TINYFORGE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyforge" / "benchmarks"


def _shared_dir() -> Path | None:
    """The first ``D/shared/data/benchmarks`` above the working directory or this package, if any."""
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for d in (start, *start.parents):
            if (d / SHARED_SUBDIR).is_dir():
                return d / SHARED_SUBDIR
    return None


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The folder benchmark files are read from (see the module docstring for the order)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("TINYFORGE_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return _shared_dir() or cache_dir()


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, spec: DataFile) -> None:
    """Raise DataError unless ``path`` has the expected checksum (cached per path, mtime and size)."""
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        if key in _VERIFIED:
            return
        got = sha256_file(path)
    except OSError as e:
        raise DataError(f"{spec.name}: cannot read {path}: {e.strerror or e}") from None
    if got != spec.sha256:
        raise DataError(
            f"{spec.name}: checksum mismatch in {path.parent} (expected {spec.sha256[:12]}…, got {got[:12]}…); "
            "delete it or point --data-dir at a good copy"
        )
    _VERIFIED.add(key)


def _download(spec: DataFile, dest_dir: Path) -> Path:
    """Fetch ``spec`` into ``dest_dir``, trying each source; the file appears only once its checksum matches."""
    if not spec.sources:
        raise DataError("no public download source is known for this file")
    reasons = []
    for src in spec.sources:
        try:
            with urllib.request.urlopen(src.url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
                data = resp.read()
            if src.gunzip:
                data = gzip.decompress(data)
        except Exception as e:  # any network or gzip failure: try the next source
            reasons.append(f"{src.url}: {type(e).__name__}: {' '.join(str(e).split())}")
            continue
        got = hashlib.sha256(data).hexdigest()
        if got != spec.sha256:
            reasons.append(f"{src.url}: checksum {got[:12]}… is not the expected {spec.sha256[:12]}…")
            continue
        dest = dest_dir / spec.name
        tmp = dest_dir / f".{spec.name}.{os.getpid()}.part"
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise DataError(f"cannot write {dest}: {e.strerror or e}") from None
        return dest
    raise DataError("; ".join(reasons))


def _search_dirs(explicit: str | os.PathLike[str] | None) -> list[Path]:
    """The resolved data folder, then the download cache."""
    dirs = [data_dir(explicit)]
    return dirs if cache_dir() in dirs else [*dirs, cache_dir()]


def benchmark_file(
    name: str, data_dir: str | os.PathLike[str] | None = None, allow_download: bool | None = None
) -> Path:
    """Path of the verified benchmark file ``name``, downloading it to the cache if missing and allowed.

    ``allow_download=None`` means: allowed unless ``TINYFORGE_OFFLINE`` is set.
    """
    spec = FILES.get(name)
    if spec is None:
        raise DataError(f"unknown benchmark file {name!r}; known files: {', '.join(sorted(FILES))}")
    dirs = _search_dirs(data_dir)
    for d in dirs:
        path = d / name
        if path.is_file():
            _verify(path, spec)
            return path.resolve()
    tried = ", ".join(str(d) for d in dirs)
    if allow_download is None:
        allow_download = not offline()
    if not allow_download:
        raise DataError(
            f"{name} not found in {tried} and downloads are disabled (TINYFORGE_OFFLINE / allow_download=False); "
            "point --data-dir or TINYFORGE_DATA_DIR at a folder that has it"
        )
    try:
        return _download(spec, cache_dir())
    except DataError as e:
        raise DataError(f"{name} not found in {tried} and download failed: {e}") from None

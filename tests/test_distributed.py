"""Distributed-safe training (issue 17). Slow tests: kit train under 2 real processes (torchrun
or accelerate launch, gloo on CPU) with faults planted on one rank -- nothing may hang (every run
has a timeout; the whole process group is killed after it); each starts 2 Python processes that
import torch + timm (~30-60 s on a 2-core machine). Fast tests: the precision decision, timm's
optimizer groups on a tiny ViT, EMA warmup, TensorBoard tracking, the pretrained load report."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fx_train import RECIPES, REPO, TINY

HANG_S = 150  # far above a normal run (~30-60 s); a hang is reported as a timeout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(scenario: str, kit_args: list[str], env: dict | None = None) -> tuple[int | None, str, str]:
    """(return code or None when it hung, stdout, stderr) of tests/dist_driver.py under
    `torchrun --nproc_per_node 2`; on timeout the whole process group is killed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), str(REPO / "tests" / "dist_driver.py"), scenario,
           "--", *kit_args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    return _run(cmd, full_env)


def _run(cmd: list[str], env: dict) -> tuple[int | None, str, str]:
    """Run a launcher; on timeout kill it and every process under it (torchrun puts each worker
    in its own session, so killing its process group would leave them holding the pipes)."""
    import psutil

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=REPO)
    try:
        out, err = p.communicate(timeout=HANG_S)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        for proc in [*psutil.Process(p.pid).children(recursive=True), psutil.Process(p.pid)]:
            proc.kill()
        out, err = p.communicate()
        return None, out, err


def _train_args(data_dir: Path, runs_dir: Path, *overrides: str) -> list[str]:
    return ["train", str(RECIPES / "demo.yaml"), *TINY, "cv.folds=[0]", *overrides,
            "--name", "r", "--data-dir", str(data_dir), "--runs-dir", str(runs_dir)]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_max_minutes_follows_rank0_clock_and_lines_print_once(demo_data_dir: Path,
                                                              tmp_path: Path) -> None:
    """Rank 1's clock says an hour passes per epoch; rank 0's says seconds. Rank 0 decides for
    both: all 3 epochs run, no hang. Epoch lines and the run summary are printed once."""
    rc, out, err = torchrun("skew", _train_args(demo_data_dir, tmp_path, "train.epochs=3",
                                                "train.max_minutes=30"))
    assert rc == 0, f"rc={rc} (None = hung)\n{err[-3000:]}"
    rows = (tmp_path / "r" / "fold0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    done = json.loads((tmp_path / "r" / "fold0" / "done.json").read_text())
    assert done["stopped_early"] is False
    for epoch in (1, 2, 3):
        assert out.count(f" fold0 {epoch}/3 ") == 1, out[-3000:]
    assert out.count("CV accuracy") == 1, out[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not installed")
def test_nan_loss_on_one_rank_stops_every_rank(demo_data_dir: Path, tmp_path: Path) -> None:
    """Only rank 1 sees a NaN loss (its last step of epoch 1): both ranks stop with the one-line
    error instead of rank 0 waiting for ever in the epoch's reduce."""
    rc, out, err = torchrun("nan", _train_args(demo_data_dir, tmp_path, "train.epochs=2"))
    assert rc is not None, f"hung\n{err[-3000:]}"
    msgs = {r: (tmp_path / f"rank{r}.err").read_text() if (tmp_path / f"rank{r}.err").exists()
            else None for r in (0, 1)}
    assert msgs[1] and "training loss is nan at epoch 1, step 4" in msgs[1], (msgs, err[-2000:])
    assert msgs[0] and "not finite on another process at epoch 1" in msgs[0], (msgs, err[-2000:])
    assert rc != 0 and "error: fold0: training loss is" in err


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_accelerate_launch_multi_gpu_without_gpu_gives_2_processes_and_its_precision(
        demo_data_dir: Path, tmp_path: Path) -> None:
    """The README's CPU command: `accelerate launch --multi_gpu --num_processes 2` starts 2 gloo
    processes; with train.mixed_precision: auto the launch flag's bf16 is used."""
    rc, out, err = _launch(["--multi_gpu", "--num_processes", "2", "--mixed_precision", "bf16"],
                           _train_args(demo_data_dir, tmp_path, "train.epochs=1"))
    assert rc == 0, f"rc={rc}\n{err[-3000:]}"
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["num_processes"] == 2 and prov["mixed_precision"] == "bf16"
    assert "note: train.mixed_precision=auto: bf16 from accelerate" in out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate CLI not installed")
def test_explicit_recipe_precision_wins_over_accelerate_and_says_so(demo_data_dir: Path,
                                                                  tmp_path: Path) -> None:
    rc, out, err = _launch(["--cpu", "--num_processes", "1", "--mixed_precision", "bf16"],
                           _train_args(demo_data_dir, tmp_path, "train.epochs=1",
                                       "train.mixed_precision=no"))
    assert rc == 0, f"rc={rc}\n{err[-3000:]}"
    prov = json.loads((tmp_path / "r" / "provenance.json").read_text())
    assert prov["num_processes"] == 1 and prov["mixed_precision"] == "no"
    assert "train.mixed_precision=no from the recipe overrides accelerate's bf16" in out


def _launch(flags: list[str], kit_args: list[str]) -> tuple[int | None, str, str]:
    cmd = ["accelerate", "launch", *flags, "--main_process_port", str(_free_port()),
           "-m", "kaggle_kit", *kit_args]
    return _run(cmd, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


# ----------------------------------------------------------------------------- in-process, fast


@pytest.mark.parametrize("recipe, launcher, cap, want, note", [
    ("auto", None, None, "no", None),                 # CPU
    ("auto", None, (7, 5), "fp16", None),             # T4: bf16 only emulated -> fp16
    ("auto", None, (6, 0), "fp16", None),             # P100
    ("auto", None, (8, 0), "bf16", None),             # A100
    ("auto", None, (9, 0), "bf16", None),             # H100 / H200
    ("auto", "no", (9, 0), "bf16", None),             # accelerate launch's unset default
    ("auto", "fp16", (9, 0), "fp16", "fp16 from accelerate"),
    ("auto", "bf16", None, "bf16", "bf16 from accelerate"),
    ("fp16", "bf16", (9, 0), "fp16", "fp16 from the recipe overrides accelerate's bf16"),
    ("no", None, (9, 0), "no", None),
])
def test_choose_precision(recipe, launcher, cap, want, note) -> None:
    from kaggle_kit.accel import choose_precision

    got, said = choose_precision(recipe, launcher, cap)
    assert got == want
    assert (said is None) if note is None else (note in said)


def test_optimizer_groups_from_timm_no_decay_on_vit_pos_embed_cls_token_norms_biases() -> None:
    import timm

    from kaggle_kit import recipe, train_setup

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2,
                            num_classes=5)
    names = {id(p): n for n, p in vit.named_parameters()}
    tr = recipe.Train(epochs=1, lr=0.1, weight_decay=0.05, optimizer="adamw")
    opt = train_setup.make_optimizer(vit, tr, lr=0.1)
    decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0
                for p in g["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "blocks.0.norm1.bias", "head.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "head.weight", "patch_embed.proj.weight"} <= decay
    assert decay | no_decay == set(names.values()) and not decay & no_decay
    assert type(opt).__name__ == "AdamW" and opt.param_groups[0]["betas"] == (0.9, 0.999)
    layered = train_setup.make_optimizer(vit, recipe.Train(epochs=1, lr=0.1, layer_decay=0.5), 0.1)
    lrs = sorted({round(g["lr"], 6) for g in layered.param_groups})
    assert lrs == [0.0125, 0.025, 0.05, 0.1]  # head at 0.1, each layer below halves it
    with pytest.raises(Exception, match="train.layer_decay: .* has no layer groups"):
        train_setup.make_optimizer(torch_linear(), recipe.Train(epochs=1, lr=0.1, layer_decay=0.5), 0.1)


def torch_linear():
    import torch

    return torch.nn.Linear(3, 2)


def test_ema_with_warmup_does_not_collapse_a_short_run(train_tiny) -> None:
    """3 epochs of the demo (24 optimizer steps) with train.ema=0.999: a fixed decay keeps ~98 %
    of the random init (val accuracy 0.097 before); with warmup the EMA follows the model."""
    full = ["data.limit=null", "train.batch_size=128", "train.epochs=3", "cv.folds=[0]"]
    plain = train_tiny("demo", *full, name="plain")["cv"]["accuracy"]
    ema = train_tiny("demo", *full, "train.ema=0.999", name="ema")["cv"]["accuracy"]
    assert plain > 0.6
    assert ema > 0.5, (ema, plain)  # chance is 0.1; measured 0.67 vs 0.87 without EMA (it lags)


def test_tensorboard_tracker_gets_every_epoch(train_tiny) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_tiny("demo", "cv.folds=[0,1]", "train.log_with=tensorboard")
    runs = train_tiny.runs_dir / "r"
    events = list(runs.glob("kit-demo-r/events.out.tfevents.*"))
    assert events, list(runs.rglob("*"))
    ea = EventAccumulator(str(events[0].parent)).Reload()
    tags = ea.Tags()["scalars"]
    for name in ("fold0", "fold1"):
        for metric in ("train_loss", "val_acc", "lr", "images_per_s"):
            assert f"{name}/{metric}" in tags, tags
    assert [e.step for e in ea.Scalars("fold1/val_loss")] == [3, 4]
    rows = [json.loads(x) for x in (runs / "fold1" / "metrics.jsonl").read_text().splitlines()]
    assert [e.value for e in ea.Scalars("fold1/val_loss")] == pytest.approx(
        [r["val_loss"] for r in rows])


def test_no_tracker_by_default(train_tiny) -> None:
    train_tiny("demo", "train.epochs=1", "cv.folds=[0]")
    assert not list((train_tiny.runs_dir / "r").rglob("events.out.tfevents.*"))


def test_pretrained_file_partial_load_is_reported_and_a_foreign_trunk_refused(
        train_tiny, tmp_path: Path, capsys) -> None:
    import timm
    import torch

    from kaggle_kit import KitError, models

    sd = models.create_model("kit_resnet9_s", 7).state_dict()  # 7 classes: the head is new
    partial = {k: v for k, v in sd.items() if not k.startswith("stages.2.")}  # last stage gone
    torch.save(partial, tmp_path / "partial.pth")
    train_tiny("demo", "train.epochs=1", "cv.folds=[0]",
               f"model.pretrained_file={tmp_path / 'partial.pth'}")
    out = capsys.readouterr().out
    weights = [k for k in sd if not k.endswith("num_batches_tracked")]  # counters are not weights
    n_all = len(weights)
    n_missing = sum(k.startswith("stages.2.") for k in weights)
    assert (f"note: model.pretrained_file: loaded {n_all - n_missing - 2} of {n_all} tensors of "
            f"kit_resnet9_s from partial.pth; classifier new (2 tensors); {n_missing} trunk "
            "tensors start random, e.g. stages.2.0.conv.weight") in out
    assert out.count("note: model.pretrained_file") == 1  # once per run, not per fold

    stem_only = {k: v for k, v in sd.items() if k.startswith(("stem.", "head."))}
    torch.save(stem_only, tmp_path / "stem.pth")  # loads without a shape error, trunk mostly new
    with pytest.raises(KitError, match=r"does not fit kit_resnet9_s \(\d+ of \d+ trunk tensors "
                                       r"missing, e.g. stages.0.0.conv.weight\)"):
        models.create_model("kit_resnet9_s", 10, pretrained_file=str(tmp_path / "stem.pth"))
    r18 = timm.create_model("resnet18", num_classes=1000).state_dict()
    torch.save(r18, tmp_path / "r18.pth")
    r34 = models.create_model("resnet34", 10, pretrained_file=str(tmp_path / "r18.pth"))
    line = models.load_report(r34, tmp_path / "r18.pth")
    assert "loaded 100 of 182 tensors of resnet34 from r18.pth; classifier new (2 tensors); " \
           "80 trunk tensors start random, e.g. layer1.2.conv1.weight" in line
    # weight files often leave out BatchNorm's step counters: those are no missing weights
    lite = {k: v for k, v in timm.create_model("efficientnet_lite0").state_dict().items()
            if not k.endswith("num_batches_tracked")}
    torch.save(lite, tmp_path / "lite.pth")
    net = models.create_model("efficientnet_lite0", 10, pretrained_file=str(tmp_path / "lite.pth"))
    line = models.load_report(net, tmp_path / "lite.pth")
    assert line.endswith("loaded 245 of 247 tensors of efficientnet_lite0 from lite.pth; "
                         "classifier new (2 tensors)"), line


def test_pretrained_weights_with_dataset_normalisation_get_a_warning(train_tiny, tmp_path,
                                                                     capsys) -> None:
    import torch

    from kaggle_kit import models

    torch.save(models.create_model("kit_resnet9_s", 10).state_dict(), tmp_path / "w.pth")
    w = f"model.pretrained_file={tmp_path / 'w.pth'}"
    train_tiny("demo", "train.epochs=1", "cv.folds=[0]", w)
    warning = ("note: data.normalize: dataset with pretrained weights: the weights expect their "
               "own mean/std; set data.normalize=model")
    assert capsys.readouterr().out.count(warning) == 1
    train_tiny("demo", "train.epochs=1", "cv.folds=[0]", w, "data.normalize=model", name="m")
    assert warning not in capsys.readouterr().out
    train_tiny("demo", "train.epochs=1", "cv.folds=[0]", name="plain")
    assert warning not in capsys.readouterr().out


@pytest.mark.slow
def test_gpu_check_script_runs_in_cpu_mode(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh on a CPU-only machine: tiny rows, determinism, step cost (~75 s)."""
    zip_path = REPO.parent / "shared" / "competitions" / "cifar10-mini.zip"
    if not zip_path.exists():
        pytest.skip(f"{zip_path} absent")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(zip_path),
                          str(tmp_path / "work")], capture_output=True, text=True, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "GPU rows (bf16, fp16, compile) skipped" in out.stdout
    assert "oof.csv byte-identical" in out.stdout  # same seed on CPU: the same file
    assert "images/s (wall)    kit" in out.stdout and "ratio" in out.stdout

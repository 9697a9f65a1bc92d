"""train.py -> evaluate.py end to end on the CPU, exact resume after SIGKILL, bad input."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import contract
import evaluate
import train
from conftest import make_folder

ROOT = Path(__file__).resolve().parents[1]
SYNTH = ["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam", "--milestones"]


def run_train(tmp_path, name, *extra):
    return train.main(SYNTH + ["--runs-dir", str(tmp_path / "runs"), "--data-dir",
                               str(tmp_path / "data"), "--name", name, *extra])


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    """A SimpleCNN trained for 6 short epochs on the synthetic set (about 30 s on 2 cores)."""
    tmp = tmp_path_factory.mktemp("e2e")
    result = run_train(tmp, "syn", "--epochs", "6", "--batch-size", "64")
    metrics = evaluate.main(["--run", result["run_dir"]])
    return Path(result["run_dir"]), result, metrics


def test_synthetic_run_learns_well_above_chance(synthetic_run):
    _, result, metrics = synthetic_run
    assert metrics["test_accuracy"] > 0.6  # chance is 0.1
    assert metrics["test_accuracy"] == pytest.approx(result["final_test_accuracy"], abs=1e-6)
    assert metrics["top5_accuracy"] >= metrics["test_accuracy"]


def test_run_writes_every_file(synthetic_run):
    run, _, metrics = synthetic_run
    for f in ("config.json", "history.csv", "last.pt", "best.pt", "curves.png",
              "predictions.npz", "metrics.json"):
        assert (run / f).stat().st_size > 0, f
    cfg = json.loads((run / "config.json").read_text())
    for key in ("git_commit", "torch_version", "torchvision_version", "device_name",
                "wall_seconds", "mean", "std", "classes", "lr", "milestones", "seed"):
        assert key in cfg, key
    assert cfg["lr"] == 1e-3 and cfg["status"] == "complete"  # adam's default learning rate
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))
    assert set(rows[0]) == set(train.HISTORY_FIELDS)
    pred = np.load(run / "predictions.npz")
    assert pred["probs"].shape == (1000, 10) and pred["probs"].dtype == np.float32
    assert np.allclose(pred["probs"].sum(1), 1, atol=1e-5)
    assert pred["labels"].dtype == np.int64 and pred["logits"].shape == (1000, 10)
    assert (pred["probs"].argmax(1) == pred["labels"]).mean() == pytest.approx(metrics["test_accuracy"])
    assert len(metrics["per_class_accuracy"]) == 10 and metrics["checkpoint"] == "last"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "config"} <= set(ckpt)


def test_best_checkpoint_is_labelled(synthetic_run):
    run, _, _ = synthetic_run
    metrics = evaluate.main(["--run", str(run), "--checkpoint", "best"])
    history = list(csv.DictReader((run / "history.csv").open()))
    assert metrics["checkpoint"] == "best"
    assert metrics["test_accuracy"] == pytest.approx(max(float(r["test_acc"]) for r in history), abs=1e-6)
    evaluate.main(["--run", str(run)])  # leave the default files for the other tests


def test_resnet18_with_cutmix_and_label_smoothing_runs(tmp_path):
    result = train.main(["--dataset", "synthetic", "--limit-train", "64", "--limit-test", "32",
                         "--epochs", "1", "--batch-size", "32", "--cutmix-prob", "1",
                         "--label-smoothing", "0.1", "--runs-dir", str(tmp_path), "--name", "r"])
    metrics = evaluate.main(["--run", result["run_dir"]])
    assert metrics["n"] == 32
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["arch"] == "resnet18" and cfg["lr"] == 0.1 and cfg["milestones"] == [25, 40]


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("how", ["--resume", "--auto-resume"])  # by hand; what make and Slurm jobs run
def test_sigkill_then_resume_gives_the_same_weights(tmp_path, how):
    # CPU: bitwise equality of two runs holds for the same kernels on the same device only.
    common_args = ["train.py", *SYNTH, "--device", "cpu", "--limit-train", "1024", "--limit-test", "100",
                   "--epochs", "4", "--batch-size", "64", "--cutmix-prob", "0.5",
                   "--label-smoothing", "0.1", "--runs-dir", str(tmp_path)]
    straight = _cli(*common_args, "--name", "straight")
    assert straight.returncode == 0, straight.stderr
    proc = subprocess.Popen([sys.executable, *common_args, "--name", "killed"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = tmp_path / "killed" / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) >= 3:  # 2 epochs done
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait() == -signal.SIGKILL
    interrupted = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert interrupted["epoch"] < 4 and not (tmp_path / "killed" / "config.json").exists()
    resumed = (_cli("train.py", "--resume", "--name", "killed", "--runs-dir", str(tmp_path), "--device", "cpu")
               if how == "--resume" else _cli(*common_args, "--auto-resume", "--name", "killed"))
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["test_acc"] for r in a["history"]] == [r["test_acc"] for r in b["history"]]
    # The resume is on record with the commit it ran (here the same code as the start).
    cfg = json.loads((tmp_path / "killed" / "config.json").read_text())
    assert cfg["resumed"] == [{"after_epoch": interrupted["epoch"], "git_commit": cfg["git_commit"]}]
    assert "resumed" not in json.loads((tmp_path / "straight" / "config.json").read_text())


def test_auto_resume_continues_only_an_unfinished_run_of_the_same_settings(tmp_path):
    args = ["train.py", *SYNTH, "--device", "cpu", "--limit-train", "256", "--limit-test", "50", "--epochs", "1",
            "--runs-dir", str(tmp_path), "--name", "r", "--auto-resume"]
    assert _cli(*args).returncode == 0  # nothing there: a fresh start
    (tmp_path / "r" / "config.json").unlink()  # as if killed after its last checkpoint
    same = _cli(*args)
    assert same.returncode == 0, same.stderr
    assert json.loads((tmp_path / "r" / "config.json").read_text())["resumed"][0]["after_epoch"] == 1
    (tmp_path / "r" / "config.json").unlink()
    other = _cli(*args, "--label-smoothing", "0.1")
    assert other.returncode == 0 and "is a run with other label_smoothing; starting afresh" in other.stdout
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["label_smoothing"] == 0.1 and "resumed" not in config
    finished = _cli(*args, "--label-smoothing", "0.1")  # a finished run is replaced, as --overwrite does
    assert finished.returncode == 0 and "resumed" not in json.loads((tmp_path / "r" / "config.json").read_text())


#### Bad input: one sentence, non-zero exit, nothing already written lost

@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "argument --epochs: must be at least 1"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["--cutmix-prob", "1.5"], "argument --cutmix-prob: must be in [0, 1]"),
    (["--cutmix-alpha", "0"], "argument --cutmix-alpha: must be greater than 0"),
    (["--label-smoothing", "1"], "argument --label-smoothing: must be in [0, 1)"),
    (["--lr", "inf"], "argument --lr: must be a finite number"),
    (["--milestones", "25", "0"], "argument --milestones: must be at least 1"),
    (["--resume", "--overwrite"], "--resume, --overwrite and --auto-resume cannot be combined"),
    (["--arch", "vgg"], "invalid choice: 'vgg'"),
])
def test_bad_flags_are_refused(flags, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        train.main(["--dataset", "synthetic", "--runs-dir", str(tmp_path), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--dataset", "cifar10", "--no-download"], "--no-download was given; put the official"),
    (["--dataset", "synthetic", "--resume", "--name", "nothing"], "--resume needs"),
])
def test_user_errors_exit_with_one_sentence(flags, message, tmp_path):
    with pytest.raises(SystemExit) as exc:
        train.main(["--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path), *flags])
    assert message in str(exc.value.code) and str(exc.value.code).startswith("error: ")


def test_cli_error_has_no_traceback(tmp_path):
    result = _cli("train.py", "--dataset", "cifar100", "--no-download", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "cifar-100-python.tar.gz" in result.stderr


def test_existing_run_is_not_overwritten(synthetic_run):
    run, _, _ = synthetic_run
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SystemExit, match="already holds a run.*--overwrite"):
        train.main(SYNTH + ["--runs-dir", str(run.parent), "--name", run.name, "--epochs", "1"])
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_ce = torch.nn.CrossEntropyLoss

    class ExplodingCE(real_ce):  # calls 1-3: epoch 1's two steps and its test pass; then NaN
        def forward(self, *args):
            calls["n"] += 1
            loss = super().forward(*args)
            return loss * float("nan") if calls["n"] > 3 else loss
    monkeypatch.setattr(train.nn, "CrossEntropyLoss", ExplodingCE)
    with pytest.raises(SystemExit, match=r"NaN/inf at epoch 2, step 1.*last good checkpoint"):
        run_train(tmp_path, "nan", "--limit-train", "128", "--limit-test", "16", "--epochs", "3",
                  "--batch-size", "64")
    ckpt = torch.load(tmp_path / "runs" / "nan" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_evaluate_missing_run(tmp_path):
    with pytest.raises(SystemExit, match="run folder .* does not exist"):
        evaluate.main(["--run", str(tmp_path / "nope")])


def _copy_run(run, dest):
    dest.mkdir()
    for f in ("config.json", "last.pt"):
        (dest / f).write_bytes((run / f).read_bytes())
    return dest


def test_evaluate_truncated_checkpoint(synthetic_run, tmp_path):
    run = _copy_run(synthetic_run[0], tmp_path / "cut")
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        evaluate.main(["--run", str(run)])
    assert not (run / "metrics.json").exists()


@pytest.mark.parametrize("change", [{"arch": "resnet18"}, {"num_classes": 100}])
def test_evaluate_config_mismatch(synthetic_run, tmp_path, change):
    run = _copy_run(synthetic_run[0], tmp_path / "mismatch")
    cfg = json.loads((run / "config.json").read_text())
    cfg.update(change)
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match="does not match its config"):
        evaluate.main(["--run", str(run)])


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_checkpoint_needing_unpickling_is_refused_without_running_code(synthetic_run, tmp_path,
                                                                      monkeypatch):
    run = _copy_run(synthetic_run[0], tmp_path / "evil")
    ckpt = torch.load(run / "last.pt", weights_only=True)
    ckpt["extra"] = _Payload()
    torch.save(ckpt, run / "last.pt")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="refused to load .*arbitrary unpickling"):
        evaluate.main(["--run", str(run)])
    assert not (tmp_path / "pwned").exists()


needs_bf16 = pytest.mark.skipif(not common.cpu_has_native_bf16(),
                                reason="this CPU has no native bf16 (AVX512-BF16, AMX or Arm BF16)")


@needs_bf16
def test_bf16_autocast_step_on_the_cpu_runs_in_bf16_and_learns():
    """--amp's step on the CPU: bf16 convolutions, float32 weights, loss and BatchNorm state."""
    torch.manual_seed(0)
    ds = common.make_synthetic(n_train=64, n_test=1)
    x = common.normalize(ds.train_x, *common.channel_stats(ds.train_x))
    y = ds.train_y
    model = common.build_model("resnet18", ds.num_classes).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    device = torch.device("cpu")
    use_amp, note = common.autocast_mode(device, True)
    assert use_amp and note is None
    losses = []
    for _ in range(15):
        with common.autocast(device, use_amp):
            out = model(x)
            loss = torch.nn.functional.cross_entropy(out, y)
        assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.bn1.running_var.dtype == torch.float32
    assert np.isfinite(losses).all() and losses[-1] < 0.2 * losses[0], losses


@needs_bf16
def test_amp_run_on_the_cpu_records_bf16_and_learns(tmp_path):
    result = run_train(tmp_path, "amp", "--epochs", "4", "--batch-size", "64", "--amp")
    cfg = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    assert cfg["amp"] and cfg["precision"] == "bf16 autocast"
    rows = list(csv.DictReader((Path(result["run_dir"]) / "history.csv").open()))
    assert float(rows[-1]["train_loss"]) < 0.95 * float(rows[0]["train_loss"])
    assert result["final_test_accuracy"] > 0.3  # chance is 0.1


def test_amp_without_native_bf16_falls_back_to_float32_with_a_note(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    result = run_train(tmp_path, "fp32", "--epochs", "1", "--limit-train", "256", "--limit-test", "100",
                       "--amp")
    cfg = json.loads((Path(result["run_dir"]) / "config.json").read_text())
    assert cfg["amp"] and cfg["precision"] == "float32"
    assert "lacks; training in float32" in capsys.readouterr().out


#### tools/amp_check.py: the precision comparison from a checkpoint

def test_amp_check_starts_every_pass_from_the_same_checkpoint(tiny_run):
    """The same seed gives the same pass (the optimizer's state is not carried from one pass to the
    next), another seed another pass: what the float32 spread is measured from."""
    import amp_check
    ckpt = common.load_checkpoint(tiny_run / "last.pt")
    cfg = dict(ckpt["config"], limit_train=192, limit_test=60)
    ds = contract.dataset_from_config(cfg)
    cpu = torch.device("cpu")
    test = common.DeviceLoader(ds.test_x, ds.test_y, 64, cfg["mean"], cfg["std"], cpu)
    runs = [amp_check.one_pass(ckpt, cfg, ds, test, cpu, seed, False) for seed in (1, 1, 2)]
    for r in runs:
        r.pop("images_per_second")
    assert runs[0] == runs[1] and runs[0]["train_loss"] != runs[2]["train_loss"]


def test_amp_check_refuses_a_file_that_is_not_a_training_checkpoint(tiny_run, tmp_path):
    import amp_check
    torch.save(torch.load(tiny_run / "last.pt", weights_only=True)["model"], tmp_path / "weights.pt")
    with pytest.raises(SystemExit) as exc:
        amp_check.main(["--checkpoint", str(tmp_path / "weights.pt")])
    # Without native bf16 there is nothing to compare, which it says before reading anything.
    expected = "is not a train.py checkpoint" if common.cpu_has_native_bf16() else "native bf16"
    assert expected in str(exc.value.code) and "\n" not in str(exc.value.code)


@needs_bf16
def test_amp_check_compares_both_precisions_per_seed(tiny_run, tmp_path):
    import amp_check
    out = tmp_path / "amp.json"
    result = amp_check.main(["--checkpoint", str(tiny_run / "last.pt"), "--limit-train", "128",
                             "--limit-test", "60", "--seeds", "3", "4", "--out", str(out)])
    assert [(r["seed"], r["precision"]) for r in result["rows"]] == [
        (3, "float32"), (3, "bf16 autocast"), (4, "float32"), (4, "bf16 autocast")]
    assert json.loads(out.read_text())["rows"] == result["rows"] and result["n_train"] == 128


#### tools/reference_run.py: the stock torchvision pipeline train.py is checked against

def test_reference_run_writes_a_history_row_per_epoch_and_refuses_to_overwrite(tmp_path):
    import reference_run
    root, out = make_folder(tmp_path / "imgs", per_class=8), tmp_path / "ref.csv"
    args = ["--data", str(root), "--arch", "simplecnn", "--epochs", "2", "--milestones", "1",
            "--batch-size", "8", "--workers", "0", "--out", str(out)]
    reference_run.main(args)
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0]) == train.HISTORY_FIELDS and [r["epoch"] for r in rows] == ["1", "2"]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.01])  # MultiStepLR applied
    assert all(0 <= float(r["test_acc"]) <= 1 for r in rows)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        reference_run.main(args)
    assert out.read_bytes() == before


def test_reference_run_refuses_a_folder_without_splits(tmp_path):
    import reference_run
    (tmp_path / "flat" / "cat").mkdir(parents=True)
    with pytest.raises(SystemExit) as exc:
        reference_run.main(["--data", str(tmp_path / "flat"), "--out", str(tmp_path / "r.csv")])
    assert "has no train/ and test/ folders" in str(exc.value.code) and not (tmp_path / "r.csv").exists()


def test_a_run_made_in_one_folder_resumes_from_another(tmp_path, monkeypatch):
    """--resume finds a relative --dataset through config.json's working_dir, as later steps do."""
    made = tmp_path / "project"
    make_folder(made / "imgs", per_class=8)
    monkeypatch.chdir(made)
    flags = ["--arch", "simplecnn", "--optimizer", "adam", "--milestones", "--batch-size", "8",
             "--runs-dir", "runs", "--name", "r"]
    train.main(flags + ["--dataset", "imgs", "--epochs", "1"])
    ckpt = torch.load(made / "runs" / "r" / "last.pt", weights_only=True)
    ckpt["config"]["epochs"] = 2  # as if stopped after epoch 1 of 2
    torch.save(ckpt, made / "runs" / "r" / "last.pt")
    monkeypatch.chdir(tmp_path)
    train.main(["--resume", "--runs-dir", "project/runs", "--name", "r"])
    history = list(csv.DictReader((made / "runs" / "r" / "history.csv").open()))
    assert [r["epoch"] for r in history] == ["1", "2"]
    assert not (tmp_path / "data").exists()  # the run's own cache, under project/, was used

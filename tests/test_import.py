"""Models trained elsewhere: evaluate.py --weights turns a checkpoint of any common form into a run
folder that gives the trained run's predictions exactly, and refuses what it cannot trust or fit."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import common
import contract
import evaluate
import train
from make_cifar_archive import write_archive


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A SimpleCNN trained 1 epoch on the whole synthetic training set (so the default
    normalisation of an import, the training set's channel statistics, is the run's), evaluated."""
    root = tmp_path_factory.mktemp("import")
    result = train.main(["--arch", "simplecnn", "--dataset", "synthetic", "--optimizer", "adam",
                         "--milestones", "--epochs", "1", "--batch-size", "128", "--runs-dir", str(root),
                         "--name", "syn", "--data-dir", str(root / "data")])
    evaluate.main(["--run", result["run_dir"], "--device", "cpu"])
    return Path(result["run_dir"])


def weights_of(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


FORMS = {
    "bare state_dict": lambda sd: sd,
    "state_dict key": lambda sd: {"state_dict": sd, "epoch": 3},
    "model_state_dict key (tutorials)": lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}},
    "net key": lambda sd: {"net": sd, "acc": 91.0},
    "DataParallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "torch.compile": lambda sd: {f"_orig_mod.{k}": v for k, v in sd.items()},
    "Lightning": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 9},
    "DDP of a compiled model": lambda sd: {"model": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
}


@pytest.mark.parametrize("form", FORMS)
def test_each_checkpoint_form_imports_and_reproduces_the_run(run, tmp_path, form):
    path = tmp_path / "weights.pth"
    torch.save(FORMS[form](weights_of(run)), path)
    out = tmp_path / "imported"
    metrics = evaluate.main(["--weights", str(path), "--arch", "simplecnn", "--dataset", "synthetic",
                             "--run", str(out), "--device", "cpu", "--data-dir", str(tmp_path / "data")])
    original = contract.read_metrics(run)
    assert metrics["test_accuracy"] == original["test_accuracy"]
    assert metrics["ece"] == original["ece"]
    assert np.array_equal(contract.read_predictions(out)["probs"], contract.read_predictions(run)["probs"])
    config = json.loads((out / "config.json").read_text())
    assert config["status"] == "imported" and config["imported"]["weights"] == str(path)
    assert "epochs" not in config and "history.csv" not in {p.name for p in out.iterdir()}
    assert config["mean"] == json.loads((run / "config.json").read_text())["mean"]
    # The imported folder is a run like any other: load_checkpoint_model rebuilds the same model.
    model, _, _ = contract.load_checkpoint_model(out)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), weights_of(run).values()))


def test_the_reference_notebooks_layout_imports(tmp_path):
    """A bare state_dict of torchvision's resnet18 with the CIFAR stem and 100 outputs, as the
    reference notebook saves it, on a CIFAR-100-format test set, with the usual constants."""
    import torchvision
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=100)
    net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    net.eval()
    path = tmp_path / "best_baseline_resnet18.pth"
    torch.save(net.state_dict(), path)
    archive = tmp_path / "cifar100-format.tar.gz"
    write_archive(archive, "cifar100", n_train=200, n_test=40, pixels="noise")
    mean, std = [0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]
    out = tmp_path / "notebook"
    evaluate.main(["--weights", str(path), "--arch", "resnet18", "--dataset", str(archive), "--run", str(out),
                   "--device", "cpu", "--mean", *map(str, mean), "--std", *map(str, std),
                   "--data-dir", str(tmp_path / "data")])  # its parse cache stays out of the repository
    ds = common.load_dataset(str(archive), tmp_path / "data")
    x = (ds.test_x.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        expected = net(x).softmax(1).numpy()
    got = contract.read_predictions(out)["probs"]
    assert got.shape == (40, 100) and np.allclose(got, expected, atol=1e-5)
    assert json.loads((out / "config.json").read_text())["imported"]["normalisation"] == "given"


def refused(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        evaluate.main(argv)
    text = str(exc.value.code) if isinstance(exc.value.code, str) else capsys.readouterr().err
    assert exc.value.code != 0 and message in text, text
    return text


class RunsCode:
    """Unpickling this calls a function: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_needs_unpickling_is_refused_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": RunsCode(marker)}, path)
    refused(capsys, ["--weights", str(path), "--arch", "simplecnn", "--dataset", "synthetic",
                     "--run", str(tmp_path / "r")], "needs arbitrary unpickling")
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_a_checkpoint_that_does_not_fit_says_which_keys_and_shapes_differ(run, tmp_path, capsys):
    sd = dict(weights_of(run))
    sd["fc2.weight"] = sd["fc2.weight"][:5]
    del sd["fc1.bias"]
    sd["head.extra"] = torch.zeros(1)
    path = tmp_path / "odd.pth"
    torch.save(sd, path)
    text = refused(capsys, ["--weights", str(path), "--arch", "simplecnn", "--dataset", "synthetic",
                            "--run", str(tmp_path / "r")], "does not fit simplecnn with 10 classes")
    assert "1 keys missing (fc1.bias)" in text and "1 unexpected (head.extra)" in text
    assert "shapes differ: fc2.weight is (5, " in text and "in the file, (10, " in text
    assert "\n" not in text.strip() and not (tmp_path / "r").exists()


def test_import_refuses_to_overwrite_and_odd_flags(run, tmp_path, capsys):
    path = tmp_path / "w.pth"
    torch.save(weights_of(run), path)
    base = ["--weights", str(path), "--arch", "simplecnn", "--dataset", "synthetic", "--device", "cpu"]
    refused(capsys, base + ["--run", str(run)], "is not empty; give a new folder or --overwrite")
    assert (run / "history.csv").is_file()  # the trained run is untouched
    torch.save({"optimizer": {}}, tmp_path / "no-weights.pth")
    refused(capsys, ["--weights", str(tmp_path / "no-weights.pth"), "--arch", "simplecnn", "--dataset",
                     "synthetic", "--run", str(tmp_path / "x")], "holds no state_dict (found 'optimizer')")
    for argv, message in ((["--run", "r", "--arch", "simplecnn"], "only apply with --weights"),
                          (["--weights", str(path), "--run", "r"], "--weights needs --arch and --dataset"),
                          (base + ["--run", "r", "--checkpoint", "best"], "--checkpoint does not apply"),
                          (base + ["--run", "r", "--mean", "0.5", "0.5", "0.5"], "give --mean and --std together"),
                          (base + ["--run", "r", "--mean", "125", "123", "114", "--std", "63", "62", "66"],
                           "[0, 1] units")):
        with pytest.raises(SystemExit) as exc:
            evaluate.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
    # Replacing an imported folder is allowed when asked, and an imported run has no best.pt.
    out = tmp_path / "imported"
    evaluate.main(base + ["--run", str(out)])
    evaluate.main(base + ["--run", str(out), "--overwrite"])
    refused(capsys, ["--run", str(out), "--checkpoint", "best"], "holds imported weights only")

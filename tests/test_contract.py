"""The run-folder contract (common.py's Runs section): every bad form of a file that a later step
reads ends in one sentence naming the file and its writer, a non-zero exit, and no file changed."""
import shutil

import numpy as np
import pytest
import torch

import common
import contract
import corruptions
import evaluate
import failures
import faithfulness
import gradcam
import train


@pytest.fixture
def run(tiny_run):
    """conftest's tiny run: evaluated, with its failures and Grad-CAM (never modified here)."""
    return tiny_run


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return dest


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def refused(capsys, folder, fn, argv, message):
    """fn(argv) exits non-zero with one line holding `message`, and folder's files are unchanged."""
    before = snapshot(folder)
    with pytest.raises(SystemExit) as exc:
        fn(argv)
    text = str(exc.value.code) if isinstance(exc.value.code, str) else capsys.readouterr().err
    assert exc.value.code != 0 and message in text and "\n" not in text.strip(), text
    assert snapshot(folder) == before


def test_truncated_predictions(run, tmp_path, capsys):
    bad = copy_run(run, tmp_path / "t")
    (bad / "predictions.npz").write_bytes((run / "predictions.npz").read_bytes()[:500])
    for fn in (failures.main, faithfulness.main):
        refused(capsys, bad, fn, ["--run", str(bad)], "predictions.npz cannot be read (BadZipFile")


def test_predictions_of_inconsistent_shapes(run, tmp_path):
    bad = copy_run(run, tmp_path / "s")
    pred = contract.read_predictions(run)
    np.savez(bad / "predictions.npz", probs=pred["probs"][:-1], labels=pred["labels"],
             indices=pred["indices"])
    with pytest.raises(common.UserError, match="inconsistent shapes"):
        contract.read_predictions(bad)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "is not valid UTF-8 JSON"),
    (b"[1, 2]", "holds a JSON list, not the dict expected; write it again with evaluate.py")])
def test_metrics_not_utf8_or_not_an_object(run, tmp_path, capsys, content, message):
    bad = copy_run(run, tmp_path / "m")
    (bad / "metrics.json").write_bytes(content)
    refused(capsys, bad, corruptions.main, ["--run", str(bad), "--limit-test", "5"], message)
    refused(capsys, bad, gradcam.main, ["--run", str(bad)], message)


@pytest.mark.parametrize("field", contract.CASE_FIELDS)
def test_a_case_missing_a_field(run, tmp_path, capsys, field):
    bad = copy_run(run, tmp_path / "c")
    data = contract.read_json(run / "failures.json", "failures file")
    del data["cases"][1][field]
    common.save_json(data, bad / "failures.json")
    message = f"case 2 of {bad / 'failures.json'} lacks {field}"
    refused(capsys, bad, gradcam.main, ["--run", str(bad)], message)
    refused(capsys, bad, faithfulness.main, ["--run", str(bad), "--sample", "5"], message)


def test_faithfulness_batch_size_zero(run, capsys):
    """A usage error (argparse's usage line, then the message; exit 2), and the run is untouched."""
    before = snapshot(run)
    with pytest.raises(SystemExit) as exc:
        faithfulness.main(["--run", str(run), "--batch-size", "0"])
    assert exc.value.code == 2 and "argument --batch-size: must be at least 1" in capsys.readouterr().err
    assert snapshot(run) == before


def test_data_dir_naming_a_file(run, tmp_path, capsys):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("")
    refused(capsys, run, evaluate.main, ["--run", str(run), "--data-dir", str(a_file)],
            f"--data-dir {a_file} is a file")
    with pytest.raises(SystemExit, match="is a file"):
        train.main(["--dataset", "synthetic", "--arch", "simplecnn", "--data-dir", str(a_file),
                    "--runs-dir", str(tmp_path / "runs"), "--name", "x"])
    assert not (tmp_path / "runs").exists()


def test_compare_refuses_a_run_with_itself_and_an_out_that_is_a_file(run, tmp_path, capsys):
    import compare
    other = copy_run(run, tmp_path / "other")
    refused(capsys, run, compare.main, ["--baseline", str(run), "--improved", str(run) + "/",
                                        "--out", str(tmp_path / "cmp")], "are the same run")
    a_file = tmp_path / "out.txt"
    a_file.write_text("keep me")
    refused(capsys, run, compare.main, ["--baseline", str(run), "--improved", str(other),
                                        "--out", str(a_file)], f"--out {a_file} is a file")
    assert a_file.read_text() == "keep me" and not (tmp_path / "cmp").exists()


def test_compare_truncated_predictions_and_case_missing_a_field(run, tmp_path, capsys):
    import compare
    bad = copy_run(run, tmp_path / "t")
    (bad / "predictions.npz").write_bytes((run / "predictions.npz").read_bytes()[:500])
    refused(capsys, run, compare.main, ["--baseline", str(run), "--improved", str(bad),
                                        "--out", str(tmp_path / "c1")], "cannot be read (BadZipFile")
    other = copy_run(run, tmp_path / "o")
    data = contract.read_json(run / "failures.json", "failures file")
    del data["cases"][0]["index"]
    common.save_json(data, tmp_path / "cases.json")
    refused(capsys, run, compare.main, ["--baseline", str(run), "--improved", str(other), "--cases",
                                        str(tmp_path / "cases.json"), "--out", str(tmp_path / "c2")],
            "case 1 of")


def test_gradcam_files_truncated_or_of_other_weights(run, tmp_path, capsys):
    """compare.py reuses the baseline's gradcam.npz and every later step loads the weights
    evaluate.py fingerprinted: a truncated npz or a replaced checkpoint is one sentence."""
    import compare
    base, other = copy_run(run, tmp_path / "b"), copy_run(run, tmp_path / "o")
    (base / "gradcam.npz").write_bytes((run / "gradcam.npz").read_bytes()[:300])
    argv = ["--baseline", str(base), "--improved", str(other), "--cases", str(base / "failures.json"),
            "--out", str(tmp_path / "c")]
    refused(capsys, base, compare.main, argv, "gradcam.npz cannot be read (BadZipFile: truncated or not gradcam.py's)")
    state = torch.load(other / "last.pt", weights_only=True)
    state["model"]["fc2.bias"] += 1.0  # retrained, say, after evaluate.py ran
    torch.save(state, other / "last.pt")
    for fn, args in ((gradcam.main, ["--run", str(other)]), (faithfulness.main, ["--run", str(other)]),
                     (corruptions.main, ["--run", str(other)])):
        refused(capsys, other, fn, args, "holds other weights than evaluate.py evaluated")


def test_config_missing_what_later_steps_read(run, tmp_path, capsys):
    bad = copy_run(run, tmp_path / "c")
    config = contract.read_json(bad / "config.json", "run config")
    del config["mean"]
    common.save_json(config, bad / "config.json")
    for fn in (failures.main, gradcam.main, corruptions.main):
        refused(capsys, bad, fn, ["--run", str(bad)], "config.json lacks mean; it is not train.py's")


def test_gradcam_of_other_weights_is_refused(run, tmp_path, capsys):
    """A run re-evaluated after gradcam.py ran: its maps explain weights that are no longer its own."""
    import compare
    base, other = copy_run(run, tmp_path / "b"), copy_run(run, tmp_path / "o")
    explained = contract.read_json(base / "gradcam.json", "Grad-CAM results")
    assert explained["weights_sha256"] == contract.read_metrics(base)["weights_sha256"]
    explained["weights_sha256"] = "0" * 64
    common.save_json(explained, base / "gradcam.json")
    refused(capsys, base, compare.main, ["--baseline", str(base), "--improved", str(other), "--cases",
                                         str(base / "failures.json"), "--out", str(tmp_path / "c")],
            "gradcam.json explains other weights than metrics.json's")

"""Dataset loading: official-format CIFAR archives, folder datasets, the synthetic set."""
import io
import os
import tarfile

import cv2
import pytest
import torch

import common
import synthetic
import contract
from common import UserError, file_md5, load_dataset, make_synthetic
from conftest import make_folder
from make_cifar_archive import cifar100_names, fine_to_coarse, write_archive


def make_cifar_archive(path, kind, n_train=30, n_test=20, seed=0):
    """An archive in the official layout (data uint8 N x 3072 in CHW row order) with known pixels."""
    return write_archive(path, kind, n_train, n_test, seed, pixels="noise")


@pytest.fixture
def trusted_archive(tmp_path, monkeypatch):
    """Build a generated archive and make its md5 the expected one, as for the official file."""
    def build(kind):
        filename = common.ARCHIVES[kind][0]
        arrays = make_cifar_archive(tmp_path / filename, kind)
        entry = list(common.ARCHIVES[kind])
        entry[1] = file_md5(tmp_path / filename)
        monkeypatch.setitem(common.ARCHIVES, kind, tuple(entry))
        return arrays
    return build


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_official_archive_is_parsed(kind, tmp_path, trusted_archive):
    tr_x, tr_y, te_x, te_y = trusted_archive(kind)
    ds = load_dataset(kind, tmp_path, download=False)
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (20, 3, 32, 32)
    assert ds.train_y.tolist() == tr_y.tolist() and ds.test_y.tolist() == te_y.tolist()
    # Row order of the official format: the red plane (1024 values, row-major), then green, blue.
    assert ds.test_x[3, 0, 0, 5] == te_x[3, 5]
    assert ds.test_x[3, 1, 2, 0] == te_x[3, 1024 + 64]
    assert ds.test_x[3, 2, 31, 31] == te_x[3, 3071]
    assert ds.num_classes == (100 if kind == "cifar100" else 10)
    if kind == "cifar100":
        fine, coarse = cifar100_names()
        assert ds.classes == fine
        present = set(te_y.tolist())
        assert all(ds.superclasses[c] == coarse[fine_to_coarse(c)] for c in present)
    else:
        assert ds.superclasses is None


def test_checksum_mismatch_is_refused(tmp_path):
    make_cifar_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100")  # not the official md5
    for _ in range(2):  # nothing is cached for a file that failed its check, so it fails again
        with pytest.raises(UserError, match="expected eb9058c3a382ffc7106e4002c42a8d85"):
            load_dataset("cifar100", tmp_path, download=False)
    assert not (tmp_path / "cache").exists()


def test_missing_archive_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(UserError, match="--no-download.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)


def test_offline_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(UserError, match="could not download cifar-100-python.tar.gz.*put the official"):
        load_dataset("cifar100", tmp_path, download=True)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_archive_given_by_path_is_parsed_like_the_official_one(kind, tmp_path, trusted_archive, capsys):
    trusted_archive(kind)
    official = load_dataset(kind, tmp_path, download=False)
    capsys.readouterr()
    # Any name: the kind comes from the folder inside; the checksum is the official one here.
    renamed = tmp_path / "copy.tar.gz"
    renamed.write_bytes((tmp_path / common.ARCHIVES[kind][0]).read_bytes())
    ds = load_dataset(str(renamed), tmp_path / "unused")
    assert torch.equal(ds.train_x, official.train_x) and torch.equal(ds.test_y, official.test_y)
    assert ds.classes == official.classes and ds.superclasses == official.superclasses
    assert "not the official file" not in capsys.readouterr().out


def test_generated_archive_by_path_says_it_is_not_the_official_file(tmp_path, capsys):
    tr_x, tr_y, te_x, te_y = write_archive(tmp_path / "gen.tar.gz", "cifar100", 40, 15, pixels="shapes")
    ds = load_dataset(str(tmp_path / "gen.tar.gz"), tmp_path, limit_test=10)
    assert "not the official file" in capsys.readouterr().out
    assert ds.num_classes == 100 and len(set(ds.superclasses) - {"unknown"}) <= 20
    assert ds.classes[37] == "triangle-blue"
    for fine in set(ds.test_y.tolist()):  # every class's superclass: its shape and half of its hues
        assert ds.superclasses[fine] == ds.classes[fine].split("-")[0] + (
            "-red-green" if fine % 10 < 5 else "-teal-magenta")
    assert torch.equal(ds.test_x, torch.from_numpy(te_x).view(-1, 3, 32, 32)[ds.test_indices])


@pytest.mark.parametrize("content, message", [
    (b"not a tar file", "not a readable .tar.gz archive"),
    (None, "neither cifar-10-batches-py/ nor cifar-100-python/"),
])
def test_a_file_that_is_not_a_cifar_archive_is_a_clear_error(tmp_path, content, message):
    path = tmp_path / "x.tar.gz"
    if content is None:
        with tarfile.open(path, "w:gz") as tar:
            info = tarfile.TarInfo("other/readme.txt")
            tar.addfile(info, io.BytesIO(b""))
    else:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_dataset(str(path), tmp_path)


def test_archive_generator_refuses_to_overwrite(tmp_path, capsys):
    import make_cifar_archive
    out = tmp_path / "c10.tar.gz"
    make_cifar_archive.main([str(out), "--kind", "cifar10", "--n-train", "20", "--n-test", "5"])
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="already exists; use --overwrite"):
        make_cifar_archive.main([str(out), "--kind", "cifar10", "--n-train", "30", "--n-test", "5"])
    assert out.read_bytes() == before
    ds = load_dataset(str(out), tmp_path)
    assert len(ds.train_y) == 20 and ds.classes == list(synthetic.SHAPES)
    with pytest.raises(SystemExit):
        make_cifar_archive.main([str(tmp_path / "y.tar.gz"), "--n-train", "0"])
    with pytest.raises(SystemExit, match="is a folder"):
        make_cifar_archive.main([str(tmp_path), "--overwrite"])


def test_limits_take_a_fixed_subset_that_keeps_original_indices(tmp_path, trusted_archive):
    trusted_archive("cifar10")
    full = load_dataset("cifar10", tmp_path, download=False)
    ds = load_dataset("cifar10", tmp_path, download=False, limit_train=10, limit_test=7)
    assert len(ds.train_y) == 10 and len(ds.test_y) == 7
    assert torch.equal(ds.test_x, full.test_x[ds.test_indices])
    assert torch.equal(ds.test_indices,
                       load_dataset("cifar10", tmp_path, False, 10, 7).test_indices)


#### The parsed-archive cache: every script of the chain loads the same archive

def assert_same_dataset(a, b):
    assert a.name == b.name and a.classes == b.classes and a.superclasses == b.superclasses
    for f in ("train_x", "train_y", "test_x", "test_y"):
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and torch.equal(x, y), f


def forbid_reading_the_archive(monkeypatch):
    def read(*args, **kwargs):
        raise AssertionError("the archive was read again although its cache is valid")
    monkeypatch.setattr(common, "file_md5", read)
    monkeypatch.setattr(tarfile, "open", read)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_an_official_archive_is_checked_and_parsed_once(kind, tmp_path, trusted_archive, monkeypatch):
    trusted_archive(kind)
    first = load_dataset(kind, tmp_path, download=False)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    forbid_reading_the_archive(monkeypatch)
    assert_same_dataset(load_dataset(kind, tmp_path, download=False), first)
    limited = load_dataset(kind, tmp_path, download=False, limit_test=7)
    assert torch.equal(limited.test_x, first.test_x[limited.test_indices])


def test_an_archive_given_by_path_is_parsed_once_and_still_says_it_is_not_official(
        tmp_path, monkeypatch, capsys):
    path = tmp_path / "gen.tar.gz"
    write_archive(path, "cifar100", 40, 15, pixels="shapes")
    first = load_dataset(str(path), tmp_path / "data")
    assert capsys.readouterr().out.count("is not the official file") == 1
    forbid_reading_the_archive(monkeypatch)
    assert_same_dataset(load_dataset(str(path), tmp_path / "data"), first)
    assert capsys.readouterr().out.count("is not the official file") == 1


def test_a_touched_or_replaced_archive_is_read_again(tmp_path, monkeypatch):
    path = tmp_path / "gen.tar.gz"
    write_archive(path, "cifar10", 30, 10, seed=0, level=0)  # stored: the size is the pickles' own
    first = load_dataset(str(path), tmp_path / "data")
    checked = []
    real_md5 = common.file_md5
    monkeypatch.setattr(common, "file_md5", lambda p: checked.append(p) or real_md5(p))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the same bytes, a new mtime
    assert_same_dataset(load_dataset(str(path), tmp_path / "data"), first)
    assert len(checked) == 1
    write_archive(path, "cifar10", 30, 10, seed=1, level=0)  # other pixels, the same size
    assert path.stat().st_size == stat.st_size
    assert not torch.equal(load_dataset(str(path), tmp_path / "data").train_x, first.train_x)
    write_archive(path, "cifar10", 40, 10, seed=0)  # another size
    assert len(load_dataset(str(path), tmp_path / "data").train_y) == 40 and len(checked) == 3


def test_a_replaced_official_archive_is_checked_again(tmp_path, trusted_archive):
    trusted_archive("cifar100")
    load_dataset("cifar100", tmp_path, download=False)
    make_cifar_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100", seed=1)
    with pytest.raises(UserError, match="has md5 [0-9a-f]+, expected .*corrupt or not the official"):
        load_dataset("cifar100", tmp_path, download=False)


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "not an entry", "unsafe"])
def test_a_corrupt_cache_is_rebuilt_silently(damage, tmp_path, trusted_archive, capsys):
    trusted_archive("cifar10")
    first = load_dataset("cifar10", tmp_path, download=False)
    [cache] = (tmp_path / "cache").glob("*.pt")
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:cache.stat().st_size // 2])
    elif damage == "not an entry":  # a readable file, but not what the loader wrote
        torch.save({"train_x": torch.zeros(1)}, cache)
    elif damage == "unsafe":  # needs arbitrary unpickling, which weights_only refuses
        torch.save(tmp_path, cache)
    else:
        cache.write_bytes(b"" if damage == "empty" else b"not a torch file")
    capsys.readouterr()
    assert_same_dataset(load_dataset("cifar10", tmp_path, download=False), first)
    assert capsys.readouterr() == ("", "")
    assert set(torch.load(cache, weights_only=True)) == {"kind", "md5", *common.ARCHIVE_FIELDS}


def test_an_unwritable_data_dir_only_costs_a_parse_each_time(tmp_path, monkeypatch):
    path = tmp_path / "gen.tar.gz"
    write_archive(path, "cifar10", 30, 10)

    def read_only(state, to):
        raise PermissionError(13, "Permission denied", str(to))
    monkeypatch.setattr(common, "save_checkpoint", read_only)
    first = load_dataset(str(path), tmp_path / "ro")
    assert_same_dataset(load_dataset(str(path), tmp_path / "ro"), first)
    assert not (tmp_path / "ro").exists()


#### Folder datasets

def test_folder_dataset_decodes_once_and_caches(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    ds = load_dataset(str(root), tmp_path / "data")
    assert ds.classes == ["cat", "dog"] and ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    bgr = cv2.imread(str(root / "test" / "dog" / "0001.png"))
    assert torch.equal(ds.test_x[4], torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).copy()))
    assert list((tmp_path / "data" / "cache").glob("imgs-*.pt"))

    def no_decode(*args):
        raise AssertionError("decoded again although the cache is valid")
    with monkeypatch.context() as m:
        m.setattr(common, "_decode", no_decode)
        assert torch.equal(load_dataset(str(root), tmp_path / "data").train_x, ds.train_x)
    [cache] = (tmp_path / "data" / "cache").glob("imgs-*.pt")
    cache.write_bytes(b"garbage")  # a corrupt cache is decoded again, without a traceback
    assert torch.equal(load_dataset(str(root), tmp_path / "data").test_x, ds.test_x)
    assert torch.equal(torch.load(cache, weights_only=True)["test_x"], ds.test_x)


def test_folder_images_of_another_size_are_resized(tmp_path):
    ds = load_dataset(str(make_folder(tmp_path / "big", size=48)), tmp_path / "data")
    assert ds.train_x.shape == (6, 3, 32, 32)


def test_folder_without_test_split_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "imgs")
    import shutil
    shutil.rmtree(root / "test")
    with pytest.raises(UserError, match="no test/ folder"):
        load_dataset(str(root), tmp_path / "data")


def test_only_a_resumed_training_may_download_the_runs_archive(tmp_path, monkeypatch):
    """Later steps read what a run used (never download); train.py --resume may fetch it again."""
    asked = []
    monkeypatch.setattr(contract, "load_dataset", lambda name, data_dir, download, **kw: asked.append(download))
    config = {"dataset": "cifar10", "data_dir": str(tmp_path), "limit_train": None, "limit_test": None}
    contract.dataset_from_config(config)
    contract.dataset_from_config(config, download=True)
    assert asked == [False, True]


def test_a_runs_relative_dataset_path_is_found_from_another_folder(tmp_path, monkeypatch):
    """config.json keeps --dataset imgs and --data-dir data as typed; later steps run elsewhere."""
    made = tmp_path / "project"
    make_folder(made / "imgs")
    monkeypatch.chdir(made)
    config = {"dataset": "imgs", "data_dir": "data", "limit_train": None, "limit_test": 4,
              **common.provenance()}
    here = contract.dataset_from_config(config)
    assert config["working_dir"] == str(made)
    monkeypatch.chdir(tmp_path)
    elsewhere = contract.dataset_from_config(config)
    assert torch.equal(elsewhere.test_x, here.test_x) and elsewhere.test_indices.tolist() == here.test_indices.tolist()
    assert not (tmp_path / "data").exists()  # the cache of the run's own data folder was used
    with pytest.raises(UserError, match="the run.s dataset gone is not found from .* nor under .*project"):
        contract.dataset_from_config({**config, "dataset": "gone"})


def test_unreadable_image_is_named(tmp_path):
    root = make_folder(tmp_path / "imgs")
    (root / "train" / "dog" / "0002.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="0002.png could not be read"):
        load_dataset(str(root), tmp_path / "data")


def test_unknown_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet", tmp_path)


#### Synthetic

def test_synthetic_is_deterministic_with_objects_inside_their_boxes():
    a, b = make_synthetic(200, 100), make_synthetic(200, 100)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_boxes, b.test_boxes)
    assert a.num_classes == 10 and a.test_x.shape == (100, 3, 32, 32)
    assert set(a.train_y.tolist()) == set(range(10))
    x0, y0, x1, y1 = a.test_boxes.unbind(1)
    assert ((x1 - x0) == 11).all() and ((y1 - y0) == 11).all()
    assert (x0 >= 0).all() and (x1 <= 32).all() and (y0 >= 0).all() and (y1 <= 32).all()

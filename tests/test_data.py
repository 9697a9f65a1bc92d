"""Dataset loading: official-format CIFAR archives, folder datasets, the synthetic set."""
import io
import pickle
import tarfile

import cv2
import numpy as np
import pytest
import torch

import common
from common import UserError, file_md5, load_dataset, make_synthetic


def _pickle_member(tar, name, obj):
    data = pickle.dumps(obj)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_cifar_archive(path, kind, n_train=30, n_test=20, seed=0):
    """An archive in the official layout (data uint8 N x 3072 in CHW row order) with known pixels."""
    rng = np.random.default_rng(seed)
    num_classes = 100 if kind == "cifar100" else 10

    def split(n):
        return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, num_classes, n)
    (tr_x, tr_y), (te_x, te_y) = split(n_train), split(n_test)
    with tarfile.open(path, "w:gz") as tar:
        if kind == "cifar100":
            fine_to_coarse = np.arange(100) // 5
            for name, x, y in (("train", tr_x, tr_y), ("test", te_x, te_y)):
                _pickle_member(tar, f"cifar-100-python/{name}", {
                    "data": x, "fine_labels": y.tolist(), "coarse_labels": fine_to_coarse[y].tolist(),
                    "filenames": [f"{name}_{i}.png" for i in range(len(y))]})
            _pickle_member(tar, "cifar-100-python/meta", {
                "fine_label_names": [f"fine{i}" for i in range(100)],
                "coarse_label_names": [f"coarse{i}" for i in range(20)]})
        else:
            for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
                _pickle_member(tar, f"cifar-10-batches-py/data_batch_{i + 1}",
                               {"data": tr_x[part], "labels": tr_y[part].tolist()})
            _pickle_member(tar, "cifar-10-batches-py/test_batch", {"data": te_x, "labels": te_y.tolist()})
            _pickle_member(tar, "cifar-10-batches-py/batches.meta",
                           {"label_names": [f"c{i}" for i in range(10)]})
    return tr_x, tr_y, te_x, te_y


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
        assert ds.classes[7] == "fine7"
        present = set(te_y.tolist())
        assert all(ds.superclasses[c] == f"coarse{c // 5}" for c in present)
    else:
        assert ds.superclasses is None


def test_checksum_mismatch_is_refused(tmp_path):
    make_cifar_archive(tmp_path / "cifar-100-python.tar.gz", "cifar100")  # not the official md5
    with pytest.raises(UserError, match="expected eb9058c3a382ffc7106e4002c42a8d85"):
        load_dataset("cifar100", tmp_path, download=False)


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


def test_limits_take_a_fixed_subset_that_keeps_original_indices(tmp_path, trusted_archive):
    trusted_archive("cifar10")
    full = load_dataset("cifar10", tmp_path, download=False)
    ds = load_dataset("cifar10", tmp_path, download=False, limit_train=10, limit_test=7)
    assert len(ds.train_y) == 10 and len(ds.test_y) == 7
    assert torch.equal(ds.test_x, full.test_x[ds.test_indices])
    assert torch.equal(ds.test_indices,
                       load_dataset("cifar10", tmp_path, False, 10, 7).test_indices)


#### Folder datasets

def make_folder(root, classes=("cat", "dog"), per_class=3, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                cv2.imwrite(str(root / split / c / f"{i:04d}.png"),
                            rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return root


def test_folder_dataset_decodes_once_and_caches(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "imgs")
    ds = load_dataset(str(root), tmp_path / "data")
    assert ds.classes == ["cat", "dog"] and ds.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    bgr = cv2.imread(str(root / "test" / "dog" / "0001.png"))
    assert torch.equal(ds.test_x[4], torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).copy()))
    assert list((tmp_path / "data" / "cache").glob("imgs-*.pt"))

    def no_decode(*args):
        raise AssertionError("decoded again although the cache is valid")
    monkeypatch.setattr(common, "_decode", no_decode)
    assert torch.equal(load_dataset(str(root), tmp_path / "data").train_x, ds.train_x)


def test_folder_images_of_another_size_are_resized(tmp_path):
    ds = load_dataset(str(make_folder(tmp_path / "big", size=48)), tmp_path / "data")
    assert ds.train_x.shape == (6, 3, 32, 32)


def test_folder_without_test_split_is_a_clear_error(tmp_path):
    root = make_folder(tmp_path / "imgs")
    import shutil
    shutil.rmtree(root / "test")
    with pytest.raises(UserError, match="no test/ folder"):
        load_dataset(str(root), tmp_path / "data")


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

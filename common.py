"""Shared toolbox for the study's scripts: seeding, networks, data, augmentation, CutMix, I/O.

Importing this module does nothing: no downloads, no device queries, no global state.
    from common import build_model, load_dataset, DeviceLoader, cutmix
"""
import argparse
import contextlib
import hashlib
import json
import math
import os
import pickle
import platform
import random
import shutil
import subprocess
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import synthetic


class UserError(Exception):
    """A mistake the user can fix; scripts print it as one sentence and exit non-zero."""


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default, but not None, False (an off switch) or that of a required flag."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, False) or "%(default)" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def arg_parser(doc):
    """Every script's parser: the first line of its docstring, and each flag's default in --help."""
    return argparse.ArgumentParser(description=doc.splitlines()[0], formatter_class=_DefaultsFormatter)


# argparse type= factories for numbers with bounds: a bad value stops the parser ("error: argument
# --epochs: must be at least 1", exit 2) before anything runs, worded alike in every script.
# Each keeps int's or float's name, so a non-number still reads "invalid int value: 'x'".

def at_least(n):
    """type= for an integer flag of at least n."""
    def parse(text):
        value = int(text)
        if value < n:
            raise argparse.ArgumentTypeError(f"must be at least {n}")
        return value
    parse.__name__ = "int"
    return parse


def float_in(lo, hi=math.inf, lo_open=False, hi_open=False):
    """type= for a float flag from lo to hi, each end included unless lo_open or hi_open. NaN and
    infinities are refused too: no flag means them, and NaN would slip past `value < lo`."""
    if hi == math.inf:
        want = f"greater than {lo:g}" if lo_open else f"at least {lo:g}"
    else:
        want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def parse(text):
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError("must be a finite number")
        if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
            raise argparse.ArgumentTypeError(f"must be {want}")
        return value
    parse.__name__ = "float"
    return parse


def cli_guard(fn, *args):
    """Run fn(*args) and turn a UserError into a one-line message with exit status 1."""
    try:
        return fn(*args)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None


#### Setup

def seed_everything(seed, deterministic=False):
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    # cuDNN autotuning times the convolution algorithms once per input shape and keeps the
    # fastest: the shapes here are fixed, but the choice may differ from run to run.
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        # cuBLAS needs this workspace setting before its first deterministic call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


DEVICE_HELP = "auto (cuda, else mps, else cpu) or any torch device: cpu, cuda, cuda:1, mps"
DATASET_HELP = ("cifar100, cifar10, synthetic (synthetic-planted: with failure causes planted; "
                "synthetic-control: the same without), a folder with train/<class>/ and test/<class>/ "
                "images, or the path of an official-format .tar.gz")


def _available(device):
    """Whether torch can use `device` here: CUDA with that index, MPS, or another backend's check."""
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    backend = getattr(torch, device.type, None)  # xpu, ...: the backends that have a module
    return bool(getattr(backend, "is_available", lambda: False)())


def resolve_device(name):
    """The torch.device for --device (DEVICE_HELP); on the CPU it also flushes denormal floats to
    zero. A device this machine cannot use is a UserError."""
    if name == "auto":
        name = ("cuda" if torch.cuda.is_available() else
                "mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UserError(f"--device {name!r} is not a torch device; use {DEVICE_HELP}") from None
    if not _available(device):
        raise UserError(f"--device {name} was asked for but this machine has no such device; "
                        "use --device cpu or --device auto")
    if device.type == "cpu":
        # Weight decay under Adam drives unused weights and their moments into the denormal
        # range (below 1.2e-38): measured on a 13-epoch CIFAR-10 SimpleCNN, 60k denormal weights
        # made x86 CPUs 2.5x slower per step (docs/RESULTS.md). Values this small change nothing.
        torch.set_flush_denormal(True)
    if device.type == "cuda" and device.index is not None:
        # Work given a bare "cuda" (torch.cuda.synchronize(), new tensors, compiled code) goes to
        # the current device: make it the one asked for, so that cuda:1 means cuda:1 throughout.
        torch.cuda.set_device(device)
    set_tf32(False)  # every script starts in IEEE float32; train.py --tf32 opts in (precision_of)
    return device


def cpu_has_native_bf16():
    """True where the CPU multiplies bf16 in hardware: AVX512-BF16 or AMX on x86, BF16 on Arm.
    Elsewhere autocast to bf16 still runs, but emulated, and is slower than float32."""
    # torch.cpu's probes are private (underscored) but have been there since torch 2.1.
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if getattr(torch.cpu, name, lambda: False)():
            return True
    if platform.machine() in ("aarch64", "arm64"):
        try:
            return " bf16" in Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    return False


def cuda_ampere_or_newer(device):
    """True on CUDA GPUs of compute capability 8.0 or newer (Ampere, Hopper, ...): their tensor
    cores multiply bf16 and TF32; older ones (T4, V100) have neither (bf16 is emulated, slower)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def autocast_mode(device, amp, fallback="training in float32"):
    """(use bf16 autocast?, note or None) for --amp on `device`: a CUDA GPU or a CPU with native
    bf16; the note ends with `fallback`, what the caller does instead. Autocast keeps the loss,
    BatchNorm statistics, weights and optimizer state in float32."""
    if not amp:
        return False, None
    if cuda_ampere_or_newer(device) or (device.type == "cpu" and cpu_has_native_bf16()):
        return True, None
    return False, (f"note: --amp needs native bf16 (a CUDA GPU of compute capability 8.0 or newer, or "
                   f"a CPU with AVX512-BF16, AMX or Arm BF16), which {device_name(device)} lacks; "
                   f"{fallback}")


def set_tf32(enabled):
    """Let float32 convolutions and matrix products on CUDA run in TF32 (10-bit mantissa), or not.

    PyTorch's defaults differ by operator (cuDNN convolutions TF32, matmuls IEEE), so a "float32"
    training on an Ampere-or-newer GPU would silently run its convolutions in TF32: resolve_device
    sets IEEE float32 for everything at start-up, and only train.py --tf32 turns TF32 on."""
    value = "tf32" if enabled else "ieee"
    new_api = [getattr(torch.backends.cuda, "matmul", None), getattr(torch.backends.cudnn, "conv", None),
               getattr(torch.backends.cudnn, "rnn", None)]
    if hasattr(new_api[1], "fp32_precision"):  # torch >= 2.9; mixing it with the legacy flags is an error
        for backend in new_api:
            if hasattr(backend, "fp32_precision"):
                backend.fp32_precision = value
    else:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled


def precision_of(device, amp, tf32):
    """What a training on `device` computes in, and a note when a flag cannot apply there:
    ("bf16 autocast" | "tf32" | "float32", note or None). Sets the TF32 policy to match."""
    use_amp, note = autocast_mode(device, amp)
    if use_amp:
        return "bf16 autocast", None
    if tf32 and not cuda_ampere_or_newer(device):
        note = (note + "; " if note else "note: ") + (
            f"--tf32 needs a CUDA GPU of compute capability 8.0 or newer, which {device_name(device)} "
            "is not; training in IEEE float32")
        tf32 = False
    set_tf32(tf32)
    return ("tf32" if tf32 else "float32"), note


def autocast(device, enabled):
    """The bf16 autocast context for `device`, or a no-op when not enabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synchronize(device):
    """Wait until `device` has finished the work queued on it (timing); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        cores, threads = os.cpu_count(), torch.get_num_threads()
        return f"cpu ({cores} core{'s' * (cores != 1)}, {threads} thread{'s' * (threads != 1)})"
    return str(device)


def git_commit():
    """The checkout's commit, with '-dirty' when files differ from it; 'unknown' outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def provenance():
    """What produced a run, for its config.json: code version, library versions, and the folder it
    ran in (the base of the relative --dataset and --data-dir paths config.json keeps as given)."""
    return {"git_commit": git_commit(), "torch_version": str(torch.__version__),
            "torchvision_version": str(__import__("torchvision").__version__),
            "python_version": platform.python_version(), "working_dir": os.getcwd()}


#### Atomic output: a crash or a bad input never leaves a half-written file behind

def atomic_write(path, write_fn, mode="wb"):
    """Call write_fn(file) on a temporary file next to path, then rename it over path.

    The bytes reach the disk before the rename, and the rename before this returns: on a network
    file system a node that fails after a rename without fsync can leave the new name on a
    truncated file, and a requeued job would resume from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)  # mkstemp makes 0600 files; give the usual permissions instead
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(folder):
    """Make a rename in folder durable (a no-op where directories cannot be opened for it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_link_or_copy(src, dst):
    """dst becomes a file with src's bytes, atomically: a hard link where the file system allows one,
    else a copy. A link is safe because atomic_write never changes a file in place, it replaces it:
    when src is written again, dst keeps the bytes it had."""
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dst)
        fsync_dir(dst.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_json(obj, path):
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=False), mode="w")


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported when a figure is drawn: importing a
    script stays cheap, and no display is needed (a GPU node has none)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


# Cases drawn in a step's figure: a planted-cause study (failures.py --all-errors) has a hundred;
# the JSON files hold them all.
MOST_PLOTTED = 20


def save_figure(fig, path, **kwargs):
    fmt = Path(path).suffix.lstrip(".")
    atomic_write(path, lambda f: fig.savefig(f, format=fmt, **kwargs))


def save_checkpoint(state, path):
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path):
    """Load a checkpoint with weights_only=True: a file that needs arbitrary unpickling is refused."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; train the run first")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only" in str(e).lower():
            raise UserError(f"refused to load {path}: it needs arbitrary unpickling, "
                            "which could run code; only plain checkpoints are accepted") from None
        raise UserError(f"checkpoint {path} is truncated or corrupt ({e})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"checkpoint {path} is truncated or corrupt ({str(e).splitlines()[0]})") from None


#### Network

class SimpleCNN(nn.Module):
    """The second variant's network: 3 conv layers (ReLU, max-pooling) and a fully connected classifier."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        # ReLUs as modules (no parameters, so checkpoints are unchanged) so that Grad-CAM can hook
        # the rectified 8x8 map of conv3: on the synthetic set its peak falls on the object far
        # more often than the raw conv3 output's (docs/RESULTS.md).
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.fc1 = nn.Linear(128 * 4 * 4, 256)
        self.fc2 = nn.Linear(256, num_classes)

    def forward(self, x):
        for conv, relu in ((self.conv1, self.relu1), (self.conv2, self.relu2), (self.conv3, self.relu3)):
            x = F.max_pool2d(relu(conv(x)), 2)
        return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))


# torchvision's ResNets share conv1, maxpool, layer1-4 and fc, so one adaptation fits them all.
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
           "wide_resnet101_2", "resnext50_32x4d")
ARCHS = RESNETS + ("simplecnn",)
# layer4 is 4x4 on 32x32 inputs for every ResNet above (conv1 stride 1, three stride-2 stages).
DEFAULT_CAM_LAYER = {**{arch: "layer4" for arch in RESNETS}, "simplecnn": "relu3"}


def build_model(arch, num_classes):
    """simplecnn, or a torchvision ResNet (RESNETS) without pretrained weights, adapted to 32x32 as
    the CIFAR literature does: a 3x3 stride-1 conv1 and no max-pool. The adapted models keep
    torchvision's module names, so their state_dicts load into torchvision's after the same change."""
    if arch == "simplecnn":
        return SimpleCNN(num_classes)
    if arch not in RESNETS:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    import torchvision.models
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    # 32x32 inputs: a 7x7 stride-2 stem and a max-pool would shrink them to 8x8 before layer1.
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


#### Data

@dataclass
class Dataset:
    """A whole dataset as uint8 tensors (N, 3, H, W) and int64 labels, decoded once."""
    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list
    superclasses: list = None       # CIFAR-100: superclass name of each class
    test_boxes: torch.Tensor = None  # synthetic: object box (x0, y0, x1, y1), exclusive ends
    test_indices: torch.Tensor = field(default=None)  # original test indices after --limit-test
    n_test_full: int = None  # images in the whole test set, before --limit-test
    planted: dict = None  # synthetic-planted: the test rows of each planted failure cause

    @property
    def num_classes(self):
        return len(self.classes)


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
ARCHIVES = {  # official archive name, md5 and the pickles inside it
    "cifar10": ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
    "cifar100": ("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python",
                 ["train"], ["test"], "meta"),
}
# The dataset names load_dataset knows; any other --dataset is a path.
NAMED_DATASETS = (*ARCHIVES, "synthetic", "synthetic-planted", "synthetic-control")


def file_md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cached(data_dir, stem, key_lines, build, fields):
    """build()'s dict of tensors, lists and strings, kept in <data_dir>/cache/<stem>-<key>.pt.

    key_lines must name everything the result depends on (paths, sizes, mtimes), so that a changed
    input gets a new cache file instead of a stale one. Decoding or parsing the data is the slow
    part of every script's start, and each script of the chain loads the same data again.
    """
    key = hashlib.sha256("".join(f"{line}\n" for line in key_lines).encode()).hexdigest()[:16]
    cache = Path(data_dir) / "cache" / f"{stem}-{key}.pt"
    if cache.is_file():
        try:
            value = torch.load(cache, map_location="cpu", weights_only=True)
            if isinstance(value, dict) and set(fields) <= value.keys():
                return value
        except Exception:  # truncated, corrupt or unreadable: only a cache, so build it again
            pass
    value = build()
    try:
        save_checkpoint(value, cache)
    except OSError:
        pass  # a read-only data dir only costs a rebuild next time
    return value


def _where(name, data_dir):
    filename, md5, *_ = ARCHIVES[name]
    return f"put the official {filename} (md5 {md5}) into {Path(data_dir).resolve()}/"


def _fetch_archive(name, data_dir, download):
    """The path of the official archive under data_dir, downloaded when missing (and allowed)."""
    filename, md5, *_ = ARCHIVES[name]
    path = Path(data_dir) / filename
    if not path.exists():
        if not download:
            raise UserError(f"{path} is missing and --no-download was given; {_where(name, data_dir)}")
        from torchvision.datasets.utils import download_url
        try:
            download_url(CIFAR_URL + filename, str(data_dir), filename, md5)
        except Exception as e:  # network errors come in many types; all mean the same to the user
            Path(path).unlink(missing_ok=True)
            raise UserError(f"could not download {filename} ({type(e).__name__}); "
                            f"if offline, {_where(name, data_dir)}") from None
    return path


def _check_md5(path, name, data_dir, actual):
    expected = ARCHIVES[name][1]
    if actual != expected:
        raise UserError(f"{path} has md5 {actual}, expected {expected}: the archive is corrupt or "
                        f"not the official one; delete it and {_where(name, data_dir)}")
    return actual


def _archive_kind(path):
    """cifar10 or cifar100, from the folder inside an official-format archive (its name may be any)."""
    folders = {entry[2]: kind for kind, entry in ARCHIVES.items()}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:  # stops at the first match, so the archive is not decompressed twice
                kind = folders.get(member.name.split("/")[0])
                if kind:
                    return kind
    except (tarfile.TarError, OSError, EOFError) as e:
        raise UserError(f"{path} is not a readable .tar.gz archive ({e})") from None
    raise UserError(f"{path} holds neither cifar-10-batches-py/ nor cifar-100-python/, so it is "
                    "not in the official CIFAR python format")


ARCHIVE_FIELDS = ("train_x", "train_y", "test_x", "test_y", "classes", "superclasses")


def _cached_archive(path, data_dir, how, build):
    """build()'s parse of the archive at path, read from <data_dir>/cache/ after the first time.

    The key is the file's resolved path, inode, size and mtime_ns: a hit stands for the very file
    whose md5 build() computed, so the 161 MB need not be read again. `how` (the kind it is parsed
    as, or "by-path" when the kind is read from the archive) decides what build() returns, so it
    is in the key too; "v1" changes whenever the entry's fields do.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = ["official-format archive v1", how, path, st.st_ino, st.st_size, st.st_mtime_ns]
    stem = path.name.removesuffix(".tar.gz")
    return _cached(data_dir, stem, key, build, ("kind", "md5", *ARCHIVE_FIELDS))


def _archive_dataset(entry):
    return Dataset(entry["kind"], *(entry[f] for f in ARCHIVE_FIELDS))


def _load_cifar(name, data_dir, download):
    path = _fetch_archive(name, data_dir, download)

    def build():
        md5 = _check_md5(path, name, data_dir, file_md5(path))  # before parsing: a wrong file fails fast
        return {"kind": name, "md5": md5, **_parse_archive(path, name)}
    entry = _cached_archive(path, data_dir, name, build)
    _check_md5(path, name, data_dir, entry["md5"])  # the expected md5 is not part of the cache key
    return _archive_dataset(entry)


def _load_archive_file(path, data_dir):
    """An official-format archive given by path: the official file or one generated in its format.

    It is parsed by the same code as a downloaded archive; only the checksum is not required.
    Whether it is the official file is said on every load, cached or not: it tells the user what
    data the run uses.
    """
    noted = []

    def note(kind, md5):
        if md5 != ARCHIVES[kind][1]:
            print(f"note: {path} is in the official {kind} format but is not the official file")
        noted.append(kind)

    def build():
        kind = _archive_kind(path)
        md5 = file_md5(path)
        note(kind, md5)  # before parsing, as it also explains a parse error
        return {"kind": kind, "md5": md5, **_parse_archive(path, kind)}
    entry = _cached_archive(path, data_dir, "by-path", build)
    if not noted:  # a cache hit
        note(entry["kind"], entry["md5"])
    return _archive_dataset(entry)


def _parse_archive(path, name):
    """The tensors and names of an official-format archive (ARCHIVE_FIELDS), parsed as `name`."""
    _, _, folder, train_files, test_files, meta_file = ARCHIVES[name]
    label_key = "fine_labels" if name == "cifar100" else "labels"
    try:
        with tarfile.open(path, "r:gz") as tar:
            def read(member):
                return pickle.load(tar.extractfile(f"{folder}/{member}"), encoding="latin1")

            def split(files):
                parts = [read(f) for f in files]
                x = np.concatenate([p["data"] for p in parts]).reshape(-1, 3, 32, 32)
                y = np.concatenate([p[label_key] for p in parts])
                return torch.from_numpy(x), torch.from_numpy(y).long(), parts
            train_x, train_y, _ = split(train_files)
            test_x, test_y, test_parts = split(test_files)
            meta = read(meta_file)
    except (tarfile.TarError, KeyError, pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"{path} could not be parsed as the official {name} archive ({e})") from None
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    if name == "cifar10":
        return {**tensors, "classes": list(meta["label_names"]), "superclasses": None}
    classes = list(meta["fine_label_names"])
    coarse = np.concatenate([p["coarse_labels"] for p in test_parts])
    superclass_of = {}
    for fine, c in zip(test_y.tolist(), coarse.tolist()):
        superclass_of[fine] = meta["coarse_label_names"][c]
    superclasses = [superclass_of.get(i, "unknown") for i in range(len(classes))]
    return {**tensors, "classes": classes, "superclasses": superclasses}


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


def _decode(path, size):
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise UserError(f"image {path} could not be read; remove or replace it")
    if img.shape[:2] != (size, size):  # non-CIFAR folders are resized once, at decode time
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return img[:, :, ::-1].transpose(2, 0, 1)  # BGR HWC -> RGB CHW


def _scan_split(root, split, classes=None):
    split_dir = root / split
    if not split_dir.is_dir():
        raise UserError(f"folder dataset {root} has no {split}/ folder; expected "
                        f"{root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if classes is not None and found != classes:
        raise UserError(f"{split_dir} has classes {found}, but train/ has {classes}")
    if not found:
        raise UserError(f"{split_dir} has no class folders")
    files, labels = [], []
    for label, c in enumerate(found):
        names = sorted(p for p in (split_dir / c).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += names
        labels += [label] * len(names)
    return found, files, labels


def _load_folder(root, data_dir, size=32):
    root = Path(root)
    classes, train_files, train_labels = _scan_split(root, "train")
    _, test_files, test_labels = _scan_split(root, "test", classes)
    # The decode cache is keyed by every file's path, size and mtime: any change re-decodes.
    key = [f"{p.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}"
           for p, st in ((p, p.stat()) for p in train_files + test_files)]

    def decode():
        with ThreadPoolExecutor(max_workers=8) as pool:  # OpenCV releases the GIL while decoding
            def stack(files):
                return torch.from_numpy(np.stack(list(pool.map(lambda p: _decode(p, size), files))))
            return {"train_x": stack(train_files), "test_x": stack(test_files)}
    arrays = _cached(data_dir, root.name, key, decode, ("train_x", "test_x"))
    return Dataset(root.name, arrays["train_x"], torch.tensor(train_labels), arrays["test_x"],
                   torch.tensor(test_labels), classes)


def make_synthetic(n_train=5000, n_test=1000, seed=0):
    """The synthetic shapes (synthetic.py), whose object boxes Grad-CAM is checked against."""
    return Dataset(**synthetic.make_synthetic(n_train, n_test, seed))


def subset_indices(n, limit, seed=0):
    """A fixed random subset of range(n), sorted, so a limit keeps every class (folder data is sorted)."""
    if not limit or limit >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:limit].sort().values


def load_dataset(name, data_dir="data", download=True, limit_train=None, limit_test=None):
    """cifar100 | cifar10 | synthetic | a folder with train/<class>/ and test/<class>/ |
    an official-format CIFAR .tar.gz archive given by its path."""
    if Path(data_dir).exists() and not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir} is a file; give the folder that holds (or will hold) "
                        "the archives and the decoded-image cache")
    if name in ARCHIVES:
        ds = _load_cifar(name, data_dir, download)
    elif name == "synthetic":
        ds = make_synthetic()
    elif name in ("synthetic-planted", "synthetic-control"):
        ds = Dataset(**synthetic.make_planted(plant=name == "synthetic-planted"))
    elif Path(name).is_dir():
        ds = _load_folder(name, data_dir)
    elif Path(name).is_file():
        ds = _load_archive_file(name, data_dir)
    else:
        raise UserError(f"unknown dataset {name!r}; use cifar100, cifar10, synthetic, synthetic-planted, "
                        "synthetic-control, a folder with train/<class>/ and test/<class>/ image "
                        "folders or the path of an official-format CIFAR .tar.gz archive")
    train_idx = subset_indices(len(ds.train_y), limit_train)
    if train_idx is not None:
        ds.train_x, ds.train_y = ds.train_x[train_idx], ds.train_y[train_idx]
    ds.n_test_full = len(ds.test_y)
    test_idx = subset_indices(len(ds.test_y), limit_test)
    ds.test_indices = test_idx if test_idx is not None else torch.arange(len(ds.test_y))
    if test_idx is not None:
        ds.test_x, ds.test_y = ds.test_x[test_idx], ds.test_y[test_idx]
        if ds.test_boxes is not None:
            ds.test_boxes = ds.test_boxes[test_idx]
    return ds


def channel_stats(images_u8):
    """Per-channel mean and std of uint8 images, in [0, 1] units."""
    x = images_u8.float().div_(255)
    return x.mean((0, 2, 3)).tolist(), x.std((0, 2, 3)).tolist()


#### Device-resident loading and augmentation: no per-image Python, same code on CPU and GPU

def norm_constants(mean, std, device):
    """Per-channel mean and std in [0, 1] units -> (1, C, 1, 1) tensors in uint8 units on device.

    Loaders make them once: copying a Python list to a GPU waits until the GPU has finished all
    the work queued before it, so doing it per batch would stall every training step.
    """
    def scaled(values):
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).mul(255).to(device)
    return scaled(mean), scaled(std)


def normalize(images_u8, mean, std):
    """uint8 (N, 3, H, W) on any device -> normalised float32, channels_last for faster convs.

    mean, std: per-channel values in [0, 1] units, or the tensors of norm_constants().
    """
    if not torch.is_tensor(mean):
        mean, std = norm_constants(mean, std, images_u8.device)
    x = (images_u8.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def crop_flip(images, offsets, flips, pad=4):
    """Random crop with zero padding `pad` and horizontal flip, batched.

    images (B, C, H, W); offsets (B, 2) integer (dy, dx) in [0, 2*pad]; flips (B,) bool.
    """
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # zeros, as torchvision's RandomCrop(padding=4)
    rows = offsets[:, 0:1] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=images.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=images.device)[:, None, None, None]
    ci = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class DeviceLoader:
    """Batches of a uint8 tensor kept on the device, shuffled and augmented with a seeded generator.

    All randomness of an epoch is drawn at its start from a CPU generator, so the generator's
    state at an epoch boundary is all a resumed run needs, and no step waits on the host.
    """

    def __init__(self, images, labels, batch_size, mean, std, device, train=False,
                 augment="none", generator=None):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.norm = norm_constants(mean, std, device)
        self.train, self.augment, self.generator = train, augment, generator

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n, dev = len(self.labels), self.images.device
        if self.train:
            order = torch.randperm(n, generator=self.generator).to(dev)
            offsets = torch.randint(0, 9, (n, 2), generator=self.generator).to(dev)
            flips = (torch.rand(n, generator=self.generator) < 0.5).to(dev)
        else:
            order = torch.arange(n, device=dev)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            if self.train and self.augment == "crop-flip":
                x = crop_flip(x, offsets[start:start + self.batch_size],
                              flips[start:start + self.batch_size])
            yield normalize(x, *self.norm), self.labels[idx]


@torch.no_grad()
def predict(model, images_u8, mean, std, batch_size=1024, amp=False):
    """Logits (N, C) as float32 on the CPU, computed in batches on the model's device; amp=True
    runs the forward passes under bf16 autocast (only where autocast_mode allows it)."""
    device = next(model.parameters()).device
    loader = DeviceLoader(images_u8, torch.zeros(len(images_u8), dtype=torch.long), batch_size,
                          mean, std, device)
    with autocast(device, amp):
        # One copy to the CPU at the end: a copy per batch would make the host wait for each batch.
        return torch.cat([model(x).float() for x, _ in loader]).cpu()


def cutmix(images, labels, alpha, generator=None):
    """CutMix as its authors define it: one permutation and one box for the whole batch.

    Returns (mixed, labels_a, labels_b, lam) with lam = 1 - box_area / (H * W) recomputed from
    the clipped box, as a float. The inputs are not modified; the loss is
    lam * CE(out, labels_a) + (1 - lam) * CE(out, labels_b).

    For the same lam and centre, box and lam equal torchvision.transforms.v2.CutMix's, and the
    loss equals CE on its soft one-hot targets (tests/test_common.py). It differs in: pairing
    (a random permutation here, which may pair an image with itself; torchvision pairs image i
    with i - 1 of the batch as given); probability (train.py applies this to a batch with
    probability --cutmix-prob; the transform always mixes); randomness (the seeded `generator`
    here, torch's global RNG there, drawn in another order and lam in float32).
    """
    b, _, h, w = images.shape
    gen_device = generator.device if generator is not None else torch.device("cpu")
    # Beta has no torch sampler that takes a generator: seed NumPy's from it instead.
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator, device=gen_device))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut), int(w * cut)
    cy = int(torch.randint(0, h, (1,), generator=generator, device=gen_device))
    cx = int(torch.randint(0, w, (1,), generator=generator, device=gen_device))
    y0, y1 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    x0, x1 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    perm = torch.randperm(b, generator=generator, device=gen_device)
    if images.is_cuda and not perm.is_cuda:
        # From pinned memory the copy is queued behind the GPU's work instead of waiting for it.
        perm = perm.pin_memory().to(images.device, non_blocking=True)
    perm = perm.to(images.device)  # any other pair of devices: an ordinary, waiting copy
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (h * w)
    return mixed, labels, labels[perm.to(labels.device)], lam

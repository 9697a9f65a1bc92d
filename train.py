"""Train a CNN from scratch and write runs/<name>/: history.csv, last.pt and best.pt after every
epoch, then curves.png and config.json once training is complete (config.json means "finished").

The study's two ResNet-18 runs (defaults = the reference baseline protocol):
    python train.py --name baseline
    python train.py --name cutmix --cutmix-prob 0.5 --label-smoothing 0.1
The second variant (CIFAR-10, SimpleCNN, Adam), on the folder copy of CIFAR-10:
    python train.py --name c10-baseline --arch simplecnn --dataset data/cifar10-jpeg \
        --optimizer adam --augment none --epochs 30 --milestones
"""
import csv
import io
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn as nn
from tqdm import tqdm

from common import (ARCHS, DATASET_HELP, DEVICE_HELP, DeviceLoader, UserError, arg_parser, at_least,
                    atomic_link_or_copy, atomic_write, autocast, build_model, channel_stats, cli_guard, cutmix, device_name,
                    float_in, git_commit, load_checkpoint, load_dataset, precision_of, provenance, pyplot,
                    resolve_device, save_checkpoint, save_figure, save_json, seed_everything, synchronize)
from contract import dataset_from_config, read_history
from settings import changed_settings

RUN_FILES = ("config.json", "history.csv", "last.pt", "best.pt", "curves.png")
# seconds = train_seconds + test_seconds (the epoch's computing); save_seconds: its checkpoints.
HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                  "train_seconds", "test_seconds", "save_seconds")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def build_parser():
    p = arg_parser(__doc__)
    a = p.add_argument
    # Defaults are the reference notebook's baseline protocol (see ../shared/FACTS.md).
    a("--arch", default="resnet18", choices=ARCHS, help="network")
    a("--dataset", default="cifar100", help=DATASET_HELP)
    a("--epochs", type=at_least(1), default=50, help="training epochs")
    a("--batch-size", type=at_least(1), default=128, help="training images per step")
    a("--optimizer", default="sgd", choices=("sgd", "adam"), help="optimizer")
    a("--lr", type=float_in(0, lo_open=True), default=None, help="default 0.1 for sgd, 1e-3 for adam")
    a("--momentum", type=float, default=0.9, help="SGD momentum")
    a("--weight-decay", type=float_in(0), default=5e-4, help="L2 weight decay")
    a("--milestones", type=at_least(1), nargs="*", default=[25, 40],
      help="epochs at which the lr is multiplied by --gamma (none: constant lr)")
    a("--gamma", type=float, default=0.1, help="lr factor at each milestone")
    a("--label-smoothing", type=float_in(0, 1, hi_open=True), default=0.0,
      help="label smoothing of the loss")
    a("--cutmix-prob", type=float_in(0, 1), default=0.0, help="probability that a batch is CutMix-ed")
    a("--cutmix-alpha", type=float_in(0, lo_open=True), default=1.0,
      help="Beta(alpha, alpha) for the mixing ratio")
    a("--augment", default="crop-flip", choices=("crop-flip", "none"),
      help="random crop (padding 4) and horizontal flip, or none")
    a("--seed", type=int, default=42, help="seeds data order, augmentation, CutMix, init")
    a("--name", default=None, help="run folder name under --runs-dir (default: arch-dataset-seed)")
    a("--runs-dir", default="runs", help="folder that holds the run folders")
    a("--data-dir", default="data", help="where archives live and decoded folders are cached")
    a("--no-download", action="store_true", help="fail instead of downloading a missing archive")
    a("--device", default="auto", help=DEVICE_HELP)
    a("--amp", action="store_true", help="bf16 autocast (a CUDA GPU of compute capability 8.0 or "
      "newer, or a CPU with native bf16)")
    a("--tf32", action="store_true", help="float32 convolutions and matrix products in TF32 on a CUDA "
      "GPU of compute capability 8.0 or newer (faster, 10-bit mantissa); without it IEEE float32")
    a("--compile", nargs="?", const="default", default=False, choices=COMPILE_MODES, metavar="MODE",
      help="torch.compile the training step's model; MODE (default: default) is torch.compile's: "
      "reduce-overhead adds CUDA graphs (fewest kernel launches), max-autotune also tunes kernels")
    a("--deterministic", action="store_true", help="deterministic kernels (slower on GPU)")
    a("--resume", action="store_true", help="continue runs/<name>/last.pt with its saved config")
    a("--overwrite", action="store_true", help="replace an existing run of the same name")
    a("--auto-resume", action="store_true", help="resume runs/<name>/last.pt if it holds an unfinished "
      "run of the same settings, else start afresh, replacing the folder (what make and a requeued "
      "Slurm job run: the same command whether or not an earlier attempt got some epochs done)")
    a("--limit-train", type=at_least(1), default=None, help="train on a fixed random subset of N images")
    a("--limit-test", type=at_least(1), default=None, help="test on a fixed random subset of N images")
    a("--eval-batch-size", type=at_least(1), default=1024, help="test images per forward pass")
    a("--tensorboard", action="store_true", help="also log each epoch's losses, accuracies and lr "
      "to runs/<name>/tensorboard/ (pip install tensorboard); history.csv stays the source of truth")
    return p


def check_args(args, parser):
    """Reject flags that conflict, before anything is read or written (each value's own bounds are
    its type=), and fill in the defaults that depend on other flags."""
    if sum((args.resume, args.overwrite, args.auto_resume)) > 1:
        parser.error("--resume, --overwrite and --auto-resume cannot be combined")
    if args.lr is None:
        args.lr = 0.1 if args.optimizer == "sgd" else 1e-3
    if args.name is None:
        args.name = f"{args.arch}-{Path(args.dataset).name}-seed{args.seed}"


def make_optimizer(model, cfg):
    # On a GPU the fused kernels update every parameter in a launch or two instead of several per
    # tensor; the CPU keeps the reference loop, which every earlier CPU run was trained with.
    impl = dict(fused=True) if next(model.parameters()).is_cuda else {}
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                               weight_decay=cfg["weight_decay"], **impl)
    return torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"], **impl)


@torch.no_grad()
def evaluate_loader(model, loader, criterion, amp_context):
    """Mean loss and accuracy, accumulated on the device with one host sync at the end."""
    model.eval()
    dev = loader.images.device
    loss_sum, correct = torch.zeros((), device=dev), torch.zeros((), device=dev)
    for x, y in loader:
        with amp_context():
            out = model(x)
        loss_sum += criterion(out.float(), y) * len(y)
        correct += (out.argmax(1) == y).sum()
    n = len(loader.labels)
    return loss_sum.item() / n, correct.item() / n


class TensorBoardLog:
    """--tensorboard: each epoch's history.csv row as TensorBoard scalars in runs/<name>/tensorboard/.

    torch.utils.tensorboard is imported only when asked, since the package is optional, and as soon
    as the log is made, so that a missing package stops the run before any data is read."""
    TAGS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
            "test_acc": "accuracy/test", "lr": "lr"}

    def __init__(self, enabled):
        self.writer_class, self.writer = None, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package, which is not "
                                "installed: pip install tensorboard") from None
            self.writer_class = SummaryWriter

    def log(self, run_dir, row):
        if self.writer_class is None:
            return
        if self.writer is None:
            # purge_step: a run killed after logging an epoch but before its checkpoint redoes that
            # epoch on --resume; TensorBoard then drops the first attempt's points.
            self.writer = self.writer_class(str(run_dir / "tensorboard"), purge_step=row["epoch"])
        for key, tag in self.TAGS.items():
            self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()  # on disk at every epoch, as history.csv is

    def close(self):
        if self.writer is not None:
            self.writer.close()


def plot_curves(history, path):
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    from matplotlib.ticker import MaxNLocator
    # Sized for a page's width, so that 8 pt labels print at about 8 pt in the report.
    with plt.rc_context({"font.size": 8}):
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7, 2.6))
        for key, label in (("train", "train"), ("test", "test")):
            ax1.plot(epochs, [h[f"{key}_loss"] for h in history], marker=".", label=label)
            ax2.plot(epochs, [100 * h[f"{key}_acc"] for h in history], marker=".", label=label)
        ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
        ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
        for ax in (ax1, ax2):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=150)
    plt.close(fig)


def write_history(history, path):
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="w")


def prepare_run(args):
    """Decide between a fresh run and a resumed one; never clobber a run without --overwrite."""
    run_dir = Path(args.runs_dir) / args.name
    existing = [f for f in RUN_FILES if (run_dir / f).exists()]
    if args.auto_resume:
        return run_dir, unfinished_checkpoint(args, run_dir)
    if args.resume:
        ckpt = load_checkpoint(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
        if ckpt is None:
            raise UserError(f"--resume needs {run_dir / 'last.pt'}, which does not exist")
        return run_dir, ckpt
    if existing and not args.overwrite:
        raise UserError(f"{run_dir} already holds a run ({', '.join(existing)}); "
                        "use --resume to continue it or --overwrite to replace it")
    return run_dir, None


def device_share():
    """Where tools/launch.py placed this run and how many runs may share its GPU: the timing
    figures (images/s, wall time) of a run that shared its device are not a lone run's."""
    return {"device_slot": os.environ.get("LAUNCH_SLOT"),
            "device_shared_by": int(os.environ.get("LAUNCH_JOBS_PER_GPU", "1"))}


def unfinished_checkpoint(args, run_dir):
    """--auto-resume: last.pt if it is an unfinished run (config.json, written last, is absent) of
    the settings given, else None, and the folder is replaced as with --overwrite."""
    if (run_dir / "last.pt").is_file() and not (run_dir / "config.json").is_file():
        ckpt = load_checkpoint(run_dir / "last.pt")
        differ = changed_settings(ckpt["config"], vars(args))
        if not differ:
            return ckpt
        print(f"note: {run_dir / 'last.pt'} is a run with other {', '.join(differ)}; starting afresh")
    args.overwrite = True
    return None


def start_config(args, ckpt, ds, device, run_dir):
    """The run's configuration: the saved one when resuming, else the flags plus what the data
    and the machine say (classes, normalisation, versions); a fresh run gets an empty folder."""
    if ckpt is not None:
        # A resume may run other code than the start did: each one's commit is kept, so that
        # config.json's git_commit (the start's) does not stand for epochs it did not run.
        slot = os.environ.get("LAUNCH_SLOT")  # where a launched (requeued) job resumed
        resumed = list(ckpt["config"].get("resumed", [])) + [
            dict(after_epoch=ckpt["epoch"], git_commit=git_commit(), **({"device_slot": slot} if slot else {}))]
        # The device is the only flag a resume may change (and where it ran: a requeued job moves).
        return dict(ckpt["config"], device=args.device, resumed=resumed, **device_share())
    # Not settings, so not saved: --tensorboard only logs, and is given again with --resume.
    cfg = {k: v for k, v in vars(args).items()
           if k not in ("resume", "overwrite", "auto_resume", "argv", "tensorboard")}
    mean, std = channel_stats(ds.train_x)
    cfg.update(command="python train.py " + " ".join(args.argv), num_classes=ds.num_classes,
               classes=ds.classes, superclasses=ds.superclasses, mean=mean, std=std,
               n_train=len(ds.train_y), n_test=len(ds.test_y), **provenance(),
               device_name=device_name(device), status="running", **device_share())
    if run_dir.exists() and args.overwrite:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def build_state(cfg, ckpt, device):
    """Model, optimizer, scheduler, data generator and progress, restored from ckpt if resuming."""
    state = SimpleNamespace(
        model=build_model(cfg["arch"], cfg["num_classes"]).to(device, memory_format=torch.channels_last),
        data_gen=torch.Generator().manual_seed(cfg["seed"]), epoch=0, history=[], best_acc=-1.0,
        elapsed=0.0, train_elapsed=0.0, compile_seconds=0.0, compile_pending=False)
    state.optimizer = make_optimizer(state.model, cfg)
    state.scheduler = torch.optim.lr_scheduler.MultiStepLR(state.optimizer, cfg["milestones"], cfg["gamma"])
    if ckpt is not None:
        state.model.load_state_dict(ckpt["model"])
        # load_state_dict takes the saved run's fused/foreach choice too: keep the one for this device.
        impl = {k: state.optimizer.param_groups[0].get(k) for k in ("fused", "foreach")}
        state.optimizer.load_state_dict(ckpt["optimizer"])
        for group in state.optimizer.param_groups:
            group.update(impl)
        state.scheduler.load_state_dict(ckpt["scheduler"])
        state.data_gen.set_state(ckpt["rng"]["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        state.epoch, state.history = ckpt["epoch"], list(ckpt["history"])
        state.best_acc, state.elapsed, state.train_elapsed = ckpt["best_acc"], ckpt["elapsed"], ckpt["train_elapsed"]
        state.compile_seconds = ckpt.get("compile_seconds", 0.0)
    return state


def train_epoch(state, step_model, loader, cfg, criterion, amp_context, run_dir):
    """One pass over the training set: (mean loss, accuracy, images seen). CutMix-ed batches count
    their accuracy against both labels, weighted by lam. The first step of a compiled model, which
    compiles it, is timed apart into state.compile_seconds."""
    device = loader.images.device
    state.model.train()
    t0 = time.perf_counter()
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, checked = 0, 0
    # On a GPU, reading the loss every step would stall the pipeline: look every 50 steps.
    sync_every = 1 if device.type == "cpu" else 50
    postfix_every = 10 if device.type == "cpu" else 50
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}/{cfg['epochs']}", leave=False, disable=None, file=sys.stdout)
    for step, (x, y) in enumerate(bar):
        # A compiled model is compiled for one batch shape: the tail batch (50,000 = 390 x 128 + 80)
        # would compile forward and backward again, so it runs the same weights eagerly instead.
        model = step_model if len(y) == loader.batch_size else state.model
        mixed = cfg["cutmix_prob"] > 0 and torch.rand(1, generator=state.data_gen).item() < cfg["cutmix_prob"]
        with amp_context():
            if mixed:
                x, y_a, y_b, lam = cutmix(x, y, cfg["cutmix_alpha"], state.data_gen)
                out = model(x)
                loss = lam * criterion(out, y_a) + (1 - lam) * criterion(out, y_b)
            else:
                out = model(x)
                loss = criterion(out, y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        with torch.no_grad():
            pred = out.argmax(1)
            correct += (lam * (pred == y_a).sum() + (1 - lam) * (pred == y_b).sum() if mixed
                        else (pred == y).sum())
            # The sum stays finite while every loss is: one check covers all steps since the last.
            loss_sum.add_(loss.detach(), alpha=len(y))
        seen += len(y)
        if state.compile_pending and model is step_model:
            synchronize(device)
            state.compile_seconds += time.perf_counter() - t0
            state.compile_pending = False
        if (step + 1) % sync_every == 0 or step + 1 == len(loader):
            if not torch.isfinite(loss_sum):
                where = f"step {step + 1}" if step == checked else f"steps {checked + 1}-{step + 1}"
                raise UserError(f"the training loss became NaN/inf at epoch {state.epoch + 1}, {where}; "
                                f"lower --lr (the last good checkpoint {run_dir / 'last.pt'} is kept)")
            checked = step + 1
        if not bar.disable and (step + 1) % postfix_every == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{100 * correct.item() / seen:.1f}%",
                            img_s=f"{seen / (time.perf_counter() - t0):.0f}")
    return loss_sum.item() / seen, correct.item() / seen, seen


def save_epoch(state, cfg, run_dir, is_best):
    """Everything a resume needs, after every epoch; best.pt when the test accuracy is the best yet.
    The time it takes goes into the epoch's history row (after the checkpoint, which holds None)."""
    t0 = time.perf_counter()
    saved = dict(model=state.model.state_dict(), optimizer=state.optimizer.state_dict(),
                 scheduler=state.scheduler.state_dict(), epoch=state.epoch, history=state.history,
                 best_acc=state.best_acc, elapsed=state.elapsed, train_elapsed=state.train_elapsed,
                 compile_seconds=state.compile_seconds, config=cfg,
                 rng=dict(data=state.data_gen.get_state(), torch=torch.get_rng_state()))
    save_checkpoint(saved, run_dir / "last.pt")
    if is_best:  # best-on-test peeks at the test set; evaluate.py defaults to last.pt
        atomic_link_or_copy(run_dir / "last.pt", run_dir / "best.pt")  # the same bytes, not serialised twice
    state.history[-1]["save_seconds"] = round(time.perf_counter() - t0, 3)
    write_history(state.history, run_dir / "history.csv")


def recover_save_seconds(history, path):
    """A resumed run's last saved row has save_seconds None (the checkpoint was written before it
    was known); history.csv, written after the checkpoint, usually has it."""
    if not history or history[-1].get("save_seconds") is not None or not path.is_file():
        return
    rows = {r["epoch"]: r for r in read_history(path)}
    saved = rows.get(history[-1]["epoch"], {}).get("save_seconds")
    if saved:
        history[-1]["save_seconds"] = saved


def finish(state, cfg, run_dir):
    """curves.png, then config.json, written last: its presence means the run is complete."""
    plot_curves(state.history, run_dir / "curves.png")
    final, best = state.history[-1], max(state.history, key=lambda h: h["test_acc"])
    computing = max(state.train_elapsed - state.compile_seconds, 1e-9)  # images/s leaves compiling out
    cfg.update(status="complete", wall_seconds=round(state.elapsed, 2),
               final_test_accuracy=final["test_acc"], best_test_accuracy=best["test_acc"],
               best_epoch=best["epoch"], compile_seconds=round(state.compile_seconds, 2),
               train_images_per_second=round(cfg["n_train"] * len(state.history) / computing, 1))
    save_json(cfg, run_dir / "config.json")
    print(f"done: {run_dir} final test accuracy {100 * final['test_acc']:.2f}% "
          f"(best {100 * best['test_acc']:.2f}% at epoch {best['epoch']}), {state.elapsed:.1f} s")
    return {"run_dir": str(run_dir), "final_test_accuracy": final["test_acc"],
            "best_test_accuracy": best["test_acc"], "epochs": len(state.history)}


def setup(args):
    """The run folder, its configuration, what train_epoch needs (training_parts), the test loader."""
    run_dir, ckpt = prepare_run(args)
    saved = ckpt["config"] if ckpt is not None else vars(args)
    device = resolve_device(args.device)
    seed_everything(saved["seed"], saved["deterministic"])
    # A resume finds the run's data as every later step does, so it may start from another folder.
    ds = (dataset_from_config(saved, download=not saved["no_download"]) if ckpt is not None else
          load_dataset(saved["dataset"], saved["data_dir"], not saved["no_download"],
                       saved["limit_train"], saved["limit_test"]))
    cfg = start_config(args, ckpt, ds, device, run_dir)
    parts = training_parts(cfg, ckpt, ds, device)
    if ckpt is not None:
        recover_save_seconds(parts.state.history, run_dir / "history.csv")
        print(f"resuming {run_dir} after epoch {parts.state.epoch}")
    if parts.note:
        print(parts.note)
    test_loader = DeviceLoader(ds.test_x, ds.test_y, cfg["eval_batch_size"], cfg["mean"], cfg["std"], device)
    return run_dir, cfg, parts, test_loader


def training_parts(cfg, ckpt, ds, device):
    """What train_epoch needs, built as every training here builds it (train.py, tools/bench.py,
    tests/test_gpu.py): the state (restored from ckpt if resuming), the training loader, the step's
    model (compiled if asked), the loss, and the autocast context of the precision that runs.
    Sets cfg["precision"] to what the run really computes in, whatever was asked (a resume may
    move to another device); note says why, when a flag cannot apply on `device`."""
    state = build_state(cfg, ckpt, device)
    loader = DeviceLoader(ds.train_x, ds.train_y, cfg["batch_size"], cfg["mean"], cfg["std"],
                          device, train=True, augment=cfg["augment"], generator=state.data_gen)
    cfg["precision"], note = precision_of(device, cfg["amp"], cfg.get("tf32", False))
    use_amp = cfg["precision"] == "bf16 autocast"
    mode = cfg["compile"]  # True in configs written before the modes existed
    state.compile_pending = bool(mode)
    step_model = torch.compile(state.model, mode="default" if mode is True else mode, dynamic=False) if mode else state.model
    return SimpleNamespace(state=state, loader=loader, step_model=step_model,
                           criterion=nn.CrossEntropyLoss(label_smoothing=cfg["label_smoothing"]),
                           amp_context=lambda: autocast(device, use_amp), note=note)


def run(args):
    tensorboard = TensorBoardLog(args.tensorboard)
    run_dir, cfg, parts, test_loader = setup(args)
    state = parts.state
    while state.epoch < cfg["epochs"]:
        t0, compiling = time.perf_counter(), state.compile_seconds
        train_loss, train_acc, seen = train_epoch(state, parts.step_model, parts.loader, cfg, parts.criterion,
                                                  parts.amp_context, run_dir)
        t1 = time.perf_counter()
        test_loss, test_acc = evaluate_loader(state.model, test_loader, nn.CrossEntropyLoss(), parts.amp_context)
        t2 = time.perf_counter()
        state.elapsed, state.train_elapsed, state.epoch = state.elapsed + t2 - t0, state.train_elapsed + t1 - t0, state.epoch + 1
        row = dict(epoch=state.epoch, train_loss=round(train_loss, 6), train_acc=round(train_acc, 6),
                   test_loss=round(test_loss, 6), test_acc=round(test_acc, 6),
                   lr=state.optimizer.param_groups[0]["lr"], seconds=round(t2 - t0, 3),
                   train_seconds=round(t1 - t0, 3), test_seconds=round(t2 - t1, 3), save_seconds=None)
        state.history.append(row)
        state.scheduler.step()
        compiled = state.compile_seconds - compiling
        print(f"epoch {state.epoch}/{cfg['epochs']}: train loss {train_loss:.4f} acc {100 * train_acc:.2f}% | "
              f"test loss {test_loss:.4f} acc {100 * test_acc:.2f}% | "
              f"{seen / max(t1 - t0 - compiled, 1e-9):.0f} img/s, {t2 - t0:.1f} s"
              + (f" (compiling {compiled:.1f} s)" if compiled else ""), flush=True)
        tensorboard.log(run_dir, row)
        is_best = test_acc > state.best_acc
        state.best_acc = max(state.best_acc, test_acc)
        save_epoch(state, cfg, run_dir, is_best)
    tensorboard.close()
    return finish(state, cfg, run_dir)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(args, parser)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return cli_guard(run, args)


if __name__ == "__main__":
    main()

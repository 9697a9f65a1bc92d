"""Fetch, check and decode a dataset once, into --data-dir and its cache, before parallel steps start.

    python tools/prepare_data.py --dataset cifar100 --data-dir data

make runs it before the first training of a study, so that the trainings of make -j or of a Slurm
sweep find the archive downloaded and its decoding cached, instead of each job downloading and
writing the same files at once. Writing twice would be safe (every write is a rename), but a
download is not: two jobs would fetch the same archive side by side.
"""
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: common.py is in the repository's root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import DATASET_HELP, arg_parser, cli_guard, load_dataset


def build_parser():
    p = arg_parser(__doc__)
    p.add_argument("--dataset", required=True, help=DATASET_HELP)
    p.add_argument("--data-dir", default="data", help="where archives live and decoded folders are cached")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing archive")
    return p


def run(args):
    ds = load_dataset(args.dataset, args.data_dir, download=not args.no_download)
    print(f"{args.dataset}: {len(ds.train_y)} training and {len(ds.test_y)} test images, "
          f"{ds.num_classes} classes, ready in {args.data_dir}")


def main(argv=None):
    return cli_guard(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()

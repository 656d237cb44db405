"""How far a setting moves a client's labelled public pre-training (client.warmup_public_epochs): the same clients
and seeds pre-trained under each variant, each model tested on the data set's whole test split, and the paired
difference of every variant from the first.

    python scripts/pretrain_variants.py --data ../shared/data/cifar10-jpeg.tar.gz --set experiment=quick \
        --variant model.skip_padding_taps=false --variant model.skip_padding_taps=true --seeds 0,1,2 --clients 15,16

For a setting that changes only the rounding (a memory layout, skipped zero terms), the spread of the differences
is how much rounding alone moves one pre-training: the noise a federated comparison of that setting inherits. Uses
(and fills) the warm-up cache when client.warmup_cache is on, as runs do.
"""

import argparse
import statistics

from fedkt.config import load_config
from fedkt.data import normalize
from fedkt.learner import Learner, round_seed
from fedkt.task import load_federation, normalization_stats
from fedkt.train import evaluate, set_threads


def pretrained_test_accuracy(overrides: list[str], seed: int, client: int) -> float:
    cfg = load_config([*overrides, f"seed={seed}", "algorithm=local"], run_dir="/tmp/fedkt-pretrain-variants")
    if cfg.client.warmup_public_epochs <= 0:
        raise SystemExit("client.warmup_public_epochs is 0 in this setting: there is no pre-training to compare")
    learner = Learner(cfg, client)
    learner.warm_up(round_seed(cfg.seed, client, 1))  # the seed round 1 of a run pre-trains with
    data, _ = load_federation(cfg)
    return evaluate(learner.model, normalize(data.x_test, *normalization_stats(cfg)), data.y_test)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="data.root")
    parser.add_argument("--set", nargs="*", default=[], help="overrides for every variant, e.g. experiment=quick")
    parser.add_argument("--variant", action="append", required=True, help="overrides of one variant (repeat)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--clients", required=True, help="partition ids, comma-separated")
    args = parser.parse_args()
    set_threads(1)
    base = [f"data.root={args.data}", *args.set]
    diffs: dict[str, list[float]] = {v: [] for v in args.variant[1:]}
    for seed in map(int, args.seeds.split(",")):
        for client in map(int, args.clients.split(",")):
            accs = {v: pretrained_test_accuracy([*base, *v.split()], seed, client) for v in args.variant}
            first = accs[args.variant[0]]
            print(f"seed {seed} client {client}: " + ", ".join(f"{v}: {a:.4f}" for v, a in accs.items()), flush=True)
            for v in diffs:
                diffs[v].append(100 * (accs[v] - first))
    for v, d in diffs.items():
        spread = f", sd {statistics.stdev(d):.1f}" if len(d) > 1 else ""
        print(f"{v} − {args.variant[0]}: mean {statistics.mean(d):+.1f} points over {len(d)} pre-trainings "
              f"(min {min(d):+.1f}, max {max(d):+.1f}{spread})")


if __name__ == "__main__":
    main()

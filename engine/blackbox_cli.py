"""``python -m engine blackbox``: Papernot et al.'s black-box attack on a Mind's Eye network, headless.

    python -m engine blackbox [--target direct|direct-adv] [--epochs 6] [--initial 100] [--lam 0.1]
                              [--tau 0] [--epsilon 0.1] [--eval 100] [--seed 0] [--json]

Prints the transfer rate, the oracle queries, the substitute's agreement with the oracle and the
white-box and random-noise baselines at the same epsilon (JSON with ``--json``).
"""

from __future__ import annotations

import argparse
import json


def add_parser(commands) -> None:
    from .blackbox import TARGETS, BlackboxConfig

    defaults = BlackboxConfig()
    p = commands.add_parser("blackbox", help="a black-box attack through a substitute network (Papernot et al. "
                                             "2017) on the Mind's Eye direct classifier")
    p.add_argument("--target", choices=list(TARGETS), default=defaults.target,
                   help="the oracle: the direct classifier or its adversarially trained twin")
    p.add_argument("--epochs", type=int, default=defaults.substitute_epochs,
                   help=f"substitute epochs rho; S doubles each (default {defaults.substitute_epochs})")
    p.add_argument("--initial", type=int, default=defaults.initial, help=f"|S_0| (default {defaults.initial})")
    p.add_argument("--lam", type=float, default=defaults.lam, help=f"Jacobian augmentation step (default {defaults.lam})")
    p.add_argument("--tau", type=int, default=defaults.tau,
                   help="flip lambda's sign every TAU substitute epochs (Papernot's periodic step; 0: off)")
    p.add_argument("--train-epochs", type=int, default=defaults.train_epochs,
                   help=f"training passes over S per substitute epoch (default {defaults.train_epochs})")
    p.add_argument("--epsilon", type=float, default=defaults.epsilon,
                   help=f"FGSM radius in [0, 1] units, rounded to whole 8-bit levels (default {defaults.epsilon})")
    p.add_argument("--eval", dest="n_eval", type=int, default=defaults.n_eval,
                   help=f"held-out test renders to measure on (default {defaults.n_eval})")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--no-cache", action="store_true", help="run again even when this result is cached")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=cmd_blackbox)


def summary(result) -> dict:
    """The numbers a person or a script reads (the images stay out)."""
    return {
        "target": result.target, "queries": result.queries, "set_sizes": list(result.set_sizes),
        "substitute_agreement": result.substitute_agreement, "eval_agreement": list(result.eval_agreement),
        "oracle_accuracy": result.oracle_accuracy, "attacked": int(len(result.labels)),
        "epsilon": result.epsilon, "epsilon_levels": result.epsilon_levels,
        "transfer_rate": result.transfer_rate, "whitebox_rate": result.whitebox_rate, "random_rate": result.random_rate,
        "curve": {"epsilon": list(result.curve_epsilons), "transfer": result.curve_transfer.tolist(),
                  "whitebox": result.curve_whitebox.tolist(), "random": result.curve_random.tolist()},
        "seconds": round(result.seconds, 1), "config": result.config,
    }


def cmd_blackbox(args: argparse.Namespace) -> int:
    from .blackbox import BlackboxConfig, run_blackbox
    from .jobs import tqdm_progress

    config = BlackboxConfig(target=args.target, initial=args.initial, substitute_epochs=args.epochs, lam=args.lam,
                            tau=args.tau, train_epochs=args.train_epochs, epsilon=args.epsilon, n_eval=args.n_eval,
                            seed=args.seed)
    config.check()
    with tqdm_progress("blackbox", disable=args.json) as progress:
        result = run_blackbox(config, progress=progress, use_cache=not args.no_cache)
    if args.json:
        print(json.dumps(summary(result), indent=2))
        return 0
    print(f"{result.target_label}: {result.queries} oracle queries (S = {', '.join(map(str, result.set_sizes))}); "
          f"the substitute agrees with the oracle on {result.substitute_agreement:.0%} of {result.n_eval} held-out renders")
    print(f"FGSM at eps {result.epsilon} ({result.epsilon_levels} levels) on {len(result.labels)} renders the oracle "
          f"gets right: transfer {result.transfer_rate:.0%}, white box {result.whitebox_rate:.0%}, "
          f"random signs {result.random_rate:.0%}  ({result.seconds:.0f} s)")
    return 0

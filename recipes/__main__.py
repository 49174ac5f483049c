"""python -m recipes list | show RECIPE | plan RECIPE --nodes N --gpus-per-node G [--search] | run RECIPE [key=value ...]
| launch RECIPE [key=value ...] --executor slurm|local"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    from recipes.launch import add_arguments as add_launch_arguments

    ap = argparse.ArgumentParser(prog="python -m recipes", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the recipes and their default allocation")
    show = sub.add_parser("show", help="print a recipe's resolved config")
    show.add_argument("recipe")
    show.add_argument("overrides", nargs="*", help="key=value (dotted config paths)")
    show.add_argument("--format", choices=["yaml", "json"], default="yaml")
    show.add_argument("--resources", action="store_true", help="print only the default nodes and GPUs per node")
    rn = sub.add_parser("run", help="train: the entry point every SLURM script calls")
    rn.add_argument("recipe")
    rn.add_argument("overrides", nargs="*", help="key=value (dotted config paths)")
    pl = sub.add_parser("plan", help="check a layout against an allocation before queueing")
    pl.add_argument("recipe")
    pl.add_argument("overrides", nargs="*", help="key=value (dotted config paths)")
    pl.add_argument("--nodes", type=int, help="default: the recipe's")
    pl.add_argument("--gpus-per-node", type=int, help="default: the recipe's")
    pl.add_argument("--gpu", default="h100", help="h100 | h200 | a100 | b200 | h100-pcie | h100-nvl (default h100)")
    pl.add_argument("--tokens", type=float, help="token budget, e.g. 200e9: prints steps and GPU-hours")
    pl.add_argument(
        "--mfu",
        type=float,
        default=None,
        help="assumed model FLOPs utilisation (default: a published measurement, else 0.12)",
    )
    pl.add_argument("--tokens-per-gpu-s", type=float, help="assumed throughput instead of --mfu")
    pl.add_argument("--search", action="store_true", help="rank every layout of the allocation that divides and fits")
    pl.add_argument("--top", type=int, default=10, help="rows --search prints (default 10)")
    pl.add_argument("--json", action="store_true", help="machine-readable output")
    add_launch_arguments(sub.add_parser("launch", help="plan, then train through NeMo-Run (slurm or local)"))
    return ap


def cmd_list(args: argparse.Namespace) -> int:
    import recipes

    width = max(len(n) for n in recipes.RECIPES)
    for r in recipes.RECIPES.values():
        print(f"{r.name:<{width}}  {r.nodes}x{r.gpus_per_node:<2} {r.summary}")
    return 0


def _build(args: argparse.Namespace):
    """The recipe's config with its overrides (KeyError/ValueError naming the fix)."""
    import recipes

    # Megatron's import sets up logging on stdout: keep stdout for our output alone.
    with contextlib.redirect_stdout(sys.stderr):
        return recipes.build(args.recipe, args.overrides)


def cmd_show(args: argparse.Namespace) -> int:
    import recipes
    from kit.secrets import redact

    if args.resources:
        r = recipes.get(args.recipe)
        print(f"{r.nodes} {r.gpus_per_node}")
        return 0
    from recipes.distill import describe, is_distillation

    cfg = _build(args)
    data = redact(cfg.to_dict())
    if is_distillation(cfg):
        data["distillation"] = describe(cfg)
    from recipes import alm

    if alm.uses_teacher_targets(cfg):  # the loss settings live on the dataset config instance
        data["distillation"] = {f"dataset.{k}": v for k, v in alm.describe(cfg).items()}
    if args.format == "json":
        print(json.dumps(data, indent=2, default=str))
    else:
        import yaml

        print(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    import recipes
    from recipes.planner import plan

    recipe = recipes.get(args.recipe)
    nodes, gpus = args.nodes or recipe.nodes, args.gpus_per_node or recipe.gpus_per_node
    if args.search:
        return _search(args, nodes, gpus)
    p = plan(
        _build(args),
        recipe=args.recipe,
        nodes=nodes,
        gpus_per_node=gpus,
        gpu=args.gpu,
        tokens=args.tokens,
        mfu=args.mfu,
        tokens_per_gpu_s=args.tokens_per_gpu_s,
    )
    if args.json:
        keys = ("ok", "layout", "violations", "params", "settings", "memory_gib", "throughput", "throughput_basis")
        print(json.dumps({k: getattr(p, k) for k in keys}, indent=2))
    else:
        print(p.render())
    return 0 if p.ok else 3


def _search(args: argparse.Namespace, nodes: int, gpus: int) -> int:
    """`plan --search`: the ranked table, then the overrides of the best row; 3 when nothing fits."""
    from recipes.planner import overrides_for, render_search, search

    if args.top < 1:
        raise ValueError(f"--top {args.top}: give at least 1")
    found = search(_build(args), recipe=args.recipe, nodes=nodes, gpus_per_node=gpus, gpu=args.gpu, top=args.top)
    if args.json:
        rows = [
            {
                "layout": c.knobs.describe(),
                "overrides": overrides_for(c.knobs),
                "tokens_per_gpu_s": c.tokens_per_gpu_s,
                "memory_gib": c.plan.total_gib,
                "basis": c.basis,
                "score": c.score,
            }
            for c in found
        ]
        print(json.dumps(rows, indent=2))
    else:
        print(render_search(found, recipe=args.recipe, nodes=nodes, gpus_per_node=gpus, gpu=args.gpu))
        if found:
            print(f"best as overrides: {' '.join(overrides_for(found[0].knobs))}")
    return 0 if found else 3


def cmd_run(args: argparse.Namespace) -> int:
    from recipes.run import run

    return run(args.recipe, args.overrides)


def cmd_launch(args: argparse.Namespace) -> int:
    from recipes.launch import launch

    return launch(args)


COMMANDS = {"list": cmd_list, "show": cmd_show, "plan": cmd_plan, "run": cmd_run, "launch": cmd_launch}


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    # key=value overrides may come before or after the options
    args, extra = ap.parse_known_args(argv)
    unknown = [x for x in extra if x.startswith("-") or "=" not in x]
    if unknown:
        ap.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        args.overrides = [*getattr(args, "overrides", []), *extra]
    if args.cmd != "list":
        warnings.filterwarnings("ignore")
        from megatron_cpu.training import eager_without_gpu

        eager_without_gpu()  # before Megatron imports: its torch.compile'd fusions target CUDA
    try:
        return COMMANDS[args.cmd](args)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

"""The paper's claim, measured: one universal model over all datasets vs one model per dataset.

Same backbone, same configuration, same data and the same number of iterations per model (the specialists together
get N times the universal model's compute). Every run uses the same seed and split settings, so each dataset's
held-out test cases are identical across runs (splits are seeded by (seed, dataset)). Prints per-dataset Dice on the
test cases side by side, and writes the table and raw reports to OUT.

    .venv/bin/python benchmarks/bench_universal_vs_specialists.py --data ../shared/data/mr_cine_heart_acdc \
        ../shared/data/mr_left_atrium ... --iterations 300 --out runs/bench_universal
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def hermesseg(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "hermesseg.cli", *args], check=True)


def train_and_evaluate(name: str, data: list[Path], config: Path, iterations: int, out: Path,
                       overlap: float) -> dict:
    run = out / name
    model = out / f"{name}.safetensors"
    start = time.perf_counter()
    if not model.exists():
        hermesseg("train", "--data", *map(str, data), "--config", str(config), "--iterations", str(iterations),
                  "-o", str(model), "--run-dir", str(run))
    trained = time.perf_counter() - start
    report = out / f"{name}.eval.json"
    hermesseg("evaluate", str(model), "--data", *map(str, data), "--split", "test", "--splits",
              str(run / "splits.json"), "--json", str(report), "--overlap", str(overlap))
    return {"report": json.loads(report.read_text()), "train_seconds": trained}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", nargs="+", type=Path, required=True)
    p.add_argument("--config", type=Path, default=Path(__file__).with_name("universal_benchmark_config.json"))
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap for the evaluation")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    universal = train_and_evaluate("universal", args.data, args.config, args.iterations, args.out, args.overlap)
    specialists = {d.name: train_and_evaluate(f"specialist_{d.name}", [d], args.config, args.iterations, args.out,
                                              args.overlap)
                   for d in args.data}
    rows = ["| dataset | test cases | universal Dice | specialist Dice | difference |", "|---|---|---|---|---|"]
    u = universal["report"]["per_dataset"]
    for name, spec in specialists.items():
        s = spec["report"]["per_dataset"][name]
        rows.append(f"| {name} | {s['cases'] // max(1, len({x['task'] for x in spec['report']['scores']}))} | "
                    f"{u[name]['dice_mean']:.3f} | {s['dice_mean']:.3f} | {u[name]['dice_mean'] - s['dice_mean']:+.3f} |")
    mean_u = sum(u[n]["dice_mean"] for n in specialists) / len(specialists)
    mean_s = sum(specialists[n]["report"]["per_dataset"][n]["dice_mean"] for n in specialists) / len(specialists)
    rows.append(f"| **mean** | | {mean_u:.3f} | {mean_s:.3f} | {mean_u - mean_s:+.3f} |")
    table = "\n".join(rows)
    timing = (f"training time: universal {universal['train_seconds']:.0f} s; specialists "
              + ", ".join(f"{n} {s['train_seconds']:.0f} s" for n, s in specialists.items()))
    print(table)
    print(timing)
    (args.out / "table.md").write_text(f"{table}\n\n{args.iterations} iterations per model. {timing}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

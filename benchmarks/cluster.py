"""A simulated 3-node Ray cluster on this machine (issue 15 §4): the real CLI against
``--address``, checked against single-node runs of the same commands' inputs.

1. ``convplat demo-data --classes C --no-voc`` writes data/imagenet.
2. Baselines on one node, no cluster: ``convplat prepare`` as a user runs it (the default
   executor: local processes below 2,000 images) and the same forced through a local Ray with
   as many CPUs as the cluster (``--executor ray --num-cpus 3``).
3. ``ray.cluster_utils.Cluster``: a head and two more nodes, ``--cpus-per-node`` logical CPUs
   each (nodes may declare more CPUs than the machine has), small object stores, Ray's session
   and address file under a private RAY_TMPDIR (so no other ``ray.init()`` here joins it).
4. On the cluster: ``prepare --address``, a 2-worker ``train alexnet --config demo --address``
   on those shards (1 CPU per worker, so with 1 CPU per node the two ranks are on two nodes),
   and ``features --address`` of the trained run over every shard.

Every command runs as a subprocess from the work directory with relative paths, as a user
would, while the cluster's nodes were started elsewhere. Checks: every shard's sha256 and the
bytes of manifest.json, index.parquet, stats.npz and rejected.jsonl equal between the 3-node
run and both single-node runs; the Ray nodes the work ran on (prepare and features print how
many distinct nodes their tasks ran on; train's events.jsonl names each rank's node). Exit
status 1 when a byte comparison fails, a command fails, or a cluster command used one node.

Usage: python benchmarks/cluster.py [--work DIR] [--classes 4] [--shard-size 40]
       [--cpus-per-node 1] [--train-batches 2] [--epochs 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MiB = 1024 * 1024
OUTPUTS = ("manifest.json", "index.parquet", "stats.npz", "rejected.jsonl")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    command: str
    seconds: float
    nodes: str
    result: str


def convplat(work: Path, env: dict, *args: str) -> tuple[float, str]:
    """Run ``convplat ARGS`` from ``work``; (wall seconds, stdout). Exits on a failure."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "convplat.cli.main", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"FAILED: convplat {' '.join(args)}\n{proc.stdout}\n{proc.stderr}", file=sys.stderr)
        raise SystemExit(1)
    return seconds, proc.stdout


def shard_digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.glob("*.tar"))}


def same_output(a: Path, b: Path) -> tuple[bool, str]:
    """Byte identity of two prepare outputs: every shard and the four other outputs."""
    shards_a, shards_b = shard_digests(a), shard_digests(b)
    differ = [n for n in OUTPUTS if (a / n).read_bytes() != (b / n).read_bytes()]
    if shards_a != shards_b:
        differ.insert(0, "shards")
    if differ:
        return False, f"differ: {', '.join(differ)}"
    return True, f"{len(shards_a)} shards + {len(OUTPUTS)} files byte-identical"


def printed_nodes(pattern: str, stdout: str) -> int:
    match = re.search(pattern, stdout)
    if not match:
        print(f"no node count in the output:\n{stdout}", file=sys.stderr)
        raise SystemExit(1)
    return int(match.group(1))


def start_cluster(cpus: int, object_store_mib: int):
    """Head + 2 nodes on this machine, ``cpus`` logical CPUs each; returns (cluster, names
    by node id)."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": cpus, "object_store_memory": object_store_mib * MiB}
    cluster = Cluster(initialize_head=True, head_node_args=node)
    workers = [cluster.add_node(**node) for _ in range(2)]
    cluster.wait_for_nodes()
    names = {cluster.head_node.node_id: "head"}
    names.update({w.node_id: f"node{i + 1}" for i, w in enumerate(workers)})
    return cluster, names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / "_work" / "cluster")
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=40)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--object-store-mib", type=int, default=400)  # AlexNet's weights: 244 MB
    parser.add_argument("--train-batches", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    work = args.work.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ray_tmp = tempfile.mkdtemp(prefix="cpray-", dir="/tmp")  # short: Unix socket paths
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0")
    os.environ.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_ADDRESS", None)
    total_cpus = 3 * args.cpus_per_node
    flags = ["--shard-size", str(args.shard_size)]
    rows: list[Row] = []
    ok = True

    seconds, _ = convplat(work, env, "demo-data", "--classes", str(args.classes), "--no-voc")
    print(f"demo-data ({args.classes} classes): {seconds:.1f} s", flush=True)
    one_local, _ = convplat(work, env, "prepare", "data/imagenet", "--out", "one-local", *flags)
    rows.append(Row("prepare, 1 node (default: local processes)", one_local, "-", "baseline"))
    one_ray, out = convplat(
        work,
        env,
        "prepare",
        "data/imagenet",
        "--out",
        "one-ray",
        *flags,
        "--executor",
        "ray",
        "--num-cpus",
        str(total_cpus),
    )
    nodes = printed_nodes(r"shard tasks ran on (\d+) Ray node", out)
    same, note = same_output(work / "one-ray", work / "one-local")
    ok &= same
    rows.append(
        Row(
            f"prepare, 1 node (Ray, {total_cpus} CPUs)",
            one_ray,
            str(nodes),
            f"vs local processes: {note}",
        )
    )

    cluster, names = start_cluster(args.cpus_per_node, args.object_store_mib)
    address = cluster.address
    try:
        three, out = convplat(
            work, env, "prepare", "data/imagenet", "--out", "three", *flags, "--address", address
        )
        nodes = printed_nodes(r"shard tasks ran on (\d+) Ray node", out)
        ok &= nodes >= 2
        results = []
        for baseline in ("one-local", "one-ray"):
            same, note = same_output(work / "three", work / baseline)
            ok &= same
            results.append(f"vs {baseline}: {'yes' if same else 'NO'}")
        rows.append(
            Row(
                "prepare --address, 3 nodes",
                three,
                str(nodes),
                f"byte-identical {', '.join(results)} ({note.split(' byte')[0]})",
            )
        )

        seconds, _ = convplat(
            work,
            env,
            "train",
            "alexnet",
            "--config",
            "demo",
            "--data",
            "three",
            "--out",
            "runs",
            "--workers",
            "2",
            "--cpus-per-worker",
            "1",
            "--epochs",
            str(args.epochs),
            "--limit-train-batches",
            str(args.train_batches),
            "--limit-val-batches",
            "1",
            "--run-name",
            "cluster",
            "--no-report",
            "--address",
            address,
        )
        run = work / "runs" / "cluster"
        events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        ranks = [e for e in events if e["event"] == "start"][-1]["nodes"]
        ok &= len(set(ranks)) >= 2
        metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        last = metrics[-1]
        where = ", ".join(f"rank {i}: {names.get(n, n[:8])}" for i, n in enumerate(ranks))
        rows.append(
            Row(
                "train alexnet --workers 2 --address",
                seconds,
                f"{len(set(ranks))} ({where})",
                f"{len(metrics)}/{args.epochs} epochs, {args.train_batches} batches each; "
                f"last: train loss {last['train_loss']:.3f}, "
                f"val top-1 err {last['top1_err']:.3f} (1 val batch)",
            )
        )

        seconds, out = convplat(
            work,
            env,
            "features",
            "runs/cluster",
            "three",
            "--layer",
            "fc7",
            "--out",
            "fc7",
            "--address",
            address,
        )
        nodes = printed_nodes(r"\(ray on (\d+) node", out)
        ok &= nodes >= 2
        summary = json.loads((work / "fc7" / "_features.json").read_text())
        manifest = json.loads((work / "three" / "manifest.json").read_text())
        images = sum(split["count"] for split in manifest["splits"].values())
        complete = summary["rows"] == images
        ok &= complete
        rows.append(
            Row(
                "features --layer fc7 --address",
                seconds,
                str(nodes),
                f"{summary['rows']} rows x {summary['dim']} in {len(summary['parts'])} "
                f"parts ({'all' if complete else 'NOT all'} {images} images)",
            )
        )
    finally:
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)

    print(
        f"\n3-node cluster: head + 2 nodes, {args.cpus_per_node} logical CPU(s) each, "
        f"{args.object_store_mib} MiB object stores, on {os.cpu_count()} cores; "
        f"{images} demo images, --shard-size {args.shard_size}\n"
    )
    print("| command | wall s | nodes used | result |")
    print("|---|---:|---|---|")
    for row in rows:
        print(f"| {row.command} | {row.seconds:.1f} | {row.nodes} | {row.result} |")
    print(
        f"\nprepare wall time, 3 nodes / 1 node (Ray, {total_cpus} CPUs): {three / one_ray:.2f}x; "
        f"3 nodes / 1 node (local processes): {three / one_local:.2f}x"
    )
    print("(wall s is the whole CLI process; the 1-node Ray run starts and stops its own Ray,")
    print(" the cluster runs join one already running)")
    print("all checks passed" if ok else "CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

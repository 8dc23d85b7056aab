"""The PyTorch baseline of a data-parallel step's gradient all-reduce: `--world-size`
processes on this machine sum `--elements` f32 gradients with torch.distributed's gloo
backend (what DDP uses on CPUs), in buckets of `--bucket-elements` as DDP's 25 MB buckets,
the same bytes temper's ranks reduce. Prints the median seconds of `--reps` timed rounds.

    python3 xtask/bench/allreduce.py --elements 4884480 --json

Exits with status 3 when torch is missing (the bench then skips it).
Run by `cargo xtask bench distributed`.
"""

import argparse
import json
import os
import sys
import time


def rank_main(rank, args, port, results):
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world_size))
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world_size
    )
    sizes = []
    left = args.elements
    while left > 0:
        sizes.append(min(left, args.bucket_elements))
        left -= sizes[-1]
    buckets = [torch.full((size,), float(rank + 1)) for size in sizes]
    times = []
    for round_ in range(args.warmup + args.reps):
        dist.barrier()
        started = time.perf_counter()
        for bucket in buckets:
            dist.all_reduce(bucket)
        if round_ >= args.warmup:
            times.append(time.perf_counter() - started)
    if rank == 0:
        times.sort()
        results.put(times[len(times) // 2])
    dist.destroy_process_group()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--elements", type=int, required=True)
    parser.add_argument("--bucket-elements", type=int, default=25 * 1024 * 1024 // 4)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--port", type=int, default=29731)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    try:
        import torch
        import torch.multiprocessing as mp
    except ImportError as error:
        print(f"{error.name} is not installed", file=sys.stderr)
        sys.exit(3)

    context = mp.get_context("spawn")
    results = context.Queue()
    mp.start_processes(
        rank_main, args=(args, args.port, results), nprocs=args.world_size, start_method="spawn"
    )
    seconds = results.get()
    report = {
        "implementation": f"pytorch {torch.__version__} gloo",
        "world_size": args.world_size,
        "elements": args.elements,
        "bytes": 4 * args.elements,
        "seconds": seconds,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['bytes'] / 1e6:.1f} MB over {args.world_size} ranks: {seconds:.4f} s")


if __name__ == "__main__":
    main()

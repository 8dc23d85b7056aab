#!/usr/bin/env python3
"""Python baseline for Temper's SFT data-pipeline benchmark.

Does, in a single process, what a typical PyTorch-world SFT data pipeline does
(HF `tokenizers` + `jinja2`), so the Rust pipeline can be compared with it in
the same run:

  a. read an alpaca JSONL file (json.loads per line);
  b. render each record with a jinja2 alpaca template (compiled once): the
     prompt (up to and including "### Response:\\n") and the full text
     (prompt + output + eos "<|endoftext|>"); the response starts at
     character offset len(prompt);
  c. tokenize the full text (tokenizer.encode per example, or
     tokenizer.encode_batch with --encode-batch) and build the loss mask in
     Python: a token is trained iff its character start offset >= len(prompt);
  d. truncate to --max-length keeping the start; drop examples that have no
     trained token left;
  e. pack with best-fit-decreasing into bins of --max-length tokens, giving
     per bin input_ids, labels (-100 where not trained) and position_ids
     restarting at 0 for each example;
  f. report JSON statistics.

The timed region covers a-e (reading the file included); interpreter start-up
and loading tokenizer.json are excluded.

With --datasets-map N, a-e are done as a Hugging Face `datasets` pipeline does them:
`load_dataset("json")` (into a fresh cache directory), one batched `map` with
`num_proc=N` that renders, tokenizes (`encode_batch`), masks and truncates, then
best-fit-decreasing packing over the Arrow columns, as TRL's `pack_dataset` does.

Usage:
    python3 xtask/bench/data_pipeline.py --data FILE.jsonl \\
        --tokenizer tokenizer.json --max-length 512 --json [--encode-batch] [--digest]
        [--datasets-map N]

Exit status: 0 ok, 2 bad arguments/input, 3 missing Python packages.
"""

import argparse
import bisect
import json
import os
import sys
import time

try:
    import jinja2
    import tokenizers
    from tokenizers import Tokenizer
except ImportError as e:  # pragma: no cover - environment dependent
    sys.stderr.write(
        "data_pipeline.py: missing Python package (%s).\n"
        "Install the baseline's dependencies with:\n"
        "    pip install tokenizers jinja2\n" % e
    )
    sys.exit(3)

EOS_TOKEN = "<|endoftext|>"
IGNORE_INDEX = -100

# Alpaca format:
#   "### Instruction:\n{instruction}\n\n"
#   ["### Input:\n{input}\n\n"]            (only when input is non-empty)
#   "### Response:\n"                      (end of prompt)
#   "{output}<|endoftext|>"                (response; only when `output` is given)
ALPACA_TEMPLATE = (
    "### Instruction:\n"
    "{{ instruction }}\n"
    "\n"
    "{% if input %}\n"
    "### Input:\n"
    "{{ input }}\n"
    "\n"
    "{% endif %}\n"
    "### Response:\n"
    "{% if output is not none %}{{ output }}{{ eos_token }}{% endif %}"
)


def reference_render(instruction, inp, output):
    """Plain-Python rendering, used only to self-check the jinja template."""
    s = "### Instruction:\n" + instruction + "\n\n"
    if inp:
        s += "### Input:\n" + inp + "\n\n"
    s += "### Response:\n"
    if output is not None:
        s += output + EOS_TOKEN
    return s


def build_template():
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    tpl = env.from_string(ALPACA_TEMPLATE)
    for ins, inp, out in (("Do X.", "", "ok"), ("Do Y.", "data", None), ("A\nB", "c\n", "d\ne")):
        got = tpl.render(instruction=ins, input=inp, output=out, eos_token=EOS_TOKEN)
        want = reference_render(ins, inp, out)
        if got != want:
            raise SystemExit("template self-check failed:\n%r\n!=\n%r" % (got, want))
    return tpl


def mask_from_offsets(offsets, response_start):
    # A token is trained iff its start character offset >= response_start.
    return [start >= response_start for (start, _end) in offsets]


def pack_bfd(lengths, capacity):
    """Best-fit-decreasing packing.

    Items are visited by length descending (ties: original order, Python's
    sort is stable). Each goes into the open bin with the least remaining
    capacity that still fits it (ties: the earliest-opened bin); if none fits,
    a new bin is opened. Returns a list of bins, each a list of item indices
    in insertion order; bins are in opening order.

    `free` is a sorted list of (remaining_capacity, bin_index).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    bins = []
    free = []
    for i in order:
        n = lengths[i]
        j = bisect.bisect_left(free, (n, -1))
        if j < len(free):
            rem, b = free.pop(j)
            bins[b].append(i)
            rem -= n
            if rem > 0:
                bisect.insort(free, (rem, b))
        else:
            b = len(bins)
            bins.append([i])
            rem = capacity - n
            if rem > 0:
                bisect.insort(free, (rem, b))
    return bins


def counts(n_in, kept, seconds, tokens, trained_tokens, packs, max_length):
    """The statistics every mode reports."""
    return {
        "examples": n_in,
        "kept": kept,
        "seconds": seconds,
        "examples_per_second": n_in / seconds if seconds > 0 else 0.0,
        "tokens": tokens,
        "trained_tokens": trained_tokens,
        "packs": packs,
        "packing_efficiency": tokens / (packs * max_length) if packs else 0.0,
        "tokens_per_second": tokens / seconds if seconds > 0 else 0.0,
        "max_length": max_length,
    }


def run(data_path, tok, max_length, encode_batch):
    tpl = build_template()
    t0 = time.perf_counter()

    # a. read
    records = []
    with open(data_path, "r", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    n_in = len(records)
    t_read = time.perf_counter()

    # b. render prompt + full text
    texts = []
    starts = []
    for r in records:
        ins = r.get("instruction", "")
        inp = r.get("input", "") or ""
        prompt = tpl.render(instruction=ins, input=inp, output=None, eos_token=EOS_TOKEN)
        full = tpl.render(instruction=ins, input=inp, output=r.get("output", ""), eos_token=EOS_TOKEN)
        texts.append(full)
        starts.append(len(prompt))

    t_render = time.perf_counter()

    # c. tokenize + loss mask; d. truncate, drop
    ids_list = []
    mask_list = []

    def keep(ids, mask):
        if len(ids) > max_length:
            ids = ids[:max_length]
            mask = mask[:max_length]
        if any(mask):
            ids_list.append(ids)
            mask_list.append(mask)

    if encode_batch:
        encs = tok.encode_batch(texts)
        for enc, start in zip(encs, starts):
            keep(enc.ids, mask_from_offsets(enc.offsets, start))
    else:
        for text, start in zip(texts, starts):
            enc = tok.encode(text)
            keep(enc.ids, mask_from_offsets(enc.offsets, start))

    t_tok = time.perf_counter()

    # e. pack (best-fit-decreasing) and build the packed tensors
    lengths = [len(x) for x in ids_list]
    bins = pack_bfd(lengths, max_length)
    packs = []
    for b in bins:
        input_ids = []
        labels = []
        position_ids = []
        for i in b:
            ids = ids_list[i]
            input_ids.extend(ids)
            labels.extend(t if m else IGNORE_INDEX for t, m in zip(ids, mask_list[i]))
            position_ids.extend(range(len(ids)))
        packs.append((input_ids, labels, position_ids))

    seconds = time.perf_counter() - t0
    total_tokens = sum(lengths)
    trained_tokens = sum(sum(m) for m in mask_list)
    stats = {
        "mode": "encode_batch" if encode_batch else "encode",
        **counts(n_in, len(ids_list), seconds, total_tokens, trained_tokens, len(packs), max_length),
        "python": "%d.%d.%d" % sys.version_info[:3],
        "tokenizers": tokenizers.__version__,
        "jinja2": jinja2.__version__,
        "cpus": os.cpu_count(),
        "phase_seconds": {
            "read": t_read - t0,
            "render": t_render - t_read,
            "tokenize_mask_truncate": t_tok - t_render,
            "pack": seconds - (t_tok - t0),
        },
    }
    return stats, packs


_WORKER = {}


def _encode_batch(batch, tokenizer_path, max_length):
    """The `map` function: render, tokenize, mask and truncate a batch of records."""
    if "tok" not in _WORKER:
        _WORKER["tok"] = Tokenizer.from_file(tokenizer_path)
        _WORKER["tpl"] = build_template()
    tok, tpl = _WORKER["tok"], _WORKER["tpl"]
    texts, starts = [], []
    for ins, inp, out in zip(batch["instruction"], batch["input"], batch["output"]):
        inp = inp or ""
        prompt = tpl.render(instruction=ins, input=inp, output=None, eos_token=EOS_TOKEN)
        texts.append(tpl.render(instruction=ins, input=inp, output=out, eos_token=EOS_TOKEN))
        starts.append(len(prompt))
    ids_out, mask_out = [], []
    for enc, start in zip(tok.encode_batch(texts), starts):
        ids = enc.ids[:max_length]
        mask = mask_from_offsets(enc.offsets, start)[:max_length]
        if any(mask):
            ids_out.append(ids)
            mask_out.append(mask)
    return {"input_ids": ids_out, "loss_mask": mask_out}


def run_datasets_map(data_path, tokenizer_path, max_length, num_proc):
    import tempfile

    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        ds = datasets.load_dataset("json", data_files=data_path, split="train", cache_dir=cache)
        n_in = len(ds)
        t_read = time.perf_counter()
        ds = ds.map(
            _encode_batch,
            batched=True,
            num_proc=num_proc,
            remove_columns=ds.column_names,
            fn_kwargs={"tokenizer_path": tokenizer_path, "max_length": max_length},
        )
        t_tok = time.perf_counter()
        table = ds.data.table
        ids = table.column("input_ids").combine_chunks()
        masks = table.column("loss_mask").combine_chunks()
        lengths = pc.list_value_length(ids).to_numpy()
        bins = pack_bfd(lengths.tolist(), max_length)
        order = pa.array([i for b in bins for i in b], type=pa.int64())
        packed_ids = pc.take(ids, order).flatten()
        packed_masks = pc.take(masks, order).flatten()
        ordered = lengths[order.to_numpy()]
        starts = np.repeat(np.cumsum(ordered) - ordered, ordered)
        position_ids = np.arange(len(starts)) - starts
        labels = pc.if_else(packed_masks, packed_ids, pa.scalar(IGNORE_INDEX, pa.int32()))
        seconds = time.perf_counter() - t0
        total_tokens = int(lengths.sum())
        trained_tokens = int(pc.sum(packed_masks.cast(pa.int64())).as_py() or 0)
        assert len(labels) == len(position_ids) == total_tokens
        stats = {
            "mode": "datasets_map",
            "num_proc": num_proc,
            **counts(n_in, len(lengths), seconds, total_tokens, trained_tokens, len(bins), max_length),
            "datasets": datasets.__version__,
            "pyarrow": pa.__version__,
            "phase_seconds": {
                "load_dataset": t_read - t0,
                "map": t_tok - t_read,
                "pack": seconds - (t_tok - t0),
            },
        }
    return stats


def digest(packs):
    """sha256 over the packed output, for cross-checking another implementation.

    For each pack in order: u32 LE token count, then input_ids, labels and
    position_ids, each as i32 LE.
    """
    import hashlib
    import struct
    from array import array

    h = hashlib.sha256()
    for input_ids, labels, position_ids in packs:
        h.update(struct.pack("<I", len(input_ids)))
        for seq in (input_ids, labels, position_ids):
            a = array("i", seq)
            if a.itemsize != 4:  # pragma: no cover
                a = array("l", seq)
            if sys.byteorder != "little":  # pragma: no cover
                a.byteswap()
            h.update(a.tobytes())
    return h.hexdigest()


def main(argv=None):
    ap = argparse.ArgumentParser(description="Python (HF tokenizers + jinja2) SFT data-pipeline baseline")
    ap.add_argument("--data", required=True, help="alpaca JSONL file")
    ap.add_argument("--tokenizer", required=True, help="HF tokenizer.json")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--json", action="store_true", help="print one JSON object (default: human-readable)")
    ap.add_argument("--encode-batch", action="store_true",
                    help="tokenize with tokenizer.encode_batch (Rust-parallel) instead of per-example encode")
    ap.add_argument("--datasets-map", type=int, metavar="NUM_PROC",
                    help="run the pipeline as a Hugging Face datasets `map` with this many processes")
    ap.add_argument("--digest", action="store_true",
                    help="add a sha256 of the packed output (computed outside the timed region)")
    args = ap.parse_args(argv)
    if args.max_length <= 0:
        ap.error("--max-length must be positive")
    for p in (args.data, args.tokenizer):
        if not os.path.isfile(p):
            sys.stderr.write("data_pipeline.py: no such file: %s\n" % p)
            return 2

    if args.datasets_map:
        try:
            stats = run_datasets_map(args.data, args.tokenizer, args.max_length, args.datasets_map)
        except ImportError as e:
            sys.stderr.write("data_pipeline.py: missing Python package (%s): pip install datasets\n" % e)
            return 3
    else:
        tok = Tokenizer.from_file(args.tokenizer)  # not timed
        stats, packs = run(args.data, tok, args.max_length, args.encode_batch)
        if args.digest:
            stats["digest"] = digest(packs)

    if args.json:
        print(json.dumps(stats))
    else:
        for k, v in stats.items():
            print("%-20s %s" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The transformers baseline of `temper bench --model`: greedy generation with `generate` on
the same prompts and the same dequantized GGUF weights (transformers loads the GGUF with the
`gguf` package, float32), exactly `--new-tokens` new tokens per prompt (no stop token): the
first prompt alone, then all prompts as one left-padded batch. Timed around `generate`
(prefill included), after an untimed warm-up, as temper times it.

    python3 xtask/bench/generate.py --gguf .cache/temper/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --prompts PROMPTS.json --new-tokens 32 --threads 2

Exits with status 3 when torch, transformers or gguf is missing (the bench then skips it).
Run by `cargo xtask bench generate`.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    try:
        import gguf  # noqa: F401  (transformers reads GGUF files with it)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as error:
        print(f"{error.name} is not installed", file=sys.stderr)
        sys.exit(3)

    torch.set_num_threads(args.threads)
    path = Path(args.gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    prompts = json.loads(Path(args.prompts).read_text())

    def rate(texts, new_tokens):
        batch = tokenizer(texts, return_tensors="pt", padding=True)
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        elapsed = time.perf_counter() - started
        generated = out.shape[1] - batch["input_ids"].shape[1]
        return generated * len(texts) / elapsed

    rate(prompts, 2)
    report = {
        "implementation": "transformers",
        "prompts": len(prompts),
        "new_tokens": args.new_tokens,
        "threads": args.threads,
        "single_tokens_per_second": rate(prompts[:1], args.new_tokens),
        "batch_tokens_per_second": rate(prompts, args.new_tokens),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()

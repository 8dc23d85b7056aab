"""The PyTorch baseline of `temper bench`: one training step of a model shape with random
weights on random tokens, as people run it with transformers (+ peft).

Same step as temper's: forward, cross-entropy over every position (HF's `labels=input_ids`),
backward, clip the gradient norm at 1.0, AdamW (torch's default implementation) at lr 1e-4.
Throughput counts every token of the batch; FLOPs are counted as `temper bench` counts them.

    python3 xtask/bench/train_step.py --model-config configs/models/gpt2-124m/config.json \
        --mode full --batch 4 --seq 512 --threads 2 --json

Exits with status 3 when torch, transformers or peft is missing (the bench then skips it).
Run by `cargo xtask bench train`.
"""

import argparse
import json
import os
import resource
import sys
import time


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-config", required=True)
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--lora-targets", default="all-linear")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--matmul", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    try:
        import torch
        import transformers
        from transformers import AutoConfig, AutoModelForCausalLM

        if args.mode == "lora":
            import peft
    except ImportError as error:
        print(f"{error.name} is not installed", file=sys.stderr)
        sys.exit(3)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    with open(args.model_config) as file:
        hf = json.load(file)
    config = AutoConfig.for_model(**hf)
    model = AutoModelForCausalLM.from_config(config).to(device)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    if args.mode == "lora":
        targets = args.lora_targets
        targets = targets if targets == "all-linear" else targets.split(",")
        lora = peft.LoraConfig(
            r=args.lora_rank,
            lora_alpha=2 * args.lora_rank,
            lora_dropout=0.0,
            target_modules=targets,
            # GPT-2's Conv1D layers store weights transposed.
            fan_in_fan_out=hf["model_type"] == "gpt2",
        )
        model = peft.get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    trainable_parameters = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0)

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(
        0, config.vocab_size, (args.batch, args.seq), generator=generator
    ).to(device)

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step_seconds = []
    for step in range(args.warmup + args.steps):
        synchronize()
        started = time.perf_counter()
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()
        synchronize()
        if step >= args.warmup:
            step_seconds.append(time.perf_counter() - started)
        if value != value:
            sys.exit(f"step {step + 1}: the loss is NaN")

    seconds = sorted(step_seconds)[len(step_seconds) // 2]
    tokens = args.batch * args.seq
    flops = flops_per_token(hf, parameters, args.mode, args.seq)
    report = {
        "implementation": f"pytorch {torch.__version__} + transformers {transformers.__version__}"
        + (f" + peft {peft.__version__}" if args.mode == "lora" else ""),
        "device": f"{args.device} ({args.threads} threads)" if device.type == "cpu" else args.device,
        "model": os.path.basename(os.path.dirname(os.path.abspath(args.model_config))),
        "mode": args.mode,
        "batch": args.batch,
        "seq": args.seq,
        "parameters": parameters,
        "trainable_parameters": trainable_parameters,
        "step_seconds": step_seconds,
        "seconds_per_step": seconds,
        "tokens_per_second": tokens / seconds,
        "flops_per_token": flops,
        "achieved_gflops": flops * tokens / seconds / 1e9,
        # ru_maxrss is in kilobytes on Linux.
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_device_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "matmul_gflops": matmul_rate(torch, args.matmul, device, synchronize) if args.matmul else None,
        "matmul_size": args.matmul,
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(report)


def flops_per_token(hf, parameters, mode, seq):
    """As temper counts them: 6N (full) or 4N (LoRA) + 12 x layers x width x seq."""
    if hf["model_type"] == "gpt2":
        layers, width = hf["n_layer"], hf["n_embd"]
    else:
        heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
        layers, width = hf["num_hidden_layers"], heads * head_dim
    per_weight = 6 if mode == "full" else 4
    return per_weight * parameters + 12 * layers * width * seq


def matmul_rate(torch, n, device, synchronize):
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    best = float("inf")
    for round in range(6):
        synchronize()
        started = time.perf_counter()
        (a @ b)[0, 0].item()
        synchronize()
        if round > 0:
            best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


if __name__ == "__main__":
    main()

"""A real (small) PyTorch training run on the GPU fabriek gave the job; CPU when there is none.

    fabriek submit --gpus 1 --cpus 2 --mem 8G --time 10m --name gpu -- python3 examples/train_gpu.py

It trains an MLP to imitate a fixed random "teacher" network on synthetic data (no downloads) for
TRAIN_SECONDS (default 30), prints what it ran on and how fast, and writes a checkpoint and its
metrics to $FABRIEK_OUTPUT_DIR (the current directory when run by hand). REQUIRE_CUDA=1 makes it
fail instead of falling back to the CPU, for checks that must prove the GPU was used.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

FEATURES, CLASSES = 256, 10


def pick_device() -> torch.device:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"CUDA_VISIBLE_DEVICES={visible!r}", flush=True)
    if torch.cuda.is_available():
        device = torch.device("cuda")
        props = torch.cuda.get_device_properties(device)
        uuid = getattr(props, "uuid", None)
        print(
            f"cuda: {torch.cuda.device_count()} device(s) visible; using "
            f"{torch.cuda.get_device_name(device)} (uuid GPU-{uuid}, "
            f"{props.total_memory / 1024**3:.0f} GiB), torch {torch.__version__}",
            flush=True,
        )
        torch.set_float32_matmul_precision("high")  # TF32 matrix products
        return device
    if os.environ.get("REQUIRE_CUDA") == "1":
        print("REQUIRE_CUDA=1 but torch sees no CUDA device: failing", flush=True)
        sys.exit(3)
    print(
        f"NO CUDA DEVICE: torch {torch.__version__} sees none "
        "(no GPU given, or no driver); training on the CPU instead",
        flush=True,
    )
    return torch.device("cpu")


def make_model(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(FEATURES, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.GELU(),
        nn.Linear(width, CLASSES),
    )


def main() -> None:
    out = Path(os.environ.get("FABRIEK_OUTPUT_DIR", "."))
    out.mkdir(parents=True, exist_ok=True)
    seconds = float(os.environ.get("TRAIN_SECONDS", "30"))
    device = pick_device()
    on_gpu = device.type == "cuda"
    width, batch = (2048, 8192) if on_gpu else (256, 512)  # the CPU fallback only shows it works

    torch.manual_seed(0)
    teacher = make_model(64).to(device).eval()
    model = make_model(width).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    with torch.no_grad():
        x_test = torch.randn(4096, FEATURES, device=device)
        y_test = teacher(x_test).argmax(1)

    print(f"training for {seconds:.0f}s on {device.type}, width {width}, batch {batch}", flush=True)
    began = last_report = time.perf_counter()
    step, loss = 0, torch.zeros((), device=device)
    while time.perf_counter() - began < seconds:
        x = torch.randn(batch, FEATURES, device=device)
        with torch.no_grad():
            y = teacher(x).argmax(1)
        loss = loss_fn(model(x), y)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if time.perf_counter() - last_report >= 5:
            last_report = time.perf_counter()
            print(f"step {step:6d}  loss {loss.item():.4f}", flush=True)
    if on_gpu:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - began

    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    metrics = {
        "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "steps": step,
        "seconds": round(elapsed, 3),
        "steps_per_s": round(step / elapsed, 2),
        "samples_per_s": round(step * batch / elapsed),
        "final_loss": round(loss.item(), 4),
        "test_accuracy": round(accuracy, 4),
        "peak_gpu_memory_bytes": torch.cuda.max_memory_allocated(device) if on_gpu else None,
    }
    torch.save({"model": model.state_dict(), "metrics": metrics}, out / "checkpoint.pt")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(
        f"done: {step} steps in {elapsed:.1f}s = {metrics['steps_per_s']} steps/s "
        f"({metrics['samples_per_s']} samples/s); final loss {metrics['final_loss']}, "
        f"test accuracy {accuracy:.4f}; checkpoint in {out / 'checkpoint.pt'}",
        flush=True,
    )


if __name__ == "__main__":
    main()

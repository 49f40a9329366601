"""The benchmark: gptcore side by side with Hugging Face's GPT2LMHeadModel on this machine, in one run.

Variants are interleaved (each timed round runs every variant once) so that noise from a shared
machine hits all alike; each number is the median of the timed rounds after a warm-up round.
Results are ratios measured together, never absolute times from different runs.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from .errors import ConfigError
from .inference import prepare_for_inference, weights_on
from .model import GPT, ModelConfig
from .runtime import Runtime, fast_bf16, setup_runtime
from .sampling import generate
from .settings.model import EOT_ID, VOCAB_SIZE


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def interleaved(variants: dict, rounds: int, device) -> dict:
    """Median seconds per variant: one warm-up round, then `rounds` rounds of every variant in turn."""
    times = {name: [] for name in variants}
    for round_index in range(rounds + 1):
        for name, fn in variants.items():
            seconds = timed(fn, device)
            if round_index:
                times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_peak(dtype, device, max_size=8192, rounds=5) -> float:
    """FLOP/s of a square matmul: the machine's practical peak for this dtype, measured here.

    The size doubles from 256 until one product takes 50 ms (or max_size), so an emulated dtype
    (bf16 on AVX2 CPUs: ~100x slower) is measured without minutes of waiting.
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        if size >= max_size or timed(lambda: a @ b, device) > 0.05:
            break
        size *= 2
    seconds = interleaved({"mm": lambda: a @ b}, rounds, device)["mm"]
    return 2 * size ** 3 / seconds


def flops_per_token(config: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B as nanoGPT's estimate_mfu: 6N + 12LHQT."""
    head_dim = config.emb_dim // config.n_heads
    return 6 * n_params + 12 * config.n_layers * config.n_heads * head_dim * config.context_length


def hf_twin(model: GPT):
    """An HF GPT2LMHeadModel with the same config and the same weights (so work and outputs match)."""
    import transformers

    from .hf import hf_config_from, hf_state_dict_from

    hf_config = {k: v for k, v in hf_config_from(model.config).items() if k not in ("model_type", "architectures")}
    twin = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config))
    twin.load_state_dict(hf_state_dict_from(model), strict=False)
    return twin.to(next(model.parameters()).device)


def gptcore_loss(model, inputs, targets):  # nanoGPT's forward has the same signature
    return model(inputs, targets)[1]


def hf_loss(model, inputs, targets):  # labels are shifted inside the model
    return model(inputs, labels=inputs).loss


def book_loss(model, inputs, targets):  # the book's calc_loss_batch
    return torch.nn.functional.cross_entropy(model(inputs).flatten(0, 1), targets.flatten())


def book_twin(config: ModelConfig):
    """The book's GPTModel (package llms-from-scratch) with this config, or None where it is not installed."""
    try:
        from llms_from_scratch.ch04 import GPTModel
    except ImportError:
        return None
    return GPTModel({"vocab_size": config.vocab_size, "context_length": config.context_length,
                     "emb_dim": config.emb_dim, "n_heads": config.n_heads, "n_layers": config.n_layers,
                     "drop_rate": config.drop_rate, "qkv_bias": config.qkv_bias})


def nanogpt_twin(folder: Path, config: ModelConfig):
    """nanoGPT's GPT from the model.py of a nanoGPT checkout, configured as its train.py trains GPT-2 from
    scratch (train.py's defaults: no biases in the Linear and LayerNorm layers, the vocabulary padded to
    50,304, dropout 0)."""
    source = Path(folder) / "model.py"
    if not source.is_file():
        raise ConfigError(f"--nanogpt {folder}: no model.py there; give the folder of a nanoGPT checkout")
    spec = importlib.util.spec_from_file_location("nanogpt_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.GPT(module.GPTConfig(block_size=config.context_length, vocab_size=50304, n_layer=config.n_layers,
                                       n_head=config.n_heads, n_embd=config.emb_dim, dropout=0.0, bias=False))


class TrainStep:
    def __init__(self, model, loss_of, batch, runtime: Runtime):
        self.model, self.loss_of, self.batch, self.runtime = model.train(), loss_of, batch, runtime
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                           fused=runtime.device.type in ("cpu", "cuda"))

    def __call__(self):
        with self.runtime.autocast():
            loss = self.loss_of(self.model, *self.batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def evaluation(model, loss_of, batch, runtime: Runtime):
    """What evaluation does per batch: the forward pass over every position and the loss."""
    def run():
        with torch.no_grad(), runtime.autocast():
            loss_of(model, *batch)
    model.eval()
    return run


def greedy(model, prompt, new_tokens, hf: bool):
    def run():
        if hf:
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                           min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=EOT_ID)
        else:
            generate(model, prompt, new_tokens)
    model.eval()
    return run


def bench_model(preset: str, context: int, *, precisions, batch_size: int, rounds: int, runtime: Runtime,
                peaks: dict, rows: list, nanogpt: Path | None = None):
    """Training steps and evaluation passes of gptcore, HF and, where available, the book's model and
    nanoGPT's, all with the same config, batch and fused AdamW."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, context_length=context, drop_rate=0.0)
    device = runtime.device
    model = GPT(config).to(device)
    twin = hf_twin(model)
    implementations = {"gptcore": (model, gptcore_loss), "hf": (twin, hf_loss)}
    if (book := book_twin(config)) is not None:
        implementations["book"] = (book.to(device), book_loss)
    if nanogpt is not None:
        implementations["nanogpt"] = (nanogpt_twin(nanogpt, config).to(device), gptcore_loss)
    n_params = model.num_parameters()
    inputs = torch.randint(0, config.vocab_size, (batch_size, context), device=device)
    batch = (inputs, torch.roll(inputs, -1, dims=1))
    tokens = inputs.numel()
    for precision in precisions:
        at_precision = replace(runtime, precision=precision)
        train = interleaved({name: TrainStep(net, loss_of, batch, at_precision)
                             for name, (net, loss_of) in implementations.items()}, rounds, device)
        evaluated = interleaved({name: evaluation(net, loss_of, batch, at_precision)
                                 for name, (net, loss_of) in implementations.items()}, rounds, device)
        for name in implementations:
            achieved = flops_per_token(config, n_params) * tokens / train[name]
            rows.append({"measure": "train step", "impl": name, "context": context, "batch": batch_size,
                         "precision": precision, "tokens_per_s": tokens / train[name],
                         "tflops": achieved / 1e12, "mfu": achieved / peaks[precision]})
            rows.append({"measure": "eval forward", "impl": name, "context": context, "batch": batch_size,
                         "precision": precision, "tokens_per_s": tokens / evaluated[name]})
    return model, twin


def bench_generation(model, twin, rounds: int, device, rows: list, new_tokens=200):
    """Greedy decoding against HF's cached generate (fp32), gptcore with each of its inference weights."""
    variants = {weights: prepare_for_inference(copy.deepcopy(model), weights, device)
                for weights in weights_on(device)}
    for batch in (1, 8):
        prompt = torch.randint(0, VOCAB_SIZE, (batch, 8), device=device)
        seconds = interleaved({**{weights: greedy(net, prompt, new_tokens, False) for weights, net in variants.items()},
                               "hf": greedy(twin, prompt, new_tokens, True)}, rounds, device)
        for variant, taken in seconds.items():
            rows.append({"measure": "greedy generate", "impl": "hf" if variant == "hf" else "gptcore",
                         "context": model.config.context_length, "batch": batch,
                         "precision": "fp32" if variant == "hf" else variant,
                         "tokens_per_s": batch * new_tokens / taken})


def bench_tokenization(corpus: Path, megabytes: int, rows: list):
    """Tokenize `megabytes` of text (corpus repeated) in a subprocess; MB/s and its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        text = corpus.read_text(encoding="utf-8")
        target = Path(tmp) / "big.txt"
        with open(target, "w", encoding="utf-8") as out:
            written = 0
            while written < megabytes * 1_000_000:
                out.write(text)
                written += len(text.encode("utf-8"))
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through fork and exec
        code = ("import json,sys,time; from gptcore.token_files import tokenize_file;"
                "from gptcore.tokenizer import Tokenizer; t=Tokenizer(); s=time.perf_counter();"
                "n=tokenize_file(sys.argv[1], sys.argv[2], t, progress=False);"
                "hwm=[l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1];"
                "print(json.dumps({'tokens': n, 'seconds': time.perf_counter()-s, 'rss_mb': int(hwm)/1024}))")
        out = subprocess.run([sys.executable, "-c", code, str(target), str(Path(tmp) / "big.bin")],
                             capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        rows.append({"measure": "tokenize", "impl": "gptcore", "megabytes": written / 1e6,
                     "mb_per_s": written / 1e6 / result["seconds"], "tokens_per_s": result["tokens"] / result["seconds"],
                     "peak_rss_mb": result["rss_mb"]})


def bench_tracking(rounds: int, step_seconds: float, rows: list):
    """Cost of the tracking callback per training step (batched MLflow writes), against a step's time, and
    of one system-metrics sample (collected and logged), against the default sampling interval."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    from .settings import default
    from .settings.tracking import TrackingConfig
    from .tracking import Tracker, TrackingCallback

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DVC_ROOT"], previous = tmp, os.environ.get("DVC_ROOT")
        tracker = Tracker.start(TrackingConfig(experiment="bench"), "bench", {}, {"x": {"y": 1}})
        callback = TrackingCallback(tracker, log_every=10)
        record = {"step": 0, "epoch": 0, "tokens_seen": 0, "train_loss": 1.0, "lr": 1e-4, "grad_norm": 1.0,
                  "tokens_per_second": 100.0}
        steps = 10 * rounds
        started = time.perf_counter()
        for step in range(1, steps + 1):
            callback.on_step({**record, "step": step})
        per_step = (time.perf_counter() - started) / steps
        monitor = SystemMetricsMonitor(tracker.run_id, tracking_uri=tracker.uri)
        started = time.perf_counter()
        for _ in range(rounds):
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()  # the worst case: every sample written to the store at once
        per_sample = (time.perf_counter() - started) / rounds
        if previous is None:
            del os.environ["DVC_ROOT"]
        else:
            os.environ["DVC_ROOT"] = previous
    rows.append({"measure": "mlflow tracking", "impl": "gptcore", "seconds_per_step": per_step,
                 "share_of_step": per_step / step_seconds})
    interval = default(TrackingConfig.__dataclass_fields__["system_metrics_seconds"])
    rows.append({"measure": "system metrics", "impl": "gptcore", "seconds_per_sample": per_sample,
                 "interval_seconds": interval, "share_of_time": per_sample / interval})


def peak_memory_mb(device) -> float:
    """Peak of this process: CUDA max allocated, or the CPU high-water RSS (both models and optimizers)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine(runtime: Runtime) -> str:
    """The machine line of every table, from the runtime record the metrics carry."""
    described = runtime.describe()
    name = described.get("gpu") or (f"{described['cpu']}, {runtime.threads} threads, AVX512-BF16 "
                                     f"{'yes' if described['avx512_bf16'] else 'no'}, AMX "
                                     f"{'yes' if described['amx_tile'] else 'no'}")
    return f"{name}; torch {torch.__version__}; CPU capability {torch.backends.cpu.get_cpu_capability()}"


def run_benchmark(contexts=(256, 1024), *, rounds: int = 3, device_name: str = "auto", tokenize_mb: int = 20,
                  corpus: Path | None = None, precisions=None, preset: str = "gpt2-small",
                  nanogpt: Path | None = None, tracking: bool = True) -> dict:
    """The side-by-side rows per context (batch 512 tokens on the CPU, 16,384 on a GPU), greedy decoding at the
    first context, the MLflow tracking cost (tracking=False: without MLflow, as on a bare GPU machine) and
    tokenization (given a corpus)."""
    runtime = setup_runtime(device_name, "fp32")
    device = runtime.device
    if precisions is None:  # bf16 only where it runs in hardware: emulated bf16 is ~40x slower here
        precisions = ("fp32", "bf16") if fast_bf16(device) else ("fp32",)
    peaks = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in ("fp32", "bf16")}
    rows: list[dict] = []
    for context in contexts:
        batch = max(1, 512 // context) if device.type == "cpu" else max(1, 16384 // context)
        model, twin = bench_model(preset, context, precisions=precisions, batch_size=batch, rounds=rounds,
                                  runtime=runtime, peaks=peaks, rows=rows, nanogpt=nanogpt)
        if context == contexts[0]:
            bench_generation(model, twin, rounds, device, rows)
        del model, twin
    if tracking:
        step = next(r for r in rows if r["measure"] == "train step" and r["impl"] == "gptcore")
        bench_tracking(rounds, step["batch"] * step["context"] / step["tokens_per_s"], rows)
    if corpus is not None and tokenize_mb:
        bench_tokenization(corpus, tokenize_mb, rows)
    return {"machine": machine(runtime), "device": device.type, "rounds": rounds, "preset": preset,
            "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
            "peak_memory_mb": peak_memory_mb(device), "rows": rows}


PEERS = {"hf": "HF", "book": "book", "nanogpt": "nanoGPT"}


def ratio_rows(result: dict) -> list[str]:
    """One line per gptcore measurement: its tokens/s beside each peer's on the same work, and gptcore / HF."""
    rows = result["rows"]
    present = [peer for peer in PEERS if any(r["impl"] == peer for r in rows)]
    lines = []
    for row in rows:
        if row["impl"] != "gptcore" or row["measure"] not in ("train step", "eval forward", "greedy generate"):
            continue
        same = ("measure", "context", "batch") + (("precision",) if row["measure"] != "greedy generate" else ())
        peers = {r["impl"]: r for r in rows if r["impl"] in present and all(r.get(k) == row.get(k) for k in same)}
        precision = row["precision"] + (" weights" if row["measure"] == "greedy generate" else "")
        speeds = " | ".join(f"{peers[peer]['tokens_per_s']:.1f}" if peer in peers else "-" for peer in present)
        hf = peers.get("hf")
        lines.append(f"| {row['measure']} | {row['context']} | {row['batch']} | {precision} | "
                     f"{row['tokens_per_s']:.1f} | {speeds} | "
                     + (f"{row['tokens_per_s'] / hf['tokens_per_s']:.2f}x" if hf else "-") + " | "
                     + (f"{row['mfu'] * 100:.1f} % / {hf['mfu'] * 100:.1f} %" if "mfu" in row and hf else "") + " |")
    header = ["gptcore tokens/s", *(f"{PEERS[peer]} tokens/s" for peer in present), "gptcore / HF", "MFU gptcore / HF"]
    return ["| measure | context | batch | precision | " + " | ".join(header) + " |",
            "|---" * (4 + len(header)) + "|", *lines]


def format_table(result: dict) -> str:
    peaks = result["matmul_peak_tflops"]
    lines = [f"Machine: {result['machine']}",
             f"Matmul peak measured here: fp32 {peaks['fp32'] * 1000:.0f} GFLOP/s, bf16 {peaks['bf16'] * 1000:.0f} GFLOP/s",
             "", *ratio_rows(result)]
    for row in result["rows"]:
        if row["measure"] == "tokenize":
            lines.append(f"\nTokenization: {row['mb_per_s']:.2f} MB/s ({row['tokens_per_s']:,.0f} tokens/s) on "
                         f"{row['megabytes']:.0f} MB, peak RSS {row['peak_rss_mb']:.0f} MB")
        if row["measure"] == "mlflow tracking":
            lines.append(f"\nMLflow tracking: {row['seconds_per_step'] * 1000:.2f} ms per step = "
                         f"{row['share_of_step'] * 100:.2f} % of a {result['preset']} training step")
        if row["measure"] == "system metrics":
            lines.append(f"\nSystem metrics: {row['seconds_per_sample'] * 1000:.1f} ms per sample = "
                         f"{row['share_of_time'] * 100:.3f} % of the time at one sample every "
                         f"{row['interval_seconds']} s")
    lines.append(f"\nPeak memory of the benchmark process: {result['peak_memory_mb']:.0f} MB")
    return "\n".join(lines)

"""The benchmark: gptcore side by side with Hugging Face's GPT2LMHeadModel on this machine, in one run.

Variants are interleaved (each timed round runs every variant once) so that noise from a shared
machine hits all alike. After a warm-up round, rounds are added until one more round moves no ratio
by more than settled_within (at least `rounds`, at most `max_rounds`: gptcore.settings.bench); a ratio is
the median over rounds of the paired per-round ratio, given with its minimum and maximum, and every round is kept. Results are
ratios measured together, never absolute times from different runs. MFU divides by the fastest matmul
measured here, over square sizes and the model's own GEMM shapes; one above 100 % is refused.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
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
from .model.gpt import GPT, ModelConfig
from .model.inference import prepare_for_inference, weights_on
from .model.runtime import Runtime, fast_bf16, setup_runtime
from .model.sampling import generate
from .settings.bench import BenchConfig
from .settings.model import EOT_ID, VOCAB_SIZE

SCHEDULE = BenchConfig()  # the defaults of `gptcore bench --rounds --max-rounds --settled-within`


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started




def paired_ratios(seconds: dict, pairs, rounds: int | None = None) -> dict:
    """Per pair (peer, base): the per-round ratios peer seconds / base seconds over the first `rounds` rounds
    (all by default): how many times faster the base ran in each round."""
    return {pair: [peer / base for peer, base in zip(seconds[pair[0]][:rounds], seconds[pair[1]][:rounds])]
            for pair in pairs}


def last_round_moved(seconds: dict, pairs) -> float:
    """The largest relative change the last round made to a pair's median ratio: 0 without pairs, infinite
    with one round (nothing says yet how much a round moves them)."""
    rounds = len(next(iter(seconds.values())))
    if not pairs:
        return 0.0
    if rounds < 2:
        return math.inf
    before, after = paired_ratios(seconds, pairs, rounds - 1), paired_ratios(seconds, pairs)
    return max(abs(statistics.median(after[pair]) / statistics.median(before[pair]) - 1) for pair in pairs)


def interleaved(variants: dict, device, *, pairs=(), min_rounds: int = SCHEDULE.rounds,
                max_rounds: int = SCHEDULE.max_rounds, within: float = SCHEDULE.settled_within, timer=timed) -> dict:
    """Every variant in turn per round, a warm-up round first (not kept), then at least min_rounds rounds and
    more until the last one moved no pair's median ratio by more than `within` (at most max_rounds).

    Returns the seconds of every round per variant, the rounds run, how far the last round moved a ratio and
    whether that is within the bound."""
    seconds = {name: [] for name in variants}
    for round_index in range(max_rounds + 1):
        for name, fn in variants.items():
            taken = timer(fn, device)
            if round_index:
                seconds[name].append(taken)
        if round_index >= min_rounds and last_round_moved(seconds, pairs) <= within:
            break
    moved = last_round_moved(seconds, pairs)
    return {"seconds": seconds, "rounds": len(next(iter(seconds.values()))),
            "moved": moved if math.isfinite(moved) else None, "settled": moved <= within, "within": within}


def spread(values) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def model_gemm_shapes(config: ModelConfig, tokens: int) -> list[tuple[int, int, int]]:
    """The (m, k, n) products of a training step of the model on `tokens` tokens: the fused query/key/value,
    the attention output, the two MLP layers and the output head (the backward pass multiplies their
    transposes)."""
    width = config.emb_dim
    return [(tokens, width, 3 * width), (tokens, width, width), (tokens, width, 4 * width),
            (tokens, 4 * width, width), (tokens, width, config.vocab_size)]


def measured_rate(m: int, k: int, n: int, dtype, device, rounds: int = 5) -> tuple[float, float]:
    """(FLOP/s of the product (m, k) @ (k, n), the seconds of one) here: the median of rounds after a warm-up."""
    a, b = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    times = [timed(lambda: a @ b, device) for _ in range(rounds + 1)][1:]
    seconds = statistics.median(times)
    return 2 * m * k * n / seconds, seconds


def matmul_peak(dtype, device, model_shapes=(), *, rate_of=measured_rate, max_size: int = 8192,
                slow_seconds: float = 1.0) -> dict:
    """The practical matmul rate of this dtype here: the fastest of square products, doubling from 256 while
    the rate still rises (by 5 %), and of the model's own GEMM shapes. A product slower than slow_seconds
    ends the squares, so an emulated dtype (bf16 on AVX2 CPUs: ~100x slower) takes no minutes.

    Returns the peak's FLOP/s, the shape that reached it and every rate measured (by "m x k x n")."""
    rates, size, previous = {}, 256, 0.0
    while size <= max_size:
        rate, seconds = rate_of(size, size, size, dtype, device)
        rates[f"{size}x{size}x{size}"] = rate
        if rate < previous * 1.05 or seconds > slow_seconds:
            break
        previous, size = rate, size * 2
    for m, k, n in model_shapes:
        rates[f"{m}x{k}x{n}"] = rate_of(m, k, n, dtype, device)[0]
    shape = max(rates, key=rates.get)
    return {"flops": rates[shape], "shape": shape, "rates": rates}


def model_flops_utilization(achieved: float, peak: float) -> tuple[float | None, str | None]:
    """(MFU, None), or (None, why) where the step sustained more than the peak: a denominator the workload
    beats is not a peak, so no MFU above 100 % is given."""
    if achieved > peak:
        return None, (f"the step sustained {achieved / 1e9:.0f} GFLOP/s, above the fastest matmul measured "
                      f"({peak / 1e9:.0f} GFLOP/s): the peak missed a faster shape or the machine sped up, so "
                      "no MFU is given")
    return achieved / peak, None


def flops_per_token(config: ModelConfig, n_params: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B as nanoGPT's estimate_mfu: 6N + 12LHQT."""
    head_dim = config.emb_dim // config.n_heads
    return 6 * n_params + 12 * config.n_layers * config.n_heads * head_dim * config.context_length


def hf_twin(model: GPT):
    """An HF GPT2LMHeadModel with the same config and the same weights (so work and outputs match)."""
    import transformers

    from .formats.huggingface import hf_config_from, hf_state_dict_from

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


NANOGPT_LAYOUTS = ("train.py", "gpt2")


def nanogpt_twin(folder: Path, config: ModelConfig, layout: str = "train.py"):
    """nanoGPT's GPT from the model.py of a nanoGPT checkout (dropout 0, its head tied to the embedding), in
    one of two layouts: "train.py", as its train.py trains GPT-2 from scratch (no biases in the Linear and
    LayerNorm layers, the vocabulary padded to 50,304 rows), or "gpt2", GPT-2's own (biases, config's rows)."""
    source = Path(folder) / "model.py"
    if not source.is_file():
        raise ConfigError(f"--nanogpt {folder}: no model.py there; give the folder of a nanoGPT checkout")
    spec = importlib.util.spec_from_file_location("nanogpt_model", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    as_gpt2 = layout == "gpt2"
    return module.GPT(module.GPTConfig(block_size=config.context_length,
                                       vocab_size=config.vocab_size if as_gpt2 else 50304, n_layer=config.n_layers,
                                       n_head=config.n_heads, n_embd=config.emb_dim, dropout=0.0, bias=as_gpt2))


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


# each peer, the gptcore variant of the same layout it is timed against, and how it is laid out
PEERS = {"hf": ("gptcore", "HF GPT2LMHeadModel"),
         "nanogpt gpt2": ("gptcore", "nanoGPT, GPT-2's layout (biases, 50,257 rows)"),
         "nanogpt": ("gptcore", "nanoGPT as its train.py (no biases, 50,304 rows)"),
         "book": ("gptcore untied", "the book's GPTModel (untied head)")}
LABELS = {"gptcore": "gptcore (GPT-2's layout: biases, tied head)", "gptcore untied": "gptcore, untied head",
          **{name: label for name, (_, label) in PEERS.items()}}


def timed_rows(measure: str, timing: dict, tokens: int, base: dict, **columns) -> list[dict]:
    """One row per variant of an interleaved timing: tokens/s (median, min, max over rounds), every round's
    seconds, and for a peer the ratio of its seconds to its base's, round by round (min, median, max)."""
    rows = []
    for name, seconds in timing["seconds"].items():
        row = {"measure": measure, "impl": name, **columns, "tokens_per_s": tokens / statistics.median(seconds),
               "tokens_per_s_min": tokens / max(seconds), "tokens_per_s_max": tokens / min(seconds),
               "seconds": seconds, "rounds": timing["rounds"], "moved": timing["moved"],
               "settled": timing["settled"]}
        if name in base:
            row["against"] = base[name]
            row["speedup"] = spread(paired_ratios(timing["seconds"], [(name, base[name])])[(name, base[name])])
        rows.append(row)
    return rows


def bench_model(preset: str, context: int, *, precisions, batch_size: int, rounds: dict, runtime: Runtime,
                square_peaks: dict, rows: list, nanogpt: Path | None = None):
    """Training steps and evaluation passes of gptcore (in GPT-2's layout), HF and, where available, nanoGPT's
    GPT in that layout and in its train.py's, and the book's model beside gptcore with an untied head: the
    same config, batch and fused AdamW. MFU against the fastest matmul of the squares and this step's shapes."""
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, context_length=context, drop_rate=0.0, qkv_bias=True)
    device = runtime.device
    model = GPT(config).to(device)
    twin = hf_twin(model)
    implementations = {"gptcore": (model, gptcore_loss), "hf": (twin, hf_loss)}
    if nanogpt is not None:
        for layout, name in zip(NANOGPT_LAYOUTS, ("nanogpt", "nanogpt gpt2")):
            implementations[name] = (nanogpt_twin(nanogpt, config, layout).to(device), gptcore_loss)
    if (book := book_twin(config)) is not None:
        implementations["gptcore untied"] = (GPT(replace(config, tie_embeddings=False)).to(device), gptcore_loss)
        implementations["book"] = (book.to(device), book_loss)
    base = {peer: PEERS[peer][0] for peer in implementations if peer in PEERS}
    pairs = list(base.items())
    inputs = torch.randint(0, config.vocab_size, (batch_size, context), device=device)
    batch = (inputs, torch.roll(inputs, -1, dims=1))
    tokens = inputs.numel()
    work = flops_per_token(config, model.num_parameters()) * tokens
    for precision in precisions:
        dtype = torch.float32 if precision == "fp32" else torch.bfloat16
        peak = max(square_peaks[precision], matmul_peak(dtype, device, model_gemm_shapes(config, tokens),
                                                        max_size=0), key=lambda p: p["flops"])
        at_precision = replace(runtime, precision=precision)
        train = interleaved({name: TrainStep(net, loss_of, batch, at_precision)
                             for name, (net, loss_of) in implementations.items()}, device, pairs=pairs, **rounds)
        evaluated = interleaved({name: evaluation(net, loss_of, batch, at_precision)
                                 for name, (net, loss_of) in implementations.items()}, device, pairs=pairs, **rounds)
        columns = dict(context=context, batch=batch_size, precision=precision)
        for row in timed_rows("train step", train, tokens, base, **columns):
            achieved = work / statistics.median(row["seconds"])
            row["tflops"] = achieved / 1e12
            row["mfu"], row["mfu_refused"] = model_flops_utilization(achieved, peak["flops"])
            row["peak"] = {"tflops": peak["flops"] / 1e12, "shape": peak["shape"]}
            rows.append(row)
        rows += timed_rows("eval forward", evaluated, tokens, base, **columns)
    return model, twin


def bench_generation(model, twin, rounds: dict, device, rows: list, new_tokens=200):
    """Greedy decoding against HF's cached generate (fp32), gptcore with each of its inference weights."""
    variants = {weights: prepare_for_inference(copy.deepcopy(model), weights, device)
                for weights in weights_on(device)}
    for batch in (1, 8):
        prompt = torch.randint(0, VOCAB_SIZE, (batch, 8), device=device)
        timing = interleaved({**{weights: greedy(net, prompt, new_tokens, False) for weights, net in variants.items()},
                              "hf": greedy(twin, prompt, new_tokens, True)}, device,
                             pairs=[("hf", weights) for weights in variants], **rounds)
        for row in timed_rows("greedy generate", timing, batch * new_tokens, {}, context=model.config.context_length,
                              batch=batch):
            row["impl"], row["precision"] = ("hf", "fp32") if row["impl"] == "hf" else ("gptcore", row["impl"])
            if row["impl"] == "gptcore":
                row["against"] = "hf"
                pair = ("hf", row["precision"])
                row["speedup"] = spread(paired_ratios(timing["seconds"], [pair])[pair])
            rows.append(row)


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
        code = ("import json,sys,time; from gptcore.data.token_files import tokenize_file;"
                "from gptcore.model.tokenizer import Tokenizer; t=Tokenizer(); s=time.perf_counter();"
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
    from .tracking.metrics import TrackingCallback
    from .tracking.runs import Tracker

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


def run_benchmark(contexts=(256, 1024), *, rounds: int = SCHEDULE.rounds, max_rounds: int = SCHEDULE.max_rounds,
                  settled_within: float = SCHEDULE.settled_within, device_name: str = "auto", tokenize_mb: int = 20, corpus: Path | None = None, precisions=None,
                  preset: str = "gpt2-small", nanogpt: Path | None = None, tracking: bool = True) -> dict:
    """The side-by-side rows per context (batch 512 tokens on the CPU, 16,384 on a GPU), greedy decoding at the
    first context, the MLflow tracking cost (tracking=False: without MLflow, as on a bare GPU machine) and
    tokenization (given a corpus). Each timing runs at least `rounds` rounds, at most max_rounds, and stops
    earlier once one more round moves no paired ratio by more than settled_within."""
    runtime = setup_runtime(device_name, "fp32")
    device = runtime.device
    if precisions is None:  # bf16 only where it runs in hardware: emulated bf16 is ~40x slower here
        precisions = ("fp32", "bf16") if fast_bf16(device) else ("fp32",)
    squares = {p: matmul_peak(torch.float32 if p == "fp32" else torch.bfloat16, device) for p in ("fp32", "bf16")}
    schedule = {"min_rounds": rounds, "max_rounds": max(rounds, max_rounds), "within": settled_within}
    rows: list[dict] = []
    for context in contexts:
        batch = max(1, 512 // context) if device.type == "cpu" else max(1, 16384 // context)
        model, twin = bench_model(preset, context, precisions=precisions, batch_size=batch, rounds=schedule,
                                  runtime=runtime, square_peaks=squares, rows=rows, nanogpt=nanogpt)
        if context == contexts[0]:
            bench_generation(model, twin, schedule, device, rows)
        del model, twin
    if tracking:
        step = next(r for r in rows if r["measure"] == "train step" and r["impl"] == "gptcore")
        bench_tracking(rounds, step["batch"] * step["context"] / step["tokens_per_s"], rows)
    if corpus is not None and tokenize_mb:
        bench_tokenization(corpus, tokenize_mb, rows)
    return {"machine": machine(runtime), "device": device.type, "rounds": schedule, "settled_within": settled_within,
            "preset": preset, "square_matmul_peak": {k: {"tflops": v["flops"] / 1e12, "shape": v["shape"],
                                                         "rates_tflops": {s: r / 1e12 for s, r in v["rates"].items()}}
                                                     for k, v in squares.items()},
            "peak_memory_mb": peak_memory_mb(device), "rows": rows}


def with_spread(median: float, low: float, high: float, form: str = "{:,.1f}") -> str:
    """`median (low-high)`, each in `form`."""
    return f"{form.format(median)} ({form.format(low)}-{form.format(high)})"


def ratio_rows(result: dict) -> list[str]:
    """One line per timed variant: its tokens/s (median, min-max over rounds), for a peer how many times
    faster gptcore of the same layout ran (paired rounds: median, min-max), the MFU of a training step."""
    lines = ["| measure | context | batch | precision | implementation | tokens/s median (min-max) | "
             "gptcore's speed / its (min-max) | MFU |", "|---" * 8 + "|"]
    for row in result["rows"]:
        if "seconds" not in row:
            continue
        precision = row["precision"] + (" weights" if row["measure"] == "greedy generate" and row["impl"] == "gptcore"
                                        else "")
        label = LABELS[row["impl"]] if row["measure"] != "greedy generate" else LABELS[row["impl"]].split(" (")[0]
        ratio = row.get("speedup")
        against = (f"{with_spread(ratio['median'], ratio['min'], ratio['max'], '{:.2f}x')} vs {row['against']}"
                   if ratio else "")
        mfu = "" if "mfu" not in row else ("refused (below)" if row["mfu"] is None else f"{row['mfu'] * 100:.1f} %")
        lines.append(f"| {row['measure']} | {row['context']} | {row['batch']} | {precision} | {label} | "
                     f"{with_spread(row['tokens_per_s'], row['tokens_per_s_min'], row['tokens_per_s_max'])} | "
                     f"{against} | {mfu} |")
    return lines


def settling_lines(result: dict) -> list[str]:
    """Per timing: the rounds run and how far the last moved a ratio, against the bound; refused MFUs and why."""
    seen, lines = set(), []
    for row in result["rows"]:
        if "seconds" not in row:
            continue
        key = (row["measure"], row["context"], row["batch"],
               row["precision"] if row["measure"] != "greedy generate" else "")
        if key not in seen:
            seen.add(key)
            where = f"- {row['measure']}, {row['context']} x {row['batch']}" + (f", {key[3]}" if key[3] else "")
            if row["rounds"] < 2:
                lines.append(f"{where}: 1 round, so no spread and no settling measured")
                continue
            bound = f"{result['settled_within'] * 100:.0f} %"
            state = f"within {bound}" if row["settled"] else f"above {bound}: the round cap came first"
            lines.append(f"{where}: {row['rounds']} rounds; the last moved a ratio by {row['moved'] * 100:.1f} % "
                         f"({state})")
        if row.get("mfu_refused"):
            lines.append(f"- MFU of {LABELS[row['impl']]}, {row['measure']} {row['context']} {row['precision']}: "
                         f"{row['mfu_refused']}")
    return lines


def format_table(result: dict) -> str:
    peaks = result["square_matmul_peak"]
    train = [row for row in result["rows"] if row["measure"] == "train step" and row["impl"] == "gptcore"]
    used = "; ".join(f"{row['context']} x {row['batch']} {row['precision']}: {row['peak']['tflops'] * 1000:.0f} "
                     f"GFLOP/s ({row['peak']['shape']})" for row in train)
    lines = [f"Machine: {result['machine']}",
             f"Fastest square matmul here: fp32 {peaks['fp32']['tflops'] * 1000:.0f} GFLOP/s ({peaks['fp32']['shape']}),"
             f" bf16 {peaks['bf16']['tflops'] * 1000:.0f} GFLOP/s ({peaks['bf16']['shape']}); the MFU peak, with the "
             f"step's own GEMM shapes: {used}",
             "", *ratio_rows(result), "", "Rounds (interleaved; more until one more moves no ratio by more than "
             f"{result['settled_within'] * 100:.0f} %):", *settling_lines(result)]
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

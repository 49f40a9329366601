"""Tokenizing a JSONL corpus: gptcore's prepare + tokenize stages against build-nanogpt's fineweb.py method, side by
side in one run on the same file; then gptcore alone on a file four times larger (does memory stay flat?), and the
cost of a training batch drawn from 10 shards against one file of the same tokens.

build-nanogpt's method, as its fineweb.py does it (learnt from there, written here): a multiprocessing Pool's imap
(chunksize 16) over the documents, each one's tokens [<|endoftext|>] + encode_ordinary(text) as a uint16 array,
copied into a 100M-token buffer written with np.save per shard. Its documents come from a Hugging Face dataset; here
they are the JSONL's lines, json.loads'ed in the parent as the dataset would yield them. It runs on as many processes
as gptcore's workers (its own default, os.cpu_count() // 2, would give it half of them).

Each method runs in its own process; peak memory is the largest sum of the RSS of that process and its children,
sampled every 0.1 s. The corpus: documents of 200 to 20,000 characters cut at random from the mirror's texts (The
Verdict, Tiny Shakespeare, the book's instruction data, LAMBADA), seeded.

    PYTHONPATH=. python benchmarks/tokenize_documents.py --gigabytes 1 --large-gigabytes 4 \
        --out benchmarks/results-tokenize-zen4.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, gigabytes: float, mirror: Path, seed: int = 0) -> int:
    """A JSONL file of about `gigabytes` GB; returns its document count."""
    data = mirror / "data"
    texts = [(data / "the-verdict.txt").read_text(), (data / "tinyshakespeare.txt").read_text(),
             "\n\n".join(e["instruction"] + "\n" + e["output"]
                         for e in json.loads((data / "instruction-data.json").read_text())),
             "\n".join(json.loads(line)["text"] for line in (data / "lambada_test.jsonl").open())]
    rng, target, size, documents = random.Random(seed), int(gigabytes * 1e9), 0, 0
    with open(path, "w") as out:
        while size < target:
            text = rng.choice(texts)
            length = rng.randint(200, 20_000)
            start = rng.randrange(max(1, len(text) - length))
            line = json.dumps({"id": documents, "text": text[start:start + length]}) + "\n"
            out.write(line)
            size, documents = size + len(line), documents + 1
    return documents


def run_measured(command: list[str], env: dict) -> dict:
    """Run a command; its wall time, peak RSS of its process tree and its last stdout line (JSON)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    peak, tree = 0, psutil.Process(process.pid)

    def sample():
        nonlocal peak
        while process.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [tree, *tree.children(recursive=True)])
            except psutil.Error:
                continue
            peak = max(peak, rss)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = process.communicate()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{command} failed ({process.returncode})")
    return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak / 2**20} | json.loads(out.splitlines()[-1])


def gptcore_tokenize(source: str, out: str, workers: int) -> dict:
    """The prepare and tokenize stages' functions on the source (shards layout, 100M-token shards)."""
    from gptcore.data.documents import prepare_data
    from gptcore.data.shards import tokenize_documents
    from gptcore.settings.data import DataConfig

    started = time.perf_counter()
    prepare_data(DataConfig(source=source, sha256=None, layout="shards", train_ratio=0.99), Path(out) / "prepared")
    prepared = time.perf_counter()
    meta = tokenize_documents(Path(out) / "prepared", Path(out) / "tokens", Path(out) / "work", workers=workers,
                             progress=False)
    return {"tokens": sum(split["tokens"] for split in meta["splits"].values()),
            "prepare_seconds": prepared - started, "tokenize_seconds": time.perf_counter() - prepared}


ENCODING = None


def build_nanogpt_document(document: dict) -> np.ndarray:
    """fineweb.py's tokenize(doc)."""
    global ENCODING
    if ENCODING is None:
        import tiktoken
        ENCODING = tiktoken.get_encoding("gpt2")
    tokens = [ENCODING._special_tokens["<|endoftext|>"]]
    tokens.extend(ENCODING.encode_ordinary(document["text"]))
    tokens = np.array(tokens)
    assert (0 <= tokens).all() and (tokens < 2**16).all()
    return tokens.astype(np.uint16)


def build_nanogpt_tokenize(source: str, out: str, workers: int, shard_size: int = 10**8) -> dict:
    """fineweb.py's main loop on the JSONL's documents."""
    started = time.perf_counter()
    documents = (json.loads(line) for line in open(source))
    shard_index, count, total = 0, 0, 0
    buffer = np.empty((shard_size,), dtype=np.uint16)
    with multiprocessing.Pool(workers) as pool:
        for tokens in pool.imap(build_nanogpt_document, documents, chunksize=16):
            total += len(tokens)
            if count + len(tokens) < shard_size:
                buffer[count:count + len(tokens)] = tokens
                count += len(tokens)
            else:
                remainder = shard_size - count
                buffer[count:count + remainder] = tokens[:remainder]
                np.save(Path(out) / f"shard_{shard_index:06d}", buffer)
                shard_index += 1
                buffer[0:len(tokens) - remainder] = tokens[remainder:]
                count = len(tokens) - remainder
        if count:
            np.save(Path(out) / f"shard_{shard_index:06d}", buffer[:count])
    return {"tokens": total, "tokenize_seconds": time.perf_counter() - started}


def batch_cost(tokens_dir: Path, work: Path, steps: int = 2000) -> dict:
    """Seconds per random batch (64 windows of 1,024) from the train split cut into 10 shards and from one file of
    the same tokens (the book layout's reader, load_tokens), interleaved; the batches equal."""
    import torch

    from gptcore.data.loaders import RandomWindows
    from gptcore.data.shards import ShardedTokens, load_split, write_shards
    from gptcore.data.token_files import load_tokens

    stream = load_split(tokens_dir, "train")
    stream = np.asarray(stream[0:len(stream)])
    one = work / "one.bin"
    stream.tofile(one)
    paths = write_shards(stream, work, "train", 10)
    windows = {"one_file": RandomWindows(load_tokens(one), 1024, batch_size=64, seed=1),
               "ten_shards": RandomWindows(ShardedTokens(paths), 1024, batch_size=64, seed=1)}
    seconds = dict.fromkeys(windows, 0.0)
    for step in range(steps):
        batches = {}
        for name, source in windows.items():
            started = time.perf_counter()
            batches[name] = source.batch(step)
            seconds[name] += time.perf_counter() - started
        assert all(torch.equal(a, b) for a, b in zip(*batches.values()))
    return {f"{name}_ms_per_batch": 1000 * s / steps for name, s in seconds.items()} | \
        {"ten_shards_over_one_file": seconds["ten_shards"] / seconds["one_file"], "tokens": len(stream)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument("--large-gigabytes", type=float, default=4.0, help="gptcore alone; 0 = skip")
    parser.add_argument("--workers", type=int, default=None, help="processes of each method (default: the cores)")
    parser.add_argument("--work", type=Path, default=None, help="a folder with room for the corpora")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--run", nargs=4, metavar=("METHOD", "SOURCE", "OUT", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # one measured method, in its own process
        method, source, out, workers = args.run
        result = (gptcore_tokenize if method == "gptcore" else build_nanogpt_tokenize)(source, out, int(workers))
        print(json.dumps(result))
        return
    from gptcore.machine import cpu_model, physical_cores

    workers = args.workers or physical_cores()
    mirror = Path(os.environ.get("GPTCORE_MIRROR", REPO.parent / "shared"))
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPTCORE_MIRROR": str(mirror)}
    results = {"machine": f"{cpu_model()}, {physical_cores()} cores", "workers": workers}
    with tempfile.TemporaryDirectory(dir=args.work) as folder:
        work = Path(folder)

        def measure(method: str, source: Path, name: str) -> dict:
            (work / name).mkdir()
            return run_measured([sys.executable, __file__, "--run", method, str(source), str(work / name),
                                 str(workers)], env)

        corpus = work / "corpus.jsonl"
        results["corpus"] = {"gigabytes": args.gigabytes, "documents": write_corpus(corpus, args.gigabytes, mirror)}
        results["build_nanogpt"] = measure("build_nanogpt", corpus, "build_nanogpt")
        results["gptcore"] = measure("gptcore", corpus, "gptcore")
        for name in ("build_nanogpt", "gptcore"):
            result = results[name]
            result["tokens_per_second"] = result["tokens"] / result["seconds"]
            result["tokenize_tokens_per_second"] = result["tokens"] / result["tokenize_seconds"]
        results["gptcore_over_build_nanogpt"] = (results["gptcore"]["tokens_per_second"] /
                                                 results["build_nanogpt"]["tokens_per_second"])
        results["batch_cost"] = batch_cost(work / "gptcore" / "tokens", work)
        print(json.dumps(results, indent=2), flush=True)
        if args.large_gigabytes:
            for path in work.glob("*"):  # room for the larger corpus
                if path.is_dir():
                    subprocess.run(["rm", "-rf", str(path)], check=True)
            corpus.unlink()
            large = work / "large.jsonl"
            results["large_corpus"] = {"gigabytes": args.large_gigabytes,
                                       "documents": write_corpus(large, args.large_gigabytes, mirror, seed=1)}
            results["gptcore_large"] = measure("gptcore", large, "gptcore_large")
            results["gptcore_large"]["tokens_per_second"] = (results["gptcore_large"]["tokens"] /
                                                             results["gptcore_large"]["seconds"])
            results["large_over_small_peak_rss"] = (results["gptcore_large"]["peak_rss_mb"] /
                                                    results["gptcore"]["peak_rss_mb"])
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

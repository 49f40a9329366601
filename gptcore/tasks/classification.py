"""Classification fine-tuning, the book's chapter 6: a pretrained GPT gets a class head, trains its last
block (or all, or the head, or LoRA adapters) and classifies a text by one position's logits.

The model transform (`attach_head`, `freeze`, gptcore.model.lora), the task the one training loop runs
(`Classification`), evaluation (`score`), and the saved classifier (`save_classifier`, `load_classifier`,
`classify`). A classifier folder is a model folder whose head has one row per class, plus
classifier.json (labels, position, max_length, pad id); with LoRA saved as an adapter it holds the
adapter and a pointer to its base instead of the weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_model as load_weights
from torch.utils.data import TensorDataset

from ..atomic import atomic_write_text
from ..data.loaders import SplitTooShortError, make_dataloader, to_device
from ..errors import ConfigError, MissingInputError
from ..formats.adapters import ADAPTER_CONFIG, load_adapter, save_trained
from ..formats.loading import adapter_base
from ..formats.model_folder import CLASSIFIER_FILE, MODEL_CONFIG, WEIGHTS
from ..model.gpt import GPT, ModelConfig
from ..settings.lora import LoraConfig
from ..training.task import Task


@dataclass
class EncodedSplit:
    """A split as tensors: ids (N, max_length) padded with pad_id, labels (N,), the classifying position
    of each row (N,), and how many texts were cut to max_length."""
    ids: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    truncated: int

    def dataset(self) -> TensorDataset:
        return TensorDataset(self.ids, self.labels, self.positions)


def token_length(encoded: list[list[int]], max_length: int | None, context_length: int) -> int:
    """max_length, or the longest encoded text (the book's SpamDataset), at most the model's context."""
    return min(max_length or max(len(ids) for ids in encoded), context_length)


def encode_split(encoded: list[list[int]], labels, max_length: int, pad_id: int, position: str) -> EncodedSplit:
    """Cut each text to max_length and pad it with pad_id (the book's SpamDataset)."""
    rows = [ids[:max_length] + [pad_id] * (max_length - len(ids[:max_length])) for ids in encoded]
    lengths = torch.tensor([max(1, min(len(ids), max_length)) for ids in encoded])
    positions = lengths - 1 if position == "last_token" else torch.full_like(lengths, max_length - 1)
    return EncodedSplit(torch.tensor(rows, dtype=torch.long), torch.as_tensor(list(labels), dtype=torch.long),
                        positions, sum(len(ids) > max_length for ids in encoded))


def attach_head(model: GPT, n_classes: int) -> GPT:
    """The book's model.out_head = Linear(emb_dim, n_classes): nn.Linear's own draw from the global
    generator (seed it first), with a bias."""
    model.lm_head = nn.Linear(model.config.emb_dim, n_classes, device=model.transformer.wte.weight.device)
    return model


def freeze(model: GPT, trainable: str) -> int:
    """Train only `trainable` (last_block: the last block, the final LayerNorm and the head, as the book;
    head; all); returns the trainable parameter count."""
    for parameter in model.parameters():
        parameter.requires_grad = trainable == "all"
    parts = {"last_block": (model.transformer.h[-1], model.transformer.ln_f, model.lm_head),
             "head": (model.lm_head,), "all": ()}[trainable]
    for part in parts:
        for parameter in part.parameters():
            parameter.requires_grad = True
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def frozen_blocks(model: GPT) -> int:
    """How many leading blocks compute the same output in every epoch: no trainable parameter in them or
    the embeddings, and no dropout. Their output can be computed once per text."""
    if model.config.drop_rate > 0 or any(p.requires_grad for p in model.transformer.wte.parameters()) or \
            ("wpe" in model.transformer and any(p.requires_grad for p in model.transformer.wpe.parameters())):
        return 0
    count = 0
    for block in model.transformer.h:
        if any(p.requires_grad for p in block.parameters()):
            break
        count += 1
    return count


class SequenceClassifier(nn.Module):
    """forward(inputs, labels=None, positions=None) -> (logits (B, n_classes), loss): the class logits at
    each row's classifying position (the last one when positions is None). inputs are token ids (B, T),
    or, with start_block k > 0, the residual stream entering block k (B, T, emb_dim)."""

    def __init__(self, model: GPT, start_block: int = 0):
        super().__init__()
        self.model, self.start_block = model, start_block

    def forward(self, inputs, labels=None, positions=None):
        x = self.model.embed(inputs) if self.start_block == 0 else inputs
        for block in self.model.transformer.h[self.start_block:]:
            x = block(x)
        x = x[torch.arange(x.shape[0], device=x.device), positions] if positions is not None else x[:, -1]
        logits = self.model.lm_head(self.model.transformer.ln_f(x))  # (B, n_classes)
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return logits, loss


@torch.no_grad()
def stream_before(model: GPT, ids: torch.Tensor, blocks: int, runtime, batch_size: int = 32) -> torch.Tensor:
    """The residual stream entering block `blocks` for every row of ids (N, T) -> (N, T, emb_dim), on the CPU."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(ids), batch_size):
        with runtime.autocast():
            x = model.embed(ids[start:start + batch_size].to(runtime.device))
            for block in model.transformer.h[:blocks]:
                x = block(x)
        outputs.append(x.float().cpu())
    model.train(was_training)
    return torch.cat(outputs)


@torch.no_grad()
def score(module: SequenceClassifier, batches, *, num_batches: int | None, runtime) -> dict:
    """Over the first num_batches batches (all when None): the mean of the batch losses (the book's
    calc_loss_loader), the accuracy (its calc_accuracy_loader) and every row's predicted class."""
    was_training = module.training
    module.eval()
    losses, predicted, labels = [], [], []
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        with runtime.autocast():
            logits, loss = module(*to_device(batch, runtime.device))
        losses.append(loss.item())
        predicted += logits.argmax(dim=-1).tolist()
        labels += batch[1].tolist()
    module.train(was_training)
    correct = sum(p == y for p, y in zip(predicted, labels))
    return {"loss": sum(losses) / len(losses), "accuracy": correct / len(labels), "predicted": predicted}


def check_rows(rows: int, config) -> None:
    """A training split must fill one optimizer step."""
    if rows < config.batch_size * config.grad_accum_steps:
        raise SplitTooShortError(f"the training split has {rows} rows, fewer than one step's "
                                 f"{config.batch_size * config.grad_accum_steps} (classify_train.batch_size x "
                                 "grad_accum_steps); lower them or add rows")


class Classification(Task):
    """The book's classifier as a task of the one training loop: batches of (ids, label, position), the
    cross-entropy of the class logits, losses every eval_freq steps and accuracies at each epoch end on
    the first eval_iter batches of each split (in order). With cache_frozen, the frozen leading blocks
    run once per text and the steps start from their output: the same numbers, a fraction of the work."""

    def __init__(self, train: EncodedSplit, val: EncodedSplit, cache_frozen: bool = True):
        self.splits, self.cache_frozen = {"train": train, "validation": val}, cache_frozen

    def bind(self, model, config, runtime, ranks, pin_memory: bool) -> None:
        if ranks.world_size > 1 or config.windows == "random":
            raise ConfigError("classify_train: classification runs in one process on the rows in epochs; set "
                              "classify_train.nproc: 1 and windows: sliding")
        check_rows(len(self.splits["train"].labels), config)
        self.row_tokens = self.splits["train"].ids.shape[1]  # every text cut and padded to one length
        start = frozen_blocks(model) if self.cache_frozen else 0
        self.module = SequenceClassifier(model, start)
        datasets = {name: TensorDataset(stream_before(model, split.ids, start, runtime) if start else split.ids,
                                        split.labels, split.positions) for name, split in self.splits.items()}
        self.train_loader = make_dataloader(datasets["train"], batch_size=config.batch_size, shuffle=config.shuffle,
                                            drop_last=config.drop_last, seed=config.seed, pin_memory=pin_memory)
        self.in_order = {name: make_dataloader(dataset, batch_size=config.batch_size, shuffle=False, drop_last=False,
                                               seed=0, split=name, pin_memory=pin_memory)
                         for name, dataset in datasets.items()}

    def training_module(self, model):
        return self.module

    def _measure(self, runtime, num_batches: int, metric: str) -> dict:
        return {f"{'val' if name == 'validation' else name}_{metric}":
                score(self.module, loader, num_batches=num_batches, runtime=runtime)[metric]
                for name, loader in self.in_order.items()}

    def evaluate(self, model, runtime, num_batches: int) -> dict:
        return self._measure(runtime, num_batches, "loss")

    def evaluate_epoch(self, model, runtime, num_batches: int) -> dict:
        return self._measure(runtime, num_batches, "accuracy")


# -- the saved classifier ---------------------------------------------------------------------------

def save_classifier(model: GPT, folder, info: dict, *, lora: LoraConfig = LoraConfig(), base: str = "") -> Path:
    """The classifier folder: weights + config (adapters merged), or the adapters and the head beside a
    pointer to the base (lora.save adapter); and classifier.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_trained(model, folder, lora, base, extra=("lm_head.",))
    atomic_write_text(folder / CLASSIFIER_FILE, json.dumps(info, indent=2))
    return folder


def load_classifier(folder) -> tuple[SequenceClassifier, dict]:
    """(the classifier, its classifier.json) from a folder written by save_classifier."""
    folder = Path(folder)
    if not (folder / CLASSIFIER_FILE).is_file():
        raise MissingInputError(f"{folder} holds no classifier ({CLASSIFIER_FILE}); give the folder the "
                                "classifier pipeline wrote (data/classifier/model)")
    info = json.loads((folder / CLASSIFIER_FILE).read_text())
    if (folder / ADAPTER_CONFIG).is_file():
        model = attach_head(adapter_base(folder, drop_rate=0.0), len(info["labels"]))
        load_adapter(model, folder)
    else:
        model = attach_head(GPT(ModelConfig(**json.loads((folder / MODEL_CONFIG).read_text()))), len(info["labels"]))
        load_weights(model, str(folder / WEIGHTS))
    return SequenceClassifier(model.eval()), info


@torch.no_grad()
def classify(classifier: SequenceClassifier, info: dict, texts: list[str], tokenizer, runtime,
             batch_size: int = 16) -> list[dict]:
    """The label and the class probabilities of each text, prepared as in training (the book's
    classify_review: cut to max_length, padded, read at the classifying position)."""
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise ConfigError(f"text {index} is {text!r}, not text; give a text to classify")
        if not text.strip():
            raise ConfigError(f"text {index} is empty; give a text to classify")
    encoded = encode_split(tokenizer.encode_batch(texts), [0] * len(texts), info["max_length"], info["pad_id"],
                           info["position"])
    loader = make_dataloader(encoded.dataset(), batch_size=batch_size, shuffle=False, drop_last=False, seed=0)
    results = []
    for batch in loader:
        ids, _, positions = to_device(batch, runtime.device)
        with runtime.autocast():
            logits, _ = classifier(ids, positions=positions)  # no labels: no loss to compute
        for row in logits.float().softmax(dim=-1).tolist():
            best = max(range(len(row)), key=row.__getitem__)
            results.append({"label": info["labels"][best], "probabilities": dict(zip(info["labels"], row))})
    return results

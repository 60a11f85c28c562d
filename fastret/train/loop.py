"""BioHiCL fine-tuning: LoRA adapters taught that two abstracts are as similar as their MeSH labels.

One explicit loop (no Trainer): batches of MeSH-labelled abstracts -> encoder forward -> fused pool +
normalize (with gradients) -> SimE = cosine matrix; SimL = `mesh_similarity` of their labels ->
`biohicl_loss` (+ `lambda_anchor` x `anchor_loss`, which holds each abstract's own question or
title to the base model's scores against the batch) -> AdamW with linear warm-up then cosine decay,
gradient accumulation, AMP on CUDA, gradient clipping. Checkpoints every N steps (adapter +
optimizer + schedule + step) allow `resume=True`; the evaluation hook reports the Spearman
correlation of SimE and SimL on held-out abstracts. The result is exported merged
(`merge_and_unload`) as a plain model directory with sentence-transformers' files, loadable by
`fastret.Encoder` and `SentenceTransformer`.

    from fastret.train import TrainConfig, train
    result = train(TrainConfig(model="path/to/model", data=["abstracts.jsonl"],
                               mesh_tree="mesh2015_tree_numbers.tsv", output_dir="out/"))
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..corpus import document_text, read_jsonl
from ..encode.batches import collate
from ..encode.encoder import Encoder
from ..encode.model_dir import read_model_dir, write_model_dir_files
from ..kernels.mesh_similarity import mesh_similarity
from ..kernels.pooling import pool_normalize
from ..mesh import MeshTree
from ..storage.atomic import atomic_directory, write_bytes
from .losses import anchor_loss, biohicl_loss


@dataclass
class TrainConfig:
    """Everything a BioHiCL run needs; defaults fit BERT-family encoders on a CPU or one GPU."""

    model: str
    data: Sequence[str]  # JSONL files: {"pmid", "title", "abstract", "mesh_ids": [...]} per line
    mesh_tree: str  # MeSH tree file (tab-separated shared format, or NLM's "Name;TreeNumber")
    output_dir: str
    # LoRA (peft)
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    target_modules: Sequence[str] = ("query", "key", "value", "dense")
    # optimization
    learning_rate: float = 2e-4
    weight_decay: float = 0.01
    batch_size: int = 32
    grad_accumulation: int = 1
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; default epochs x batches per epoch
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    # BioHiCL losses
    lambda_con: float = 0.1
    beta: float = 0.3
    tau: float = 0.05
    # retrieval anchor (losses.anchor_loss): keep the base model's question/title -> abstract scores
    lambda_anchor: float = 0.0
    # model and data
    max_length: int = 256
    pooling: str | None = None  # default: the model's own convention
    device: str | None = None
    amp: bool = True  # bf16 autocast on CUDA
    holdout_fraction: float = 0.1
    seed: int = 0
    # bookkeeping
    checkpoint_every: int = 100
    eval_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = False


@dataclass
class LabelledAbstract:
    pmid: str
    text: str  # title and abstract
    mesh_ids: list[str]
    query: str = ""  # what should retrieve it: the record's question, else its title ("" if neither)


@dataclass
class TrainResult:
    model_dir: Path  # the exported, merged model
    steps: int
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "mse", "contrastive", ["anchor",] "lr"} + evals


def load_labelled_abstracts(paths: Sequence[str | os.PathLike]) -> list[LabelledAbstract]:
    """Abstracts with their MeSH ids; records without an abstract or without labels are skipped,
    counted and reported in one warning."""
    records, skipped = [], {"no abstract": 0, "no labels": 0}
    for path in paths:
        for number, record in read_jsonl(path):
            abstract, labels = record.get("abstract"), record.get("mesh_ids")
            if not isinstance(abstract, str) or not abstract.strip():
                skipped["no abstract"] += 1
                continue
            if not isinstance(labels, list) or not labels:
                skipped["no labels"] += 1
                continue
            title = record.get("title") if isinstance(record.get("title"), str) else ""
            question = record.get("question") if isinstance(record.get("question"), str) else ""
            records.append(LabelledAbstract(str(record.get("pmid", f"{Path(path).name}:{number}")),
                                            document_text(title, abstract), [str(label) for label in labels],
                                            (question or title).strip()))
    if any(skipped.values()):
        warnings.warn("skipped abstracts: " + ", ".join(f"{n} with {why}" for why, n in skipped.items() if n),
                      stacklevel=2)
    if not records:
        raise ValueError(f"no usable abstracts in {', '.join(map(str, paths))} (each needs an abstract and mesh_ids)")
    return records


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices), a seeded shuffle."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n)
    held = int(round(n * fraction))
    return np.sort(order[held:]), np.sort(order[:held])


class BioHiCLTrainer:
    """The loop's state: model with adapters, data, labels, optimizer and schedule."""

    def __init__(self, config: TrainConfig):
        from peft import LoraConfig, get_peft_model

        self.config = config
        torch.manual_seed(config.seed)
        self.tree = MeshTree.from_file(config.mesh_tree)
        abstracts = load_labelled_abstracts(config.data)
        labels = self.tree.encode([a.mesh_ids for a in abstracts])
        known = labels.lengths > 0
        if not bool(known.any()):
            raise ValueError("none of the abstracts has a label known to the MeSH tree")
        keep = np.flatnonzero(known.cpu().numpy())
        if len(keep) < len(abstracts):
            warnings.warn(f"{len(abstracts) - len(keep)} abstracts have no label known to the tree; skipped",
                          stacklevel=2)
        self.abstracts = [abstracts[i] for i in keep]
        self.labels = labels[torch.from_numpy(keep)]
        self.train_rows, self.heldout_rows = split_holdout(len(self.abstracts), config.holdout_fraction, config.seed)
        if len(self.train_rows) < 2:
            raise ValueError(f"need at least 2 training abstracts, have {len(self.train_rows)}")

        self.encoder = Encoder(config.model, device=config.device, dtype=torch.float32, pooling=config.pooling,
                               max_length=config.max_length)
        self.device = self.encoder.device
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(config.target_modules), bias="none")
        self.model = get_peft_model(self.encoder.model, lora)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.batches_per_epoch = max(1, len(self.train_rows) // config.batch_size)
        self.total_steps = config.max_steps or max(
            1, config.epochs * self.batches_per_epoch // config.grad_accumulation)
        warmup = int(self.total_steps * config.warmup_ratio)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _warmup_cosine(warmup, self.total_steps))
        self.step = 0
        self.history: list[dict] = []
        self.base_embeddings = self.embed_with_base_model() if config.lambda_anchor else None

    # ------------------------------------------------------------------ data

    def batch_rows(self, micro_batch: int) -> np.ndarray:
        """Rows of micro-batch number `micro_batch`: epoch-wise seeded shuffles (so a resumed run
        sees exactly the batches an uninterrupted one would)."""
        epoch, within = divmod(micro_batch, self.batches_per_epoch)
        order = np.random.default_rng(self.config.seed + 1 + epoch).permutation(self.train_rows)
        size = self.config.batch_size
        return order[within * size : (within + 1) * size]

    def embed(self, rows: np.ndarray) -> torch.Tensor:
        """L2-normalized abstract embeddings [len(rows), d] with gradients (through the fused kernel)."""
        return self.embed_texts([self.abstracts[r].text for r in rows])

    def embed_texts(self, texts: list[str], prefix: str = "") -> torch.Tensor:
        """L2-normalized embeddings [len(texts), d] of `prefix + text`, with gradients."""
        inputs = [self.encoder.prepare(text, i, prefix) for i, text in enumerate(texts)]
        token_ids, type_ids, _ = self.encoder.tokenize(inputs)
        batch = collate(token_ids, type_ids, self.encoder.pad_id)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        autocast = self.config.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
            hidden = self.model(**batch).last_hidden_state
        return pool_normalize(hidden, batch["attention_mask"], mode=self.encoder.pooling, normalize=True)

    def similarities(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(SimE with gradients, SimL, the embeddings SimE came from) for a batch."""
        embeddings = self.embed(rows)
        sim_e = embeddings @ embeddings.T
        labels = self.labels[torch.from_numpy(rows)].to(self.device)
        return sim_e, mesh_similarity(labels).to(sim_e.dtype), embeddings

    def embed_queries(self, rows: np.ndarray) -> torch.Tensor:
        """Embeddings [len(rows), d] of the abstracts' own queries (with the model's query prompt)."""
        return self.embed_texts([self.abstracts[r].query for r in rows], self.encoder.prompts.get("query", ""))

    @torch.no_grad()
    def embed_with_base_model(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The base model's (adapters off, dropout off) embeddings of every abstract and of its
        query, [N, d] each (zeros for an abstract without a query): the anchor's fixed targets."""
        self.model.eval()
        n, step = len(self.abstracts), 64
        queries = torch.zeros(n, self.encoder.dim, device=self.device)
        with self.model.disable_adapter():
            documents = torch.cat([self.embed(np.arange(i, min(i + step, n))) for i in range(0, n, step)]).float()
            with_query = np.array([r for r in range(n) if self.abstracts[r].query], dtype=np.int64)
            for i in range(0, len(with_query), step):
                queries[torch.from_numpy(with_query[i : i + step])] = self.embed_queries(with_query[i : i + step]).float()
        return queries, documents

    def anchor(self, rows: np.ndarray, documents: torch.Tensor) -> torch.Tensor:
        """The retrieval anchor for a batch whose document embeddings are `documents` [len(rows), d]."""
        with_query = np.array([r for r in rows if self.abstracts[r].query], dtype=np.int64)
        if len(with_query) == 0:
            return documents.sum() * 0.0
        scores = self.embed_queries(with_query) @ documents.T  # [Q, B]
        base_queries, base_documents = self.base_embeddings
        base_scores = base_queries[torch.from_numpy(with_query)] @ base_documents[torch.from_numpy(rows)].T
        return anchor_loss(scores, base_scores)

    # ------------------------------------------------------------------ loop

    def train_step(self) -> dict:
        """One optimizer step over grad_accumulation micro-batches; returns the logged values."""
        config = self.config
        self.model.train()
        logged = {"loss": 0.0, "mse": 0.0, "contrastive": 0.0}
        if config.lambda_anchor:
            logged["anchor"] = 0.0
        for micro in range(config.grad_accumulation):
            rows = self.batch_rows(self.step * config.grad_accumulation + micro)
            sim_e, sim_l, embeddings = self.similarities(rows)
            loss, parts = biohicl_loss(sim_e, sim_l, config.lambda_con, config.beta, config.tau)
            if config.lambda_anchor:
                anchor = self.anchor(rows, embeddings)
                loss = loss + config.lambda_anchor * anchor
                parts = {**parts, "loss": float(loss.detach()), "anchor": float(anchor.detach())}
            (loss / config.grad_accumulation).backward()
            for key in logged:
                logged[key] += parts[key] / config.grad_accumulation
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad],
                                       config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"step": self.step, **logged, "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Spearman correlation of SimE and SimL over the held-out pairs (i < j)."""
        from scipy.stats import spearmanr

        rows = self.heldout_rows
        if len(rows) < 3:
            return {}
        self.model.eval()
        embeddings = torch.cat([self.embed(rows[i : i + 64]) for i in range(0, len(rows), 64)])
        sim_e = (embeddings @ embeddings.T).float().cpu()
        sim_l = mesh_similarity(self.labels[torch.from_numpy(rows)]).float().cpu()
        upper = torch.triu_indices(len(rows), len(rows), offset=1)
        rho = spearmanr(sim_e[upper[0], upper[1]].numpy(), sim_l[upper[0], upper[1]].numpy())[0]
        return {"heldout_spearman": float(rho), "heldout_pairs": int(upper.shape[1])}

    # ------------------------------------------------------------------ checkpoints and export

    def save_checkpoint(self) -> Path:
        """Adapter + optimizer + schedule + step, written to a temporary directory and renamed."""
        final = checkpoint_root(self.config.output_dir) / f"step-{self.step:07d}"
        with atomic_directory(final) as tmp:
            self.model.save_pretrained(tmp)
            torch.save({"step": self.step, "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict(), "history": self.history,
                        "rng": torch.get_rng_state(),  # dropout: a resumed run draws the same masks
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                        "config": asdict(self.config)}, tmp / "trainer_state.pt")
        for old in saved_checkpoints(self.config.output_dir)[: -self.config.keep_checkpoints]:
            shutil.rmtree(old)
        return final

    def load_latest_checkpoint(self) -> bool:
        """Restore the newest checkpoint, if any; True if one was restored."""
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        checkpoints = saved_checkpoints(self.config.output_dir)
        if not checkpoints:
            return False
        latest = checkpoints[-1]
        set_peft_model_state_dict(self.model, load_peft_weights(str(latest), device=str(self.device)))
        state = torch.load(latest / "trainer_state.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.history = state["step"], state["history"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return True

    def export(self) -> Path:
        """Merge the adapters and write a plain model directory with sentence-transformers' files."""
        out = Path(self.config.output_dir) / "model"
        # the base model's own length (if it names one), not the often shorter training truncation
        _, conventions = read_model_dir(Path(self.config.model))
        with atomic_directory(out) as tmp:
            self.model.merge_and_unload().save_pretrained(tmp)
            self.encoder.tokenizer.save_pretrained(tmp)
            write_model_dir_files(tmp, self.encoder.dim, self.encoder.pooling, self.encoder.normalize,
                                  conventions.get("max_length"))
        return out


def checkpoint_root(output_dir: str | os.PathLike) -> Path:
    """Where a run in `output_dir` keeps its checkpoints."""
    return Path(output_dir) / "checkpoints"


def saved_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The finished checkpoints of a run in `output_dir`, oldest first (none if there are none)."""
    root = checkpoint_root(output_dir)
    return sorted(root.glob("step-*")) if root.is_dir() else []


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up to the base rate over `warmup` steps, then cosine decay to 0 at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(config: TrainConfig, show_progress_bar: bool = True,
          on_step: Callable[[BioHiCLTrainer, dict], None] | None = None) -> TrainResult:
    """Run BioHiCL LoRA training as configured; returns the exported model's directory and history.

    `on_step(trainer, logged)` runs after every optimizer step (an evaluation hook of your own,
    early stopping by raising, ...). With `config.resume`, training continues from the newest
    checkpoint in `output_dir/checkpoints`; without it, an `output_dir` holding checkpoints is a
    ValueError (never a silent mix of two runs).
    """
    from tqdm.auto import tqdm

    earlier = saved_checkpoints(config.output_dir)
    if earlier and not config.resume:
        raise ValueError(f"{config.output_dir} holds checkpoints of an earlier run (newest: {earlier[-1].name}); "
                         "pass resume=True (--resume) to continue it, or choose another output_dir")
    trainer = BioHiCLTrainer(config)
    if not (config.resume and trainer.load_latest_checkpoint()):
        trainer.history.append({"step": 0, **trainer.evaluate()})
    with tqdm(total=trainer.total_steps, initial=trainer.step, desc="train", disable=not show_progress_bar) as bar:
        while trainer.step < trainer.total_steps:
            logged = trainer.train_step()
            if config.eval_every and trainer.step % config.eval_every == 0:
                logged.update(trainer.evaluate())
            trainer.history.append(logged)
            bar.set_postfix(loss=f"{logged['loss']:.4f}")
            bar.update(1)
            if on_step is not None:
                on_step(trainer, logged)
            if config.checkpoint_every and trainer.step % config.checkpoint_every == 0:
                trainer.save_checkpoint()
    trainer.history.append({"step": trainer.step, "final": True, **trainer.evaluate()})
    model_dir = trainer.export()
    write_bytes(Path(config.output_dir) / "history.json", json.dumps(trainer.history, indent=1).encode())
    return TrainResult(model_dir, trainer.step, trainer.history)

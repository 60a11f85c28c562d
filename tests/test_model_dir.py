import json

import pytest

from fastret.encode.model_dir import read_model_dir, read_pooling, write_model_dir_files


def plain_model_dir(path):
    path.mkdir()
    (path / "config.json").write_text("{}")
    return path


@pytest.mark.parametrize("pooling", ["mean", "cls", "last"])
@pytest.mark.parametrize("normalize, max_length", [(True, 128), (False, None)])
def test_what_is_written_reads_back(tmp_path, pooling, normalize, max_length):
    directory = plain_model_dir(tmp_path / "model")
    write_model_dir_files(directory, 32, pooling, normalize, max_length)
    transformer_dir, conventions = read_model_dir(directory)
    assert transformer_dir == directory
    expected = {"pooling": pooling, "normalize": normalize, "do_lower_case": False}
    if max_length is not None:
        expected["max_length"] = max_length
    assert conventions == expected
    assert json.loads((directory / "1_Pooling" / "config.json").read_text())["word_embedding_dimension"] == 32


def test_sentence_transformers_own_directory(minilm_path):
    _, conventions = read_model_dir(minilm_path)
    assert (conventions["pooling"], conventions["normalize"], conventions["max_length"]) == ("mean", True, 256)


def test_a_plain_directory_has_no_conventions_and_a_bad_one_is_named(tmp_path):
    directory = plain_model_dir(tmp_path / "plain")
    assert read_model_dir(directory) == (directory, {})
    with pytest.raises(ValueError, match="is not a Hugging Face model directory"):
        read_model_dir(tmp_path)
    with pytest.raises(ValueError, match="pooling must be one of mean, cls, last, got 'max'"):
        write_model_dir_files(directory, 8, "max", False, None)


def test_unsupported_pooling_is_reported_not_guessed(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(ValueError, match=r"pooling \['pooling_mode_max_tokens'\] is not supported"):
        read_pooling(config)
    config.write_text(json.dumps({"pooling_mode": "lasttoken"}))
    assert read_pooling(config) == "last"
    config.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_pooling(config)

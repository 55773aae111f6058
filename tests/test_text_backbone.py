"""The bundled MiniLM text encoder as a backbone: stages, freezing through the real module, the tokenizer
as preprocessing, equality with the sentence-transformers reference, and one-line errors offline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tlbench.adapt import ADAPTERS
from tlbench.backbones import BACKBONES
from tlbench.backbones.text_encoders import TextEncoder, bundled_folder
from tlbench.config import OptimConfig
from tlbench.data.text import encode_texts
from tlbench.errors import WeightsError
from tlbench.freeze import SCHEDULES

TEXTS = ["Real-time strategy game of ancient warfare", "email client with IMAP support", "numerical linear algebra library for physics"]


@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return BACKBONES.build({"family": "minilm", "max_length": 32}).eval()


def test_stages_are_the_embeddings_then_each_layer_and_cover_every_parameter_once(minilm):
    stages = minilm.stages()
    assert [type(s).__name__ for s in stages] == ["BertEmbeddings"] + ["BertLayer"] * 6
    owned = [id(p) for s in stages for p in s.parameters()]
    assert len(owned) == len(set(owned)) and set(owned) == {id(p) for p in minilm.parameters()}
    assert minilm.out_features == 384 and sum(p.numel() for p in minilm.parameters()) == 22_565_376


def test_preprocessing_tokenizes_bytes_to_ids_and_mask_of_max_length(minilm):
    rows = encode_texts([*TEXTS, "word " * 100])
    tokens = minilm.preprocessing(rows)
    assert tokens.dtype == torch.int64 and tokens.shape == (4, 2, 32)
    ids, mask = tokens[:, 0], tokens[:, 1]
    assert ids[:, 0].eq(101).all()  # [CLS]
    assert mask[3].sum() == 32 and ids[3, 31] == 102  # truncated, ends with [SEP]
    assert mask[0].sum() == ids[0].ne(0).sum() < 32  # padding is masked out
    assert torch.equal(minilm.preprocessing(tokens), tokens)  # already-tokenized input passes through
    with pytest.raises(ValueError, match="uint8 UTF-8 rows"):
        minilm.preprocessing(torch.zeros(2, 3, 4))
    assert repr(minilm.preprocessing) == "TextPreprocessing(model='all-MiniLM-L6-v2', max_length=32)"  # the feature-cache key


def test_features_of_a_text_do_not_depend_on_its_batch(minilm):
    """Mean pooling over real tokens only: padding added for a longer neighbour changes nothing."""
    with torch.no_grad():
        alone = minilm(minilm.preprocessing(encode_texts(TEXTS[:1])))
        batched = minilm(minilm.preprocessing(encode_texts([TEXTS[0], "word " * 100])))
    torch.testing.assert_close(alone[0], batched[0], atol=1e-5, rtol=1e-4)


def test_features_equal_the_sentence_transformers_reference(minilm):
    st = pytest.importorskip("sentence_transformers")
    reference = torch.as_tensor(st.SentenceTransformer(str(bundled_folder()), device="cpu").encode(TEXTS))
    with torch.no_grad():
        ours = minilm(minilm.preprocessing(encode_texts(TEXTS)))
    assert F.cosine_similarity(ours, reference).min() > 0.9999
    # and they carry meaning: the game is nearer a game than an email client
    game = minilm(minilm.preprocessing(encode_texts(["arcade shooter game with levels"]))).detach()
    assert F.cosine_similarity(game, ours).argmax() == 0


def test_random_init_differs_from_pretrained_and_is_the_same_every_time(minilm):
    first = BACKBONES.build({"family": "minilm", "weights": "none"})
    second = BACKBONES.build({"family": "minilm", "weights": "none"})
    name, weight = "net.encoder.layer.0.attention.self.query.weight", minilm.state_dict()["net.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(first.state_dict()[name], second.state_dict()[name])
    assert not torch.allclose(first.state_dict()[name], weight)


@pytest.mark.parametrize("schedule, trainable", [({"name": "freeze_first_k", "k": 3}, {3, 4, 5, 6}), ({"name": "linear_probe"}, set())])
def test_gradients_reach_only_the_unfrozen_stages_in_the_module(minilm, schedule, trainable):
    from tlbench.module import TransferModule

    backbone = BACKBONES.build({"family": "minilm", "max_length": 16})
    head = torch.nn.Linear(backbone.out_features, 3)
    adapter = ADAPTERS.build({"name": "source_only"}, num_classes=3, feature_dim=backbone.out_features)
    module = TransferModule(backbone, head, adapter, SCHEDULES.build(schedule), OptimConfig(), 3)
    module.apply_freezing(0)
    logits = module(encode_texts(TEXTS))
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for index, stage in enumerate(backbone.stages()):
        grads = [p.grad for p in stage.parameters()]
        if index in trainable:
            assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), index
        else:
            assert all(g is None for g in grads), index
    assert head.weight.grad is not None


def test_an_unknown_hub_model_offline_is_one_line(monkeypatch):
    monkeypatch.setenv("TLBENCH_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError, match="cannot be downloaded") as error:
        BACKBONES.build({"family": "hf_text", "model": "no-such-org/no-such-model"})
    assert "\n" not in str(error.value)
    with pytest.raises(WeightsError, match="no such folder"):
        BACKBONES.build({"family": "hf_text", "model": "/nonexistent/model"})


@pytest.mark.parametrize(
    "model_type, sizes, last",
    [
        ("distilbert", dict(n_layers=2, dim=32, hidden_dim=64, n_heads=2), "TransformerBlock"),
        ("bert", dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2), "BertPooler"),
    ],
)
def test_other_encoder_layouts_split_into_embeddings_layers_and_what_follows(model_type, sizes, last):
    """Any AutoModel: the layer list is found by itself; a pooler (kept by from_config here) becomes the last stage."""
    from transformers import AutoConfig, AutoModel

    from tlbench.backbones._stages import stages_from_groups
    from tlbench.backbones.text_encoders import text_stage_groups

    net = AutoModel.from_config(AutoConfig.for_model(model_type, **sizes))
    stages = stages_from_groups(net, text_stage_groups(net))  # raises unless every parameter is in exactly one stage
    assert "Embeddings" in type(stages[0]).__name__ and type(stages[-1]).__name__ == last
    assert len(stages) == 3 + (last == "BertPooler")

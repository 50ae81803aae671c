"""Pinned trajectories: each stage's logged loss, grad norm and final numbers on a tiny CPU run (fp32, one
thread, fixed seeds) as literals, so that a change meant to leave behaviour alone fails if a number moves.
"""

from __future__ import annotations

import html
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest.mock import ANY

import pytest

from peaufine.recipe import validate_recipe
from peaufine.rundir import read_metrics

# The same code on two CPUs differs in the last bits of float32 sums (other SIMD kernels): about 1e-7 of
# a value, and up to ~1e-6 absolute where a pinned number is a small difference of large ones (a GRPO
# loss of 1e-3 from advantages that sum to zero). DPO's margins and log-ratios are differences of summed
# log-probs of ~200 nats (float32: ~1e-5 absolute), times beta: they get MARGIN_ABS. A change to the
# code moves these numbers far more (a 1e-4 change of the lr fails the lr column itself).
REL, ABS, MARGIN_ABS = 1e-5, 1e-6, 1e-5
MARGIN_KEYS = {"reward_margin", "mean_log_ratio", "val_reward_margin", "final.validation.reward_margin"}
# every run: the CPU in fp32, a log row at every step, one seed
TRAIN = {"device": "cpu", "precision": "fp32", "log_every": 1, "seed": 0}
LORA = {"kind": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"}


# -- helpers ---------------------------------------------------------------------------------------------
def assert_trajectory(run: Path, expected: dict[str, list[float]]) -> None:
    """metrics.jsonl of `run` logs exactly the pinned steps, and each key's values along them."""
    rows = read_metrics(run / "metrics.jsonl")
    assert [row.get("step") for row in rows] == expected["step"], "the logged steps"
    for key, values in expected.items():
        # ANY marks a value that rounding noise decides (see its comment): the other steps are pinned
        pinned = [i for i, value in enumerate(values) if value is not ANY]
        got = [rows[i].get(key) for i in pinned]
        tolerance = MARGIN_ABS if key in MARGIN_KEYS else ABS
        assert got == pytest.approx([values[i] for i in pinned], rel=REL, abs=tolerance), key


def lookup(data: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def assert_numbers(data: dict[str, Any], expected: dict[str, float]) -> None:
    """The values at the dotted key paths of `data` (eval.json, a metrics row) are the pinned ones."""
    for key, value in expected.items():
        tolerance = MARGIN_ABS if key in MARGIN_KEYS else ABS
        assert lookup(data, key) == pytest.approx(value, rel=REL, abs=tolerance), key


def assert_pinned(
    run: Path, steps: dict[str, list[float]], final: dict[str, float], last_row: dict[str, float]
) -> None:
    """The run's trajectory, its eval.json numbers and its last metrics row (the final validation)."""
    assert_trajectory(run, steps)
    assert_numbers(json.loads((run / "eval.json").read_text(encoding="utf-8")), final)
    assert_numbers(read_metrics(run / "metrics.jsonl")[-1], last_row)


# -- the runs --------------------------------------------------------------------------------------------
def pretrain_recipe() -> dict[str, Any]:
    return {
        "stage": "pretrain",
        "model": {
            "source": "llama-tiny",
            "config": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "num_key_value_heads": 2,
            },
            "tokenizer": {"kind": "bpe", "vocab_size": 320},
        },
        "data": {
            "source": "world",
            "world": {"seed": 0, "size": "smoke", "documents": 60, "faq_documents": 10},
            "block_size": 32,
            "validation_fraction": 0.1,
        },
        "train": {**TRAIN, "max_steps": 5, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1},
        "eval": {"every": 5, "samples": 0},
    }


def sft_recipe(source: Path, adapter: dict[str, Any]) -> dict[str, Any]:
    return {
        "stage": "sft",
        "model": {"source": str(source), "adapter": adapter},
        "data": {
            "source": "world",
            "validation_fraction": 0.2,
            "max_length": 48,
            "packing": True,
            "replay": {"ratio": 0.25},
        },
        "train": {**TRAIN, "max_steps": 5, "batch_size": 8, "lr": 2e-3, "warmup_steps": 1},
        "eval": {"every": 5, "answers": 0, "transfer": {"few_shot": 1}},
    }


def sentiment_file(path: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for _ in range(64):
        label = rng.randint(0, 1)
        filler = " ".join(rng.choice(["a", "film", "plot", "fun"]) for _ in range(rng.randint(1, 4)))
        rows.append({"text": f"{filler} {'good' if label else 'bad'} {filler}", "label": label})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def classify_recipe(source: Path, data: Path) -> dict[str, Any]:
    return {
        "stage": "classify",
        "model": {"source": str(source)},
        "data": {"source": str(data), "max_length": 16, "validation_fraction": 0.25},
        "train": {**TRAIN, "max_steps": 5, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1},
        "eval": {"every": 5},
    }


# the world's rankings, adjacent pairs; the tiny tokenizer makes long answers, cut to max_length
PREFERENCES = {
    "source": "world",
    "validation_fraction": 0.15,
    "max_length": 96,
    "rankings": "adjacent",
    "anomalies": {"too_long": "truncate"},
}


def reward_recipe(source: Path) -> dict[str, Any]:
    return {
        "stage": "reward",
        "model": {"source": str(source)},
        "data": PREFERENCES,
        "train": {**TRAIN, "max_steps": 5, "batch_size": 8, "lr": 1e-3, "warmup_steps": 1},
        "eval": {"every": 5},
    }


def dpo_recipe(source: Path) -> dict[str, Any]:
    return {
        "stage": "dpo",
        "model": {"source": str(source), "adapter": LORA},
        "data": PREFERENCES,
        "method": {"dpo": {"loss": "sigmoid", "beta": 0.1}},
        "train": {**TRAIN, "max_steps": 5, "batch_size": 8, "lr": 2e-3, "warmup_steps": 1},
        "eval": {"every": 5, "answers": 0},
    }


def rl_recipe(
    source: Path, algorithm: str, adapter: dict[str, Any], rewards: list[dict[str, Any]], **rl: Any
) -> dict[str, Any]:
    return {
        "stage": "rl",
        "model": {"source": str(source), "adapter": adapter},
        "data": {"source": "world"},
        "method": {
            "rl": {
                "algorithm": algorithm,
                "rewards": rewards,
                "prompts_per_step": 2,
                "group_size": 4,
                "max_new_tokens": 6,
                "eval_prompts": 4,
                **rl,
            }
        },
        "train": {**TRAIN, "max_steps": 3, "lr": 1e-3, "checkpoint_every": 3},
        "eval": {"every": 3},
    }


def grpo_recipe(sft: Path, reward: Path) -> dict[str, Any]:
    """GRPO with LoRA, two passes over each step's rollouts (old log-probs from the sampling policy)."""
    rewards = [
        {"source": "exact_answer"},
        {"source": "answer_format", "weight": 0.5},
        {"source": str(reward), "weight": 0.5},
    ]
    return rl_recipe(sft, "grpo", LORA, rewards, passes=2)


def ppo_recipe(sft: Path, reward: Path) -> dict[str, Any]:
    """PPO with full fine-tuning (a frozen copy is the reference), two mini-batches, adaptive KL."""
    rewards = [{"source": str(reward)}, {"source": "answer_format", "weight": 0.5}]
    return rl_recipe(
        sft, "ppo", {"kind": "none"}, rewards, mini_batches=2, kl_control="adaptive", target_kl=0.5
    )


# -- fixtures: the chain, made here under one thread -----------------------------------------------------
# pretrain on the synthetic world -> sft (full) -> reward, dpo, grpo, ppo; sft LoRA and classify start from
# the pretrain run. The pins were printed from these runs with repr(); a deliberate numerical change
# updates them in the same commit, saying why.
@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread while this module runs: the numbers must not depend on the core count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pinned")


@pytest.fixture(scope="module")
def pretrain_run(one_thread: None, root: Path) -> Path:
    from peaufine.stages.pretrain import run_pretrain

    run_pretrain(validate_recipe(pretrain_recipe()), root / "pretrain")
    return root / "pretrain"


@pytest.fixture(scope="module")
def sft_run(pretrain_run: Path, root: Path) -> Path:
    from peaufine.stages.sft import run_sft

    run_sft(validate_recipe(sft_recipe(pretrain_run, {"kind": "none"})), root / "sft")
    return root / "sft"


@pytest.fixture(scope="module")
def reward_run(sft_run: Path, root: Path) -> Path:
    from peaufine.stages.reward import run_reward

    run_reward(validate_recipe(reward_recipe(sft_run)), root / "reward")
    return root / "reward"


# -- the pins --------------------------------------------------------------------------------------------
# STEPS: metrics.jsonl, one value per logged step (a row every step); FINAL: eval.json, at dotted key
# paths; LAST_ROW: the last row's final validation. rl rows are rl steps and log no grad norm.


# pretrain: a 1-layer llama-tiny (width 32, BPE 320) from scratch on 70 world documents, 5 steps of
# 8 blocks of 32 tokens, cosine schedule
PRETRAIN_STEPS = {
    "step": [1, 2, 3, 4, 5],
    "lr": [0.003, 0.002604594154601839, 0.0016499999999999998, 0.000695405845398161, 0.00030000000000000003],
    "train_loss": [
        5.787234306335449,
        5.740599155426025,
        5.678079128265381,
        5.5813069343566895,
        5.51279878616333,
    ],
    "grad_norm": [
        0.6540626287460327,
        0.8059442043304443,
        0.9200050830841064,
        1.0427252054214478,
        1.0485023260116577,
    ],
    "tokens_seen": [256, 512, 768, 1024, 1280],
}
PRETRAIN_FINAL = {
    "steps": 5,
    "tokens_seen": 1280,
    "train_tokens": 12783,
    "val_tokens": 1462,
    "final_train_loss": 5.51279878616333,
    "val_loss": 5.50738639831543,
    "best_val_loss": 5.50738639831543,
}
PRETRAIN_LAST_ROW = {"val_loss": 5.50738639831543}


def test_pretrain_trajectory(pretrain_run: Path) -> None:
    assert_pinned(pretrain_run, PRETRAIN_STEPS, PRETRAIN_FINAL, PRETRAIN_LAST_ROW)


# sft, full fine-tuning of the pretrain run on the world's questions, packed, a quarter of each batch
# replayed pretraining text; before/after task loss, forgetting, the few-shot baseline
SFT_STEPS = {
    "step": [1, 2, 3, 4, 5],
    "lr": [0.002, 0.0017363961030678928, 0.0011, 0.0004636038969321073, 0.0002],
    # the task's own loss; the mix with the replayed quarter (what was train_loss before issue 13) is
    # train_loss_all, and the replay's part replay_loss
    "train_loss": [
        5.667540084484012,
        5.564109802246094,
        5.400379725864956,
        5.359553410456731,
        5.3439493486958165,
    ],
    "train_loss_all": [
        5.562049141765511,
        5.445203799293155,
        5.359433669452519,
        5.326646592881945,
        5.2605341796875,
    ],
    "replay_loss": [
        5.5137926466921545,
        5.431289348196476,
        5.344187635056516,
        5.290239374688331,
        5.233024434840425,
    ],
    "grad_norm": [
        1.2158907651901245,
        1.0366171598434448,
        0.9031230211257935,
        0.9843889474868774,
        0.8496893644332886,
    ],
    "tokens_seen": [384, 768, 1152, 1536, 1920],
}
SFT_FINAL = {
    "steps": 5,
    "tokens_seen": 1920,
    "examples.train.examples": 27,
    "examples.train.target_tokens": 155,
    "task_val_loss.before": 5.587447393508184,
    "task_val_loss.after": 5.30667477562314,
    "forgetting.loss_before": 5.506810167100695,
    "forgetting.loss_after": 5.258642747667101,
    "transfer.task_val_loss.base_few_shot": 5.604722522553944,
    "overfitting.final_val_loss": 5.306675138927641,
}
SFT_LAST_ROW = {"val_loss": 5.306675138927641}


def test_sft_full_fine_tuning_trajectory(sft_run: Path) -> None:
    assert_pinned(sft_run, SFT_STEPS, SFT_FINAL, SFT_LAST_ROW)


def test_sft_with_replay_judges_overfitting_on_the_task_loss(sft_run: Path) -> None:
    # the run replays a quarter of each batch: every row logs the task's loss as train_loss, the replay's
    # and the mix's beside it, and the overfitting verdict and gap rest on the task's alone
    rows = [row for row in read_metrics(sft_run / "metrics.jsonl") if "train_loss" in row]
    assert all(isinstance(row.get(key), float) for row in rows for key in ("replay_loss", "train_loss_all"))
    overfitting = json.loads((sft_run / "eval.json").read_text(encoding="utf-8"))["overfitting"]
    task, mix = rows[-1]["train_loss"], rows[-1]["train_loss_all"]
    assert overfitting["final_train_loss"] == task
    assert overfitting["generalisation_gap"] == pytest.approx(overfitting["final_val_loss"] - task)
    # the negative control: a gap taken on the mix is another number
    assert abs((overfitting["final_val_loss"] - mix) - overfitting["generalisation_gap"]) > 1e-3


def test_sft_verdicts_on_a_few_examples_say_not_meaningful_everywhere(sft_run: Path) -> None:
    # 7 validation examples and a few blocks of general text: eval.json, the terminal and the report all
    # say "not meaningful" with the n of each verdict
    from rich.console import Console

    from peaufine.report.pages.write import write_report
    from peaufine.report.terminal import sft_summary
    from peaufine.results import stage_results

    evaluation = json.loads((sft_run / "eval.json").read_text(encoding="utf-8"))
    assert evaluation["examples"]["validation"]["examples"] == 7
    checks = ("overfitting", "transfer")
    for key in checks:
        block = evaluation[key]
        assert (block["examples"], block["meaningful"]) == (7, False), key
        assert block["verdict"].startswith("not meaningful: it rests on 7 validation examples"), key
    # forgetting rests on the blocks of general text it measured: its verdict says how many
    forgetting = evaluation["forgetting"]
    blocks = forgetting["blocks"]
    assert blocks > 0 and f"{blocks} blocks of general text" in forgetting["verdict"]
    assert forgetting["meaningful"] == (blocks >= 20)
    console = Console(width=400, record=True)
    console.print(sft_summary(stage_results(evaluation), sft_run))
    printed = console.export_text()
    for key in checks:
        assert f"{key}: not meaningful: it rests on 7 validation examples" in printed, key
    page = html.unescape(write_report(sft_run).read_text(encoding="utf-8"))
    for key in checks:
        assert evaluation[key]["verdict"] in page, key
    assert f"{blocks} blocks of general text" in page


# sft, LoRA (r 4, all linear layers) on the same data as the full run: the same first loss, other
# gradients
SFT_LORA_STEPS = {
    "step": [1, 2, 3, 4, 5],
    "lr": [0.002, 0.0017363961030678928, 0.0011, 0.0004636038969321073, 0.0002],
    "train_loss": [
        5.667540084484012,
        5.635333321311257,
        5.571543230329241,
        5.587279099684495,
        5.569143972089214,
    ],
    "train_loss_all": [
        5.562049141765511,
        5.519762602306548,
        5.49880863160126,
        5.5626319345801765,
        5.5079990234375,
    ],
    "replay_loss": [
        5.5137926466921545,
        5.5062385721409575,
        5.471725788522274,
        5.535360782704455,
        5.487833875290891,
    ],
    "grad_norm": [
        0.3494791090488434,
        0.13729073107242584,
        0.31926000118255615,
        0.6280413269996643,
        0.2936433255672455,
    ],
    "tokens_seen": [384, 768, 1152, 1536, 1920],
}
SFT_LORA_FINAL = {
    "steps": 5,
    "tokens_seen": 1920,
    "examples.train.examples": 27,
    "examples.train.target_tokens": 155,
    "task_val_loss.before": 5.587447393508184,
    "task_val_loss.after": 5.531945364815848,
    "forgetting.loss_before": 5.506810167100695,
    "forgetting.loss_after": 5.497993638780382,
    "transfer.task_val_loss.base_few_shot": 5.604722522553944,
    "overfitting.final_val_loss": 5.53194572812035,
}
SFT_LORA_LAST_ROW = {"val_loss": 5.53194572812035}


def test_sft_lora_trajectory(pretrain_run: Path, tmp_path: Path) -> None:
    from peaufine.stages.sft import run_sft

    run_sft(validate_recipe(sft_recipe(pretrain_run, LORA)), tmp_path / "run")
    assert_pinned(tmp_path / "run", SFT_LORA_STEPS, SFT_LORA_FINAL, SFT_LORA_LAST_ROW)


# classify: a sequence classifier on the pretrain run's model, 64 generated sentiment lines
CLASSIFY_STEPS = {
    "step": [1, 2, 3, 4, 5],
    "lr": [0.003, 0.002604594154601839, 0.0016499999999999998, 0.000695405845398161, 0.00030000000000000003],
    "train_loss": [
        0.6494038701057434,
        0.6623772382736206,
        0.8192785382270813,
        0.7542839050292969,
        0.5563546419143677,
    ],
    "grad_norm": [
        0.9790513515472412,
        1.8641051054000854,
        2.250049352645874,
        2.0544519424438477,
        2.423790216445923,
    ],
    "tokens_seen": [88, 208, 314, 422, 508],
}
CLASSIFY_FINAL = {"steps": 5, "validation.accuracy": 0.4375, "validation.macro_f1": 0.37662337662337664}
CLASSIFY_LAST_ROW = {"val_loss": 0.7960504293441772}


def test_classify_trajectory(pretrain_run: Path, tmp_path: Path) -> None:
    from peaufine.stages.classify import run_classify

    data = sentiment_file(tmp_path / "sentiment.jsonl")
    run_classify(validate_recipe(classify_recipe(pretrain_run, data)), tmp_path / "run")
    assert_pinned(tmp_path / "run", CLASSIFY_STEPS, CLASSIFY_FINAL, CLASSIFY_LAST_ROW)


# reward: Bradley-Terry on the world annotator's adjacent pairs, from the full sft run
REWARD_STEPS = {
    "step": [1, 2, 3, 4, 5],
    "lr": [0.001, 0.0008681980515339464, 0.00055, 0.00023180194846605365, 0.0001],
    "train_loss": [
        0.6943762567267571,
        0.6936688687603991,
        0.6940500553876194,
        0.6967953858849636,
        0.6977330415089751,
    ],
    "grad_norm": [
        0.17833344638347626,
        0.44518154859542847,
        0.06118835508823395,
        0.22608111798763275,
        0.26352033019065857,
    ],
    "tokens_seen": [947, 1732, 2645, 3576, 4505],
    "accuracy": [
        0.6250000670552294,
        0.5000000447034862,
        0.5000000447034862,
        0.5000000447034862,
        0.5000000447034862,
    ],
    "reward_margin": [
        -0.002348533971520303,
        -0.000985736144322076,
        -0.0017475794179784906,
        -0.007109467829583158,
        -0.008912091208970022,
    ],
    "reward_mean": [
        -0.010304996743798256,
        -0.020028134807944298,
        -0.0036501747090369463,
        0.005546862259507179,
        0.017929337918758392,
    ],
}
REWARD_FINAL = {
    "steps": 5,
    "best_val_loss": 0.6904941411253996,
    "pairs.train.pairs": 261,
    "before.validation.accuracy": 0.6,
    "before.validation.mean_margin": 0.0013422698196437625,
    "validation.accuracy": 0.6444444444444445,
    "validation.mean_margin": 0.005494625742236773,
    "heldout.accuracy": 0.6388888888888888,
    "heldout.mean_margin": 0.00622004306771689,
}
REWARD_LAST_ROW = {
    "val_loss": 0.6904941411253996,
    "val_accuracy": 0.6444444963667153,
    "val_reward_margin": 0.005494626314681831,
}


def test_reward_trajectory(reward_run: Path) -> None:
    assert_pinned(reward_run, REWARD_STEPS, REWARD_FINAL, REWARD_LAST_ROW)


# dpo: sigmoid DPO (beta 0.1) with LoRA on the sft run, reference log-probs precomputed; at step 1
# the policy is the reference, so the loss is log 2 and the margins 0
DPO_STEPS = {
    "step": [1, 2, 3, 4, 5],
    "lr": [0.002, 0.0017363961030678928, 0.0011, 0.0004636038969321073, 0.0002],
    "train_loss": [
        0.6931472237793936,
        0.6897870415322209,
        0.6966329334159453,
        0.6959965792892324,
        0.6921512748093173,
    ],
    "grad_norm": [
        0.08210691064596176,
        0.17624403536319733,
        0.16959495842456818,
        0.09519707411527634,
        0.07173869013786316,
    ],
    "tokens_seen": [947, 1732, 2645, 3576, 4505],
    # at step 1 the policy is the reference: every margin is rounding noise (|margin| ~ 1e-8), so the
    # share of pairs with chosen > rejected there depends on the CPU's kernels (0.0 on one machine,
    # 0.125 on another), and only the steps after it are pinned
    "accuracy": [ANY, 1.0, 0.5000000447034862, 0.5000000447034862, 0.6250000670552294],
    "reward_margin": [
        0.0,
        0.006736136443086651,
        -0.0068046207870316976,
        -0.0055374624015740994,
        0.002142857247630939,
    ],
    "mean_log_ratio": [
        0.0,
        -0.010225535514237613,
        -0.10756011948347804,
        -0.10016895682626706,
        -0.08000493526488156,
    ],
    "logp_chosen": [
        -157.73667322019776,
        -29.856756082579857,
        -213.70918021852853,
        -207.53101822918762,
        -164.1578161810527,
    ],
    "logp_rejected": [
        -222.25471295444447,
        -244.66144494184525,
        -131.23601169800827,
        -133.54306063312654,
        -190.31019963682888,
    ],
}
DPO_FINAL = {
    "steps": 5,
    "pairs.train.pairs": 261,
    "before.likelihood_accuracy_validation": 0.42222222787362595,
    "before.likelihood_accuracy_heldout": 0.33333337306976557,
    "after.likelihood_accuracy_validation": 0.46666668044196324,
    "after.likelihood_accuracy_heldout": 0.33333337306976557,
    "final.validation.loss": 0.6908424657721498,
    "final.validation.accuracy": 0.6444444589261664,
    "final.validation.reward_margin": 0.004764216075251329,
    "final.heldout.loss": 0.6904951397873048,
}
DPO_LAST_ROW = {"val_loss": 0.6908424627387904, "val_reward_margin": 0.0047642161857906744}


def test_dpo_trajectory(sft_run: Path, tmp_path: Path) -> None:
    from peaufine.stages.dpo import run_dpo

    run_dpo(validate_recipe(dpo_recipe(sft_run)), tmp_path / "run")
    assert_pinned(tmp_path / "run", DPO_STEPS, DPO_FINAL, DPO_LAST_ROW)


# grpo: LoRA on the sft run, 2 prompts x 4 samples a step, two passes per step; rewards: exact answer,
# answer format and the reward run (a reward model)
GRPO_STEPS = {
    "step": [1, 2, 3],
    "lr": [0.001, 0.001, 0.001],
    "train_loss": [-0.0010943223411838214, -0.0009770008424917858, -0.0009649175529678663],
    "reward_mean": [0.5416519641876221, 0.47404348850250244, 0.5257452726364136],
    "reward_min": [0.526397168636322, 0.03837215155363083, 0.514450192451477],
    "reward_max": [0.5588371753692627, 0.5585329532623291, 0.5375486612319946],
    "kl": [0.0, 0.008212029933929443, -0.04212069511413574],
    "entropy": [5.691446781158447, 5.6894850730896, 5.661622524261475],
    "ratio": [1.0003680785497029, 1.0002442200978596, 0.9993200699488322],
    "clip_fraction": [0.0, 0.0, 0.0],
    "kl_coef": [0.04, 0.04, 0.04],
    "response_length": [6.0, 6.0, 6.0],
    "kl_per_token": [5.281219879786174e-06, 6.977468729019165e-05, 0.0006498495737711588],
}
GRPO_FINAL = {
    "steps": 3,
    "prompts.train": 24,
    "before.reward_sampled": 0.4792973475996405,
    "before.reward_greedy": 0.02131305681541562,
    "after.reward_sampled": 0.5135227114660665,
    "after.reward_greedy": 0.02131305681541562,
    "after.kl_to_reference": 0.03420984745025635,
    "after.response_length": 6.0,
}
GRPO_LAST_ROW = {
    "val_reward_sampled": 0.5135227114660665,
    "val_reward_greedy": 0.02131305681541562,
    "val_kl": 0.03420984745025635,
}


def test_grpo_trajectory(sft_run: Path, reward_run: Path, tmp_path: Path) -> None:
    from peaufine.stages.rl import run_rl

    run_rl(validate_recipe(grpo_recipe(sft_run, reward_run)), tmp_path / "run")
    assert_pinned(tmp_path / "run", GRPO_STEPS, GRPO_FINAL, GRPO_LAST_ROW)


# ppo: full fine-tuning of the sft run with a value head, two mini-batches a step, adaptive KL;
# rewards: the reward run and answer format
PPO_STEPS = {
    "step": [1, 2, 3],
    "lr": [0.001, 0.001, 0.001],
    "train_loss": [0.008585651715596512, 0.0069189866383870535, 0.006411780913670853],
    "reward_mean": [0.5833039283752441, 0.5154858827590942, 0.5580916404724121],
    "reward_min": [0.552794337272644, 0.10260400176048279, 0.5289003849029541],
    "reward_max": [0.6176744103431702, 0.6170658469200134, 0.5827678442001343],
    "kl": [0.0, -0.0050392746925354, -0.08183139562606812],
    "entropy": [5.691446781158447, 5.697112560272217, 5.725046157836914],
    "ratio": [1.0024837255477905, 1.0020667711893718, 0.9998212258021036],
    "clip_fraction": [0.0, 0.0, 0.0],
    "kl_coef": [0.0399936, 0.039987201023999996, 0.03998080307183616],
    "response_length": [6.0, 6.0, 6.0],
    "value_loss": [0.12706579764684042, 0.09196322659651439, 0.08522595465183258],
    "value_clip_fraction": [0.0, 0.0, 0.0],
}
PPO_FINAL = {
    "steps": 3,
    "prompts.train": 24,
    "before.reward_sampled": 0.521094695199281,
    "before.reward_greedy": 0.04262611363083124,
    "after.reward_sampled": 0.5595629236195236,
    "after.reward_greedy": 0.5197765664197505,
    "after.kl_to_reference": 0.08430203795433044,
    "after.response_length": 6.0,
}
PPO_LAST_ROW = {
    "val_reward_sampled": 0.5595629236195236,
    "val_reward_greedy": 0.5197765664197505,
    "val_kl": 0.08430203795433044,
}


def test_ppo_trajectory(sft_run: Path, reward_run: Path, tmp_path: Path) -> None:
    from peaufine.stages.rl import run_rl

    run_rl(validate_recipe(ppo_recipe(sft_run, reward_run)), tmp_path / "run")
    assert_pinned(tmp_path / "run", PPO_STEPS, PPO_FINAL, PPO_LAST_ROW)

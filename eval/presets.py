"""``eval.preset``: Qwen's published generation settings for Qwen3-VL, or greedy decoding.

``greedy`` (the default) compares checkpoints on one deterministic answer each. The two Qwen
presets reproduce the settings Qwen states it evaluated with; their sampled answers vary with
the seed, so use them with ``samples_per_item`` > 1 to see the spread.

Source of every value: QwenLM/Qwen3-VL, README.md, section "Evaluation Reproduction" ->
"Generation Hyperparameters" (at commit 96588727e44c78b25ba03ea03b8e12f7e64fd0da, 2026-01-30;
the Thinking temperature was set to 0.6 there by commit c9c87ce, 2025-10-09). The same README
section names vLLM as the inference runtime and VLMEvalKit / lmms-eval as the frameworks.
Where Qwen's own scripts differ, the README wins and the difference is noted.

Per benchmark: Qwen's MMMU script (QwenLM/Qwen3-VL evaluation/mmmu/run_mmmu.py,
``build_mmmu_prompt``) gives every image ``min_pixels = 1280*28*28`` and
``max_pixels = 5120*28*28``; the presets set that budget on MMMU tasks (a task's own
``vision`` keys in the config still win). Its prompts and image layout are the tasks
``mmmu_val_qwen`` / ``mmmu_dev_qwen`` (a task of its own, so its scores never mix with
``mmmu_val``'s on the leaderboard). Qwen's evaluation folder has no script for MathVista,
DocVQA, RefCOCO or ScreenSpot, so those keep this harness's prompts and budgets.
"""

from __future__ import annotations

PRESETS = ("greedy", "qwen3vl-instruct", "qwen3vl-thinking")

GENERATION = {
    "greedy": {"do_sample": False},
    "qwen3vl-instruct": {
        "do_sample": True,          # README: export greedy='false'
        "temperature": 0.7,         # README: export temperature=0.7
        "top_p": 0.8,               # README: export top_p=0.8
        "top_k": 20,                # README: export top_k=20
        "repetition_penalty": 1.0,  # README: export repetition_penalty=1.0
        "presence_penalty": 1.5,    # README: export presence_penalty=1.5
        "max_new_tokens": 32768,    # README: export out_seq_length=32768
        "seed": 3407,               # README: export seed=3407
    },
    "qwen3vl-thinking": {
        "do_sample": True,          # README: export greedy='false'
        # README: export temperature=0.6 (evaluation/mmmu/infer_think.sh passes 1.0; earlier
        # README versions said 1.0, then 0.8)
        "temperature": 0.6,
        "top_p": 0.95,              # README: export top_p=0.95
        "top_k": 20,                # README: export top_k=20
        "repetition_penalty": 1.0,  # README: export repetition_penalty=1.0
        "presence_penalty": 0.0,    # README: export presence_penalty=0.0
        "max_new_tokens": 40960,    # README: export out_seq_length=40960
        "seed": 1234,               # README: export seed=1234
    },
}

# evaluation/mmmu/run_mmmu.py: MIN_PIXELS = 1280*28*28, MAX_PIXELS = 5120*28*28 per image.
TASK_VISION = {"mmmu": {"min_pixels": 1280 * 28 * 28, "max_pixels": 5120 * 28 * 28}}


def check_preset(name: str) -> None:
    if name not in PRESETS:
        raise ValueError(f"preset {name!r}: use one of {', '.join(PRESETS)}")


def apply_generation(name: str, gen, defaults) -> list[str]:
    """Set the preset's values on ``gen`` where it still holds the default (``defaults``, a
    fresh GenerationConfig): a generation key the user set to another value wins. Returns the
    keys the user's values kept from the preset."""
    check_preset(name)
    kept = []
    for key, value in GENERATION[name].items():
        if getattr(gen, key) == getattr(defaults, key):
            setattr(gen, key, value)
        elif getattr(gen, key) != value:
            kept.append(key)
    return kept


def task_vision(name: str, task_name: str) -> dict:
    """The preset's vision budget for a task (its family: the task name's first part)."""
    if name == "greedy":
        return {}
    family = task_name.split("_")[0]
    return dict(TASK_VISION.get(family, {}))

"""SFT from the best actions found by search (rejection sampling / expert iteration), with TRL.

`explore` runs every action plan through the real graph and scores it (Eq. 3); `decisions` turns
the explored plans into states with the value of each next action. The policy is trained here on
the best action at each state: a completion given the conversation before it (TRL
prompt-completion format, loss on the completion only), with LoRA on the top layers. The same
labels feed DPO (`preference.py`) and GRPO (`grpo.py`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def lora_config(top_layers: int | None, n_layers: int, r: int = 16):
    """PEFT LoRA on every projection of the top `top_layers` decoder layers (None: no LoRA, a
    full fine-tune). Measured on these two cores (SmolLM2-135M, batch 8 x 220 tokens, one run):
    a full fine-tune step 14.9 s, LoRA on all 30 layers 22.3 s, LoRA on the top 6 layers 6.5 s,
    the forward pass alone 4.5 s: the backward pass stops at the lowest adapted layer."""
    if not top_layers:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=2 * r,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
        layers_to_transform=list(range(max(0, n_layers - top_layers), n_layers)),
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )


def choice_token_rows(rows: list[dict], tokenizer) -> list[dict]:
    """Prompt-completion rows that carry `allowed` (the valid continuations of PREFILL at that
    state, `graphs.policy.completions`) as TRL pre-tokenized rows (`input_ids`, `completion_mask`)
    whose loss is on the completion tokens where constrained decoding has a choice: the tokens it
    forces (the prefill, a tool's argument template, the request words, the brackets, EOS) carry no
    decision, and in a row of about 500 tokens they outnumber the deciding tokens ten to one.
    Tokenized as TRL would (the chat template; the prompt with its generation prompt a prefix of the
    whole), each completion checked against the trie the decoder walks (`llm.decoding.token_trie`)."""
    from mma_agent.graphs.policy import PREFILL
    from mma_agent.llm.decoding import token_trie

    def ids(messages: list[dict], **kw) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kw)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prefill = tokenizer(PREFILL, add_special_tokens=False)["input_ids"]
    out = []
    for row in rows:
        prompt, whole = ids(row["prompt"], add_generation_prompt=True), ids(row["prompt"] + row["completion"])
        text = row["completion"][0]["content"]
        body = [*tokenizer(text.removeprefix(PREFILL), add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
        if whole[: len(prompt)] != prompt or whole[len(prompt) : len(prompt) + len(prefill) + len(body)] != prefill + body:
            msg = f"the chat template does not render {text!r} as the prefill and the completion's tokens; cannot mask by choice"
            raise ValueError(msg)
        node, mask = token_trie(tokenizer, row["allowed"]), [0] * (len(prompt) + len(prefill))
        for tok in body:
            if tok not in node:
                msg = f"completion {text!r} is not one of the continuations allowed at its state"
                raise ValueError(msg)
            mask.append(int(len(node) > 1))
            node = node[tok]
        out.append({"input_ids": whole, "completion_mask": mask + [0] * (len(whole) - len(mask))})
    return out


def train_sft(
    rows: list[dict],
    base_model: str,
    out_dir: Path,
    *,
    max_steps: int = 60,
    lr: float = 5e-5,
    batch_size: int = 4,
    seed: int = 0,
    lora_layers: int | None = None,
    **config_overrides,
) -> Path:
    """Fine-tune with TRL's SFTTrainer (LoRA on the top `lora_layers` layers, merged into the
    saved policy, or a full fine-tune); checkpoints, resumes from the last one. Rows that carry
    `allowed` train on the tokens where constrained decoding chooses (`choice_token_rows`). Any other
    `SFTConfig` field passes through `config_overrides` (e.g. num_train_epochs with max_steps=-1)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    out_dir = Path(out_dir)
    config = SFTConfig(
        **{
            "output_dir": str(out_dir / "checkpoints"),
            "max_steps": max_steps,
            "learning_rate": lr,
            "per_device_train_batch_size": batch_size,
            "gradient_accumulation_steps": 1,
            "logging_steps": min(5, max_steps),
            "save_strategy": "steps",
            "save_steps": max(1, min(20, max_steps // 2)),
            "save_total_limit": 2,
            "report_to": [],
            "use_cpu": True,
            "bf16": False,
            "max_length": 1024,
            "completion_only_loss": True,
            "seed": seed,
            "lr_scheduler_type": "cosine",
            "warmup_steps": 5,
            # TRL's default recomputes activations, and with LoRA makes the backward pass run through
            # every layer (activation_checkpointing: the name transformers 5 gives gradient checkpointing)
            "activation_checkpointing": False,
            **config_overrides,
        }
    )
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model)
    if rows and all("allowed" in r for r in rows):  # loss on the tokens where constrained decoding chooses
        rows = choice_token_rows(rows, tok)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tok,
        peft_config=lora_config(lora_layers, model.config.num_hidden_layers),
    )
    return train_and_save(trainer, tok, out_dir, "SFT on best actions", {"train loss (completion tokens)": "loss"})


def train_and_save(trainer, tok, out_dir: Path, title: str, curves: dict[str, str]) -> Path:
    """Train (resuming from the newest checkpoint under out_dir/checkpoints, if any), then save the
    policy folder, the log history and a training-curve plot beside it. Shared by SFT, DPO and GRPO."""
    from mma_agent.plots import line_plot

    resume = _checkpoints_for(trainer, tok, out_dir)
    trainer.train(resume_from_checkpoint=True if resume else None)
    final = out_dir / "policy"
    model = trainer.model
    if hasattr(model, "merge_and_unload"):  # LoRA: the policy folder holds the merged model, loadable as transformers:<folder>
        model = model.merge_and_unload()
    model.save_pretrained(str(final))
    tok.save_pretrained(str(final))
    log_history = trainer.state.log_history
    (out_dir / "log_history.json").write_text(json.dumps(log_history, indent=1))
    series = {}
    for label, key in curves.items():
        pts = [(h["step"], h[key]) for h in log_history if key in h]
        if pts:
            series[label] = ([s for s, _ in pts], [v for _, v in pts])
    if series:
        line_plot(series, out_dir / "training-curve.png", xlabel="step", ylabel="value", title=title)
    return final


# the trainer's arguments that a run may change and still continue its checkpoints: a larger
# budget continues training; where and how often it logs and saves changes no weight
RESUMABLE_ARGS = ("output_dir", "logging_dir", "max_steps", "save_steps", "logging_steps", "save_total_limit")


def _checkpoints_for(trainer, tok, out_dir: Path) -> bool:
    """Whether out_dir holds checkpoints of this very training (the same rows, base model and
    arguments but the budget): resume them. Checkpoints of other inputs (rows from another prompt
    format, another base) are removed with a warning, never resumed: resuming them would save the
    old policy as the new one. The inputs' digest is kept beside the checkpoints."""
    import shutil

    from mma_agent.util import atomic_write_text, json_digest

    args = {k: v for k, v in trainer.args.to_dict().items() if k not in RESUMABLE_ARGS}
    key = json_digest([trainer.train_dataset.to_list(), tok.name_or_path, args])
    stamp, checkpoints = out_dir / "inputs-digest.txt", out_dir / "checkpoints"
    have = any(checkpoints.glob("checkpoint-*"))
    if have and (not stamp.is_file() or stamp.read_text().strip() != key):
        log.warning("%s holds checkpoints of other training inputs: removed, training starts over", checkpoints)
        shutil.rmtree(checkpoints)
        have = False
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stamp, key + "\n")
    return have

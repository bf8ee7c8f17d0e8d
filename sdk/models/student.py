"""What a student folder is, decided in one place.

A trained student is saved (sdk/train/common.save_student) in one of three shapes:

  full      config.json + weights: AutoModelForCausalLM.from_pretrained(folder)
  merged    a LoRA adapter merged into its base: like full, with adapter/ and base/ kept beside it
  adapter   adapter_config.json + adapter weights at the top, the base model in base/ (train.lora.merge false):
            peft's AutoPeftModelForCausalLM.from_pretrained(folder)

Evaluation, forgetting, training the next iteration, finalize, the report and RunResult all go through
`student_kind` and `load_student_model`, so an adapter is never mistaken for "no student".
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from sdk.errors import ModelError

Kind = Literal["full", "merged", "adapter"]


def student_kind(folder: Path | str | None) -> Optional[Kind]:
    """The shape of a student folder, or None when it holds no student."""
    if folder is None:
        return None
    folder = Path(folder)
    if (folder / "config.json").is_file():
        return "merged" if (folder / "adapter" / "adapter_config.json").is_file() else "full"
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    return None


def load_student_model(folder: Path | str, merge_adapter: bool = True):
    """(model, tokenizer) from a student folder of any shape.

    An adapter is loaded on its base and, with merge_adapter (the default: evaluation and generation),
    merged in memory so it runs as fast as full weights; the folder is not changed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    kind = student_kind(folder)
    if kind is None:
        raise ModelError(
            f"{folder} holds no student: neither config.json (full weights) nor adapter_config.json (a LoRA adapter)"
        )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "adapter":
        from peft import AutoPeftModelForCausalLM, PeftModel

        if (
            folder / "base" / "config.json"
        ).is_file():  # the base travels with the adapter, even if the run folder moved
            model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder / "base"), str(folder))
        else:
            model = AutoPeftModelForCausalLM.from_pretrained(folder)
        model = model.merge_and_unload() if merge_adapter else model
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    import torch

    if torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer

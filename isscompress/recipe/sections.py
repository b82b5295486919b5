"""The recipe's sections: pydantic models that reject unknown keys at every depth and check each value, so that a
recipe is whole before any work starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, get_args

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationInfo, field_validator,
                      model_validator)


class Section(BaseModel):
    # numbers are finite (``.inf``/``.nan`` would kill every unit or poison every weight)
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _true_is_not_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML's true/false would otherwise pass as 1 and 0 for a number (``lambda: true`` is lambda 1)."""
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if isinstance(value, bool) and annotation is not bool and bool not in get_args(annotation):
            raise ValueError("true/false is not a number; give a number")
        return value


class ModelSection(Section):
    family: Optional[str] = Field(None, description="Checkpoint layout; auto-detected when absent.")


class DataSection(Section):
    train: Optional[Path] = Field(None, description="Training text (needed by finetune and recover).")
    valid: Optional[Path] = Field(None, description="Validation text, evaluated after every epoch.")
    test: Optional[Path] = Field(None, description="Test text, for the final report.")
    vocab: str = Field("auto", description="'auto' (stored with the checkpoint, else vocab.txt beside it, else "
                                           "'corpus'), 'corpus' (rebuilt from train, valid, test), or a file.")
    level: Literal["word", "char"] = Field("word", description=(
        "'word' (whitespace tokens, <eos> after each line, perplexity) or 'char' (every character a token, "
        "newlines and spaces included; bits per character)."))
    split: Optional[Path] = Field(None, description=(
        "One text file to cut into train, valid and test by characters at line boundaries, in the proportions of "
        "split_fractions (for corpora that ship as one file, such as Tiny Shakespeare); instead of train/valid/test."))
    split_fractions: tuple[float, float] = Field((0.9, 0.05), description=(
        "With split: the train and valid fractions; the rest is test."))
    max_train_tokens: Optional[PositiveInt] = Field(None, description="Use only the first N training tokens.")
    max_eval_tokens: Optional[PositiveInt] = Field(None, description="Evaluate on the first N tokens only.")


class Schedule(Section):
    epochs: PositiveInt = Field(1, description="Passes over the training text.")
    max_steps: Optional[PositiveInt] = Field(None, description="Stop after this many steps in all.")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="Plain SGD as word_language_model, or Adam.")
    lr: PositiveFloat = Field(1.0, description="Learning rate.")
    lr_decay: float = Field(1.0, gt=0, le=1, description="Multiply the lr by this after each epoch from "
                                                        "decay_start on (or on a validation plateau).")
    decay_start: PositiveInt = Field(1, description="First epoch after which lr_decay applies.")
    decay_on_plateau: bool = Field(False, description="Decay only when validation perplexity does not improve.")
    batch_size: PositiveInt = Field(20, description="Columns the token stream is cut into (batchify).")
    bptt: PositiveInt = Field(35, description="Steps per truncated-BPTT window; the hidden state carries over.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on embeddings and between layers (and on an "
                                                        "RHN's recurrent state, always variational).")
    variational_dropout: bool = Field(False, description=(
        "One dropout mask per window for the embedding and the layer outputs, the same at every time step "
        "(Gal & Ghahramani; Zilly et al.'s RHN), instead of a new one per element."))
    clip: Optional[PositiveFloat] = Field(0.25, description="Gradient norm clip; null for none.")
    seed: int = Field(1111, ge=0, lt=2**32, description="Seeds initialisation order and dropout; same seed, same run.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,3})?)$",
                        description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'.")
    save_every: int = Field(0, ge=0, description="Save a checkpoint every N steps (0: at each epoch end only).")
    log_every: PositiveInt = Field(50, description="Steps between progress log lines.")
    keep: Literal["last", "best"] = Field("last", description=(
        "'best': at the end of the stage, the weights of the epoch that validated best are kept instead of the last "
        "epoch's — perplexity on data.valid for a language model, the first metric of the factory's METRICS (in the "
        "direction it declares) for a user model. For a stage whose units are fixed: recover, or finetune without "
        "iss. After --resume, the epochs from the resume on are compared."))


class BudgetSection(Section):
    """Where ISS stops: a compute or size budget for the whole model; group Lasso decides per layer."""

    macs: Optional[PositiveFloat] = Field(None, description=(
        "Multiply-adds per token to reach (a user model: its recurrent layers' per time step): a fraction of the original (0.5 = 2x fewer) or, above 1, a number."))
    parameters: Optional[PositiveFloat] = Field(None, description=(
        "Parameters to reach: a fraction of the original or, above 1, a number."))

    @model_validator(mode="after")
    def _one(self) -> "BudgetSection":
        if (self.macs is None) == (self.parameters is None):
            raise ValueError("give exactly one of macs or parameters")
        value = self.macs if self.macs is not None else self.parameters
        if value > 1 and value != int(value):
            raise ValueError(f"{value} is neither a fraction of the original (at most 1) nor a whole count; give "
                             "e.g. 0.5 for half, or a number of multiply-adds/parameters")
        return self


class IssSection(Section):
    lambda_: PositiveFloat = Field(0.00245, alias="lambda", description="Group Lasso strength.")
    layer_multipliers: dict[str, PositiveFloat] = Field(
        default_factory=dict, description="Per group set (e.g. layer0, layer1.proj): multiply lambda by this.")
    method: Literal["subgradient", "proximal", "one-shot", "gradual"] = Field(
        "subgradient", description="'subgradient' (the paper; zero small weights after each step), "
                                  "'proximal' (group soft-thresholding: exact zeros), 'one-shot' (no "
                                  "regularisation: the weakest groups are zeroed at the start, down to iss.target or "
                                  "iss.target_widths, kept at zero, and the stage recovers the rest), or 'gradual' "
                                  "(the weakest groups zeroed in removal_rounds steps along Zhu & Gupta's cubic "
                                  "schedule, reaching the target at reach_by (default 0.75) of the stage, training "
                                  "in between). Unset: "
                                  "gradual when the section gives a goal and no lambda (the method that won most "
                                  "often at equal compute, docs/results.md), else subgradient.")
    target_widths: dict[str, PositiveInt] = Field(default_factory=dict, description=(
        "Per group set (e.g. layer0): stop shrinking once this many units are alive; its lambda is 0 from then "
        "on, so the rest of the fine-tuning recovers the survivors. Without it the widths follow from lambda."))
    reweight: float = Field(0.0, ge=0, le=4, description=(
        "Reweighted group Lasso: each group's lambda times (mean alive norm of its set / its norm) ** reweight, "
        "recomputed every step. 0 = plain group Lasso (the paper); 1-2 spread the units' deaths out and shrink "
        "the survivors less."))
    target: Optional[BudgetSection] = Field(None, description=(
        "A budget for the whole model, e.g. {macs: 0.5}: shrinking continues across all layers at once until the "
        "alive units fit it, then lambda is 0 and the rest of the stage recovers. Combines with target_widths."))
    widths: Literal["recurrent", "all"] = Field("recurrent", description=(
        "Which group sets ISS acts on: 'recurrent' (the recurrent layers' units, the paper's ISS) or 'all' (also "
        "every other width the model has: embedding dimensions, MLP hidden units; docs/iss.md), so a budget over the "
        "whole model can fall on the embedding too."))
    split_layers: bool = Field(False, description=(
        "A user model's multi-layer nn.LSTM/GRU/RNN becomes a stack of single-layer ones (isscompress.LayerwiseRNN, "
        "computing the same), so each of its layers gets the width its units earn instead of one width for all; the "
        "file records it, and --arch (or isscompress.split_layers) rebuilds it. Its final states come back as one "
        "tensor per layer once the widths differ."))
    importance: Literal["norm", "taylor"] = Field("taylor", description=(
        "How the units that one-shot, gradual (and a completed target) remove are ranked: 'taylor' (Molchanov et al. "
        "2019: (sum of gradient x weight over the group)^2, the first-order change of the stage's own loss when the "
        "group is removed, averaged over importance_batches batches; it beat norms in every comparison measured) "
        "or 'norm' (the group's L2 norm, the paper's and the published one-shot baselines')."))
    importance_batches: PositiveInt = Field(8, description="Batches the Taylor importance is accumulated over.")
    removal_rounds: PositiveInt = Field(10, description="gradual: how many times units are removed.")
    reconstruct: bool = Field(False, description=(
        "When units are chosen (one-shot, a completed target): before they are zeroed, fit the removed units from "
        "the kept ones by least squares on their values over reconstruct_batches batches (no labels) and fold the "
        "fit into every reader's weights and biases (He et al. 2017's reconstruction, on ISS groups)."))
    reconstruct_batches: PositiveInt = Field(8, description="Batches the units' values are recorded on.")
    reach_by: Optional[float] = Field(None, gt=0, le=1, description=(
        "With a target: steer lambda so the alive units' cost follows a schedule (cubic, as Zhu & Gupta's gradual "
        "pruning) that reaches the target by this fraction of the stage's steps: lambda grows while the model is "
        "behind the schedule and holds when it is ahead. Unset: lambda stays as given until the target is met."))
    unmet: Literal["complete", "fail"] = Field("complete", description=(
        "A target (target, target_widths) still unmet when the stage ends: 'complete' removes the weakest "
        "remaining units until it is met (said in the output and the log), 'fail' stops with an error naming the "
        "target. Either way a stage never ends silently above its budget."))
    warmup_steps: int = Field(0, ge=0, description=(
        "Ramp lambda linearly from 0 over this many steps, so the fine-tuning settles before units start dying."))
    zero_threshold: float = Field(1e-4, ge=0, description="subgradient: weights below this become 0 each step.")
    freeze_dead: bool = Field(True, description="Keep groups that reached zero at zero.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _default_method(cls, data: Any) -> Any:
        """A goal without a lambda asks for a width, not for group Lasso: the method that won most often."""
        if isinstance(data, dict) and "method" not in data and not {"lambda", "lambda_"} & data.keys() and (
                data.get("target") is not None or data.get("target_widths")):
            return {**data, "method": "gradual"}
        return data

    @model_validator(mode="after")
    def _every_setting_applies(self) -> "IssSection":
        """A setting that would do nothing with the rest of the section is refused, never ignored."""
        # set = not its default (a recipe dumped with every field, as metadata stores it, reads back the same)
        given = {name for name, info in type(self).model_fields.items() if getattr(self, name) != info.get_default(
            call_default_factory=True)}
        goal = self.target is not None or bool(self.target_widths)
        if "removal_rounds" in given and self.method != "gradual":
            raise ValueError(f"removal_rounds is for method gradual; this section's method is {self.method}")
        if "reach_by" in given and self.method != "gradual" and self.target is None:
            raise ValueError("reach_by steers lambda to a budget (target) or sets gradual's deadline; give target, "
                             "or use method gradual")
        chooses = self.method in ("one-shot", "gradual") or (goal and self.unmet == "complete")
        for name in ("importance", "importance_batches", "reconstruct", "reconstruct_batches"):
            if name in given and not chooses:
                raise ValueError(f"{name} ranks or repairs units that are chosen (method one-shot or gradual, or a "
                                 "target completed at the end with unmet: complete); this section chooses none")
        return self

    @model_validator(mode="after")
    def _one_shot_has_a_goal(self) -> "IssSection":
        if self.method in ("one-shot", "gradual") and self.target is None and not self.target_widths:
            raise ValueError(f"method {self.method} removes units down to a goal: give target (e.g. {{macs: 0.5}}) "
                             "or target_widths")
        return self


class DistillSection(Section):
    teacher: str = Field("source", description=(
        "'source' (the checkpoint being fine-tuned, before this stage) or a checkpoint file, relative to the "
        "recipe's folder like every path here (e.g. the dense original, to teach the recovery of a shrunk model)."))
    temperature: PositiveFloat = Field(1.0, description="Softens both distributions; the KL term is scaled by T^2.")
    alpha: float = Field(0.5, ge=0, le=1, description=(
        "Weight of the teacher term; 1 - alpha weighs the labels' cross-entropy. 1 = label-free: only inputs "
        "are needed."))
    stages: list[Literal["finetune", "recover"]] = Field(
        default_factory=lambda: ["finetune", "recover"], description="The stages that distil.")
    loss: Literal["kl", "mse"] = Field("kl", description=(
        "'kl' (KL divergence of the output distributions, over the last axis) or 'mse' (outputs that are not "
        "logits; any-model path only)."))


class ShrinkSection(Section):
    threshold: float = Field(1e-4, ge=0, description="Remove units whose ISS group norm is at most this.")


class EvaluateSection(Section):
    batch_size: PositiveInt = Field(10, description="Evaluation batch (word_language_model's eval_batch_size).")
    bptt: PositiveInt = Field(35, description="Evaluation window; the hidden state carries over.")


class Recipe(Section):
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    finetune: Schedule = Schedule()
    iss: Optional[IssSection] = None
    shrink: ShrinkSection = ShrinkSection()
    recover: Optional[Schedule] = None
    distill: Optional[DistillSection] = None
    evaluate: EvaluateSection = EvaluateSection()

    @model_validator(mode="after")
    def _best_of_fixed_units(self) -> "Recipe":
        if self.finetune.keep == "best" and self.iss is not None:
            raise ValueError("finetune.keep: best keeps an earlier epoch, but during ISS an earlier epoch holds units "
                             "the stage removes later; set keep: best in recover (its units are fixed)")
        return self

    @property
    def widths(self) -> str:
        """Which widths ISS acts on, and so which a shrink after it narrows (the recurrent layers' without ISS)."""
        return self.iss.widths if self.iss is not None else "recurrent"

    def input_files(self) -> tuple[Path, ...]:
        """The files the recipe reads (data, vocabulary, teacher): no output may overwrite one."""
        paths = [self.data.train, self.data.valid, self.data.test, self.data.split]
        named = [self.data.vocab if self.data.vocab not in ("auto", "corpus") else None,
                 self.distill.teacher if self.distill is not None and self.distill.teacher != "source" else None]
        return tuple(Path(p) for p in (*paths, *named) if p is not None)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return yaml.safe_dump(data, sort_keys=False)


SECTIONS: dict[str, type[BaseModel]] = {
    "model": ModelSection, "data": DataSection, "finetune": Schedule, "iss": IssSection,
    "distill": DistillSection, "shrink": ShrinkSection, "recover": Schedule, "evaluate": EvaluateSection,
}
REFERENCE = {**SECTIONS, "iss.target": BudgetSection}  # docs/recipe.md: the sections and the nested budget

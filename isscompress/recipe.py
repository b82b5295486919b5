"""The recipe: one YAML file that says everything a run needs, validated before any work starts.

pydantic gives typed errors with locations and rejects unknown keys at every depth; PyYAML's
node tree gives each location its line, so every error names the file, the line and the key,
and suggests the closest valid key.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, get_args

import yaml
from pydantic import (
    BaseModel,
    model_validator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from .cache import private_folder, write_private
from .core.groups import GroupSet, chosen_sets
from .data import file_problem
from .errors import RecipeError
from .yaml_lines import MAX_BYTES, compose, construct, key_lines, line_of, shown


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


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return [field.alias or name for name, field in model.model_fields.items()]


def _describe(error: dict, lines: dict[tuple, int]) -> str:
    loc = tuple(error["loc"])
    line = line_of(loc, lines)
    where = f"line {line}: " if line else ""
    key = loc[-1] if loc else ""
    section = loc[0] if loc else ""
    if error["type"] == "extra_forbidden":
        model = SECTIONS.get(section) if len(loc) == 2 else Recipe if len(loc) == 1 else None
        valid = _valid_keys(model) if model else []
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        place = f"in section '{section}'" if len(loc) == 2 else "at the top level"
        return f"{where}unknown key '{key}' {place}.{hint} Valid keys: {', '.join(valid)}."
    dotted = ".".join(str(part) for part in loc)
    return f"{where}'{dotted}': {error['msg']} (got {shown(error.get('input'))})."


def parse_recipe(text: str, source: str = "<recipe>") -> Recipe:
    """Validate recipe text; every problem is a RecipeError naming the source and line."""
    root = compose(text, f"recipe {source}", RecipeError)
    if root is None:
        raise RecipeError(f"recipe {source} is empty.", f"Write at least one section: {', '.join(SECTIONS)}.")
    if not isinstance(root, yaml.MappingNode):
        raise RecipeError(f"recipe {source}: the top level must be a mapping of sections, not a list or a value.",
                          f"Sections: {', '.join(SECTIONS)}.")
    try:
        lines = key_lines(root, error=RecipeError)
    except RecipeError as err:
        raise RecipeError(f"recipe {source}, {err.message}", err.hint) from None
    data: Any = construct(root)
    for name, value in data.items():
        if value is None and name in SECTIONS:
            raise RecipeError(f"recipe {source}, line {lines[(name,)]}: section '{name}' is empty.",
                              "Remove it, or give it keys.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        problems = [_describe(e, lines) for e in err.errors()]
        raise RecipeError(f"recipe {source}, " + " ".join(problems[:5]),
                          "See docs/recipe.md for every key.") from None


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Read, validate and resolve a recipe file: data paths become relative to the recipe and must exist."""
    path = Path(path)
    if (problem := file_problem(path)) is not None:
        raise RecipeError(f"recipe {path} {problem}.", "Check the --recipe path.")
    if path.stat().st_size > MAX_BYTES:  # before reading: YAML of that size would take gigabytes to parse
        raise RecipeError(f"recipe {path} is {path.stat().st_size:,} bytes; a recipe is a few kilobytes (at most "
                          f"{MAX_BYTES:,} are read).", "Check the --recipe path.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not UTF-8 text.", "Save it as UTF-8.") from None
    recipe = parse_recipe(text, str(path))
    return resolve_paths(recipe, path.parent, str(path), text)


def resolve_paths(recipe: Recipe, base: Path, source: str, text: str = "") -> Recipe:
    """Data paths relative to ``base``; each must exist."""
    lines = key_lines(compose(text, f"recipe {source}", RecipeError), error=RecipeError) if text else {}
    updates: dict[str, Any] = {}
    if recipe.data.split is not None:
        recipe = _with_split(recipe, base, source, lines)
    for key in ("train", "valid", "test"):
        value = getattr(recipe.data, key)
        if value is None:
            continue
        resolved = value if value.is_absolute() else base / value
        if (problem := file_problem(resolved)) is not None:
            line = lines.get(("data", key))
            at = f", line {line}" if line else ""
            raise RecipeError(f"recipe {source}{at}: data.{key} file {resolved} {problem}.",
                              "Paths are relative to the recipe's folder.")
        updates[key] = resolved
    vocab = recipe.data.vocab
    if vocab not in ("auto", "corpus"):
        resolved = Path(vocab) if Path(vocab).is_absolute() else base / vocab
        if (problem := file_problem(resolved)) is not None:
            raise RecipeError(f"recipe {source}: data.vocab file {resolved} {problem}.",
                              "Use 'auto', 'corpus', or the path of a vocabulary file (one word per line).")
        updates["vocab"] = str(resolved)
    recipe = recipe.model_copy(update={"data": recipe.data.model_copy(update=updates)})
    distill = recipe.distill
    if distill is not None and distill.teacher != "source":
        teacher = Path(distill.teacher) if Path(distill.teacher).is_absolute() else base / distill.teacher
        if (problem := file_problem(teacher)) is not None:
            line = lines.get(("distill", "teacher"))
            raise RecipeError(f"recipe {source}{f', line {line}' if line else ''}: distill.teacher file {teacher} "
                              f"{problem}.", "Paths are relative to the recipe's folder; or write 'source'.")
        recipe = recipe.model_copy(update={"distill": distill.model_copy(update={"teacher": str(teacher)})})
    return recipe


def _with_split(recipe: Recipe, base: Path, source: str, lines: dict) -> Recipe:
    """data.split: cut the file once into train/valid/test files in a cache folder named by its content."""
    data = recipe.data
    at = f", line {lines[('data', 'split')]}" if ("data", "split") in lines else ""
    if any(getattr(data, key) is not None for key in ("train", "valid", "test")):
        raise RecipeError(f"recipe {source}{at}: data.split and data.train/valid/test are both given.",
                          "Give one text file to split, or the three files.")
    first, second = data.split_fractions
    if not (0 < first and 0 < second and first + second < 1):
        raise RecipeError(f"recipe {source}: data.split_fractions {list(data.split_fractions)} must be two positive "
                          "fractions that add up to less than 1.", "For example [0.9, 0.05].")
    path = data.split if data.split.is_absolute() else base / data.split
    if (problem := file_problem(path)) is not None:
        raise RecipeError(f"recipe {source}{at}: data.split file {path} {problem}.",
                          "Paths are relative to the recipe's folder.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {source}{at}: data.split file {path} is not UTF-8 text.",
                          "Convert it to UTF-8, e.g. with iconv.") from None
    cuts = [text.find("\n", int(len(text) * f)) + 1 or len(text) for f in (first, first + second)]
    parts = (text[:cuts[0]], text[cuts[0]:cuts[1]], text[cuts[1]:])
    if not all(parts):
        raise RecipeError(f"recipe {source}{at}: data.split file {path} is too short to split into three parts.",
                          "Use a longer text, or give train/valid/test files.")
    digest = hashlib.sha256(text.encode("utf-8") + f"{first},{second}".encode()).hexdigest()[:16]
    folder = private_folder("splits", digest)
    names = ("train.txt", "valid.txt", "test.txt")
    for name, part in zip(names, parts):  # a cached part is used only when it is exactly this text's part
        cached = folder / name
        if cached.is_symlink() or not cached.is_file() or cached.read_text(encoding="utf-8", errors="replace") != part:
            cached.unlink(missing_ok=True)
            write_private(folder, name, part)
    split = {key: folder / name for key, name in zip(("train", "valid", "test"), names)}
    return recipe.model_copy(update={"data": data.model_copy(update={**split, "split": None})})


def check_layer_names(recipe: Recipe, sets: Sequence[GroupSet], source: str) -> None:
    """Per-layer multipliers and targets must name group sets the model has, which ``iss.widths`` lets ISS act on;
    targets must shrink them."""
    if recipe.iss is None:
        return
    source = f" {source}" if source else ""
    set_sizes = {gs.name: gs.size for gs in chosen_sets(sets, recipe.iss.widths)}
    left_alone = {gs.name for gs in sets} - set_sizes.keys()
    for field_name in ("layer_multipliers", "target_widths"):
        named = getattr(recipe.iss, field_name)
        if left_alone & named.keys():
            raise RecipeError(f"recipe{source}: iss.{field_name} names {', '.join(sorted(left_alone & named.keys()))}, "
                              f"a width that is not a recurrent layer's, but iss.widths is "
                              f"{recipe.iss.widths!r}.", "Add `widths: all` to the iss section to shrink every width.")
        unknown = [name for name in named if name not in set_sizes]
        if unknown:
            close = {n: difflib.get_close_matches(n, list(set_sizes), n=1) for n in unknown}
            hints = "; ".join(f"'{n}'" + (f" (did you mean '{c[0]}'?)" if c else "") for n, c in close.items())
            raise RecipeError(f"recipe{source}: iss.{field_name} names group sets this model does not have: "
                              f"{hints}.", f"This model's group sets: {', '.join(set_sizes)}.")
    for name, target in recipe.iss.target_widths.items():
        if target >= set_sizes[name]:
            raise RecipeError(f"recipe{source}: iss.target_widths.{name} is {target}, but {name} has only "
                              f"{set_sizes[name]} units, so it would not shrink.",
                              f"Give a target below {set_sizes[name]}, or leave {name} out.")

"""The stage graph as data, and the pure functions that judge it.

No I/O here: a ``Pipeline`` is a validated value; ``problems`` finds faults in
a graph; ``check_move`` decides whether one move is legal. The rules are small
named guards, each returning a ``Refusal`` or ``None``, so the rule table reads
like the diagram.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic import ValidationError as PydanticValidationError

from .errors import (
    ApprovalRequiredError,
    InvalidTransitionError,
    PipelineError,
    StatekitError,
    UnknownStageError,
)
from .ids import ID_PATTERN
from .taxonomy import Rule

# Strict: in statekit.yaml ``max_attempts: true`` is a mistake, not 1 (see models.Int).
PositiveInt = Annotated[int, Field(strict=True, gt=0)]
Seconds = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class RetryPolicy(BaseModel):
    """How failed stage runs come back: exponential backoff with jitter, and
    how long a worker's lease lasts without a heartbeat."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial: Seconds = 30.0
    """Seconds before the first retry; each further retry waits twice as long."""
    maximum: Seconds = 3600.0
    """The longest wait between retries."""
    jitter: Seconds = 10.0
    """Up to this many random seconds added, so retries of many episodes spread out."""
    max_attempts: PositiveInt = 5
    """Attempts at a run stage not listed in the pipeline's ``max_attempts``."""
    lease_seconds: Annotated[Seconds, Field(gt=0, le=7 * 86400)] = 600.0
    """How long a run may go without a heartbeat before another worker may take the episode."""


class Pipeline(BaseModel):
    """A stage graph. ``stages`` maps each stage to its legal next stages, in
    the order a person reads the pipeline (that order also ranks stages, e.g.
    for "the latest checkpoint")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    initial: str
    terminal: tuple[str, ...] = ()
    stages: dict[str, tuple[str, ...]]
    max_attempts: dict[str, PositiveInt] = Field(default_factory=dict)
    gates: tuple[str, ...] = ()
    """Stages that may only be entered after ``Store.approve`` (a human gate)."""
    failure_stage: str | None = "failed"
    """Where a failed run goes (``None``: the pipeline has no failure handling)."""
    give_up_stage: str | None = "skipped"
    """Where an episode goes when a failure is permanent or its attempts are used up."""
    runs: dict[str, str | None] = Field(default_factory=dict)
    """Stages that ``Store.run`` runs, each with its success target (``None``:
    stay, marked done). Unless given: every stage with an edge to
    ``failure_stage``, its target the first other next stage."""
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    error_rules: tuple[Rule, ...] = ()
    """This pipeline's own classification rules, tried before the defaults."""

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, Mapping) or not isinstance(data.get("stages"), Mapping):
            return data
        data = dict(data)
        stages = data["stages"]
        for key in ("failure_stage", "give_up_stage"):  # the defaults apply only where those stages exist
            if key not in data and cls.model_fields[key].default not in stages:
                data[key] = None
        if "runs" not in data:
            failure = data.get("failure_stage", cls.model_fields["failure_stage"].default)
            give_up = data.get("give_up_stage", cls.model_fields["give_up_stage"].default)
            runs: dict[str, str | None] = {}
            for stage, targets in stages.items():
                targets = list(targets) if isinstance(targets, (list, tuple)) else []
                if failure is not None and failure in targets and stage != failure:
                    onward = [t for t in targets if t not in (failure, give_up)]
                    runs[str(stage)] = onward[0] if onward else None
            data["runs"] = runs
        return data

    def next_stages(self, stage: str) -> tuple[str, ...]:
        return self.stages.get(stage, ())

    def rank(self, stage: str) -> int:
        """Position of ``stage`` in the declared order (unknown stages last)."""
        order = list(self.stages)
        return order.index(stage) if stage in order else len(order)

    def to_config(self) -> dict[str, Any]:
        """Plain data as written under ``pipeline:`` in statekit.yaml."""
        data = self.model_dump(mode="json")
        data["terminal"] = list(self.terminal)
        data["stages"] = {k: list(v) for k, v in self.stages.items()}
        data["gates"] = list(self.gates)
        for key in ("gates", "max_attempts", "error_rules"):
            if not data[key]:
                del data[key]
        for rule in data.get("error_rules", []):
            for key in [k for k, v in rule.items() if v in ((), [], None, "")]:
                del rule[key]
        return data

    def run_target(self, stage: str) -> str | None:
        """Where a successful run of ``stage`` goes (None: it stays, done)."""
        return self.runs.get(stage)

    def attempts_allowed(self, stage: str) -> int:
        return self.max_attempts.get(stage, self.retry.max_attempts)


def problems(p: Pipeline) -> list[str]:
    """Everything wrong with a graph, one sentence each (empty when sound)."""
    found: list[str] = []
    names = list(p.stages)
    for name in [p.name, *names]:
        if not ID_PATTERN.fullmatch(name):
            found.append(f"stage or pipeline name {name!r} is not a valid id (a-z, 0-9, '.', '_', '-')")
    if not p.stages:
        return found + ["the pipeline has no stages"]
    if p.initial not in p.stages:
        found.append(f"initial stage {p.initial!r} is not one of the stages")
    for src, targets in p.stages.items():
        for dst in targets:
            if dst not in p.stages:
                found.append(f"stage {src!r} leads to unknown stage {dst!r}")
        if len(set(targets)) != len(targets):
            found.append(f"stage {src!r} lists a next stage twice")
    for key, label in ((p.terminal, "terminal"), (p.gates, "gate"), (tuple(p.max_attempts), "max_attempts")):
        for stage in key:
            if stage not in p.stages:
                found.append(f"{label} stage {stage!r} is not one of the stages")
    for stage in p.terminal:
        if p.stages.get(stage):
            found.append(f"terminal stage {stage!r} has next stages {list(p.stages[stage])}")
    for stage, targets in p.stages.items():
        if not targets and stage not in p.terminal:
            found.append(f"stage {stage!r} has no next stages but is not listed as terminal")
    if p.initial in p.gates:
        found.append(f"initial stage {p.initial!r} cannot be a gate (nothing is approved before it exists)")
    found += _run_problems(p)
    if p.initial in p.stages:
        reached = _reachable(p.stages, p.initial)
        unreachable = [s for s in names if s not in reached]
        if unreachable:
            found.append(f"stages {unreachable} cannot be reached from the initial stage {p.initial!r}")
    return found


def _run_problems(p: Pipeline) -> list[str]:
    """Stage runs need a way to fail, a way back, and a way to give up."""
    found: list[str] = []
    failure, give_up = p.failure_stage, p.give_up_stage
    for key, stage in (("failure_stage", failure), ("give_up_stage", give_up)):
        if stage is not None and stage not in p.stages:
            found.append(f"{key} {stage!r} is not one of the stages")
    if not p.runs:
        return found
    if failure is None:
        return found + ["runs need a failure_stage for failed runs to go to"]
    if failure in p.runs:
        found.append(f"the failure stage {failure!r} cannot itself be run")
    for stage, target in p.runs.items():
        if stage not in p.stages:
            found.append(f"run stage {stage!r} is not one of the stages")
            continue
        if target is not None and target not in p.next_stages(stage):
            found.append(f"run stage {stage!r} succeeds into {target!r}, which is not one of its next stages")
        if failure in p.stages and failure not in p.next_stages(stage):
            found.append(f"run stage {stage!r} has no edge to the failure stage {failure!r}")
        if failure in p.stages and stage not in p.next_stages(failure):
            found.append(f"the failure stage {failure!r} has no edge back to run stage {stage!r} (for retries)")
    if give_up is not None and failure in p.stages and give_up not in p.next_stages(failure):
        found.append(f"the failure stage {failure!r} has no edge to the give-up stage {give_up!r}")
    return found


def _reachable(stages: Mapping[str, tuple[str, ...]], start: str) -> set[str]:
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in stages.get(queue.popleft(), ()):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def load_pipeline(spec: Pipeline | Mapping[str, Any] | str) -> Pipeline:
    """A checked ``Pipeline`` from a preset name, a mapping or a ``Pipeline``.

    Raises ``PipelineError`` naming every problem of a graph that is wrong.
    """
    if isinstance(spec, str):
        if spec not in PRESETS:
            raise PipelineError(
                f"unknown pipeline preset {spec!r}",
                hint=f"presets: {', '.join(PRESETS)}; or give a path to a YAML file with a pipeline",
            )
        return PRESETS[spec]
    if isinstance(spec, Pipeline):
        pipeline = spec
    else:
        if not isinstance(spec, Mapping):
            raise PipelineError(f"a pipeline must be a mapping, got {type(spec).__name__}")
        try:
            pipeline = Pipeline.model_validate(spec)
        except PydanticValidationError as exc:
            faults = [f"{'.'.join(map(str, e['loc'])) or 'pipeline'}: {e['msg']}" for e in exc.errors()]
            raise PipelineError("invalid pipeline: " + "; ".join(faults), problems=faults) from None
    faults = problems(pipeline)
    if faults:
        raise PipelineError(f"invalid pipeline {pipeline.name!r}: " + "; ".join(faults), problems=faults)
    return pipeline


# --- moves -----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a move is refused: the error class to raise and its arguments."""

    error: type[StatekitError]
    message: str
    extra: dict[str, Any]


Guard = Callable[[Pipeline, str, str, Mapping[str, Any]], "Refusal | None"]


def target_is_a_stage(p: Pipeline, src: str, dst: str, approvals: Mapping[str, Any]) -> Refusal | None:
    """A move can only name a stage the pipeline declares."""
    if dst in p.stages:
        return None
    return Refusal(UnknownStageError, f"unknown stage {dst!r} in pipeline {p.name!r}", {"stages": list(p.stages)})


def edge_exists(p: Pipeline, src: str, dst: str, approvals: Mapping[str, Any]) -> Refusal | None:
    """Only the edges drawn in the graph may be taken."""
    allowed = p.next_stages(src)
    if dst in allowed:
        return None
    return Refusal(
        InvalidTransitionError,
        f"illegal move {src!r} -> {dst!r} in pipeline {p.name!r}",
        {"src": src, "dst": dst, "allowed": list(allowed)},
    )


def gate_is_approved(p: Pipeline, src: str, dst: str, approvals: Mapping[str, Any]) -> Refusal | None:
    """A human gate (e.g. before paid audio synthesis) needs a recorded approval."""
    if dst not in p.gates or dst in approvals:
        return None
    return Refusal(ApprovalRequiredError, f"stage {dst!r} needs a person's approval before it can be entered", {})


GUARDS: tuple[Guard, ...] = (target_is_a_stage, edge_exists, gate_is_approved)


def refuse_move(p: Pipeline, src: str, dst: str, approvals: Mapping[str, Any]) -> Refusal | None:
    """The first guard that refuses ``src -> dst``, or ``None`` if it is legal."""
    for guard in GUARDS:
        refusal = guard(p, src, dst, approvals)
        if refusal is not None:
            return refusal
    return None


def ready_for(p: Pipeline, stage: str, previous: str | None, approvals: Mapping[str, Any], *,
              done: bool = False, hold: str | None = None) -> str | None:
    """The stage an episode at ``stage`` is waiting to enter (or run), for ``next()``.

    A run stage whose work is not done waits for a worker to run it there
    (``next()`` also leaves out episodes still leased or not yet due). A
    retry goes back where it came from (``failed`` after ``converting`` is
    ready for ``converting``); otherwise the first stage listed is the way
    forward. None for a terminal stage, an episode held for a person, or a
    gate nobody has approved yet.
    """
    if hold is not None:
        return None
    if stage in p.runs and not done:
        return stage
    options = p.next_stages(stage)
    if not options:
        return None
    target = previous if previous in options else options[0]
    if target in p.gates and target not in approvals:
        return None
    return target


def approvals_after_move(p: Pipeline, dst: str, approvals: Mapping[str, Any]) -> dict[str, Any]:
    """Approvals still valid once the episode enters ``dst``.

    Going back to a stage listed before a gate means the approved content is
    being redone, so that gate's approval is dropped; retries through a stage
    listed after the gate (e.g. ``failed``) keep it.
    """
    if not approvals:
        return {}
    rank = p.rank(dst)
    return {gate: a for gate, a in approvals.items() if not rank < p.rank(gate)}


# --- presets ---------------------------------------------------------------

ARCHIVE = Pipeline(
    name="archive",
    initial="discovered",
    terminal=("published", "skipped"),
    stages={
        "discovered": ("downloading", "skipped"),
        "downloading": ("downloaded", "failed"),
        "downloaded": ("converting", "skipped"),
        "converting": ("converted", "failed"),
        "converted": ("uploading", "skipped"),
        "uploading": ("uploaded", "failed"),
        "uploaded": ("scheduled",),
        "scheduled": ("published",),
        "failed": ("downloading", "converting", "uploading", "skipped"),
        "published": (),
        "skipped": (),
    },
    max_attempts={"downloading": 3, "converting": 2, "uploading": 3},
)

# The podcast generation document: each stage is a paid generation step whose
# result is checkpointed; a person approves the scripts before audio (TTS) is
# paid for. Any step can fail and be retried from ``failed``.
PODCAST = Pipeline(
    name="podcast",
    initial="ideation",
    terminal=("published", "skipped"),
    stages={
        "ideation": ("outline", "failed", "skipped"),
        "outline": ("segments", "failed"),
        "segments": ("scripts", "failed"),
        "scripts": ("audio", "failed"),
        "audio": ("mix", "failed"),
        "mix": ("published", "failed"),
        "published": (),
        "failed": ("ideation", "outline", "segments", "scripts", "audio", "mix", "skipped"),
        "skipped": (),
    },
    max_attempts={"outline": 3, "segments": 3, "scripts": 3, "audio": 3, "mix": 3},
    gates=("audio",),
)

PRESETS: dict[str, Pipeline] = {"archive": ARCHIVE, "podcast": PODCAST}

for _preset in PRESETS.values():  # a broken preset is a bug: fail at import
    assert not problems(_preset), problems(_preset)

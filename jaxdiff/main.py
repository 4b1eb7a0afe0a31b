"""Command-line entry point: ``jaxdiff --config=configs/X.py --workdir=DIR --mode=train``.

Modes are the registered jobs (``jaxdiff.jobs.JOBS``: train, sample, eval, train_classifier,
classify, and any a config's ``imports`` register); several run in order when comma-separated
(``--mode=train,sample,eval`` is the README's main job).  ``jaxdiff reproduce NAME`` (or
``--list``) runs a method's small reproduction (``jaxdiff.reproduce``).

Config overrides use ml_collections' syntax: ``--config.train.num_steps=200``.

One error path: every anticipated failure is a ``jaxdiff.errors.JaxdiffError`` and is printed as
the single line ``jaxdiff: error: <what, where, and the fix>``; exit status 2 for a wrong command
line or config (``UsageError``, ``ConfigError``: reported before anything is compiled or
written), 1 for a fault met while running (missing or corrupt inputs, an incompatible
checkpoint, a full disk, a diverged run).  Errors of the flag parser, of loading the config file
and of overrides are mapped to ``UsageError`` here.  An unanticipated exception is one line too,
marked as such; ``--debug`` (or ``JAXDIFF_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import os
import re
import sys
import time
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdiff.errors import JaxdiffError, UsageError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
_MODE = flags.DEFINE_list("mode", ["train"], "What to run, comma-separated, in order: the "
                          "registered jobs (train, sample, eval, train_classifier, classify).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the Python traceback of an error (as "
                           "JAXDIFF_DEBUG=1) instead of the one-line message.")

_PREFIX = "jaxdiff: error: "
_MAX_LINE = 600


def _debug(argv) -> bool:
    if os.environ.get("JAXDIFF_DEBUG", "") not in ("", "0"):
        return True
    return any(a in ("--debug", "--debug=true", "--debug=True", "--debug=1") for a in argv)


def one_line(text: str) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to a readable length."""
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_LINE else text[:_MAX_LINE - 3] + "..."


def _config_path(argv) -> str | None:
    """The file of ``--config=FILE[:ARG]`` (ml_collections passes ARG to ``get_config``)."""
    for i, a in enumerate(argv):
        if a.startswith("--config="):
            value = a.split("=", 1)[1]
        elif a == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value if os.path.isfile(value) else value.split(":", 1)[0]
    return None


def _from_config_file(err: BaseException, path: str | None) -> int | None:
    """The line of the config file where ``err`` was raised, if it was raised there."""
    if not path:
        return None
    target = os.path.abspath(path)
    if isinstance(err, SyntaxError) and err.filename and os.path.abspath(err.filename) == target:
        return err.lineno
    for frame in reversed(traceback.extract_tb(err.__traceback__)):
        if frame.filename and os.path.abspath(frame.filename) == target:
            return frame.lineno
    return None


def _override_error(argv, err: BaseException) -> UsageError | None:
    """An unknown-field error of a ``--config.a.b=v`` override, with its did-you-mean."""
    text = str(err).replace("\\n", "\n").replace("\\'", "'")
    names = re.findall(r"'([A-Za-z_][A-Za-z0-9_]*)'", text)
    if not names:
        return None
    field = names[0]
    for arg in argv:
        parts = arg.split("=", 1)[0][len("--config."):].split(".")
        if arg.startswith("--config.") and field in parts:
            flag = arg.split("=", 1)[0]
            parent = ".".join(["config", *parts[:parts.index(field)]])
            break
    else:
        return None
    from jaxdiff.config import NAMED_SECTIONS

    hint = re.search(r'Did you mean "([^"]+)"', text)
    switched = (len(parts) == 2 and parts[0] in NAMED_SECTIONS
                and any(a.startswith(f"--config.{parts[0]}.name=") for a in argv))
    return UsageError(f"{flag}: {parent} has no field {field!r}"
                      + (f"; did you mean {hint.group(1)!r}?" if hint else "")
                      + (f"; --config.{parts[0]}.name adds its component's fields after the "
                         f"flags are read, so set them in a config file that selects it"
                         if switched else ""))


def flag_error(argv, err: BaseException) -> UsageError:
    """The UsageError for an exception raised while parsing the command line ``argv``."""
    if isinstance(err, UsageError):
        return err
    path = _config_path(argv)
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain:
            break
        chain.append(nxt)
    for e in chain:
        line = _from_config_file(e, path)
        if line is not None:
            return UsageError(f"--config: {path}, line {line}: {type(e).__name__}: "
                              f"{getattr(e, 'msg', None) or e}")
    for e in chain:
        if isinstance(e, OSError) and path is not None:
            reason = e.strerror or str(e)
            return UsageError(f"--config: cannot read {path}: {reason}")
        if isinstance(e, AttributeError) and "get_config" in str(e):
            return UsageError(f"--config: {path} defines no get_config() returning the config")
    for e in chain:
        if isinstance(e, (AttributeError, KeyError)):
            found = _override_error(argv, e)
            if found is not None:
                return found
    if isinstance(err, flags.Error):
        return UsageError(re.sub(r"^flag ", "", str(err)))
    return UsageError(f"command line: {type(err).__name__}: {err}")


def _parse_flags(argv):
    """absl's flag parser; its errors (config file, overrides, values) become UsageError."""
    try:
        path = _config_path(argv)
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"--config: no such file {path}" + (
                "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"))
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001  (every parse failure is reported as one line)
        if _debug(argv):
            raise
        raise SystemExit(_report(flag_error(argv, e)))


def _clear_progress_bars() -> None:
    """Erases the progress bars still open (a job stopped mid-way), so the error line is the
    only thing left on the console."""
    tqdm = sys.modules.get("tqdm")
    if tqdm is None:
        return
    for bar in list(getattr(tqdm.tqdm, "_instances", ())):
        bar.leave = False
        bar.close()


class _QuietBackgroundErrors:
    """A logging filter for the console: drops the ERROR records (with their tracebacks) that
    the checkpoint library's writer threads log when a write fails, and asyncio's "Task
    exception was never retrieved" records of its reader tasks when a damaged checkpoint fails
    to restore (logged whenever the garbage collector meets the sibling tasks of the read that
    failed); the same failure reaches the job as an exception and is reported as one line.  Not
    installed with --debug."""

    def filter(self, record) -> bool:
        if record.levelno < 40:
            return True
        if "orbax" in (record.pathname or ""):
            return False
        return not (record.name == "asyncio"
                    and str(record.msg).startswith("Task exception was never retrieved"))


def _report(err: BaseException) -> int:
    """Prints ``err`` as one line on stderr; returns the exit status."""
    _clear_progress_bars()
    if isinstance(err, JaxdiffError):
        line, code = _PREFIX + one_line(err), err.exit_code
    elif isinstance(err, OSError) and err.strerror:  # the environment: disk, permissions
        where = f"{err.filename}: " if err.filename else ""
        line, code = (_PREFIX + one_line(f"{where}{err.strerror}") + "; fix the cause (disk "
                      "space, permissions) and rerun the same command"), 1
    else:
        line, code = (_PREFIX + one_line(f"unexpected {type(err).__name__}: {err}") +
                      " (rerun with --debug for the traceback)"), 1
    sys.stdout.flush()
    print(line, file=sys.stderr, flush=True)
    return code


def _main(argv):
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {argv[1:]}; flags are --config, --workdir, "
                         f"--mode and --config.<field>=<value>")
    logging.set_verbosity(logging.WARNING)  # keep Orbax's per-save INFO lines off the console
    if not _DEBUG.value and not _debug([]):
        logging.get_absl_handler().addFilter(_QuietBackgroundErrors())
    from jaxdiff import config as C  # heavy imports after parsing
    from jaxdiff.jobs import JOBS, rundir, spec

    config = _CONFIG.value
    if config is None:
        raise UsageError("--config is required, e.g. --config=configs/mnist5k.py")
    if not _WORKDIR.value:
        raise UsageError("--workdir is required, e.g. --workdir=runs/mnist5k")
    C.ensure_registered(config)
    C.complete_named_sections(config)
    unknown = [m for m in _MODE.value if m not in JOBS]
    if unknown or not _MODE.value:
        raise UsageError(f"--mode: unknown {unknown}; choose from {sorted(JOBS)}")
    C.validate(config)
    rundir.check_writable(_WORKDIR.value)
    spec.preflight(config, _WORKDIR.value, list(_MODE.value))
    walls = []
    for mode in _MODE.value:
        start = time.perf_counter()
        JOBS[mode](config, _WORKDIR.value)
        walls.append((mode, time.perf_counter() - start))
    if len(walls) > 1:
        print(stage_times_line(walls), flush=True)


def stage_times_line(walls: list[tuple[str, float]]) -> str:
    """'wall time: train 812 s, sample 95 s, eval 21 s (total 928 s)', printed after a run of
    several modes (``bench/first_run.py stages`` reads it)."""
    parts = ", ".join(f"{mode} {seconds:.0f} s" for mode, seconds in walls)
    return f"wall time: {parts} (total {sum(s for _, s in walls):.0f} s)"


def _run_job(argv) -> int:
    """Runs the jobs of the command line ``argv``; returns the exit status."""
    try:
        app.run(_main, argv=argv, flags_parser=_parse_flags)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        print(_PREFIX + "interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as e:  # noqa: BLE001  (the one error path)
        if _debug(argv):
            raise
        return _report(e)
    return 0


def run():
    """Console-script entry (``jaxdiff``): ``jaxdiff reproduce ...`` or a job.

    A failed job exits without Python's interpreter shutdown, so background writer threads
    (asynchronous checkpoint saves that met the same fault) add nothing to the one line.
    """
    if sys.argv[1:2] == ["reproduce"]:
        from jaxdiff import reproduce

        sys.exit(reproduce.main(sys.argv[2:]))
    code = _run_job(list(sys.argv))
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(0)


if __name__ == "__main__":
    run()

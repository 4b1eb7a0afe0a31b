"""Subprocess side of tests/test_faults.py: runs many command lines of ``jaxdiff`` cheaply.

``python fault_runner.py CASES.json RESULTS.json``: CASES is a list of dicts
``{id, argv, cwd, env, log_compiles, fsize_limit}``.  The runner imports jaxdiff once (without
starting a JAX backend) and forks one child per case, which runs ``jaxdiff.main.run()`` with
that command line exactly as the console script does, its stdout and stderr going to files;
the parent records each child's exit status and output.  A case's ``env`` is applied in the
child; ``log_compiles`` makes JAX log every compilation to stderr (so a one-line stderr also
proves nothing was compiled); ``fsize_limit`` lowers the file-size limit (a full disk as a
writer sees it: writes past it fail with EFBIG) with the persistent compilation cache off.
"""
import json
import os
import resource
import signal
import sys
import time


def _child(case, out_path, err_path) -> None:
    code = 1
    try:
        os.chdir(case["cwd"])
        os.environ.update(case.get("env", {}))
        for fd, path in ((1, out_path), (2, err_path)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        import jax

        if case.get("log_compiles"):
            jax.config.update("jax_log_compiles", True)
        if case.get("fsize_limit"):
            jax.config.update("jax_enable_compilation_cache", False)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (int(case["fsize_limit"]), hard))
        from jaxdiff import main

        sys.argv = ["jaxdiff", *case["argv"]]
        main.run()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001  (a crash of the runner itself shows in stderr)
        import traceback

        traceback.print_exc()
        code = 99
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(cases_path: str, results_path: str) -> None:
    import jaxdiff.jobs  # noqa: F401  (the heavy imports, shared by every child)
    import jaxdiff.main  # noqa: F401

    with open(cases_path) as f:
        cases = json.load(f)
    results = {}
    tmp = os.path.dirname(os.path.abspath(results_path))
    for case in cases:
        out_path = os.path.join(tmp, f"{case['id']}.out")
        err_path = os.path.join(tmp, f"{case['id']}.err")
        sys.stdout.flush()
        sys.stderr.flush()
        t0 = time.time()
        pid = os.fork()
        if pid == 0:
            _child(case, out_path, err_path)
        _, status = os.waitpid(pid, 0)
        with open(out_path) as f:
            out = f.read()
        with open(err_path) as f:
            err = f.read()
        results[case["id"]] = dict(rc=os.waitstatus_to_exitcode(status), stdout=out[-4000:],
                                   stderr=err[-8000:], seconds=round(time.time() - t0, 2))
    with open(results_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

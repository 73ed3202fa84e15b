"""A fork server for the bad-input suite: each `innergrad` command line in its own process.

Started once (`python tests/cli_runner.py`), it imports innergrad and every command module, then for
each JSON request on stdin forks a child that runs `innergrad.cli.main(argv)` in the given folder with
stdout and stderr going to the given files, and exits with main's status. The child is a real
process (its own exit status, file descriptors, stderr as a user sees it) without paying for
`import torch` per case. An exception that escapes main prints its traceback there, as
`python -m innergrad` would. Answers one JSON line per request: {"rc": status or null on timeout}.
"""

import json
import os
import sys
import time
import traceback


def _child(req: dict) -> int:
    from innergrad.cli import main

    os.chdir(req["cwd"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    try:
        return int(main(req["argv"]))
    except BaseException:  # what `python -m innergrad` would show: the test fails on a traceback
        traceback.print_exc()
        return 70
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def serve() -> None:
    from innergrad.cli import build_parser

    build_parser()  # every command module imported once, before any fork
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            os._exit(_child(req))
        deadline = time.monotonic() + req.get("timeout", 120)
        rc = None
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                rc = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.005)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print(json.dumps({"rc": rc}), flush=True)


if __name__ == "__main__":
    serve()

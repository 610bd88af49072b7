"""How long a newcomer waits: fresh clone -> `make run` -> first page served, and `make test`.

Baseline (the floor any Python project pays): creating a virtualenv and installing the same
declared dependencies in a second fresh clone, measured in the same run. The ratio is
first-page time over that floor; what is above 1 is our migrate + seed + server start.

    python bench/first_run.py            # clones the committed HEAD of this repository
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = os.environ.get("PYTHON", "python3.11")


def clone(into: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(REPO), str(into)], check=True)
    return into


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_page(checkout: Path) -> float:
    port = free_port()
    started = time.monotonic()
    server = subprocess.Popen(
        ["make", "run", f"PORT={port}", f"PYTHON={PYTHON}"],
        cwd=checkout,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while time.monotonic() - started < 900:
            try:
                url = f"http://127.0.0.1:{port}/admin/login/"
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.2)
            if server.poll() is not None:
                raise SystemExit(f"make run exited with {server.returncode}")
        raise SystemExit("no page after 900 s")
    finally:
        os.killpg(server.pid, signal.SIGINT)
        server.wait(timeout=60)


def timed(command, cwd) -> float:
    started = time.monotonic()
    subprocess.run(
        command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.monotonic() - started


def main():
    with tempfile.TemporaryDirectory() as tmp:
        run_clone = clone(Path(tmp) / "run")
        page = first_page(run_clone)
        print(f"make run, fresh clone -> first page served: {page:.1f} s")
        test = timed(["make", "test", f"PYTHON={PYTHON}"], run_clone)
        print(f"make test (venv present, whole suite):       {test:.1f} s")

        floor_clone = clone(Path(tmp) / "floor")
        floor = timed(
            [
                "sh",
                "-c",
                f"{PYTHON} -m venv .venv && .venv/bin/pip install -q "
                "--upgrade pip && .venv/bin/pip install -q -e '.[dev]'",
            ],
            floor_clone,
        )
        print(f"baseline: venv + pip install of the same dependencies: {floor:.1f} s")
    print(
        f"RESULT first_run first_page_s={page:.1f} test_s={test:.1f} "
        f"install_floor_s={floor:.1f} ratio={page / floor:.2f}"
    )


if __name__ == "__main__":
    sys.exit(main())

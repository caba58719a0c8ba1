"""favorkern.cli: Ctrl-C stops a long command at once (status 130, no partial output)."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_a_long_attention_command_promptly():
    env = dict(os.environ, PYTHONPATH=str(ROOT), FAVORKERN_NUM_THREADS="2")
    process = subprocess.Popen(
        [sys.executable, "-m", "favorkern", "attention", "--lengths", "65536"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stderr = []
    started = threading.Event()

    def read():
        for chunk in iter(lambda: process.stderr.read1(4096), b""):
            stderr.append(chunk)
            if b"attention:" in b"".join(stderr):  # the progress bar: computing
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        started.wait(60)
        time.sleep(3.0)  # inside the computation (the pool's threads busy)
        assert process.poll() is None, b"".join(stderr)
        process.send_signal(signal.SIGINT)
        sent = time.monotonic()
        try:
            process.wait(timeout=20)  # the table is small: the pipe cannot fill
        except subprocess.TimeoutExpired:
            pytest.fail("favorkern attention still ran 20 s after Ctrl-C")
        waited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stdout = process.stdout.read()
    reader.join(5)
    assert process.returncode == 130
    assert stdout == b""  # no partial table
    assert b"interrupted" in b"".join(stderr)
    assert waited < 10.0  # about a second; generous for a loaded machine

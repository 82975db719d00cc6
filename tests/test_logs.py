"""The one logging helper of the workflow scripts: errors reach the rule's log."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

from deemd import logs
from deemd.logs import start_rule_log

SCRIPTS = Path(__file__).resolve().parents[1] / "workflow" / "scripts"


def run_script(tmp_path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import logging, sys
        sys.path.insert(0, {str(SCRIPTS)!r})
        from deemd.logs import start_rule_log
        """) + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path)


def test_uncaught_error_is_in_the_log_and_on_stderr_with_non_zero_exit(tmp_path):
    result = run_script(tmp_path, """
        start_rule_log("logs/rule/job.log")
        logging.info("144 rows")
        def main():
            raise ValueError("plates.csv, column 'well': value 'Z99' is not a well")
        main()
        """)
    assert result.returncode == 1
    log = (tmp_path / "logs/rule/job.log").read_text()
    assert "INFO 144 rows" in log
    assert "ERROR failed: ValueError: plates.csv, column 'well': value 'Z99' is not a well" in log
    assert "Traceback (most recent call last)" in log and "in main" in log
    # stderr keeps the usual traceback, once.
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert "ValueError: plates.csv, column 'well'" in result.stderr


def test_success_and_sys_exit_are_not_errors(tmp_path):
    ok = run_script(tmp_path, """
        start_rule_log("ok.log")
        logging.info("done")
        """)
    assert ok.returncode == 0 and "ERROR" not in (tmp_path / "ok.log").read_text()
    exited = run_script(tmp_path, """
        start_rule_log("exit.log")
        sys.exit(3)
        """)
    assert exited.returncode == 3


def test_repeated_calls_switch_the_file_and_install_the_hook_once(tmp_path):
    saved_hook, saved_previous = sys.excepthook, logs._previous_hook
    # Start as a fresh process would: earlier tests may have installed the hook already.
    sys.excepthook, logs._previous_hook = sys.__excepthook__, None
    previous = sys.excepthook
    try:
        start_rule_log(tmp_path / "a.log")
        logging.info("first")
        start_rule_log(tmp_path / "b.log")
        logging.info("second")
        assert sys.excepthook is logs.log_uncaught
        assert logs._previous_hook is previous
        try:
            raise KeyError("well 'B02'")
        except KeyError:
            seen = []
            logs._previous_hook = lambda *exc: seen.append(exc[0])
            logs.log_uncaught(*sys.exc_info())
        assert seen == [KeyError]
    finally:
        sys.excepthook, logs._previous_hook = saved_hook, saved_previous
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    assert "first" in (tmp_path / "a.log").read_text() and "first" not in (tmp_path / "b.log").read_text()
    assert "ERROR failed: KeyError: \"well 'B02'\"" in (tmp_path / "b.log").read_text()

"""The report's run metadata (deemd/run_metadata.py)."""

from __future__ import annotations

import datetime
import shutil

import pytest

from deemd.run_metadata import config_digest, git_commit, metadata_record, python_versions, r_versions


def test_config_digest_ignores_key_order_and_sees_every_value():
    assert config_digest({"a": 1, "b": {"c": [1, 2]}}) == config_digest({"b": {"c": [1, 2]}, "a": 1})
    assert config_digest({"a": 1, "b": {"c": [1, 2]}}) != config_digest({"a": 1, "b": {"c": [2, 1]}})
    assert len(config_digest({})) == 64


def test_versions_name_what_is_missing(tmp_path):
    found = python_versions(["numpy", "no-such-package-deemd"])
    assert found["numpy"][0].isdigit() and found["no-such-package-deemd"] == "not installed"
    assert r_versions(["rstatix"], rscript=str(tmp_path / "no-R")) == {"R": "not installed", "rstatix": "not installed"}
    assert git_commit(tmp_path) == "unknown"


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="no R here (install.sh installs it as root)")
def test_r_versions_from_rscript():
    found = r_versions(["rstatix", "noSuchPackageDeemd"])
    assert found["R"][0].isdigit() and found["noSuchPackageDeemd"] == "not installed"


def test_record_is_a_flat_dict_of_strings():
    record = metadata_record("demo", "synthetic", "ab" * 32, "abc123", {"torch": "2.15.0", "rstatix": "0.7.2"},
                             date=datetime.date(2026, 1, 2))
    assert list(record) == ["dataset", "config sha256", "deemd", "torch", "rstatix", "date"]
    assert record["dataset"] == "demo (synthetic)" and record["date"] == "2026-01-02"
    assert all(isinstance(v, str) for v in record.values())

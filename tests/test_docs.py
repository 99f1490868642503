"""The README matches the code."""

from __future__ import annotations

import re
from pathlib import Path

from rlm_wificore.policy import MESSAGES
from wificore.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
MODULE = (ROOT / "raddb/mods-available/wificore").read_text()


class TestReadme:
    def test_every_setting_with_default(self):
        """The settings table lists every setting with its built-in default."""
        for key, default, _doc in Settings.describe():
            assert f"| `{key}` | `{default}` |" in README, key

    def test_every_coa_setting_with_default(self):
        """The CoA sidecar's table lists every WIFICORE_COA_* setting with its default, and
        only those."""
        from coa_sender.config import CoaConfig

        table = README.split("<!-- coa-settings:start -->", 1)[1].split("<!-- coa-settings:end -->", 1)[0]
        for var, default, _doc in CoaConfig.describe():
            assert f"| `{var}` | `{default}` |" in table, var
        assert table.count("| `WIFICORE_COA_") == len(CoaConfig.describe())

    def test_module_config_block_has_every_setting(self):
        """mods-available/wificore sets every key of Settings, and only those."""
        block = MODULE.split("\n\tconfig {", 1)[1]
        keys = set(re.findall(r"^\s*([a-z_]+)\s*=", block, re.M))
        assert keys == {k for k, _d, _doc in Settings.describe()}

    def test_every_reason_documented(self):
        """Every reject reason code appears in the README."""
        for reason in MESSAGES:
            assert f"`{reason}`" in README, reason

    def test_ci_runs_the_readme_test_command(self):
        """.ci/run calls the README's test command."""
        assert "bin/test" in README and "bin/test" in (ROOT / ".ci/run").read_text()

    def test_local_links_resolve(self):
        """Every relative link of the README names a file or folder of the repository."""
        links = [m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README) if "://" not in m]
        assert "docs/citus.md" in links and "docs/capacity.md" in links
        assert [m for m in links if not (ROOT / m).exists()] == []

    def test_performance_section_is_the_last_run(self):
        """The README's performance section is what report.py renders from latest.json."""
        import json
        import sys
        sys.path.insert(0, str(ROOT / "benchmarks"))
        import report
        results = json.loads((ROOT / "benchmarks/results/latest.json").read_text())
        section = README.split(report.README_START, 1)[1].split(report.README_END, 1)[0]
        assert section.strip() == report.readme_section(results).strip()

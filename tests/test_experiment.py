"""What an experiment's temporary workspace would lack is refused before it runs. The run itself
(workspace byte-identical afterwards, DVC's record, the artifacts under the experiment's keys)
is tested through the README's deployment recipe in tests/test_deployment.py, which runs the
same pipeline flow."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipeline_repo import sh
from uit.app.flows import pipeline
from uit.core.errors import ConfigError


def test_untracked_real_data_in_the_project_is_refused(tmp_path: Path) -> None:
    """Real data copied under the project but not added to DVC would be missing from the
    experiment's temporary workspace: one error naming the key and the fix; DVC-tracked data
    and data outside the project pass."""
    sh("git", "init", "-q", cwd=tmp_path)
    (tmp_path / "params.yaml").write_text("data:\n  source: real\n  root: data/real\n")
    for folder in ("CUHK-PEDES", "ICFG-PEDES", "RSTPReid"):
        (tmp_path / "data" / "real" / folder).mkdir(parents=True)
    (tmp_path / "data" / "real" / "CUHK-PEDES.dvc").write_text("outs: []\n")
    with pytest.raises(ConfigError, match=r"params.yaml data.root: data/real/ICFG-PEDES, "
                       r"data/real/RSTPReid .*`dvc add data/real/ICFG-PEDES"):  # fmt: skip
        pipeline.refuse_untracked_data(str(tmp_path), [])
    pipeline.refuse_untracked_data(str(tmp_path), [f"data.root={tmp_path.parent / 'elsewhere'}"])
    synthetic = ["data.source=synthetic"]
    assert pipeline.untracked_data(str(tmp_path), synthetic) == []  # the synth stage makes them
    # only the benchmarks the experiment runs on: the others' folders are not needed
    assert pipeline.untracked_data(str(tmp_path), ["data.benchmarks=[cuhk-pedes]"]) == []
    assert pipeline.untracked_data(str(tmp_path), ["data.benchmarks=[rstpreid]"]) == [
        "data/real/RSTPReid"
    ]

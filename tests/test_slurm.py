"""`avanon slurm`: the job graph (--dry-run, no submitit needed), a clear error without submitit, the #SBATCH lines
and dependencies submitted to a stand-in sbatch, and the whole recipe end to end on submitit's local executor."""
import json
import os
import re
import sys
from pathlib import Path

import pytest

from avanon.cli import main
from test_study_gpus import DEMO, TESTS, tiny

STUDY = ("out", "synthetic", "study", "demo")


def test_dry_run_prints_every_job_and_submits_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # a dry run needs no submitit
    args = tiny(tmp_path) + ["--shards", "3", "--partition", "gpu", "--gpus-per-run", "2", "--time", "90",
                             "--sbatch", "qos=high"]
    assert main(["slurm", str(DEMO), "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert "\n7 jobs (slurm executor); every job: partition=gpu, qos=high\n" in out
    assert "[1] anonymize: job demo-anonymize (array of 3)" in out
    assert re.search(r"command: avanon --import test_study_gpus run \S+demo.yaml .*--only body_mask_out "
                     r"--anonymize-only --no-progress --shard \$SLURM_ARRAY_TASK_ID/3\n", out)
    assert "[2] merge: job demo-merge\n    command: avanon merge " in out
    assert out.count("depends on: afterok: merge") == 4  # the (original, body_mask_out) x seeds 0, 1 runs
    assert out.count("--standalone --nproc_per_node=2 -m avanon.study.training") == 4
    assert out.count("--trainer fake_gpu_recorder --import test_study_gpus [--resume] > ") == 4
    assert out.count("gpus_per_node=2, cpus_per_task=2") == 4 and "timeout_min=90" in out
    assert ("depends on: afterany: train:original:0, train:original:1, train:body_mask_out:0, "
            "train:body_mask_out:1") in out
    assert not (tmp_path / "out").exists()


def test_missing_submitit_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    assert main(["slurm", str(DEMO), *tiny(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert 'pip install -c constraints.txt "avanon[slurm]"' in err
    assert not (tmp_path / "out").exists()


def _submitit():
    return pytest.importorskip("submitit", reason='the extra "slurm" is not installed: '
                                                  'pip install -c constraints.txt -e ".[slurm]"')


def test_jobs_and_dependencies_as_sbatch_sees_them(tmp_path, capsys, monkeypatch):
    """Submitted to a stand-in `sbatch` (and `srun`, which submitit looks for): one array of 2 shard tasks, the
    merge after it, each training run after the merge with its GPUs, the report after every run."""
    _submitit()
    bin_dir, seen = tmp_path / "bin", tmp_path / "submitted"
    bin_dir.mkdir()
    seen.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"""#!/bin/sh
n=$(ls {seen} | wc -l); id=$((100 + n)); cp "$1" {seen}/$id.sh; echo "Submitted batch job $id"
""")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = tiny(tmp_path, trainer="torchvision") + ["--shards", "2", "--partition", "gpu", "--set", "study.seeds=[0]"]
    assert main(["slurm", str(DEMO), *args]) == 0
    out = capsys.readouterr().out
    assert "submitted 5 jobs (100, 101, 102, 103, 104)" in out
    jobs = {int(p.stem): p.read_text() for p in seen.iterdir()}
    assert sorted(jobs) == [100, 101, 102, 103, 104]
    anon, merge, train0, train1, report = (jobs.get(i, "") for i in range(100, 105))
    assert "#SBATCH --array=0-1%2" in anon and "#SBATCH --gpus-per-node=1" in anon
    assert "#SBATCH --partition=gpu" in anon and "--dependency" not in anon
    assert "#SBATCH --dependency=afterok:100" in merge and "#SBATCH --kill-on-invalid-dep=yes" in merge
    for train in (train0, train1):
        assert "#SBATCH --dependency=afterok:101" in train and "#SBATCH --gpus-per-node=1" in train
    assert "#SBATCH --dependency=afterany:102:103" in report
    assert not (tmp_path.joinpath(*STUDY) / "results.jsonl").exists()


@pytest.mark.slow
def test_local_executor_end_to_end(tmp_path, capsys, monkeypatch):
    """The whole recipe through submitit's LocalExecutor (no dependencies there: the stages run in order, each
    waited for): 2 anonymization tasks, the merge, the 2 training runs (torchvision trainer, 2 iterations on CPU),
    the report."""
    _submitit()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    args = tiny(tmp_path, trainer="torchvision") + ["--shards", "2", "--set", "study.seeds=[0]",
                                                    "--set", "study.config.device=cpu"]
    assert main(["slurm", str(DEMO), "--executor", "local", *args]) == 0
    out = capsys.readouterr().out
    assert "done on the local executor (5 jobs" in out
    mirror = tmp_path / "out" / "synthetic" / "body_mask_out"
    assert (mirror / "manifest.jsonl").is_file() and not list(mirror.glob("manifest-*of*"))
    sdir = tmp_path.joinpath(*STUDY)
    rows = [json.loads(t) for t in (sdir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["mirror"] for r in rows) == ["body_mask_out", "original"]
    assert (sdir / "report" / "report.md").is_file()
    for r in rows:
        assert (Path(r["run_dir"]) / "train.log").is_file() and (Path(r["run_dir"]) / "metrics.json").is_file()
    # submitting again would skip the finished runs: only the anonymization (resumed), merge and report jobs
    assert main(["slurm", str(DEMO), "--executor", "local", "--dry-run", *args]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 jobs (local executor)\n") and "train:" not in out

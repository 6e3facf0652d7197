"""`avanon run --gpus`: argument checks, the process pool (each process sees its own CUDA_VISIBLE_DEVICES), results
appended under the lock by many processes, the study's runs as concurrent processes on fake GPUs (a fake trainer
registered through the trainer registry and imported by the training processes), a failed run that the others
outlive, resuming an interrupted concurrent study, and mirrors written by 2 shard processes equal to 1 process."""
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

import pytest

from avanon.cli import main
from avanon.cliutil import parse_gpus
from avanon.study.training.trainers import TRAINERS

DEMO = Path(__file__).parent.parent / "recipes" / "demo.yaml"
TESTS = Path(__file__).parent
FAKE = "fake_gpu_recorder"


@TRAINERS.register(FAKE)
def fake_trainer(config, out_dir, *, resume=False, test_only=False, argv=None, progress=False):
    """Records what the process saw; FAKE_TRAINER_FAIL=runs/MIRROR/seedK leaves a checkpoint and exits 3 there (an
    interrupted run); FAKE_TRAINER_SLEEP keeps it busy."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {"cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "resume": resume, "test_only": test_only,
              "seed": config["seed"], "image_root": config["data"]["image_root"], "pid": os.getpid(),
              "rank": os.environ.get("RANK"), "world": os.environ.get("WORLD_SIZE"), "start": time.time()}
    time.sleep(float(os.environ.get("FAKE_TRAINER_SLEEP", "0")))
    record["end"] = time.time()
    with open(out / "calls.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    fail = os.environ.get("FAKE_TRAINER_FAIL")
    if fail and out.as_posix().endswith(fail):
        (out / "checkpoint.pth").write_bytes(b"interrupted")
        raise SystemExit(3)
    if os.environ.get("RANK", "0") == "0":
        (out / "metrics.json").write_text(json.dumps({"paper": {"AP": 10.0 + config["seed"], "AP_person": 5.0}}))
        (out / "model_final.pth").write_bytes(b"final")
    return {"event": "end", "out_dir": str(out)}


@pytest.fixture(autouse=True)
def no_visible_devices(monkeypatch):
    """--gpus ids map through this process's CUDA_VISIBLE_DEVICES; the tests start without one."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def tiny(tmp_path, out="out", trainer=FAKE):
    return ["--set", f"dataset.root={tmp_path / 'data'}", "--set", f"output.root={tmp_path / out}",
            "--set", "dataset.options.num_train=4", "--set", "dataset.options.num_val=2",
            "--set", "study.config.solver.iterations=2", "--set", "study.config.solver.steps=[1]",
            "--set", "study.mirrors=[body_mask_out]", "--set", "study.seeds=[0, 1]",
            "--set", f"study.trainer={trainer}", "--only", "body_mask_out"]


def sets(args):
    """The --set values of a command line (load_recipe's overrides)."""
    return [v for k, v in zip(args, args[1:]) if k == "--set"]


@pytest.fixture
def importable(monkeypatch):
    """The training processes import this module (--import) to find the fake trainer."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("FAKE_TRAINER_FAIL", raising=False)


def calls(run_dir):
    path = Path(run_dir) / "calls.jsonl"
    return [json.loads(t) for t in path.read_text().splitlines()] if path.is_file() else []


def results(sdir):
    return [json.loads(t) for t in (sdir / "results.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------------ arguments
def test_parse_gpus():
    assert parse_gpus("0,1,2,3") == [0, 1, 2, 3]
    assert parse_gpus("4") == [0, 1, 2, 3]
    assert parse_gpus("3,") == [3]
    assert parse_gpus(" 2, 5 ") == [2, 5]
    for bad, why in [("a,b", "not a device id"), ("0,0", "given twice"), ("0", "at least 1"), ("-1,2", "not a device"),
                     ("0,,1", "not a device id"), ("x", "device ids")]:
        with pytest.raises(Exception, match=why):
            parse_gpus(bad)


@pytest.mark.parametrize("args, message", [
    (["--gpus", "0,x"], "'x' is not a device id"),
    (["--gpus", "1,1"], "device 1 given twice"),
    (["--gpus", "0,1,2", "--gpus-per-run", "2"], "--gpus-per-run 2 does not divide the 3 GPUs"),
    (["--gpus-per-run", "2"], "--gpus-per-run needs --gpus"),
    (["--gpus", "2", "--shard", "0/2"], "either --gpus or --shard"),
])
def test_bad_gpu_arguments_are_argparse_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["run", str(DEMO), "--no-progress", *tiny(tmp_path), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ the pool
def test_pool_gives_each_process_its_gpus_and_runs_one_per_group(tmp_path):
    from avanon.study.launch import Task, gpu_groups, run_pool

    groups = gpu_groups([4, 5, 6, 7], 2)
    assert groups == [[4, 5], [6, 7]]
    with pytest.raises(ValueError, match="does not divide"):
        gpu_groups([0, 1, 2], 2)
    code = ("import os, sys, time, json; t = time.time(); time.sleep(0.3); "
            "print(json.dumps([os.environ['CUDA_VISIBLE_DEVICES'], t, time.time()])); sys.exit(int(sys.argv[1]))")
    tasks = [Task(f"t{i}", [sys.executable, "-c", code, "1" if i == 3 else "0"], tmp_path / f"t{i}.log")
             for i in range(5)]
    started = []
    done = run_pool(tasks, groups, on_start=lambda t, g: started.append((t.name, g)), poll_s=0.05)
    assert sorted((t.name, c) for t, c in done) == [("t0", 0), ("t1", 0), ("t2", 0), ("t3", 1), ("t4", 0)]
    assert started[:2] == [("t0", [4, 5]), ("t1", [6, 7])]
    spans = []
    for (name, group) in started:
        seen, t0, t1 = json.loads((tmp_path / f"{name}.log").read_text().splitlines()[-1])
        assert seen == ",".join(map(str, group))  # the process saw exactly its group
        spans.append((t0, t1))
    for t in sorted(x for span in spans for x in span):  # never more than one process per group at a time
        assert sum(t0 <= t < t1 for t0, t1 in spans) <= len(groups)


def _append_many(args):
    from avanon.study.runner import append_result

    path, writer, n = args
    for i in range(n):
        append_result(Path(path), {"mirror": f"w{writer}", "seed": i, "pad": "x" * (20000 + writer)})


def test_concurrent_appends_never_lose_or_interleave_lines(tmp_path):
    from avanon.study.runner import finished_runs

    path = tmp_path / "results.jsonl"
    path.write_text('{"mirror": "torn", "se')  # a writer killed mid-line: the next line must stay whole
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(_append_many, [(str(path), w, 40) for w in range(8)])
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 8 * 40
    rows = [json.loads(t) for t in lines[1:]]
    assert sorted((r["mirror"], r["seed"]) for r in rows) == sorted((f"w{w}", i) for w in range(8) for i in range(40))
    assert len(finished_runs(path)) == 8 * 40


# ------------------------------------------------------------------------------------------------ the study
def test_training_command_lines(tmp_path):
    from avanon.recipe import load_recipe
    from avanon.study.launch import training_argv
    from avanon.study.runner import plan_runs

    recipe = load_recipe(DEMO, sets(tiny(tmp_path)))
    run = plan_runs(recipe, [])[0]
    one = training_argv(recipe, run, 1)
    assert one[:3] == [sys.executable, "-m", "avanon.study.training"]
    assert "--resume" not in one and one[one.index("--import") + 1] == __name__
    cfg = json.loads(Path(one[one.index("--config") + 1]).read_text())
    assert cfg["seed"] == run.seed and cfg["data"]["image_root"] == str((tmp_path / "data").resolve())
    (run.out / "checkpoint.pth").write_bytes(b"x")
    ddp = training_argv(recipe, run, 4)
    assert ddp[:7] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                       "avanon.study.training"]
    assert "--resume" in ddp and "--test-only" in training_argv(recipe, run, 1, test_only=True)


@pytest.mark.slow
def test_study_runs_concurrently_on_two_fake_gpus_and_resumes(tmp_path, capsys, importable, monkeypatch):
    """Mirrors in this process, then the study's 4 runs on fake GPUs 0 and 1 (a run interrupted: the others
    finish, exit 1 naming it and its log), then the same command resumes it from its checkpoint."""
    from avanon.pipeline import planned_mirrors
    from avanon.recipe import load_recipe
    from avanon.study.launch import LaunchError, run_study_on_gpus

    args = tiny(tmp_path)
    assert main(["run", str(DEMO), "--no-progress", "--anonymize-only", *args]) == 0
    recipe = load_recipe(DEMO, sets(args))
    mirrors = planned_mirrors(recipe, ["body_mask_out"])
    sdir = tmp_path / "out" / "synthetic" / "study" / "demo"
    runs = sdir / "runs"
    monkeypatch.setenv("FAKE_TRAINER_FAIL", "body_mask_out/seed1")
    monkeypatch.setenv("FAKE_TRAINER_SLEEP", "0.5")
    with pytest.raises(LaunchError, match=r"1 of 4 runs failed[\s\S]*body_mask_out seed 1: exit code 3; log: "
                                          + str(runs / "body_mask_out" / "seed1" / "train.log")):
        run_study_on_gpus(recipe, mirrors, [0, 1])
    assert sorted((r["mirror"], r["seed"]) for r in results(sdir)) == [("body_mask_out", 0), ("original", 0),
                                                                       ("original", 1)]
    assert not (sdir / "report").exists()  # the report waits for every run
    seen = {c["cuda"] for d in runs.glob("*/seed*") for c in calls(d)}
    assert seen == {"0", "1"}  # each process saw one fake GPU, and both were used
    for d in runs.glob("*/seed*"):
        c = calls(d)
        assert len(c) == 1 and not c[0]["resume"]
        assert c[0]["image_root"].endswith("body_mask_out" if d.parent.name == "body_mask_out" else "data")
    starts = sorted((c["start"], c["end"]) for d in runs.glob("*/seed*") for c in calls(d))
    assert any(b[0] < a[1] for a, b in zip(starts, starts[1:]))  # two runs at the same time
    assert not (runs / "original" / "seed0" / "checkpoint.pth").exists()
    assert (runs / "body_mask_out" / "seed1" / "checkpoint.pth").exists()
    capsys.readouterr()

    monkeypatch.delenv("FAKE_TRAINER_FAIL")
    monkeypatch.setenv("FAKE_TRAINER_SLEEP", "0")
    assert main(["run", str(DEMO), "--no-progress", "--gpus", "1,", *args]) == 0  # one GPU: device 1
    out = capsys.readouterr().out
    assert "study run 1 of 4: original seed 0: done earlier" in out
    assert "study run 4 of 4: body_mask_out seed 1: resuming on GPU 1" in out
    resumed = calls(runs / "body_mask_out" / "seed1")
    assert [c["resume"] for c in resumed] == [False, True] and resumed[1]["cuda"] == "1"
    assert all(len(calls(d)) == 1 for d in runs.glob("*/seed*") if d != runs / "body_mask_out" / "seed1")
    assert len(results(sdir)) == 4 and (sdir / "report" / "report.md").is_file()
    assert "study done: 4 runs" in out
    capsys.readouterr()
    assert main(["run", str(DEMO), "--no-progress", "--gpus", "2", *args]) == 0
    assert "study: nothing to do; 4 runs done earlier" in capsys.readouterr().out


@pytest.mark.slow
def test_ddp_run_under_torch_distributed_run(tmp_path, capsys, importable):
    """--gpus-per-run 2: each run is one torch.distributed.run job of 2 processes on both fake GPUs."""
    from avanon.pipeline import planned_mirrors
    from avanon.recipe import load_recipe
    from avanon.study.launch import run_study_on_gpus

    args = tiny(tmp_path)[:-2] + ["--set", "study.seeds=[0]", "--set", "study.mirrors=[]", "--set",
                                  "anonymize=[]"]
    recipe = load_recipe(DEMO, sets(args))
    run_study_on_gpus(recipe, planned_mirrors(recipe), [0, 1], 2)
    c = calls(tmp_path / "out" / "synthetic" / "study" / "demo" / "runs" / "original" / "seed0")
    assert sorted((x["rank"], x["world"], x["cuda"]) for x in c) == [("0", "2", "0,1"), ("1", "2", "0,1")]


@pytest.mark.slow
def test_two_shard_processes_write_the_mirror_one_process_writes(tmp_path, capsys):
    """`--gpus 0,1` writes each mirror as 2 shard processes (logs under OUT/ADAPTER/logs/NAME) and merges them: the
    mirror's files and manifest equal a single process's (run.json and summary.json name their own output root)."""
    args = tiny(tmp_path, trainer="torchvision")
    assert main(["run", str(DEMO), "--no-progress", "--anonymize-only", "--gpus", "0,1", *args]) == 0
    assert main(["run", str(DEMO), "--no-progress", "--anonymize-only", *args,
                 "--set", f"output.root={tmp_path / 'one'}"]) == 0
    sharded, one = (tmp_path / o / "synthetic" / "body_mask_out" for o in ("out", "one"))
    logs = tmp_path / "out" / "synthetic" / "logs" / "demo"
    assert sorted(p.name for p in logs.iterdir()) == ["anonymize-shard-0.log", "anonymize-shard-1.log"]
    assert "CUDA_VISIBLE_DEVICES=1" in (logs / "anonymize-shard-1.log").read_text()

    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and p.name not in ("run.json", "summary.json")}

    assert tree(sharded) == tree(one) and "manifest.jsonl" in tree(one)
    assert not list(sharded.glob("manifest-*of*")) and not list(sharded.glob("summary-*of*"))
    s1, s2 = (json.loads((m / "summary.json").read_text()) for m in (sharded, one))
    assert (s1["images"], s1["anonymized"], s1["failed"]) == (s2["images"], s2["anonymized"], s2["failed"])


def test_a_failed_shard_is_named_with_its_log(tmp_path, capsys, monkeypatch):
    """A shard process that fails: exit 1, the shard and its log named, nothing merged, no study."""
    from avanon.study import launch

    monkeypatch.setattr(launch, "CLI", [sys.executable, "-c", "import sys; print('boom'); "
                                        "sys.exit(2 if '1/2' in sys.argv else 0)"])
    assert main(["run", str(DEMO), "--no-progress", "--gpus", "0,1", *tiny(tmp_path)]) == 1
    err = capsys.readouterr().err
    log = tmp_path / "out" / "synthetic" / "logs" / "demo" / "anonymize-shard-1.log"
    assert f"anonymize shard 1/2 failed (exit code 2); log: {log}" in err and "| boom" in err
    assert "1 of 2 anonymization shards failed" in err
    assert not (tmp_path / "out" / "synthetic" / "study").exists()


@pytest.mark.slow
def test_real_training_on_two_fake_gpus(tmp_path, capsys):
    """The torchvision trainer end to end as concurrent processes on CPU (--gpus 0,1 with device cpu)."""
    args = tiny(tmp_path, trainer="torchvision") + ["--set", "study.seeds=[0]", "--set", "study.config.device=cpu"]
    assert main(["run", str(DEMO), "--no-progress", "--gpus", "0,1", *args]) == 0
    sdir = tmp_path / "out" / "synthetic" / "study" / "demo"
    assert sorted(r["mirror"] for r in results(sdir)) == ["body_mask_out", "original"]
    for r in results(sdir):
        run = Path(r["run_dir"])
        assert (run / "config.json").is_file() and "CUDA_VISIBLE_DEVICES=" in (run / "train.log").read_text()
        assert not (run / "checkpoint.pth").exists() and (run / "model_final.pth").is_file()
    assert (sdir / "report" / "report.md").is_file()


def test_pool_skips_a_task_whose_lock_is_held_or_that_is_done_meanwhile(tmp_path):
    """A run being trained by another launcher (its lock held) is not started twice; a run that finished meanwhile
    (prepare() says None) is skipped; the lock is held by the process for as long as it runs."""
    from avanon.study.launch import BUSY, SKIPPED, Task, run_pool, try_lock

    held = try_lock(tmp_path / "a.lock")
    code = "import fcntl, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"
    tasks = [Task("busy", [sys.executable, "-c", "pass"], tmp_path / "busy.log", lock=tmp_path / "a.lock"),
             Task("done", None, tmp_path / "done.log", prepare=lambda: None),
             Task("holds", None, tmp_path / "holds.log", lock=tmp_path / "b.lock",
                  prepare=lambda: [sys.executable, "-c", code, str(tmp_path / "b.lock")])]
    done = dict((t.name, c) for t, c in run_pool(tasks, [[0]], poll_s=0.05))
    os.close(held)
    assert done["busy"] == BUSY and done["done"] == SKIPPED
    assert done["holds"] == 1  # its own lock file is held (by itself, inherited): a second flock fails
    assert not (tmp_path / "busy.log").exists()


def test_sigterm_stops_every_process_the_pool_started(tmp_path):
    import signal
    import threading

    from avanon.study.launch import Task, run_pool

    code = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    tasks = [Task(f"t{i}", [sys.executable, "-c", code, str(tmp_path / f"t{i}.pid")], tmp_path / f"t{i}.log")
             for i in range(2)]
    def stop_when_both_run():
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all((tmp_path / f"t{i}.pid").exists() for i in range(2)):
            time.sleep(0.05)
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Thread(target=stop_when_both_run)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_pool(tasks, [[0], [1]], poll_s=0.05)
    timer.join()
    assert time.monotonic() - t0 < 30
    for i in range(2):
        pid = int((tmp_path / f"t{i}.pid").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert signal.getsignal(signal.SIGTERM) == before  # restored


def test_device_ids_map_through_this_process_visible_devices(tmp_path, monkeypatch, capsys):
    """Inside an allocation (CUDA_VISIBLE_DEVICES=5,7), --gpus 0,1 means devices 5 and 7; an id beyond it is an
    argparse error."""
    from avanon.study.launch import Task, device_names, run_pool

    assert device_names([0, 1], {}) == ["0", "1"]
    assert device_names([1], {"CUDA_VISIBLE_DEVICES": "GPU-aa, GPU-bb"}) == ["GPU-bb"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    code = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    run_pool([Task("t", [sys.executable, "-c", code], tmp_path / "t.log")], [[1, 0]], poll_s=0.05)
    assert (tmp_path / "t.log").read_text().splitlines()[-1] == "7,5"
    with pytest.raises(SystemExit):
        main(["run", str(DEMO), "--no-progress", *tiny(tmp_path), "--gpus", "0,2"])
    assert "device 2 does not exist here: CUDA_VISIBLE_DEVICES=5,7 shows 2 devices" in capsys.readouterr().err

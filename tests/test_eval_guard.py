"""Nothing silently wrong in an output folder (issue 17, part B): one evaluation per folder, fingerprints that
cover the images, reruns that never lose captions, failures that end every rank, SIGTERM, the launcher's world
size, the default output folder.

Real processes where the hole needs one (a second run on a busy folder, SIGTERM mid-batch, SIGKILL mid-rewrite,
faults on one rank under torchrun). Interrupting tests never race the run: the run pauses at a named point
(``panollava/evaluation/testhooks.py``) until the test has done what it tests.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from multi_eval import subprocess_env
from panollava.cli import main

PROJECT_ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 15  # quic360-sample/test.csv: 15 (url, query) pairs on 5 panoramas


_env = subprocess_env


@pytest.fixture(scope="module")
def data(shared_data_dir: Path, tmp_path_factory) -> Path:
    """The 5 real panoramas (copies, so that tests may replace them) and test.csv (15 samples)."""
    folder = tmp_path_factory.mktemp("guard_data")
    shutil.copytree(shared_data_dir / "quic360-sample", folder, dirs_exist_ok=True)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder / "test.csv"


def _args(tiny_run, csv: Path, out: Path, *extra: str) -> list[str]:
    return ["test", "--ckpt_dir", str(tiny_run["run_dir"]), "--csv_input", str(csv), "--output_dir", str(out),
            "--max_new_tokens", "6", "--batch_size", "1", "--progress", "false", *extra]


def _spawn(args: list[str], pause_dir: Path, *points: str) -> subprocess.Popen:
    pause_dir.mkdir(parents=True, exist_ok=True)
    env = _env(PANOLLAVA_TEST_PAUSE=",".join(points), PANOLLAVA_TEST_PAUSE_DIR=str(pause_dir))
    return subprocess.Popen([sys.executable, "-m", "panollava", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=pause_dir)


def _wait_reached(proc: subprocess.Popen, pause_dir: Path, point: str) -> None:
    """Waits until the run is paused at ``point`` (an event the run creates; the run waits for us, not the reverse)."""
    flag = pause_dir / f"{point}.reached"
    deadline = time.monotonic() + 300
    while not flag.exists():
        if proc.poll() is not None:
            output = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"the run ended (status {proc.returncode}) before pausing at {point!r}:\n{output[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run never reached {point!r}")
        time.sleep(0.02)


def _go(pause_dir: Path, point: str) -> None:
    (pause_dir / f"{point}.go").write_text("")


def _state(out: Path) -> dict:
    return json.loads((out / "eval_state.json").read_text())


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


# -- 1, 3, 13: a busy folder, SIGTERM mid-batch, a rerun killed while rewriting --------------------------------------
@pytest.mark.slow
def test_one_run_per_folder_sigterm_mid_batch_and_a_rerun_killed_mid_rewrite(tiny_run, data, tmp_path, capsys):
    out = tmp_path / "out"
    args = _args(tiny_run, data, out)

    # Run A pauses after its first flushed record, holding the folder.
    pauses = tmp_path / "pause_a"
    run_a = _spawn(args, pauses, "flushed", "mid_batch")
    _wait_reached(run_a, pauses, "flushed")

    # Run B, other settings and --overwrite true, is refused at once, naming the folder and A (pid, host).
    status = main(_args(tiny_run, data, out, "--max_new_tokens", "3", "--overwrite", "true"))
    captured = capsys.readouterr()
    text = captured.err
    assert status == 2, text[-3000:]
    assert "Loaded" not in captured.out  # refused before the model is loaded
    assert f"'{out}' is in use by another evaluation" in text and f"process {run_a.pid} on host " \
        f"'{socket.gethostname()}'" in text, text[-3000:]
    assert _state(out)["fingerprint"]["decoding.max_new_tokens"] == 6  # A's state untouched
    assert list((out / "shards").glob("*-rank0.jsonl"))

    # A goes on and pauses inside its next batch (at a decode step); SIGTERM stops it within seconds.
    _go(pauses, "flushed")
    _wait_reached(run_a, pauses, "mid_batch")
    started = time.monotonic()
    run_a.send_signal(signal.SIGTERM)
    output, _ = run_a.communicate(timeout=120)
    elapsed = time.monotonic() - started
    assert run_a.returncode == 1, output[-3000:]
    assert elapsed < 10, elapsed
    assert "interrupted by SIGTERM on rank 0: 1 sample(s) are saved" in output, output[-3000:]
    assert "Rerun the same command with the same --output_dir to resume" in output
    assert not (out / "metrics.json").exists()
    print(f"SIGTERM mid-batch: exited after {elapsed:.2f} s")

    # The same command resumes (the lock died with A) and finishes.
    assert main(args) == 0
    state = _state(out)
    assert state["complete"] and state["attempts"][-1]["resumed"] == 1
    assert state["attempts"][-1]["generated"] == NUM_SAMPLES - 1
    first = _records(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation_options"] == {"merge_lora": False, "view_device": "auto"}
    assert metrics["library_versions"]["torch"] and state["fingerprint"]["merge_lora"] is False

    # A rerun of the finished evaluation is killed (SIGKILL) while it rewrites the outputs ...
    pauses = tmp_path / "pause_c"
    run_c = _spawn(args, pauses, "rewrite")
    _wait_reached(run_c, pauses, "rewrite")
    assert not (out / "metrics.json").exists() and not _state(out)["complete"]
    run_c.send_signal(signal.SIGKILL)
    run_c.communicate(timeout=60)
    # ... and the next rerun (not blocked by the killed run's lock) loses no caption: it generates nothing.
    assert main(args) == 0
    state = _state(out)
    assert state["complete"] and state["attempts"][-1]["resumed"] == NUM_SAMPLES
    assert state["attempts"][-1]["generated"] == 0
    assert [(r["sample_id"], r["prediction"]) for r in _records(out)] == [
        (r["sample_id"], r["prediction"]) for r in first
    ]


@pytest.mark.slow
def test_a_full_disk_while_a_rerun_rewrites_the_outputs_loses_no_caption(tiny_run, data, tmp_path, monkeypatch,
                                                                          capsys):
    import errno

    import panollava.outputs.files as report

    out = tmp_path / "out"
    args = _args(tiny_run, data, out)
    assert main(args) == 0
    first = _records(out)
    real = report.write_text_atomic

    def disk_full(path, text):  # predictions.jsonl is replaced, then the disk is full
        if Path(path).name == "predictions.csv":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(report, "write_text_atomic", disk_full)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ENOSPC" in err and "Traceback" not in err, err[-3000:]
    assert not (out / "metrics.json").exists() and not _state(out)["complete"]
    monkeypatch.setattr(report, "write_text_atomic", real)
    assert main(args) == 0  # space is back: nothing is generated again
    state = _state(out)
    assert state["attempts"][-1]["resumed"] == NUM_SAMPLES and state["attempts"][-1]["generated"] == 0
    assert [r["prediction"] for r in _records(out)] == [r["prediction"] for r in first]


# -- 2, 9: the images are part of what is resumed; the advice never repeats --overwrite true --------------------------
@pytest.mark.slow
def test_a_resume_refuses_other_images_and_names_them(tiny_run, data, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(data.parent, base)
    out = tmp_path / "out"
    assert main(_args(tiny_run, base / "test.csv", out)) == 0
    images = sorted((base / "images").glob("*.jpg"))

    # The same CSV beside other images with the same names (two panoramas swapped).
    other = tmp_path / "other"
    shutil.copytree(base, other)
    a, b = other / "images" / images[0].name, other / "images" / images[1].name
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    # The same folder copied, images untouched (new paths and modification times, same content): resumes.
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    # One image replaced in place (another panorama's bytes).
    images[2].write_bytes(images[3].read_bytes())

    commands = [_args(tiny_run, other / "test.csv", out), _args(tiny_run, base / "test.csv", out),
                _args(tiny_run, moved / "test.csv", out)]
    result = subprocess.run([sys.executable, str(PROJECT_ROOT / "tests" / "multi_eval.py"), "--keep-going",
                             json.dumps(commands)], capture_output=True, text=True, env=_env(), cwd=tmp_path,
                            timeout=600)
    statuses = json.loads(result.stdout.strip().splitlines()[-1].removeprefix("STATUSES "))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert statuses == [2, 2, 0], result.stderr[-4000:]
    swapped, replaced = errors
    assert "2 image(s) changed" in swapped and images[0].name in swapped and images[1].name in swapped, swapped
    assert "1 image(s) changed" in replaced and images[2].name in replaced and "was replaced" in replaced, replaced
    for message in (swapped, replaced):
        assert "--overwrite true" not in message
        assert f"--overwrite would delete {NUM_SAMPLES} finished caption(s)" in message, message
        assert f"pass a new --output_dir (e.g. '{out}-2')" in message, message
    assert "Traceback" not in result.stderr
    state = _state(out)
    assert state["complete"] and state["attempts"][-1]["generated"] == 0  # the moved copy resumed everything


def test_default_output_folder_names_the_dataset(tiny_run, data, tmp_path, monkeypatch):
    from panollava.evaluation.plan import plan_evaluation

    monkeypatch.chdir(tmp_path)
    val = tmp_path / "val.csv"
    shutil.copy(data, val)
    plans = [plan_evaluation("test", cli={}, config={}, ckpt_dir=str(tiny_run["run_dir"]),
                             cli_csv=(str(csv), "--csv_input")) for csv in (data, val)]
    test_dir, val_dir = (p.output_dir for p in plans)
    assert test_dir != val_dir
    assert test_dir.name.endswith("-test") and val_dir.name.endswith("-val")
    assert test_dir.parent == val_dir.parent and test_dir.is_relative_to(tmp_path / "eval_results")


def test_fingerprint_covers_merge_lora():
    from panollava.evaluation.state import evaluation_fingerprint, fingerprint_changes

    def fingerprint(merge: bool) -> dict:
        return evaluation_fingerprint({"evaluation_options": {"merge_lora": merge, "view_device": "auto"}},
                                      mode="test", precision="32-true", device_type="cpu")

    assert fingerprint_changes(fingerprint(False), fingerprint(True)) == [("merge_lora", False, True)]
    old = {k: v for k, v in fingerprint(False).items() if k != "merge_lora"}
    assert fingerprint_changes(old, fingerprint(False)) == []  # recorded before: the default is no change


# -- 14: the launcher's world size ----------------------------------------------------------------------------------
@pytest.mark.parametrize("env, source", [
    ({"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=2 (torchrun)"),
    ({"SLURM_NTASKS": "4", "SLURM_JOB_NAME": "eval"}, "SLURM_NTASKS=4 (SLURM)"),
])
def test_a_launcher_world_size_the_trainer_does_not_expect_is_refused(tiny_run, data, tmp_path, monkeypatch,
                                                                      capsys, env, source):
    from panollava.distributed import check_launcher_world_size
    from panollava.errors import InvalidInputError

    for key in ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(InvalidInputError) as info:
        check_launcher_world_size(1, 1)
    message = str(info.value)
    assert source in message and "--trainer.num_nodes 1 x --trainer.devices 1 = 1" in message
    assert "--nnodes" in message and "--ntasks-per-node" in message
    n = int(source.split("=")[1].split()[0])
    check_launcher_world_size(n, 1)  # num_nodes x devices = the launcher's: accepted
    if "WORLD_SIZE" in env:  # the whole CLI refuses before any work (no output folder)
        out = tmp_path / "out"
        assert main(_args(tiny_run, data, out)) == 2
        assert source in capsys.readouterr().err
        assert not out.exists()


@pytest.mark.slow
@pytest.mark.ddp
def test_two_torchrun_nodes_without_num_nodes_are_refused_before_any_work(tiny_run, data, tmp_path):
    """The reported case: two ``torchrun --nnodes 2`` nodes (WORLD_SIZE 2), no ``--trainer.num_nodes``."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--node_rank",
         str(rank), "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "-m", "panollava",
         *_args(tiny_run, data, out, "--trainer.accelerator", "cpu")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path) for rank in (0, 1)]
    for node in nodes:
        output, _ = node.communicate(timeout=300)
        assert node.returncode != 0, output[-3000:]
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "WORLD_SIZE=2 (torchrun)" in errors[0], output[-3000:]
        assert "--trainer.num_nodes 1 x --trainer.devices 1 = 1" in errors[0]
        assert "evaluates" not in output  # no sample was evaluated
    assert not out.exists()


# -- 4: a fault on one rank, outside test_step, ends every rank ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.ddp
def test_a_fault_in_a_shard_write_or_the_merge_ends_every_rank_fast(tiny_run, data, tmp_path):
    faults = {"shard_write": 1, "merge": 0}
    procs, started = {}, time.monotonic()
    for fault, rank in faults.items():
        args = _args(tiny_run, data, tmp_path / fault, "--batch_size", "2", "--trainer.accelerator", "cpu",
                     "--trainer.strategy", "ddp", "--trainer.devices", "2")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--log-dir", str(tmp_path / f"logs_{fault}"), "--redirects", "3",  # each rank's output apart
               str(PROJECT_ROOT / "tests" / "fault_eval.py"), fault, str(rank), json.dumps(args)]
        procs[fault] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env=_env(), cwd=tmp_path)
    for fault, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        ended = time.time()  # an upper bound for the second launch (waited for after the first)
        elapsed = ended - float((tmp_path / f"fault_{fault}.time").read_text())
        print(f"{fault}: every rank ended within {elapsed:.1f} s of the fault "
              f"({time.monotonic() - started:.1f} s after the launch)")
        assert proc.returncode != 0, output[-4000:]
        assert elapsed < 60, (fault, elapsed)
        ranks = {r: "".join(p.read_text() for p in sorted((tmp_path / f"logs_{fault}").rglob(f"{r}/std*.log")))
                 for r in (0, 1)}
        errors = {r: [line for line in text.splitlines() if line.startswith("error: ")] for r, text in ranks.items()}
        rank = faults[fault]
        other = 1 - rank
        if fault == "shard_write":  # the failing rank's own message, and the other rank names it
            assert errors[rank] and errors[rank][0].startswith("error: cannot write '"), ranks[rank][-3000:]
            assert "ENOSPC" in errors[rank][0]
            assert errors[other] == [f"error: rank {rank} failed: {errors[rank][0].removeprefix('error: ')}"], \
                ranks[other][-3000:]
            assert "Traceback" not in ranks[0] + ranks[1]  # a full disk is the user's machine, not a bug
        else:  # rank 0's own error is a bug (its traceback is shown); rank 1 names it, without a traceback
            assert "RuntimeError: injected merge fault" in ranks[rank]
            assert errors[other] == ["error: rank 0 failed: RuntimeError: injected merge fault"], ranks[other][-3000:]
            assert "Traceback" not in ranks[other]
        assert not (tmp_path / fault / "metrics.json").exists()
        assert not _state(tmp_path / fault)["complete"]


def test_the_watchdog_ends_a_rank_that_waits_after_another_rank_failed(tmp_path):
    """A rank blocked where no collective reports the failure (here: asleep) ends soon after another rank's
    failure marker appears, with that rank's message (the normal path is given the grace period first)."""
    code = (
        "import logging, sys, time\n"
        "from pathlib import Path\n"
        "from panollava.console import configure_logging\n"
        "from panollava.evaluation.watchdog import FailureWatchdog, write_marker\n"
        "configure_logging(False)\n"
        "out = Path(sys.argv[1])\n"
        "FailureWatchdog(out, 'A1', rank=0, grace_s=1.0).start()\n"
        "write_marker(out, 'A0', 1, 'an earlier attempt failed')  # another attempt's marker: ignored\n"
        "write_marker(out, 'A1', 1, 'cannot write shard: No space left on device')\n"
        "time.sleep(60)\n"
        "sys.exit(0)\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            env=_env(), timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr[-2000:]
    assert elapsed < 30, elapsed
    assert "rank 1 (host " in result.stderr and "failed: cannot write shard: No space left on device; rank 0 ends " \
        "too" in result.stderr, result.stderr[-2000:]


def test_only_the_attempt_that_owns_the_state_completes_it(tmp_path):
    """If another attempt took the folder over (a filesystem without working locks), the earlier one may neither
    mark the state complete nor remove the shards."""
    from panollava.evaluation.state import (
        ShardWriter,
        StateOwnershipError,
        begin_attempt,
        finish_attempt,
        shard_path,
    )

    fp = {"checkpoint_sha256": "abc", "decoding.max_new_tokens": 8}
    first, _ = begin_attempt(tmp_path, fp, mode="test", overwrite=False, sample_ids=["s1"], world_size=1)
    second, _ = begin_attempt(tmp_path, fp, mode="test", overwrite=False, sample_ids=["s1"], world_size=1)
    writer = ShardWriter(shard_path(tmp_path, second, 0))
    writer.append([{"sample_id": "s1", "prediction": "x", "references": []}])
    writer.close()
    with pytest.raises(StateOwnershipError, match=f"attempt {first}"):
        finish_attempt(tmp_path, mode="test", attempt=first, generated=1, write_outputs=lambda: None,
                       metrics_name="metrics.json", metrics={})
    assert not _state(tmp_path)["complete"] and shard_path(tmp_path, second, 0).is_file()


def test_layout_keys_are_settings():
    """The keys left out of the resume fingerprint are settings keys (a name that is not one would never match)."""
    from panollava.evaluation.state import LAYOUT_KEYS
    from panollava.schema import SETTINGS

    assert LAYOUT_KEYS <= set(SETTINGS), sorted(LAYOUT_KEYS - set(SETTINGS))

"""What a run prints: one line per epoch, progress that degrades to plain lines off a
terminal, one line per recovered failure, and the library logs routed to a file.
The end-to-end shape of a real run's output is asserted in tests/train/test_train.py (the rerun of a
killed driver) and tests/train/test_demo.py."""

from __future__ import annotations

import io
import logging

import pytest

from alexnet.config import parse_overrides
from alexnet.train.progress import Display, describe_failure, epoch_line, failure_line
from jobs import output
from pipelines.errors import UserError

REPORT = {"epoch": 2, "train_loss": 1.23456, "val_loss": 1.5, "val_top1": 0.625, "val_top5": 0.9375, "lr": 0.001,
          "throughput_images_per_s": 812.4, "throughput_data_wait_fraction": 0.031, "time_epoch_s": 12.34}


def test_an_epoch_is_one_line_numbered_from_one_with_every_figure():
    line = epoch_line(REPORT, 12)
    assert line == ("epoch 3/12  train loss 1.2346  val loss 1.5000  top-1 0.6250  top-5 0.9375  lr 1.00e-03  "
                    "812 img/s  data wait 3%  12.3 s")


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_progress_is_a_plain_line_every_interval_then_the_epoch_line(capsys):
    out, clock = io.StringIO(), _Clock()
    display = Display(epochs=2, steps=10, images_per_step=32, out=out, interactive=False, plain_every_s=30,
                      clock=clock)
    for step, at in [(0, 0.0), (2, 10.0), (4, 31.0), (6, 45.0), (8, 62.0)]:
        clock.now = at
        display.handle(("step", 0, step))
    display.handle(("epoch", {**REPORT, "epoch": 0}))
    display.handle(("step", 0, 9))  # a late tick of a finished epoch draws nothing
    lines = out.getvalue().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("epoch 1/2: ") and "128/320 img" in lines[0] and "<" in lines[0]  # rate and ETA
    assert lines[1].startswith("epoch 1/2: ") and "256/320 img" in lines[1]
    assert lines[2].startswith("epoch 1/2  train loss")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()  # no bar drawing off a terminal


def test_notes_and_recovered_failures_go_to_stderr_as_one_line(capsys):
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    out = io.StringIO()
    display = Display(epochs=4, steps=5, images_per_step=8, out=out, interactive=False)
    line = failure_line({1: RuntimeError("Traceback ...\n  File x\nOSError: disk full"), 0: ActorDiedError()},
                        resume_epoch=2, epochs=4, restart=1, max_failures=3)
    display.handle(("failure", line))
    display.handle(("note", "[tracking] MLflow unreachable (ConnectionError); training continues"))
    err = capsys.readouterr().err.splitlines()
    assert err == ["worker 0 failed (its process died: ActorDiedError); resuming at epoch 3/4 from the last "
                   "checkpoint (restart 1, run.max_failures=3)",
                   "[tracking] MLflow unreachable (ConnectionError); training continues"]
    assert out.getvalue() == ""
    assert describe_failure(RuntimeError("Traceback ...\n  File x\nOSError: disk full\n")) == "OSError: disk full"
    assert describe_failure(ActorUnavailableError("node gone", b"\x00" * 16)) == (
        "its node stopped answering: ActorUnavailableError")  # a lost node, as test_two_nodes sees it
    leak = describe_failure(RuntimeError("MlflowException: http://ann:hunter2@mlflow:5000/api did not answer"))
    assert "hunter2" not in leak and "mlflow:5000" in leak


@pytest.mark.fault("bad --set items: unknown key, unknown section, no section", inputs=3,
                   outcome="UserError starting `--set`, naming the item, not the recipe")
@pytest.mark.parametrize("item, needle", [
    ("optim.lrr=0.1", "--set optim.lrr=0.1: unknown key optim.lrr; valid: "),
    ("optimizer.lr=0.1", "--set optimizer.lr=0.1: unknown section 'optimizer'; valid: "),
    ("lr=0.1", "expected section.key=value"),
])
def test_a_bad_set_is_blamed_on_the_set_not_the_recipe(item, needle):
    with pytest.raises(UserError) as err:
        parse_overrides([item])
    assert str(err.value).startswith("--set ") and needle in str(err.value) and "recipe" not in str(err.value)


def test_library_console_handlers_give_way_to_the_log_file(tmp_path):
    noisy = logging.getLogger("ray.data.test-noisy")
    console = logging.StreamHandler(io.StringIO())
    noisy.addHandler(console)
    noisy.propagate = False
    log = output.LogFile()
    try:
        output.route_library_logs(log)
        noisy.warning("held until the folder is known")
        log.open(tmp_path / "driver.log")
        noisy.warning("written")
        assert console not in noisy.handlers and console.stream.getvalue() == ""
        text = (tmp_path / "driver.log").read_text()
        assert "held until the folder is known" in text and "written" in text
    finally:
        noisy.removeHandler(log)
        logging.getLogger().removeHandler(log)
        logging.captureWarnings(False)


def test_ray_data_progress_off_a_terminal_is_one_total_line_per_report(capsys):
    handler = output.RayDataLines()

    def record(message: str, at: float) -> logging.LogRecord:
        rec = logging.LogRecord(output.RAY_DATA_PROGRESS_LOGGER, logging.INFO, __file__, 1, message, None, None)
        rec.created = at
        return rec

    handler.emit(record("======= Running Dataset: ds_1 =======", 100.0))
    handler.emit(record("Total Progress: 0/40", 100.0))
    handler.emit(record("Total Progress: 10/40", 130.0))
    handler.emit(record("Resources: 2 CPU", 130.0))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("Ray Data:  25% 10/40 row [00:30<01:30")


def test_the_ui_hint_is_a_command_that_works_outside_the_venv(tmp_path):
    hint = output.ui_hint(workdir=tmp_path / "my work")
    assert hint.endswith(f"ui --workdir '{tmp_path / 'my work'}'") and "mlflow ui" not in hint
    remote = output.ui_hint(tracking_uri="http://user:secret@mlflow:5000")
    assert remote.endswith("ui --tracking-uri 'http://***@mlflow:5000'"), remote  # no password on the screen

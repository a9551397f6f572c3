"""Progress as a user sees it: `epoch N/M` with an ETA per epoch, plain lines inside long work when
stderr is not a terminal, rich's bar when it is, nothing with -q."""

from __future__ import annotations

import io

from rich.console import Console

from kdcli.reporting import Reporter, duration


def _reporter(terminal: bool, **kwargs) -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, width=100, soft_wrap=True, highlight=False)
    return Reporter(console=console, **kwargs), out


def _train(reporter: Reporter, epochs: int = 3, batches: int = 4) -> None:
    with reporter.progress(f"epoch 1/{epochs}", total=epochs * batches) as advance:
        for epoch in range(1, epochs + 1):
            for _ in range(batches):
                advance(1)
            reporter.epoch({"epoch": epoch, "train_loss": 0.5, "val_loss": 0.6, "val_acc": 80.0, "seconds": 2.0},
                           improved=epoch == 1, of=epochs)


def test_plain_lines_show_epoch_of_total_with_eta():
    reporter, out = _reporter(terminal=False)
    _train(reporter)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("epoch 1/3 | train 0.5000 | val 0.6000 | val acc 80.00% | 2.0s | eta 0:04")
    assert lines[1].startswith("epoch 2/3") and "eta 0:02" in lines[1]
    assert lines[2].startswith("epoch 3/3") and "eta" not in lines[2]
    assert len(lines) == 3  # short work: no in-epoch lines


def test_plain_lines_inside_long_work():
    reporter, out = _reporter(terminal=False, plain_every=0.0)
    _train(reporter, epochs=2, batches=2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("  epoch 1/2: 1/4 (25%)") and "eta" in lines[0]
    assert any(line.startswith("  epoch 2/2: 3/4 (75%)") for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 2


def test_terminal_bar_and_quiet():
    reporter, out = _reporter(terminal=True)
    _train(reporter)
    text = out.getvalue()
    assert "epoch 2/3" in text and "eta 0:02" in text
    quiet, silent = _reporter(terminal=False, quiet=True, plain_every=0.0)
    _train(quiet)
    assert silent.getvalue() == ""


def test_duration():
    assert (duration(5), duration(65), duration(3725)) == ("0:05", "1:05", "1:02:05")


def test_tables_off_a_terminal_keep_whole_words(capsys):
    """A log or a pipe is no terminal: a table takes the width it needs instead of folding names mid-word."""
    from rich.table import Table

    from kdcli.reporting import stderr_console

    table = Table(title="groups")
    for column in ("group", "mean ± std", "95% CI", "params", "compression", "latency ms / batch 64"):
        table.add_column(column)
    table.add_row("baseline (baseline-digits-student-seed-0-long-name)", "97.5 ± 0.6", "[96.8, 98.2]", "1,250",
                  "42.5x", "0.123")
    console = stderr_console()
    assert not console.is_terminal
    console.print(table)
    err = capsys.readouterr().err
    assert "baseline (baseline-digits-student-seed-0-long-name)" in err and "latency ms / batch 64" in err

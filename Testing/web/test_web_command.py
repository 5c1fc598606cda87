"""``minisam web``'s refusals: one line on stderr and exit code 2, before any server starts."""

from __future__ import annotations

import pytest

from minisam.cli.main import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["web", "no_such_volume.nii.gz"], "volume no_such_volume.nii.gz does not exist"),
        (["web", "--port", "70000"], "port 70000 is outside 1..65535"),
        (["web", "--port", "http"], "invalid port 'http'"),
        (["web", "--output-dir", "no_such_folder"], "--output-dir no_such_folder is not a folder"),
        (["web", "--model", "no_such_model"], "no_such_model"),
        (["web", "--runtime", "tpu"], "tpu"),
        (
            ["web", "--runtime", "torch", "--precision", "int8"],
            "int8 applies to the openvino runtime",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exited:
        raise SystemExit(main(argv))
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_help_says_one_session_per_server(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["web", "--help"])
    assert exited.value.code == 0
    assert "One session per server" in " ".join(capsys.readouterr().out.split())

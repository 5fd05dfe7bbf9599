from hrmedseg.cli.main import main
from hrmedseg.cli.serve import is_loopback


def test_non_loopback_needs_token(capsys, monkeypatch):
    monkeypatch.delenv("HRMEDSEG_TOKEN", raising=False)
    assert main(["serve", "hrmedseg", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--token" in err and len(err.splitlines()) == 1


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")

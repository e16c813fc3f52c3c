"""`marketgpt tokenizer fit|inspect` on the offline sample universe."""

import json
import subprocess
import sys

from marketgpt.cli import main
from marketgpt.tokenizer import CandleTokenizer


def test_fit_then_inspect(tmp_path, capsys):
    out = tmp_path / "tok.json"
    assert main(["tokenizer", "fit", "--case", "sample", "--vocab-size", "128", "-o", str(out),
                 "--data-dir", str(tmp_path / "data")]) == 0
    printed = capsys.readouterr().out
    assert "fitted on" in printed and "worst asset" in printed
    tokenizer = CandleTokenizer.load(out)
    assert tokenizer.vocab_size == 128 and tokenizer.channels == ["close", "open", "upper", "lower"]
    assert main(["tokenizer", "inspect", str(out), "--case", "sample", "--data-dir", str(tmp_path / "data")]) == 0
    report = capsys.readouterr().out
    for symbol in ("SPX", "IXIC", "AAPL", "GOOG", "IBM", "MSFT"):
        assert symbol in report


def test_inspect_of_a_corrupt_file_is_one_line(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"format": "marketgpt-tokenizer", "version": 99}))
    result = subprocess.run([sys.executable, "-m", "marketgpt.cli", "tokenizer", "inspect", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and str(path) in result.stderr and "Traceback" not in result.stderr

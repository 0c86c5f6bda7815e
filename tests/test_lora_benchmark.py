"""benchmarks/lora.py runs end to end on the tiny UNet (its figures are benchmarks, not asserted)."""

import subprocess
import sys

from conftest import ROOT


def test_lora_benchmark_prints_a_row_per_method():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lora.py"), "--unets", "tiny", "--steps", "2"],
                         capture_output=True, text=True, check=True, cwd=ROOT).stdout
    rows = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert [r.split("|")[2].strip() for r in rows] == ["full", "lora"]
    full, lora = (int(r.split("|")[3].strip().replace(",", "")) for r in rows)
    assert 0 < lora < full / 10  # the adapters are a small fraction of the UNet

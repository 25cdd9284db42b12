"""benchmarks/gpu_check.py on CPU (``--cpu-dry-run``): the code path the one GPU run will take, with a tiny model,
three algorithms (GRPO: per-token loss with a reference; PPO: a value head beside the policy, sharded with it
and kept out of autocast; DPO: selected rows, listwise loss) under no strategy and FSDP2, and a DeepSpeed
strategy asked for without CUDA."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from conftest import needs_bf16_attention

ROOT = Path(__file__).parents[1]
ALGORITHMS, RUN, SKIPPED = ("grpo", "ppo", "dpo"), ("none", "fsdp2"), ("zero2",)


@needs_bf16_attention                                  # the dry run trains in bfloat16
def test_dry_run_reports_every_configuration_asked_for(tmp_path):
    out = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--algorithms", *ALGORITHMS,
           "--strategies", *RUN, *SKIPPED, "--out", str(out)]
    result = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(out.read_text())
    rows = {(r["strategy"], r["algorithm"]): r for r in report["rows"]}
    assert set(rows) == {(s, a) for s in RUN + SKIPPED for a in ALGORITHMS}
    for strategy in RUN:
        for algorithm in ALGORITHMS:
            row = rows[strategy, algorithm]
            assert row["status"] == "OK", (strategy, algorithm, row["error"], row.get("traceback"))
            assert row["loss_finite"] and row["losses"] and all(map(math.isfinite, row["losses"]))
            assert row["time_step"] > 0 and row["train_tokens_per_s"] > 0 and row["gen_tokens_per_s"] > 0
            assert row["peak_gib"] is None and row["mfu"] is None          # n/a on CPU
            assert (row.get("fp32") is not None) == (strategy == "none")   # the float32 replay: no strategy only
            if strategy == "none":
                assert row["fp32"]["ok"], row["fp32"]
    for strategy in SKIPPED:
        for algorithm in ALGORITHMS:
            assert rows[strategy, algorithm]["status"] == "SKIPPED"
            assert rows[strategy, algorithm]["error"] == "skipped: needs CUDA and deepspeed"
    assert "| none | grpo | OK |" in result.stdout and "| zero2 | dpo | SKIPPED |" in result.stdout
    assert (tmp_path / "gpu_check_logs" / "fsdp2.log").exists()

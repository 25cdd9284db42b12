"""Both notebooks run headless, top to bottom, on a short setting."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

from conftest import ROOT



def execute(name: str, cwd: Path) -> None:
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()


def test_quickstart_then_dashboard(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("LIT_RL_MODEL", tiny_model_dir)
    monkeypatch.setenv("LIT_RL_STEPS", "2")
    monkeypatch.setenv("LIT_RL_VAL_SIZE", "4")
    monkeypatch.setenv("LIT_RL_RUN_ROOT", str(tmp_path / "runs"))
    execute("quickstart.ipynb", tmp_path)
    (run_dir,) = (tmp_path / "runs" / "remax").iterdir()
    assert (run_dir / "curves.png").stat().st_size > 0
    monkeypatch.setenv("LIT_RL_RUN_DIR", str(run_dir))
    execute("dashboard.ipynb", tmp_path)
    for namespace in ("rollout", "train", "val"):
        assert (run_dir / f"dashboard_{namespace}.png").stat().st_size > 0

"""What every benchmark report records about its run, and writing it (JSON beside markdown)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from napari_emgranules.core.io import atomic_output


def run_header(script: str, argv: list[str] | None) -> dict:
    """The command that made the report (as a user would type it), when, and on what."""
    args = sys.argv[1:] if argv is None else argv
    return {"command": f"python benchmarks/{script} {shlex.join(args)}".strip(),
            "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def write_report(out: Path, report: dict, text: str) -> None:
    """``out`` (markdown) and ``out`` with ``.json``, each written whole or not at all."""
    with atomic_output(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_output(out) as tmp:
        tmp.write_text(text)
    print(f"wrote {out}", flush=True)


def save_figure(fig, path: Path) -> None:
    """A matplotlib ``fig`` of pictures (no axis ticks), laid out tight, written whole as PNG."""
    for ax in fig.axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")

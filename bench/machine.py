"""What every benchmark prints about the machine it ran on, and where it writes its results."""

import json
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(out_dir: str, stem: str, text: str, data) -> Path:
    """OUT_DIR/STEM.md (the markdown section) and OUT_DIR/STEM.json (the raw figures); returns
    the folder, for plots. python -m bench reads the .md back into BENCHMARKS.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    return out

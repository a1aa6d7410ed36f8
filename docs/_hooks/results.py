"""MkDocs hook: serve benchmarks/results/ (reports, plots, JSON) as pages of the site.

The reports stay where the benchmarks write them; the site renders them as they are, so a
docs page links to ``benchmarks/results/oneshot.md`` and ``mkdocs build --strict`` checks the link.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
SERVED = {".md", ".png", ".json"}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for path in sorted(RESULTS.rglob("*")):  # runtime_runs/ holds one report per run
        if path.suffix in SERVED and path.is_file():
            rel = path.relative_to(RESULTS).as_posix()
            files.append(File.generated(config, f"benchmarks/results/{rel}",
                                        abs_src_path=str(path)))
    return files

